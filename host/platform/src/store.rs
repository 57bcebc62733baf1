//! The embedded database (SQLite, one file): jobs, agent runs, decisions
//! (with their job), the report index and approvals, so they survive a
//! restart. No external service is needed.
//!
//! One connection behind a mutex, used on blocking threads: SQLite
//! serialises writes anyway, and WAL mode keeps readers from waiting on them.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::batch_writer::{BatchWriter, Committed};
use crate::checkpointer::CHECKPOINT_PAGES;
use crate::report_journal::ReportJournal;
use crate::reports::{ReportIndex, ReportRecord};

/// A database failure, with what was being done.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("database: {0}")]
pub struct StoreError(pub String);

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    Completed,
    Failed,
    /// The process stopped while the job was running.
    Interrupted,
}

impl JobStatus {
    fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Interrupted => "interrupted",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "interrupted" => JobStatus::Interrupted,
            _ => JobStatus::Running,
        }
    }

    pub fn is_finished(self) -> bool {
        self != JobStatus::Running
    }
}

/// A stored job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub id: String,
    pub event: String,
    pub pipeline: String,
    pub context: String,
    pub status: JobStatus,
    pub payload: Value,
    /// Agent results, decision and report, once known: JSON text as the
    /// job serialised it, answered as it is (never parsed into a tree on
    /// the way from the job, or from the database, to a client).
    pub result: Option<Box<serde_json::value::RawValue>>,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// Where an approval is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
}

impl ApprovalStatus {
    fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "approved" => ApprovalStatus::Approved,
            "rejected" => ApprovalStatus::Rejected,
            _ => ApprovalStatus::Pending,
        }
    }
}

/// An action waiting for (or past) a human or automated approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRecord {
    pub id: String,
    pub agent_id: String,
    /// The job or request (correlation id) the action came from.
    pub job_id: String,
    pub action: String,
    pub args: Value,
    pub status: ApprovalStatus,
    pub approvers: Vec<String>,
    pub created_at: String,
    pub decided_at: Option<String>,
    pub decided_by: Option<String>,
}

/// Why an approval decision was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecideError {
    #[error("no approval with id {0:?}")]
    NotFound(String),
    #[error("approval {id:?} was already {status:?}")]
    AlreadyDecided { id: String, status: ApprovalStatus },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The id of a new row (job, action, approval, report): a UUID v7, ordered
