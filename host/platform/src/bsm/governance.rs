//! Governance from the original registry: validated as a whole at startup
//! (every violation listed, so an operator fixes them in one pass), then
//! consulted on every call: may this agent run in this context, and do its
//! actions need an approval first?
//!
//! One bad agent does not take the others down: [`Governance::assess`]
//! quarantines each agent with violations and governs the rest;
//! [`Governance::from_layout`] is the strict form that refuses the whole
//! registry (for CI and `--strict`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::layout::{AgentDefinition, Approval, BsmLayout, Contexts, RegistryEntry, Risk};

/// The calling contexts BSM knows.
pub const KNOWN_CONTEXTS: &[&str] = &["api", "chat", "ci", "github", "mobile", "cli"];
const RISK_LEVELS: &[&str] = &["low", "medium", "high", "critical"];
const APPROVAL_TYPES: &[&str] = &["none", "manual", "automated"];
const PROFILES: &[&str] = &["development", "staging", "production"];

/// One problem found in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub agent: String,
    pub field: String,
    pub problem: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.agent, self.field, self.problem)
    }
}

/// Where an agent's policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicySource {
    Registry,
    /// The agent's own YAML carried governance fields.
    Definition,
    /// Neither: conservative defaults.
    Default,
}

/// The governance of one agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub contexts: Vec<String>,
    pub risk_level: String,
    pub approval_required: bool,
    pub approval_type: String,
    pub approvers: Vec<String>,
    pub source: PolicySource,
}

impl Policy {
    /// Used for agents nobody wrote governance for: API and chat only, no
    /// approval (they can only emit actions of the platform allow-list).
    fn default_policy() -> Self {
        Self {
            contexts: vec!["api".into(), "chat".into()],
            risk_level: "low".into(),
            approval_required: false,
            approval_type: "none".into(),
            approvers: Vec::new(),
            source: PolicySource::Default,
        }
    }

    fn from_parts(
        contexts: &Option<Contexts>,
        risk: &Option<Risk>,
        approval: &Option<Approval>,
        source: PolicySource,
    ) -> Self {
        let d = Self::default_policy();
        Self {
            contexts: contexts
                .as_ref()
                .map(|c| c.allowed.clone())
                .unwrap_or(d.contexts),
            risk_level: risk
                .as_ref()
                .map(|r| r.level.clone())
                .unwrap_or(d.risk_level),
            approval_required: approval.as_ref().is_some_and(|a| a.required),
            approval_type: approval
                .as_ref()
                .map(|a| a.kind.clone())
                .unwrap_or(d.approval_type),
            approvers: approval
                .as_ref()
                .map(|a| a.approvers.clone())
                .unwrap_or_default(),
            source,
        }
    }

    pub fn allows_context(&self, context: &str) -> bool {
        self.contexts.iter().any(|c| c == context)
    }
}

/// Policies of every agent, after validation.
#[derive(Debug, Clone, Default)]
pub struct Governance {
    policies: BTreeMap<String, Policy>,
    /// Registry policies of ids without an agent definition: they govern a
    /// plugin of that id from the plugins directory (e.g. a step).
    registry_only: BTreeMap<String, Policy>,
    /// Agents that are not served, with what is wrong with them.
    quarantined: BTreeMap<String, Vec<Violation>>,
    /// The definitions of quarantined agents that could be read (for listings).
    quarantined_definitions: BTreeMap<String, AgentDefinition>,
    /// Every violation found, quarantined agents' and others'.
    violations: Vec<Violation>,
    /// Things worth a log line but not a refusal to start.
    pub warnings: Vec<String>,
}

impl Governance {
    /// Validates the registry of `layout` and builds every agent's policy,
    /// refusing the whole registry if anything is wrong (strict mode).
    /// `allow_list` is the platform's action allow-list.
    pub fn from_layout(layout: &BsmLayout, allow_list: &[String]) -> Result<Self, Vec<Violation>> {
        let governance = Self::assess(layout, allow_list);
        if governance.violations.is_empty() {
            Ok(governance)
        } else {
            Err(governance.violations)
        }
    }

