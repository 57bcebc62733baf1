//! Stale-while-revalidate: an entry past its soft TTL is still served, while
//! exactly one background refresh runs; a failed refresh keeps the old
//! value. Past the hard TTL an entry is gone and the next read loads it
//! (single-flight, as in [`super::loading::LoadingCache`]).

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::loading::LoadingCache;
use super::stats::StatsSnapshot;

/// The loader of a stale-while-revalidate cache; it must be callable again
/// in the background, hence owned by the cache.
pub type Loader<K, V> = Arc<dyn Fn(K) -> BoxFuture<'static, anyhow::Result<V>> + Send + Sync>;

#[derive(Clone)]
struct Stamped<V> {
    value: V,
    loaded_at: Instant,
}

/// Soft and hard TTLs of a stale-while-revalidate cache.
#[derive(Debug, Clone, Copy)]
pub struct SwrTtl {
    /// After this, reads trigger a background refresh (and still get the value).
    pub soft: Duration,
    /// After this, the entry is gone.
    pub hard: Duration,
}

/// A stale-while-revalidate cache over a loader.
pub struct SwrCache<K, V> {
    entries: Arc<LoadingCache<K, Stamped<V>>>,
    loader: Loader<K, V>,
    soft_ttl: Duration,
    refreshing: Arc<Mutex<HashSet<K>>>,
}

impl<K, V> SwrCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(name: &str, max_entries: u64, ttl: SwrTtl, loader: Loader<K, V>) -> Self {
        Self {
            entries: Arc::new(LoadingCache::new(name, max_entries, Some(ttl.hard))),
            loader,
            soft_ttl: ttl.soft,
            refreshing: Arc::default(),
        }
    }

    /// The value for `key`: fresh, stale (refreshing in the background), or
    /// loaded now.
    pub async fn get(&self, key: K) -> Result<V, Arc<anyhow::Error>> {
        let loader = self.loader.clone();
        let load_key = key.clone();
        let stamped = self
            .entries
            .get_or_load(key.clone(), move || async move {
                let value = loader(load_key).await?;
                Ok::<_, anyhow::Error>(Stamped {
                    value,
                    loaded_at: Instant::now(),
                })
            })
            .await?;
        if stamped.loaded_at.elapsed() >= self.soft_ttl {
            self.entries.stats_handle().stale();
            self.refresh_in_background(key);
        }
        Ok(stamped.value)
    }

    /// Starts one refresh of `key` unless one is already running.
    fn refresh_in_background(&self, key: K) {
        if !self.refreshing.lock().unwrap().insert(key.clone()) {
            return;
        }
        let (entries, loader, refreshing) = (
            self.entries.clone(),
            self.loader.clone(),
            self.refreshing.clone(),
        );
        tokio::spawn(async move {
            entries.stats_handle().refresh();
            match loader(key.clone()).await {
                Ok(value) => {
                    entries
                        .insert(
                            key.clone(),
                            Stamped {
                                value,
                                loaded_at: Instant::now(),
                            },
                        )
                        .await;
                }
                Err(e) => {
                    entries.stats_handle().refresh_failure();
                    tracing::warn!(cache = entries.name(), error = %e, "background refresh failed; keeping the stale value");
                }
            }
            refreshing.lock().unwrap().remove(&key);
        });
    }

    /// Refreshes running now.
    pub fn refreshing(&self) -> usize {
        self.refreshing.lock().unwrap().len()
    }

    pub async fn invalidate(&self, key: &K) {
        self.entries.invalidate(key).await;
    }

    pub fn invalidate_all(&self) {
        self.entries.invalidate_all();
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.entries.stats()
    }
}
