//! Logging into the host's structured log, tagged with the plugin id and the
//! run's correlation id. Prefer this over `println!`: guest stdout is
//! captured, not shown.
//!
//! ```no_run
//! bsm_sdk::log::info("starting review");
//! bsm_sdk::log::log(bsm_sdk::log::Level::Warn, "templates", "no user template");
//! ```

use crate::bindings::agent::bsm::plugin::log as wit;

pub use wit::Level;

/// Logs `message` at `level`; `context` names the part of the plugin logging.
pub fn log(level: Level, context: &str, message: &str) {
    wit::log(level, context, message)
}

/// Logs at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, "", message)
}

/// Logs at info level.
pub fn info(message: &str) {
    log(Level::Info, "", message)
}

/// Logs at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, "", message)
}

/// Logs at error level.
pub fn error(message: &str) {
    log(Level::Error, "", message)
}
