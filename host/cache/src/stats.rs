//! Counters kept per named cache, so operators can see hit rates, herds that
//! were coalesced and what was evicted.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Live counters of one cache.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_failures: AtomicU64,
    coalesced: AtomicU64,
    stale_served: AtomicU64,
    refreshes: AtomicU64,
    refresh_failures: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    pub hits: u64,
    pub misses: u64,
    /// Loader calls (one per miss that was not coalesced).
    pub loads: u64,
    pub load_failures: u64,
    /// Misses that waited for another caller's load instead of loading.
    pub coalesced: u64,
    /// Reads answered with a value past its soft TTL.
    pub stale_served: u64,
    pub refreshes: u64,
    pub refresh_failures: u64,
    /// Entries removed to stay within the size bound.
    pub evictions: u64,
    pub expirations: u64,
}

macro_rules! counter {
    ($($name:ident => $field:ident),* $(,)?) => {
        impl CacheStats {
            $(
                pub fn $name(&self) {
                    self.$field.fetch_add(1, Ordering::Relaxed);
                }
            )*
        }
    };
}

counter! {
    hit => hits,
    miss => misses,
    load => loads,
    load_failure => load_failures,
    coalesced_wait => coalesced,
    stale => stale_served,
    refresh => refreshes,
    refresh_failure => refresh_failures,
    eviction => evictions,
    expiration => expirations,
}

impl CacheStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            hits: get(&self.hits),
            misses: get(&self.misses),
            loads: get(&self.loads),
            load_failures: get(&self.load_failures),
            coalesced: get(&self.coalesced),
            stale_served: get(&self.stale_served),
            refreshes: get(&self.refreshes),
            refresh_failures: get(&self.refresh_failures),
            evictions: get(&self.evictions),
            expirations: get(&self.expirations),
        }
    }
}
