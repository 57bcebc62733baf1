//! Cross-cutting request handling: correlation ids and the request timeout
//! at the edge, request metrics inside routing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, CORRELATION_ID};

/// The header carrying a request's correlation id, both ways.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The first layer of every request: takes the caller's correlation id (if
/// sane) or makes one, makes it visible to handlers, logs and plugins and
/// returns it in the response; and answers 503 `REQUEST_TIMEOUT` when the
/// request takes longer than `limit`. One layer, not two: each layer costs
/// every request a clone of the service inside it and boxed futures.
pub async fn edge(limit: Duration, request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(bsm_platform::runtime::api::new_correlation_id);
    let span = tracing::info_span!("request", correlation_id = %id, method = %request.method(), path = %request.uri().path());
    let answer = CORRELATION_ID.scope(
        id.clone(),
        tracing::Instrument::instrument(
            async move {
                match tokio::time::timeout(limit, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "REQUEST_TIMEOUT",
                        format!("the request took longer than {} ms", limit.as_millis()),
                    )
                    .into_response(),
                }
            },
            span,
        ),
    );
    let mut response = answer.await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(CORRELATION_HEADER, v);
    }
    response
}

/// Requests by status class, for the JSON summary of `/api/metrics`
/// (Prometheus has them per route).
#[derive(Default)]
pub struct RequestCounters {
    pub total: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
    /// Each route's metric handles by method, registered with the recorder
    /// on the route's first request: building the labelled keys and
    /// looking them up in the recorder on every request cost ~1.5% of
    /// `/api/agents/run`'s CPU. Bounded: routes are the router's templates
    /// and methods outside the standard ones count as `OTHER`.
    routes: RwLock<HashMap<String, Vec<Arc<RouteMetrics>>>>,
}

impl RequestCounters {
    /// The handles of `route` and `method`, registered on first use.
    fn route(&self, route: &str, method: &'static str) -> Arc<RouteMetrics> {
        let known = |routes: &HashMap<String, Vec<Arc<RouteMetrics>>>| {
            routes
                .get(route)
                .and_then(|by_method| by_method.iter().find(|m| m.method == method).cloned())
        };
        if let Some(found) = known(&self.routes.read().unwrap_or_else(PoisonError::into_inner)) {
            return found;
        }
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = known(&routes) {
            return found;
        }
        let registered = Arc::new(RouteMetrics::register(route, method));
        routes
            .entry(route.to_string())
            .or_default()
            .push(registered.clone());
        registered
    }
}

/// One route and method's request counters (by status) and latency.
struct RouteMetrics {
    route: String,
    method: &'static str,
    duration: metrics::Histogram,
    by_status: Mutex<Vec<(StatusCode, metrics::Counter)>>,
}

impl RouteMetrics {
    fn register(route: &str, method: &'static str) -> Self {
        let labels = [("route", route.to_string()), ("method", method.to_string())];
        Self {
            route: route.to_string(),
            method,
            duration: metrics::histogram!("bsm_http_request_duration_seconds", &labels),
            by_status: Mutex::default(),
        }
    }

    /// The counter of answers with `status`, registered on first use.
    fn answered(&self, status: StatusCode) -> metrics::Counter {
        let mut by_status = self
            .by_status
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, counter)) = by_status.iter().find(|(s, _)| *s == status) {
            return counter.clone();
        }
        let labels = [
            ("route", self.route.clone()),
            ("method", self.method.to_string()),
            ("status", status.as_u16().to_string()),
        ];
        let counter = metrics::counter!("bsm_http_requests_total", &labels);
        by_status.push((status, counter.clone()));
        counter
    }
}

/// The method as a label: the standard ones by name, any other as
/// `OTHER`, so that a client inventing methods cannot grow the metrics.
fn method_label(method: &Method) -> &'static str {
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PATCH, "PATCH"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    STANDARD
        .iter()
        .find(|(m, _)| m == method)
        .map_or("OTHER", |(_, name)| name)
}

/// Counts the request (by route, method and status) and its latency
/// around `inner`, the rest of its handling.
pub async fn measured<F>(
    counters: &RequestCounters,
    request: Request,
    inner: impl FnOnce(Request) -> F,
) -> Response
where
    F: Future<Output = Response>,
{
    let route = counters.route(
        request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str),
        method_label(request.method()),
    );
    let started = Instant::now();
    let response = inner(request).await;
    let status = response.status();
    counters.total.fetch_add(1, Ordering::Relaxed);
    if status.is_client_error() {
        counters.client_errors.fetch_add(1, Ordering::Relaxed);
    } else if status.is_server_error() {
        counters.server_errors.fetch_add(1, Ordering::Relaxed);
    }
    route.answered(status).increment(1);
    route.duration.record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::middleware::from_fn;
    use axum::routing::get;
    use tower::ServiceExt;

    fn behind_the_edge(limit: Duration) -> Router {
        Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route("/id", get(|| async { crate::error::correlation_id() }))
            .layer(from_fn(move |req: Request, next: Next| {
                edge(limit, req, next)
            }))
    }

    async fn json(response: Response) -> serde_json::Value {
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn a_request_past_the_limit_is_answered_503_request_timeout_under_its_correlation_id() {
        let request = Request::get("/slow")
            .header(CORRELATION_HEADER, "corr-slow")
            .body(Body::empty())
            .unwrap();
        let response = behind_the_edge(Duration::from_millis(50))
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[CORRELATION_HEADER], "corr-slow");
        let body = json(response).await;
        assert_eq!(body["error"]["code"], "REQUEST_TIMEOUT", "{body}");
        assert_eq!(body["error"]["correlationId"], "corr-slow", "{body}");
    }

    #[tokio::test]
    async fn a_request_without_a_sane_correlation_id_gets_a_fresh_one_its_handler_sees_too() {
        for given in [None, Some("has space"), Some("")] {
            let mut request = Request::get("/id");
            if let Some(given) = given {
                request = request.header(CORRELATION_HEADER, given);
            }
            let response = behind_the_edge(Duration::from_secs(5))
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let header = response.headers()[CORRELATION_HEADER]
                .to_str()
                .unwrap()
                .to_string();
            assert_eq!(header.len(), 36, "a UUID: {header:?}");
            let seen = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            assert_eq!(seen, header.as_bytes(), "the handler's id is the answer's");
        }
    }

    #[test]
    fn metric_handles_are_registered_once_per_route_and_method() {
        let counters = RequestCounters::default();
        let first = counters.route("/api/agents/run", "POST");
        let again = counters.route("/api/agents/run", "POST");
        let other_method = counters.route("/api/agents/run", "GET");
        assert!(Arc::ptr_eq(&first, &again));
        assert!(!Arc::ptr_eq(&first, &other_method));
        assert_eq!(counters.routes.read().unwrap()["/api/agents/run"].len(), 2);
    }

    #[test]
    fn methods_invented_by_a_client_share_one_label_and_cannot_grow_the_metrics() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let counters = RequestCounters::default();
        for invented in ["FOO", "BAR", "X-PURGE"] {
            let method = Method::from_bytes(invented.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "OTHER");
            counters.route("/api/agents", method_label(&method));
        }
        assert_eq!(counters.routes.read().unwrap()["/api/agents"].len(), 1);
    }
}
