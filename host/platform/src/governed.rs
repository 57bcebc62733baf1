//! Plugin runs with governance around them, the one path for agents and
//! steps alike: the plugin must not be quarantined, the calling context
//! must be one its policy allows, every run is counted in the metrics, and
//! the actions it emits are applied or, where its policy requires approval,
//! kept as pending approvals. Used by the facade and by orchestration jobs.

use std::sync::Arc;

use arc_swap::ArcSwap;

use serde::Serialize;
use serde_json::Value;

use crate::bsm::Governance;
use crate::bsm::governance::{Policy, Violation};
use crate::deploy::Deployer;
use crate::dispatch::ActionSettings;
use crate::outbox::{ActionState, Attempt, OutboxAction};
use crate::store::{ActionWrites, ApprovalRecord, ApprovalStatus, Store, StoreError};
use bsm_runtime::api::{Action, AgentRequest, AgentRun, Contribution, StepRequest, StepRun};
use bsm_runtime::error::RunError;
use bsm_runtime::{Plugin, Runtime};

/// What happens to an action a plugin emitted: it waits for approval, or
/// it is queued in the outbox for its handler (see `crate::outbox` for the
/// rest of its life, `GET /api/actions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Queued,
    PendingApproval,
    /// No handler is configured for it (`error` says so): it is recorded
    /// dead at once, rather than queued for a dispatcher that would only
    /// find out.
    Dead,
}

/// An emitted action and its fate.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionOutcome {
    /// Its outbox id.
    pub id: String,
    pub name: String,
    pub args: Value,
    pub status: ActionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Why it is dead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An agent run that passed governance.
#[derive(Debug, Clone, Serialize)]
pub struct GovernedRun {
    pub run: AgentRun,
    pub actions: Vec<ActionOutcome>,
    /// The approvals and outbox entries to write with the run's record.
    #[serde(skip)]
    pub writes: ActionWrites,
}

/// A step run that passed governance; a decision's actions went through
/// the same approvals as an agent's.
#[derive(Debug, Clone, Serialize)]
pub struct GovernedStep {
    pub run: StepRun,
    pub actions: Vec<ActionOutcome>,
    #[serde(skip)]
    pub writes: ActionWrites,
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
    #[error("unknown context {context:?} (known: {known})")]
    UnknownContext { context: String, known: String },
    #[error("agent {agent:?} is quarantined: {}", list(.violations))]
    Quarantined {
        agent: String,
        violations: Vec<Violation>,
    },
    #[error(
        "{running} jobs are running and {queued} waiting, the most this host takes; retry in {retry_after_ms} ms"
    )]
    Overloaded {
        running: usize,
        queued: usize,
        retry_after_ms: u64,
    },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn list(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.problem))
        .collect::<Vec<_>>()
        .join("; ")
}

impl PlatformError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            PlatformError::ContextNotAllowed { .. } => "CONTEXT_NOT_ALLOWED",
            PlatformError::UnknownContext { .. } => "UNKNOWN_CONTEXT",
            PlatformError::Quarantined { .. } => "AGENT_QUARANTINED",
            PlatformError::Overloaded { .. } => "JOBS_OVERLOADED",
            PlatformError::Run(e) => e.code(),
            PlatformError::Store(_) => "STORAGE_ERROR",
        }
    }
}

/// Runs plugins under their governance.
pub struct Governed {
    runtime: Arc<Runtime>,
    /// Replaced as a whole when the agent set is reloaded.
    governance: ArcSwap<Governance>,
    store: Store,
    /// Watches new versions' runs (automatic rollback).
    deployer: Arc<Deployer>,
    /// The routes of this process's dispatcher, when it delivers actions
    /// (`bsm serve`): an action none routes is dead when it is written.
    /// Without a dispatcher here (a CLI run), a server on the same data
    /// directory delivers with its own routes, so actions are queued.
    routes: Option<ActionSettings>,
}

impl Governed {
    pub fn new(
        runtime: Arc<Runtime>,
        governance: Governance,
        store: Store,
        deployer: Arc<Deployer>,
        routes: Option<ActionSettings>,
    ) -> Self {
        Self {
            runtime,
            governance: ArcSwap::from_pointee(governance),
            store,
            deployer,
            routes,
        }
    }

