//! Chat completions and embeddings through the host.
//!
//! The host owns providers, API keys, retries, the circuit breaker and the
//! plugin's LLM budget; a plugin only says what it wants.
//!
//! ```no_run
//! use bsm_sdk::llm::{self, ChatRequest, Message};
//! let reply = llm::chat(&ChatRequest::new(vec![
//!     Message::system("You are terse."),
//!     Message::user("Say hi"),
//! ]).with_temperature(0.0));
//! match reply {
//!     Ok(r) => println!("{}", r.content),
//!     Err(e) => eprintln!("{e}"),
//! }
//! ```

use crate::bindings::agent::bsm::plugin::llm as wit;

pub use wit::{ChatRequest, ChatResponse, Error as LlmError, Message, ProviderError, Role, Usage};

/// Sends a chat completion request.
pub fn chat(request: &ChatRequest) -> Result<ChatResponse, LlmError> {
    wit::chat(request)
}

/// Embeds each input (in order) with the given model or the host's default.
pub fn embed(model: Option<&str>, inputs: &[String]) -> Result<Vec<Vec<f32>>, LlmError> {
    wit::embed(model, inputs)
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }

    /// An assistant message (for few-shot examples or history).
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

impl ChatRequest {
    /// A request with the host's default model, token limit and temperature.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            model: None,
            max_tokens: None,
            temperature: None,
            json: false,
        }
    }

    /// Asks for one JSON object as the answer (JSON mode where the provider
    /// supports it); say so in the prompt too.
    pub fn with_json(mut self) -> Self {
        self.json = true;
        self
    }

    /// Asks for a specific model (the host falls back to its default when the
    /// provider does not serve it).
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Caps the completion length.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets the sampling temperature.
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }
}
