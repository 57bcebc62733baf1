//! Retention: what the server keeps, pruned in the background so that its
//! database (jobs, runs, approvals, settled actions, webhook delivery ids),
//! report directory and artifact cache stop growing.
//!
//! Every pass deletes by age (older than `max-age-days`) and by count (the
//! newest `max-*` kept), in batches of [`BATCH`] rows per statement: the
//! database connection is released between batches, so requests never wait
//! behind a whole pass. Running jobs and pending approvals are never
//! pruned. A report's file is removed before its index row, so a crash in
//! between leaves an index row without a file (hidden by listings, removed
//! by the next pass), never an unlisted file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// Rows deleted per statement.
pub const BATCH: usize = 1_000;

/// The `[retention]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Finished jobs, agent and step runs, decided approvals, reports and
    /// webhook delivery ids older than this are pruned; 0 keeps them by age.
    pub max_age_days: u64,
    /// Finished jobs kept (newest first); their runs go with them.
    pub max_jobs: u64,
    /// Agent runs and step runs kept, each (direct runs have no job to go
    /// with).
    pub max_agent_runs: u64,
    /// Reports kept (files and index).
    pub max_reports: u64,
    /// Settled actions kept (delivered, dead, rejected); actions still
    /// waiting for approval or delivery are never pruned.
    pub max_actions: u64,
    /// Compiled artifacts not used by a loaded plugin are removed once they
    /// are older than this; 0 keeps them.
    pub artifact_max_age_days: u64,
    /// Time between passes.
    pub interval_ms: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            max_age_days: 30,
            max_jobs: 100_000,
            max_agent_runs: 500_000,
            max_reports: 50_000,
            max_actions: 500_000,
            artifact_max_age_days: 30,
            interval_ms: 10 * 60 * 1000,
        }
    }
}

impl RetentionSettings {
    /// The RFC 3339 time before which records are old, if age counts.
    fn cutoff(&self, now: SystemTime) -> Option<String> {
        (self.max_age_days > 0).then(|| {
            let age = Duration::from_secs(self.max_age_days.saturating_mul(86_400));
            humantime::format_rfc3339_millis(now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH))
                .to_string()
        })
    }
}

/// What one pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pruned {
    pub jobs: usize,
    pub agent_runs: usize,
    pub step_runs: usize,
    pub approvals: usize,
    pub reports: usize,
    pub actions: usize,
    pub deliveries: usize,
    pub artifacts: usize,
}

impl Pruned {
    pub fn total(&self) -> usize {
        self.jobs
            + self.agent_runs
            + self.step_runs
            + self.approvals
            + self.reports
            + self.actions
            + self.deliveries
            + self.artifacts
    }
}

/// What a pass works on.
pub struct Retention {
    pub store: Store,
    pub settings: RetentionSettings,
    pub reports_dir: PathBuf,
    pub artifacts_dir: Option<PathBuf>,
}

