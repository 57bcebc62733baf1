//! Who is calling, and may they: every routed request is resolved to a
//! [`Caller`] (an API key, the admin token, or nobody in open mode) and
//! checked against the one scope its route asks for ([`required_scope`]).
//! Handlers then take the caller for what depends on it: the governance
//! context a run may use.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use bsm_platform::access::{ApiKey, Scope};
use bsm_platform::bsm::governance::KNOWN_CONTEXTS;

use crate::error::ApiError;
use crate::state::AppState;

/// The context of a run whose caller names none and has no key to take
/// it from.
pub const DEFAULT_CONTEXT: &str = "api";

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No API key is configured and the server listens on loopback only:
    /// local callers may run, orchestrate and read in any context, but not
    /// administer (that still takes the admin token).
    Open,
    /// The admin token: every scope, every context.
    AdminToken,
    /// An API key: its scopes, its contexts.
    Key(Arc<ApiKey>),
}

impl Caller {
    pub fn allows(&self, scope: Scope) -> bool {
        match self {
            Caller::Open => scope != Scope::Admin,
            Caller::AdminToken => true,
            Caller::Key(key) => key.allows(scope),
        }
    }

    /// The context a run of this caller takes: the one the request names
    /// (which must be known, and one of the key's), else the key's first,
    /// else [`DEFAULT_CONTEXT`]. A request can narrow a key's contexts,
    /// never widen them.
    pub fn context(&self, requested: Option<&str>) -> Result<String, ApiError> {
        if let Some(context) = requested
            && !KNOWN_CONTEXTS.contains(&context)
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "UNKNOWN_CONTEXT",
                format!(
                    "unknown context {context:?} (known: {})",
                    KNOWN_CONTEXTS.join(", ")
                ),
            ));
        }
        match (self, requested) {
            (Caller::Key(key), Some(context)) => {
                if key.contexts.iter().any(|c| c == context) {
                    Ok(context.to_string())
                } else {
                    Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "CONTEXT_NOT_ALLOWED",
                        format!(
                            "API key {:?} may act in {} only, not {context:?}",
                            key.name,
                            key.contexts.join(", ")
                        ),
                    ))
                }
            }
            (Caller::Key(key), None) => Ok(key
                .contexts
                .first()
                .cloned()
                .unwrap_or_else(|| DEFAULT_CONTEXT.into())),
            (_, requested) => Ok(requested.unwrap_or(DEFAULT_CONTEXT).to_string()),
        }
    }

    /// Who decided, for the records (approvals).
    pub fn name(&self) -> String {
        match self {
            Caller::Open => "anonymous".into(),
            Caller::AdminToken => "admin".into(),
            Caller::Key(key) => format!("key:{}", key.name),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "this route has no caller (it is served without authentication)",
            )
        })
    }
}

/// The scope a route asks for; `None`: served to anyone (health probes,
/// and the GitHub webhook, which authenticates by its signature). Anything
/// not named here that changes state is `admin`.
pub fn required_scope(method: &Method, route: &str) -> Option<Scope> {
    match (method.as_str(), route) {
        (
            _,
            "/health"
            | "/api/health"
            | "/api/health/detailed"
            | "/api/health/circuit-breakers"
            | "/api/webhooks/github",
        ) => None,
        ("POST", "/api/agents/run") => Some(Scope::Run),
        ("POST", "/api/orchestrator/run") => Some(Scope::Orchestrate),
        ("POST", "/api/knowledge/{collection}/search") => Some(Scope::Read),
        ("GET", "/api/approvals" | "/api/keys") => Some(Scope::Admin),
        ("GET" | "HEAD", _) => Some(Scope::Read),
        _ => Some(Scope::Admin),
    }
}

