//! The action-handler side of the contract: the [`ActionHandler`] trait.
//!
//! The host's outbox hands every action that passed governance to the
//! handler its configuration routes the action to, and retries with backoff
//! when the handler answers [`DeliveryError::Retry`] (or traps, or times
//! out). Delivery is at least once: use [`ActionRequest::idempotency_key`]
//! so that a receiver can drop a duplicate.

use crate::bindings::agent::bsm::plugin::types;

/// An action to deliver, with its job's event, payload, decision and report.
pub type ActionRequest = types::ActionRequest;
/// Why an action was not delivered: worth a retry, or never going to work.
pub type DeliveryError = types::DeliveryError;
/// Who a handler is, read once by the host when the plugin is loaded.
pub type HandlerInfo = types::HandlerInfo;

/// An action-handler plugin.
pub trait ActionHandler {
    /// Describes the handler.
    fn describe() -> HandlerInfo;

    /// Delivers one action; `Ok` says what was done (kept by the outbox).
    fn handle(request: ActionRequest) -> Result<String, DeliveryError>;
}

impl HandlerInfo {
    /// A description with the three required fields.
    pub fn new(id: impl Into<String>, name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            version: version.into(),
            description: String::new(),
        }
    }

    /// Sets the human-readable description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }
}