/// by creation time within the process. Its index entry then goes to the
/// end of the index, on a page the previous insert already touched, instead
/// of a random page per insert (each of which would be read and written
/// back to the WAL).
pub fn new_row_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// The database.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// The hot writes of jobs (jobs, runs, report index) go through here.
    writer: Arc<BatchWriter>,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, event TEXT NOT NULL, pipeline TEXT NOT NULL, context TEXT NOT NULL,
    status TEXT NOT NULL, payload TEXT NOT NULL, result TEXT, error TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS agent_runs (
    job_id TEXT NOT NULL, agent_id TEXT NOT NULL, ok INTEGER NOT NULL, output TEXT, error TEXT,
    duration_ms REAL NOT NULL, created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS agent_runs_job ON agent_runs(job_id);
CREATE TABLE IF NOT EXISTS step_runs (
    job_id TEXT NOT NULL, step_id TEXT NOT NULL, ok INTEGER NOT NULL, output TEXT, error TEXT,
    duration_ms REAL NOT NULL, created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS step_runs_job ON step_runs(job_id);
CREATE INDEX IF NOT EXISTS step_runs_created ON step_runs(created_at);
CREATE INDEX IF NOT EXISTS agent_runs_created ON agent_runs(created_at);
CREATE TABLE IF NOT EXISTS reports (
    id TEXT PRIMARY KEY, plugin TEXT NOT NULL, job TEXT NOT NULL, name TEXT NOT NULL, file TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_created ON reports(created_at);
-- Bodies of reports whose files are not yet synced (see report_journal.rs).
CREATE TABLE IF NOT EXISTS report_journal (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plugin_versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, plugin_id TEXT NOT NULL, version TEXT NOT NULL,
    digest TEXT NOT NULL, size INTEGER NOT NULL, manifest TEXT NOT NULL, installed_at TEXT NOT NULL,
    route TEXT NOT NULL, status TEXT NOT NULL, canary_percent INTEGER,
    runs INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, reason TEXT
);
CREATE INDEX IF NOT EXISTS plugin_versions_id ON plugin_versions(plugin_id);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, job_id TEXT NOT NULL, action TEXT NOT NULL, args TEXT NOT NULL,
    status TEXT NOT NULL, approvers TEXT NOT NULL, created_at TEXT NOT NULL, decided_at TEXT, decided_by TEXT
);
CREATE TABLE IF NOT EXISTS actions (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL, plugin_id TEXT NOT NULL, name TEXT NOT NULL, args TEXT NOT NULL,
    status TEXT NOT NULL, handler TEXT, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at TEXT,
    last_error TEXT, result TEXT, idempotency_key TEXT NOT NULL, approval_id TEXT, decided_by TEXT, reason TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, payload TEXT
);
CREATE INDEX IF NOT EXISTS actions_state ON actions(status);
CREATE INDEX IF NOT EXISTS actions_job ON actions(job_id);
-- Only actions held for an approval have one: a partial index costs the
-- other inserts nothing (the full index of earlier versions is replaced).
DROP INDEX IF EXISTS actions_approval;
CREATE INDEX IF NOT EXISTS actions_held ON actions(approval_id) WHERE approval_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS actions_created ON actions(created_at);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, digest BLOB NOT NULL, contexts TEXT NOT NULL, scopes TEXT NOT NULL,
    created_at TEXT NOT NULL, revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    source TEXT NOT NULL, id TEXT NOT NULL, received_at TEXT NOT NULL, PRIMARY KEY (source, id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_received ON webhook_deliveries(received_at);
";

impl Store {
    /// Opens (creating) the database and marks jobs that were running when
    /// the process last stopped as interrupted. Returns how many were.
    pub fn open(path: &Path) -> Result<(Self, usize), StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        // Several processes may share a data directory (`bsm serve` and CLI
        // runs): wait for each other's write locks instead of failing.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err)?;
        // Every statement a write runs is prepared once and kept (more
        // than rusqlite's default of 16 of them).
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        migrate(&conn).map_err(db_err)?;
        let interrupted = interrupt_orphans(&conn).map_err(db_err)?;
        // Checkpoints off the writer's commits (see `checkpointer`); should
        // that fail, SQLite's own inside commits go on as before.
        if let Err(e) = crate::checkpointer::start(&mut conn, path, CHECKPOINT_PAGES) {
            tracing::warn!(error = %e, "checkpoints stay inside commits");
        }
        let conn = Arc::new(Mutex::new(conn));
        Ok((
            Self {
                writer: Arc::new(BatchWriter::start(conn.clone())),
                conn,
            },
            interrupted,
        ))
    }

    /// Marks every running job interrupted (at shutdown, after the grace
    /// period). Returns how many were.
    pub async fn interrupt_running(&self) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET status = 'interrupted', error = 'the server shut down before the job finished', updated_at = ?1 WHERE status = 'running' AND owner_pid = ?2",
                params![now(), std::process::id()],
            )
        })
        .await
    }

    pub(crate) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn).map_err(db_err)
        })
        .await
        .map_err(db_err)?
    }

    /// A write committed together with concurrent ones (group commit);
    /// `f` runs again if another write of its batch fails (see
    /// [`BatchWriter::write`]).
    pub(crate) async fn write(
        &self,
        f: impl Fn(&Connection) -> rusqlite::Result<()> + Send + 'static,
    ) -> Result<(), StoreError> {
        self.writer.write(f).await.map_err(StoreError)
    }

    /// Records a webhook delivery; `false` if `(source, id)` was recorded
    /// before. Written at once (not batched): a replay racing the first
    /// delivery must see it.
    pub async fn record_delivery(&self, source: &str, id: &str) -> Result<bool, StoreError> {
        let (source, id) = (source.to_string(), id.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO webhook_deliveries (source, id, received_at) VALUES (?1, ?2, ?3)",
                params![source, id, now()],
            )
            .map(|inserted| inserted == 1)
        })
        .await
    }

    /// Checks the database answers (for health endpoints).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    pub async fn insert_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.queue_job(job).await.map_err(StoreError)
    }

    /// Stores a new job, queued at once (see [`BatchWriter::queue`]) for a
    /// caller that starts the job before its record has committed. Run
    /// records and actions of a job whose record did not commit are refused
    /// with it (see [`Store::queue_agent_run`]), so such a job leaves
    /// nothing behind.
    pub fn queue_job(&self, job: &JobRecord) -> Committed {
        // Serialised here, not in the writer: its thread is the one every
        // job's commit waits for.
        let (payload, result) = (
            job.payload.to_string(),
            job.result.as_ref().map(|r| r.get().to_string()),
        );
        let j = JobRecord {
            id: job.id.clone(),
            event: job.event.clone(),
            pipeline: job.pipeline.clone(),
            context: job.context.clone(),
            status: job.status,
            payload: Value::Null,
            result: None,
            error: job.error.clone(),
            created_at: job.created_at.clone(),
            updated_at: job.updated_at.clone(),
        };
        self.writer.queue(move |c| {
            c.prepare_cached(
                "INSERT INTO jobs (id, event, pipeline, context, status, payload, result, error, created_at, updated_at, owner_pid) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(
                params![j.id, j.event, j.pipeline, j.context, j.status.as_str(), payload, result, j.error, j.created_at, j.updated_at, std::process::id()],
            )
            .map(|_| ())
        })
    }

    /// Stores how a job ended, at `finished_at` (the time its terminal
    /// event carries too, so that a record rebuilt from that event matches
    /// this one).
    pub async fn finish_job(
        &self,
        id: &str,
        status: JobStatus,
        result: Option<String>,
        error: Option<String>,
        finished_at: String,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE jobs SET status = ?2, result = ?3, error = ?4, updated_at = ?5 WHERE id = ?1",
            )?
            .execute(
                params![id, status.as_str(), result, error, finished_at],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let id = id.to_string();
        self.with(move |c| {
            c.query_row("SELECT id, event, pipeline, context, status, payload, result, error, created_at, updated_at FROM jobs WHERE id = ?1", params![id], job_row)
                .optional()
        })
        .await
    }

    /// The newest jobs first.
    pub async fn jobs(&self, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
        self.with(move |c| {
            let mut stmt = c.prepare("SELECT id, event, pipeline, context, status, payload, result, error, created_at, updated_at FROM jobs ORDER BY created_at DESC LIMIT ?1")?;
            stmt.query_map(params![limit], job_row)?.collect()
        })
        .await
    }

    /// Records an agent run of a job with what governance decided for its
    /// actions, in one transaction. Queued at once; the job goes on without
    /// waiting for it, since the job's final write, committed after it,
    /// answers for it (see [`BatchWriter::queue`]).
    pub fn queue_agent_run(
        &self,
        job_id: &str,
        agent_id: &str,
        output: Option<String>,
        error: Option<String>,
        duration_ms: f64,
        writes: ActionWrites,
    ) -> Committed {
        self.queue_run(
            "INSERT INTO agent_runs (job_id, agent_id, ok, output, error, duration_ms, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            job_id,
            agent_id,
            output,
            error,
            duration_ms,
            writes,
        )
    }

    /// Records a step run (routing or decision) of a job with what
    /// governance decided for its actions, in one transaction; queued like
    /// [`Store::queue_agent_run`].
    pub fn queue_step_run(
        &self,
        job_id: &str,
        step_id: &str,
        output: Option<String>,
        error: Option<String>,
        duration_ms: f64,
        writes: ActionWrites,
    ) -> Committed {
        self.queue_run(
            "INSERT INTO step_runs (job_id, step_id, ok, output, error, duration_ms, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            job_id,
            step_id,
            output,
            error,
            duration_ms,
            writes,
        )
    }

    /// A run record (`insert`, agent or step) with its actions, refused
    /// with them when the job is not stored. `output` is the run's output
    /// as JSON text, serialised by the caller straight from what it holds
    /// (a `Value` built, cloned and dropped per run showed in the fan-out's
    /// profile).
    #[allow(clippy::too_many_arguments)]
    fn queue_run(
        &self,
        insert: &'static str,
        job_id: &str,
        plugin_id: &str,
        output: Option<String>,
        error: Option<String>,
        duration_ms: f64,
        writes: ActionWrites,
    ) -> Committed {
        let (job_id, plugin_id) = (job_id.to_string(), plugin_id.to_string());
        let created_at = now();
        self.writer.queue(move |c| {
            job_is_stored(c, &job_id)?;
            writes.apply(c)?;
            c.prepare_cached(insert)?
                .execute(params![
                    job_id,
                    plugin_id,
                    error.is_none(),
                    output,
                    error,
                    duration_ms,
                    created_at
                ])
                .map(|_| ())
        })
    }

    /// Step runs recorded for a job: (step, ok, duration ms).
    pub async fn step_runs(&self, job_id: &str) -> Result<Vec<(String, bool, f64)>, StoreError> {
        let job_id = job_id.to_string();
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT step_id, ok, duration_ms FROM step_runs WHERE job_id = ?1 ORDER BY rowid",
            )?;
            stmt.query_map(params![job_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .await
    }

    /// Agent runs recorded for a job: (agent, ok, duration ms).
    pub async fn agent_runs(&self, job_id: &str) -> Result<Vec<(String, bool, f64)>, StoreError> {
        let job_id = job_id.to_string();
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT agent_id, ok, duration_ms FROM agent_runs WHERE job_id = ?1 ORDER BY rowid",
            )?;
            stmt.query_map(params![job_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .await
    }

    pub async fn insert_approval(&self, a: &ApprovalRecord) -> Result<(), StoreError> {
        let a = a.clone();
        self.with(move |c| insert_approval(c, &a)).await
    }

    /// The actions (and approvals) of a run without a run record (a direct
    /// agent run), in one transaction.
    pub async fn insert_action_writes(&self, writes: ActionWrites) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.write(move |c| writes.apply(c)).await
    }

    /// Approvals, optionally only those with `status`, newest first.
    pub async fn approvals(
        &self,
        status: Option<ApprovalStatus>,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, agent_id, job_id, action, args, status, approvers, created_at, decided_at, decided_by FROM approvals WHERE ?1 IS NULL OR status = ?1 ORDER BY created_at DESC",
            )?;
            stmt.query_map(params![status.map(ApprovalStatus::as_str)], approval_row)?.collect()
        })
        .await
    }

    /// Approves or rejects a pending approval, once.
    /// Approves or rejects a pending approval; the action it holds is
    /// queued for delivery or rejected (with who and why) in the same
    /// transaction.
    pub async fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: Option<&str>,
    ) -> Result<ApprovalRecord, DecideError> {
        let (id, by, reason) = (id.to_string(), by.to_string(), reason.map(String::from));
        self.with(move |c| {
                let tx = c.unchecked_transaction()?;
                let c = &tx;
                let current = c
                    .query_row("SELECT id, agent_id, job_id, action, args, status, approvers, created_at, decided_at, decided_by FROM approvals WHERE id = ?1", params![id], approval_row)
                    .optional()?;
                let Some(mut record) = current else { return Ok(Err(DecideError::NotFound(id))) };
                if record.status != ApprovalStatus::Pending {
                    return Ok(Err(DecideError::AlreadyDecided { id, status: record.status }));
                }
                record.status = if approve { ApprovalStatus::Approved } else { ApprovalStatus::Rejected };
                record.decided_at = Some(now());
                record.decided_by = Some(by.clone());
                c.execute(
                    "UPDATE approvals SET status = ?2, decided_at = ?3, decided_by = ?4 WHERE id = ?1 AND status = 'pending'",
                    params![record.id, record.status.as_str(), record.decided_at, record.decided_by],
                )?;
                crate::outbox::decide(c, &record.id, approve, &by, reason.as_deref())?;
                tx.commit()?;
                Ok(Ok(record))
            })
            .await?
    }
}

