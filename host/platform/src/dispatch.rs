//! The outbox dispatcher: hands due actions to their handler plugins and
//! records what came of it, with retries (exponential backoff with jitter)
//! and a dead-letter state after the last attempt.
//!
//! Routing is configuration (`[actions.routes]`: action name → handler
//! plugin id, `"*"` for the rest). An action without a route is `dead` at
//! once, with that reason: nothing pretends to have carried it out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

use crate::outbox::{Attempt, Outbox, OutboxAction, Router};
use crate::reports::ReportStore;
use crate::store::Store;
use bsm_runtime::Runtime;
use bsm_runtime::api::{ActionRequest, DeliveryFailure};

/// The `[actions]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct ActionSettings {
    /// Action name → handler plugin id; `"*"` routes every other action.
    pub routes: BTreeMap<String, String>,
    /// Attempts before an action is dead.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt, up to `max-backoff-ms`, each
    /// drawn between half and all of it (jitter).
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// How often due retries are looked for when nothing wakes the
    /// dispatcher earlier.
    pub poll_ms: u64,
}

impl Default for ActionSettings {
    fn default() -> Self {
        Self {
            routes: BTreeMap::new(),
            max_attempts: 6,
            base_backoff_ms: 500,
            max_backoff_ms: 60_000,
            concurrency: 16,
            poll_ms: 500,
        }
    }
}

impl ActionSettings {
    /// The handler an action goes to.
    pub fn route(&self, action: &str) -> Option<&str> {
        self.routes
            .get(action)
            .or_else(|| self.routes.get("*"))
            .map(String::as_str)
    }

    /// Whether an action (by name) has a handler here; `Err` says why not.
    pub fn check_route(&self, action: &str) -> Result<(), String> {
        match self.route(action) {
            Some(_) => Ok(()),
            None => Err(unrouted(action)),
        }
    }

    /// The delay before attempt `attempts + 1`, with jitter in [d/2, d].
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let full = self
            .base_backoff_ms
            .saturating_mul(1u64 << exp)
            .min(self.max_backoff_ms)
            .max(1);
        let jitter = rand_core::OsRng.next_u64() % (full / 2 + 1);
        Duration::from_millis(full - jitter)
    }
}

/// The outbox, and its dispatcher when this process delivers.
pub struct Dispatch {
    outbox: Outbox,
    wake: Arc<Notify>,
    _task: Option<tokio_util::task::AbortOnDropHandle<()>>,
}

impl Dispatch {
    /// An outbox this process only writes to (CLI runs): a server on the
    /// same data directory delivers.
    pub fn idle(outbox: Outbox) -> Self {
        Self {
            outbox,
            wake: Arc::new(Notify::new()),
            _task: None,
        }
    }

    /// Starts delivering: first what a stopped process left mid-delivery,
    /// then whatever becomes due.
    pub fn start(deliverer: Deliverer) -> Self {
        let wake = Arc::new(Notify::new());
        let outbox = deliverer.outbox.clone();
        let task = tokio::spawn(run(Arc::new(deliverer), wake.clone()));
        Self {
            outbox,
            wake,
            _task: Some(tokio_util::task::AbortOnDropHandle::new(task)),
        }
    }

    /// New actions are queued: look now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }
}

/// What delivering needs: where actions and jobs are, and who runs handlers.
pub struct Deliverer {
    pub outbox: Outbox,
    pub store: Store,
    pub reports: Arc<ReportStore>,
    pub runtime: Arc<Runtime>,
    pub settings: ActionSettings,
}

/// Claims woken in quick succession are at least this far apart, so that
/// under load one claim takes the actions of many runs: a claim is a
/// database transaction, and one per run took a tenth of the server's CPU
/// at ~3,600 runs/s. A new action waits at most this much longer.
const CLAIM_GAP: Duration = Duration::from_millis(2);

