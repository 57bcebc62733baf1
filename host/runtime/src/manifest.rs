//! Plugin manifests: the TOML file beside each `.wasm` that says what the
//! plugin is, what it may do and how much of the machine it may use.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The two kinds of plugin, one per WIT world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// Exports the `agent` world.
    Agent,
    /// Exports the `step` world.
    Step,
    /// Exports the `action-handler` world.
    Handler,
}

impl PluginKind {
    /// The WIT world name a plugin of this kind must export.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Agent => "agent",
            PluginKind::Step => "step",
            PluginKind::Handler => "action-handler",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.world())
    }
}

/// A plugin's manifest, as written in `<id>.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Manifest {
    /// Registry key of the plugin; also names its cache namespace and logs.
    pub id: String,
    pub version: String,
    pub kind: PluginKind,
    #[serde(default)]
    pub description: String,
    /// The component file, relative to the manifest; `<id>.wasm` by default.
    #[serde(default)]
    pub wasm: Option<String>,
    /// Actions the plugin may emit; any other action fails the run.
    #[serde(default)]
    pub allowed_actions: Vec<String>,
    #[serde(default)]
    pub budget: Budget,
    /// The plugin's own settings, served by the `config` capability.
    #[serde(default)]
    pub config: toml::Table,
    /// Overrides of the host's rollout policy for new versions of this plugin.
    #[serde(default)]
    pub rollout: Rollout,
    /// The host capabilities the plugin may use, with their quotas. A
    /// component importing a capability not granted here is refused at
    /// load; `log` and `config` need no grant.
    #[serde(default)]
    pub capabilities: Grants,
}

/// What a plugin may use beyond its own memory: one optional grant per
/// capability (absent: not granted), in the manner of Spin's per-component
/// `allowed_outbound_hosts` and key-value stores.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Grants {
    pub llm: Option<LlmGrant>,
    pub cache: Option<CacheGrant>,
    pub reports: Option<ReportsGrant>,
    pub knowledge: Option<KnowledgeGrant>,
    pub http: Option<HttpGrant>,
}

/// `[capabilities.http]`: where the plugin may send requests, and which of
/// the host's secrets it may have put in a header or sign with (it never
/// sees their values), as Spin's `allowed_outbound_hosts`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HttpGrant {
    /// `[scheme://]host[:port]` each: `https://api.github.com`,
    /// `http://127.0.0.1:8080`, `hooks.example.com` (any scheme, its
    /// default port).
    pub allowed_hosts: Vec<String>,
    /// Names of host secrets (`[secrets]` of the host's configuration).
    pub secrets: Vec<String>,
}

impl HttpGrant {
    /// Whether a URL's scheme, host and port (explicit or the scheme's
    /// default) are granted. Hosts compare without case.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let default_port = match scheme {
            "https" => 443,
            "http" => 80,
            _ => return false,
        };
        self.allowed_hosts.iter().any(|entry| {
            let (entry_scheme, rest) = match entry.split_once("://") {
                Some((s, rest)) => (Some(s), rest),
                None => (None, entry.as_str()),
            };
            let rest = rest.trim_end_matches('/');
            let (entry_host, entry_port) = match rest.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<u16>().ok()),
                _ => (rest, None),
            };
            entry_scheme.is_none_or(|s| s.eq_ignore_ascii_case(scheme))
                && entry_host.eq_ignore_ascii_case(host)
                && entry_port.unwrap_or(default_port) == port
        })
    }

    pub fn allows_secret(&self, name: &str) -> bool {
        self.secrets.iter().any(|s| s == name)
    }
}

#[cfg(test)]
mod http_grant_tests {
    use super::*;

    #[test]
    fn outbound_hosts_match_scheme_host_and_port_exactly() {
        let grant = HttpGrant {
            allowed_hosts: vec![
                "https://api.github.com".into(),
                "http://127.0.0.1:8080".into(),
                "hooks.example.com".into(),
            ],
            secrets: vec!["github-token".into()],
        };
        assert!(grant.allows("https", "api.github.com", 443));
        assert!(grant.allows("https", "API.GitHub.com", 443));
        assert!(!grant.allows("http", "api.github.com", 80), "scheme named");
        assert!(
            !grant.allows("https", "api.github.com", 8443),
            "default port only"
        );
        assert!(!grant.allows("https", "api.github.com.evil.io", 443));
        assert!(grant.allows("http", "127.0.0.1", 8080));
        assert!(!grant.allows("http", "127.0.0.1", 8081));
        assert!(grant.allows("http", "hooks.example.com", 80));
        assert!(grant.allows("https", "hooks.example.com", 443));
        assert!(!grant.allows("ftp", "hooks.example.com", 21));
        assert!(grant.allows_secret("github-token") && !grant.allows_secret("other"));
    }

    #[test]
    fn wildcards_and_paths_are_not_hosts() {
        for bad in ["*.github.com", "https://api.github.com/repos", ""] {
            let grants = Grants {
                http: Some(HttpGrant {
                    allowed_hosts: vec![bad.into()],
                    secrets: vec![],
                }),
                ..Grants::default()
            };
            assert!(grants.validate().is_err(), "{bad:?}");
        }
    }
}

