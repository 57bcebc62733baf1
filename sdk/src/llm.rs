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

///
/// ```no_run
/// use bsm_sdk::llm::{self, ChatRequest, LlmError, Message};
/// let answer = match llm::chat(&ChatRequest::new(vec![Message::user("Summarise PR #7")])) {
///     Ok(reply) => reply.content,
///     Err(LlmError::CircuitOpen(retry_ms)) => format!("the LLM is unavailable; retry in {retry_ms} ms"),
///     Err(LlmError::BudgetExceeded(why)) => format!("over budget: {why}"),
///     Err(e) => return Err(bsm_sdk::AgentError::Capability(format!("llm: {e}"))),
/// };
/// # Ok::<(), bsm_sdk::AgentError>(())
/// ```
pub use wit::{ChatRequest, ChatResponse, Error as LlmError, Message, ProviderError, Role, Usage};

/// Sends a chat completion request.
///
/// ```no_run
/// use bsm_sdk::llm::{self, ChatRequest, Message};
/// let reply = llm::chat(&ChatRequest::new(vec![Message::system("Be brief."), Message::user("Hi")]))?;
/// let tokens = reply.usage.prompt_tokens + reply.usage.completion_tokens;
/// # Ok::<(), llm::LlmError>(())
/// ```
pub fn chat(request: &ChatRequest) -> Result<ChatResponse, LlmError> {
    wit::chat(request)
}

/// Embeds each input (in order) with the given model or the host's default.
///
/// ```no_run
/// let vectors = bsm_sdk::llm::embed(None, &["first".to_string(), "second".to_string()])?;
/// assert_eq!(vectors.len(), 2);
/// # Ok::<(), bsm_sdk::llm::LlmError>(())
/// ```
pub fn embed(model: Option<&str>, inputs: &[String]) -> Result<Vec<Vec<f32>>, LlmError> {
    wit::embed(model, inputs)
}

impl Message {
    /// A system message.
    ///
    /// ```
    /// let m = bsm_sdk::llm::Message::system("You review Rust code.");
    /// assert_eq!(m.role, bsm_sdk::llm::Role::System);
    /// ```
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }

    /// A user message.
    ///
    /// ```
    /// let m = bsm_sdk::llm::Message::user("Review this diff.");
    /// assert_eq!(m.content, "Review this diff.");
    /// ```
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }

    /// An assistant message (for few-shot examples or history).
    ///
    /// ```
    /// use bsm_sdk::llm::Message;
    /// let few_shot = vec![Message::user("2+2?"), Message::assistant("4"), Message::user("3+3?")];
    /// ```
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

impl ChatRequest {
    /// A request with the host's default model, token limit and temperature.
    ///
    /// ```
    /// use bsm_sdk::llm::{ChatRequest, Message};
    /// let request = ChatRequest::new(vec![Message::user("Hello")]);
    /// assert!(request.model.is_none() && !request.json);
    /// ```
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
    ///
    /// ```
    /// use bsm_sdk::llm::{ChatRequest, Message};
    /// let request = ChatRequest::new(vec![Message::user(r#"Answer {"verdict": "approve"|"block"}"#)]).with_json();
    /// assert!(request.json);
    /// ```
    pub fn with_json(mut self) -> Self {
        self.json = true;
        self
    }

    /// Asks for a specific model (the host falls back to its default when the
    /// provider does not serve it).
    ///
    /// ```
    /// use bsm_sdk::llm::{ChatRequest, Message};
    /// // The manifest grants it: [capabilities.llm] models = ["gpt-4o-mini"]
    /// let request = ChatRequest::new(vec![Message::user("Hi")]).with_model("gpt-4o-mini");
    /// ```
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Caps the completion length.
    ///
    /// ```
    /// use bsm_sdk::llm::{ChatRequest, Message};
    /// let request = ChatRequest::new(vec![Message::user("Hi")]).with_max_tokens(200);
    /// assert_eq!(request.max_tokens, Some(200));
    /// ```
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets the sampling temperature.
    ///
    /// ```
    /// use bsm_sdk::llm::{ChatRequest, Message};
    /// let request = ChatRequest::new(vec![Message::user("Hi")]).with_temperature(0.0); // deterministic
    /// ```
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }
}
