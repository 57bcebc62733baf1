//! Live progress of jobs: every event is kept (so a late subscriber gets the
//! whole story) and broadcast to whoever is listening. The history of the
//! most recent finished jobs is kept in memory up to a number of bytes (so
//! memory follows the size of jobs, not a count of them); older jobs are
//! read from the database. A finished job keeps no broadcast channel.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use crate::store::{JobRecord, JobStatus};

/// Bytes (of the events' JSON text, plus a little per event) of finished
/// jobs' event histories kept in memory.
pub const KEEP_FINISHED_BYTES: usize = 8 << 20;

/// Events buffered per live subscriber (a job has a dozen or so).
const LIVE_BUFFER: usize = 64;

/// One step of a job's progress, shared (not copied) between the history
/// and every live subscriber: an agent's output or a job's result is in
/// one place however many listen.
pub type SharedEvent = Arc<JobEvent>;

/// One step of a job's progress.
#[derive(Debug, Clone, Serialize)]
pub struct JobEvent {
    pub seq: u64,
    /// `job.started`, `agent.started`, `agent.finished`, `agent.failed`,
    /// `decision`, `report`, `job.finished` or `job.failed`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Serialised once, when emitted: the history, every subscriber's
    /// stream and the waiter read this text; no tree of values is built,
    /// kept or copied per event (trees of values were 8% of a fan-out's CPU).
    pub data: Box<RawValue>,
    pub at: String,
}

/// What a terminal event says of the job's end.
#[derive(Deserialize)]
struct Ending {
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<String>,
}

impl JobEvent {
    pub fn is_terminal(&self) -> bool {
        self.kind == "job.finished" || self.kind == "job.failed"
    }

    /// `job` as this terminal event says it ended: the record the
    /// orchestrator stored with it (same status, result, error and time),
    /// without reading it back from the database.
    pub fn ended(&self, mut job: JobRecord) -> JobRecord {
        let ending = serde_json::from_str::<Ending>(self.data.get()).unwrap_or(Ending {
            result: None,
            error: None,
        });
        if self.kind == "job.finished" {
            job.status = JobStatus::Completed;
            job.result = ending.result;
        } else {
            job.status = JobStatus::Failed;
            job.error = ending.error;
        }
        job.updated_at = self.at.clone();
        job
    }
}

struct Channel {
    history: Vec<SharedEvent>,
    /// Dropped when the job ends (subscribers then get the history).
    tx: Option<broadcast::Sender<SharedEvent>>,
    bytes: usize,
}

#[derive(Default)]
struct Channels {
    by_job: HashMap<String, Channel>,
    /// Finished jobs, oldest first, and the bytes of their histories.
    finished: VecDeque<String>,
    finished_bytes: usize,
}

/// The event channels of recent jobs.
pub struct JobHub {
    inner: Mutex<Channels>,
    keep_finished_bytes: usize,
}

impl Default for JobHub {
    fn default() -> Self {
        Self::keeping(KEEP_FINISHED_BYTES)
    }
}

