//! The plugins a host has loaded, keyed by id.
//!
//! The map itself is swapped atomically (`ArcSwap`): readers take a snapshot
//! without locking, and installing a new version of a plugin replaces its
//! entry in one step while runs already holding the old `Arc<Plugin>` finish
//! on the version they started with; a version is dropped when its last run
//! ends. An entry may also hold a canary: a second version that receives a
//! percentage of new runs until it is promoted or removed.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::plugin::Plugin;

/// The versions of one plugin id that take new runs.
#[derive(Clone)]
pub struct Entry {
    pub current: Arc<Plugin>,
    pub canary: Option<Canary>,
}

/// A version on trial, with the share of new runs it receives.
#[derive(Clone)]
pub struct Canary {
    pub plugin: Arc<Plugin>,
    /// 1..=99.
    pub percent: u8,
}

type Plugins = BTreeMap<String, Entry>;

/// Lock-free registry of immutable plugin versions.
#[derive(Default)]
pub struct Registry {
    plugins: ArcSwap<Plugins>,
}

impl Registry {
    /// The version a new run of `id` goes to: the canary for its share of
    /// runs, the current version otherwise.
    pub fn get(&self, id: &str) -> Option<Arc<Plugin>> {
        let plugins = self.plugins.load();
        let entry = plugins.get(id)?;
        Some(match &entry.canary {
            Some(canary) if fastrand::u8(0..100) < canary.percent => canary.plugin.clone(),
            _ => entry.current.clone(),
        })
    }

    /// The current (not canary) version of a plugin.
    pub fn current(&self, id: &str) -> Option<Arc<Plugin>> {
        self.plugins.load().get(id).map(|e| e.current.clone())
    }

    /// Both versions taking runs of a plugin.
    pub fn entry(&self, id: &str) -> Option<Entry> {
        self.plugins.load().get(id).cloned()
    }

    /// All current plugins, ordered by id.
    pub fn list(&self) -> Vec<Arc<Plugin>> {
        self.plugins
            .load()
            .values()
            .map(|e| e.current.clone())
            .collect()
    }

    /// Installs a plugin as the current version of its id, replacing (and
    /// returning) the previous current one; a canary of the id is dropped.
    /// The plugin's budget becomes the id's bulkhead limits.
    pub fn install(&self, plugin: Arc<Plugin>) -> Option<Arc<Plugin>> {
        plugin.apply_budget();
        let id = plugin.id().to_string();
        let mut previous = None;
        self.plugins.rcu(|current| {
            let mut next = Plugins::clone(current);
            previous = next
                .insert(
                    id.clone(),
                    Entry {
                        current: plugin.clone(),
                        canary: None,
                    },
                )
                .map(|e| e.current);
            next
        });
        previous
    }

    /// Installs a canary beside the current version, which must exist.
    /// Returns false (and changes nothing) when there is no current version.
    pub fn install_canary(&self, plugin: Arc<Plugin>, percent: u8) -> bool {
        let id = plugin.id().to_string();
        let mut installed = false;
        self.plugins.rcu(|current| {
            let mut next = Plugins::clone(current);
            installed = match next.get_mut(&id) {
                Some(entry) => {
                    entry.canary = Some(Canary {
                        plugin: plugin.clone(),
                        percent: percent.clamp(1, 99),
                    });
                    true
                }
                None => false,
            };
            next
        });
        installed
    }

    /// Makes the canary the current version; returns it, or `None` when
    /// there is no canary.
    pub fn promote(&self, id: &str) -> Option<Arc<Plugin>> {
        let canary = self.entry(id)?.canary?.plugin;
        self.install(canary.clone());
        Some(canary)
    }

    /// Removes the canary of `id` (its runs in flight finish); returns it.
    pub fn drop_canary(&self, id: &str) -> Option<Arc<Plugin>> {
        let mut dropped = None;
        self.plugins.rcu(|current| {
            let mut next = Plugins::clone(current);
            dropped = next.get_mut(id).and_then(|e| e.canary.take());
            next
        });
        dropped.map(|c| c.plugin)
    }

    /// Removes a plugin; runs in flight keep their version.
    pub fn remove(&self, id: &str) -> Option<Arc<Plugin>> {
        let mut removed = None;
        self.plugins.rcu(|current| {
            let mut next = Plugins::clone(current);
            removed = next.remove(id).map(|e| e.current);
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
