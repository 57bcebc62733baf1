//! `bsm:plugin/reports`: markdown reports written under the plugin's id and
//! the run's correlation id (the job). Where they are kept is the embedder's
//! choice, behind [`ReportSink`] (the platform's report store in `bsm serve`
//! and the CLI).

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{Caller, Capability, RunInfo};
use crate::bindings::reports::{self, Error, Host, ReportRef};

/// Told to a plugin when the host has no report directory.
pub const NOT_CONFIGURED: &str = "no report directory is configured for this host";

/// Keeps the reports plugins write. Errors are the WIT ones, so the sink
/// decides what a plugin is told (bad name vs storage failure).
#[async_trait::async_trait]
pub trait ReportSink: Send + Sync + 'static {
    async fn write(
        &self,
        plugin_id: &str,
        job_id: &str,
        name: &str,
        markdown: &str,
    ) -> Result<ReportRef, Error>;
}

/// The `reports` capability: an optional sink for the whole process.
pub struct Reports;

impl Capability for Reports {
    type Shared = Option<Arc<dyn ReportSink>>;
    type State = ReportsState;

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut ReportsState,
    ) -> wasmtime::Result<()> {
        reports::add_to_linker::<T, HasSelf<ReportsState>>(linker, get)
    }

    fn for_run(sink: &Self::Shared, run: &RunInfo<'_>) -> ReportsState {
        ReportsState::new(sink.clone(), run.caller.clone())
    }
}

/// Per-run state: the sink (if any) and who is writing.
pub struct ReportsState {
    sink: Option<Arc<dyn ReportSink>>,
    caller: Caller,
}

impl ReportsState {
    pub fn new(sink: Option<Arc<dyn ReportSink>>, caller: Caller) -> Self {
        Self { sink, caller }
    }
}

impl Host for ReportsState {
    async fn write(&mut self, name: String, markdown: String) -> Result<ReportRef, Error> {
        let sink = self
            .sink
            .as_ref()
            .ok_or_else(|| Error::Unavailable(NOT_CONFIGURED.into()))?;
        sink.write(
            &self.caller.plugin_id,
            &self.caller.correlation_id,
            &name,
            &markdown,
        )
        .await
    }
}
