//! `bsm:plugin/reports`: markdown reports written by the host's
//! [`ReportStore`] under the plugin's id and the run's correlation id (the job).

use std::sync::Arc;

use crate::bindings::reports::{Error, Host, ReportRef};
use crate::reports::{ReportError, ReportStore};

use super::Caller;

/// Told to a plugin when the host has no report directory.
pub const NOT_CONFIGURED: &str = "no report directory is configured for this host";

/// Per-run state: the store (if any) and who is writing.
pub struct ReportsState {
    store: Option<Arc<ReportStore>>,
    caller: Caller,
}

impl ReportsState {
    pub fn new(store: Option<Arc<ReportStore>>, caller: Caller) -> Self {
        Self { store, caller }
    }
}

impl Host for ReportsState {
    async fn write(&mut self, name: String, markdown: String) -> Result<ReportRef, Error> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| Error::Unavailable(NOT_CONFIGURED.into()))?;
        let record = store
            .write(
                &self.caller.plugin_id,
                &self.caller.correlation_id,
                &name,
                &markdown,
            )
            .await
            .map_err(|e| match e {
                ReportError::InvalidName { .. } => Error::InvalidName(e.to_string()),
                ReportError::Storage(m) => Error::Storage(m),
            })?;
        Ok(ReportRef {
            id: record.id,
            name: record.name,
            bytes: record.bytes,
        })
    }
}
