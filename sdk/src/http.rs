//! Outbound HTTP, for plugins whose manifest grants it:
//!
//! ```toml
//! [capabilities.http]
//! allowed-hosts = ["https://api.github.com"]
//! secrets = ["github-token"]      # host secrets it may use, by name
//! ```
//!
//! A secret never enters the plugin: name it in a header template, or ask
//! the host to sign a body with it.
//!
//! ```no_run
//! use bsm_sdk::http::{self, Request};
//! let response = http::send(
//!     &Request::post("https://api.github.com/repos/acme/app/issues/7/comments")
//!         .json(&br#"{"body":"LGTM"}"#[..])
//!         .secret_header("authorization", "github-token", "Bearer {secret}"),
//! )
//! .unwrap();
//! assert!(response.status < 300, "{}", response.text());
//! ```

use crate::bindings::agent::bsm::plugin::http as wit;

///
/// ```no_run
/// use bsm_sdk::http::{self, HttpError, Request};
/// match http::send(&Request::get("https://api.github.com/rate_limit")) {
///     Ok(r) => bsm_sdk::log::info(&format!("{} {}", r.status, r.text())),
///     Err(HttpError::NotPermitted(why)) => bsm_sdk::log::error(&why), // add the host to [capabilities.http]
///     Err(HttpError::Timeout) => bsm_sdk::log::warn("no answer in time"),
///     Err(e) => bsm_sdk::log::error(&e.to_string()),
/// }
/// ```
pub use wit::{Error as HttpError, Header, Response, SecretHeader};

/// An outbound request, built step by step.
///
/// ```
/// let request = bsm_sdk::http::Request::put("https://example.com/status")
///     .header("accept", "application/json")
///     .json(br#"{"state": "ok"}"#)
///     .timeout_ms(5_000);
/// ```
#[derive(Debug, Clone)]
pub struct Request(wit::Request);

impl Request {
    /// A request with no headers and no body.
    ///
    /// ```
    /// let head = bsm_sdk::http::Request::new("HEAD", "https://example.com/");
    /// ```
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        Self(wit::Request {
            method: method.to_string(),
            url: url.into(),
            headers: Vec::new(),
            secret_headers: Vec::new(),
            body: None,
            timeout_ms: None,
        })
    }

    ///
    /// ```
    /// let r = bsm_sdk::http::Request::get("https://api.github.com/repos/acme/app/pulls/7");
    /// ```
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    ///
    /// ```
    /// let r = bsm_sdk::http::Request::post("https://hooks.example.com/bsm").json(b"{}");
    /// ```
    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    ///
    /// ```
    /// let r = bsm_sdk::http::Request::put("https://api.github.com/repos/acme/app/pulls/7/merge");
    /// ```
    pub fn put(url: impl Into<String>) -> Self {
        Self::new("PUT", url)
    }

    ///
    /// ```
    /// let r = bsm_sdk::http::Request::patch("https://api.github.com/repos/acme/app/issues/comments/1")
    ///     .json(br#"{"body": "updated"}"#);
    /// ```
    pub fn patch(url: impl Into<String>) -> Self {
        Self::new("PATCH", url)
    }

    ///
    /// ```
    /// let r = bsm_sdk::http::Request::delete("https://api.github.com/repos/acme/app/issues/7/labels/bsm-blocked");
    /// ```
    pub fn delete(url: impl Into<String>) -> Self {
        Self::new("DELETE", url)
    }

    /// Adds a header.
    ///
    /// ```
    /// let r = bsm_sdk::http::Request::get("https://api.github.com/").header("accept", "application/vnd.github+json");
    /// ```
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.0.headers.push(Header {
            name: name.to_string(),
            value: value.to_string(),
        });
        self
    }

    /// Adds a header whose value the host fills from a granted secret:
    /// `{secret}` in `template` is replaced, e.g. `"Bearer {secret}"`.
    ///
    /// ```
    /// // The manifest grants the secret: [capabilities.http] secrets = ["github-token"]
    /// let r = bsm_sdk::http::Request::get("https://api.github.com/user")
    ///     .secret_header("authorization", "github-token", "Bearer {secret}");
    /// ```
    pub fn secret_header(mut self, name: &str, secret: &str, template: &str) -> Self {
        self.0.secret_headers.push(SecretHeader {
            name: name.to_string(),
            secret: secret.to_string(),
            template: template.to_string(),
        });
        self
    }

    /// Sets a JSON body (and its content type).
    ///
    /// ```
    /// let r = bsm_sdk::http::Request::post("https://hooks.example.com/x").json(br#"{"ok": true}"#);
    /// ```
    pub fn json(self, body: &[u8]) -> Self {
        self.header("content-type", "application/json").body(body)
    }

    /// Sets the body.
    ///
    /// ```
    /// let r = bsm_sdk::http::Request::post("https://example.com/upload")
    ///     .header("content-type", "text/plain")
    ///     .body(b"hello");
    /// ```
    pub fn body(mut self, body: &[u8]) -> Self {
        self.0.body = Some(body.to_vec());
        self
    }

    /// Gives up after this long (the host's default is 10 s, at most 60 s).
    ///
    /// ```
    /// let r = bsm_sdk::http::Request::get("https://slow.example.com/").timeout_ms(2_000);
    /// ```
    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.0.timeout_ms = Some(ms);
        self
    }
}

