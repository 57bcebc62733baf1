//! The outbox: every action that passed governance, durably, with its
//! truthful status, from the moment its run is recorded until a handler
//! delivered it (or it is dead, or a human rejected it).
//!
//! Actions are written in the same transaction as their run record (and
//! their approval, when one is required); the dispatcher
//! (`crate::dispatch`) claims the due ones, hands each to the handler its
//! route names, and records the outcome. Delivery is **at least once**: an
//! action whose delivery was under way when the process stopped is handed
//! out again after a restart, with the same idempotency key, so a receiver
//! drops the duplicate.
//!
//! Statuses: `pending_approval` → (approved) `queued` | (rejected)
//! `rejected`; `queued` → `delivering` → `delivered` | `failed` (retried
//! at `next_attempt_at`) | `dead` (out of attempts, a permanent failure, or
//! no handler routed).

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{Store, StoreError, now};

/// Where an action is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    PendingApproval,
    Queued,
    Delivering,
    Delivered,
    Failed,
    Dead,
    Rejected,
}

impl ActionState {
    pub const ALL: [ActionState; 7] = [
        ActionState::PendingApproval,
        ActionState::Queued,
        ActionState::Delivering,
        ActionState::Delivered,
        ActionState::Failed,
        ActionState::Dead,
        ActionState::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::PendingApproval => "pending_approval",
            ActionState::Queued => "queued",
            ActionState::Delivering => "delivering",
            ActionState::Delivered => "delivered",
            ActionState::Failed => "failed",
            ActionState::Dead => "dead",
            ActionState::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// One action in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxAction {
    pub id: String,
    /// The job, or the request's correlation id for a direct run.
    pub job_id: String,
    /// The agent or step that emitted it.
    pub plugin_id: String,
    pub name: String,
    pub args: Value,
    /// The run's payload when it ran outside a job (a job's own payload
    /// is read from the job).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    pub status: ActionState,
    /// The handler plugin it was (last) routed to.
    pub handler: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    /// What the handler said it did.
    pub result: Option<String>,
    /// Stable across attempts: receivers drop duplicates by it.
    pub idempotency_key: String,
    pub approval_id: Option<String>,
    /// Who approved or rejected it, and why (rejections).
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl OutboxAction {
    /// A new action of `plugin`, waiting for approval or queued.
    pub fn new(
        job_id: &str,
        plugin_id: &str,
        name: &str,
        args: &Value,
        payload: Option<&Value>,
        approval_id: Option<String>,
    ) -> Self {
        let id = crate::store::new_row_id().simple().to_string();
        let at = now();
        Self {
            idempotency_key: format!("bsm-action-{id}"),
            id,
            job_id: job_id.to_string(),
            plugin_id: plugin_id.to_string(),
            name: name.to_string(),
            args: args.clone(),
            payload: payload.cloned(),
            status: if approval_id.is_some() {
                ActionState::PendingApproval
            } else {
                ActionState::Queued
            },
            handler: None,
            attempts: 0,
            next_attempt_at: None,
            last_error: None,
            result: None,
            approval_id,
            decided_by: None,
            reason: None,
            created_at: at.clone(),
            updated_at: at,
        }
    }

    /// The same action, dead before any attempt: nothing in this process
    /// would deliver it (`why`). Written so at once, it never takes a claim.
    pub fn dead(self, why: String) -> Self {
        Self {
            status: ActionState::Dead,
            last_error: Some(why),
            ..self
        }
    }
}

const COLUMNS: &str = "id, job_id, plugin_id, name, args, status, handler, attempts, next_attempt_at, last_error, result, idempotency_key, approval_id, decided_by, reason, created_at, updated_at, payload";

/// Inserts actions on a connection inside the caller's transaction.
pub(crate) fn insert(c: &Connection, actions: &[OutboxAction]) -> rusqlite::Result<()> {
    let mut stmt = c.prepare_cached(&format!(
        "INSERT INTO actions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
    ))?;
    for a in actions {
        stmt.execute(params![
            a.id,
            a.job_id,
            a.plugin_id,
            a.name,
            a.args.to_string(),
            a.status.as_str(),
            a.handler,
            a.attempts,
            a.next_attempt_at,
            a.last_error,
            a.result,
            a.idempotency_key,
            a.approval_id,
            a.decided_by,
            a.reason,
            a.created_at,
            a.updated_at,
            a.payload.as_ref().map(Value::to_string)
        ])?;
    }
    Ok(())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxAction> {
    let args: String = r.get(4)?;
    let status: String = r.get(5)?;
    Ok(OutboxAction {
        id: r.get(0)?,
        job_id: r.get(1)?,
        plugin_id: r.get(2)?,
        name: r.get(3)?,
        args: serde_json::from_str(&args).unwrap_or(Value::Null),
        status: ActionState::parse(&status).unwrap_or(ActionState::Dead),
        handler: r.get(6)?,
        attempts: r.get(7)?,
        next_attempt_at: r.get(8)?,
        last_error: r.get(9)?,
        result: r.get(10)?,
        idempotency_key: r.get(11)?,
        approval_id: r.get(12)?,
        decided_by: r.get(13)?,
        reason: r.get(14)?,
        created_at: r.get(15)?,
        updated_at: r.get(16)?,
        payload: r
            .get::<_, Option<String>>(17)?
            .and_then(|p| serde_json::from_str(&p).ok()),
    })
}

/// Which actions a listing shows.
#[derive(Debug, Clone, Default)]
pub struct ActionFilter {
    pub status: Option<ActionState>,
    pub job: Option<String>,
    pub agent: Option<String>,
    pub name: Option<String>,
}

/// Why a retry was refused.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no action {0:?}")]
    NotFound(String),
    #[error("action {id:?} is {status:?}: only failed or dead actions are retried")]
    NotRetryable { id: String, status: ActionState },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a delivery attempt came to.
#[derive(Debug, Clone)]
pub enum Attempt {
    Delivered(String),
    /// Tried again at the given time.
    Failed {
        error: String,
        next_attempt_at: String,
    },
    Dead(String),
}

/// The outbox of one database.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
}

impl Outbox {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub async fn get(&self, id: &str) -> Result<Option<OutboxAction>, StoreError> {
        let id = id.to_string();
        self.store
            .with(move |c| {
                c.query_row(
                    &format!("SELECT {COLUMNS} FROM actions WHERE id = ?1"),
                    params![id],
                    row,
                )
                .optional()
            })
            .await
    }

    /// Actions matching `filter`, newest first (the caller pages them).
    pub async fn list(&self, filter: ActionFilter) -> Result<Vec<OutboxAction>, StoreError> {
        self.store
            .with(move |c| {
                c.prepare(&format!(
                    "SELECT {COLUMNS} FROM actions WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR job_id = ?2) AND (?3 IS NULL OR plugin_id = ?3) AND (?4 IS NULL OR name = ?4) ORDER BY created_at, id"
                ))?
                .query_map(
                    params![filter.status.map(ActionState::as_str), filter.job, filter.agent, filter.name],
                    row,
                )?
                .collect()
            })
            .await
    }

    /// Actions per status (the metrics).
    pub async fn counts(&self) -> Result<Vec<(ActionState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = self
            .store
            .with(|c| {
                c.prepare("SELECT status, COUNT(*) FROM actions GROUP BY status")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .await?;
        Ok(ActionState::ALL
            .into_iter()
            .map(|state| {
                let n = rows
                    .iter()
                    .find(|(s, _)| s == state.as_str())
                    .map_or(0, |(_, n)| *n as u64);
                (state, n)
            })
            .collect())
    }

    /// Puts a failed or dead action back in the queue, attempts reset.
    pub async fn retry(&self, id: &str, by: &str) -> Result<OutboxAction, RetryError> {
        let (id, by) = (id.to_string(), by.to_string());
        let changed = self
            .store
            .with({
                let id = id.clone();
                move |c| {
                    c.execute(
                        "UPDATE actions SET status = 'queued', attempts = 0, next_attempt_at = NULL, decided_by = ?2, updated_at = ?3 WHERE id = ?1 AND status IN ('failed', 'dead')",
                        params![id, by, now()],
                    )
                }
            })
            .await?;
        let action = self
            .get(&id)
            .await?
            .ok_or_else(|| RetryError::NotFound(id.clone()))?;
        if changed == 0 {
            return Err(RetryError::NotRetryable {
                id,
                status: action.status,
            });
        }
        Ok(action)
    }

    /// After a crash or a stop mid-delivery: what was being delivered is
    /// due again (at least once). Returns how many.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        self.store
            .with(|c| {
                c.execute(
                    "UPDATE actions SET status = 'queued', updated_at = ?1 WHERE status = 'delivering'",
                    params![now()],
                )
            })
            .await
    }

    /// Claims up to `limit` due actions (queued, or failed and due) whose
    /// job has finished (a handler gets the job's decision and report):
    /// marks them delivering and counts the attempt. An action `routed`
    /// says has no handler is dead in the same transaction (with `why`),
    /// not handed out: nothing would deliver it, so it costs no second
    /// write and holds no delivery place. The actions of one job
    /// (or request) go one at a time, in the order they were emitted, so a
    /// handler never races itself on the same pull request (a comment
    /// before the merge, never two comments).
    pub async fn claim(&self, limit: usize, routed: Router) -> Result<Claimed, StoreError> {
        self.store
            .with(move |c| {
                let tx = c.unchecked_transaction()?;
                let at = now();
                let ids = |sql: &str| -> rusqlite::Result<std::collections::HashSet<String>> {
                    tx.prepare_cached(sql)?.query_map([], |r| r.get(0))?.collect()
                };
                // Jobs still running, and jobs with an action being
                // delivered, wait. Both are index lookups on `status`.
                let mut busy = ids("SELECT id FROM jobs WHERE status = 'running'")?;
                busy.extend(ids("SELECT job_id FROM actions WHERE status = 'delivering'")?);
                // Earlier actions of a job that are not settled yet (pending
                // approval aside) hold back the later ones. Each status is
                // read in rowid order from its index (no sort), then merged.
                let scan = (limit * 8 + 64) as i64;
                let mut candidates: Vec<(i64, OutboxAction)> = Vec::new();
                for status in ["queued", "failed"] {
                    let mut stmt = tx.prepare_cached(&format!(
                        "SELECT {COLUMNS}, rowid FROM actions WHERE status = ?1 ORDER BY rowid LIMIT ?2"
                    ))?;
                    let rows = stmt.query_map(params![status, scan], |r| Ok((r.get(18)?, row(r)?)))?;
                    for r in rows {
                        candidates.push(r?);
                    }
                }
                candidates.sort_by_key(|(rowid, _)| *rowid);
                let mut claimed = Vec::new();
                for (_, a) in candidates {
                    if claimed.len() == limit {
                        break;
                    }
                    let due = a.status == ActionState::Queued
                        || a.next_attempt_at.as_deref().is_some_and(|t| t <= at.as_str());
                    // Whether due or not, it is the job's next action.
                    if busy.insert(a.job_id.clone()) && due {
                        claimed.push(a);
                    }
                }
                let mut out = Claimed::default();
                for mut a in claimed {
                    a.attempts += 1;
                    match routed(&a.name) {
                        Ok(()) => {
                            tx.prepare_cached(
                                "UPDATE actions SET status = 'delivering', attempts = attempts + 1, updated_at = ?2 WHERE id = ?1",
                            )?
                            .execute(params![a.id, at])?;
                            a.status = ActionState::Delivering;
                            out.deliver.push(a);
                        }
                        Err(why) => {
                            tx.prepare_cached(
                                "UPDATE actions SET status = 'dead', attempts = attempts + 1, last_error = ?2, next_attempt_at = NULL, updated_at = ?3 WHERE id = ?1",
                            )?
                            .execute(params![a.id, why, at])?;
                            a.status = ActionState::Dead;
                            a.last_error = Some(why);
                            out.dead.push(a);
                        }
                    }
                }
                tx.commit()?;
                Ok(out)
            })
            .await
    }

    /// Records the outcome of an attempt.
    pub async fn finish(
        &self,
        id: &str,
        handler: Option<&str>,
        attempt: Attempt,
    ) -> Result<(), StoreError> {
        let (id, handler) = (id.to_string(), handler.map(String::from));
        // Committed with concurrent writes (group commit), like a run's rows.
        self.store
            .write(move |c| {
                let at = now();
                match &attempt {
                    Attempt::Delivered(result) => c.prepare_cached(
                        "UPDATE actions SET status = 'delivered', handler = ?2, result = ?3, last_error = NULL, next_attempt_at = NULL, updated_at = ?4 WHERE id = ?1",
                    )?
                    .execute(params![id, handler, result, at]),
                    Attempt::Failed { error, next_attempt_at } => c.prepare_cached(
                        "UPDATE actions SET status = 'failed', handler = ?2, last_error = ?3, next_attempt_at = ?4, updated_at = ?5 WHERE id = ?1",
                    )?
                    .execute(params![id, handler, error, next_attempt_at, at]),
                    Attempt::Dead(error) => c.prepare_cached(
                        "UPDATE actions SET status = 'dead', handler = ?2, last_error = ?3, next_attempt_at = NULL, updated_at = ?4 WHERE id = ?1",
                    )?
                    .execute(params![id, handler, error, at]),
                }
                .map(|_| ())
            })
            .await
    }
}

/// Whether an action (by name) has a handler; `Err` says why not.
pub type Router = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What one claim took from the queue.
#[derive(Debug, Default)]
pub struct Claimed {
    /// Marked delivering: hand each to its handler.
    pub deliver: Vec<OutboxAction>,
    /// Without a handler: already recorded dead.
    pub dead: Vec<OutboxAction>,
}

/// On an approval decision, inside its transaction: the action it holds is
/// queued (approved) or rejected, with who and why.
pub(crate) fn decide(
    c: &Connection,
    approval_id: &str,
    approve: bool,
    by: &str,
    reason: Option<&str>,
) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE actions SET status = ?2, decided_by = ?3, reason = ?4, updated_at = ?5 WHERE approval_id = ?1 AND status = 'pending_approval'",
        params![
            approval_id,
            if approve { "queued" } else { "rejected" },
            by,
            reason,
            now()
        ],
    )
}
