//! [`Platform`]: the application behind the HTTP API and the CLI, as a
//! small set of methods. Callers never reach into its parts (runtime,
//! governance, database, reports, LLM client, orchestrator): what they may
//! do is what these methods offer, so the server's handlers stay thin and
//! the CLI takes the same governed path as the server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::access::ApiKeys;
use crate::batch_writer::Committed;
use crate::bsm::governance::{KNOWN_CONTEXTS, Policy, Violation};
use crate::bsm::knowledge::BsmKnowledge;
use crate::deploy::{DeployError, Upload, VersionView};
use crate::dispatch::Dispatch;
use crate::governed::{Governed, GovernedRun, GovernedStep, PlatformError};
use crate::orchestration::{Orchestrator, Pipelines, SharedEvent};
use crate::outbox::Outbox;
use crate::reports::{ReportRecord, ReportStore};
use crate::store::{ApprovalRecord, ApprovalStatus, DecideError, JobRecord, StoreError};
use bsm_cache::StatsSnapshot;
use bsm_llm::LlmClient;
use bsm_llm::breaker::{CircuitBreaker, Snapshot as BreakerSnapshot, State as BreakerState};
use bsm_runtime::api::{AgentRequest, StepRequest};
use bsm_runtime::{Plugin, PluginKind};

/// An agent as listings show it: served, or quarantined with its violations.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub id: String,
    pub name: String,
    pub version: String,
    pub description: String,
    pub actions: Vec<String>,
    pub governance: Option<Policy>,
    /// `active` or `quarantined`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}

/// A job with the plugin runs recorded for it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRuns {
    pub agent_runs: Vec<RunRow>,
    pub step_runs: Vec<RunRow>,
}

/// One recorded plugin run of a job.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRow {
    pub plugin_id: String,
    pub ok: bool,
    pub duration_ms: f64,
}

/// What the storage health check found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageHealth {
    /// "ok" or the database error.
    pub database: String,
    pub reports_writable: bool,
}

impl StorageHealth {
    pub fn healthy(&self) -> bool {
        self.database == "ok" && self.reports_writable
    }
}

/// Counters the JSON metrics summary reports (Prometheus has the detail).
#[derive(Default)]
pub(crate) struct Activity {
    pub runs_ok: AtomicU64,
    pub runs_failed: AtomicU64,
    pub jobs_submitted: AtomicU64,
}

/// The BSM application. Built by [`Platform::build`](crate::compose) from
/// settings; shared behind an `Arc`.
pub struct Platform {
    pub(crate) api_keys: ApiKeys,
    /// The outbox and its dispatcher (running only in the server).
    pub(crate) dispatch: Dispatch,
    pub(crate) governed: Arc<Governed>,
    pub(crate) orchestrator: Arc<Orchestrator>,
    pub(crate) reports: Arc<ReportStore>,
    pub(crate) llm: Option<Arc<LlmClient>>,
    pub(crate) knowledge: bsm_knowledge::Knowledge,
    /// The served BSM directory's knowledge, if it has any.
    pub(crate) bsm_knowledge: Option<BsmKnowledge>,
    /// Keeps the plugins and BSM directories watched while the platform lives.
    pub(crate) _watches: Vec<crate::watch::DirWatch>,
    /// Prunes old records while the platform lives (the server).
    pub(crate) _retention: Option<tokio_util::task::AbortOnDropHandle<()>>,
    pub(crate) activity: Activity,
    pub(crate) started_at: Instant,
}

impl Platform {
    // ---- runs ----

    /// Runs an agent under its governance (context, quarantine, approvals).
    pub async fn run_agent(
        &self,
        agent: &str,
        request: AgentRequest,
    ) -> Result<GovernedRun, PlatformError> {
        self.check_context(&request.context.calling_context)?;
        let mut run = self.counted(self.governed.run_agent(agent, request).await)?;
        // A direct run has no run record: its actions are written alone
        // (one transaction) before the caller hears of them.
        let writes = std::mem::take(&mut run.writes);
        let queued = writes.queues_delivery();
        self.governed.store().insert_action_writes(writes).await?;
        if queued {
            self.dispatch.wake();
        }
        Ok(run)
    }

    /// Runs a step under its governance; a decision's actions are governed
    /// like an agent's.
    pub async fn run_step(
        &self,
        step: &str,
        request: StepRequest,
    ) -> Result<GovernedStep, PlatformError> {
        let mut run = self.counted(self.governed.run_step(step, request).await)?;
        let writes = std::mem::take(&mut run.writes);
        let queued = writes.queues_delivery();
        self.governed.store().insert_action_writes(writes).await?;
        if queued {
            self.dispatch.wake();
        }
        Ok(run)
    }

