//! The LLM engine plugins talk to: the providers in fallback order, plus a
//! cache that answers identical deterministic requests (temperature 0) once.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::breaker::CircuitBreaker;
use super::log_throttle::LogThrottle;
use super::provider::Provider;
use super::settings::LlmSettings;
use bsm_runtime::bindings::llm::{ChatRequest, ChatResponse, Error as LlmError};
use bsm_runtime::capabilities::Caller;
use bsm_runtime::capabilities::llm::LlmEngine;

/// OpenAI-compatible providers with an ordered fallback chain.
pub struct LlmClient {
    providers: Vec<Provider>,
    responses: Option<moka::future::Cache<[u8; 32], ChatResponse>>,
    fallback_log: LogThrottle,
}

impl LlmClient {
    /// The client for `settings`, or `None` when no provider is configured
    /// (the host then runs with the `Unconfigured` engine).
    pub fn from_settings(settings: &LlmSettings) -> anyhow::Result<Option<Self>> {
        if settings.providers.is_empty() {
            return Ok(None);
        }
        let providers = settings
            .providers
            .iter()
            .map(|p| Provider::new(p.clone(), settings.retry.clone(), &settings.breaker))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cache = &settings.response_cache;
        let responses = cache.enabled.then(|| {
            moka::future::Cache::builder()
                .name("llm-responses")
                .max_capacity(cache.max_entries)
                .time_to_live(Duration::from_millis(cache.ttl_ms))
                .build()
        });
        Ok(Some(Self {
            providers,
            responses,
            fallback_log: LogThrottle::default(),
        }))
    }

    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// Every provider's breaker, for health endpoints.
    pub fn breakers(&self) -> impl Iterator<Item = &CircuitBreaker> {
        self.providers.iter().map(Provider::breaker)
    }

    /// A breaker by name (`llm:<provider>`) or by provider name.
    pub fn breaker(&self, name: &str) -> Option<&CircuitBreaker> {
        self.breakers()
            .find(|b| b.name() == name || b.name().strip_prefix("llm:") == Some(name))
    }

    async fn chat_through_providers(
        &self,
        caller: &Caller,
        request: &ChatRequest,
    ) -> Result<ChatResponse, LlmError> {
        // Each provider logs its own failures (throttled); falling back is
        // logged here only when there is a next provider to fall back to,
        // and throttled too: an outage must not write a line per call.
        let mut last = None;
        for (i, provider) in self.providers.iter().enumerate() {
            match provider.chat(caller, request).await {
                Ok(reply) => return Ok(reply),
                // A bad request is bad everywhere: no point in falling back.
                Err(e @ LlmError::InvalidRequest(_)) => return Err(e),
                Err(e) => {
                    if let Some(next) = self.providers.get(i + 1)
                        && let Some(suppressed) = self.fallback_log.admit()
                    {
                        tracing::warn!(provider = provider.name(), next = next.name(), error = ?e, suppressed, "LLM provider failed; falling back to the next (one line per interval)");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one provider"))
    }
}

/// Key of a deterministic request: everything that shapes the answer.
fn cache_key(request: &ChatRequest) -> Option<[u8; 32]> {
    if request.temperature != Some(0.0) {
        return None;
    }
    let mut h = Sha256::new();
    h.update(format!(
        "{:?}|{:?}|{}",
        request.model, request.max_tokens, request.json
    ));
    for m in &request.messages {
        h.update(format!("{:?}", m.role));
        h.update((m.content.len() as u64).to_le_bytes());
        h.update(&m.content);
    }
    Some(h.finalize().into())
}

#[async_trait::async_trait]
impl LlmEngine for LlmClient {
    async fn chat(&self, caller: &Caller, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        match (&self.responses, cache_key(&request)) {
            (Some(cache), Some(key)) => cache
                .try_get_with(key, self.chat_through_providers(caller, &request))
                .await
                .map_err(|e: Arc<LlmError>| (*e).clone()),
            _ => self.chat_through_providers(caller, &request).await,
        }
    }

    async fn embed(
        &self,
        caller: &Caller,
        model: Option<String>,
        inputs: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, LlmError> {
        let mut last = None;
        for provider in &self.providers {
            match provider.embed(caller, model.as_deref(), &inputs).await {
                Ok(v) => return Ok(v),
                Err(e @ LlmError::InvalidRequest(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one provider"))
    }
}