fn insert_approval(c: &Connection, a: &ApprovalRecord) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO approvals (id, agent_id, job_id, action, args, status, approvers, created_at, decided_at, decided_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(
        params![a.id, a.agent_id, a.job_id, a.action, a.args.to_string(), a.status.as_str(), serde_json::to_string(&a.approvers).unwrap_or_default(), a.created_at, a.decided_at, a.decided_by],
    )
    .map(|_| ())
}

/// What governance decided to write for a run's actions: approvals to ask
/// for and outbox entries. Written with the run's record, in its
/// transaction (see [`Store::queue_agent_run`]).
#[derive(Debug, Clone, Default)]
pub struct ActionWrites {
    pub approvals: Vec<ApprovalRecord>,
    pub actions: Vec<crate::outbox::OutboxAction>,
}

impl ActionWrites {
    pub fn is_empty(&self) -> bool {
        self.approvals.is_empty() && self.actions.is_empty()
    }

    /// Does any of these actions wait for delivery? Only then is the
    /// dispatcher worth waking: an action kept for approval or dead (no
    /// route) gives it nothing to claim, and under load each needless wake
    /// cost a claim transaction every few milliseconds.
    pub fn queues_delivery(&self) -> bool {
        self.actions
            .iter()
            .any(|a| a.status == crate::outbox::ActionState::Queued)
    }

