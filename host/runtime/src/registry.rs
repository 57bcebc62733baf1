//! The plugins a host has loaded, keyed by id.
//!
//! The map itself is swapped atomically (`ArcSwap`): readers take a snapshot
//! without locking, and installing a new version of a plugin replaces its
//! entry in one step while runs already holding the old `Arc<Plugin>` finish
//! on the version they started with. This is what hot swap builds on.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::plugin::Plugin;

type Plugins = BTreeMap<String, Arc<Plugin>>;

/// Lock-free registry of immutable plugin versions.
#[derive(Default)]
pub struct Registry {
    plugins: ArcSwap<Plugins>,
}

impl Registry {
    /// The current version of a plugin.
    pub fn get(&self, id: &str) -> Option<Arc<Plugin>> {
        self.plugins.load().get(id).cloned()
    }

    /// All current plugins, ordered by id.
    pub fn list(&self) -> Vec<Arc<Plugin>> {
        self.plugins.load().values().cloned().collect()
    }

    /// Installs a plugin, replacing (and returning) any version with its id.
    pub fn install(&self, plugin: Arc<Plugin>) -> Option<Arc<Plugin>> {
        let id = plugin.id().to_string();
        let mut previous = None;
        self.plugins.rcu(|current| {
            let mut next = Plugins::clone(current);
            previous = next.insert(id.clone(), plugin.clone());
            next
        });
        previous
    }

    /// Removes a plugin; runs in flight keep their version.
    pub fn remove(&self, id: &str) -> Option<Arc<Plugin>> {
        let mut removed = None;
        self.plugins.rcu(|current| {
            let mut next = Plugins::clone(current);
            removed = next.remove(id);
            next
        });
        removed
    }

    pub fn len(&self) -> usize {
        self.plugins.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
