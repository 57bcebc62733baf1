//! `bsm:plugin/log`: plugin log lines become host `tracing` events tagged
//! with the plugin id and correlation id, so one request can be followed
//! through every plugin it touched.

use crate::bindings::log::{Host, Level};

use super::Caller;

/// Per-run state: who is logging.
pub struct LogState {
    caller: Caller,
}

impl LogState {
    pub fn new(caller: Caller) -> Self {
        Self { caller }
    }
}

impl Host for LogState {
    async fn log(&mut self, level: Level, context: String, message: String) {
        let plugin = &*self.caller.plugin_id;
        let correlation_id = &*self.caller.correlation_id;
        match level {
            Level::Trace => {
                tracing::trace!(target: "bsm::plugin", plugin, correlation_id, context, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "bsm::plugin", plugin, correlation_id, context, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "bsm::plugin", plugin, correlation_id, context, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "bsm::plugin", plugin, correlation_id, context, "{message}")
            }
            Level::Error | Level::Critical => {
                tracing::error!(target: "bsm::plugin", plugin, correlation_id, context, critical = matches!(level, Level::Critical), "{message}")
            }
        }
    }
}
