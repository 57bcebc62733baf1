//! The store behind the plugin-facing `cache` interface: one moka cache for
//! all plugins, keys namespaced by plugin id (a plugin never sees another's
//! entries), a TTL per entry, and a bound on total bytes (weigher).

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::notification::RemovalCause;
use serde::{Deserialize, Serialize};

use super::stats::{CacheStats, StatsSnapshot};

/// Settings of the plugin cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct PluginCacheSettings {
    /// Total bytes of keys and values across all plugins.
    pub max_bytes: u64,
    /// Largest single value.
    pub max_value_bytes: u64,
    /// TTL of an entry set without one.
    pub default_ttl_ms: u64,
    /// Longest TTL a plugin may ask for.
    pub max_ttl_ms: u64,
}

impl Default for PluginCacheSettings {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_value_bytes: 1 << 20,
            default_ttl_ms: 5 * 60 * 1000,
            max_ttl_ms: 24 * 60 * 60 * 1000,
        }
    }
}

/// Longest key a plugin may use.
pub const MAX_KEY_BYTES: usize = 512;

type Key = (Arc<str>, String);

#[derive(Clone)]
struct Entry {
    bytes: Arc<[u8]>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<Key, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &Key, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Why a plugin's cache call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginCacheError {
    #[error("value of {0} bytes is larger than the cache accepts")]
    TooLarge(u64),
    #[error("invalid cache key: {0}")]
    InvalidKey(String),
}

/// The shared store of every plugin's cache entries.
pub struct PluginCache {
    inner: moka::future::Cache<Key, Entry>,
    settings: PluginCacheSettings,
    stats: Arc<CacheStats>,
}

impl Default for PluginCache {
    /// A cache with the default settings.
    fn default() -> Self {
        Self::new(PluginCacheSettings::default())
    }
}

impl PluginCache {
    pub fn new(settings: PluginCacheSettings) -> Self {
        let stats = Arc::new(CacheStats::default());
        let listener_stats = stats.clone();
        let inner = moka::future::Cache::builder()
            .name("plugin")
            .max_capacity(settings.max_bytes)
            .weigher(|k: &Key, v: &Entry| {
                u32::try_from(k.0.len() + k.1.len() + v.bytes.len()).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_k, _v, cause| match cause {
                RemovalCause::Size => listener_stats.eviction(),
                RemovalCause::Expired => listener_stats.expiration(),
                _ => {}
            })
            .build();
        Self {
            inner,
            settings,
            stats,
        }
    }

    fn key(plugin: &Arc<str>, key: &str) -> Result<Key, PluginCacheError> {
        if key.is_empty() {
            return Err(PluginCacheError::InvalidKey("the key is empty".into()));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(PluginCacheError::InvalidKey(format!(
                "the key is {} bytes; at most {MAX_KEY_BYTES} are allowed",
                key.len()
            )));
        }
        Ok((plugin.clone(), key.to_string()))
    }

    pub async fn get(
        &self,
        plugin: &Arc<str>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, PluginCacheError> {
        let key = Self::key(plugin, key)?;
        match self.inner.get(&key).await {
            Some(entry) => {
                self.stats.hit();
                Ok(Some(entry.bytes.to_vec()))
            }
            None => {
                self.stats.miss();
                Ok(None)
            }
        }
    }

    /// Stores a value for `ttl` (the default when `None`, capped at the maximum).
    pub async fn set(
        &self,
        plugin: &Arc<str>,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), PluginCacheError> {
        let key = Self::key(plugin, key)?;
        if value.len() as u64 > self.settings.max_value_bytes {
            return Err(PluginCacheError::TooLarge(value.len() as u64));
        }
        let max_ttl = Duration::from_millis(self.settings.max_ttl_ms);
        let ttl = ttl
            .unwrap_or(Duration::from_millis(self.settings.default_ttl_ms))
            .min(max_ttl);
        self.inner
            .insert(
                key,
                Entry {
                    bytes: Arc::from(value),
                    ttl,
                },
            )
            .await;
        Ok(())
    }

    pub async fn delete(&self, plugin: &Arc<str>, key: &str) -> Result<(), PluginCacheError> {
        let key = Self::key(plugin, key)?;
        self.inner.invalidate(&key).await;
        Ok(())
    }

    /// Drops every entry of every plugin.
    pub fn clear(&self) {
        self.inner.invalidate_all();
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Bytes held now (after pending maintenance).
    pub async fn weighted_size(&self) -> u64 {
        self.inner.run_pending_tasks().await;
        self.inner.weighted_size()
    }

    pub async fn run_pending_tasks(&self) {
        self.inner.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_bytes: u64) -> PluginCache {
        PluginCache::new(PluginCacheSettings {
            max_bytes,
            ..PluginCacheSettings::default()
        })
    }

    #[tokio::test]
    async fn keys_are_namespaced_per_plugin() {
        let c = cache(1 << 20);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        c.set(&a, "k", b"from a", None).await.unwrap();
        c.set(&b, "k", b"from b", None).await.unwrap();
        assert_eq!(
            c.get(&a, "k").await.unwrap().as_deref(),
            Some(&b"from a"[..])
        );
        assert_eq!(
            c.get(&b, "k").await.unwrap().as_deref(),
            Some(&b"from b"[..])
        );
        c.delete(&a, "k").await.unwrap();
        assert_eq!(c.get(&a, "k").await.unwrap(), None);
        assert!(c.get(&b, "k").await.unwrap().is_some());
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (3, 1));
    }

    #[tokio::test]
    async fn entries_expire_after_their_own_ttl() {
        let c = cache(1 << 20);
        let p: Arc<str> = Arc::from("p");
        c.set(&p, "short", b"x", Some(Duration::from_millis(30)))
            .await
            .unwrap();
        c.set(&p, "long", b"y", Some(Duration::from_secs(60)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(c.get(&p, "short").await.unwrap(), None);
        assert!(c.get(&p, "long").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn total_bytes_are_bounded_and_evictions_counted() {
        let c = cache(10_000);
        let p: Arc<str> = Arc::from("p");
        for i in 0..50 {
            c.set(&p, &format!("k{i}"), &[0u8; 1000], None)
                .await
                .unwrap();
        }
        assert!(c.weighted_size().await <= 10_000);
        assert!(c.stats().evictions >= 40, "{:?}", c.stats());
    }

    #[tokio::test]
    async fn oversized_values_and_bad_keys_are_refused() {
        let c = PluginCache::new(PluginCacheSettings {
            max_value_bytes: 10,
            ..PluginCacheSettings::default()
        });
        let p: Arc<str> = Arc::from("p");
        assert_eq!(
            c.set(&p, "k", &[0; 11], None).await,
            Err(PluginCacheError::TooLarge(11))
        );
        assert!(matches!(
            c.set(&p, "", b"x", None).await,
            Err(PluginCacheError::InvalidKey(_))
        ));
        assert!(matches!(
            c.get(&p, &"k".repeat(600)).await,
            Err(PluginCacheError::InvalidKey(_))
        ));
    }
}
