//! The host capabilities: a plugin's only way out of its sandbox.
//!
//! Each capability is one module that implements one WIT interface, in the
//! manner of Spin's factors: it links its interface into the [`Linker`] once
//! ([`link`]), holds process-wide state built once from configuration
//! ([`Capabilities`]), and prepares a small per-run state for every
//! instance ([`Capabilities::for_run`]).

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings;
use crate::cache::PluginCache;
use crate::reports::ReportStore;
use crate::run_state::RunState;

pub mod cache;
pub mod config;
pub mod knowledge;
pub mod llm;
pub mod log;
pub mod reports;

/// Who is calling a capability: the plugin and the request it runs for.
/// Every log line and upstream call carries both.
#[derive(Debug, Clone)]
pub struct Caller {
    pub plugin_id: Arc<str>,
    pub correlation_id: Arc<str>,
}

/// Process-wide state of all capabilities, shared by every run.
#[derive(Clone)]
pub struct Capabilities {
    pub llm: Arc<dyn llm::LlmEngine>,
    pub cache: Arc<PluginCache>,
    /// Where reports go; `None` answers `unavailable`.
    pub reports: Option<Arc<ReportStore>>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            llm: Arc::new(llm::Unconfigured),
            cache: Arc::new(PluginCache::new(Default::default())),
            reports: None,
        }
    }
}

impl Capabilities {
    /// Default capabilities with the given LLM engine.
    pub fn with_llm(llm: Arc<dyn llm::LlmEngine>) -> Self {
        Self {
            llm,
            ..Self::default()
        }
    }
}

/// Per-run state of all capabilities, stored in the run's [`RunState`].
pub struct RunCapabilities {
    pub log: log::LogState,
    pub config: config::ConfigState,
    pub llm: llm::LlmState,
    pub cache: cache::CacheState,
    pub knowledge: knowledge::KnowledgeState,
    pub reports: reports::ReportsState,
}

impl Capabilities {
    /// Prepares the capabilities of one run of one plugin.
    pub fn for_run(
        &self,
        caller: Caller,
        config: Arc<config::ConfigValues>,
        llm_budget: llm::LlmBudget,
    ) -> RunCapabilities {
        RunCapabilities {
            log: log::LogState::new(caller.clone()),
            config: config::ConfigState::new(config),
            llm: llm::LlmState::new(self.llm.clone(), caller.clone(), llm_budget),
            cache: cache::CacheState::new(self.cache.clone(), caller.clone()),
            knowledge: knowledge::KnowledgeState::new(caller.clone()),
            reports: reports::ReportsState::new(self.reports.clone(), caller),
        }
    }
}

/// Links every capability interface (and WASI, deny-by-default) into `linker`.
pub fn link(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    bindings::types::add_to_linker::<RunState, HasSelf<RunState>>(linker, |s| s)?;
    bindings::log::add_to_linker::<RunState, HasSelf<log::LogState>>(linker, |s| &mut s.caps.log)?;
    bindings::config::add_to_linker::<RunState, HasSelf<config::ConfigState>>(linker, |s| {
        &mut s.caps.config
    })?;
    bindings::llm::add_to_linker::<RunState, HasSelf<llm::LlmState>>(linker, |s| &mut s.caps.llm)?;
    bindings::cache::add_to_linker::<RunState, HasSelf<cache::CacheState>>(linker, |s| {
        &mut s.caps.cache
    })?;
    bindings::knowledge::add_to_linker::<RunState, HasSelf<knowledge::KnowledgeState>>(
        linker,
        |s| &mut s.caps.knowledge,
    )?;
    bindings::reports::add_to_linker::<RunState, HasSelf<reports::ReportsState>>(linker, |s| {
        &mut s.caps.reports
    })?;
    Ok(())
}