    fn apply(&self, c: &Connection) -> rusqlite::Result<()> {
        for a in &self.approvals {
            insert_approval(c, a)?;
        }
        crate::outbox::insert(c, &self.actions)
    }
}

/// Refuses a write for a job whose record is not stored (its own queued
/// write failed): nothing of such a job is kept, its actions least of all.
fn job_is_stored(c: &Connection, job_id: &str) -> rusqlite::Result<()> {
    if c.prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
        .exists(params![job_id])?
    {
        return Ok(());
    }
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
        Some(format!(
            "job {job_id} is not stored; its runs are not either"
        )),
    ))
}

fn parse_json(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

/// One installed version of a plugin, as the database keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionRow {
    /// Order of installation (newest highest).
    pub seq: i64,
    pub plugin_id: String,
    pub version: String,
    /// SHA-256 of the component.
    pub digest: String,
    pub size: u64,
    /// The manifest as installed (TOML).
    #[serde(skip)]
    pub manifest: String,
    pub installed_at: String,
    /// How it arrived: `api`, `directory`.
    pub route: String,
    /// `current`, `canary`, `previous`, `rolled_back` or `removed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_percent: Option<u8>,
    pub runs: u64,
    pub failures: u64,
    /// Why it left service (a rollback's reason), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

const VERSION_COLUMNS: &str = "seq, plugin_id, version, digest, size, manifest, installed_at, route, status, canary_percent, runs, failures, reason";

fn version_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    Ok(VersionRow {
        seq: r.get(0)?,
        plugin_id: r.get(1)?,
        version: r.get(2)?,
        digest: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        manifest: r.get(5)?,
        installed_at: r.get(6)?,
        route: r.get(7)?,
        status: r.get(8)?,
        canary_percent: r.get(9)?,
        runs: r.get::<_, i64>(10)? as u64,
        failures: r.get::<_, i64>(11)? as u64,
        reason: r.get(12)?,
    })
}

