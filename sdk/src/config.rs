//! The plugin's own settings, from the `[config]` table of its manifest.
//! Values are strings; non-string TOML values arrive as JSON text.
//!
//! ```no_run
//! let greeting = bsm_sdk::config::get("greeting").unwrap_or_else(|| "Hello".into());
//! ```

use crate::bindings::agent::bsm::plugin::config as wit;

pub use wit::Error as ConfigError;

/// The value of `key`, or `None` when it is not set (or the store failed).
pub fn get(key: &str) -> Option<String> {
    wit::get(key).ok().flatten()
}

/// The value of `key`, distinguishing "not set" from a failing store.
pub fn try_get(key: &str) -> Result<Option<String>, ConfigError> {
    wit::get(key)
}

/// All settings as key-value pairs.
pub fn get_all() -> Result<Vec<(String, String)>, ConfigError> {
    wit::get_all()
}
