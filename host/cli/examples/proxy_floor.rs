//! The floor of this machine for the shape of BSM's two busiest routes:
//! what a server costs that does only the part of them no implementation
//! can skip, with the same libraries (axum, hyper, reqwest, tokio,
//! mimalloc). It answers the routes `bsm serve` answers in the load
//! scripts, so that `host/cli/benches/side_by_side.sh` runs it beside
//! `bsm` like any other build:
//!
//! - `POST /api/agents/run`: one streamed chat completion to the LLM (the
//!   request BSM's provider sends), the whole answer read, a small JSON
//!   reply: no plugin, knowledge search, outbox or governance;
//! - `POST /api/orchestrator/run`: four such completions at once, then the
//!   reply: no decision step, job record, report or event history.
//!
//! Like `bsm serve` it reads `BSM_ADDR` and `BSM_LLM_BASE_URL` and prints
//! `listening on URL`; arguments are ignored. What `bsm` reaches beside it
//! is the share of the machine left to BSM's own work, and a target above
//! this floor cannot be met on the machine at all.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use futures_util::future::join_all;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The chat request BSM's provider sends for a review: the same fields,
/// and a system prompt of the size of `code-review-agent`'s with its
/// knowledge (~2.5 KB of request).
fn chat_request() -> Vec<u8> {
    let system = "Review the diff in the payload as a careful senior engineer would. ".repeat(36);
    serde_json::to_vec(&serde_json::json!({
        "model": "stub",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "Review PR 1"},
        ],
        "stream": true,
        "stream_options": {"include_usage": true},
    }))
    .expect("a JSON value serialises")
}

#[derive(Clone)]
struct Upstream {
    http: reqwest::Client,
    chat_url: reqwest::Url,
    chat: Bytes,
}

impl Upstream {
    /// One completion, read to its end; the bytes it answered.
    async fn complete(&self) -> Result<usize, String> {
        let response = self
            .http
            .post(self.chat_url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.chat.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("the LLM answered {}", response.status()));
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        Ok(body.len())
    }
}

fn reply(results: Vec<Result<usize, String>>) -> impl IntoResponse {
    match results.into_iter().collect::<Result<Vec<_>, _>>() {
        Ok(bytes) => (
            StatusCode::OK,
            format!(r#"{{"ok":true,"bytes":{bytes:?}}}"#),
        ),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!(r#"{{"ok":false,"error":{e:?}}}"#),
        ),
    }
}

async fn agent(State(up): State<Upstream>, _body: Bytes) -> impl IntoResponse {
    reply(vec![up.complete().await])
}

async fn fanout(State(up): State<Upstream>, _body: Bytes) -> impl IntoResponse {
    reply(join_all((0..4).map(|_| up.complete())).await)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::var("BSM_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:0".into())
        .parse()?;
    let base = std::env::var("BSM_LLM_BASE_URL")?;
    let upstream = Upstream {
        http: bsm_llm::http_client::builder()
            .pool_max_idle_per_host(4096)
            .build()?,
        chat_url: format!("{}/chat/completions", base.trim_end_matches('/')).parse()?,
        chat: chat_request().into(),
    };
    let app = Router::new()
        .route("/api/agents/run", post(agent))
        .route("/api/orchestrator/run", post(fanout))
        .with_state(upstream);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