    /// Validates the registry of `layout` and governs every valid agent; an
    /// agent with violations is quarantined (listed with them, never run).
    pub fn assess(layout: &BsmLayout, allow_list: &[String]) -> Self {
        let mut violations = Vec::new();
        let mut seen = BTreeSet::new();
        for entry in &layout.registry {
            if !seen.insert(entry.id.clone()) {
                violations.push(v(&entry.id, "id", "appears more than once in the registry"));
            }
            validate_entry(entry, &mut violations);
        }
        for broken in &layout.broken {
            violations.push(v(&broken.id, "definition", &broken.problem));
        }
        let allowed: BTreeSet<&str> = allow_list.iter().map(String::as_str).collect();
        let mut policies = BTreeMap::new();
        let mut warnings = Vec::new();
        for def in &layout.agents {
            for action in &def.actions {
                if !allowed.contains(action.as_str()) {
                    violations.push(v(
                        &def.id,
                        "actions",
                        &format!("{action:?} is not in the platform's action allow-list"),
                    ));
                }
            }
            let policy = match layout.registry_entry(&def.id) {
                Some(e) => {
                    Policy::from_parts(&e.contexts, &e.risk, &e.approval, PolicySource::Registry)
                }
                None if def.contexts.is_some() || def.risk.is_some() || def.approval.is_some() => {
                    warnings.push(format!(
                        "{}: no registry entry; using the governance fields of its definition",
                        def.id
                    ));
                    Policy::from_parts(
                        &def.contexts,
                        &def.risk,
                        &def.approval,
                        PolicySource::Definition,
                    )
                }
                None => {
                    warnings.push(format!("{}: no registry entry; default governance (contexts api, chat; no approval)", def.id));
                    Policy::default_policy()
                }
            };
            for c in &policy.contexts {
                if !KNOWN_CONTEXTS.contains(&c.as_str()) {
                    violations.push(v(
                        &def.id,
                        "contexts.allowed",
                        &format!(
                            "unknown context {c:?} (known: {})",
                            KNOWN_CONTEXTS.join(", ")
                        ),
                    ));
                }
            }
            policies.insert(def.id.clone(), policy);
        }
        let mut registry_only = BTreeMap::new();
        for entry in &layout.registry {
            if !policies.contains_key(&entry.id) {
                warnings.push(format!(
                    "{}: in the registry but has no agent definition; it governs a plugin of that id if one is loaded",
                    entry.id
                ));
                registry_only.insert(
                    entry.id.clone(),
                    Policy::from_parts(
                        &entry.contexts,
                        &entry.risk,
                        &entry.approval,
                        PolicySource::Registry,
                    ),
                );
            }
        }
        let mut quarantined: BTreeMap<String, Vec<Violation>> = BTreeMap::new();
        let broken: BTreeSet<&str> = layout.broken.iter().map(|b| b.id.as_str()).collect();
        for violation in &violations {
            if policies.contains_key(&violation.agent) || broken.contains(violation.agent.as_str())
            {
                quarantined
                    .entry(violation.agent.clone())
                    .or_default()
                    .push(violation.clone());
            }
            registry_only.remove(&violation.agent);
        }
        for id in quarantined.keys() {
            policies.remove(id);
        }
        let quarantined_definitions = layout
            .agents
            .iter()
            .filter(|d| quarantined.contains_key(&d.id))
            .map(|d| (d.id.clone(), d.clone()))
            .collect();
        Self {
            policies,
            registry_only,
            quarantined,
            quarantined_definitions,
            violations,
            warnings,
        }
    }

    /// Agents not served because of their violations.
    pub fn quarantined(&self) -> &BTreeMap<String, Vec<Violation>> {
        &self.quarantined
    }

    /// The definition of a quarantined agent, when it could be read.
    pub fn quarantined_definition(&self, agent: &str) -> Option<&AgentDefinition> {
        self.quarantined_definitions.get(agent)
    }