/// `[capabilities.llm]`: which models, how many tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LlmGrant {
    /// Models the plugin may name; `["*"]` for any, empty for the host's
    /// default only (a request naming no model is always allowed).
    pub models: Vec<String>,
    /// Tokens one run may use; caps `budget.llm-max-tokens` when lower.
    pub max_tokens: Option<u32>,
}

impl LlmGrant {
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == "*" || m == model)
    }
}

/// `[capabilities.cache]`: bytes the plugin's entries may hold together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CacheGrant {
    pub quota_bytes: u64,
}

/// `[capabilities.reports]`: reports one run may write.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ReportsGrant {
    pub max_count: u32,
    pub max_bytes: u64,
}

impl Default for ReportsGrant {
    fn default() -> Self {
        Self {
            max_count: 8,
            max_bytes: 4 << 20,
        }
    }
}

/// `[capabilities.knowledge]`: collections the plugin may search and
/// read (`read`), and change (`write`, which implies reading). `"*"`
/// names every collection; with none named every call is refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct KnowledgeGrant {
    pub read: Vec<String>,
    pub write: Vec<String>,
}

impl KnowledgeGrant {
    pub fn may_read(&self, collection: &str) -> bool {
        self.may_write(collection) || self.read.iter().any(|c| c == "*" || c == collection)
    }

    pub fn may_write(&self, collection: &str) -> bool {
        self.write.iter().any(|c| c == "*" || c == collection)
    }
}

/// The capability interfaces that need a grant, by their WIT name.
pub const GRANTED_INTERFACES: [&str; 5] = ["llm", "cache", "reports", "knowledge", "http"];

impl Grants {
    /// Whether the interface `name` (`llm`, `cache`...) is granted; the
    /// interfaces outside [`GRANTED_INTERFACES`] need no grant.
    pub fn grants(&self, name: &str) -> bool {
        match name {
            "llm" => self.llm.is_some(),
            "cache" => self.cache.is_some(),
            "reports" => self.reports.is_some(),
            "knowledge" => self.knowledge.is_some(),
            "http" => self.http.is_some(),
            _ => true,
        }
    }

    /// The first `bsm:plugin` interface among a component's `imports` that
    /// is not granted, with the import's full name.
    pub fn first_ungranted<'a>(
        &self,
        imports: impl IntoIterator<Item = &'a str>,
    ) -> Option<(&'static str, &'a str)> {
        imports.into_iter().find_map(|import| {
            let interface = import
                .strip_prefix("bsm:plugin/")?
                .split('@')
                .next()
                .unwrap_or_default();
            GRANTED_INTERFACES
                .into_iter()
                .find(|g| *g == interface && !self.grants(g))
                .map(|g| (g, import))
        })
    }

    fn validate(&self) -> Result<(), String> {
        if self.llm.as_ref().is_some_and(|l| l.max_tokens == Some(0)) {
            return Err("capabilities.llm.max-tokens must be at least 1".into());
        }
        if self.cache.as_ref().is_some_and(|c| c.quota_bytes == 0) {
            return Err("capabilities.cache.quota-bytes must be at least 1".into());
        }
        if self
            .reports
            .as_ref()
            .is_some_and(|r| r.max_count == 0 || r.max_bytes == 0)
        {
            return Err("capabilities.reports.max-count and max-bytes must be at least 1".into());
        }
        if let Some(http) = &self.http {
            for entry in &http.allowed_hosts {
                let host = entry.split_once("://").map_or(entry.as_str(), |(_, h)| h);
                let host = host.trim_end_matches('/');
                if host.is_empty() || host.contains('*') || host.contains('/') {
                    return Err(format!(
                        "capabilities.http.allowed-hosts: {entry:?} is not [scheme://]host[:port] (no wildcards, no paths)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// When a new (or canary) version of this plugin is rolled back by itself:
/// unset fields take the host's `[plugins]` settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Rollout {
    /// The first runs of a new version that are watched.
    pub probation_runs: Option<u32>,
    /// The share of those runs (0.0..=1.0) that may fail through the
    /// plugin's own fault before the previous version comes back.
    pub max_failure_rate: Option<f64>,
}

/// A plugin's resource budget: the bulkhead that keeps one plugin from
/// starving the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Budget {
    /// Wall-clock limit of one run, instantiation included.
    pub timeout_ms: u64,
    /// Cap of each linear memory of one run, in MiB.
    pub memory_mb: u64,
    /// Runs of this plugin in flight at once: computing or waiting on the
    /// host (an LLM answer). Waiting costs memory, not CPU (CPU is shared
    /// fairly between plugins, see `cpu_share`), so this is high by default.
    pub max_concurrent: u32,
    /// Runs allowed to wait for a slot; further runs are rejected as busy.
    pub max_queued: u32,
    /// How long a queued run waits for a slot before it is rejected as busy.
    pub max_queue_wait_ms: u64,
    /// Largest output (text, actions and metadata together) a run may return.
    pub max_output_bytes: u64,
    /// LLM calls one run may make.
    pub llm_max_calls: u32,
    /// LLM tokens (prompt and completion) one run may use.
    pub llm_max_tokens: u32,
    /// CPU time one run may use, separate from the wall-clock timeout
    /// (time waiting on the host does not count); none by default.
    pub cpu_ms: Option<u64>,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            timeout_ms: 5_000,
            memory_mb: 64,
            max_concurrent: 1024,
            max_queued: 1024,
            max_queue_wait_ms: 1_000,
            max_output_bytes: 1 << 20,
            llm_max_calls: 16,
            llm_max_tokens: 100_000,
            cpu_ms: None,
        }
    }
}

impl Budget {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }

    pub fn max_queue_wait(&self) -> Duration {
        Duration::from_millis(self.max_queue_wait_ms)
    }

    fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 {
            return Err("budget.timeout-ms must be at least 1".into());
        }
        // The instance pool reserves this much per memory slot: a larger
        // budget could never be granted, and would fail at every start.
        let most = (crate::engine::MAX_PLUGIN_MEMORY_BYTES >> 20) as u64;
        if self.memory_mb == 0 || self.memory_mb > most {
            return Err(format!(
                "budget.memory-mb must be 1..={most} (the largest linear memory this host's instance pool holds), not {}",
                self.memory_mb
            ));
        }
        if self.max_concurrent == 0 {
            return Err("budget.max-concurrent must be at least 1".into());
        }
        if self.cpu_ms == Some(0) {
            return Err("budget.cpu-ms must be at least 1 (leave it out for no CPU cap)".into());
        }
        Ok(())
    }
}