impl JobHub {
    /// A hub keeping about `bytes` of finished jobs' histories.
    pub fn keeping(bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            keep_finished_bytes: bytes,
        }
    }

    /// Opens the channel of a new job.
    pub fn open(&self, job: &str) {
        let (tx, _) = broadcast::channel(LIVE_BUFFER);
        let mut inner = self.inner.lock().unwrap();
        inner.by_job.insert(
            job.to_string(),
            Channel {
                history: Vec::new(),
                tx: Some(tx),
                bytes: job.len(),
            },
        );
    }

    /// Finished jobs whose history is held in memory now, and its bytes.
    #[cfg(test)]
    fn finished_held(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        (inner.finished.len(), inner.finished_bytes)
    }

    /// Records and broadcasts an event.
    pub fn emit<T: Serialize + ?Sized>(&self, job: &str, kind: &'static str, data: &T) {
        self.emit_at(job, kind, data, crate::store::now());
    }

    /// Records and broadcasts an event that happened `at`.
    pub fn emit_at<T: Serialize + ?Sized>(
        &self,
        job: &str,
        kind: &'static str,
        data: &T,
        at: String,
    ) {
        // Serialised before the lock is taken; the data types here cannot
        // fail to serialise, but an event is never lost for it.
        let data = serde_json::value::to_raw_value(data).unwrap_or_else(|e| {
            tracing::error!(job, kind, error = %e, "a job event's data could not be serialised");
            RawValue::from_string("null".into()).expect("null is JSON")
        });
        let mut inner = self.inner.lock().unwrap();
        let inner = &mut *inner;
        let Some(channel) = inner.by_job.get_mut(job) else {
            return;
        };
        let event = Arc::new(JobEvent {
            seq: channel.history.len() as u64 + 1,
            kind,
            data,
            at,
        });
        channel.bytes += event.data.get().len() + event.at.len() + 16;
        let terminal = event.is_terminal();
        match (&channel.tx, terminal) {
            (Some(tx), false) => {
                let _ = tx.send(event.clone());
            }
            (Some(_), true) => {
                if let Some(tx) = channel.tx.take() {
                    let _ = tx.send(event.clone());
                }
                inner.finished.push_back(job.to_string());
                inner.finished_bytes += channel.bytes;
            }
            (None, _) => {}
        }
        channel.history.push(event);
        while inner.finished_bytes > self.keep_finished_bytes {
            let Some(old) = inner.finished.pop_front() else {
                break;
            };
            if let Some(gone) = inner.by_job.remove(&old) {
                inner.finished_bytes = inner.finished_bytes.saturating_sub(gone.bytes);
            }
        }
    }

    /// The events so far and a receiver for the rest; `None` for a job this
    /// process does not hold in memory.
    pub fn subscribe(
        &self,
        job: &str,
    ) -> Option<(Vec<SharedEvent>, Option<broadcast::Receiver<SharedEvent>>)> {
        let inner = self.inner.lock().unwrap();
        let channel = inner.by_job.get(job)?;
        let rx = channel.tx.as_ref().map(|tx| tx.subscribe());
        Some((channel.history.clone(), rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn finish(hub: &JobHub, job: &str, text: &str) {
        hub.open(job);
        hub.emit(job, "agent.finished", &json!({ "output": text }));
        hub.emit(job, "job.finished", &json!({ "jobId": job }));
    }

    #[test]
    fn finished_histories_are_bounded_by_bytes_not_by_count() {
        let hub = JobHub::keeping(30_000);
        for i in 0..100 {
            finish(&hub, &format!("small-{i}"), "ok");
        }
        assert_eq!(hub.finished_held().0, 100, "a hundred small jobs fit");
        finish(&hub, "big", &"x".repeat(29_000));
        let (jobs, bytes) = hub.finished_held();
        assert!(bytes <= 30_000, "{bytes}");
        assert!(jobs < 100, "the big job pushed older ones out: {jobs}");
        assert!(hub.subscribe("big").is_some(), "the newest is kept");
        assert!(hub.subscribe("small-0").is_none(), "the oldest is gone");
    }

    fn running_job() -> JobRecord {
        JobRecord {
            id: "j".into(),
            event: "push".into(),
            pipeline: "default".into(),
            context: "api".into(),
            status: JobStatus::Running,
            payload: json!({"n": 1}),
            result: None,
            error: None,
            created_at: "2026-11-29T00:00:00.000Z".into(),
            updated_at: "2026-11-29T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn a_terminal_event_rebuilds_the_record_the_job_ended_with() {
        let hub = JobHub::default();
        hub.open("j");
        let at = "2026-11-29T00:00:01.234Z".to_string();
        hub.emit_at(
            "j",
            "job.finished",
            &json!({"status": "completed", "result": {"decision": "approve"}}),
            at.clone(),
        );
        let (history, _) = hub.subscribe("j").unwrap();
        let ended = history.last().unwrap().ended(running_job());
        assert_eq!(ended.status, JobStatus::Completed);
        assert_eq!(
            ended.result.map(|r| r.get().to_string()).as_deref(),
            Some(r#"{"decision":"approve"}"#),
            "the result's JSON as the job serialised it"
        );
        assert_eq!(ended.error, None);
        assert_eq!(ended.updated_at, at, "the time stored with it");
        assert_eq!(ended.payload, json!({"n": 1}), "the rest as submitted");

        hub.open("k");
        hub.emit_at(
            "k",
            "job.failed",
            &json!({"status": "failed", "error": "routing failed"}),
            at.clone(),
        );
        let (history, _) = hub.subscribe("k").unwrap();
        let ended = history.last().unwrap().ended(running_job());
        assert_eq!(ended.status, JobStatus::Failed);
        assert_eq!(ended.error.as_deref(), Some("routing failed"));
        assert!(ended.result.is_none());
    }

    #[tokio::test]
    async fn subscribers_and_the_history_share_each_event_instead_of_copying_it() {
        let hub = JobHub::default();
        hub.open("j");
        let (_, first) = hub.subscribe("j").unwrap();
        let (_, second) = hub.subscribe("j").unwrap();
        hub.emit("j", "agent.finished", &json!({ "output": "a long review" }));
        let live = [first, second].map(|rx| rx.unwrap().try_recv().unwrap());
        let (history, _) = hub.subscribe("j").unwrap();
        assert!(
            Arc::ptr_eq(&live[0], &live[1]),
            "one event for both listeners"
        );
        assert!(
            Arc::ptr_eq(&live[0], &history[0]),
            "and the same in the history"
        );
    }

    #[tokio::test]
    async fn a_live_subscriber_gets_the_end_and_a_late_one_the_history() {
        let hub = JobHub::default();
        hub.open("j");
        hub.emit("j", "job.started", &json!({}));
        let (history, rx) = hub.subscribe("j").unwrap();
        assert_eq!(history.len(), 1);
        let mut rx = rx.expect("a running job has a live channel");
        hub.emit("j", "job.finished", &json!({}));
        assert_eq!(rx.recv().await.unwrap().kind, "job.finished");
        assert!(rx.recv().await.is_err(), "the channel closes with the job");
        let (history, rx) = hub.subscribe("j").unwrap();
        assert_eq!(history.len(), 2);
        assert!(rx.is_none(), "a finished job keeps no channel");
    }
}
