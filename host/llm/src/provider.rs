//! One OpenAI-compatible provider behind its resilience stack, outermost
//! first: total timeout, retry (exponential backoff with full jitter;
//! Retry-After honoured; timed-out attempts retried at most
//! `max-timeout-retries` times), circuit breaker, adaptive concurrency limit
//! (upstream calls in flight, following the provider: see
//! [`crate::adaptive_limit`]), attempt timeout (first token, then whole
//! answer). A call waiting out a backoff holds no place under the limit.
//!
//! Worst case of one call against a provider that accepts and never
//! answers: `min(total-ms, (1 + max-timeout-retries) × first-token-ms +
//! the backoff between)`, 30.2 s at most with the defaults (15 s first
//! token, one timeout retry, 200 ms first backoff), never more than
//! `total-ms` (60 s).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use tokio::time::{Instant, timeout, timeout_at};

use super::adaptive_limit::{AdaptiveLimit, Sample};
use super::breaker::{BreakerConfig, CircuitBreaker};
use super::classify::{AttemptError, Class, retry_after};
use super::log_throttle::LogThrottle;
use super::settings::{ProviderSettings, RetrySettings};
use super::wire::{self, StreamAccumulator, WireChatRequest, WireEmbeddingsRequest};
use bsm_runtime::bindings::llm::{ChatRequest, ChatResponse, Error as LlmError};
use bsm_runtime::capabilities::Caller;
use bsm_runtime::io_home::IoHome;

/// A configured provider with its own breaker and concurrency limit.
pub struct Provider {
    settings: ProviderSettings,
    retry: RetrySettings,
    http: reqwest::Client,
    /// Requests are sent from the runtime the provider was built on, so its
    /// connections are driven there (see [`IoHome`]).
    home: IoHome,
    breaker: CircuitBreaker,
    limit: Arc<AdaptiveLimit>,
    /// Parsed once: parsing (with its IDNA pass over the host) showed in
    /// the profile of every call.
    chat_url: reqwest::Url,
    embeddings_url: reqwest::Url,
    /// Failed attempts and refusals by the open breaker are logged through
    /// these, so an outage does not flood the log.
    failures_log: LogThrottle,
    refusals_log: LogThrottle,
}

