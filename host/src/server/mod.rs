//! `bsm serve`: the HTTP API (axum) over the plugin runtime, orchestration,
//! governance and the embedded database.

pub mod agents;
pub mod error;
pub mod jobs;
pub mod middleware;
pub mod ops;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use self::error::ApiError;
use self::state::AppState;
use crate::bsm::agents::{ORIGINAL_ALLOW_LIST, manifest_for};
use crate::bsm::governance::KNOWN_CONTEXTS;
use crate::bsm::{BsmLayout, Governance};
use crate::cache::PluginCache;
use crate::capabilities::Capabilities;
use crate::capabilities::llm::{LlmEngine, Unconfigured};
use crate::knowledge_docs::KnowledgeLibrary;
use crate::llm::LlmClient;
use crate::orchestration::{Orchestrator, Pipelines};
use crate::platform::Platform;
use crate::reports::ReportStore;
use crate::runtime::{Runtime, RuntimeOptions};
use crate::settings::HostSettings;
use crate::store::Store;

/// Everything `bsm serve` needs to start.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: String,
    pub data_dir: PathBuf,
    pub plugins_dir: PathBuf,
    pub admin_token: Option<String>,
    pub bsm_dir: Option<PathBuf>,
    pub settings: HostSettings,
    /// Requests per second per client; 0 disables rate limiting.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
}

