//! # bsm-server: `bsm serve`
//!
//! The HTTP API (axum) over the BSM platform: routes composed per area,
//! one error type that renders every failure as
//! `{"error": {"code", "message", "correlationId"}}`, and the cross-cutting
//! layers (correlation ids, metrics, per-client rate limit, request
//! timeout, body limit, admin token). Handlers are thin: each calls the
//! [`Platform`] facade and shapes its answer.
//!
//! Depends on the platform only (and through it on the types of the
//! runtime and LLM crates); nothing depends on it but the `bsm` binary.

pub mod actions;
pub mod admin;
pub mod agents;
pub mod auth;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod knowledge;
pub mod middleware;
pub mod ops;
pub mod plugins;
pub mod rate_limit;
pub mod state;
pub mod webhooks;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::Response;
use axum::routing::{get, post};
use bsm_platform::{Platform, PlatformOptions};
use secrecy::SecretString;
use tower::{Service, ServiceBuilder};

use crate::admin::AdminToken;
use crate::error::ApiError;
use crate::middleware::RequestCounters;
use crate::rate_limit::ClientRates;
use crate::state::AppState;

/// Everything `bsm serve` needs to start: the platform's options and the
/// HTTP layer's own settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: String,
    pub platform: PlatformOptions,
    /// Every scope and context; from the environment only.
    pub admin_token: Option<SecretString>,
    /// The secret GitHub signs webhook deliveries with; `None` turns the
    /// webhook endpoint off.
    pub github_webhook_secret: Option<SecretString>,
    /// Serve unauthenticated requests (while no API key exists) on a
    /// non-loopback address too. Off by default: such a server refuses to
    /// start without keys.
    pub allow_open: bool,
    /// Requests per second per client; 0 disables rate limiting.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// Proxies whose `X-Forwarded-For` names the client (addresses or networks).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How often the buckets of quiet clients are pruned.
    pub rate_limit_prune: Duration,
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    /// How long `?wait=true` waits for a job; `None`: as long as the
    /// request timeout allows (see [`wait_timeout`]).
    pub wait_timeout: Option<Duration>,
    pub shutdown_grace: Duration,
    /// Called once the server listens (start-up is over): the binary hands
    /// start-up's garbage (compilation's buffers) back to the OS here.
    pub on_listening: Option<fn()>,
}

/// How long `?wait=true` waits before answering 202 with the job id: the
/// configured wait, but always less than the request timeout, so a wait
/// ends as an answer the client can poll from, never as a 503
/// `REQUEST_TIMEOUT`. The margin is a tenth of the request timeout, at most
/// a second.
pub fn wait_timeout(request_timeout: Duration, configured: Option<Duration>) -> Duration {
    let margin = (request_timeout / 10).min(Duration::from_secs(1));
    let longest = request_timeout.saturating_sub(margin);
    configured.map_or(longest, |wait| wait.min(longest))
}

/// Builds the platform and the handlers' state, or says why the server
/// cannot start (a weak admin token, governance violations in strict
/// mode, an unreadable layout...).
pub async fn build(options: &ServeOptions, open_allowed: bool) -> anyhow::Result<AppState> {
    let admin_token = match &options.admin_token {
        Some(token) => Some(AdminToken::new(token).map_err(|reason| {
            anyhow::anyhow!(
                "refusing to start: BSM_ADMIN_TOKEN is too weak ({reason}); use a long random value, e.g. `openssl rand -hex 32`"
            )
        })?),
        None => None,
    };
    let platform = Arc::new(Platform::build(options.platform.clone()).await?);
    Ok(AppState::new(state::Shared {
        platform,
        admin_token,
        github_webhook_secret: options.github_webhook_secret.clone(),
        open_allowed,
        metrics: install_metrics_recorder(),
        requests: Arc::new(RequestCounters::default()),
        wait_timeout: wait_timeout(options.request_timeout, options.wait_timeout),
    }))
}