impl Provider {
    pub fn new(
        settings: ProviderSettings,
        retry: RetrySettings,
        default_breaker: &BreakerConfig,
    ) -> anyhow::Result<Self> {
        let limits = settings.concurrency_limits();
        limits
            .validate()
            .map_err(|m| anyhow::anyhow!("provider {:?}: {m}", settings.name))?;
        let http = crate::http_client::builder()
            .connect_timeout(settings.timeouts.connect())
            .pool_max_idle_per_host(limits.max as usize)
            .build()?;
        let base = settings.base_url.trim_end_matches('/').to_string();
        let endpoint = |path: &str| {
            let url = format!("{base}/{path}");
            match reqwest::Url::parse(&url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(parsed),
                Ok(_) => Err(anyhow::anyhow!(
                    "provider {:?}: base-url {:?} is not an http(s) URL",
                    settings.name,
                    settings.base_url
                )),
                Err(e) => Err(anyhow::anyhow!(
                    "provider {:?}: base-url {:?} is not a URL: {e}",
                    settings.name,
                    settings.base_url
                )),
            }
        };
        let (chat_url, embeddings_url) = (endpoint("chat/completions")?, endpoint("embeddings")?);
        let breaker_config = settings
            .breaker
            .clone()
            .unwrap_or_else(|| default_breaker.clone());
        Ok(Self {
            breaker: CircuitBreaker::new(format!("llm:{}", settings.name), breaker_config),
            limit: AdaptiveLimit::new(limits),
            chat_url,
            embeddings_url,
            http,
            home: IoHome::current(),
            retry,
            settings,
            failures_log: LogThrottle::default(),
            refusals_log: LogThrottle::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn settings(&self) -> &ProviderSettings {
        &self.settings
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The adaptive limit of upstream calls in flight.
    pub fn concurrency(&self) -> &AdaptiveLimit {
        &self.limit
    }

    /// A chat completion through the whole stack.
    pub async fn chat(
        &self,
        caller: &Caller,
        request: &ChatRequest,
    ) -> Result<ChatResponse, LlmError> {
        let model = self.settings.resolve_model(request.model.as_deref());
        let max_tokens = match (
            request.max_tokens,
            self.settings.max_tokens_for(request.model.as_deref()),
        ) {
            (Some(asked), Some(cap)) => Some(asked.min(cap)),
            (asked, cap) => asked.or(cap),
        };
        let body = WireChatRequest::new(
            request,
            model.clone(),
            max_tokens,
            self.settings.stream,
            self.settings.json_mode,
        );
        let body: bytes::Bytes = serde_json::to_vec(&body)
            .map_err(|e| LlmError::InvalidRequest(e.to_string()))?
            .into();
        self.call(|| self.chat_attempt(caller, &body, &model)).await
    }

    /// Embeddings through the whole stack.
    pub async fn embed(
        &self,
        caller: &Caller,
        model: Option<&str>,
        inputs: &[String],
    ) -> Result<Vec<Vec<f32>>, LlmError> {
        let model = self.settings.resolve_model(model);
        let body: bytes::Bytes = serde_json::to_vec(&WireEmbeddingsRequest {
            model,
            input: inputs,
        })
        .map_err(|e| LlmError::InvalidRequest(e.to_string()))?
        .into();
        self.call(|| self.embed_attempt(caller, &body, inputs.len()))
            .await
    }

    /// Total timeout and retry around breaker-guarded, limited attempts.
    async fn call<T, F, Fut>(&self, attempt: F) -> Result<T, LlmError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(T, Duration), AttemptError>>,
    {
        let total = self.settings.timeouts.total();
        let deadline = Instant::now() + total;
        let guarded = async {
            let mut backoff = ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(self.retry.initial_backoff_ms))
                .with_max_delay(Duration::from_millis(self.retry.max_backoff_ms))
                .with_max_times(self.retry.max_attempts.saturating_sub(1) as usize)
                .build();
            let mut timeouts = 0;
            loop {
                // The place under the limit first: a breaker permit (a
                // half-open probe) is not held while queueing for it.
                let place = self.limit.acquire().await;
                let permit = match self.breaker.try_acquire() {
                    Ok(permit) => {
                        self.refusals_log.reset();
                        permit
                    }
                    Err(refused) => {
                        if let Some(suppressed) = self.refusals_log.admit() {
                            tracing::warn!(
                                provider = %self.settings.name,
                                breaker = %self.breaker.name(),
                                retry_after_ms = refused.retry_after.as_millis() as u64,
                                suppressed,
                                "LLM calls refused by the open circuit breaker (one line per interval; `suppressed` refusals since the last)"
                            );
                        }
                        return Err(LlmError::CircuitOpen(refused.retry_after.as_millis() as u64));
                    }
                };
                let started = Instant::now();
                let outcome = timeout(self.settings.timeouts.attempt(), attempt())
                    .await
                    .unwrap_or(Err(AttemptError::Timeout));
                place.record(match &outcome {
                    Ok(_) => Sample::Answered(started.elapsed()),
                    Err(e) if e.is_overload() => Sample::Overloaded,
                    Err(_) => Sample::Ignored,
                });
                let error = match outcome {
                    Ok((value, first_token)) => {
                        permit.success(first_token);
                        self.failures_log.reset();
                        return Ok(value);
                    }
                    Err(error) => error,
                };
                let class = error.class();
                match class {
                    Class::Failure => permit.failure(started.elapsed()),
                    Class::RateLimited | Class::Permanent => permit.ignore(),
                }
                if let Some(suppressed) = self.failures_log.admit() {
                    tracing::warn!(provider = %self.settings.name, ?class, error = ?error, suppressed, "LLM attempt failed (one line per interval; `suppressed` failures since the last)");
                }
                if class == Class::Permanent {
                    return Err(error.into_llm_error(&self.settings.name));
                }
                if matches!(error, AttemptError::Timeout) {
                    timeouts += 1;
                    if timeouts > self.retry.max_timeout_retries {
                        return Err(error.into_llm_error(&self.settings.name));
                    }
                }
                let Some(step) = backoff.next() else {
                    return Err(error.into_llm_error(&self.settings.name));
                };
                // Full jitter: anywhere between zero and the exponential step.
                let mut delay = step.mul_f64(fastrand::f64());
                if let AttemptError::Status {
                    retry_after: Some(asked),
                    ..
                } = &error
                {
                    delay = delay
                        .max((*asked).min(Duration::from_millis(self.retry.max_retry_after_ms)));
                }
                if Instant::now() + delay >= deadline {
                    return Err(error.into_llm_error(&self.settings.name));
                }
                tokio::time::sleep(delay).await;
            }
        };
        timeout_at(deadline, guarded)
            .await
            .unwrap_or(Err(LlmError::Timeout))
    }

    /// The request of one attempt; the body is shared between attempts,
    /// not copied.
    fn post(
        &self,
        url: &reqwest::Url,
        caller: &Caller,
        body: &bytes::Bytes,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-correlation-id", &*caller.correlation_id)
            .header("x-bsm-plugin", &*caller.plugin_id)
            .body(body.clone());
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key);
        }
        request
    }

    /// Sends a request and returns the response if its status is a success.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        first_token_deadline: Instant,
    ) -> Result<reqwest::Response, AttemptError> {
        let response = timeout_at(first_token_deadline, self.home.run(request.send()))
            .await
            .map_err(|_| AttemptError::Timeout)?
            .map_err(|gone| AttemptError::Connect(gone.to_string()))?
            .map_err(|e| AttemptError::Connect(describe_reqwest(&e, &self.settings.base_url)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = timeout_at(first_token_deadline, response.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        Err(AttemptError::Status {
            status: status.as_u16(),
            retry_after,
            error: wire::parse_error(status.as_u16(), &body),
        })
    }

    async fn chat_attempt(
        &self,
        caller: &Caller,
        body: &bytes::Bytes,
        model: &str,
    ) -> Result<(ChatResponse, Duration), AttemptError> {
        let started = Instant::now();
        let first_token_deadline = started + self.settings.timeouts.first_token();
        let response = self
            .send(
                self.post(&self.chat_url, caller, body),
                first_token_deadline,
            )
            .await?;
        let is_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_stream {
            let bytes = timeout_at(first_token_deadline, response.bytes())
                .await
                .map_err(|_| AttemptError::Timeout)?
                .map_err(|e| {
                    AttemptError::Connect(describe_reqwest(&e, &self.settings.base_url))
                })?;
            let reply = wire::parse_chat(&bytes, model).map_err(AttemptError::Malformed)?;
            return Ok((reply, started.elapsed()));
        }
        let mut events = response.bytes_stream().eventsource();
        let mut acc = StreamAccumulator::new(model);
        while !acc.done {
            let next = if acc.first_token.is_none() {
                timeout_at(first_token_deadline, events.next())
                    .await
                    .map_err(|_| AttemptError::Timeout)?
            } else {
                events.next().await
            };
            match next {
                None => {
                    return Err(AttemptError::StreamCut(
                        "the stream ended before [DONE]".into(),
                    ));
                }
                Some(Err(e)) => {
                    return Err(AttemptError::StreamCut(format!("the stream broke: {e}")));
                }
                Some(Ok(event)) => acc
                    .push(&event.data, started.elapsed())
                    .map_err(AttemptError::Malformed)?,
            }
        }
        let first_token = acc.first_token.unwrap_or_else(|| started.elapsed());
        Ok((acc.finish(), first_token))
    }

    async fn embed_attempt(
        &self,
        caller: &Caller,
        body: &bytes::Bytes,
        expected: usize,
    ) -> Result<(Vec<Vec<f32>>, Duration), AttemptError> {
        let started = Instant::now();
        let deadline = started + self.settings.timeouts.first_token();
        let response = self
            .send(self.post(&self.embeddings_url, caller, body), deadline)
            .await?;
        let bytes = timeout_at(deadline, response.bytes())
            .await
            .map_err(|_| AttemptError::Timeout)?
            .map_err(|e| AttemptError::Connect(describe_reqwest(&e, &self.settings.base_url)))?;
        let vectors = wire::parse_embeddings(&bytes, expected).map_err(AttemptError::Malformed)?;
        Ok((vectors, started.elapsed()))
    }
}

fn describe_reqwest(e: &reqwest::Error, base_url: &str) -> String {
    let mut message = if e.is_connect() {
        format!("cannot connect to {base_url}")
    } else {
        format!("request to {base_url} failed")
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(base_url: &str) -> anyhow::Result<Provider> {
        Provider::new(
            ProviderSettings::new("p", base_url, "m"),
            RetrySettings::default(),
            &BreakerConfig::default(),
        )
    }

    #[tokio::test]
    async fn a_base_url_that_is_not_an_http_url_is_refused_when_the_provider_is_built() {
        for bad in ["not a url", "ftp://example.com/v1", "localhost:11434/v1"] {
            let err = build(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(
                err.to_string().contains("base-url") && err.to_string().contains(bad),
                "{err}"
            );
        }
        let provider = build("http://127.0.0.1:11434/v1/").unwrap();
        assert_eq!(
            provider.chat_url.as_str(),
            "http://127.0.0.1:11434/v1/chat/completions"
        );
    }
}
