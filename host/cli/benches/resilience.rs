//! Resilience costs, side by side in one run:
//! - an LLM call while the provider hangs: failing fast on an open breaker
//!   against waiting out the configured attempt timeout;
//! - the breaker's own overhead on the closed path against a bare call;
//! - streamed chat completions from a provider answering at once, 32 in
//!   flight: through the whole stack (`LlmClient::chat`: timeouts, retry,
//!   breaker, adaptive limit, SSE parsing into a reply) against the same
//!   request sent with reqwest alone and read to its end: what the stack
//!   costs per call (the stub's own work is in both).
//!
//! Run: `cargo bench -p bsm-cli --bench resilience`

#[path = "../../../tests/common/llm_server.rs"]
mod llm_server;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bsm_llm::breaker::{BreakerConfig, CircuitBreaker};
use bsm_llm::settings::{ProviderSettings, RetrySettings, TimeoutSettings};
use bsm_llm::{LlmClient, LlmSettings};
use bsm_runtime::bindings::llm::{ChatRequest, Message, Role};
use bsm_runtime::capabilities::Caller;
use bsm_runtime::capabilities::llm::LlmEngine;
use criterion::{Criterion, criterion_group, criterion_main};
use llm_server::{Fault, LlmServer};

const ATTEMPT_TIMEOUT_MS: u64 = 200;

fn client(base_url: &str, breaker: BreakerConfig) -> LlmClient {
    let mut p = ProviderSettings::new("hanging", base_url, "m");
    p.timeouts = TimeoutSettings {
        total_ms: 10_000,
        attempt_ms: ATTEMPT_TIMEOUT_MS,
        first_token_ms: ATTEMPT_TIMEOUT_MS,
        connect_ms: 500,
    };
    let settings = LlmSettings {
        providers: vec![p],
        retry: RetrySettings {
            max_attempts: 1,
            ..RetrySettings::default()
        },
        breaker,
        ..LlmSettings::default()
    };
    LlmClient::from_settings(&settings).unwrap().unwrap()
}

fn chat(messages: Vec<Message>) -> ChatRequest {
    ChatRequest {
        messages,
        model: None,
        max_tokens: None,
        temperature: Some(0.7),
        json: false,
    }
}

fn request() -> ChatRequest {
    chat(vec![Message {
        role: Role::User,
        content: "hello".into(),
    }])
}

/// Two tokio workers with the stub LLM server on them, and a caller.
fn stub_on_two_workers() -> (tokio::runtime::Runtime, LlmServer, Caller) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(LlmServer::start());
    server.stop_recording();
    let caller = Caller {
        plugin_id: Arc::from("bench"),
        correlation_id: Arc::from("bench"),
    };
    (rt, server, caller)
}

fn hanging_upstream(c: &mut Criterion) {
    let (rt, server, caller) = stub_on_two_workers();
    server.set_default(Fault::Hang);

    // Opened the way production opens it: failed calls past the minimum.
    let open = client(
        &server.base_url,
        BreakerConfig {
            minimum_calls: 2,
            wait_in_open: Duration::from_secs(3600),
            ..BreakerConfig::default()
        },
    );
    rt.block_on(async {
        for _ in 0..2 {
            let _ = open.chat(&caller, request()).await;
        }
    });
    let waiting = client(
        &server.base_url,
        BreakerConfig {
            disabled: true,
            ..BreakerConfig::default()
        },
    );

    let mut group = c.benchmark_group("llm call, provider hanging");
    group.bench_function("breaker open: fail fast", |b| {
        b.to_async(&rt)
            .iter(|| async { assert!(open.chat(&caller, request()).await.is_err()) })
    });
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.bench_function(
        format!("no breaker: wait out the {ATTEMPT_TIMEOUT_MS} ms timeout"),
        |b| {
            b.to_async(&rt)
                .iter(|| async { assert!(waiting.chat(&caller, request()).await.is_err()) })
        },
    );
    group.finish();
}

#[inline(never)]
fn bare_call(x: u64) -> u64 {
    x.wrapping_mul(31).wrapping_add(7)
}

fn breaker_overhead(c: &mut Criterion) {
    let breaker = CircuitBreaker::new("bench", BreakerConfig::default());
    let mut group = c.benchmark_group("breaker, closed path");
    group.bench_function("bare call", |b| {
        b.iter(|| black_box(bare_call(black_box(3))))
    });
    group.bench_function("call through the breaker", |b| {
        b.iter(|| {
            let permit = breaker.try_acquire().unwrap();
            let v = black_box(bare_call(black_box(3)));
            permit.success(Duration::from_millis(1));
            v
        })
    });
    group.finish();
}

/// A review-sized request: a ~2.5 KB system prompt and a short input.
fn review_request() -> ChatRequest {
    chat(vec![
        Message {
            role: Role::System,
            content: "Review the diff in the payload as a careful senior engineer would. "
                .repeat(36),
        },
        Message {
            role: Role::User,
            content: "Review PR 1".into(),
        },
    ])
}

fn stack_per_call(c: &mut Criterion) {
    let (rt, server, caller) = stub_on_two_workers();
    let stack = rt.block_on(async {
        LlmClient::from_settings(&LlmSettings {
            providers: vec![ProviderSettings::new("stub", &server.base_url, "m")],
            ..LlmSettings::default()
        })
        .unwrap()
        .unwrap()
    });
    let bare = bsm_llm::http_client::builder().build().unwrap();
    let url = format!("{}/chat/completions", server.base_url);
    let body = bytes::Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": review_request().messages[0].content},
                {"role": "user", "content": "Review PR 1"},
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
        }))
        .unwrap(),
    );

    // Calls in flight per iteration: one call at a time would measure the
    // hand-offs between the client's, the connection's and the stub's
    // tasks (a latency), not what a call costs the host.
    const IN_FLIGHT: usize = 32;
    let bare_call = || async {
        let response = bare
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert!(!response.bytes().await.unwrap().is_empty());
    };
    let stack_call = || async {
        let reply = stack.chat(&caller, review_request()).await.unwrap();
        assert!(!reply.content.is_empty());
    };
    let mut group = c.benchmark_group(format!(
        "llm call, provider answering at once, {IN_FLIGHT} in flight"
    ));
    group.throughput(criterion::Throughput::Elements(IN_FLIGHT as u64));
    group.bench_function("bare reqwest, read to the end", |b| {
        b.to_async(&rt)
            .iter(|| futures_util::future::join_all((0..IN_FLIGHT).map(|_| bare_call())))
    });
    group.bench_function("through the stack (LlmClient::chat)", |b| {
        b.to_async(&rt)
            .iter(|| futures_util::future::join_all((0..IN_FLIGHT).map(|_| stack_call())))
    });
    group.finish();
}

criterion_group!(benches, breaker_overhead, hanging_upstream, stack_per_call);
criterion_main!(benches);
