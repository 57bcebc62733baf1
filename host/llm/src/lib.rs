//! # bsm-llm: the host's LLM client
//!
//! The original BSM called its LLM API with no breaker: during an outage
//! requests piled up for 30 s each. Here every OpenAI-compatible provider
//! sits behind a resilience stack (total timeout, retry with jittered
//! backoff, circuit breaker, a concurrency limit that adapts to the
//! provider's latency and 429s, attempt timeout), providers form an
//! ordered fallback chain, and deterministic answers are cached.
//! [`LlmClient`] implements the runtime's `LlmEngine`, which is how plugins
//! reach it (the `llm` capability, [`bsm_runtime::capabilities::llm`]).
//!
//! Depends on the runtime only for the WIT types of the `llm` interface and
//! the engine trait; it must not depend on the platform or the server.

pub mod adaptive_limit;
pub mod breaker;
pub mod classify;
pub mod client;
pub mod http_client;
pub mod log_throttle;
pub mod provider;
pub mod settings;
pub mod wire;

pub use client::LlmClient;
pub use settings::LlmSettings;
