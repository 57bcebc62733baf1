//! The LLM client against a real OpenAI-protocol HTTP server on 127.0.0.1,
//! with injected faults: each error classification, retry, the breaker,
//! fallback, the response cache, and `prompt-agent` end to end.

mod common;
#[path = "common/llm_server.rs"]
mod llm_server;

use std::sync::Arc;
use std::time::Duration;

use bsm_llm::adaptive_limit::AdaptiveSettings;
use bsm_llm::breaker::{BreakerConfig, SlidingWindow, State};
use bsm_llm::settings::{ProviderSettings, RetrySettings, TimeoutSettings};
use bsm_llm::{LlmClient, LlmSettings};
use bsm_runtime::api::{AgentRequest, RunContext};
use bsm_runtime::bindings::llm::{ChatRequest, Error as LlmError, Message, Role};
use bsm_runtime::capabilities::llm::LlmEngine;
use bsm_runtime::capabilities::{Caller, Capabilities};
use common::*;
use llm_server::{Fault, LlmServer, refused_base_url};
use serde_json::json;

fn provider(name: &str, base_url: &str) -> ProviderSettings {
    let mut p = ProviderSettings::new(name, base_url, "test-model");
    p.timeouts = TimeoutSettings {
        total_ms: 10_000,
        attempt_ms: 2_000,
        first_token_ms: 1_000,
        connect_ms: 500,
    };
    p
}

fn settings(providers: Vec<ProviderSettings>) -> LlmSettings {
    LlmSettings {
        providers,
        retry: RetrySettings {
            max_attempts: 3,
            initial_backoff_ms: 10,
            max_backoff_ms: 50,
            max_retry_after_ms: 2_000,
            ..RetrySettings::default()
        },
        breaker: BreakerConfig {
            minimum_calls: 100,
            ..BreakerConfig::default()
        },
        ..LlmSettings::default()
    }
}

fn client(settings: LlmSettings) -> LlmClient {
    LlmClient::from_settings(&settings)
        .unwrap()
        .expect("a provider is configured")
}

fn caller() -> Caller {
    Caller {
        plugin_id: Arc::from("test-plugin"),
        correlation_id: Arc::from("corr-42"),
    }
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message {
                role: Role::System,
                content: "Be brief.".into(),
            },
            Message {
                role: Role::User,
                content: text.into(),
            },
        ],
        model: None,
        max_tokens: Some(64),
        temperature: Some(0.3),
        json: false,
    }
}

#[tokio::test]
async fn streams_a_completion_carrying_correlation_id_and_key() {
    let server = LlmServer::start().await;
    server.set_reply("Hello there, plugin.");
    let mut p = provider("p", &server.base_url);
    p.api_key = Some("sk-test".into());
    let client = client(settings(vec![p]));
    let reply = client.chat(&caller(), ask("hi")).await.unwrap();
    assert_eq!(reply.content, "Hello there, plugin.");
    assert_eq!(reply.model, "test-model");
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    assert_eq!(reply.usage.prompt_tokens, 11);

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].correlation_id.as_deref(), Some("corr-42"));
    assert_eq!(seen[0].plugin.as_deref(), Some("test-plugin"));
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(seen[0].body["stream"], true);
    assert_eq!(
        seen[0].body["messages"][1],
        json!({"role": "user", "content": "hi"})
    );
    assert_eq!(seen[0].body["max_tokens"], 64);
}

#[tokio::test]
async fn answers_without_streaming_when_configured_so() {
    let server = LlmServer::start().await;
    let mut p = provider("p", &server.base_url);
    p.stream = false;
    let reply = client(settings(vec![p]))
        .chat(&caller(), ask("hi"))
        .await
        .unwrap();
    assert_eq!(reply.content, "Hello from the test LLM.");
    assert_eq!(reply.usage.completion_tokens, 5);
    assert_eq!(server.seen()[0].body["stream"], false);
}