/// Builds the platform from the options, or says why it cannot start
/// (a weak admin token, governance violations, an unreadable layout...).
pub async fn build(options: &ServeOptions) -> anyhow::Result<(AppState, usize)> {
    if let Some(token) = &options.admin_token
        && let Some(reason) = middleware::weak_token_reason(token)
    {
        bail!(
            "refusing to start: BSM_ADMIN_TOKEN is too weak ({reason}); use a long random value, e.g. `openssl rand -hex 32`"
        );
    }
    let data_dir = &options.data_dir;
    let (store, interrupted) =
        Store::open(&data_dir.join("bsm.db")).map_err(|e| anyhow::anyhow!("{e}"))?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "jobs that were running when the server last stopped are marked interrupted"
        );
    }
    let reports_dir = options
        .settings
        .reports
        .dir
        .clone()
        .unwrap_or_else(|| data_dir.join("reports"));
    let reports = ReportStore::open_with_index(&reports_dir, Arc::new(store.clone()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let llm = LlmClient::from_settings(&options.settings.llm)?.map(Arc::new);
    let engine: Arc<dyn LlmEngine> = match &llm {
        Some(client) => client.clone(),
        None => {
            tracing::warn!("{}", crate::capabilities::llm::NOT_CONFIGURED);
            Arc::new(Unconfigured)
        }
    };
    let runtime = Arc::new(Runtime::new(RuntimeOptions {
        artifact_dir: Some(data_dir.join("cache").join("components")),
        capabilities: Capabilities {
            llm: engine,
            cache: Arc::new(PluginCache::new(options.settings.cache.plugin.clone())),
            reports: Some(reports.clone()),
        },
        cache: options.settings.cache.clone(),
        ..RuntimeOptions::default()
    })?);

    let report = runtime
        .load_dir(&options.plugins_dir)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for failure in &report.failed {
        tracing::error!(error = %failure, "plugin not loaded");
    }
    let mut governance = Governance::default();
    let mut knowledge_dir = None;
    if let Some(dir) = &options.bsm_dir {
        let layout = BsmLayout::load(dir)
            .with_context(|| format!("cannot load the BSM layout at {}", dir.display()))?;
        let allow_list: Vec<String> = ORIGINAL_ALLOW_LIST.iter().map(|s| s.to_string()).collect();
        governance = match Governance::from_layout(&layout, &allow_list) {
            Ok(g) => g,
            Err(violations) => {
                let list: Vec<String> = violations.iter().map(|v| format!("  - {v}")).collect();
                bail!(
                    "refusing to start: the governance registry has {} violation(s):\n{}",
                    violations.len(),
                    list.join("\n")
                );
            }
        };
        for warning in &governance.warnings {
            tracing::warn!("{warning}");
        }
        let prompt_agent = runtime.registry().get("prompt-agent").context(
            "the BSM layout needs the prompt-agent plugin, which is not in the plugins directory",
        )?;
        let bytes = tokio::fs::read(&prompt_agent.source).await?;
        for def in &layout.agents {
            let plugin = runtime
                .build_plugin(
                    manifest_for(def),
                    bytes.clone(),
                    prompt_agent.source.clone(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("agent {}: {e}", def.id))?;
            runtime.registry().install(plugin);
        }
        knowledge_dir = layout.knowledge_dir.clone();
    }
    for plugin in runtime.registry().list() {
        governance.insert_default(plugin.id(), KNOWN_CONTEXTS);
    }

    let platform = Arc::new(Platform {
        runtime,
        governance,
        store,
        reports,
        llm,
        knowledge: KnowledgeLibrary::new(&options.settings.cache.knowledge),
        knowledge_dir,
    });
    let orchestrator = Orchestrator::new(
        platform.clone(),
        Pipelines::with_overrides(&options.settings.pipelines),
    );
    let metrics = install_metrics_recorder();
    let state = AppState {
        platform,
        orchestrator,
        admin_token: options.admin_token.clone(),
        metrics,
        limiter: middleware::client_limiter(
            options.rate_limit_per_second,
            options.rate_limit_burst,
        ),
        wait_timeout: Duration::from_secs(120),
        started_at: Instant::now(),
    };
    Ok((state, interrupted))
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

/// The routes of the API.
pub fn router(state: AppState, options: &ServeOptions) -> Router {
    let timeout = options.request_timeout;
    Router::new()
        .route("/health", get(ops::health))
        .route("/api/health", get(ops::api_health))
        .route("/api/health/detailed", get(ops::detailed_health))
        .route("/api/health/circuit-breakers", get(ops::circuit_breakers))
        .route("/api/agents", get(agents::list_agents))
        .route("/api/agents/run", post(agents::run_agent))
        .route("/api/agents/{id}", get(agents::get_agent))
        .route("/api/plugins", get(agents::list_plugins))
        .route("/api/plugins/{id}", get(agents::get_plugin))
        .route("/api/orchestrator/run", post(jobs::run_job))
        .route("/api/orchestrator/jobs/{id}", get(jobs::get_job))
        .route("/api/orchestrator/jobs/{id}/events", get(jobs::job_events))
        .route("/api/orchestrator/pipelines", get(jobs::pipelines))
        .route("/api/reports", get(jobs::list_reports))
        .route("/api/reports/{id}", get(jobs::get_report))
        .route("/api/approvals", get(jobs::list_approvals))
        .route("/api/approvals/{id}/approve", post(jobs::approve))
        .route("/api/approvals/{id}/reject", post(jobs::reject))
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
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::not_found("NOT_FOUND", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this endpoint does not take that method",
            )
        })
        .route_layer(from_fn(middleware::metrics))
        .layer(DefaultBodyLimit::max(options.body_limit_bytes))
        .layer(from_fn(move |req: Request, next: Next| {
            request_timeout(timeout, req, next)
        }))
        .layer(from_fn_with_state(state.clone(), middleware::rate_limit))
        .layer(from_fn(middleware::correlation))
        .with_state(state)
}

async fn request_timeout(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "REQUEST_TIMEOUT",
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

/// Runs the server until ctrl-c or SIGTERM, then lets running jobs finish
/// (up to the shutdown grace) and marks the rest interrupted.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let (state, _) = build(&options).await?;
    let orchestrator = state.orchestrator.clone();
    let store = state.platform.store.clone();
    let app = router(state, &options);
    let listener = tokio::net::TcpListener::bind(&options.addr)
        .await
        .with_context(|| format!("cannot listen on {}", options.addr))?;
    let addr = listener.local_addr()?;
    // The one line on stdout: scripts and tests read the bound address here.
    println!("listening on http://{addr}");
    tracing::info!(%addr, "bsm serve started");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    tracing::info!("shutting down: waiting for running jobs");
    if orchestrator.shutdown(options.shutdown_grace).await > 0 {
        let marked = store
            .interrupt_running()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
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