    fn counted<T>(&self, result: Result<T, PlatformError>) -> Result<T, PlatformError> {
        let counter = if result.is_ok() {
            &self.activity.runs_ok
        } else {
            &self.activity.runs_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Is `id` a plugin or BSM agent this platform knows (served or
    /// quarantined)?
    pub fn knows(&self, id: &str) -> bool {
        self.governed.runtime().registry().get(id).is_some()
            || self.governed.governance().is_quarantined(id)
    }

    /// Refuses a context no agent can be governed in.
    pub fn check_context(&self, context: &str) -> Result<(), PlatformError> {
        if KNOWN_CONTEXTS.contains(&context) {
            Ok(())
        } else {
            Err(PlatformError::UnknownContext {
                context: context.to_string(),
                known: KNOWN_CONTEXTS.join(", "),
            })
        }
    }

    // ---- callers ----

    /// The API keys callers present (created, listed, revoked by admins).
    pub fn api_keys(&self) -> &ApiKeys {
        &self.api_keys
    }

    /// Records a webhook delivery id of `source`; `false` if it was seen
    /// before (a replay). Ids are kept as long as the retention keeps jobs.
    pub async fn first_delivery(&self, source: &str, id: &str) -> Result<bool, StoreError> {
        self.governed.store().record_delivery(source, id).await
    }

    // ---- agents and plugins ----

    /// Every agent: served ones first (by id), then the quarantined.
    pub fn agents(&self) -> Vec<AgentView> {
        let mut agents: Vec<AgentView> = self
            .governed
            .runtime()
            .registry()
            .list()
            .iter()
            .filter(|p| p.kind() == PluginKind::Agent)
            .map(|p| self.agent_view(p))
            .collect();
        agents.extend(self.quarantined());
        agents
    }

    /// One agent, served or quarantined.
    pub fn agent(&self, id: &str) -> Option<AgentView> {
        match self.governed.runtime().registry().get(id) {
            Some(p) if p.kind() == PluginKind::Agent => Some(self.agent_view(&p)),
            Some(_) => None,
            None => self.quarantined().into_iter().find(|a| a.id == id),
        }
    }

    /// Agents not served, with their violations.
    pub fn quarantined(&self) -> Vec<AgentView> {
        let governance = self.governed.governance();
        governance
            .quarantined()
            .iter()
            .map(|(id, violations)| {
                let def = governance.quarantined_definition(id);
                AgentView {
                    id: id.clone(),
                    name: def.map_or_else(|| id.clone(), |d| d.name.clone()),
                    version: def.map(|d| d.version.clone()).unwrap_or_default(),
                    description: def.map(|d| d.description.clone()).unwrap_or_default(),
                    actions: def.map(|d| d.actions.clone()).unwrap_or_default(),
                    governance: None,
                    status: "quarantined",
                    violations: violations.clone(),
                }
            })
            .collect()
    }

    fn agent_view(&self, p: &Plugin) -> AgentView {
        AgentView {
            id: p.id().to_string(),
            name: p.described.name.clone(),
            version: p.manifest.version.clone(),
            description: p.described.description.clone(),
            actions: p.manifest.allowed_actions.clone(),
            governance: self.governed.governance().policy(p.id()).cloned(),
            status: "active",
            violations: Vec::new(),
        }
    }

    /// Every loaded plugin (agents, BSM agent instances and steps), by id.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.governed.runtime().registry().list()
    }

    /// The current version of one plugin.
    pub fn plugin(&self, id: &str) -> Option<Arc<Plugin>> {
        self.governed.runtime().registry().get(id)
    }

    // ---- plugin versions (hot swap) ----

    /// Checks a new version completely and makes it current (or a canary);
    /// a refused version changes nothing.
    pub async fn install_plugin(&self, upload: Upload) -> Result<VersionView, DeployError> {
        self.governed.deployer().install(upload).await
    }

    /// The kept versions of a plugin, newest first.
    pub async fn plugin_versions(&self, id: &str) -> Result<Vec<VersionView>, DeployError> {
        self.governed.deployer().versions(id).await
    }

    /// Drops the canary, or makes an earlier (or the named) version current.
    pub async fn rollback_plugin(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<VersionView, DeployError> {
        self.governed
            .deployer()
            .rollback(id, version, "rolled back by an operator")
            .await
    }

    /// Makes the canary current.
    pub async fn promote_plugin(&self, id: &str) -> Result<VersionView, DeployError> {
        self.governed.deployer().promote(id).await
    }

    /// Unloads a plugin; runs in flight finish.
    pub async fn remove_plugin(&self, id: &str) -> Result<(), DeployError> {
        self.governed.deployer().remove(id).await
    }

    // ---- jobs ----

    /// Stores a job for `event` and starts it in the background. The job's
    /// event channel is open before this returns, so a subscriber that
    /// comes afterwards cannot miss its end.
    pub async fn submit_job(
        &self,
        event: String,
        payload: Value,
        context: String,
    ) -> Result<JobRecord, PlatformError> {
        let (job, stored) = self.start_job(event, payload, context)?;
        stored.await.map_err(StoreError)?;
        Ok(job)
    }

    /// Starts a job for `event` without waiting for its record to commit,
    /// for a caller that waits for the job anyway (`?wait=true`): the
    /// record's write answers on its own, and the caller awaits it before
    /// it tells anyone of the job. By then it has long committed (writes
    /// commit in order, and the job's end is written after it), so a
    /// waited job waits for one commit, its last, instead of two.
    pub fn start_job(
        &self,
        event: String,
        payload: Value,
        context: String,
    ) -> Result<(JobRecord, Committed), PlatformError> {
        self.check_context(&context)?;
        let Some(started) = self.orchestrator.submit(event, payload, context) else {
            metrics::counter!("bsm_jobs_refused_total").increment(1);
            return Err(PlatformError::Overloaded {
                running: self.orchestrator.running(),
                queued: self.orchestrator.queued(),
                retry_after_ms: 1000,
            });
        };
        self.activity.jobs_submitted.fetch_add(1, Ordering::Relaxed);
        Ok(started)
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.governed.store().job(id).await
    }

    /// The agent and step runs recorded for a job.
    pub async fn job_runs(&self, id: &str) -> Result<JobRuns, StoreError> {
        let rows = |runs: Vec<(String, bool, f64)>| {
            runs.into_iter()
                .map(|(plugin_id, ok, duration_ms)| RunRow {
                    plugin_id,
                    ok,
                    duration_ms,
                })
                .collect()
        };
        let store = self.governed.store();
        Ok(JobRuns {
            agent_runs: rows(store.agent_runs(id).await?),
            step_runs: rows(store.step_runs(id).await?),
        })
    }

    /// A job's events so far and, while it runs, a receiver of the next
    /// ones. `None` when the job is not in memory (e.g. after a restart).
    pub fn subscribe_job(
        &self,
        id: &str,
    ) -> Option<(Vec<SharedEvent>, Option<broadcast::Receiver<SharedEvent>>)> {
        self.orchestrator.hub().subscribe(id)
    }

    /// Waits until `job` (as submitted) ends or `timeout` passes, and gives
    /// its record then and whether it ended. A job this process ran ends
    /// with the record rebuilt from its terminal event, which the
    /// orchestrator emits once the same record is stored: no read of the
    /// database (and no parse of the result it just serialised) per waited
    /// job. Otherwise the record is read from the database.
    pub async fn wait_for_job(
        &self,
        job: JobRecord,
        timeout: Duration,
    ) -> Result<(JobRecord, bool), StoreError> {
        let end = match self.subscribe_job(&job.id) {
            None => Ok(None),
            Some((history, rx)) => match (history.into_iter().find(|e| e.is_terminal()), rx) {
                (Some(end), _) => Ok(Some(end)),
                (None, None) => Ok(None),
                (None, Some(mut rx)) => {
                    let waiting = async {
                        loop {
                            match rx.recv().await {
                                Ok(event) if event.is_terminal() => return Some(event),
                                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                                Err(broadcast::error::RecvError::Closed) => return None,
                            }
                        }
                    };
                    tokio::time::timeout(timeout, waiting).await
                }
            },
        };
        match end {
            Ok(Some(end)) => Ok((end.ended(job), true)),
            ended_unseen => {
                let id = job.id.clone();
                let stored = self.job(&id).await?.unwrap_or(job);
                Ok((stored, ended_unseen.is_ok()))
            }
        }
    }

    pub fn pipelines(&self) -> &Pipelines {
        self.orchestrator.pipelines()
    }

    /// Jobs running now.
    pub fn jobs_running(&self) -> usize {
        self.orchestrator.running()
    }

    /// Stops taking jobs, lets running ones finish within `grace`, and
    /// marks the rest interrupted. Returns how many were marked.
    pub async fn shutdown(&self, grace: Duration) -> Result<usize, StoreError> {
        if let Err(e) = self.knowledge.flush().await {
            tracing::warn!(error = %e, "a knowledge index was not saved; it is rebuilt at the next start");
        }
        let interrupted = match self.orchestrator.shutdown(grace).await {
            0 => 0,
            _ => self.governed.store().interrupt_running().await?,
        };
        if let Err(e) = self.reports.settle().await {
            tracing::warn!(error = %e, "reports not synced at shutdown; their files are checked against the database at the next start");
        }
        Ok(interrupted)
    }

    // ---- reports and approvals ----

    /// One report with its markdown.
    pub async fn report(&self, id: &str) -> Option<(ReportRecord, String)> {
        self.reports.get(id).await
    }

    pub async fn approvals(
        &self,
        status: Option<ApprovalStatus>,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        self.governed.store().approvals(status).await
    }

    /// One page of the reports, newest first.
    pub async fn reports_page(
        &self,
        request: &crate::paging::PageRequest,
    ) -> crate::paging::Page<ReportRecord> {
        self.reports.page(request).await
    }

    /// One page of the approvals (of one status, or all), newest first.
    pub async fn approvals_page(
        &self,
        status: Option<ApprovalStatus>,
        request: &crate::paging::PageRequest,
    ) -> Result<crate::paging::Page<ApprovalRecord>, StoreError> {
        let all = self.governed.store().approvals(status).await?;
        Ok(crate::paging::page(
            all,
            |a| (a.created_at.as_str(), a.id.as_str()),
            request,
            |_| true,
        ))
    }

    /// Approves (the action is queued for delivery) or rejects (recorded
    /// with who and why) a pending approval.
    pub async fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: Option<&str>,
    ) -> Result<ApprovalRecord, DecideError> {
        let record = self
            .governed
            .store()
            .decide_approval(id, approve, by, reason)
            .await?;
        self.dispatch.wake();
        Ok(record)
    }

    // ---- actions ----

    /// The outbox: actions and their delivery.
    pub fn outbox(&self) -> &Outbox {
        self.dispatch.outbox()
    }

    /// `bsm_actions{status}`: the outbox's actions per status, at scrape time.
    pub async fn publish_action_gauges(&self) {
        match self.outbox().counts().await {
            Ok(counts) => {
                for (state, n) in counts {
                    metrics::gauge!("bsm_actions", "status" => state.as_str()).set(n as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the outbox's actions"),
        }
    }

    /// Queues a failed or dead action again (attempts reset).
    pub async fn retry_action(
        &self,
        id: &str,
        by: &str,
    ) -> Result<crate::outbox::OutboxAction, crate::outbox::RetryError> {
        let action = self.outbox().retry(id, by).await?;
        self.dispatch.wake();
        Ok(action)
    }

    // ---- knowledge ----

    /// The document collections (for the API and the CLI).
    pub fn knowledge(&self) -> &bsm_knowledge::Knowledge {
        &self.knowledge
    }

    /// Ingests the served BSM directory's knowledge again (incrementally).
    pub async fn reingest_bsm_knowledge(&self) {
        if let Some(k) = &self.bsm_knowledge {
            k.ingest_logged().await;
        }
    }

    // ---- operations ----

    /// Counters of every host cache, by name.
    pub fn cache_stats(&self) -> BTreeMap<String, StatsSnapshot> {
        let stats: BTreeMap<String, StatsSnapshot> = self
            .governed
            .runtime()
            .cache_stats()
            .into_iter()
            .map(|(name, s)| (name.to_string(), s))
            .collect();
        stats
    }

    /// Empties one cache by name, or all with `None`; false for an unknown name.
    pub fn clear_cache(&self, name: Option<&str>) -> bool {
        self.governed.runtime().clear_cache(name)
    }

    /// The names of the caches [`Platform::clear_cache`] knows.
    pub fn cache_names(&self) -> Vec<String> {
        self.cache_stats().into_keys().collect()
    }

    pub fn llm_configured(&self) -> bool {
        self.llm.is_some()
    }

    /// Every LLM provider's circuit breaker.
    pub fn breakers(&self) -> Vec<BreakerSnapshot> {
        self.llm
            .iter()
            .flat_map(|c| c.breakers().map(CircuitBreaker::snapshot))
            .collect()
    }

    /// Closes a breaker and clears its window; `None` for an unknown name.
    pub fn reset_breaker(&self, name: &str) -> Option<BreakerSnapshot> {
        let breaker = self.llm.as_ref()?.breaker(name)?;
        breaker.reset();
        Some(breaker.snapshot())
    }

    /// Forces a breaker open (calls fail fast) until reset.
    pub fn isolate_breaker(&self, name: &str) -> Option<BreakerSnapshot> {
        let breaker = self.llm.as_ref()?.breaker(name)?;
        breaker.isolate();
        Some(breaker.snapshot())
    }

    /// Checks the database and that reports can be written. Each check
    /// writes and removes a probe file of its own name, so concurrent
    /// checks never see each other's file (a crash leftover is removed at
    /// the next open, like any temporary file of the report store).
    pub async fn storage_health(&self) -> StorageHealth {
        let database = match self.governed.store().ping().await {
            Ok(()) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        let probe = self.reports.dir().join(format!(
            "{}health-{}",
            crate::reports::TMP_PREFIX,
            uuid::Uuid::new_v4().simple()
        ));
        let reports_writable = tokio::fs::write(&probe, b"ok")
            .await
            .and_then(|_| std::fs::remove_file(&probe))
            .is_ok();
        StorageHealth {
            database,
            reports_writable,
        }
    }

    /// How long the platform has been up.
    pub fn uptime(&self) -> Duration {
        self.started_at.elapsed()
    }

    /// Sets the gauges a Prometheus scrape reads (in-flight and queued runs
    /// per plugin, breaker states, cache counters, running jobs, quarantine).
    pub fn publish_gauges(&self) {
        for p in self.plugins() {
            let id = p.id().to_string();
            metrics::gauge!("bsm_plugin_in_flight", "plugin" => id.clone())
                .set(p.in_flight() as f64);
            metrics::gauge!("bsm_plugin_queue_depth", "plugin" => id).set(p.queued() as f64);
        }
        for s in self.breakers() {
            let code = match s.state {
                BreakerState::Closed => 0.0,
                BreakerState::Open => 1.0,
                BreakerState::HalfOpen => 2.0,
                BreakerState::ForcedOpen => 3.0,
                BreakerState::Disabled => 4.0,
            };
            metrics::gauge!("bsm_circuit_breaker_state", "breaker" => s.name.clone()).set(code);
            metrics::gauge!("bsm_circuit_breaker_not_permitted_total", "breaker" => s.name)
                .set(s.not_permitted_calls as f64);
        }
        for p in self.llm.iter().flat_map(|c| c.providers()) {
            let limit = p.concurrency();
            let name = p.name().to_string();
            metrics::gauge!("bsm_llm_concurrency_limit", "provider" => name.clone())
                .set(limit.limit() as f64);
            metrics::gauge!("bsm_llm_in_flight", "provider" => name.clone())
                .set(limit.in_flight() as f64);
            metrics::gauge!("bsm_llm_waiting", "provider" => name).set(limit.waiting() as f64);
        }
        for (name, s) in self.cache_stats() {
            for (event, value) in [
                ("hits", s.hits),
                ("misses", s.misses),
                ("loads", s.loads),
                ("coalesced", s.coalesced),
                ("evictions", s.evictions),
            ] {
                metrics::gauge!("bsm_cache_events", "cache" => name.clone(), "event" => event)
                    .set(value as f64);
            }
        }
        metrics::gauge!("bsm_jobs_running").set(self.jobs_running() as f64);
        metrics::gauge!("bsm_agents_quarantined")
            .set(self.governed.governance().quarantined().len() as f64);
    }

    /// The JSON summary of `/api/metrics` (the original BSM's monitoring
    /// path): what runs, how it went, and what it costs.
    pub fn summary(&self) -> Value {
        let plugins = self.plugins();
        let active_agents = plugins
            .iter()
            .filter(|p| p.kind() == PluginKind::Agent)
            .count();
        serde_json::json!({
            "uptimeSeconds": self.uptime().as_secs(),
            "memory": { "rssBytes": resident_bytes() },
            "agents": { "active": active_agents, "quarantined": self.governed.governance().quarantined().len() },
            "plugins": {
                "loaded": plugins.len(),
                "inFlight": plugins.iter().map(|p| p.in_flight()).sum::<usize>(),
                "queued": plugins.iter().map(|p| p.queued()).sum::<usize>(),
            },
            "runs": {
                "ok": self.activity.runs_ok.load(Ordering::Relaxed),
                "failed": self.activity.runs_failed.load(Ordering::Relaxed),
            },
            "jobs": {
                "submitted": self.activity.jobs_submitted.load(Ordering::Relaxed),
                "running": self.jobs_running(),
                "queued": self.orchestrator.queued(),
            },
            "caches": self.cache_stats(),
            "circuitBreakers": self.breakers(),
            "llmProviders": self.llm.iter().flat_map(|c| c.providers()).map(|p| serde_json::json!({
                "name": p.name(),
                "concurrencyLimit": p.concurrency().limit(),
                "inFlight": p.concurrency().in_flight(),
                "waiting": p.concurrency().waiting(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The process's resident memory (Linux; 0 elsewhere).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