/// Sends a request through the host.
///
/// ```no_run
/// use bsm_sdk::http::{self, Request};
/// let response = http::send(&Request::get("https://api.github.com/repos/acme/app"))?;
/// let etag = response.header("etag").map(str::to_string);
/// # Ok::<(), http::HttpError>(())
/// ```
pub fn send(request: &Request) -> Result<Response, HttpError> {
    wit::send(&request.0)
}

/// HMAC-SHA256 of `body` with a granted host secret, lowercase hex.
///
/// ```no_run
/// use bsm_sdk::http::{self, Request};
/// let body = br#"{"event": "approved"}"#;
/// let signature = http::sign("webhook-secret", body)?;
/// let request = Request::post("https://hooks.example.com/bsm")
///     .header("x-signature-256", &format!("sha256={signature}"))
///     .json(body);
/// # Ok::<(), http::HttpError>(())
/// ```
pub fn sign(secret: &str, body: &[u8]) -> Result<String, HttpError> {
    wit::sign(secret, body)
}

impl Response {
    /// The status as an action handler's outcome: 2xx delivered; 408, 425,
    /// 429 and 5xx worth a retry; any other status will not succeed
    /// (permanent). The error carries the status and the start of the body.
    ///
    /// ```no_run
    /// # use bsm_sdk::http::{self, Request};
    /// # fn f() -> Result<String, bsm_sdk::DeliveryError> {
    /// let response = http::send(&Request::post("https://hooks.example.com/x"))?;
    /// response.delivered()?;
    /// # Ok("sent".into()) }
    /// ```
    pub fn delivered(&self) -> Result<(), crate::DeliveryError> {
        let why = || {
            let text: String = self.text().chars().take(200).collect();
            format!("the receiver answered {}: {text}", self.status)
        };
        match self.status {
            200..=299 => Ok(()),
            408 | 425 | 429 | 500..=599 => Err(crate::DeliveryError::Retry(why())),
            _ => Err(crate::DeliveryError::Permanent(why())),
        }
    }

    /// The body as text (lossy UTF-8).
    ///
    /// ```
    /// # let response = bsm_sdk::http::Response { status: 200, headers: vec![], body: b"ok".to_vec() };
    /// assert_eq!(response.text(), "ok");
    /// ```
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value (names compare without case).
    ///
    /// ```
    /// use bsm_sdk::http::{Header, Response};
    /// let response = Response { status: 200, headers: vec![Header { name: "ETag".into(), value: "\"abc\"".into() }], body: vec![] };
    /// assert_eq!(response.header("etag"), Some("\"abc\""));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

/// A failed call as an action handler's outcome: no answer in time or a
/// transport failure is worth a retry; a refused grant, a missing secret
/// or a malformed request will not succeed.
impl From<HttpError> for crate::DeliveryError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Timeout => Self::Retry("no answer in time".into()),
            HttpError::Transport(m) => Self::Retry(m),
            HttpError::NotPermitted(m) => Self::Permanent(format!("not permitted: {m}")),
            HttpError::InvalidRequest(m) => Self::Permanent(format!("invalid request: {m}")),
            HttpError::TooLarge(n) => {
                Self::Permanent(format!("the answer is too large ({n} bytes)"))
            }
            HttpError::Unavailable(m) => Self::Permanent(format!("unavailable: {m}")),
        }
    }
}
