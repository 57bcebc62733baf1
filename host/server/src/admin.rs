//! The admin token: who may use the mutating operations endpoints. Checked
//! in constant time; a weak token is refused before the server starts.

use axum::http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The configured admin token. Its `Debug` does not print it.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    /// Accepts a token only if it is strong enough (see [`weak_token_reason`]).
    pub fn new(token: String) -> Result<Self, String> {
        match weak_token_reason(&token) {
            Some(reason) => Err(reason),
            None => Ok(Self(token)),
        }
    }

    fn matches(&self, given: &str) -> bool {
        bool::from(given.as_bytes().ct_eq(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Checks the admin token of a mutating operations request against the
/// configured one (`None`: admin endpoints disabled).
pub fn require_admin(configured: Option<&AdminToken>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = configured else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "ADMIN_DISABLED",
            "admin endpoints are disabled: start the server with BSM_ADMIN_TOKEN set",
        ));
    };
    let given = headers
        .get("x-admin-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .unwrap_or("");
    if expected.matches(given) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "a valid admin token is required (header `x-admin-token` or `Authorization: Bearer`)",
        ))
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
