//! `bsm:plugin/config`: serves the `[config]` table of the plugin's manifest,
//! and nothing else (no host environment leaks into plugins).

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{Capability, RunInfo};
use crate::bindings::config::{self, Error, Host};
use crate::tape::{self, Tape};
use serde_json::Value;

/// The `config` capability: the values come with each plugin, so there is
/// no process-wide state.
pub struct Config;

impl Capability for Config {
    type Shared = ();
    type State = ConfigState;

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut ConfigState,
    ) -> wasmtime::Result<()> {
        config::add_to_linker::<T, HasSelf<ConfigState>>(linker, get)
    }

    fn for_run(_: &(), run: &RunInfo<'_>) -> ConfigState {
        let mut state = ConfigState::new(run.config.clone());
        state.tape = run.tape.clone();
        state
    }
}

/// A plugin's settings, flattened to strings; shared by all its runs.
pub type ConfigValues = BTreeMap<String, String>;

/// Per-run state: a handle on the plugin's settings.
pub struct ConfigState {
    values: Arc<ConfigValues>,
    tape: Option<Arc<Tape>>,
}

impl ConfigState {
    pub fn new(values: Arc<ConfigValues>) -> Self {
        Self { values, tape: None }
    }
}

impl Host for ConfigState {
    async fn get(&mut self, key: String) -> Result<Option<String>, Error> {
        let args = tape::args(&self.tape, &key);
        tape::through(&self.tape, "config.get", args, Error::Upstream, async {
            Ok(self.values.get(&key).cloned())
        })
        .await
    }

    async fn get_all(&mut self) -> Result<Vec<(String, String)>, Error> {
        tape::through(&self.tape, "config.get-all", Value::Null, Error::Upstream, async {
            Ok(self
                .values
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        })
        .await
    }
}