/// Resolves the caller of a routed request and checks its route's scope.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let Some(scope) = required_scope(request.method(), route) else {
        return next.run(request).await;
    };
    let caller = match resolve(&state, request.headers()).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    if !caller.allows(scope) {
        return refusal(&state, &caller, scope).into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The credentials of a request: `Authorization: Bearer <key or admin
/// token>`, or the admin token in `x-admin-token`.
fn credentials(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-admin-token").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

async fn resolve(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let keys = state.platform.api_keys();
    let Some(given) = credentials(headers) else {
        let configured = keys.configured().await.map_err(ApiError::from)?;
        return if configured {
            Err(unauthorized(
                "an API key is required: `Authorization: Bearer <key>`",
            ))
        } else if !state.open_allowed {
            Err(unauthorized(
                "no API key exists and this server is not on loopback: create one with `bsm keys create`",
            ))
        } else {
            Ok(Caller::Open)
        };
    };
    if let Some(token) = &state.admin_token
        && token.matches(given)
    {
        return Ok(Caller::AdminToken);
    }
    match keys.authenticate(given).await.map_err(ApiError::from)? {
        Some(key) => Ok(Caller::Key(key)),
        None => Err(unauthorized(
            "the API key or admin token is not valid (unknown, revoked or mistyped)",
        )),
    }
}

fn refusal(state: &AppState, caller: &Caller, scope: Scope) -> ApiError {
    match caller {
        Caller::Open if state.admin_token.is_none() => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "ADMIN_DISABLED",
            "admin endpoints need an admin key (`bsm keys create --scope admin`) or BSM_ADMIN_TOKEN",
        ),
        Caller::Open => unauthorized(
            "a valid admin token (`x-admin-token` or `Authorization: Bearer`) or an admin key is required",
        ),
        _ => ApiError::new(
            StatusCode::FORBIDDEN,
            "SCOPE_REQUIRED",
            format!("this endpoint needs the `{scope}` scope, which the caller's key lacks"),
        ),
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(contexts: &[&str]) -> Caller {
        Caller::Key(Arc::new(ApiKey {
            id: "0123456789ab".into(),
            name: "ci".into(),
            contexts: contexts.iter().map(|c| c.to_string()).collect(),
            scopes: [Scope::Run].into(),
            created_at: String::new(),
            revoked_at: None,
        }))
    }

    #[test]
    fn a_request_narrows_a_keys_contexts_but_never_widens_them() {
        let caller = key(&["api", "ci"]);
        assert_eq!(caller.context(None).unwrap(), "api", "the key's first");
        assert_eq!(caller.context(Some("ci")).unwrap(), "ci");
        let err = key(&["api"]).context(Some("ci")).unwrap_err();
        assert_eq!(err.code, "CONTEXT_NOT_ALLOWED");
    }

    #[test]
    fn unknown_contexts_are_refused_for_every_caller() {
        for caller in [Caller::Open, Caller::AdminToken, key(&["api"])] {
            let err = caller.context(Some("nowhere")).unwrap_err();
            assert_eq!(err.code, "UNKNOWN_CONTEXT");
        }
    }

    #[test]
    fn changes_need_admin_unless_named_otherwise() {
        let scope = |m: Method, r: &str| required_scope(&m, r);
        assert_eq!(scope(Method::POST, "/api/agents/run"), Some(Scope::Run));
        assert_eq!(
            scope(Method::POST, "/api/orchestrator/run"),
            Some(Scope::Orchestrate)
        );
        assert_eq!(scope(Method::GET, "/api/reports"), Some(Scope::Read));
        assert_eq!(scope(Method::GET, "/api/approvals"), Some(Scope::Admin));
        assert_eq!(scope(Method::PUT, "/api/plugins/{id}"), Some(Scope::Admin));
        assert_eq!(
            scope(Method::POST, "/api/something/new"),
            Some(Scope::Admin)
        );
        assert_eq!(scope(Method::POST, "/api/webhooks/github"), None);
        assert_eq!(scope(Method::GET, "/health"), None);
    }

    #[test]
    fn open_callers_may_not_administer() {
        assert!(Caller::Open.allows(Scope::Run) && !Caller::Open.allows(Scope::Admin));
        assert!(Caller::AdminToken.allows(Scope::Admin));
    }
}
