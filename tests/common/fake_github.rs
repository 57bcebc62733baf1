//! A local fake of the GitHub REST API (the parts the `github-actions`
//! handler uses) and a generic webhook receiver, over real HTTP on a free
//! port of 127.0.0.1: it keeps comments, records every call (with its
//! headers and body), and fails on demand. Stopped when dropped.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    /// (id, issue number, body)
    comments: Vec<(u64, u64, String)>,
    /// Answer this status to the next `n` calls.
    failing: Option<(u16, usize)>,
    /// Wait this long before answering.
    delay_ms: u64,
}

/// The fake GitHub and webhook receiver.
#[derive(Clone)]
pub struct FakeGitHub {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    _shutdown: Arc<tokio::sync::oneshot::Sender<()>>,
}

impl FakeGitHub {
    pub async fn start() -> Self {
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let app = Router::new()
            .route("/{*path}", any(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            url,
            inner,
            _shutdown: Arc::new(tx),
        }
    }

    /// `host:port`, as a manifest grants it.
    pub fn host(&self) -> String {
        self.url.clone()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Calls whose method and path match.
    pub fn calls_to(&self, method: &str, path_contains: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && c.path.contains(path_contains))
            .collect()
    }

    /// The comments of an issue or pull request.
    pub fn comments(&self, number: u64) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .comments
            .iter()
            .filter(|(_, n, _)| *n == number)
            .map(|(_, _, b)| b.clone())
            .collect()
    }

    /// Answers `status` to the next `n` calls.
    pub fn fail_next(&self, status: u16, n: usize) {
        self.inner.lock().unwrap().failing = (n > 0).then_some((status, n));
    }

    pub fn set_delay_ms(&self, ms: u64) {
        self.inner.lock().unwrap().delay_ms = ms;
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    Path(_path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let call = Call {
        method: method.to_string(),
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body.to_vec(),
    };
    let delay = {
        let mut inner = inner.lock().unwrap();
        inner.calls.push(call.clone());
        inner.delay_ms
    };
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let mut inner = inner.lock().unwrap();
    if let Some((status, n)) = inner.failing {
        inner.failing = (n > 1).then_some((status, n - 1));
        let status = StatusCode::from_u16(status).unwrap();
        return (status, axum::Json(json!({"message": "failing on demand"}))).into_response();
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["repos", _, _, "issues", n, "comments"]) => {
            let n: u64 = n.parse().unwrap_or(0);
            let list: Vec<Value> = inner
                .comments
                .iter()
                .filter(|(_, issue, _)| *issue == n)
                .map(|(id, _, b)| json!({"id": id, "body": b}))
                .collect();
            axum::Json(Value::Array(list)).into_response()
        }
        ("POST", ["repos", _, _, "issues", n, "comments"]) => {
            let id = inner.comments.len() as u64 + 1000;
            let n: u64 = n.parse().unwrap_or(0);
            let text = call.body["body"].as_str().unwrap_or_default().to_string();
            inner.comments.push((id, n, text));
            (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response()
        }
        ("PATCH", ["repos", _, _, "issues", "comments", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let text = call.body["body"].as_str().unwrap_or_default().to_string();
            match inner.comments.iter_mut().find(|(cid, _, _)| *cid == id) {
                Some(c) => {
                    c.2 = text;
                    axum::Json(json!({"id": id})).into_response()
                }
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }
        ("PUT", ["repos", _, _, "pulls", _, "merge"]) => {
            axum::Json(json!({"merged": true})).into_response()
        }
        ("POST", ["repos", _, _, "pulls", _, "reviews"])
        | ("POST", ["repos", _, _, "issues", _, "labels"])
        | ("POST", ["repos", _, _, "statuses", _]) => {
            (StatusCode::CREATED, axum::Json(json!({"ok": true}))).into_response()
        }
        ("POST", ["hooks", ..]) => StatusCode::NO_CONTENT.into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": "Not Found"})),
        )
            .into_response(),
    }
}