impl Retention {
    /// One pass over everything; `in_use` are the digests of the loaded
    /// plugins, whose artifacts are kept whatever their age.
    pub async fn prune(&self, in_use: &HashSet<String>) -> Result<Pruned, StoreError> {
        let cutoff = self.settings.cutoff(SystemTime::now());
        let mut pruned = Pruned {
            reports: self.prune_reports(cutoff.clone()).await?,
            ..Pruned::default()
        };
        let s = &self.settings;
        // Jobs beyond their count or age (never a running one) with their
        // runs; then direct runs (no job) beyond their own count or age.
        pruned.jobs = self.prune_jobs(cutoff.clone()).await?;
        pruned.agent_runs = self
            .batches(
                "DELETE FROM agent_runs WHERE rowid IN (SELECT rowid FROM agent_runs WHERE created_at < ?1 OR created_at <= ?2 LIMIT ?3)",
                cutoff.clone(),
                self.boundary("agent_runs", "created_at", s.max_agent_runs).await?,
            )
            .await?;
        pruned.step_runs = self
            .batches(
                "DELETE FROM step_runs WHERE rowid IN (SELECT rowid FROM step_runs WHERE created_at < ?1 OR created_at <= ?2 LIMIT ?3)",
                cutoff.clone(),
                self.boundary("step_runs", "created_at", s.max_agent_runs).await?,
            )
            .await?;
        pruned.actions = self
            .batches(
                "DELETE FROM actions WHERE rowid IN (SELECT rowid FROM actions WHERE status IN ('delivered', 'dead', 'rejected') AND (created_at < ?1 OR created_at <= ?2) LIMIT ?3)",
                cutoff.clone(),
                self.boundary("actions", "created_at", s.max_actions).await?,
            )
            .await?;
        if cutoff.is_some() {
            pruned.approvals = self
                .batches(
                    "DELETE FROM approvals WHERE rowid IN (SELECT rowid FROM approvals WHERE status != 'pending' AND created_at < ?1 AND ?2 = ?2 LIMIT ?3)",
                    cutoff.clone(),
                    String::new(),
                )
                .await?;
            pruned.deliveries = self
                .batches(
                    "DELETE FROM webhook_deliveries WHERE rowid IN (SELECT rowid FROM webhook_deliveries WHERE received_at < ?1 AND ?2 = ?2 LIMIT ?3)",
                    cutoff,
                    String::new(),
                )
                .await?;
        }
        pruned.artifacts = self.prune_artifacts(in_use).await;
        Ok(pruned)
    }

