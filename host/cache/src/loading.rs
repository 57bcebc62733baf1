//! A read-through cache whose loads are single-flight: N concurrent misses on
//! one key run the loader once and all get its result; a failed load is not
//! cached and is reported to every waiter (moka's `try_get_with`).

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::stats::{CacheStats, StatsSnapshot};

/// A named single-flight loading cache.
pub struct LoadingCache<K, V> {
    name: String,
    inner: moka::future::Cache<K, V>,
    stats: Arc<CacheStats>,
}

impl<K, V> LoadingCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// `ttl` bounds an entry's life (`None`: until evicted or invalidated).
    pub fn new(name: &str, max_entries: u64, ttl: Option<Duration>) -> Self {
        let stats = Arc::new(CacheStats::default());
        let listener_stats = stats.clone();
        let mut builder = moka::future::Cache::builder()
            .name(name)
            .max_capacity(max_entries)
            .eviction_listener(move |_k, _v, cause| match cause {
                moka::notification::RemovalCause::Size => listener_stats.eviction(),
                moka::notification::RemovalCause::Expired => listener_stats.expiration(),
                _ => {}
            });
        if let Some(ttl) = ttl {
            builder = builder.time_to_live(ttl);
        }
        Self {
            name: name.to_string(),
            inner: builder.build(),
            stats,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cached value, or the loader's (run once however many callers miss
    /// at the same time). Errors are shared by all waiters and not cached.
    pub async fn get_or_load<E, Fut>(&self, key: K, load: impl FnOnce() -> Fut) -> Result<V, Arc<E>>
    where
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        if let Some(v) = self.inner.get(&key).await {
            self.stats.hit();
            return Ok(v);
        }
        let loaded_here = AtomicBool::new(false);
        let result = self
            .inner
            .try_get_with(key, async {
                loaded_here.store(true, Ordering::Relaxed);
                self.stats.load();
                load().await
            })
            .await;
        if loaded_here.load(Ordering::Relaxed) {
            self.stats.miss();
            if result.is_err() {
                self.stats.load_failure();
            }
        } else {
            self.stats.coalesced_wait();
        }
        result
    }

    /// Puts a value in directly (e.g. a background refresh's result).
    pub async fn insert(&self, key: K, value: V) {
        self.inner.insert(key, value).await;
    }

    pub(crate) fn stats_handle(&self) -> &CacheStats {
        &self.stats
    }

    pub async fn invalidate(&self, key: &K) {
        self.inner.invalidate(key).await;
    }

    pub fn invalidate_all(&self) {
        self.inner.invalidate_all();
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// Applies pending evictions now (moka does them lazily).
    pub async fn run_pending_tasks(&self) {
        self.inner.run_pending_tasks().await;
    }
}
