//! The OpenAI-protocol test server of the end-to-end tests, as a process, for
//! load tests: `cargo run --release -p bsm-cli --example llm_stub -- 50`
//! answers every chat completion after 50 ms (default 0), with the reply
//! given as the second argument (default: a review asking for the
//! `review_pr` action). It prints its base URL on stdout.

#[path = "../../../tests/common/llm_server.rs"]
mod llm_server;

use std::time::Duration;

#[tokio::main]
async fn main() {
    let latency_ms: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let server = llm_server::LlmServer::start().await;
    server.stop_recording();
    server.set_latency(Duration::from_millis(latency_ms));
    let reply = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "Reviewed: looks good to me.\nACTION: review_pr".into());
    server.set_reply(&reply);
    println!("{}", server.base_url);
    let _ = tokio::signal::ctrl_c().await;
}
