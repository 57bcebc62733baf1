//! # bsm-cache: caches that do not stampede
//!
//! The original BSM reloaded its data on every TTL expiry from every waiting
//! request at once. Every host cache here is built on moka and counts its
//! hits, misses and loads: [`LoadingCache`] loads a missing key once however
//! many callers wait for it, [`SwrCache`] serves a stale value while one
//! background refresh runs, and [`PluginCache`] is the byte-bounded,
//! per-plugin store behind the plugins' `cache` capability.
//!
//! A leaf crate: it knows nothing of plugins, WASM, LLMs or HTTP, and must
//! not depend on any other BSM crate.

pub mod loading;
pub mod plugin_store;
pub mod stats;
pub mod swr;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use loading::LoadingCache;
pub use plugin_store::{PluginCache, PluginCacheSettings};
pub use stats::StatsSnapshot;
pub use swr::{SwrCache, SwrTtl};

/// The `[cache]` table: TTLs and sizes of each host cache.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct CacheSettings {
    pub plugin: PluginCacheSettings,
    /// Parsed plugin manifests.
    pub manifests: TtlSettings,
}

/// Size and TTL of a loading cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct TtlSettings {
    pub ttl_ms: u64,
    pub max_entries: u64,
}

impl Default for TtlSettings {
    fn default() -> Self {
        Self {
            ttl_ms: 60_000,
            max_entries: 1_000,
        }
    }
}

impl TtlSettings {
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }
}
