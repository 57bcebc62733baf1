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
    #[error(
        "{needed} more bytes would pass this plugin's cache quota of {quota} bytes (it holds {held})"
    )]
    QuotaExceeded { needed: u64, held: u64, quota: u64 },
}

/// Bytes each plugin's entries hold now, kept by inserts and the removal
/// listener (every cause: replaced, deleted, expired, evicted).
type Usage = Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, u64>>>;

fn weight(k: &Key, v: &Entry) -> u64 {
    (k.0.len() + k.1.len() + v.bytes.len()) as u64
}

/// The shared store of every plugin's cache entries.
pub struct PluginCache {
    inner: moka::future::Cache<Key, Entry>,
    settings: PluginCacheSettings,
    stats: Arc<CacheStats>,
    usage: Usage,
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
        let usage: Usage = Arc::default();
        let listener_usage = usage.clone();
        let inner = moka::future::Cache::builder()
            .name("plugin")
            .max_capacity(settings.max_bytes)
            .weigher(|k: &Key, v: &Entry| u32::try_from(weight(k, v)).unwrap_or(u32::MAX))
            .expire_after(PerEntryTtl)
            .eviction_listener(move |k: Arc<Key>, v: Entry, cause| {
                match cause {
                    RemovalCause::Size => listener_stats.eviction(),
                    RemovalCause::Expired => listener_stats.expiration(),
                    _ => {}
                }
                let mut usage = listener_usage.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(held) = usage.get_mut(&k.0) {
                    *held = held.saturating_sub(weight(&k, &v));
                    if *held == 0 {
                        usage.remove(&k.0);
                    }
                }
            })
            .build();
        Self {
            inner,
            settings,
            stats,
            usage,
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

    /// Stores a value for `ttl` (the default when `None`, capped at the
    /// maximum), if the plugin's entries stay within `quota` bytes (keys
    /// and values; a replaced entry's bytes are freed).
    pub async fn set(
        &self,
        plugin: &Arc<str>,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        quota: Option<u64>,
    ) -> Result<(), PluginCacheError> {
        let key = Self::key(plugin, key)?;
        if value.len() as u64 > self.settings.max_value_bytes {
            return Err(PluginCacheError::TooLarge(value.len() as u64));
        }
        let max_ttl = Duration::from_millis(self.settings.max_ttl_ms);
        let ttl = ttl
            .unwrap_or(Duration::from_millis(self.settings.default_ttl_ms))
            .min(max_ttl);
        let entry = Entry {
            bytes: Arc::from(value),
            ttl,
        };
        let needed = weight(&key, &entry);
        if let Some(quota) = quota {
            let replaced = self
                .inner
                .get(&key)
                .await
                .map_or(0, |old| weight(&key, &old));
            if self.held(plugin) + needed > quota + replaced {
                // Expired entries are freed by maintenance: run it once.
                self.inner.run_pending_tasks().await;
                let held = self.held(plugin);
                if held + needed > quota + replaced {
                    return Err(PluginCacheError::QuotaExceeded {
                        needed,
                        held,
                        quota,
                    });
                }
            }
        }
        // Counted before the insert, so the removal of this very entry
        // (evicted at once, or replaced later) always finds it counted.
        *self
            .usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(plugin.clone())
            .or_default() += needed;
        self.inner.insert(key, entry).await;
        Ok(())
    }

    /// Bytes a plugin's entries hold (keys and values).
    pub fn held(&self, plugin: &str) -> u64 {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(plugin)
            .copied()
            .unwrap_or(0)
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
        c.set(&a, "k", b"from a", None, None).await.unwrap();
        c.set(&b, "k", b"from b", None, None).await.unwrap();
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
        c.set(&p, "short", b"x", Some(Duration::from_millis(30)), None)
            .await
            .unwrap();
        c.set(&p, "long", b"y", Some(Duration::from_secs(60)), None)
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
            c.set(&p, &format!("k{i}"), &[0u8; 1000], None, None)
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
            c.set(&p, "k", &[0; 11], None, None).await,
            Err(PluginCacheError::TooLarge(11))
        );
        assert!(matches!(
            c.set(&p, "", b"x", None, None).await,
            Err(PluginCacheError::InvalidKey(_))
        ));
        assert!(matches!(
            c.get(&p, &"k".repeat(600)).await,
            Err(PluginCacheError::InvalidKey(_))
        ));
    }

    #[tokio::test]
    async fn a_plugin_stays_within_its_quota_and_replacing_frees_the_old_bytes() {
        let c = cache(1 << 20);
        let (p, q): (Arc<str>, Arc<str>) = (Arc::from("p"), Arc::from("q"));
        // Each entry weighs 1 (plugin) + 2 (key) + 100 (value) = 103 bytes.
        for i in 0..3 {
            c.set(&p, &format!("k{i}"), &[0; 100], None, Some(350))
                .await
                .unwrap();
        }
        assert_eq!(c.held("p"), 309);
        let refused = c.set(&p, "k3", &[0; 100], None, Some(350)).await;
        assert!(
            matches!(
                refused,
                Err(PluginCacheError::QuotaExceeded {
                    held: 309,
                    quota: 350,
                    ..
                })
            ),
            "{refused:?}"
        );
        c.set(&p, "k0", &[1; 100], None, Some(350))
            .await
            .expect("a replacement needs no new room");
        c.set(&q, "k0", &[0; 100], None, Some(350))
            .await
            .expect("another plugin has its own quota");
        c.delete(&p, "k1").await.unwrap();
        c.run_pending_tasks().await;
        assert_eq!(c.held("p"), 206, "a deletion frees its bytes");
        c.set(&p, "k3", &[0; 100], None, Some(350)).await.unwrap();
    }
}
