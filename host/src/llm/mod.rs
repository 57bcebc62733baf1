//! The host's LLM client: OpenAI-compatible providers behind a resilience
//! stack (bulkhead, total timeout, retry, circuit breaker, attempt timeout),
//! with an ordered fallback chain.

pub mod breaker;
