//! Live progress of jobs: every event is kept (so a late subscriber gets the
//! whole story) and broadcast to whoever is listening. The history of the
//! most recent jobs is kept in memory; older jobs are read from the database.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// How many finished jobs keep their event history in memory.
const KEEP_FINISHED: usize = 1_000;

/// One step of a job's progress.
#[derive(Debug, Clone, Serialize)]
pub struct JobEvent {
    pub seq: u64,
    /// `job.started`, `agent.started`, `agent.finished`, `agent.failed`,
    /// `decision`, `report`, `job.finished` or `job.failed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
    pub at: String,
}

impl JobEvent {
    pub fn is_terminal(&self) -> bool {
        self.kind == "job.finished" || self.kind == "job.failed"
    }
}

struct Channel {
    history: Vec<JobEvent>,
    tx: broadcast::Sender<JobEvent>,
    done: bool,
}

/// The event channels of recent jobs.
#[derive(Default)]
pub struct JobHub {
    inner: Mutex<(HashMap<String, Channel>, VecDeque<String>)>,
}

impl JobHub {
    /// Opens the channel of a new job.
    pub fn open(&self, job: &str) {
        let (tx, _) = broadcast::channel(256);
        let mut inner = self.inner.lock().unwrap();
        inner.0.insert(
            job.to_string(),
            Channel {
                history: Vec::new(),
                tx,
                done: false,
            },
        );
    }

    /// Records and broadcasts an event.
    pub fn emit(&self, job: &str, kind: &str, data: Value) {
        let mut inner = self.inner.lock().unwrap();
        let (channels, finished) = &mut *inner;
        let Some(channel) = channels.get_mut(job) else {
            return;
        };
        let event = JobEvent {
            seq: channel.history.len() as u64 + 1,
            kind: kind.to_string(),
            data,
            at: crate::store::now(),
        };
        channel.history.push(event.clone());
        let terminal = event.is_terminal();
        let _ = channel.tx.send(event);
        if terminal && !channel.done {
            channel.done = true;
            finished.push_back(job.to_string());
            while finished.len() > KEEP_FINISHED {
                if let Some(old) = finished.pop_front() {
                    channels.remove(&old);
                }
            }
        }
    }

    /// The events so far and a receiver for the rest; `None` for a job this
    /// process does not hold in memory.
    pub fn subscribe(
        &self,
        job: &str,
    ) -> Option<(Vec<JobEvent>, Option<broadcast::Receiver<JobEvent>>)> {
        let inner = self.inner.lock().unwrap();
        let channel = inner.0.get(job)?;
        let rx = (!channel.done).then(|| channel.tx.subscribe());
        Some((channel.history.clone(), rx))
    }
}
