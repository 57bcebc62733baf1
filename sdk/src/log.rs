//! Logging into the host's structured log, tagged with the plugin id and the
//! run's correlation id. Prefer this over `println!`: guest stdout is
//! captured, not shown.
//!
//! ```no_run
//! bsm_sdk::log::info("starting review");
//! bsm_sdk::log::log(bsm_sdk::log::Level::Warn, "templates", "no user template");
//! ```

use crate::bindings::agent::bsm::plugin::log as wit;

///
/// ```no_run
/// bsm_sdk::log::log(bsm_sdk::log::Level::Debug, "prompt", "built a 2 KB prompt");
/// ```
pub use wit::Level;

/// Logs `message` at `level`; `context` names the part of the plugin logging.
///
/// ```no_run
/// use bsm_sdk::log::{self, Level};
/// log::log(Level::Info, "knowledge", "3 hits for the query");
/// ```
pub fn log(level: Level, context: &str, message: &str) {
    wit::log(level, context, message)
}

/// Logs at debug level.
///
/// ```no_run
/// bsm_sdk::log::debug("asking the LLM");
/// ```
pub fn debug(message: &str) {
    log(Level::Debug, "", message)
}

/// Logs at info level.
///
/// ```no_run
/// bsm_sdk::log::info("review done");
/// ```
pub fn info(message: &str) {
    log(Level::Info, "", message)
}

/// Logs at warn level.
///
/// ```no_run
/// bsm_sdk::log::warn("no template configured: using the default");
/// ```
pub fn warn(message: &str) {
    log(Level::Warn, "", message)
}

/// Logs at error level.
///
/// ```no_run
/// bsm_sdk::log::error("the payload has no pull_request");
/// ```
pub fn error(message: &str) {
    log(Level::Error, "", message)
}
