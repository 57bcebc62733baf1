//! Jobs: one event handled by its pipeline. A job is stored when it starts,
//! streams its progress through the [`JobHub`], records every agent run, and
//! always reaches an end: a failing or timed-out agent is recorded as failed
//! and the decision is still made.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio_util::task::TaskTracker;

use super::hub::JobHub;
use super::pipelines::Pipelines;
use crate::batch_writer::Committed;
use crate::governed::{ActionOutcome, Governed, GovernedStep, PlatformError};
use crate::reports::{QueuedReport, ReportRecord, ReportStore};
use crate::store::{JobRecord, JobStatus};
use bsm_runtime::api::{AgentRequest, AgentResult, Contribution, RunContext, RunMode, StepRequest};

/// A job's run records (named by agent or step), queued as the runs end:
/// the job waits only for its final write, which commits after them all.
type RunWrites = Vec<(String, Committed)>;

/// The outcome of one agent in a job.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentOutcome {
    pub agent_id: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<AgentReply>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub actions: Vec<ActionOutcome>,
    pub duration_ms: f64,
}

/// What an agent answered in a job: its text and metadata (its actions are
/// the outcome's, as governance left them). Moved from the run, not copied.
#[derive(Debug, Clone, Serialize)]
pub struct AgentReply {
    pub text: String,
    pub metadata: Value,
}

/// A job's result as stored and announced: serialised from what the job
/// holds, without building a tree of values first.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobResult<'a> {
    agents: &'a [AgentOutcome],
    mode: RunMode,
    decision: Option<&'a Value>,
    decision_name: Option<&'static str>,
    report: Option<ReportReference<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    report_error: Option<String>,
}

/// Where a job's report is.
#[derive(Serialize, Clone, Copy)]
struct ReportReference<'a> {
    id: &'a str,
    name: &'a str,
    bytes: u64,
}

impl<'a> ReportReference<'a> {
    fn of(record: &'a ReportRecord) -> Self {
        Self {
            id: &record.id,
            name: &record.name,
            bytes: record.bytes,
        }
    }
}

/// The data of `job.started`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobStarted<'a> {
    job_id: &'a str,
    event: &'a str,
    pipeline: &'a str,
}

/// The data of `agent.started`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentStarted<'a> {
    agent_id: &'a str,
}

/// The data of `job.finished`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobFinished<'a> {
    job_id: &'a str,
    status: &'static str,
    duration_ms: f64,
    result: &'a RawValue,
}

/// Runs jobs and keeps track of them.
pub struct Orchestrator {
    governed: Arc<Governed>,
    reports: Arc<ReportStore>,
    pipelines: Pipelines,
    hub: JobHub,
    tasks: TaskTracker,
    limits: JobLimits,
    /// One permit per running job.
    slots: Arc<tokio::sync::Semaphore>,
}

/// How many jobs run at once, and how many more may wait; beyond both a
/// job is refused (`JOBS_OVERLOADED`, 503 with a retry hint).
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct JobLimits {
    pub max_running: usize,
    pub max_queued: usize,
}

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            max_running: 256,
            max_queued: 1024,
        }
    }
}

