//! `bsm:plugin/reports`: markdown reports written under the plugin's id and
//! the run's correlation id (the job). Where they are kept is the embedder's
//! choice, behind [`ReportSink`] (the platform's report store in `bsm serve`
//! and the CLI).

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::tape::{self, Tape};
use super::{Caller, Capability, RunInfo};
use crate::manifest::ReportsGrant;
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
            .granted(run.manifest.capabilities.reports.clone())
            .taped(run.tape.clone())
    }
}

/// Per-run state: the sink (if any) and who is writing.
pub struct ReportsState {
    sink: Option<Arc<dyn ReportSink>>,
    caller: Caller,
    tape: Option<Arc<Tape>>,
    /// The run's quota (`None`: built outside a manifest, unbounded).
    grant: Option<ReportsGrant>,
    written: u32,
    written_bytes: u64,
}

impl ReportsState {
    pub fn new(sink: Option<Arc<dyn ReportSink>>, caller: Caller) -> Self {
        Self {
            sink,
            caller,
            tape: None,
            grant: None,
            written: 0,
            written_bytes: 0,
        }
    }

    /// Records or replays this run's calls.
    pub fn taped(mut self, tape: Option<Arc<Tape>>) -> Self {
        self.tape = tape;
        self
    }

    /// Bounds the run by its manifest's quota.
    pub fn granted(mut self, grant: Option<ReportsGrant>) -> Self {
        self.grant = grant;
        self
    }

    /// Counts a report against the quota, or refuses it.
    fn admit(&mut self, bytes: u64) -> Result<(), Error> {
        if let Some(grant) = &self.grant {
            if self.written >= grant.max_count {
                return Err(Error::QuotaExceeded(format!(
                    "this run already wrote its {} reports (capabilities.reports.max-count)",
                    grant.max_count
                )));
            }
            if self.written_bytes.saturating_add(bytes) > grant.max_bytes {
                return Err(Error::QuotaExceeded(format!(
                    "{bytes} more bytes would pass this run's {} report bytes (capabilities.reports.max-bytes)",
                    grant.max_bytes
                )));
            }
        }
        self.written += 1;
        self.written_bytes = self.written_bytes.saturating_add(bytes);
        Ok(())
    }
}

impl Host for ReportsState {
    async fn write(&mut self, name: String, markdown: String) -> Result<ReportRef, Error> {
        if self.tape.is_none() && self.sink.is_none() {
            return Err(Error::Unavailable(NOT_CONFIGURED.into()));
        }
        self.admit(markdown.len() as u64)?;
        let args = tape::args(&self.tape, &(&name, &markdown));
        tape::through(&self.tape, "reports.write", args, Error::Unavailable, async {
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
        })
        .await
    }
}
