//! The action-handler side of the contract: the [`ActionHandler`] trait.
//!
//! The host's outbox hands every action that passed governance to the
//! handler its configuration routes the action to, and retries with backoff
//! when the handler answers [`DeliveryError::Retry`] (or traps, or times
//! out). Delivery is at least once: use [`ActionRequest::idempotency_key`]
//! so that a receiver can drop a duplicate.

use crate::bindings::agent::bsm::plugin::types;

/// An action to deliver, with its job's event, payload, decision and report.
///
/// ```
/// # use bsm_sdk::ActionRequest;
/// fn describe_request(request: &ActionRequest) -> String {
///     let event = request.event.as_deref().unwrap_or("a direct run");
///     format!("{} for {event} (key {})", request.name, request.idempotency_key)
/// }
/// ```
pub type ActionRequest = types::ActionRequest;
/// Why an action was not delivered: worth a retry, or never going to work.
///
/// ```
/// use bsm_sdk::DeliveryError;
/// let again = DeliveryError::Retry("the receiver answered 503".into());     // retried with backoff
/// let never = DeliveryError::Permanent("no such repository".into());       // dead at once
/// # let _ = (again, never);
/// ```
pub type DeliveryError = types::DeliveryError;
/// Who a handler is, read once by the host when the plugin is loaded.
///
/// ```
/// let info = bsm_sdk::HandlerInfo::new("webhook-sink", "Webhook sink", "0.1.0");
/// assert_eq!(info.id, "webhook-sink");
/// ```
pub type HandlerInfo = types::HandlerInfo;

/// An action-handler plugin.
///
/// ```no_run
/// use bsm_sdk::{ActionHandler, ActionRequest, DeliveryError, HandlerInfo};
/// use bsm_sdk::http::{self, Request};
/// struct Notify;
/// impl ActionHandler for Notify {
///     fn describe() -> HandlerInfo { HandlerInfo::new("notify", "Notify", "0.1.0") }
///     fn handle(request: ActionRequest) -> Result<String, DeliveryError> {
///         http::send(&Request::post("https://hooks.example.com/bsm").json(request.args.as_bytes()))?
///             .delivered()?;
///         Ok(format!("notified about {}", request.name))
///     }
/// }
/// ```
pub trait ActionHandler {
    /// Describes the handler.
    ///
    /// ```
    /// # use bsm_sdk::HandlerInfo;
    /// fn describe() -> HandlerInfo {
    ///     HandlerInfo::new("notify", "Notify", env!("CARGO_PKG_VERSION")).with_description("Posts to a chat")
    /// }
    /// ```
    fn describe() -> HandlerInfo;

    /// Delivers one action; `Ok` says what was done (kept by the outbox).
    ///
    /// ```
    /// # use bsm_sdk::{ActionRequest, DeliveryError};
    /// fn handle(request: ActionRequest) -> Result<String, DeliveryError> {
    ///     match request.name.as_str() {
    ///         "label_pr" => Ok("labelled".into()),
    ///         other => Err(DeliveryError::Permanent(format!("this handler does not do {other}"))),
    ///     }
    /// }
    /// ```
    fn handle(request: ActionRequest) -> Result<String, DeliveryError>;
}

impl HandlerInfo {
    /// A description with the three required fields.
    ///
    /// ```
    /// let info = bsm_sdk::HandlerInfo::new("github-actions", "GitHub actions", "1.0.0");
    /// assert!(info.description.is_empty());
    /// ```
    pub fn new(id: impl Into<String>, name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            version: version.into(),
            description: String::new(),
        }
    }

    /// Sets the human-readable description.
    ///
    /// ```
    /// let info = bsm_sdk::HandlerInfo::new("h", "H", "1.0.0").with_description("Comments on PRs");
    /// assert_eq!(info.description, "Comments on PRs");
    /// ```
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }
}
