//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use bsm_platform::Platform;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::SecretString;

use crate::admin::AdminToken;
use crate::middleware::RequestCounters;

/// The application state handed to handlers: the platform facade plus what
/// only the HTTP layer needs. One `Arc`: axum clones the state for every
/// request, which cloned (and, on drop, zeroized) the webhook secret and
/// counted three references each time.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub platform: Arc<Platform>,
    /// `None`: the admin endpoints are disabled.
    pub admin_token: Option<AdminToken>,
    /// `None`: the GitHub webhook endpoint is off.
    pub github_webhook_secret: Option<SecretString>,
    /// Whether callers without credentials are served while no API key
    /// exists (loopback, or explicitly allowed).
    pub open_allowed: bool,
    pub metrics: PrometheusHandle,
    pub requests: Arc<RequestCounters>,
    /// How long `?wait=true` waits for a job.
    pub wait_timeout: Duration,
}
