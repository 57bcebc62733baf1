//! Pipelines: which agents handle an event, how, and what decides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use bsm_runtime::api::RunMode;

/// How one event is handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Pipeline {
    /// The agents to run (ignored when `router` is set).
    #[serde(default)]
    pub agents: Vec<String>,
    #[serde(default = "parallel")]
    pub mode: RunMode,
    /// A step plugin that chooses the agents and mode from the payload.
    #[serde(default)]
    pub router: Option<String>,
    /// A step plugin that decides over the agents' results.
    #[serde(default)]
    pub decision: Option<String>,
    /// Write a markdown report of the job.
    #[serde(default = "yes")]
    pub report: bool,
}

fn parallel() -> RunMode {
    RunMode::Parallel
}

fn yes() -> bool {
    true
}

/// Pipelines by event; `default` catches every other event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pipelines(pub BTreeMap<String, Pipeline>);

/// The name of the pipeline for events without their own.
pub const DEFAULT: &str = "default";

impl Pipelines {
    /// The original BSM event strategies and decision.
    pub fn original() -> Self {
        let pipe = |agents: &[&str], mode: RunMode, decision: Option<&str>| Pipeline {
            agents: agents.iter().map(|a| a.to_string()).collect(),
            mode,
            router: None,
            decision: decision.map(String::from),
            report: true,
        };
        let pr_full = [
            "governance-review-agent",
            "code-review-agent",
            "security-agent",
            "integrity-agent",
        ];
        let mut map = BTreeMap::new();
        map.insert(
            "pull_request.opened".into(),
            pipe(&pr_full, RunMode::Parallel, Some("pr-decision")),
        );
        map.insert(
            "pull_request.synchronize".into(),
            pipe(&pr_full, RunMode::Parallel, Some("pr-decision")),
        );
        map.insert(
            "pull_request.ready_for_review".into(),
            pipe(&pr_full[..3], RunMode::Parallel, Some("pr-decision")),
        );
        map.insert(
            "check_suite.completed".into(),
            pipe(&["pr-merge-agent"], RunMode::Sequential, None),
        );
        map.insert(
            "repository.health_check".into(),
            pipe(&["integrity-agent"], RunMode::Sequential, None),
        );
        map.insert(
            DEFAULT.into(),
            pipe(&["governance-agent"], RunMode::Sequential, None),
        );
        Self(map)
    }

    /// The original pipelines with `overrides` replacing or adding events.
    pub fn with_overrides(overrides: &BTreeMap<String, Pipeline>) -> Self {
        let mut p = Self::original();
        for (event, pipeline) in overrides {
            p.0.insert(event.clone(), pipeline.clone());
        }
        p
    }

    /// The pipeline for `event` and its name (the event, or `default`).
    pub fn for_event(&self, event: &str) -> Option<(&str, &Pipeline)> {
        self.0
            .get_key_value(event)
            .or_else(|| self.0.get_key_value(DEFAULT))
            .map(|(k, v)| (k.as_str(), v))
    }
}
