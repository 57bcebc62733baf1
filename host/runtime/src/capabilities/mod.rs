//! The host capabilities: a plugin's only way out of its sandbox.
//!
//! Each capability is one module implementing one WIT interface, in the
//! manner of Spin's factors, and every module has the same three parts
//! (the [`Capability`] trait):
//! - **link**: adds its interface to the [`Linker`], once per engine;
//! - **process-wide state** ([`Capability::Shared`]): built once from
//!   configuration by whoever composes the host (e.g. the LLM engine), with a
//!   `Default` that works unconfigured (answering `unavailable` where there
//!   is nothing behind it);
//! - **per-run state** ([`Capability::State`]): a small value made for each
//!   run from the shared state and the [`RunInfo`] (who calls, under which
//!   manifest).
//!
//! The `capabilities!` list below is the only place that names them all:
//! adding a capability means its WIT file, its module here (declared by that
//! list) and its SDK module, and nothing else. The code here is generic over
//! the store's data ([`HasCapabilities`]), so it does not depend on the
//! runtime that uses it.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings;
use crate::manifest::Manifest;
use crate::tape::Tape;

/// Who is calling a capability: the plugin and the request it runs for.
/// Every log line and upstream call carries both.
#[derive(Debug, Clone)]
pub struct Caller {
    pub plugin_id: Arc<str>,
    pub correlation_id: Arc<str>,
}

/// What a capability may know about the run it prepares state for.
pub struct RunInfo<'a> {
    pub caller: Caller,
    /// The manifest of the plugin version that runs (budget, `[config]`).
    pub manifest: &'a Manifest,
    /// The manifest's `[config]` flattened to strings, shared by its runs.
    pub config: &'a Arc<config::ConfigValues>,
    /// Records or replays the run's host calls (`None`: live).
    pub tape: Option<Arc<Tape>>,
}

/// The shape of every capability module.
pub trait Capability {
    /// Built once per host from configuration; cloned into each runtime.
    type Shared: Clone + Default + Send + Sync + 'static;
    /// Made for each run and kept in the run's store.
    type State: Send + 'static;

    /// Adds the capability's interface to `linker`; `get` finds the run's
    /// state in the store's data.
    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self::State,
    ) -> wasmtime::Result<()>;

    /// The per-run state of one run.
    fn for_run(shared: &Self::Shared, run: &RunInfo<'_>) -> Self::State;
}

/// The store data of a run gives access to its capabilities' state.
pub trait HasCapabilities: Send + 'static {
    fn capabilities(&mut self) -> &mut RunCapabilities;
}

/// Declares every capability module and builds, from the one list, the
/// process-wide [`Capabilities`], the per-run [`RunCapabilities`], the
/// per-run constructor and the linking of all interfaces.
macro_rules! capabilities {
    ($($(#[$doc:meta])* $name:ident: $capability:ident),* $(,)?) => {
        $(pub mod $name;)*

        /// Process-wide state of all capabilities, shared by every run.
        /// Each field is its capability's [`Capability::Shared`].
        #[derive(Clone, Default)]
        pub struct Capabilities {
            $($(#[$doc])* pub $name: <$name::$capability as Capability>::Shared,)*
            /// Records every run's host calls, or answers them from a
            /// recording (`bsm run --record/--replay`, the test harness).
            pub tape: Option<Arc<Tape>>,
        }

        /// Per-run state of all capabilities, stored in the run's store.
        pub struct RunCapabilities {
            $(pub $name: <$name::$capability as Capability>::State,)*
        }

        impl Capabilities {
            /// Prepares the capabilities of one run of one plugin.
            pub fn for_run(&self, run: &RunInfo<'_>) -> RunCapabilities {
                RunCapabilities {
                    $($name: <$name::$capability as Capability>::for_run(&self.$name, run),)*
                }
            }
        }

        /// Links every capability interface (and the shared `types`) into
        /// `linker`. WASI is linked by the runtime, which owns the WASI context.
        pub fn link<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
            bindings::types::add_to_linker::<T, HasSelf<RunCapabilities>>(linker, |t| {
                t.capabilities()
            })?;
            $(<$name::$capability as Capability>::link(linker, |t: &mut T| {
                &mut t.capabilities().$name
            })?;)*
            Ok(())
        }
    };
}

capabilities! {
    log: Log,
    config: Config,
    /// The engine behind LLM calls (`Unconfigured` by default).
    llm: Llm,
    /// The plugin-facing cache.
    cache: Cache,
    /// The document collections (`None`: `unavailable`).
    knowledge: Knowledge,
    /// Where reports go (`None`: `unavailable`).
    reports: Reports,
    /// Outbound HTTP and the host's secrets (`None`: `unavailable`).
    http: Http,
}

impl bindings::types::Host for RunCapabilities {}

impl Capabilities {
    /// Default capabilities with the given LLM engine.
    pub fn with_llm(engine: Arc<dyn llm::LlmEngine>) -> Self {
        Self {
            llm: llm::LlmShared::new(engine),
            ..Self::default()
        }
    }
}
