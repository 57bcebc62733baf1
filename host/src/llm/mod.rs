//! The host's LLM client: OpenAI-compatible providers behind a resilience
//! stack (bulkhead, total timeout, retry, circuit breaker, attempt timeout),
//! with an ordered fallback chain. Plugins reach it through the `llm`
//! capability ([`crate::capabilities::llm`]).

pub mod breaker;
pub mod classify;
pub mod client;
pub mod provider;
pub mod settings;
pub mod wire;

pub use client::LlmClient;
pub use settings::LlmSettings;
