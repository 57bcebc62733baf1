//! The host's configuration: one TOML file (every table optional, every
//! setting with a default) plus environment variables that override it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use bsm_cache::CacheSettings;
use bsm_llm::LlmSettings;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct HostSettings {
    pub llm: LlmSettings,
    pub cache: CacheSettings,
    pub reports: ReportSettings,
    /// Document collections: where they live, how texts are embedded, limits.
    pub knowledge: KnowledgeConfig,
    /// The action allow-list and how strictly the agent registry is taken.
    pub governance: GovernanceSettings,
    /// Installing, keeping and rolling back plugin versions.
    pub plugins: PluginSettings,
    /// Admission of orchestration jobs.
    pub jobs: crate::orchestration::JobLimits,
    /// `bsm serve` settings; the command line and `BSM_*` variables win.
    pub server: ServerSettings,
    /// Secrets plugins use by name (`[capabilities.http] secrets`): each
    /// from an environment variable or an owner-only file.
    pub secrets: std::collections::BTreeMap<String, crate::secrets::SecretSource>,
    /// Where actions go (handler routes) and how they are retried.
    pub actions: crate::dispatch::ActionSettings,
    /// What the server keeps, and for how long.
    pub retention: crate::retention::RetentionSettings,
    /// Pipelines by event, replacing or adding to the original ones.
    pub pipelines: std::collections::BTreeMap<String, crate::orchestration::Pipeline>,
}

/// The `[server]` table. Unset values fall back to the command line's
/// defaults (see `bsm serve --help`). The admin token is never read from the
/// file: secrets come from the environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct ServerSettings {
    pub addr: Option<String>,
    pub bsm_dir: Option<PathBuf>,
    pub rate_limit: Option<u32>,
    pub rate_burst: Option<u32>,
    pub trusted_proxies: Option<Vec<String>>,
    pub rate_limit_prune_ms: Option<u64>,
    pub body_limit: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub wait_timeout_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
    /// Serve unauthenticated requests on a non-loopback address while no
    /// API key exists (off: such a server refuses to start).
    pub allow_open: Option<bool>,
    /// A file holding the GitHub webhook secret (owner-only permissions);
    /// `BSM_GITHUB_WEBHOOK_SECRET` takes precedence.
    pub github_webhook_secret_file: Option<PathBuf>,
}

/// The `[plugins]` table: how versions arrive, how many are kept, and
/// when a new one is rolled back by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct PluginSettings {
    /// Versions kept per plugin for rollback, besides the live ones.
    pub keep_versions: usize,
    /// The first runs of a new or canary version that are watched.
    pub probation_runs: u32,
    /// The share of those runs that may fail through the plugin's own fault
    /// (traps, timeouts in its code, memory limit, invalid output) before
    /// the previous version is made current again.
    pub max_failure_rate: f64,
    /// Largest upload (`PUT /api/plugins/{id}`), in bytes.
    pub upload_limit: usize,
    /// Watch the plugins directory and install what changes in it.
    pub watch: bool,
    /// ed25519 public keys (hex); when set, only components with a valid
    /// detached signature by one of them are accepted.
    pub trusted_keys: Vec<String>,
}

impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            keep_versions: 5,
            probation_runs: 20,
            max_failure_rate: 0.5,
            upload_limit: 64 << 20,
            watch: true,
            trusted_keys: Vec::new(),
        }
    }
}

/// The `[governance]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct GovernanceSettings {
    /// The platform's action allow-list; the original BSM list when unset.
    pub allowed_actions: Option<Vec<String>>,
    /// Actions this deployment adds to the allow-list.
    pub extra_actions: Vec<String>,
    /// Refuse to start when any agent has violations, instead of
    /// quarantining it (`--strict` on the command line).
    pub strict: bool,
}

impl GovernanceSettings {
    /// The allow-list in force: the configured (or original) list plus the
    /// deployment's extra actions.
    pub fn allow_list(&self) -> Vec<String> {
        let mut list: Vec<String> = match &self.allowed_actions {
            Some(list) => list.clone(),
            None => crate::bsm::agents::ORIGINAL_ALLOW_LIST
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        for extra in &self.extra_actions {
            if !list.contains(extra) {
                list.push(extra.clone());
            }
        }
        list
    }
}

/// How knowledge texts become vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmbedderChoice {
    /// Hashed word and character n-grams: no network, no model (see
    /// `bsm_knowledge::hashed` for what it can and cannot find).
    #[default]
    Builtin,
    /// The LLM provider's `/embeddings` (through its breaker and retries).
    Provider,
}