impl Store {
    /// Records a newly installed version; returns its `seq`.
    pub async fn insert_version(&self, v: &VersionRow) -> Result<i64, StoreError> {
        let v = v.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO plugin_versions (plugin_id, version, digest, size, manifest, installed_at, route, status, canary_percent, runs, failures, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![v.plugin_id, v.version, v.digest, v.size as i64, v.manifest, v.installed_at, v.route, v.status, v.canary_percent, v.runs as i64, v.failures as i64, v.reason],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    /// Moves a version to another status, with the counts it reached and
    /// (when it leaves service) why.
    pub async fn set_version_status(
        &self,
        seq: i64,
        status: &str,
        counts: Option<(u64, u64)>,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        let status = status.to_string();
        self.with(move |c| {
            c.execute(
                "UPDATE plugin_versions SET status = ?2, reason = COALESCE(?3, reason), runs = COALESCE(?4, runs), failures = COALESCE(?5, failures) WHERE seq = ?1",
                params![seq, status, reason, counts.map(|c| c.0 as i64), counts.map(|c| c.1 as i64)],
            )
            .map(|_| ())
        })
        .await
    }

    /// Every recorded version of a plugin, newest first.
    pub async fn versions(&self, plugin_id: &str) -> Result<Vec<VersionRow>, StoreError> {
        let id = plugin_id.to_string();
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {VERSION_COLUMNS} FROM plugin_versions WHERE plugin_id = ?1 ORDER BY seq DESC"
            ))?;
            stmt.query_map(params![id], version_row)?.collect()
        })
        .await
    }

    /// The newest row of every plugin that has any, for restoring at start.
    pub async fn latest_versions(&self) -> Result<Vec<VersionRow>, StoreError> {
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {VERSION_COLUMNS} FROM plugin_versions WHERE status IN ('current', 'canary', 'removed') ORDER BY seq"
            ))?;
            stmt.query_map([], version_row)?.collect()
        })
        .await
    }

    /// Forgets all but the newest `keep` versions of a plugin that are out
    /// of service; returns the digests no version refers to any more.
    pub async fn prune_versions(
        &self,
        plugin_id: &str,
        keep: usize,
    ) -> Result<Vec<String>, StoreError> {
        let id = plugin_id.to_string();
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            let stale: Vec<(i64, String)> = {
                let mut stmt = tx.prepare(
                    "SELECT seq, digest FROM plugin_versions WHERE plugin_id = ?1 AND status NOT IN ('current', 'canary') ORDER BY seq DESC LIMIT -1 OFFSET ?2",
                )?;
                stmt.query_map(params![id, keep as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let mut orphans = Vec::new();
            for (seq, digest) in stale {
                tx.execute("DELETE FROM plugin_versions WHERE seq = ?1", params![seq])?;
                let still: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM plugin_versions WHERE digest = ?1",
                    params![digest],
                    |r| r.get(0),
                )?;
                if still == 0 {
                    orphans.push(digest);
                }
            }
            tx.commit()?;
            Ok(orphans)
        })
        .await
    }
}