    pub fn deployer(&self) -> &Arc<Deployer> {
        &self.deployer
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The governance in force now.
    pub fn governance(&self) -> Arc<Governance> {
        self.governance.load_full()
    }

    /// Puts a re-validated governance in force for new runs.
    pub fn set_governance(&self, governance: Governance) {
        self.governance.store(Arc::new(governance));
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs an agent under its governance policy.
    pub async fn run_agent(
        &self,
        agent: &str,
        request: AgentRequest,
    ) -> Result<GovernedRun, PlatformError> {
        let governance = self.governance.load_full();
        let (plugin, policy) = admit(
            &self.runtime,
            &governance,
            agent,
            &request.context.calling_context,
        )?;
        let job = request.context.correlation_id.clone();
        // Outside a job the payload is kept with the actions (a job's is
        // read from the job).
        let payload = request
            .context
            .event
            .is_none()
            .then(|| request.payload.clone());
        let run = self.runtime.run_agent_plugin(&plugin, request).await;
        self.deployer.after_run(&plugin);
        let run = counted(agent, run)?;
        let (actions, writes) = govern_actions(
            agent,
            &job,
            policy,
            self.routes.as_ref(),
            &run.output.actions,
            payload.as_ref(),
        );
        Ok(GovernedRun {
            run,
            actions,
            writes,
        })
    }

    /// Runs a step (routing or decision) under its governance policy; a
    /// decision's actions are governed like an agent's.
    pub async fn run_step(
        &self,
        step: &str,
        request: StepRequest,
    ) -> Result<GovernedStep, PlatformError> {
        let governance = self.governance.load_full();
        let (plugin, policy) = admit(
            &self.runtime,
            &governance,
            step,
            &request.context.calling_context,
        )?;
        let job = request.context.correlation_id.clone();
        let run = self.runtime.run_step_plugin(&plugin, request).await;
        self.deployer.after_run(&plugin);
        let run = counted(step, run)?;
        let (actions, writes) = match &run.contribution {
            Contribution::Decision { actions, .. } => {
                govern_actions(step, &job, policy, self.routes.as_ref(), actions, None)
            }
            Contribution::Route { .. } => Default::default(),
        };
        Ok(GovernedStep {
            run,
            actions,
            writes,
        })
    }
}

/// What governance makes of emitted actions: each becomes an outbox entry,
/// queued, or waiting for an approval (also to be written) when the
/// plugin's policy requires one, or dead when `routes` (this process's
/// dispatcher) has no handler for it. Nothing is written here: the caller
/// writes it with the run's record, in one transaction.
fn govern_actions(
    plugin: &str,
    job: &str,
    policy: Option<&Policy>,
    routes: Option<&ActionSettings>,
    emitted: &[Action],
    payload: Option<&Value>,
) -> (Vec<ActionOutcome>, ActionWrites) {
    let needs_approval = policy.is_some_and(|p| p.approval_required);
    let mut writes = ActionWrites::default();
    let mut outcomes = Vec::with_capacity(emitted.len());
    for action in emitted {
        let approval_id = needs_approval.then(|| {
            let record = ApprovalRecord {
                id: crate::store::new_row_id().simple().to_string(),
                agent_id: plugin.to_string(),
                job_id: job.to_string(),
                action: action.name.clone(),
                args: action.args.clone(),
                status: ApprovalStatus::Pending,
                approvers: policy.map(|p| p.approvers.clone()).unwrap_or_default(),
                created_at: crate::store::now(),
                decided_at: None,
                decided_by: None,
            };
            let id = record.id.clone();
            writes.approvals.push(record);
            id
        });
        let entry = OutboxAction::new(
            job,
            plugin,
            &action.name,
            &action.args,
            payload,
            approval_id.clone(),
        );
        // Without a handler here it is dead now (one awaiting approval
        // waits for it first).
        let entry = match routes.map(|r| r.check_route(&action.name)) {
            Some(Err(why)) if approval_id.is_none() => {
                let dead = entry.dead(why.clone());
                crate::dispatch::log_attempt(&dead, None, &Attempt::Dead(why));
                dead
            }
            _ => entry,
        };
        let status = match entry.status {
            ActionState::PendingApproval => ActionStatus::PendingApproval,
            ActionState::Dead => ActionStatus::Dead,
            _ => ActionStatus::Queued,
        };
        outcomes.push(ActionOutcome {
            id: entry.id.clone(),
            name: action.name.clone(),
            args: action.args.clone(),
            status,
            approval_id,
            error: entry.last_error.clone(),
        });
        writes.actions.push(entry);
    }
    (outcomes, writes)
}

/// The plugin version that will run (looked up once), if its governance
/// admits a call from `context`.
fn admit<'g>(
    runtime: &Runtime,
    governance: &'g Governance,
    id: &str,
    context: &str,
) -> Result<(Arc<Plugin>, Option<&'g Policy>), PlatformError> {
    if let Some(violations) = governance.quarantined().get(id) {
        return Err(PlatformError::Quarantined {
            agent: id.to_string(),
            violations: violations.clone(),
        });
    }
    let plugin = runtime
        .registry()
        .get(id)
        .ok_or_else(|| RunError::PluginNotFound { id: id.to_string() })?;
    let policy = governance.policy(id);
    if let Some(policy) = policy
        && !policy.allows_context(context)
    {
        return Err(PlatformError::ContextNotAllowed {
            agent: id.to_string(),
            context: context.to_string(),
            allowed: policy.contexts.join(", "),
        });
    }
    Ok((plugin, policy))
}

/// Counts a run by plugin and outcome (`bsm_plugin_runs_total`).
fn counted<T>(plugin: &str, run: Result<T, RunError>) -> Result<T, RunError> {
    let outcome = match &run {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    metrics::counter!("bsm_plugin_runs_total", "plugin" => plugin.to_string(), "outcome" => outcome)
        .increment(1);
    run
}