/// The `[knowledge]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct KnowledgeConfig {
    /// Where collections live; `<data dir>/knowledge` when unset.
    pub dir: Option<PathBuf>,
    pub embedder: EmbedderChoice,
    /// The embedding model (`provider` only); the provider's default when unset.
    pub model: Option<String>,
    /// Texts per `/embeddings` request.
    pub embed_batch: usize,
    /// The collection a served BSM directory's `data/knowledge` goes into.
    pub bsm_collection: String,
    /// Hits a BSM agent puts in its prompt.
    pub top_k: u32,
    /// Largest `topK` a search may ask for.
    pub max_top_k: usize,
    /// Most documents per upsert or delete.
    pub max_batch: usize,
    /// Longest query, in characters.
    pub max_query_chars: usize,
}

impl Default for KnowledgeConfig {
    fn default() -> Self {
        let limits = bsm_knowledge::KnowledgeSettings::default();
        Self {
            dir: None,
            embedder: EmbedderChoice::Builtin,
            model: None,
            embed_batch: 64,
            bsm_collection: "bsm".into(),
            top_k: 5,
            max_top_k: limits.max_top_k,
            max_batch: limits.max_batch,
            max_query_chars: limits.max_query_chars,
        }
    }
}

impl KnowledgeConfig {
    /// The service settings these values give.
    pub fn service_settings(&self) -> bsm_knowledge::KnowledgeSettings {
        bsm_knowledge::KnowledgeSettings {
            max_top_k: self.max_top_k,
            max_batch: self.max_batch,
            max_query_chars: self.max_query_chars,
            ..Default::default()
        }
    }
}

/// The `[reports]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct ReportSettings {
    /// Where reports are written; `<data dir>/reports` when unset.
    pub dir: Option<PathBuf>,
}

impl HostSettings {
    /// Reads `path` (if given) and applies the environment on top.
    pub fn load(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut settings = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the configuration file {}", path.display())
                })?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?
            }
            None => HostSettings::default(),
        };
        settings.llm.apply_env(env);
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_all_defaults() {
        let s: HostSettings = toml::from_str("").unwrap();
        assert_eq!(s, HostSettings::default());
    }

    #[test]
    fn a_full_file_parses_and_unknown_keys_are_named() {
        let s: HostSettings = toml::from_str(
            r#"
            [llm.retry]
            max-attempts = 5
            [llm.breaker]
            failure-rate-threshold = 25.0
            wait-in-open-ms = 1000
            sliding-window = { type = "time-based", seconds = 30 }
            [[llm.providers]]
            name = "ollama"
            base-url = "http://127.0.0.1:11434/v1"
            default-model = "llama3"
            [llm.providers.timeouts]
            total-ms = 9000
            [cache.plugin]
            max-bytes = 1000
            [knowledge]
            embedder = "provider"
            model = "text-embedding-3-small"
            [reports]
            dir = "/var/lib/bsm/reports"
            "#,
        )
        .unwrap();
        assert_eq!(s.llm.retry.max_attempts, 5);
        assert_eq!(
            s.llm.breaker.wait_in_open,
            std::time::Duration::from_secs(1)
        );
        assert_eq!(s.llm.providers[0].timeouts.total_ms, 9000);
        assert_eq!(
            s.llm.providers[0].timeouts.attempt_ms, 30_000,
            "unset fields keep their defaults"
        );
        assert_eq!(s.cache.plugin.max_bytes, 1000);
        assert_eq!(s.knowledge.embedder, EmbedderChoice::Provider);
        assert_eq!(
            s.knowledge.top_k, 5,
            "unset knowledge values keep their defaults"
        );
        let err = toml::from_str::<HostSettings>("[llm.retry]\nmax-attempt = 5").unwrap_err();
        assert!(err.message().contains("max-attempt"), "{}", err.message());
    }

    #[test]
    fn the_allow_list_is_the_original_one_extended_per_deployment() {
        let s: HostSettings = toml::from_str(
            "[governance]\nextra-actions = [\"open_ticket\", \"block_pr\"]\nstrict = true\n",
        )
        .unwrap();
        let list = s.governance.allow_list();
        assert!(list.iter().any(|a| a == "block_pr"));
        assert!(list.iter().any(|a| a == "open_ticket"));
        assert_eq!(
            list.iter().filter(|a| *a == "block_pr").count(),
            1,
            "no duplicates"
        );
        assert_eq!(
            list.len(),
            crate::bsm::agents::ORIGINAL_ALLOW_LIST.len() + 1
        );
        assert!(s.governance.strict);
        let replaced: HostSettings =
            toml::from_str("[governance]\nallowed-actions = [\"only_this\"]\n").unwrap();
        assert_eq!(replaced.governance.allow_list(), ["only_this"]);
    }
}
