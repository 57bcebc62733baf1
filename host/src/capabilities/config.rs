//! `bsm:plugin/config`: serves the `[config]` table of the plugin's manifest,
//! and nothing else (no host environment leaks into plugins).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::bindings::config::{Error, Host};

/// A plugin's settings, flattened to strings; shared by all its runs.
pub type ConfigValues = BTreeMap<String, String>;

/// Per-run state: a handle on the plugin's settings.
pub struct ConfigState {
    values: Arc<ConfigValues>,
}

impl ConfigState {
    pub fn new(values: Arc<ConfigValues>) -> Self {
        Self { values }
    }
}

impl Host for ConfigState {
    async fn get(&mut self, key: String) -> Result<Option<String>, Error> {
        Ok(self.values.get(&key).cloned())
    }

    async fn get_all(&mut self) -> Result<Vec<(String, String)>, Error> {
        Ok(self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
