//! LLM configuration: providers (in fallback order), retry, timeouts and
//! breaker settings, from the `[llm]` table of the host's configuration file,
//! overridden by the `BSM_LLM_*` environment variables.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::adaptive_limit::AdaptiveSettings;
use super::breaker::BreakerConfig;

/// The `[llm]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct LlmSettings {
    /// Providers, tried in this order (the fallback chain).
    pub providers: Vec<ProviderSettings>,
    pub retry: RetrySettings,
    /// Breaker settings of every provider that does not set its own.
    pub breaker: BreakerConfig,
    /// Answer identical deterministic requests (temperature 0) from a cache.
    pub response_cache: ResponseCacheSettings,
}

/// One OpenAI-compatible endpoint (OpenAI, Azure OpenAI, Ollama, vLLM,
/// llama.cpp's server, LM Studio...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ProviderSettings {
    pub name: String,
    /// e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// Name of the environment variable holding the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The key itself; only ever set from `BSM_LLM_API_KEY`.
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Model used when a request names none or one this provider does not serve.
    pub default_model: String,
    /// Models this provider serves besides its default.
    #[serde(default)]
    pub models: Vec<String>,
    /// Per-model overrides, keyed by the model name a plugin asks for.
    #[serde(default)]
    pub model_overrides: BTreeMap<String, ModelOverride>,
    /// Ask for server-sent events (time to first token is then measured).
    #[serde(default = "yes")]
    pub stream: bool,
    /// Pass a plugin's request for a JSON answer on as `response_format`
    /// (OpenAI, and most compatible servers); off for providers that
    /// refuse the field.
    #[serde(default = "yes")]
    pub json_mode: bool,
    /// Ceiling of upstream calls in flight at once (overrides
    /// `concurrency.max`; set it to what the provider's plan allows).
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// How the limit of calls in flight adapts to the provider.
    #[serde(default)]
    pub concurrency: AdaptiveSettings,
    #[serde(default)]
    pub timeouts: TimeoutSettings,
    /// This provider's breaker; the `[llm.breaker]` defaults when absent.
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
}

fn yes() -> bool {
    true
}

/// What changes when a plugin asks for a given model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ModelOverride {
    /// The provider's name for it (e.g. `gpt-4o` → `llama3.1:70b`).
    pub model: Option<String>,
    /// Upper bound of `max_tokens` for it.
    pub max_tokens: Option<u32>,
}

/// Timeouts of one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct TimeoutSettings {
    /// The whole call, retries and backoff included.
    pub total_ms: u64,
    /// One attempt, from sending the request to the last token.
    pub attempt_ms: u64,
    /// One attempt, from sending the request to the first token.
    pub first_token_ms: u64,
    pub connect_ms: u64,
}

impl Default for TimeoutSettings {
    fn default() -> Self {
        Self {
            total_ms: 60_000,
            attempt_ms: 30_000,
            first_token_ms: 15_000,
            connect_ms: 3_000,
        }
    }
}

impl TimeoutSettings {
    pub fn total(&self) -> Duration {
        Duration::from_millis(self.total_ms)
    }
    pub fn attempt(&self) -> Duration {
        Duration::from_millis(self.attempt_ms)
    }
    pub fn first_token(&self) -> Duration {
        Duration::from_millis(self.first_token_ms)
    }
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
}

/// Retry with exponential backoff and full jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Longest `Retry-After` honoured; a longer one is cut to this.
    pub max_retry_after_ms: u64,
    /// Retries after an attempt timed out (no first token, or no whole
    /// answer, in time). A provider that hangs usually keeps hanging: each
    /// such retry costs a whole first-token timeout, so one by default.
    pub max_timeout_retries: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 5_000,
            max_retry_after_ms: 20_000,
            max_timeout_retries: 1,
        }
    }
}

/// The cache of deterministic responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct ResponseCacheSettings {
    pub enabled: bool,
    pub ttl_ms: u64,
    pub max_entries: u64,
}

impl Default for ResponseCacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_ms: 10 * 60 * 1000,
            max_entries: 10_000,
        }
    }
}

/// The environment variables that configure the first provider.
pub const ENV_BASE_URL: &str = "BSM_LLM_BASE_URL";
pub const ENV_API_KEY: &str = "BSM_LLM_API_KEY";
pub const ENV_MODEL: &str = "BSM_LLM_MODEL";

impl LlmSettings {
    /// Applies `BSM_LLM_BASE_URL`, `BSM_LLM_API_KEY` and `BSM_LLM_MODEL`: they
    /// set the first provider (creating one named `default` when the file
    /// has none), over whatever the file says. API keys named by
    /// `api-key-env` are read here too.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        let base_url = get(ENV_BASE_URL).filter(|v| !v.trim().is_empty());
        let api_key = get(ENV_API_KEY).filter(|v| !v.trim().is_empty());
        let model = get(ENV_MODEL).filter(|v| !v.trim().is_empty());
        if self.providers.is_empty() {
            if let Some(base_url) = &base_url {
                self.providers.push(ProviderSettings::new(
                    "default",
                    base_url,
                    model.as_deref().unwrap_or("default"),
                ));
            }
        } else if let Some(base_url) = &base_url {
            self.providers[0].base_url = base_url.clone();
        }
        if let Some(first) = self.providers.first_mut() {
            if let Some(model) = model {
                first.default_model = model;
            }
            if api_key.is_some() {
                first.api_key = api_key;
            }
        }
        for p in &mut self.providers {
            if p.api_key.is_none()
                && let Some(var) = &p.api_key_env
            {
                p.api_key = get(var).filter(|v| !v.is_empty());
            }
        }
    }
}

