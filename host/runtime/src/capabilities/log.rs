//! `bsm:plugin/log`: plugin log lines become host `tracing` events tagged
//! with the plugin id and correlation id, so one request can be followed
//! through every plugin it touched.

use wasmtime::component::{HasSelf, Linker};

use super::{Caller, Capability, RunInfo};
use crate::bindings::log::{self, Host, Level};

/// The `log` capability: no process-wide state.
pub struct Log;

impl Capability for Log {
    type Shared = ();
    type State = LogState;

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut LogState,
    ) -> wasmtime::Result<()> {
        log::add_to_linker::<T, HasSelf<LogState>>(linker, get)
    }

    fn for_run(_: &(), run: &RunInfo<'_>) -> LogState {
        LogState::new(run.caller.clone())
    }
}

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