/// The process-wide Prometheus recorder. A second server in the same
/// process (only in embedding code) keeps the first one's recorder: its
/// `/metrics` then shows nothing, which is said once in the log.
fn install_metrics_recorder() -> metrics_exporter_prometheus::PrometheusHandle {
    use metrics_exporter_prometheus::PrometheusBuilder;
    PrometheusBuilder::new().install_recorder().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics of this server stays empty");
        PrometheusBuilder::new().build_recorder().handle()
    })
}

/// The routes of the API, one group per area.
fn routes(upload_limit: usize) -> Router<AppState> {
    let health = Router::new()
        .route("/health", get(ops::health))
        .route("/api/health", get(ops::api_health))
        .route("/api/health/detailed", get(ops::detailed_health))
        .route("/api/health/circuit-breakers", get(ops::circuit_breakers));
    let agents = Router::new()
        .route("/api/agents", get(agents::list_agents))
        .route("/api/agents/run", post(agents::run_agent))
        .route("/api/agents/{id}", get(agents::get_agent))
        .route("/api/plugins", get(agents::list_plugins))
        .route(
            "/api/plugins/{id}",
            get(agents::get_plugin)
                .put(plugins::install)
                .layer(DefaultBodyLimit::max(upload_limit))
                .delete(plugins::remove),
        )
        .route("/api/plugins/{id}/versions", get(plugins::versions))
        .route("/api/plugins/{id}/rollback", post(plugins::rollback))
        .route("/api/plugins/{id}/promote", post(plugins::promote));
    let jobs = Router::new()
        .route("/api/orchestrator/run", post(jobs::run_job))
        .route("/api/orchestrator/jobs/{id}", get(jobs::get_job))
        .route("/api/orchestrator/jobs/{id}/events", get(jobs::job_events))
        .route("/api/orchestrator/pipelines", get(jobs::pipelines))
        .route("/api/reports", get(jobs::list_reports))
        .route("/api/reports/{id}", get(jobs::get_report))
        .route("/api/approvals", get(jobs::list_approvals))
        .route("/api/approvals/{id}/approve", post(jobs::approve))
        .route("/api/approvals/{id}/reject", post(jobs::reject))
        .route("/api/webhooks/github", post(webhooks::github));
    let actions = Router::new()
        .route("/api/actions", get(actions::list))
        .route("/api/actions/{id}", get(actions::get))
        .route("/api/actions/{id}/retry", post(actions::retry));
    let keys = Router::new()
        .route("/api/keys", get(keys::list).post(keys::create))
        .route("/api/keys/{id}", axum::routing::delete(keys::revoke));
    let knowledge = Router::new()
        .route("/api/knowledge", get(knowledge::list))
        .route(
            "/api/knowledge/{collection}/documents",
            post(knowledge::upsert),
        )
        .route(
            "/api/knowledge/{collection}/documents/{id}",
            get(knowledge::get).delete(knowledge::delete),
        )
        .route(
            "/api/knowledge/{collection}/search",
            post(knowledge::search),
        );
    let operations = Router::new()
        .route("/api/cache/stats", get(ops::cache_stats))
        .route("/api/cache/clear", post(ops::clear_cache))
        .route(
            "/api/circuit-breakers/{name}/reset",
            post(ops::reset_breaker),
        )
        .route(
            "/api/circuit-breakers/{name}/isolate",
            post(ops::isolate_breaker),
        )
        .route("/api/metrics", get(ops::metrics_summary))
        .route("/metrics", get(ops::metrics));
    health
        .merge(agents)
        .merge(jobs)
        .merge(knowledge)
        .merge(keys)
        .merge(actions)
        .merge(operations)
}

/// The routes with the layers that need the matched route (metrics by
/// route, authentication by the route's scope), and the fallbacks.
pub fn router(state: AppState, options: &ServeOptions) -> Router {
    routes(options.platform.settings.plugins.upload_limit)
        .fallback(|| async { ApiError::not_found("NOT_FOUND", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this endpoint does not take that method",
            )
        })
        .route_layer(from_fn_with_state(state.clone(), routed))
        .with_state(state)
}

