//! What every handler shares.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use super::middleware::ClientLimiter;
use crate::orchestration::Orchestrator;
use crate::platform::Platform;

/// The application state handed to handlers.
#[derive(Clone)]
pub struct AppState {
    pub platform: Arc<Platform>,
    pub orchestrator: Arc<Orchestrator>,
    pub admin_token: Option<String>,
    pub metrics: PrometheusHandle,
    pub limiter: Option<Arc<ClientLimiter>>,
    /// How long `?wait=true` waits for a job.
    pub wait_timeout: std::time::Duration,
    pub started_at: std::time::Instant,
}
