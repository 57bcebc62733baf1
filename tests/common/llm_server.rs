//! A real HTTP server speaking the OpenAI wire format over TCP on 127.0.0.1,
//! for tests and benchmarks: `POST /v1/chat/completions` (JSON, or
//! server-sent events when the request asks to stream) and
//! `POST /v1/embeddings`, with injectable faults.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// What the server does with the next request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// Answer with this status and an OpenAI error body.
    Status(u16),
    /// 429 with the given `Retry-After` and/or `retry-after-ms` headers.
    RateLimited {
        retry_after: Option<String>,
        retry_after_ms: Option<u64>,
    },
    /// 429 with `code: insufficient_quota`.
    InsufficientQuota,
    /// Accept the request and never answer.
    Hang,
    /// Stream, but wait this long before the first token.
    SlowFirstToken(Duration),
    /// 200 with a body that is not JSON (or a chunk that is not).
    MalformedJson,
    /// Stream two chunks, then break the connection before `[DONE]`.
    CutStream,
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub correlation_id: Option<String>,
    pub authorization: Option<String>,
    pub plugin: Option<String>,
    pub body: Value,
}

/// A reply or fault for requests whose messages contain a needle.
#[derive(Debug, Clone)]
struct Rule {
    needle: String,
    fault: Fault,
    reply: Option<String>,
}

struct Shared {
    rules: Mutex<Vec<Rule>>,
    script: Mutex<VecDeque<Fault>>,
    default_fault: Mutex<Fault>,
    reply: Mutex<String>,
    latency: Mutex<Duration>,
    seen: Mutex<Vec<Seen>>,
    record: std::sync::atomic::AtomicBool,
    hits: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The running server; stops when dropped.
pub struct LlmServer {
    pub base_url: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl LlmServer {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            rules: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            default_fault: Mutex::new(Fault::None),
            reply: Mutex::new("Hello from the test LLM.".into()),
            latency: Mutex::new(Duration::ZERO),
            seen: Mutex::new(Vec::new()),
            record: std::sync::atomic::AtomicBool::new(true),
            hits: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            shared,
            shutdown: Some(tx),
            task,
        }
    }