async fn run(deliverer: Arc<Deliverer>, wake: Arc<Notify>) {
    match deliverer.outbox.recover().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            actions = n,
            "actions that were being delivered when the host stopped are due again (at least once: their idempotency keys are unchanged)"
        ),
        Err(e) => tracing::error!(error = %e, "cannot recover the outbox"),
    }
    let poll = Duration::from_millis(deliverer.settings.poll_ms.max(10));
    let concurrency = deliverer.settings.concurrency.max(1);
    // Deliveries run side by side, up to `concurrency`: a slow receiver
    // holds one place, not the others.
    let mut in_flight = tokio::task::JoinSet::new();
    let routes = deliverer.clone();
    let routed: Router = Arc::new(move |name: &str| routes.settings.check_route(name));
    let mut last_claim = tokio::time::Instant::now();
    loop {
        let free = concurrency - in_flight.len();
        let mut claimed = 0;
        // Claim in batches (a quarter of the places at least) rather than
        // one place at a time: a claim is a database round trip.
        if free > 0 && (in_flight.is_empty() || free >= concurrency.div_ceil(4)) {
            last_claim = tokio::time::Instant::now();
            match deliverer.outbox.claim(free, routed.clone()).await {
                Ok(actions) => {
                    claimed = actions.deliver.len();
                    let full = claimed + actions.dead.len() >= free;
                    for action in &actions.dead {
                        let reason = action.last_error.as_deref().unwrap_or_default();
                        log_attempt(action, None, &Attempt::Dead(reason.to_string()));
                    }
                    for action in actions.deliver {
                        let deliverer = deliverer.clone();
                        in_flight.spawn(async move { deliverer.deliver(action).await });
                    }
                    if full && claimed < free {
                        // Dead ones took part of a full claim and places
                        // are left: more may be due now.
                        continue;
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot claim actions; retrying"),
            }
        }
        if claimed > 0 && claimed == free {
            // Perhaps more are due: wait only for a free place.
            in_flight.join_next().await;
            continue;
        }
        if free > 0 && claimed == 0 && !in_flight.is_empty() && free < concurrency.div_ceil(4) {
            // Not worth a claim yet: wait for places to free up.
            in_flight.join_next().await;
            continue;
        }
        tokio::select! {
            _ = wake.notified() => {
                // Let the runs finishing meanwhile queue theirs too.
                tokio::time::sleep_until(last_claim + CLAIM_GAP).await;
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Why an action without a route is dead.
fn unrouted(name: &str) -> String {
    format!("no handler is configured for action {name:?} ([actions.routes])")
}

/// The log line and counter of one delivery attempt's outcome.
pub(crate) fn log_attempt(action: &OutboxAction, handler: Option<&str>, attempt: &Attempt) {
    let status = match attempt {
        Attempt::Delivered(_) => "delivered",
        Attempt::Failed { .. } => "failed",
        Attempt::Dead(_) => "dead",
    };
    match attempt {
        Attempt::Delivered(_) => {
            tracing::info!(action = %action.id, name = %action.name, handler, "action delivered")
        }
        Attempt::Failed { error, .. } => {
            tracing::warn!(action = %action.id, name = %action.name, handler, attempt = action.attempts, error = %error, "action delivery failed; it will be retried")
        }
        Attempt::Dead(error) => {
            tracing::warn!(action = %action.id, name = %action.name, handler, error = %error, "action is dead")
        }
    }
    metrics::counter!("bsm_action_attempts_total", "outcome" => status).increment(1);
}

impl Deliverer {
    async fn deliver(&self, action: OutboxAction) {
        let Some(handler) = self.settings.route(&action.name).map(String::from) else {
            // Routes do not change while the dispatcher runs; kept for safety.
            self.record(&action, None, Attempt::Dead(unrouted(&action.name)))
                .await;
            return;
        };
        let request = self.request(&action).await;
        let attempt = match self.runtime.run_handler(&handler, request).await {
            Ok(run) => match run.outcome {
                Ok(done) => Attempt::Delivered(done),
                Err(DeliveryFailure::Permanent(reason)) => Attempt::Dead(reason),
                Err(DeliveryFailure::Retry(reason)) => self.retry_or_give_up(&action, reason),
            },
            Err(e) => self.retry_or_give_up(&action, format!("handler {handler:?}: {e}")),
        };
        self.record(&action, Some(&handler), attempt).await;
    }

    fn retry_or_give_up(&self, action: &OutboxAction, reason: String) -> Attempt {
        if action.attempts >= self.settings.max_attempts {
            return Attempt::Dead(format!(
                "gave up after {} attempts: {reason}",
                action.attempts
            ));
        }
        let at = SystemTime::now() + self.settings.backoff(action.attempts);
        Attempt::Failed {
            error: reason,
            next_attempt_at: humantime::format_rfc3339_millis(at).to_string(),
        }
    }

    async fn record(&self, action: &OutboxAction, handler: Option<&str>, attempt: Attempt) {
        log_attempt(action, handler, &attempt);
        if let Err(e) = self.outbox.finish(&action.id, handler, attempt).await {
            tracing::error!(action = %action.id, error = %e, "cannot record a delivery outcome; the action stays delivering until the next restart");
        }
    }

    /// The handler's view of an action: with its job's event, payload,
    /// decision and report when it came from a job.
    async fn request(&self, action: &OutboxAction) -> ActionRequest {
        let job = self.store.job(&action.job_id).await.ok().flatten();
        let told = job
            .as_ref()
            .and_then(|j| j.result.as_ref())
            .and_then(|r| serde_json::from_str::<HandlerView>(r.get()).ok())
            .unwrap_or_default();
        let report = match told.report {
            Some(r) => self.reports.get(&r.id).await.map(|(_, text)| text),
            None => None,
        };
        ActionRequest {
            id: action.id.clone(),
            name: action.name.clone(),
            args: action.args.clone(),
            idempotency_key: action.idempotency_key.clone(),
            attempt: action.attempts,
            source_plugin: action.plugin_id.clone(),
            job_id: job.as_ref().map(|j| j.id.clone()),
            event: job.as_ref().map(|j| j.event.clone()),
            payload: match &job {
                Some(j) => j.payload.clone(),
                None => action.payload.clone().unwrap_or_else(|| json!({})),
            },
            decision: told.decision_name,
            report,
            correlation_id: action.job_id.clone(),
        }
    }
}

/// What a handler is told of its job's result: read from the stored JSON
/// text without building the rest of it (the agents' outputs).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HandlerView {
    #[serde(default)]
    decision_name: Option<String>,
    #[serde(default)]
    report: Option<ReportId>,
}

#[derive(serde::Deserialize)]
struct ReportId {
    id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_fall_back_to_the_wildcard() {
        let settings = ActionSettings {
            routes: [
                ("approve_and_merge".to_string(), "github".to_string()),
                ("*".to_string(), "sink".to_string()),
            ]
            .into(),
            ..ActionSettings::default()
        };
        assert_eq!(settings.route("approve_and_merge"), Some("github"));
        assert_eq!(settings.route("create_file"), Some("sink"));
        assert_eq!(ActionSettings::default().route("x"), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_below_it() {
        let settings = ActionSettings {
            base_backoff_ms: 100,
            max_backoff_ms: 1_000,
            ..ActionSettings::default()
        };
        for (attempts, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1_000),
            (30, 1_000),
        ] {
            for _ in 0..50 {
                let d = settings.backoff(attempts).as_millis() as u64;
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempts}: {d} not in [{}, {full}]",
                    full / 2
                );
            }
        }
    }
}
