//! A per-plugin cache held by the host; entries survive between runs (which
//! the plugin's own memory does not).
//!
//! ```no_run
//! use bsm_sdk::cache;
//! cache::set("greeting", b"hello", Some(60_000)).unwrap();
//! assert_eq!(cache::get("greeting").unwrap().as_deref(), Some(&b"hello"[..]));
//! ```

use crate::bindings::agent::bsm::plugin::cache as wit;

pub use wit::Error as CacheError;

/// Reads a value, `None` when absent or expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, CacheError> {
    wit::get(key)
}

/// Stores a value for `ttl_ms` milliseconds (the cache's default when `None`).
pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), CacheError> {
    wit::set(key, value, ttl_ms)
}

/// Removes a value; removing an absent key is not an error.
pub fn delete(key: &str) -> Result<(), CacheError> {
    wit::delete(key)
}
