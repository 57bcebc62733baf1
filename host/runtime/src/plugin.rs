//! A loaded plugin: its manifest, its compiled and pre-linked component and
//! its bulkhead. Immutable once built and shared as `Arc<Plugin>`: a run
//! holds the `Arc` it started with, so replacing a plugin in the registry
//! never disturbs runs already in flight.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::bindings::{agent::AgentPre, handler::ActionHandlerPre, step::StepPre};
use crate::bulkhead::Bulkhead;
use crate::capabilities::config::ConfigValues;
use crate::manifest::{Manifest, PluginKind};
use crate::run_state::RunState;

/// The component pre-instantiated against the host's linker for its world,
/// so each run only pays for instantiation.
pub(crate) enum Exports {
    Agent(AgentPre<RunState>),
    Step(StepPre<RunState>),
    Handler(ActionHandlerPre<RunState>),
}

impl From<crate::bindings::types::AgentInfo> for Described {
    fn from(info: crate::bindings::types::AgentInfo) -> Self {
        Self {
            id: info.id,
            name: info.name,
            version: info.version,
            description: info.description,
            actions: info.actions,
        }
    }
}

impl From<crate::bindings::types::StepInfo> for Described {
    fn from(info: crate::bindings::types::StepInfo) -> Self {
        Self {
            id: info.id,
            name: info.name,
            version: info.version,
            description: info.description,
            actions: Vec::new(),
        }
    }
}

impl From<crate::bindings::types::HandlerInfo> for Described {
    fn from(info: crate::bindings::types::HandlerInfo) -> Self {
        Self {
            id: info.id,
            name: info.name,
            version: info.version,
            description: info.description,
            actions: Vec::new(),
        }
    }
}

/// What the plugin says about itself (`describe()`), read once at load.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Described {
    pub id: String,
    pub name: String,
    pub version: String,
    pub description: String,
    /// Actions the agent says it may emit (empty for steps).
    pub actions: Vec<String>,
}

/// One immutable, versioned plugin.
pub struct Plugin {
    pub manifest: Manifest,
    /// SHA-256 of the component bytes.
    pub digest: String,
    pub described: Described,
    /// The component file it was loaded from.
    pub source: PathBuf,
    pub(crate) id: Arc<str>,
    pub(crate) exports: Exports,
    /// Shared by every version of this plugin id.
    pub(crate) bulkhead: Arc<Bulkhead>,
    pub(crate) config: Arc<ConfigValues>,
    pub(crate) allowed_actions: HashSet<String>,
    /// What this version's runs came to, for rollouts.
    pub outcomes: Outcomes,
}

/// Runs of one plugin version and how many failed through the plugin's own
/// fault (trap, timeout in guest code, memory limit, invalid or oversized
/// output). Failures of the LLM, the queue or the caller do not count: they
/// say nothing about the version.
#[derive(Debug, Default)]
pub struct Outcomes {
    runs: AtomicU64,
    faults: AtomicU64,
}

impl Outcomes {
    pub(crate) fn record(&self, fault: bool) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        if fault {
            self.faults.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs that reached the plugin (admitted by its bulkhead).
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Runs that failed through the plugin's own fault.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }
}

impl Plugin {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn kind(&self) -> PluginKind {
        match self.exports {
            Exports::Agent(_) => PluginKind::Agent,
            Exports::Step(_) => PluginKind::Step,
            Exports::Handler(_) => PluginKind::Handler,
        }
    }

    /// Runs of this plugin executing now.
    pub fn in_flight(&self) -> usize {
        self.bulkhead.in_flight()
    }

    /// Makes this version's budget the limits of the bulkhead its id's
    /// versions share (when it becomes the current version).
    pub fn apply_budget(&self) {
        let b = &self.manifest.budget;
        self.bulkhead.configure(
            b.max_concurrent as usize,
            b.max_queued as usize,
            b.max_queue_wait(),
        );
    }

    /// Runs of this plugin waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.bulkhead.queued()
    }

    /// Short form of the digest for listings.
    pub fn short_digest(&self) -> &str {
        &self.digest[..12.min(self.digest.len())]
    }
}

/// What listings show of a plugin (the CLI's `plugins list --json` and the
/// API's `/api/plugins`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginSummary<'a> {
    pub id: &'a str,
    pub version: &'a str,
    pub kind: PluginKind,
    pub digest: &'a str,
    pub description: &'a str,
    pub allowed_actions: &'a [String],
    pub budget: &'a crate::manifest::Budget,
    pub in_flight: usize,
    pub queued: usize,
}

impl Plugin {
    pub fn summary(&self) -> PluginSummary<'_> {
        PluginSummary {
            id: self.id(),
            version: &self.manifest.version,
            kind: self.kind(),
            digest: &self.digest,
            description: &self.described.description,
            allowed_actions: &self.manifest.allowed_actions,
            budget: &self.manifest.budget,
            in_flight: self.in_flight(),
            queued: self.queued(),
        }
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("id", &self.id)
            .field("version", &self.manifest.version)
            .field("kind", &self.kind())
            .field("digest", &self.digest)
            .finish()
    }
}