/// Brings a database made by an older version up to this schema.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_owner: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'owner_pid'")?
        .exists([])?;
    if !has_owner {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN owner_pid INTEGER")?;
    }
    let has_payload: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('actions') WHERE name = 'payload'")?
        .exists([])?;
    if !has_payload {
        conn.execute_batch("ALTER TABLE actions ADD COLUMN payload TEXT")?;
    }
    Ok(())
}

/// Marks interrupted the running jobs whose process is gone (a crash or a
/// stop past the grace period). Jobs of a live process sharing the data
/// directory (a server while a CLI run opens the database) are left alone.
fn interrupt_orphans(conn: &Connection) -> rusqlite::Result<usize> {
    let owners: Vec<(String, Option<u32>)> = conn
        .prepare("SELECT id, owner_pid FROM jobs WHERE status = 'running'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut marked = 0;
    for (id, owner) in owners {
        if owner.is_some_and(process_alive) {
            continue;
        }
        marked += conn.execute(
            "UPDATE jobs SET status = 'interrupted', error = 'the server stopped while the job was running', updated_at = ?1 WHERE id = ?2 AND status = 'running'",
            params![now(), id],
        )?;
    }
    Ok(marked)
}

/// Whether a process of this id runs now (another process than this one:
/// a new process never owns jobs from before it opened the database).
fn process_alive(pid: u32) -> bool {
    pid != std::process::id() && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: r.get(0)?,
        event: r.get(1)?,
        pipeline: r.get(2)?,
        context: r.get(3)?,
        status: JobStatus::parse(&r.get::<_, String>(4)?),
        payload: parse_json(r.get(5)?).unwrap_or(Value::Null),
        result: r
            .get::<_, Option<String>>(6)?
            .and_then(|text| serde_json::value::RawValue::from_string(text).ok()),
        error: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

fn approval_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApprovalRecord> {
    Ok(ApprovalRecord {
        id: r.get(0)?,
        agent_id: r.get(1)?,
        job_id: r.get(2)?,
        action: r.get(3)?,
        args: parse_json(r.get(4)?).unwrap_or(Value::Null),
        status: ApprovalStatus::parse(&r.get::<_, String>(5)?),
        approvers: parse_json(r.get(6)?)
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default(),
        created_at: r.get(7)?,
        decided_at: r.get(8)?,
        decided_by: r.get(9)?,
    })
}

fn report_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReportRecord> {
    Ok(ReportRecord {
        id: r.get(0)?,
        plugin: r.get(1)?,
        job: r.get(2)?,
        name: r.get(3)?,
        file: r.get(4)?,
        bytes: r.get::<_, i64>(5)? as u64,
        created_at: r.get(6)?,
    })
}

fn insert_report(c: &Connection, r: &ReportRecord) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO reports (id, plugin, job, name, file, bytes, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![r.id, r.plugin, r.job, r.name, r.file, r.bytes as i64, r.created_at])
    .map(|_| ())
}

#[async_trait::async_trait]
impl ReportIndex for Store {
    async fn append(&self, record: &ReportRecord) -> Result<(), String> {
        let r = record.clone();
        self.write(move |c| insert_report(c, &r))
            .await
            .map_err(|e| e.to_string())
    }

    async fn find(&self, id: &str) -> Option<ReportRecord> {
        let id = id.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT id, plugin, job, name, file, bytes, created_at FROM reports WHERE id = ?1",
                params![id],
                report_row,
            )
            .optional()
        })
        .await
        .ok()
        .flatten()
    }

    async fn all(&self) -> Vec<ReportRecord> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT id, plugin, job, name, file, bytes, created_at FROM reports ORDER BY created_at, rowid")?;
            stmt.query_map([], report_row)?.collect()
        })
        .await
        .unwrap_or_default()
    }
}