impl Orchestrator {
    /// Jobs run their agents and steps through `governed` and write their
    /// report to `reports`.
    pub fn new(
        governed: Arc<Governed>,
        reports: Arc<ReportStore>,
        pipelines: Pipelines,
        limits: JobLimits,
    ) -> Arc<Self> {
        Arc::new(Self {
            governed,
            reports,
            pipelines,
            hub: JobHub::default(),
            tasks: TaskTracker::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(limits.max_running.max(1))),
            limits: JobLimits {
                max_running: limits.max_running.max(1),
                ..limits
            },
        })
    }

    pub fn pipelines(&self) -> &Pipelines {
        &self.pipelines
    }

    pub fn hub(&self) -> &JobHub {
        &self.hub
    }

    /// Queues a new job's record for `event` and starts the job in the
    /// background, or refuses it at the door when the running and queued
    /// jobs are at their bounds (`None`): overload is turned away, not
    /// turned into failed agents and manual-review verdicts. The record's
    /// write answers on its own: await it before telling anyone the job
    /// exists (the job's runs are refused if it failed, see
    /// [`crate::store::Store::queue_job`]).
    pub fn submit(
        self: &Arc<Self>,
        event: String,
        payload: Value,
        context: String,
    ) -> Option<(JobRecord, Committed)> {
        if self.tasks.len() >= self.limits.max_running + self.limits.max_queued {
            return None;
        }
        // Without a matching or default pipeline the job fails when it runs,
        // with the reason; it is still recorded.
        let pipeline_name = self
            .pipelines
            .for_event(&event)
            .map_or("none", |(name, _)| name)
            .to_string();
        let now = crate::store::now();
        let job = JobRecord {
            id: crate::store::new_row_id().to_string(),
            event,
            pipeline: pipeline_name,
            context,
            status: JobStatus::Running,
            payload,
            result: None,
            error: None,
            created_at: now.clone(),
            updated_at: now,
        };
        let stored = self.governed.store().queue_job(&job);
        self.hub.open(&job.id);
        let this = self.clone();
        let record = job.clone();
        let slots = self.slots.clone();
        self.tasks.spawn(async move {
            // Queued until one of the running slots is free.
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            this.run(record).await
        });
        Some((job, stored))
    }

    /// Stops taking jobs and waits up to `grace` for running ones; those
    /// still running afterwards are marked interrupted.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_ok() {
            return 0;
        }
        let running = self.tasks.len();
        tracing::warn!(
            running,
            "shutting down with jobs still running; they are marked interrupted"
        );
        running
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.limits
            .max_running
            .saturating_sub(self.slots.available_permits())
    }

    /// Jobs admitted and waiting for a running slot.
    pub fn queued(&self) -> usize {
        self.tasks.len().saturating_sub(self.running())
    }

    async fn run(&self, job: JobRecord) {
        let started = Instant::now();
        let id = job.id.clone();
        let started_event = JobStarted {
            job_id: &id,
            event: &job.event,
            pipeline: &job.pipeline,
        };
        self.hub.emit(&id, "job.started", &started_event);
        let mut writes = Vec::new();
        let mut report = None;
        let outcome = self.execute(&job, &mut writes, &mut report).await;
        let store = self.governed.store();
        // The record and the terminal event carry the same time: a waiter
        // rebuilds the record from the event (see `JobEvent::ended`).
        let finished_at = crate::store::now();
        let stored = match outcome {
            Ok(result) => {
                let r = store
                    .finish_job(
                        &id,
                        JobStatus::Completed,
                        Some(result.get().to_string()),
                        None,
                        finished_at.clone(),
                    )
                    .await;
                self.announce_report(&id, report).await;
                let finished = JobFinished {
                    job_id: &id,
                    status: "completed",
                    duration_ms: started.elapsed().as_secs_f64() * 1e3,
                    result: &result,
                };
                self.hub
                    .emit_at(&id, "job.finished", &finished, finished_at);
                r
            }
            Err(message) => {
                let r = store
                    .finish_job(
                        &id,
                        JobStatus::Failed,
                        None,
                        Some(message.clone()),
                        finished_at.clone(),
                    )
                    .await;
                self.announce_report(&id, report).await;
                self.hub.emit_at(
                    &id,
                    "job.failed",
                    &json!({ "jobId": id, "status": "failed", "error": message }),
                    finished_at,
                );
                r
            }
        };
        if let Err(e) = stored {
            tracing::error!(job = %id, error = %e, "could not store the job's outcome");
        }
        // Queued before the job's end, so already answered now.
        for (what, write) in writes {
            if let Err(e) = write.await {
                tracing::error!(job = %id, run = %what, error = %e, "could not store the run");
            }
        }
    }

    /// The job's report, once its index row has committed (with or before
    /// the job's end, which the caller has awaited: writes commit in
    /// order): handed to the settler and announced, before the end.
    async fn announce_report(&self, job: &str, report: Option<QueuedReport>) {
        let Some(report) = report else { return };
        match report.indexed().await {
            Ok(r) => self.hub.emit(job, "report", &ReportReference::of(&r)),
            Err(e) => tracing::error!(
                job,
                error = %e,
                "the job's report file was written but its index row did not commit"
            ),
        }
    }

    /// The pipeline itself, answering the result's JSON; errors are
    /// failures of the job as a whole (a routing or decision step that
    /// failed), not of single agents.
    async fn execute(
        &self,
        job: &JobRecord,
        writes: &mut RunWrites,
        report: &mut Option<QueuedReport>,
    ) -> Result<Box<RawValue>, String> {
        let Some((_, pipeline)) = self.pipelines.for_event(&job.event) else {
            return Err(format!(
                "no pipeline handles {:?} and there is no default pipeline",
                job.event
            ));
        };
        let context = RunContext {
            correlation_id: job.id.clone(),
            event: Some(job.event.clone()),
            calling_context: job.context.clone(),
        };
        let (agents, mode) = match &pipeline.router {
            Some(router) => self.route(router, job, &context, writes).await?,
            None => (pipeline.agents.clone(), pipeline.mode),
        };

        // Each agent searches the knowledge it is bound to for its own input.
        let payload = job.payload.clone();

        let input = job
            .payload
            .get("input")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| format!("Handle the event {} with this payload.", job.event));
        let runs = match mode {
            RunMode::Parallel => {
                join_all(
                    agents
                        .iter()
                        .map(|a| self.run_agent(job, a, &input, &payload, &context)),
                )
                .await
            }
            RunMode::Sequential => {
                let mut out = Vec::new();
                for a in &agents {
                    out.push(self.run_agent(job, a, &input, &payload, &context).await);
                }
                out
            }
        };
        let mut outcomes = Vec::with_capacity(runs.len());
        for (outcome, write) in runs {
            writes.push((outcome.agent_id.clone(), write));
            outcomes.push(outcome);
        }

        let decision = match &pipeline.decision {
            Some(step) => Some(self.decide(step, job, &outcomes, &context, writes).await?),
            None => None,
        };
        // The original BSM's names of the decisions, for its clients.
        let decision_name =
            decision
                .as_ref()
                .and_then(|d| d["verdict"].as_str())
                .map(|v| match v {
                    "approve" => "approve_and_merge",
                    "request_changes" => "request_changes",
                    "block" => "block_pr",
                    _ => "manual_review",
                });
        let mut result = JobResult {
            agents: &outcomes,
            mode,
            decision: decision.as_ref(),
            decision_name,
            report: None,
            report_error: None,
        };
        if pipeline.report {
            let markdown = render_report(job, &result);
            // Its index row is queued before the job's end and committed
            // with it (or before): the job waits once, in `run`.
            match self
                .reports
                .write_queued(
                    "orchestrator",
                    &job.id,
                    &format!("job-{}", job.event),
                    &markdown,
                )
                .await
            {
                Ok(queued) => *report = Some(queued),
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "the job's report could not be written");
                    result.report_error = Some(e.to_string());
                }
            }
        }
        result.report = report.as_ref().map(|q| ReportReference::of(&q.record));
        serde_json::value::to_raw_value(&result).map_err(|e| format!("the job's result: {e}"))
    }

    async fn route(
        &self,
        router: &str,
        job: &JobRecord,
        context: &RunContext,
        writes: &mut RunWrites,
    ) -> Result<(Vec<String>, RunMode), String> {
        let request = StepRequest {
            event: job.event.clone(),
            payload: job.payload.clone(),
            context: context.clone(),
            results: vec![],
        };
        match self
            .run_step(job, router, request, writes)
            .await
            .map_err(|e| format!("routing step {router:?} failed: {e}"))?
            .run
            .contribution
        {
            Contribution::Route { agents, mode } => {
                self.hub
                    .emit(&job.id, "route", &json!({ "agents": agents, "mode": mode }));
                Ok((agents, mode))
            }
            other => Err(format!(
                "routing step {router:?} answered {other:?} instead of a route"
            )),
        }
    }

    async fn run_agent(
        &self,
        job: &JobRecord,
        agent: &str,
        input: &str,
        payload: &Value,
        context: &RunContext,
    ) -> (AgentOutcome, Committed) {
        self.hub
            .emit(&job.id, "agent.started", &AgentStarted { agent_id: agent });
        let started = Instant::now();
        let request = AgentRequest {
            input: input.to_string(),
            payload: payload.clone(),
            context: context.clone(),
        };
        let result = self.governed.run_agent(agent, request).await;
        let duration_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut writes = Default::default();
        let outcome = match result {
            Ok(mut governed) => AgentOutcome {
                agent_id: agent.to_string(),
                ok: true,
                output: Some(AgentReply {
                    text: std::mem::take(&mut governed.run.output.text),
                    metadata: std::mem::take(&mut governed.run.output.metadata),
                }),
                error: None,
                error_code: None,
                actions: {
                    writes = std::mem::take(&mut governed.writes);
                    governed.actions
                },
                duration_ms,
            },
            Err(e) => AgentOutcome {
                agent_id: agent.to_string(),
                ok: false,
                output: None,
                error: Some(e.to_string()),
                error_code: Some(e.code().to_string()),
                actions: vec![],
                duration_ms,
            },
        };
        let stored = self.governed.store().queue_agent_run(
            &job.id,
            agent,
            outcome
                .output
                .as_ref()
                .and_then(|o| serde_json::to_string(o).ok()),
            outcome.error.clone(),
            duration_ms,
            writes,
        );
        let kind = if outcome.ok {
            "agent.finished"
        } else {
            "agent.failed"
        };
        self.hub.emit(&job.id, kind, &outcome);
        (outcome, stored)
    }

    async fn decide(
        &self,
        step: &str,
        job: &JobRecord,
        outcomes: &[AgentOutcome],
        context: &RunContext,
        writes: &mut RunWrites,
    ) -> Result<Value, String> {
        let results = outcomes
            .iter()
            .map(|o| AgentResult {
                agent_id: o.agent_id.clone(),
                // The decision sees each agent's text, actions and metadata
                // (where a structured verdict may be).
                output: o.ok.then(|| bsm_runtime::api::AgentOutput {
                    text: o
                        .output
                        .as_ref()
                        .map(|r| r.text.clone())
                        .unwrap_or_default(),
                    actions: o
                        .actions
                        .iter()
                        .map(|a| bsm_runtime::api::Action {
                            name: a.name.clone(),
                            args: a.args.clone(),
                        })
                        .collect(),
                    metadata: o
                        .output
                        .as_ref()
                        .map(|r| r.metadata.clone())
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({})),
                }),
                error: o.error.clone(),
            })
            .collect();
        let request = StepRequest {
            event: job.event.clone(),
            payload: job.payload.clone(),
            context: context.clone(),
            results,
        };
        let governed = self
            .run_step(job, step, request, writes)
            .await
            .map_err(|e| format!("decision step {step:?} failed: {e}"))?;
        let mut decision = serde_json::to_value(&governed.run.contribution).unwrap_or(Value::Null);
        // The decision's actions as governance left them (applied or pending).
        decision["actions"] = serde_json::to_value(&governed.actions).unwrap_or(Value::Null);
        self.hub.emit(&job.id, "decision", &decision);
        Ok(decision)
    }

    /// Runs a step of the job through governance and records the run.
    async fn run_step(
        &self,
        job: &JobRecord,
        step: &str,
        request: StepRequest,
        writes: &mut RunWrites,
    ) -> Result<GovernedStep, PlatformError> {
        let started = Instant::now();
        let mut result = self.governed.run_step(step, request).await;
        let (output, error, action_writes) = match &mut result {
            Ok(g) => (
                serde_json::to_string(&g.run.contribution).ok(),
                None,
                std::mem::take(&mut g.writes),
            ),
            Err(e) => (None, Some(e.to_string()), Default::default()),
        };
        let duration_ms = started.elapsed().as_secs_f64() * 1e3;
        let stored = self.governed.store().queue_step_run(
            &job.id,
            step,
            output,
            error,
            duration_ms,
            action_writes,
        );
        writes.push((step.to_string(), stored));
        result
    }
}

/// A markdown summary of a job.
fn render_report(job: &JobRecord, result: &JobResult<'_>) -> String {
    use std::fmt::Write;
    let mut md = format!(
        "# Job {}\n\n- Event: `{}`\n- Pipeline: `{}`\n- Context: `{}`\n- Started: {}\n\n## Agents\n\n| agent | result | duration |\n|---|---|---|\n",
        job.id, job.event, job.pipeline, job.context, job.created_at
    );
    for a in result.agents {
        let status = if a.ok {
            "ok".to_string()
        } else {
            format!("failed: {}", a.error.as_deref().unwrap_or(""))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} ms |",
            a.agent_id,
            status.replace('|', "\\|"),
            a.duration_ms
        );
    }
    if let Some(d) = result.decision.and_then(Value::as_object) {
        let _ = write!(
            md,
            "\n## Decision\n\n**{}**: {}\n",
            d.get("verdict").and_then(Value::as_str).unwrap_or(""),
            d.get("reason").and_then(Value::as_str).unwrap_or("")
        );
    }
    for a in result.agents {
        if let Some(reply) = &a.output {
            let _ = write!(md, "\n## {}\n\n{}\n", a.agent_id, reply.text);
        }
    }
    md
}