    /// Every violation of the registry and the definitions.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    pub fn is_quarantined(&self, agent: &str) -> bool {
        self.quarantined.contains_key(agent)
    }

    pub fn policy(&self, agent: &str) -> Option<&Policy> {
        self.policies.get(agent)
    }

    /// Adds the policy of an agent that does not come from the layout (a
    /// plugin loaded from the plugins directory).
    /// A registry entry of the same id, if there is one, governs it.
    pub fn insert_default(&mut self, agent: &str, contexts: &[&str]) {
        let policy = self.registry_only.remove(agent).unwrap_or_else(|| {
            let mut p = Policy::default_policy();
            p.contexts = contexts.iter().map(|c| c.to_string()).collect();
            p
        });
        self.policies.entry(agent.to_string()).or_insert(policy);
    }
}

fn v(agent: &str, field: &str, problem: &str) -> Violation {
    Violation {
        agent: if agent.is_empty() {
            "<no id>".into()
        } else {
            agent.into()
        },
        field: field.into(),
        problem: problem.into(),
    }
}

fn validate_entry(e: &RegistryEntry, out: &mut Vec<Violation>) {
    let id = e.id.as_str();
    if id.trim().is_empty() {
        out.push(v(id, "id", "is missing"));
    }
    match &e.risk {
        None => out.push(v(id, "risk", "is missing")),
        Some(r) => {
            if !RISK_LEVELS.contains(&r.level.as_str()) {
                out.push(v(
                    id,
                    "risk.level",
                    &format!("{:?} is not one of {}", r.level, RISK_LEVELS.join(", ")),
                ));
            }
            if r.rationale.trim().is_empty() {
                out.push(v(id, "risk.rationale", "is missing"));
            }
        }
    }
    match &e.approval {
        None => out.push(v(id, "approval", "is missing")),
        Some(a) => {
            if !APPROVAL_TYPES.contains(&a.kind.as_str()) {
                out.push(v(
                    id,
                    "approval.type",
                    &format!("{:?} is not one of {}", a.kind, APPROVAL_TYPES.join(", ")),
                ));
            }
            if a.required && a.approvers.is_empty() {
                out.push(v(
                    id,
                    "approval.approvers",
                    "approval is required but nobody can approve",
                ));
            }
            if a.required && a.kind == "none" {
                out.push(v(
                    id,
                    "approval.type",
                    "approval is required, so the type cannot be \"none\"",
                ));
            }
            if !a.required && a.kind != "none" && !a.kind.is_empty() {
                out.push(v(
                    id,
                    "approval.type",
                    &format!("{:?} but approval is not required", a.kind),
                ));
            }
        }
    }
    if let (Some(r), Some(a)) = (&e.risk, &e.approval)
        && matches!(r.level.as_str(), "high" | "critical")
        && !a.required
    {
        out.push(v(
            id,
            "approval.required",
            &format!("must be true for {} risk", r.level),
        ));
    }
    match &e.startup {
        None => out.push(v(id, "startup", "is missing")),
        Some(s) => {
            if s.allowed_profiles.is_empty() {
                out.push(v(id, "startup.allowed_profiles", "is empty"));
            }
            for p in &s.allowed_profiles {
                if !PROFILES.contains(&p.as_str()) {
                    out.push(v(
                        id,
                        "startup.allowed_profiles",
                        &format!("unknown profile {p:?}"),
                    ));
                }
            }
        }
    }
    match &e.healthcheck {
        None => out.push(v(id, "healthcheck", "is missing")),
        Some(h) => {
            if !h.endpoint.starts_with('/') {
                out.push(v(
                    id,
                    "healthcheck.endpoint",
                    "must be a path starting with /",
                ));
            }
            if h.interval_seconds == 0 {
                out.push(v(id, "healthcheck.interval_seconds", "must be at least 1"));
            }
        }
    }
    match &e.contexts {
        None => out.push(v(id, "contexts.allowed", "is missing")),
        Some(c) if c.allowed.is_empty() => out.push(v(
            id,
            "contexts.allowed",
            "is empty: the agent could never run",
        )),
        Some(c) => {
            for ctx in &c.allowed {
                if !KNOWN_CONTEXTS.contains(&ctx.as_str()) {
                    out.push(v(
                        id,
                        "contexts.allowed",
                        &format!("unknown context {ctx:?}"),
                    ));
                }
            }
        }
    }
}
