//! The served BSM directory, edited while the server runs: a changed or new
//! agent YAML becomes a new version of its `prompt-agent` instance, a
//! removed one is unloaded, and a changed `agents/registry.yaml` governs
//! new runs. The registry is re-validated as a whole: with any violation
//! the edit is refused, the violations are logged, and the governance in
//! force keeps governing. (Agents quarantined before the edit stay
//! quarantined: only violations the edit brings in refuse it.)

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::bsm::agents::manifest_for;
use crate::bsm::governance::KNOWN_CONTEXTS;
use crate::bsm::knowledge::BsmKnowledge;
use crate::bsm::{BsmLayout, Governance};
use crate::governed::Governed;

/// Reloads one BSM directory into a running platform.
pub struct AgentReload {
    dir: PathBuf,
    allow_list: Vec<String>,
    governed: Arc<Governed>,
    /// The agent ids the directory served at the last (re)load.
    served: Mutex<BTreeSet<String>>,
    /// The directory's knowledge, ingested again on every change.
    knowledge: Option<BsmKnowledge>,
}

impl AgentReload {
    pub fn new(
        dir: PathBuf,
        allow_list: Vec<String>,
        governed: Arc<Governed>,
        served: BTreeSet<String>,
        knowledge: Option<BsmKnowledge>,
    ) -> Self {
        Self {
            dir,
            allow_list,
            governed,
            served: Mutex::new(served),
            knowledge,
        }
    }

    /// Reads the directory again and applies it; returns how many agents
    /// changed, or why the edit was refused.
    pub async fn reload(&self) -> Result<usize, String> {
        let layout = BsmLayout::load(&self.dir).map_err(|e| format!("{e:#}"))?;
        let mut governance = Governance::assess(&layout, &self.allow_list);
        let before = self.governed.governance();
        let introduced: Vec<String> = governance
            .violations()
            .iter()
            .filter(|v| !before.violations().contains(v))
            .map(|v| format!("  - {v}"))
            .collect();
        if !introduced.is_empty() {
            return Err(format!(
                "the edit brings {} governance violation(s); the previous registry keeps governing:\n{}",
                introduced.len(),
                introduced.join("\n")
            ));
        }
        let runtime = self.governed.runtime();
        let prompt_agent = runtime
            .registry()
            .current("prompt-agent")
            .ok_or("the prompt-agent plugin is not loaded")?;
        let bytes = tokio::fs::read(&prompt_agent.source)
            .await
            .map_err(|e| format!("cannot read prompt-agent: {e}"))?;
        let mut changed = 0;
        for def in layout
            .agents
            .iter()
            .filter(|d| !governance.is_quarantined(&d.id))
        {
            let manifest = manifest_for(def, self.knowledge.as_ref().map(|k| &k.binding));
            if runtime
                .registry()
                .current(&def.id)
                .is_some_and(|p| p.manifest == manifest)
            {
                continue;
            }
            let plugin = runtime
                .build_plugin(manifest, bytes.clone(), prompt_agent.source.clone())
                .await
                .map_err(|e| format!("agent {}: {e}", def.id))?;
            runtime.registry().install(plugin);
            changed += 1;
        }
        let now: BTreeSet<String> = layout
            .agents
            .iter()
            .filter(|d| !governance.is_quarantined(&d.id))
            .map(|d| d.id.clone())
            .collect();
        let gone: Vec<String> = self
            .served
            .lock()
            .unwrap()
            .difference(&now)
            .cloned()
            .collect();
        for id in &gone {
            runtime.registry().remove(id);
            changed += 1;
        }
        for plugin in runtime.registry().list() {
            governance.insert_default(plugin.id(), KNOWN_CONTEXTS);
        }
        self.governed.set_governance(governance);
        *self.served.lock().unwrap() = now;
        Ok(changed)
    }

    /// Reloads and logs the outcome (for the directory watcher).
    pub async fn reload_logged(&self) {
        if let Some(knowledge) = &self.knowledge {
            knowledge.ingest_logged().await;
        }
        match self.reload().await {
            Ok(changed) => {
                tracing::info!(dir = %self.dir.display(), changed, "BSM agent set reloaded")
            }
            Err(e) => {
                metrics::counter!("bsm_agent_reloads_refused_total").increment(1);
                tracing::error!(dir = %self.dir.display(), error = %e, "BSM agent set edit refused")
            }
        }
    }
}
