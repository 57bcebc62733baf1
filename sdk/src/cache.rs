//! A per-plugin cache held by the host; entries survive between runs (which
//! the plugin's own memory does not).
//!
//! ```no_run
//! use bsm_sdk::cache;
//! cache::set("greeting", b"hello", Some(60_000)).unwrap();
//! assert_eq!(cache::get("greeting").unwrap().as_deref(), Some(&b"hello"[..]));
//! ```

use crate::bindings::agent::bsm::plugin::cache as wit;

///
/// ```no_run
/// use bsm_sdk::cache::{self, CacheError};
/// match cache::set("summary", &vec![0u8; 10_000_000], None) {
///     Err(CacheError::TooLarge(limit)) => bsm_sdk::log::warn(&format!("summary over {limit} bytes, not cached")),
///     Err(CacheError::QuotaExceeded(why)) => bsm_sdk::log::warn(&why),
///     other => other.unwrap(),
/// }
/// ```
pub use wit::Error as CacheError;

/// Reads a value, `None` when absent or expired.
///
/// ```no_run
/// let seen = bsm_sdk::cache::get("pr-7")?.is_some();
/// # Ok::<(), bsm_sdk::cache::CacheError>(())
/// ```
pub fn get(key: &str) -> Result<Option<Vec<u8>>, CacheError> {
    wit::get(key)
}

/// Stores a value for `ttl_ms` milliseconds (the cache's default when `None`).
///
/// ```no_run
/// bsm_sdk::cache::set("pr-7", b"reviewed", Some(3_600_000))?; // one hour
/// # Ok::<(), bsm_sdk::cache::CacheError>(())
/// ```
pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), CacheError> {
    wit::set(key, value, ttl_ms)
}

/// Removes a value; removing an absent key is not an error.
///
/// ```no_run
/// bsm_sdk::cache::delete("pr-7")?;
/// # Ok::<(), bsm_sdk::cache::CacheError>(())
/// ```
pub fn delete(key: &str) -> Result<(), CacheError> {
    wit::delete(key)
}