    /// Faults for the next requests, in order; then [`Self::set_default`].
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared.script.lock().unwrap().extend(faults);
    }

    /// What every request gets once the script is used up.
    pub fn set_default(&self, fault: Fault) {
        *self.shared.default_fault.lock().unwrap() = fault;
    }

    /// Requests whose messages contain `needle` get `reply` (first matching
    /// rule wins; rules come before the script and the default).
    pub fn reply_when(&self, needle: &str, reply: &str) {
        self.shared.rules.lock().unwrap().push(Rule {
            needle: needle.into(),
            fault: Fault::None,
            reply: Some(reply.into()),
        });
    }

    /// Requests whose messages contain `needle` get `fault`.
    pub fn fault_when(&self, needle: &str, fault: Fault) {
        self.shared.rules.lock().unwrap().push(Rule {
            needle: needle.into(),
            fault,
            reply: None,
        });
    }

    /// Forgets every rule.
    pub fn clear_rules(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// The text the model answers.
    pub fn set_reply(&self, text: &str) {
        *self.shared.reply.lock().unwrap() = text.to_string();
    }

    /// A delay before every answer (simulated model latency).
    pub fn set_latency(&self, latency: Duration) {
        *self.shared.latency.lock().unwrap() = latency;
    }

    /// Stops keeping every request (for load tests).
    pub fn stop_recording(&self) {
        self.shared.record.store(false, Ordering::Relaxed);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests received (answered or not).
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// A base URL where nothing listens (connection refused).
pub async fn refused_base_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

fn record(shared: &Shared, path: &str, headers: &HeaderMap, body: &Value) -> Fault {
    shared.hits.fetch_add(1, Ordering::SeqCst);
    if shared.record.load(Ordering::Relaxed) {
        let h = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        shared.seen.lock().unwrap().push(Seen {
            path: path.into(),
            correlation_id: h("x-correlation-id"),
            authorization: h("authorization"),
            plugin: h("x-bsm-plugin"),
            body: body.clone(),
        });
    }
    let next = shared.script.lock().unwrap().pop_front();
    next.unwrap_or_else(|| shared.default_fault.lock().unwrap().clone())
}

/// The rule matching a request's messages, if any.
fn matching_rule(shared: &Shared, body: &Value) -> Option<Rule> {
    let text = body["messages"].to_string();
    shared
        .rules
        .lock()
        .unwrap()
        .iter()
        .find(|r| text.contains(&r.needle))
        .cloned()
}

fn error_response(status: u16, kind: &str, code: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "code": code}});
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    let body: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return error_response(400, "invalid_request_error", "bad_json", &e.to_string()),
    };
    let mut fault = record(&shared, "/v1/chat/completions", &headers, &body);
    let rule = matching_rule(&shared, &body);
    if let Some(rule) = &rule {
        fault = rule.fault.clone();
    }
    let _in_flight = InFlight::enter(&shared);
    let latency = *shared.latency.lock().unwrap();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let model = body["model"].as_str().unwrap_or("test-model").to_string();
    let reply = rule
        .and_then(|r| r.reply)
        .unwrap_or_else(|| shared.reply.lock().unwrap().clone());
    let stream = body["stream"].as_bool().unwrap_or(false);
    match fault {
        Fault::Status(status) => error_response(
            status,
            "server_error",
            "upstream_failure",
            "the test server fails on purpose",
        ),
        Fault::RateLimited {
            retry_after,
            retry_after_ms,
        } => {
            let mut response = error_response(429, "rate_limit_error", "rate_limited", "slow down");
            if let Some(v) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, v.parse().unwrap());
            }
            if let Some(ms) = retry_after_ms {
                response
                    .headers_mut()
                    .insert("retry-after-ms", ms.to_string().parse().unwrap());
            }
            response
        }
        Fault::InsufficientQuota => error_response(
            429,
            "insufficient_quota",
            "insufficient_quota",
            "You exceeded your current quota",
        ),
        Fault::Hang => std::future::pending().await,
        Fault::MalformedJson if !stream => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"choices\": [",
        )
            .into_response(),
        _ if !stream => {
            let body = json!({
                "id": "chatcmpl-test", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
            });
            axum::Json(body).into_response()
        }
        fault => sse(model, reply, fault),
    }
}

/// The reply as OpenAI streams it: a role chunk, content chunks, a usage
/// chunk, `[DONE]`, each as a server-sent event.
fn sse(model: String, reply: String, fault: Fault) -> Response {
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut events = vec![chunk(json!({"role": "assistant"}), Value::Null)];
    let words: Vec<String> = reply.split_inclusive(' ').map(String::from).collect();
    for w in &words {
        events.push(chunk(json!({"content": w}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    events.push(format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": model, "choices": [],
               "usage": {"prompt_tokens": 11, "completion_tokens": words.len(), "total_tokens": 11 + words.len()}})
    ));
    events.push("data: [DONE]\n\n".to_string());

    let stream = async_stream(events, fault);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn async_stream(
    events: Vec<String>,
    fault: Fault,
) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> {
    futures_util::stream::unfold((0usize, events, fault), |(i, events, fault)| async move {
        if i >= events.len() {
            return None;
        }
        match &fault {
            Fault::SlowFirstToken(delay) if i == 1 => tokio::time::sleep(*delay).await,
            Fault::CutStream if i == 3 => {
                let err =
                    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut on purpose");
                return Some((Err(err), (usize::MAX, events, fault)));
            }
            Fault::MalformedJson if i == 1 => {
                return Some((
                    Ok("data: {\"choices\": [\n\n".to_string()),
                    (i + 1, events, fault),
                ));
            }
            _ => {}
        }
        let item = events[i].clone();
        Some((Ok(item), (i + 1, events, fault)))
    })
}

async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let fault = record(&shared, "/v1/embeddings", &headers, &body);
    if let Fault::Status(status) = fault {
        return error_response(
            status,
            "server_error",
            "upstream_failure",
            "fails on purpose",
        );
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![],
    };
    // A deterministic toy embedding: letter frequencies of a, b, c.
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let count = |ch: char| text.chars().filter(|c| *c == ch).count() as f32;
            json!({"object": "embedding", "index": i, "embedding": [count('a'), count('b'), count('c')]})
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data, "model": body["model"]})).into_response()
}
