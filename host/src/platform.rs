//! Agent runs with governance around them: the calling context must be one
//! the agent's policy allows, and actions of agents whose approval is
//! required wait as pending approvals instead of being applied. Shared by
//! the HTTP API and orchestration jobs.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::api::{AgentRequest, AgentRun};
use crate::bsm::Governance;
use crate::error::RunError;
use crate::knowledge_docs::KnowledgeLibrary;
use crate::llm::LlmClient;
use crate::reports::ReportStore;
use crate::runtime::Runtime;
use crate::store::{ApprovalRecord, ApprovalStatus, Store, StoreError};

/// What happens to an action an agent emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Applied,
    PendingApproval,
}

/// An emitted action and its fate.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionOutcome {
    pub name: String,
    pub args: Value,
    pub status: ActionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
}

/// An agent run that passed governance.
#[derive(Debug, Clone, Serialize)]
pub struct GovernedRun {
    pub run: AgentRun,
    pub actions: Vec<ActionOutcome>,
}

/// Why a governed run did not happen or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlatformError {
    #[error("agent {agent:?} may not be called from the {context:?} context (allowed: {allowed})")]
    ContextNotAllowed {
        agent: String,
        context: String,
        allowed: String,
    },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PlatformError {
    pub fn code(&self) -> &'static str {
        match self {
            PlatformError::ContextNotAllowed { .. } => "CONTEXT_NOT_ALLOWED",
            PlatformError::Run(e) => e.code(),
            PlatformError::Store(_) => "STORAGE_ERROR",
        }
    }
}

/// Everything a request or a job needs, shared.
pub struct Platform {
    pub runtime: Arc<Runtime>,
    pub governance: Governance,
    pub store: Store,
    pub reports: Arc<ReportStore>,
    pub llm: Option<Arc<LlmClient>>,
    pub knowledge: KnowledgeLibrary,
    /// The original BSM knowledge directory, when one is configured.
    pub knowledge_dir: Option<PathBuf>,
}

impl Platform {
    /// Runs an agent under its governance policy.
    pub async fn run_agent(
        &self,
        agent: &str,
        request: AgentRequest,
    ) -> Result<GovernedRun, PlatformError> {
        // The version looked up here is the one that runs.
        let plugin =
            self.runtime
                .registry()
                .get(agent)
                .ok_or_else(|| RunError::PluginNotFound {
                    id: agent.to_string(),
                })?;
        let policy = self.governance.policy(agent);
        let context = request.context.calling_context.clone();
        if let Some(policy) = policy
            && !policy.allows_context(&context)
        {
            return Err(PlatformError::ContextNotAllowed {
                agent: agent.to_string(),
                context,
                allowed: policy.contexts.join(", "),
            });
        }
        let job = request.context.correlation_id.clone();
        let run = self.runtime.run_agent_plugin(&plugin, request).await;
        let outcome = match &run {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        metrics::counter!("bsm_plugin_runs_total", "plugin" => agent.to_string(), "outcome" => outcome).increment(1);
        let run = run?;
        let needs_approval = policy.is_some_and(|p| p.approval_required);
        let mut actions = Vec::with_capacity(run.output.actions.len());
        for action in &run.output.actions {
            let approval_id = if needs_approval {
                let record = ApprovalRecord {
                    id: uuid::Uuid::new_v4().simple().to_string(),
                    agent_id: agent.to_string(),
                    job_id: job.clone(),
                    action: action.name.clone(),
                    args: action.args.clone(),
                    status: ApprovalStatus::Pending,
                    approvers: policy.map(|p| p.approvers.clone()).unwrap_or_default(),
                    created_at: crate::store::now(),
                    decided_at: None,
                    decided_by: None,
                };
                self.store.insert_approval(&record).await?;
                Some(record.id)
            } else {
                None
            };
            actions.push(ActionOutcome {
                name: action.name.clone(),
                args: action.args.clone(),
                status: if approval_id.is_some() {
                    ActionStatus::PendingApproval
                } else {
                    ActionStatus::Applied
                },
                approval_id,
            });
        }
        Ok(GovernedRun { run, actions })
    }

    /// The knowledge of the configured BSM layout as one text ("" without one).
    pub async fn knowledge_text(&self) -> String {
        let Some(dir) = &self.knowledge_dir else {
            return String::new();
        };
        match self.knowledge.joined(dir).await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(error = %e, "knowledge could not be loaded; continuing without");
                String::new()
            }
        }
    }
}
