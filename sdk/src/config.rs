//! The plugin's own settings, from the `[config]` table of its manifest.
//! Values are strings; non-string TOML values arrive as JSON text.
//!
//! ```no_run
//! let greeting = bsm_sdk::config::get("greeting").unwrap_or_else(|| "Hello".into());
//! ```

use crate::bindings::agent::bsm::plugin::config as wit;

///
/// ```no_run
/// match bsm_sdk::config::try_get("model") {
///     Ok(Some(model)) => bsm_sdk::log::info(&format!("using {model}")),
///     Ok(None) => bsm_sdk::log::info("using the host's default model"),
///     Err(e) => bsm_sdk::log::error(&format!("the config store failed: {e}")),
/// }
/// ```
pub use wit::Error as ConfigError;

/// The value of `key`, or `None` when it is not set (or the store failed).
///
/// ```no_run
/// let top_k: u32 = bsm_sdk::config::get("top-k").and_then(|v| v.parse().ok()).unwrap_or(3);
/// ```
pub fn get(key: &str) -> Option<String> {
    wit::get(key).ok().flatten()
}

/// The value of `key`, distinguishing "not set" from a failing store.
///
/// ```no_run
/// let prompt = bsm_sdk::config::try_get("system-prompt")?
///     .ok_or_else(|| bsm_sdk::AgentError::Config("set system-prompt in [config]".into()));
/// # Ok::<(), bsm_sdk::config::ConfigError>(())
/// ```
pub fn try_get(key: &str) -> Result<Option<String>, ConfigError> {
    wit::get(key)
}

/// All settings as key-value pairs.
///
/// ```no_run
/// for (key, value) in bsm_sdk::config::get_all()? {
///     bsm_sdk::log::debug(&format!("{key} = {value}"));
/// }
/// # Ok::<(), bsm_sdk::config::ConfigError>(())
/// ```
pub fn get_all() -> Result<Vec<(String, String)>, ConfigError> {
    wit::get_all()
}
