//! The admin token: the operator's credential before any API key exists
//! (every scope, every context). A weak token is refused before the server
//! starts.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured admin token, kept as its SHA-256 digest: a presented
/// token is hashed and the two fixed-length digests compared in constant
/// time, so neither the comparison's time nor a memory dump tells the
/// token. Its `Debug` prints nothing of it.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    /// Accepts a token only if it is strong enough (see [`weak_token_reason`]).
    pub fn new(token: &SecretString) -> Result<Self, String> {
        let token = token.expose_secret();
        match weak_token_reason(token) {
            Some(reason) => Err(reason),
            None => Ok(Self(Sha256::digest(token.as_bytes()).into())),
        }
    }

    /// Whether `given` is the token.
    pub fn matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        bool::from(given.ct_eq(&self.0))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Why an admin token is refused at startup.
pub fn weak_token_reason(token: &str) -> Option<String> {
    const DEFAULTS: &[&str] = &[
        "admin",
        "password",
        "changeme",
        "change-me",
        "secret",
        "token",
        "default",
        "test",
        "bsm",
    ];
    let lower = token.to_ascii_lowercase();
    if DEFAULTS.iter().any(|d| lower.contains(d)) && token.len() < 40 {
        return Some("it is (or contains) a well-known default".into());
    }
    if token.len() < 24 {
        return Some(format!(
            "it is {} characters long; at least 24 are required",
            token.len()
        ));
    }
    let distinct: std::collections::BTreeSet<char> = token.chars().collect();
    if distinct.len() < 8 {
        return Some("it uses fewer than 8 distinct characters".into());
    }
    None
}