/// The body rides in the same group commit as the index row.
#[async_trait::async_trait]
impl ReportJournal for Store {
    fn queue_journaled(&self, record: &ReportRecord, body: &str) -> Committed {
        let (r, body) = (record.clone(), body.to_string());
        self.writer.queue(move |c| {
            insert_report(c, &r)?;
            c.prepare_cached("INSERT INTO report_journal (id, body) VALUES (?1, ?2)")?
                .execute(params![r.id, body])
                .map(|_| ())
        })
    }

    async fn unsettled(&self) -> Result<Vec<(ReportRecord, String)>, String> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT r.id, r.plugin, r.job, r.name, r.file, r.bytes, r.created_at, j.body FROM report_journal j JOIN reports r ON r.id = j.id ORDER BY r.rowid",
            )?;
            stmt.query_map([], |row| Ok((report_row(row)?, row.get(7)?)))?
                .collect()
        })
        .await
        .map_err(|e| e.to_string())
    }

    async fn settle(&self, ids: Vec<String>) -> Result<(), String> {
        self.write(move |c| {
            let mut stmt = c.prepare_cached("DELETE FROM report_journal WHERE id = ?1")?;
            for id in &ids {
                stmt.execute(params![id])?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_queued_action_is_worth_waking_the_dispatcher_for() {
        let action = |approval: Option<&str>| {
            crate::outbox::OutboxAction::new(
                "job",
                "agent",
                "comment",
                &serde_json::json!({}),
                None,
                approval.map(String::from),
            )
        };
        let writes = |actions| ActionWrites {
            approvals: vec![],
            actions,
        };
        assert!(!writes(vec![]).queues_delivery(), "no action");
        assert!(
            !writes(vec![action(None).dead("no route".into())]).queues_delivery(),
            "a dead action is never claimed"
        );
        assert!(
            !writes(vec![action(Some("approval"))]).queues_delivery(),
            "an action waiting for approval is claimed once approved"
        );
        assert!(
            writes(vec![action(None).dead("no route".into()), action(None)]).queues_delivery(),
            "one queued action among others"
        );
    }

    #[test]
    fn row_ids_sort_in_creation_order_so_inserts_append_to_their_index() {
        let ids: Vec<String> = (0..2000)
            .map(|_| new_row_id().simple().to_string())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "ids made one after another sort the same way");
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "ids are unique");
    }

    #[tokio::test]
    async fn a_run_of_a_job_whose_record_did_not_commit_is_refused_with_its_actions() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("bsm.db")).unwrap();
        let writes = |job: &str| ActionWrites {
            approvals: vec![],
            actions: vec![crate::outbox::OutboxAction::new(
                job,
                "agent",
                "comment",
                &serde_json::json!({ "body": "hi" }),
                None,
                None,
            )],
        };
        let refused = [
            store.queue_agent_run(
                "never-stored",
                "agent",
                None,
                None,
                1.0,
                writes("never-stored"),
            ),
            store.queue_step_run(
                "never-stored",
                "decide",
                None,
                None,
                1.0,
                writes("never-stored"),
            ),
        ];
        for write in refused {
            let error = write.await.unwrap_err();
            assert!(error.contains("not stored"), "{error}");
        }

        let now = now();
        let job = JobRecord {
            id: "stored".into(),
            event: "e".into(),
            pipeline: "default".into(),
            context: "api".into(),
            status: JobStatus::Running,
            payload: serde_json::json!({}),
            result: None,
            error: None,
            created_at: now.clone(),
            updated_at: now,
        };
        // Queued, not awaited: the run queued after it sees it committed.
        drop(store.queue_job(&job));
        store
            .queue_agent_run("stored", "agent", None, None, 1.0, writes("stored"))
            .await
            .unwrap();
        let (actions, runs): (i64, i64) = store
            .with(|c| {
                c.query_row(
                    "SELECT (SELECT COUNT(*) FROM actions), (SELECT COUNT(*) FROM agent_runs)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .await
            .unwrap();
        assert_eq!(
            (actions, runs),
            (1, 1),
            "only the stored job's run and action"
        );
    }

    #[tokio::test]
    async fn an_approvals_action_is_found_through_the_partial_index_which_replaced_the_full_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bsm.db");
        {
            // A database of an earlier version, with the full index.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute_batch("CREATE INDEX actions_approval ON actions(approval_id);")
                .unwrap();
        }
        let (store, _) = Store::open(&path).unwrap();
        let (indexes, plan) = store
            .with(|c| {
                let indexes: Vec<String> = c
                    .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'actions'")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let plan: Vec<String> = c
                    .prepare("EXPLAIN QUERY PLAN UPDATE actions SET status = 'queued' WHERE approval_id = ?1 AND status = 'pending_approval'")?
                    .query_map(["a"], |r| r.get(3))?
                    .collect::<rusqlite::Result<_>>()?;
                Ok((indexes, plan))
            })
            .await
            .unwrap();
        assert!(
            !indexes.iter().any(|i| i == "actions_approval"),
            "{indexes:?}"
        );
        assert!(indexes.iter().any(|i| i == "actions_held"), "{indexes:?}");
        assert!(
            plan.iter().any(|p| p.contains("USING INDEX actions_held")),
            "{plan:?}"
        );
    }
}