impl ProviderSettings {
    /// A provider with default timeouts, streaming on, serving `default_model`.
    pub fn new(name: &str, base_url: &str, default_model: &str) -> Self {
        Self {
            name: name.to_string(),
            base_url: base_url.to_string(),
            api_key_env: None,
            api_key: None,
            default_model: default_model.to_string(),
            models: Vec::new(),
            model_overrides: BTreeMap::new(),
            stream: true,
            json_mode: true,
            max_concurrent: None,
            concurrency: AdaptiveSettings::default(),
            timeouts: TimeoutSettings::default(),
            breaker: None,
        }
    }

    /// The adaptive limit's bounds, with `max-concurrent` as the ceiling
    /// when it is set (the floor and start then fit under it).
    pub fn concurrency_limits(&self) -> AdaptiveSettings {
        let mut limits = self.concurrency.clone();
        if let Some(ceiling) = self.max_concurrent {
            limits.max = ceiling.max(1);
            limits.min = limits.min.min(limits.max);
            limits.initial = limits.initial.clamp(limits.min, limits.max);
        }
        limits
    }

    /// The model name to send for a requested one: the request's when this
    /// provider serves it, else the default; then any override's rename.
    pub fn resolve_model(&self, requested: Option<&str>) -> String {
        let served =
            requested.filter(|m| *m == self.default_model || self.models.iter().any(|s| s == m));
        let chosen = served.unwrap_or(&self.default_model);
        self.model_overrides
            .get(chosen)
            .and_then(|o| o.model.clone())
            .unwrap_or_else(|| chosen.to_string())
    }

    /// The cap on `max_tokens` for a requested model, if any.
    pub fn max_tokens_for(&self, requested: Option<&str>) -> Option<u32> {
        let served =
            requested.filter(|m| *m == self.default_model || self.models.iter().any(|s| s == m));
        self.model_overrides
            .get(served.unwrap_or(&self.default_model))?
            .max_tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn three_env_vars_make_a_provider() {
        let mut s = LlmSettings::default();
        s.apply_env(env(&[
            (ENV_BASE_URL, "http://127.0.0.1:11434/v1"),
            (ENV_MODEL, "llama3"),
        ]));
        assert_eq!(s.providers.len(), 1);
        assert_eq!(s.providers[0].base_url, "http://127.0.0.1:11434/v1");
        assert_eq!(s.providers[0].default_model, "llama3");
        assert_eq!(s.providers[0].api_key, None);
        let mut none = LlmSettings::default();
        none.apply_env(env(&[(ENV_MODEL, "llama3")]));
        assert!(none.providers.is_empty(), "no base URL, no provider");
    }

    #[test]
    fn env_overrides_the_file_and_keys_come_from_named_variables() {
        let mut s: LlmSettings = toml::from_str(
            r#"
            [[providers]]
            name = "openai"
            base-url = "https://api.openai.com/v1"
            default-model = "gpt-4o-mini"
            api-key-env = "OPENAI_API_KEY"
            [[providers]]
            name = "backup"
            base-url = "http://backup/v1"
            default-model = "m"
            api-key-env = "BACKUP_KEY"
            "#,
        )
        .unwrap();
        s.apply_env(env(&[
            (ENV_BASE_URL, "http://override/v1"),
            ("BACKUP_KEY", "k2"),
            ("OPENAI_API_KEY", "k1"),
        ]));
        assert_eq!(s.providers[0].base_url, "http://override/v1");
        assert_eq!(s.providers[0].api_key.as_deref(), Some("k1"));
        assert_eq!(s.providers[1].api_key.as_deref(), Some("k2"));
        s.apply_env(env(&[(ENV_API_KEY, "k0")]));
        assert_eq!(s.providers[0].api_key.as_deref(), Some("k0"));
    }

    #[test]
    fn models_resolve_to_served_names_or_the_default() {
        let mut p = ProviderSettings::new("p", "http://x", "llama3");
        p.models = vec!["gpt-4o".into()];
        p.model_overrides.insert(
            "gpt-4o".into(),
            ModelOverride {
                model: Some("llama3:70b".into()),
                max_tokens: Some(512),
            },
        );
        assert_eq!(p.resolve_model(Some("gpt-4o")), "llama3:70b");
        assert_eq!(p.max_tokens_for(Some("gpt-4o")), Some(512));
        assert_eq!(p.resolve_model(Some("gpt-4o-mini")), "llama3");
        assert_eq!(p.resolve_model(None), "llama3");
    }
}