    /// The newest time of `table` beyond its `keep` newest rows (those at
    /// or before it go); "" when it has no more than `keep`. One index walk
    /// per pass, instead of a kept-set per batch.
    async fn boundary(
        &self,
        table: &'static str,
        column: &'static str,
        keep: u64,
    ) -> Result<String, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.store
            .with(move |c| {
                c.query_row(
                    &format!(
                        "SELECT {column} FROM {table} ORDER BY {column} DESC LIMIT 1 OFFSET ?1"
                    ),
                    params![keep],
                    |r| r.get::<_, String>(0),
                )
                .optional()
                .map(Option::unwrap_or_default)
            })
            .await
    }

    /// Runs `sql` (parameters: age cutoff, count boundary, batch size)
    /// until it deletes less than a batch; the connection is free between
    /// batches.
    async fn batches(
        &self,
        sql: &'static str,
        cutoff: Option<String>,
        boundary: String,
    ) -> Result<usize, StoreError> {
        // No age limit: a cutoff before every record ("" sorts first).
        let cutoff = cutoff.unwrap_or_default();
        let mut total = 0;
        loop {
            let (cutoff, boundary) = (cutoff.clone(), boundary.clone());
            let deleted = self
                .store
                .with(move |c| c.execute(sql, params![cutoff, boundary, BATCH as i64]))
                .await?;
            total += deleted;
            if deleted < BATCH {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Deletes finished jobs beyond the count or age, a batch per
    /// transaction, each with its agent and step runs.
    async fn prune_jobs(&self, cutoff: Option<String>) -> Result<usize, StoreError> {
        let cutoff = cutoff.unwrap_or_default();
        let boundary = self
            .boundary("jobs", "created_at", self.settings.max_jobs)
            .await?;
        let mut total = 0;
        loop {
            let (cutoff, boundary) = (cutoff.clone(), boundary.clone());
            let deleted = self
                .store
                .with(move |c| {
                    let tx = c.unchecked_transaction()?;
                    let ids: Vec<String> = tx
                        .prepare("SELECT id FROM jobs WHERE status != 'running' AND (created_at < ?1 OR created_at <= ?2) LIMIT ?3")?
                        .query_map(params![cutoff, boundary, BATCH as i64], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    for id in &ids {
                        tx.execute("DELETE FROM agent_runs WHERE job_id = ?1", params![id])?;
                        tx.execute("DELETE FROM step_runs WHERE job_id = ?1", params![id])?;
                        tx.execute("DELETE FROM jobs WHERE id = ?1", params![id])?;
                    }
                    tx.commit()?;
                    Ok(ids.len())
                })
                .await?;
            total += deleted;
            if deleted < BATCH {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    async fn prune_reports(&self, cutoff: Option<String>) -> Result<usize, StoreError> {
        let cutoff = cutoff.unwrap_or_default();
        let boundary = self
            .boundary("reports", "created_at", self.settings.max_reports)
            .await?;
        let mut total = 0;
        loop {
            let (c2, b2) = (cutoff.clone(), boundary.clone());
            let doomed: Vec<(String, String)> = self
                .store
                .with(move |c| {
                    c.prepare("SELECT id, file FROM reports WHERE created_at < ?1 OR created_at <= ?2 LIMIT ?3")?
                        .query_map(params![c2, b2, BATCH as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect()
                })
                .await?;
            if doomed.is_empty() {
                return Ok(total);
            }
            let dir = self.reports_dir.clone();
            let files: Vec<String> = doomed.iter().map(|(_, f)| f.clone()).collect();
            tokio::task::spawn_blocking(move || {
                for file in files {
                    remove_inside(&dir, &file);
                }
            })
            .await
            .map_err(|e| StoreError(e.to_string()))?;
            let ids: Vec<String> = doomed.into_iter().map(|(id, _)| id).collect();
            let n = ids.len();
            self.store
                .with(move |c| {
                    let tx = c.unchecked_transaction()?;
                    for id in &ids {
                        tx.execute("DELETE FROM reports WHERE id = ?1", params![id])?;
                        tx.execute("DELETE FROM report_journal WHERE id = ?1", params![id])?;
                    }
                    tx.commit()
                })
                .await?;
            total += n;
            if n < BATCH {
                return Ok(total);
            }
        }
    }

    async fn prune_artifacts(&self, in_use: &HashSet<String>) -> usize {
        let (Some(dir), days) = (&self.artifacts_dir, self.settings.artifact_max_age_days) else {
            return 0;
        };
        if days == 0 {
            return 0;
        }
        let (dir, in_use) = (dir.clone(), in_use.clone());
        let max_age = Duration::from_secs(days.saturating_mul(86_400));
        tokio::task::spawn_blocking(move || prune_artifact_dir(&dir, &in_use, max_age))
            .await
            .unwrap_or(0)
    }
}

/// Removes `<digest>-<key>.cwasm` files older than `max_age` whose digest
/// no loaded plugin uses. Other files are left alone.
/// How old a temporary file in the artifact directory must be to count as
/// a crash's leftover.
const ABANDONED_TMP_AGE: Duration = Duration::from_secs(3600);

fn prune_artifact_dir(dir: &Path, in_use: &HashSet<String>, max_age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let older_than = |entry: &std::fs::DirEntry, limit: Duration| {
        entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > limit)
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(bsm_runtime::atomic_file::TMP_PREFIX) {
            // A write that never finished (a crash while storing an
            // artifact); an hour old, nobody is still writing it.
            if older_than(&entry, ABANDONED_TMP_AGE) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
            continue;
        }
        let Some(digest) = name
            .strip_suffix(".cwasm")
            .and_then(|n| n.split('-').next())
        else {
            continue;
        };
        if older_than(&entry, max_age)
            && !in_use.contains(digest)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Removes `dir/relative` if it stays inside `dir` (index rows are ours,
/// but a path is checked before anything is deleted).
fn remove_inside(dir: &Path, relative: &str) {
    let path = Path::new(relative);
    let inside = path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if inside {
        let _ = std::fs::remove_file(dir.join(path));
    }
}

/// Runs passes every `interval` until dropped; `in_use` is asked at each
/// pass. A failed pass is logged and retried at the next interval.
pub fn spawn(
    retention: Retention,
    in_use: impl Fn() -> HashSet<String> + Send + Sync + 'static,
) -> tokio_util::task::AbortOnDropHandle<()> {
    let retention = Arc::new(retention);
    let interval = Duration::from_millis(retention.settings.interval_ms.max(10));
    tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match retention.prune(&in_use()).await {
                Ok(pruned) if pruned.total() > 0 => {
                    tracing::info!(?pruned, "retention pass pruned old records");
                    metrics::counter!("bsm_retention_pruned_total")
                        .increment(pruned.total() as u64);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "retention pass failed; retried at the next interval")
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ApprovalRecord, ApprovalStatus, JobRecord, JobStatus};

    const OLD: &str = "2020-01-01T00:00:00.000Z";

    fn job(id: &str, status: JobStatus, at: &str) -> JobRecord {
        JobRecord {
            id: id.into(),
            event: "e".into(),
            pipeline: "default".into(),
            context: "api".into(),
            status,
            payload: serde_json::json!({}),
            result: None,
            error: None,
            created_at: at.into(),
            updated_at: at.into(),
        }
    }

    fn retention(dir: &Path, settings: RetentionSettings) -> Retention {
        let (store, _) = Store::open(&dir.join("bsm.db")).unwrap();
        Retention {
            store,
            settings,
            reports_dir: dir.join("reports"),
            artifacts_dir: Some(dir.join("artifacts")),
        }
    }

    async fn count(store: &Store, table: &'static str) -> i64 {
        store
            .with(move |c| c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn old_records_go_but_running_jobs_and_pending_approvals_stay() {
        let dir = tempfile::tempdir().unwrap();
        let r = retention(dir.path(), RetentionSettings::default());
        let now = crate::store::now();
        r.store
            .insert_job(&job("old", JobStatus::Completed, OLD))
            .await
            .unwrap();
        r.store
            .insert_job(&job("old-running", JobStatus::Running, OLD))
            .await
            .unwrap();
        r.store
            .insert_job(&job("new", JobStatus::Completed, &now))
            .await
            .unwrap();
        r.store
            .queue_agent_run("old", "a", None, None, 1.0, Default::default())
            .await
            .unwrap();
        for (id, status) in [
            ("decided", ApprovalStatus::Approved),
            ("pending", ApprovalStatus::Pending),
        ] {
            r.store
                .insert_approval(&ApprovalRecord {
                    id: id.into(),
                    agent_id: "a".into(),
                    job_id: "old".into(),
                    action: "x".into(),
                    args: serde_json::json!({}),
                    status,
                    approvers: vec![],
                    created_at: OLD.into(),
                    decided_at: None,
                    decided_by: None,
                })
                .await
                .unwrap();
        }
        r.store
            .with(|c| c.execute("INSERT INTO webhook_deliveries (source, id, received_at) VALUES ('github', 'd', ?1)", params![OLD]))
            .await
            .unwrap();
        let action = |status: crate::outbox::ActionState| {
            let mut a = crate::outbox::OutboxAction::new(
                "old",
                "a",
                "x",
                &serde_json::json!({}),
                None,
                None,
            );
            a.status = status;
            a.created_at = OLD.into();
            a
        };
        let (delivered, waiting) = (
            action(crate::outbox::ActionState::Delivered),
            action(crate::outbox::ActionState::Queued),
        );
        let writes = crate::store::ActionWrites {
            approvals: vec![],
            actions: vec![delivered.clone(), waiting.clone()],
        };
        r.store.insert_action_writes(writes).await.unwrap();

        let pruned = r.prune(&HashSet::new()).await.unwrap();
        assert_eq!(
            (
                pruned.jobs,
                pruned.approvals,
                pruned.deliveries,
                pruned.actions
            ),
            (1, 1, 1, 1),
            "{pruned:?}"
        );
        let outbox = crate::outbox::Outbox::new(r.store.clone());
        assert!(
            outbox.get(&delivered.id).await.unwrap().is_none(),
            "settled: pruned"
        );
        assert!(
            outbox.get(&waiting.id).await.unwrap().is_some(),
            "still to deliver: kept"
        );
        assert_eq!(pruned.agent_runs, 0, "the old job's run went with it");
        assert!(r.store.job("old").await.unwrap().is_none());
        assert!(
            r.store.job("old-running").await.unwrap().is_some(),
            "running: kept"
        );
        assert!(r.store.job("new").await.unwrap().is_some());
        assert_eq!(count(&r.store, "agent_runs").await, 0);
        assert_eq!(
            count(&r.store, "approvals").await,
            1,
            "the pending one stays"
        );
        assert!(
            r.store.record_delivery("github", "d").await.unwrap(),
            "forgotten"
        );
    }

    #[tokio::test]
    async fn counts_keep_the_newest_and_reports_lose_their_files_first() {
        let dir = tempfile::tempdir().unwrap();
        let r = retention(
            dir.path(),
            RetentionSettings {
                max_age_days: 0,
                max_jobs: 2,
                max_reports: 1,
                ..RetentionSettings::default()
            },
        );
        let reports =
            crate::reports::ReportStore::open_journaled(&r.reports_dir, Arc::new(r.store.clone()))
                .await
                .unwrap();
        for i in 0..5 {
            let at = format!("2020-01-0{}T00:00:00.000Z", i + 1);
            r.store
                .insert_job(&job(&format!("j{i}"), JobStatus::Completed, &at))
                .await
                .unwrap();
        }
        let first = reports.write("p", "j0", "one", "# 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = reports.write("p", "j1", "two", "# 2").await.unwrap();
        let pruned = r.prune(&HashSet::new()).await.unwrap();
        assert_eq!((pruned.jobs, pruned.reports), (3, 1), "{pruned:?}");
        assert!(
            r.store.job("j4").await.unwrap().is_some()
                && r.store.job("j3").await.unwrap().is_some()
        );
        assert!(r.store.job("j2").await.unwrap().is_none());
        assert!(
            !r.reports_dir.join(&first.file).exists(),
            "the file is gone"
        );
        assert!(r.reports_dir.join(&second.file).exists());
        assert_eq!(reports.list().await, vec![second]);
        assert_eq!(
            count(&r.store, "report_journal").await,
            1,
            "a pruned report's body leaves the journal with it"
        );
        let again = r.prune(&HashSet::new()).await.unwrap();
        assert_eq!(again.total(), 0, "a second pass finds nothing");
    }

    #[tokio::test]
    async fn old_artifacts_of_unloaded_plugins_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let r = retention(dir.path(), RetentionSettings::default());
        let artifacts = dir.path().join("artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        let old = SystemTime::now() - Duration::from_secs(90 * 86_400);
        for name in [
            "aaa-1.cwasm",
            "bbb-1.cwasm",
            "ccc-1.cwasm",
            "notes.txt",
            ".tmp-crashed",
            ".tmp-writing",
        ] {
            let file = std::fs::File::create(artifacts.join(name)).unwrap();
            if name != "ccc-1.cwasm" && name != ".tmp-writing" {
                file.set_modified(old).unwrap();
            }
        }
        let in_use: HashSet<String> = ["bbb".to_string()].into();
        assert_eq!(r.prune(&in_use).await.unwrap().artifacts, 2);
        assert!(
            !artifacts.join(".tmp-crashed").exists(),
            "a crash's leftover"
        );
        assert!(
            artifacts.join(".tmp-writing").exists(),
            "a write in progress"
        );
        assert!(!artifacts.join("aaa-1.cwasm").exists(), "old and unused");
        assert!(artifacts.join("bbb-1.cwasm").exists(), "in use");
        assert!(artifacts.join("ccc-1.cwasm").exists(), "recent");
        assert!(artifacts.join("notes.txt").exists(), "not an artifact");
    }
}
