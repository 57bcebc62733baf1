//! `bsm:plugin/cache`: a plugin's own slice of the host's [`PluginCache`]
//! (namespaced by plugin id, TTL per entry, bounded by total bytes).

use std::sync::Arc;
use std::time::Duration;

use bsm_cache::PluginCache;
use bsm_cache::plugin_store::PluginCacheError;
use wasmtime::component::{HasSelf, Linker};

use super::{Caller, Capability, RunInfo};
use crate::bindings::cache::{self, Error, Host};
use crate::tape::{self, Tape};

/// The `cache` capability: one [`PluginCache`] for the process, each plugin
/// in its own namespace.
pub struct Cache;

impl Capability for Cache {
    type Shared = Arc<PluginCache>;
    type State = CacheState;

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut CacheState,
    ) -> wasmtime::Result<()> {
        cache::add_to_linker::<T, HasSelf<CacheState>>(linker, get)
    }

    fn for_run(store: &Arc<PluginCache>, run: &RunInfo<'_>) -> CacheState {
        let mut state = CacheState::new(store.clone(), run.caller.clone());
        state.quota = run.manifest.capabilities.cache.as_ref().map(|g| g.quota_bytes);
        state.tape = run.tape.clone();
        state
    }
}

/// Per-run state: the shared store and the namespace of this plugin.
pub struct CacheState {
    store: Arc<PluginCache>,
    caller: Caller,
    /// Bytes the plugin's entries may hold (`None`: built outside a
    /// manifest, only the cache's total bound).
    quota: Option<u64>,
    tape: Option<Arc<Tape>>,
}

impl CacheState {
    pub fn new(store: Arc<PluginCache>, caller: Caller) -> Self {
        Self {
            store,
            caller,
            quota: None,
            tape: None,
        }
    }
}

fn to_wit(e: PluginCacheError) -> Error {
    match e {
        PluginCacheError::TooLarge(n) => Error::TooLarge(n),
        PluginCacheError::InvalidKey(m) => Error::InvalidKey(m),
        e @ PluginCacheError::QuotaExceeded { .. } => Error::QuotaExceeded(format!(
            "{e} (capabilities.cache.quota-bytes)"
        )),
    }
}

impl Host for CacheState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, Error> {
        let args = tape::args(&self.tape, &key);
        tape::through(&self.tape, "cache.get", args, Error::Unavailable, async {
            self.store
                .get(&self.caller.plugin_id, &key)
                .await
                .map_err(to_wit)
        })
        .await
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), Error> {
        let args = tape::args(&self.tape, &(&key, &value, &ttl_ms));
        tape::through(&self.tape, "cache.set", args, Error::Unavailable, async {
            self.store
                .set(
                    &self.caller.plugin_id,
                    &key,
                    &value,
                    ttl_ms.map(Duration::from_millis),
                    self.quota,
                )
                .await
                .map_err(to_wit)
        })
        .await
    }

    async fn delete(&mut self, key: String) -> Result<(), Error> {
        let args = tape::args(&self.tape, &key);
        tape::through(&self.tape, "cache.delete", args, Error::Unavailable, async {
            self.store
                .delete(&self.caller.plugin_id, &key)
                .await
                .map_err(to_wit)
        })
        .await
    }
}