impl Manifest {
    /// Parses and validates a manifest; the error names the file and the field.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, String> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| format!("{}: {}", origin.display(), e.message()))?;
        manifest
            .validate()
            .map_err(|e| format!("{}: {e}", origin.display()))?;
        Ok(manifest)
    }

    /// Checks the id, version and budget (the parser calls this; so does
    /// the runtime for manifests built in code).
    pub fn validate(&self) -> Result<(), String> {
        let valid_id = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid_id {
            return Err(format!(
                "id {:?} must be 1-64 characters of a-z, 0-9, '-' or '_'",
                self.id
            ));
        }
        if self.version.trim().is_empty() {
            return Err("version must not be empty".into());
        }
        self.budget.validate()?;
        self.capabilities.validate()
    }

    /// The `[config]` table flattened to the string pairs the `config`
    /// capability serves: strings as they are, anything else as JSON.
    pub fn config_pairs(&self) -> BTreeMap<String, String> {
        self.config
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    toml::Value::String(s) => s.clone(),
                    other => serde_json::to_string(other).unwrap_or_else(|_| other.to_string()),
                };
                (k.clone(), value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, String> {
        Manifest::from_toml(text, Path::new("x.toml"))
    }

    #[test]
    fn minimal_manifest_gets_default_budget() {
        let m = parse("id = \"a\"\nversion = \"1\"\nkind = \"agent\"").unwrap();
        assert_eq!(m.budget, Budget::default());
        assert!(m.allowed_actions.is_empty());
    }

    #[test]
    fn unknown_fields_and_kinds_are_named() {
        let e = parse("id = \"a\"\nversion = \"1\"\nkind = \"robot\"").unwrap_err();
        assert!(e.contains("x.toml") && e.contains("robot"), "{e}");
        let e = parse("id = \"a\"\nversion = \"1\"\nkind = \"agent\"\n[budget]\ntimeout = 3")
            .unwrap_err();
        assert!(e.contains("timeout"), "{e}");
    }

    #[test]
    fn bad_ids_and_budgets_are_rejected() {
        assert!(parse("id = \"../x\"\nversion = \"1\"\nkind = \"agent\"").is_err());
        let e =
            parse("id = \"a\"\nversion = \"1\"\nkind = \"agent\"\n[budget]\nmax-concurrent = 0")
                .unwrap_err();
        assert!(e.contains("max-concurrent"), "{e}");
        let e = parse("id = \"a\"\nversion = \"1\"\nkind = \"agent\"\n[budget]\ncpu-ms = 0")
            .unwrap_err();
        assert!(e.contains("cpu-ms"), "{e}");
        let capped =
            parse("id = \"a\"\nversion = \"1\"\nkind = \"agent\"\n[budget]\ncpu-ms = 200").unwrap();
        assert_eq!(capped.budget.cpu_ms, Some(200));
    }

    #[test]
    fn config_values_flatten_to_strings() {
        let m = parse(
            "id = \"a\"\nversion = \"1\"\nkind = \"agent\"\n[config]\nname = \"x\"\nn = 3\nlist = [\"a\"]",
        )
        .unwrap();
        let pairs = m.config_pairs();
        assert_eq!(pairs["name"], "x");
        assert_eq!(pairs["n"], "3");
        assert_eq!(pairs["list"], "[\"a\"]");
    }
}