#[tokio::test]
async fn server_errors_are_retried_and_counted_as_failures() {
    let server = LlmServer::start().await;
    server.script([Fault::Status(500), Fault::Status(503)]);
    let client = client(settings(vec![provider("p", &server.base_url)]));
    let reply = client.chat(&caller(), ask("hi")).await.unwrap();
    assert_eq!(reply.content, "Hello from the test LLM.");
    assert_eq!(server.hits(), 3);
    let snap = client.breakers().next().unwrap().snapshot();
    assert_eq!((snap.buffered_calls, snap.failed_calls), (3, 2));
}

#[tokio::test]
async fn retries_stop_at_max_attempts_with_the_providers_error() {
    let server = LlmServer::start().await;
    server.set_default(Fault::Status(503));
    let err = client(settings(vec![provider("p", &server.base_url)]))
        .chat(&caller(), ask("hi"))
        .await
        .unwrap_err();
    match err {
        LlmError::Provider(e) => {
            assert_eq!(e.status, Some(503));
            assert_eq!(
                e.message, "the test server fails on purpose",
                "the provider's own message is kept"
            );
            assert_eq!(e.code.as_deref(), Some("upstream_failure"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn rate_limits_are_retried_after_retry_after_and_do_not_trip_the_breaker() {
    let server = LlmServer::start().await;
    server.script([
        Fault::RateLimited {
            retry_after: Some("0".into()),
            retry_after_ms: Some(30),
        },
        Fault::RateLimited {
            retry_after: Some("0".into()),
            retry_after_ms: None,
        },
    ]);
    let client = client(settings(vec![provider("p", &server.base_url)]));
    client.chat(&caller(), ask("hi")).await.unwrap();
    assert_eq!(server.hits(), 3);
    let snap = client.breakers().next().unwrap().snapshot();
    assert_eq!(
        (snap.buffered_calls, snap.failed_calls),
        (1, 0),
        "429s are not failures"
    );
}

#[tokio::test]
async fn a_long_retry_after_is_capped() {
    let server = LlmServer::start().await;
    server.script([Fault::RateLimited {
        retry_after: Some("3600".into()),
        retry_after_ms: None,
    }]);
    let mut s = settings(vec![provider("p", &server.base_url)]);
    s.retry.max_retry_after_ms = 20;
    // Without the cap this would wait an hour (and the test would time out).
    client(s).chat(&caller(), ask("hi")).await.unwrap();
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn persistent_rate_limiting_is_reported_with_the_retry_hint() {
    let server = LlmServer::start().await;
    server.set_default(Fault::RateLimited {
        retry_after: None,
        retry_after_ms: Some(40),
    });
    let err = client(settings(vec![provider("p", &server.base_url)]))
        .chat(&caller(), ask("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::RateLimited(Some(40))), "{err:?}");
}

#[tokio::test]
async fn insufficient_quota_is_permanent_not_retried_not_counted() {
    let server = LlmServer::start().await;
    server.set_default(Fault::InsufficientQuota);
    let client = client(settings(vec![provider("p", &server.base_url)]));
    match client.chat(&caller(), ask("hi")).await.unwrap_err() {
        LlmError::Provider(e) => assert_eq!(e.code.as_deref(), Some("insufficient_quota")),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.hits(), 1);
    assert_eq!(
        client.breakers().next().unwrap().snapshot().buffered_calls,
        0
    );
}

#[tokio::test]
async fn other_client_errors_are_permanent_and_do_not_fall_back() {
    let primary = LlmServer::start().await;
    let secondary = LlmServer::start().await;
    primary.set_default(Fault::Status(400));
    let client = client(settings(vec![
        provider("a", &primary.base_url),
        provider("b", &secondary.base_url),
    ]));
    assert!(matches!(
        client.chat(&caller(), ask("hi")).await.unwrap_err(),
        LlmError::InvalidRequest(_)
    ));
    assert_eq!((primary.hits(), secondary.hits()), (1, 0));
    assert_eq!(client.breakers().next().unwrap().snapshot().failed_calls, 0);
}

#[tokio::test]
async fn a_hanging_upstream_times_out_and_counts_as_a_failure() {
    let server = LlmServer::start().await;
    server.set_default(Fault::Hang);
    let mut p = provider("p", &server.base_url);
    p.timeouts.first_token_ms = 150;
    let mut s = settings(vec![p]);
    s.retry.max_attempts = 1;
    let client = client(s);
    assert!(matches!(
        client.chat(&caller(), ask("hi")).await.unwrap_err(),
        LlmError::Timeout
    ));
    assert_eq!(client.breakers().next().unwrap().snapshot().failed_calls, 1);
}

#[tokio::test]
async fn a_slow_first_token_is_a_slow_call() {
    let server = LlmServer::start().await;
    server.script([Fault::SlowFirstToken(Duration::from_millis(120))]);
    let mut p = provider("p", &server.base_url);
    p.breaker = Some(BreakerConfig {
        slow_call_duration: Duration::from_millis(60),
        minimum_calls: 100,
        ..BreakerConfig::default()
    });
    let client = client(settings(vec![p]));
    client.chat(&caller(), ask("hi")).await.unwrap();
    let snap = client.breakers().next().unwrap().snapshot();
    assert_eq!((snap.slow_calls, snap.failed_calls), (1, 0));
}

#[tokio::test]
async fn a_first_token_later_than_its_timeout_fails_the_attempt() {
    let server = LlmServer::start().await;
    server.script([Fault::SlowFirstToken(Duration::from_secs(5))]);
    let mut p = provider("p", &server.base_url);
    p.timeouts.first_token_ms = 100;
    let client = client(settings(vec![p]));
    // The first attempt times out; the retry gets a normal answer.
    assert_eq!(
        client.chat(&caller(), ask("hi")).await.unwrap().content,
        "Hello from the test LLM."
    );
    assert_eq!(client.breakers().next().unwrap().snapshot().failed_calls, 1);
}

#[tokio::test]
async fn malformed_json_is_a_failure_in_both_modes() {
    for stream in [false, true] {
        let server = LlmServer::start().await;
        server.set_default(Fault::MalformedJson);
        let mut p = provider("p", &server.base_url);
        p.stream = stream;
        let client = client(settings(vec![p]));
        match client.chat(&caller(), ask("hi")).await.unwrap_err() {
            LlmError::Provider(e) => assert!(e.message.contains("malformed"), "{}", e.message),
            other => panic!("stream={stream}: {other:?}"),
        }
        assert_eq!(
            client.breakers().next().unwrap().snapshot().failed_calls,
            3,
            "stream={stream}"
        );
    }
}

#[tokio::test]
async fn a_stream_cut_midway_is_a_failure_and_retried() {
    let server = LlmServer::start().await;
    server.script([Fault::CutStream]);
    server.set_reply("one two three four five");
    let client = client(settings(vec![provider("p", &server.base_url)]));
    let reply = client.chat(&caller(), ask("hi")).await.unwrap();
    assert_eq!(
        reply.content, "one two three four five",
        "the half-received answer was discarded"
    );
    assert_eq!(client.breakers().next().unwrap().snapshot().failed_calls, 1);
}

#[tokio::test]
async fn connection_refused_is_a_failure_and_the_next_provider_answers() {
    let refused = refused_base_url().await;
    let backup = LlmServer::start().await;
    backup.set_reply("from the backup");
    let client = client(settings(vec![
        provider("dead", &refused),
        provider("backup", &backup.base_url),
    ]));
    let reply = client.chat(&caller(), ask("hi")).await.unwrap();
    assert_eq!(reply.content, "from the backup");
    let dead = client.breaker("dead").unwrap().snapshot();
    assert_eq!(dead.failed_calls, 3);
    let only_dead = self::client(settings(vec![provider("dead", &refused)]));
    match only_dead.chat(&caller(), ask("hi")).await.unwrap_err() {
        LlmError::Provider(e) => assert!(e.message.contains("cannot connect"), "{}", e.message),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_open_breaker_fails_fast_without_calling_the_provider() {
    let server = LlmServer::start().await;
    server.set_default(Fault::Status(500));
    let mut s = settings(vec![provider("p", &server.base_url)]);
    s.retry.max_attempts = 1;
    s.breaker = BreakerConfig {
        sliding_window: SlidingWindow::CountBased { size: 4 },
        minimum_calls: 2,
        wait_in_open: Duration::from_secs(60),
        ..BreakerConfig::default()
    };
    let client = client(s);
    for _ in 0..2 {
        assert!(matches!(
            client.chat(&caller(), ask("hi")).await.unwrap_err(),
            LlmError::Provider(_)
        ));
    }
    assert_eq!(client.breaker("p").unwrap().state(), State::Open);
    let hits = server.hits();
    match client.chat(&caller(), ask("hi")).await.unwrap_err() {
        LlmError::CircuitOpen(ms) => assert!(ms > 50_000 && ms <= 60_000, "{ms}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.hits(), hits, "no request reached the provider");

    client.breaker("llm:p").unwrap().reset();
    server.set_default(Fault::None);
    assert!(client.chat(&caller(), ask("hi")).await.is_ok());
}

#[tokio::test]
async fn identical_deterministic_requests_are_answered_once() {
    let server = LlmServer::start().await;
    let client = Arc::new(client(settings(vec![provider("p", &server.base_url)])));
    let mut deterministic = ask("same question");
    deterministic.temperature = Some(0.0);
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (client, request) = (client.clone(), deterministic.clone());
            tokio::spawn(async move { client.chat(&caller(), request).await.unwrap().content })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), "Hello from the test LLM.");
    }
    assert_eq!(
        server.hits(),
        1,
        "20 identical temperature-0 requests, one upstream call"
    );
    client.chat(&caller(), ask("same question")).await.unwrap();
    client.chat(&caller(), ask("same question")).await.unwrap();
    assert_eq!(
        server.hits(),
        3,
        "non-deterministic requests are never cached"
    );
}

#[tokio::test]
async fn models_the_provider_does_not_serve_become_its_default() {
    let server = LlmServer::start().await;
    let mut p = provider("p", &server.base_url);
    p.models = vec!["gpt-4o".into()];
    let client = client(settings(vec![p]));
    let mut r = ask("hi");
    r.model = Some("gpt-4o".into());
    client.chat(&caller(), r.clone()).await.unwrap();
    r.model = Some("gpt-4o-mini".into());
    client.chat(&caller(), r).await.unwrap();
    let models: Vec<_> = server
        .seen()
        .iter()
        .map(|s| s.body["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(models, ["gpt-4o", "test-model"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_ceiling_caps_concurrent_upstream_calls() {
    let server = LlmServer::start().await;
    server.set_latency(Duration::from_millis(50));
    let mut p = provider("p", &server.base_url);
    p.max_concurrent = Some(2);
    let client = Arc::new(client(settings(vec![p])));
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.chat(&caller(), ask(&format!("q{i}"))).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(server.hits(), 10);
    assert_eq!(
        server.max_in_flight(),
        2,
        "never more than max-concurrent upstream calls at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_grows_with_a_slow_healthy_provider_and_shrinks_on_429s() {
    let server = LlmServer::start().await;
    server.set_latency(Duration::from_millis(100));
    let mut p = provider("p", &server.base_url);
    p.concurrency = AdaptiveSettings {
        initial: 4,
        min: 2,
        max: 64,
        ..AdaptiveSettings::default()
    };
    let client = Arc::new(client(settings(vec![p])));
    let provider = &client.providers()[0];
    let burst = |n: usize, tag: &'static str| {
        let client = client.clone();
        async move {
            let calls: Vec<_> = (0..n)
                .map(|i| {
                    let client = client.clone();
                    tokio::spawn(
                        async move { client.chat(&caller(), ask(&format!("{tag}{i}"))).await },
                    )
                })
                .collect();
            let mut failures = 0;
            for c in calls {
                failures += c.await.unwrap().is_err() as usize;
            }
            failures
        }
    };
    assert_eq!(burst(64, "grow").await, 0);
    let grown = provider.concurrency().limit();
    assert!(
        grown > 4,
        "a healthy provider under load lets the limit grow: {grown}"
    );
    assert!(server.max_in_flight() > 4, "and more calls go out at once");

    server.set_default(Fault::RateLimited {
        retry_after: None,
        retry_after_ms: Some(1),
    });
    burst(16, "shrink").await;
    let shrunk = provider.concurrency().limit();
    assert!(shrunk < grown, "429s shrink it: {grown} -> {shrunk}");
    assert!(shrunk >= 2, "never under the floor");
}

#[tokio::test]
async fn embeddings_come_back_in_order() {
    let server = LlmServer::start().await;
    let client = client(settings(vec![provider("p", &server.base_url)]));
    let v = client
        .embed(&caller(), None, vec!["aab".into(), "c".into()])
        .await
        .unwrap();
    assert_eq!(v, vec![vec![2.0, 1.0, 0.0], vec![0.0, 0.0, 1.0]]);
}

#[test]
fn no_provider_means_no_client() {
    assert!(
        LlmClient::from_settings(&LlmSettings::default())
            .unwrap()
            .is_none()
    );
}

// ---- prompt-agent end to end, through the sandbox ----

async fn prompt_agent_runtime(
    server: &LlmServer,
    budget: &str,
) -> (bsm_runtime::Runtime, tempfile::TempDir) {
    let llm = client(settings(vec![provider("p", &server.base_url)]));
    let runtime = runtime_with(Capabilities::with_llm(Arc::new(llm)));
    let dir = tempfile::tempdir().unwrap();
    let manifest = plugin_with_manifest(
        dir.path(),
        &shipped_dir().join("prompt-agent.wasm"),
        &format!(
            r#"id = "security-agent"
version = "2"
kind = "agent"
allowed-actions = ["scan_vulnerabilities", "block_pr", "alert_security_team"]
[budget]
{budget}
[config]
name = "Security Vulnerability Scanner"
role = "Cybersecurity expert"
instructions = "افحص الثغرات"
user-template = "Scan {{{{payload.repo}}}}: {{{{input}}}}"
model = "gpt-4o"
actions = ["scan_vulnerabilities", "block_pr", "alert_security_team"]
[capabilities.llm]
models = ["gpt-4o"]
[capabilities.knowledge]
"#
        ),
    );
    runtime
        .registry()
        .install(runtime.load_plugin(&manifest).await.unwrap());
    (runtime, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_agent_end_to_end_through_the_llm_server() {
    let server = LlmServer::start().await;
    server.set_reply("Severity: CRITICAL. SQL injection in login.\nACTION: block_pr {\"reason\": \"sqli\"}\nACTION: alert_security_team");
    let (runtime, _dir) = prompt_agent_runtime(&server, "").await;
    let mut context = RunContext::new("ci");
    context.correlation_id = "job-7".into();
    let run = runtime
        .run_agent(
            "security-agent",
            AgentRequest {
                input: "check the PR".into(),
                payload: json!({"repo": "lexbank/bsm"}),
                context,
            },
        )
        .await
        .unwrap();

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let body = &seen[0].body;
    assert_eq!(seen[0].correlation_id.as_deref(), Some("job-7"));
    assert_eq!(seen[0].plugin.as_deref(), Some("security-agent"));
    assert_eq!(
        body["model"], "test-model",
        "gpt-4o is not served: the provider's default is used"
    );
    assert_eq!(body["messages"][0]["role"], "system");
    let system = body["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.starts_with(
            "You are Security Vulnerability Scanner.\nRole: Cybersecurity expert\n\nافحص الثغرات"
        ),
        "{system}"
    );
    assert!(
        system.contains("scan_vulnerabilities, block_pr, alert_security_team"),
        "{system}"
    );
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "Scan lexbank/bsm: <input>\ncheck the PR\n</input>"})
    );

    assert!(run.output.text.starts_with("Severity: CRITICAL."));
    let actions: Vec<_> = run.output.actions.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(actions, ["block_pr", "alert_security_team"]);
    assert_eq!(run.output.actions[0].args, json!({"reason": "sqli"}));
    assert_eq!(run.output.metadata["usage"]["promptTokens"], 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugins_llm_budget_caps_tokens_and_calls() {
    let server = LlmServer::start().await;
    let (runtime, _dir) = prompt_agent_runtime(&server, "llm-max-tokens = 40").await;
    runtime
        .run_agent("security-agent", request("x"))
        .await
        .unwrap();
    assert_eq!(
        server.seen()[0].body["max_tokens"],
        40,
        "the completion is capped by the run's token budget"
    );

    let (runtime, _dir) = prompt_agent_runtime(&server, "llm-max-calls = 0").await;
    let err = runtime
        .run_agent("security-agent", request("x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "PLUGIN_FAILED");
    assert!(err.to_string().contains("BudgetExceeded"), "{err}");
}

/// Log lines written while `body` runs, counted by a subscriber of this
/// thread only (the test's runtime is current-thread).
async fn log_lines_during<F: std::future::Future>(body: F) -> (F::Output, Vec<String>) {
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let sink = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let output = body.await;
    drop(guard);
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    (output, text.lines().map(String::from).collect())
}

#[tokio::test]
async fn an_outage_writes_a_bounded_number_of_log_lines() {
    let server = LlmServer::start().await;
    server.set_default(Fault::Status(503));
    let mut s = settings(vec![provider("p", &server.base_url)]);
    s.retry.max_attempts = 1;
    s.breaker = BreakerConfig {
        sliding_window: SlidingWindow::CountBased { size: 4 },
        minimum_calls: 2,
        wait_in_open: Duration::from_secs(600),
        ..BreakerConfig::default()
    };
    let client = client(s);
    let (refused, lines) = log_lines_during(async {
        let mut refused = 0;
        for _ in 0..10_002 {
            if let Err(LlmError::CircuitOpen(_)) = client.chat(&caller(), ask("hi")).await {
                refused += 1;
            }
        }
        refused
    })
    .await;
    assert_eq!(refused, 10_000, "two failures open the breaker");
    assert!(
        lines.len() <= 5,
        "the first failure, the state change and the first refusal, not a line per call: {} lines: {lines:#?}",
        lines.len()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("refused by the open circuit breaker")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("falling back")),
        "a single provider has nothing to fall back to: {lines:#?}"
    );
    assert_eq!(
        client.breaker("p").unwrap().snapshot().not_permitted_calls,
        10_000,
        "the counts stay exact in the breaker's metrics"
    );
}

#[tokio::test]
async fn a_hanging_provider_is_retried_once_and_fails_within_the_total() {
    let server = LlmServer::start().await;
    server.set_default(Fault::Hang);
    let mut p = provider("p", &server.base_url);
    p.timeouts.first_token_ms = 200;
    let client = client(settings(vec![p]));
    assert!(matches!(
        client.chat(&caller(), ask("hi")).await.unwrap_err(),
        LlmError::Timeout
    ));
    assert_eq!(
        server.hits(),
        2,
        "max-attempts is 3, but a timed-out attempt is retried only once"
    );

    // A total shorter than one first-token wait ends the call at the total.
    let mut p = provider("q", &server.base_url);
    p.timeouts.first_token_ms = 60_000;
    p.timeouts.attempt_ms = 60_000;
    p.timeouts.total_ms = 300;
    let client = self::client(settings(vec![p]));
    let started = std::time::Instant::now();
    assert!(matches!(
        client.chat(&caller(), ask("hi")).await.unwrap_err(),
        LlmError::Timeout
    ));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded by total-ms (300 ms), not by the 60 s first-token timeout: {:?}",
        started.elapsed()
    );
}