/// The layer inside routing: metrics by route around authentication by
/// the route's scope (one layer, for the reason [`middleware::edge`] gives).
async fn routed(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let counters = state.requests.clone();
    middleware::measured(&counters, request, |request| {
        auth::authenticate(State(state), request, next)
    })
    .await
}

/// What `bsm serve` answers with: the [`router`] inside the layers every
/// request goes through, fallbacks included (correlation id and request
/// timeout, rate limit, body limit).
///
/// They wrap the router once instead of each route (`Router::layer`): a
/// middleware clones the service inside it for every request, and inside
/// the router that is the route's boxed stack of services; around it, the
/// router's `Arc`. (Measured on `/api/agents/run`: the layers together
/// were ~10% of its CPU; wrapping once and merging them gave back a third
/// of that: BENCHMARKS.md, "The tenth pass".)
pub fn service(
    state: AppState,
    options: &ServeOptions,
) -> impl Service<Request, Response = Response, Error = Infallible, Future = impl Send + 'static>
+ Clone
+ Send
+ 'static {
    let timeout = options.request_timeout;
    let rates = ClientRates::new(
        options.rate_limit_per_second,
        options.rate_limit_burst,
        options.trusted_proxies.clone(),
    );
    if let Some(rates) = &rates {
        // Ends by itself once the service (and so the limiter) is dropped.
        rates.prune_every(options.rate_limit_prune);
    }
    let router = router(state, options);
    ServiceBuilder::new()
        .layer(from_fn(move |req: Request, next: Next| {
            middleware::edge(timeout, req, next)
        }))
        .option_layer(rates.map(|rates| from_fn_with_state(rates, rate_limit::rate_limit)))
        .layer(DefaultBodyLimit::max(options.body_limit_bytes))
        .service(router)
}

/// Runs the server until ctrl-c or SIGTERM, then lets running jobs finish
/// (up to the shutdown grace) and marks the rest interrupted.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&options.addr)
        .await
        .with_context(|| format!("cannot listen on {}", options.addr))?;
    let addr = listener.local_addr()?;
    let open_allowed = addr.ip().is_loopback() || options.allow_open;
    let state = build(&options, open_allowed).await?;
    if !open_allowed && !state.platform.api_keys().configured().await? {
        anyhow::bail!(
            "refusing to start: {addr} is not a loopback address and no API key exists, so anyone who can reach it could run every agent; create a key first (`bsm keys create NAME --context api --scope run`), or allow open access explicitly with BSM_ALLOW_OPEN=true ([server] allow-open = true)"
        );
    }
    let platform = state.platform.clone();
    let app = service(state, &options);
    // The one line on stdout: scripts and tests read the bound address here.
    println!("listening on http://{addr}");
    if let Some(hook) = options.on_listening {
        hook();
    }
    tracing::info!(%addr, "bsm serve started");
    axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(app),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    tracing::info!("shutting down: waiting for running jobs");
    let marked = platform
        .shutdown(options.shutdown_grace)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if marked > 0 {
        tracing::warn!(
            marked,
            "jobs still running after the shutdown grace are marked interrupted"
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_always_ends_before_the_request_timeout() {
        let s = Duration::from_secs;
        assert_eq!(
            wait_timeout(s(150), None),
            s(149),
            "default: the request timeout"
        );
        assert_eq!(
            wait_timeout(s(150), Some(s(30))),
            s(30),
            "a shorter wait is kept"
        );
        assert_eq!(
            wait_timeout(s(150), Some(s(600))),
            s(149),
            "a longer one is cut"
        );
        assert_eq!(
            wait_timeout(Duration::from_millis(2000), None),
            Duration::from_millis(1800)
        );
    }
}
