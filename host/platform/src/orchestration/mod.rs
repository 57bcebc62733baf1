//! Orchestration: events are handled by pipelines declared in configuration
//! (agents in parallel or in sequence, or chosen by a routing step; then a
//! decision step; then a report), run as jobs whose progress is streamed and
//! whose results are stored.

pub mod hub;
pub mod jobs;
pub mod pipelines;

pub use hub::{JobEvent, JobHub, SharedEvent};
pub use jobs::{JobLimits, Orchestrator};
pub use pipelines::{Pipeline, Pipelines};
