//! `bsm serve` end to end over real HTTP: a real server process on a free
//! port, the local OpenAI-protocol server as the LLM, the agent set shipped
//! in `examples/bsm` as its agents (served by default, as a new user gets
//! it). The original BSM files are served in an ignored compatibility test.

mod common;
#[path = "common/llm_server.rs"]
mod llm_server;
#[path = "common/server.rs"]
mod server;

use std::time::Duration;

use common::{copy_of_shipped_agents, original_fixtures};
use llm_server::{Fault, LlmServer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use server::{ADMIN_TOKEN, BsmServer, http};

/// A server with the shipped agent set (no BSM directory configured), the
/// test LLM and an admin token.
fn start(data: &std::path::Path, llm: &LlmServer, extra: &[(&str, &str)]) -> BsmServer {
    BsmServer::with_llm(data, &llm.base_url, extra)
}

async fn get(s: &BsmServer, path: &str) -> (StatusCode, Value) {
    let r = http().get(s.url(path)).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(s: &BsmServer, path: &str, body: Value) -> (StatusCode, Value) {
    let r = http().post(s.url(path)).json(&body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Posts a body as it is (for malformed or non-JSON bodies).
async fn post_raw(
    s: &BsmServer,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut request = http().post(s.url(path)).body(body.to_string());
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let r = request.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn admin_post(s: &BsmServer, path: &str, body: Value) -> (StatusCode, Value) {
    let r = http()
        .post(s.url(path))
        .header("x-admin-token", ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn assert_error(status: StatusCode, body: &Value, expected_status: StatusCode, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["error"]["correlationId"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_endpoint_answers() {
    let llm = LlmServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &[]);

    assert_eq!(
        get(&s, "/health").await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let (status, body) = get(&s, "/api/health").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = get(&s, "/api/health/detailed").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["plugins"]["loaded"].as_u64().unwrap() >= 12, "{body}");
    assert_eq!(body["storage"]["reportsWritable"], true);
    assert_eq!(body["circuitBreakers"][0]["name"], "llm:default");
    assert!(body["caches"]["components"].is_object());

    let (_, agents) = get(&s, "/api/agents").await;
    let ids: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    for id in [
        "governance-review-agent",
        "code-review-agent",
        "security-agent",
        "integrity-agent",
        "legal-agent",
        "release-notes-agent",
        "hello-agent",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let (status, agent) = get(&s, "/api/agents/pr-merge-agent").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(agent["governance"]["approvalRequired"], true);
    assert_eq!(agent["governance"]["contexts"], json!(["ci", "github"]));
    let (status, body) = get(&s, "/api/agents/nobody").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "AGENT_NOT_FOUND");

    let (_, plugins) = get(&s, "/api/plugins").await;
    assert!(
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == "pr-decision" && p["kind"] == "step")
    );
    let (status, plugin) = get(&s, "/api/plugins/hello-agent").await;
    assert_eq!(
        (status, plugin["digest"].as_str().map(str::len)),
        (StatusCode::OK, Some(64))
    );
    let (status, body) = get(&s, "/api/plugins/nope").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "PLUGIN_NOT_FOUND");

    let (_, pipelines) = get(&s, "/api/orchestrator/pipelines").await;
    assert_eq!(
        pipelines["pipelines"]["pull_request.opened"]["agents"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        pipelines["pipelines"]["pull_request.opened"]["decision"],
        "pr-decision"
    );
    assert!(pipelines["pipelines"]["default"].is_object());

    let (status, stats) = get(&s, "/api/cache/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert!(stats["caches"]["plugin"].is_object());
    let (_, breakers) = get(&s, "/api/health/circuit-breakers").await;
    assert_eq!(breakers["circuitBreakers"][0]["state"], "CLOSED");
    let (status, body) = get(&s, "/api/reports/none").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "REPORT_NOT_FOUND");
    let (status, body) = get(&s, "/api/orchestrator/jobs/none").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "JOB_NOT_FOUND");
    let (status, body) = get(&s, "/no/such/endpoint").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");

    let metrics = s.metrics().await;
    assert!(metrics.contains("bsm_http_requests_total"), "{metrics}");
    assert!(
        metrics.contains("bsm_http_request_duration_seconds"),
        "{metrics}"
    );
    assert!(metrics.contains("bsm_circuit_breaker_state"), "{metrics}");
    assert!(metrics.contains("bsm_plugin_queue_depth"), "{metrics}");
    assert!(metrics.contains("bsm_cache_events"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_run_through_the_api_with_usage_and_correlation_id() {
    let llm = LlmServer::start().await;
    llm.set_reply("Compliant.\nACTION: review_pr");
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &[]);
    let r = http()
        .post(s.url("/api/agents/run"))
        .header("x-correlation-id", "corr-e2e-1")
        .json(
            &json!({"agentId": "code-review-agent", "input": "Review PR #3", "payload": {"pr": 3}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-correlation-id"], "corr-e2e-1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["agentId"], "code-review-agent");
    assert_eq!(body["output"], "Compliant.\nACTION: review_pr");
    assert_eq!(body["actions"][0]["name"], "review_pr");
    assert_eq!(body["actions"][0]["status"], "dead", "{body}");
    assert_eq!(body["usage"]["calls"], 1);
    // No handler is routed here: the answer and the outbox say so instead
    // of pretending.
    let action_id = body["actions"][0]["id"].as_str().unwrap().to_string();
    let mut action = Value::Null;
    for _ in 0..50 {
        let (_, a) = get(&s, &format!("/api/actions/{action_id}")).await;
        action = a["action"].clone();
        if action["status"] == "dead" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(action["status"], "dead", "{action}");
    assert!(
        action["lastError"]
            .as_str()
            .unwrap()
            .contains("no handler is configured"),
        "{action}"
    );
    assert_eq!(body["usage"]["promptTokens"], 11);
    assert!(body["durationMs"].as_f64().unwrap() > 0.0);
    assert_eq!(body["correlationId"], "corr-e2e-1");
    let seen = llm.seen();
    assert_eq!(
        seen.last().unwrap().correlation_id.as_deref(),
        Some("corr-e2e-1"),
        "sent to the LLM provider"
    );

    // An error carries the same correlation id.
    let r = http()
        .post(s.url("/api/agents/run"))
        .header("x-correlation-id", "corr-e2e-2")
        .json(&json!({"agentId": "nobody"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-correlation-id"], "corr-e2e-2");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["correlationId"], "corr-e2e-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_contexts_and_approvals() {
    let llm = LlmServer::start().await;
    llm.set_reply("All gates passed.\nACTION: auto_merge");
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &[]);

    let (status, body) = post(
        &s,
        "/api/agents/run",
        json!({"agentId": "pr-merge-agent", "input": "merge?"}),
    )
    .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "CONTEXT_NOT_ALLOWED");
    assert_eq!(llm.hits(), 0, "refused before the agent ran");

    let (status, body) = post(
        &s,
        "/api/agents/run",
        json!({"agentId": "pr-merge-agent", "input": "merge?", "context": "ci"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["actions"][0]["name"], "auto_merge");
    assert_eq!(body["actions"][0]["status"], "pending_approval");
    let approval_id = body["actions"][0]["approvalId"]
        .as_str()
        .unwrap()
        .to_string();

    let r = http().get(s.url("/api/approvals")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "approvals are admin-only"
    );
    let r = http()
        .get(s.url("/api/approvals?status=pending"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    let pending: Value = r.json().await.unwrap();
    assert_eq!(pending["approvals"][0]["id"], approval_id.as_str());
    assert_eq!(pending["approvals"][0]["approvers"], json!(["ci-system"]));
    assert_eq!(
        pending["nextCursor"],
        Value::Null,
        "one page holds them all"
    );
    let r = http()
        .get(s.url("/api/approvals?limit=9999"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "pages are bounded");

    let (status, body) = post(
        &s,
        &format!("/api/approvals/{approval_id}/approve"),
        json!({}),
    )
    .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let (status, body) = admin_post(
        &s,
        &format!("/api/approvals/{approval_id}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, body["approval"]["status"].as_str()),
        (StatusCode::OK, Some("approved")),
        "{body}"
    );
    let (status, body) = admin_post(
        &s,
        &format!("/api/approvals/{approval_id}/reject"),
        json!({}),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "APPROVAL_ALREADY_DECIDED",
    );
    let (status, body) = admin_post(&s, "/api/approvals/nope/approve", json!({})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "APPROVAL_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_outside_the_allow_list_are_forbidden() {
    let llm = LlmServer::start().await;
    llm.set_reply("ACTION: drop_database");
    let plugins = tempfile::tempdir().unwrap();
    for file in [
        "prompt-agent.wasm",
        "pr-decision.wasm",
        "pr-decision.toml",
        "prompt-agent.toml",
    ] {
        std::fs::copy(common::shipped_dir().join(file), plugins.path().join(file)).unwrap();
    }
    std::fs::copy(
        common::shipped_dir().join("prompt-agent.wasm"),
        plugins.path().join("rogue.wasm"),
    )
    .unwrap();
    std::fs::write(
        plugins.path().join("rogue.toml"),
        "id = \"rogue\"\nversion = \"1\"\nkind = \"agent\"\nallowed-actions = []\n[config]\nactions = [\"drop_database\"]\n[capabilities.llm]\n[capabilities.knowledge]\n",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = start(
        data.path(),
        &llm,
        &[("BSM_PLUGINS_DIR", plugins.path().to_str().unwrap())],
    );
    let (status, body) = post(
        &s,
        "/api/agents/run",
        json!({"agentId": "rogue", "input": "go"}),
    )
    .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "ACTION_NOT_ALLOWED");
}

async fn decision_for(s: &BsmServer) -> Value {
    let (status, body) = post(s, "/api/orchestrator/run?wait=true", json!({"event": "pull_request.opened", "payload": {"pull_request": {"number": 42, "title": "Add login"}}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "completed", "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_request_opened_reaches_each_decision() {
    let llm = LlmServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &[]);
    let verdict = |job: &Value| {
        job["job"]["result"]["decision"]["verdict"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    };

    llm.set_reply("Looks good to me.");
    let job = decision_for(&s).await;
    assert_eq!(verdict(&job), "approve", "{job}");
    let agents: Vec<&str> = job["job"]["result"]["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agentId"].as_str().unwrap())
        .collect();
    assert_eq!(
        agents,
        [
            "governance-review-agent",
            "code-review-agent",
            "security-agent",
            "integrity-agent"
        ]
    );
    assert_eq!(llm.seen().len(), 4, "four agents, one LLM call each");
    assert!(
        llm.seen()
            .iter()
            .all(|r| r.correlation_id.as_deref() == job["jobId"].as_str()),
        "the job id travels as correlation id"
    );
    let knowledge_sent = llm.seen().iter().all(|r| {
        r.body["messages"]
            .to_string()
            .contains("Every pull request links an issue")
    });
    assert!(
        knowledge_sent,
        "the knowledge loaded once per job reaches every agent"
    );

    llm.reply_when(
        "Governance Compliance Officer",
        "Decision: BLOCKED - no linked issue",
    );
    assert_eq!(verdict(&decision_for(&s).await), "block");
    llm.clear_rules();

    llm.reply_when("Code Review Agent", "Verdict: REQUEST_CHANGES, add tests");
    assert_eq!(verdict(&decision_for(&s).await), "request_changes");
    llm.clear_rules();

    llm.fault_when("Repository Integrity Guardian", Fault::Status(400));
    let job = decision_for(&s).await;
    assert_eq!(verdict(&job), "manual_review", "{job}");
    let integrity = &job["job"]["result"]["agents"][3];
    assert_eq!(
        integrity["ok"], false,
        "a failing agent is recorded as failed: {integrity}"
    );
    assert!(
        integrity["error"]
            .as_str()
            .unwrap()
            .contains("integrity-agent")
    );
    llm.clear_rules();

    let report_id = job["job"]["result"]["report"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, report) = get(&s, &format!("/api/reports/{report_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        report["content"]
            .as_str()
            .unwrap()
            .contains("manual_review"),
        "{report}"
    );
    assert_eq!(report["report"]["job"], job["jobId"]);
    let (_, reports) = get(&s, "/api/reports").await;
    assert_eq!(reports["reports"].as_array().unwrap().len(), 4);
    assert_eq!(reports["nextCursor"], Value::Null);

    // Pages: newest first, a cursor while more remain, every report once.
    let (_, first) = get(&s, "/api/reports?limit=3").await;
    assert_eq!(first["reports"].as_array().unwrap().len(), 3);
    let cursor = first["nextCursor"]
        .as_str()
        .expect("more remain")
        .to_string();
    let (_, second) = get(&s, &format!("/api/reports?limit=3&cursor={cursor}")).await;
    assert_eq!(second["reports"].as_array().unwrap().len(), 1);
    assert_eq!(second["nextCursor"], Value::Null);
    let mut ids: Vec<&str> = first["reports"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["reports"].as_array().unwrap())
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let created: Vec<&str> = first["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["createdAt"]
                .as_str()
                .or(r["created_at"].as_str())
                .unwrap()
        })
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {created:?}"
    );
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    for (query, code) in [
        ("limit=0", "VALIDATION_ERROR"),
        ("limit=501", "VALIDATION_ERROR"),
        ("cursor=not-hex", "INVALID_CURSOR"),
    ] {
        let (status, body) = get(&s, &format!("/api/reports?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_progress_streams_as_server_sent_events() {
    let llm = LlmServer::start().await;
    llm.set_latency(Duration::from_millis(200));
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &[]);
    let (status, started) = post(
        &s,
        "/api/orchestrator/run",
        json!({"event": "pull_request.ready_for_review", "payload": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["jobId"].as_str().unwrap().to_string();
    let r = http()
        .get(s.url(&format!("/api/orchestrator/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds.first(), Some(&"job.started"), "{text}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "agent.started").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "agent.finished").count(),
        3,
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"decision") && kinds.contains(&"report"),
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"job.finished"), "{kinds:?}");
    let (_, job) = get(&s, &format!("/api/orchestrator/jobs/{id}")).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["agentRuns"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_need_the_admin_token() {
    let llm = LlmServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &[]);
    let (status, body) = post(&s, "/api/cache/clear", json!({})).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let r = http()
        .post(s.url("/api/cache/clear"))
        .header("x-admin-token", "wrong-token-wrong-token-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = admin_post(&s, "/api/cache/clear", json!({"cache": "plugin"})).await;
    assert_eq!(
        (status, body["cleared"].as_str()),
        (StatusCode::OK, Some("plugin"))
    );
    let (status, body) = admin_post(&s, "/api/cache/clear", json!({"cache": "nope"})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "CACHE_NOT_FOUND");

    let (status, body) = post(&s, "/api/circuit-breakers/default/isolate", json!({})).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let (status, body) = admin_post(&s, "/api/circuit-breakers/default/isolate", json!({})).await;
    assert_eq!(
        (status, body["circuitBreaker"]["state"].as_str()),
        (StatusCode::OK, Some("FORCED_OPEN")),
        "{body}"
    );
    let (status, body) = post(
        &s,
        "/api/agents/run",
        json!({"agentId": "legal-agent", "input": "hi"}),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "LLM_CIRCUIT_OPEN",
    );
    let (status, body) = admin_post(&s, "/api/circuit-breakers/llm:default/reset", json!({})).await;
    assert_eq!(
        (status, body["circuitBreaker"]["state"].as_str()),
        (StatusCode::OK, Some("CLOSED"))
    );
    let (status, body) = admin_post(&s, "/api/circuit-breakers/nope/reset", json!({})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "BREAKER_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_tokens_and_governance_violations_stop_the_start() {
    let llm = LlmServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let err = BsmServer::start(data.path(), &[("BSM_ADMIN_TOKEN", "changeme")])
        .err()
        .expect("refused");
    assert!(err.contains("BSM_ADMIN_TOKEN is too weak"), "{err}");

    let bad = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(bad.path().join("data/agents")).unwrap();
    std::fs::create_dir_all(bad.path().join("agents")).unwrap();
    std::fs::write(
        bad.path().join("data/agents/index.json"),
        r#"{"agents": ["a.yaml"]}"#,
    )
    .unwrap();
    std::fs::write(bad.path().join("data/agents/a.yaml"), "id: a\nname: A\n").unwrap();
    std::fs::write(
        bad.path().join("agents/registry.yaml"),
        "agents:\n  - id: a\n    risk: { level: extreme }\n",
    )
    .unwrap();
    let err = BsmServer::start(
        data.path(),
        &[
            ("BSM_BSM_DIR", bad.path().to_str().unwrap()),
            ("BSM_LLM_BASE_URL", &llm.base_url),
            ("BSM_STRICT", "true"),
        ],
    )
    .err()
    .expect("refused in strict mode");
    assert!(err.contains("violation"), "{err}");
    for field in [
        "risk.level",
        "risk.rationale",
        "approval",
        "startup",
        "healthcheck",
        "contexts.allowed",
    ] {
        assert!(err.contains(field), "{field} not listed: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_bad_bodies_get_clear_4xx() {
    let llm = LlmServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = start(
        data.path(),
        &llm,
        &[
            ("BSM_RATE_LIMIT", "5"),
            ("BSM_RATE_BURST", "5"),
            ("BSM_BODY_LIMIT", "2048"),
        ],
    );

    let big = "x".repeat(10_000);
    let (status, body) = post(
        &s,
        "/api/agents/run",
        json!({"agentId": "hello-agent", "input": big}),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    );
    let (status, body) = post_raw(
        &s,
        "/api/agents/run",
        Some("application/json"),
        "{\"agentId\": ",
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_JSON");
    let (status, body) = post_raw(&s, "/api/agents/run", None, "agentId=x").await;
    assert_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
    );
    let (status, body) = post(&s, "/api/agents/run", json!({"agentId": 7})).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_ERROR",
    );

    let mut limited = None;
    for _ in 0..30 {
        let r = http().get(s.url("/health")).send().await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
            limited = Some(r.json::<Value>().await.unwrap());
            break;
        }
    }
    let body = limited.expect("30 quick requests at 5/s exceed the rate");
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_jobs_and_reports_and_marks_running_jobs_interrupted() {
    let llm = LlmServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut s = start(data.path(), &llm, &[]);
    let job = decision_for(&s).await;
    let id = job["jobId"].as_str().unwrap().to_string();
    let report = job["job"]["result"]["report"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(s.stop().success(), "graceful stop: {}", s.logs());

    let mut s = start(data.path(), &llm, &[]);
    let (status, again) = get(&s, &format!("/api/orchestrator/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again["job"]["result"]["decision"],
        job["job"]["result"]["decision"]
    );
    let (status, _) = get(&s, &format!("/api/reports/{report}")).await;
    assert_eq!(status, StatusCode::OK);
    let events = http()
        .get(s.url(&format!("/api/orchestrator/jobs/{id}/events")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(events.contains("event: job.snapshot"), "{events}");

    // A job running when the process dies is marked interrupted at the next start.
    llm.set_default(Fault::Hang);
    let (status, started) = post(
        &s,
        "/api/orchestrator/run",
        json!({"event": "repository.health_check", "payload": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let running = started["jobId"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.crash();
    llm.set_default(Fault::None);
    let s = start(data.path(), &llm, &[]);
    let (_, job) = get(&s, &format!("/api/orchestrator/jobs/{running}")).await;
    assert_eq!(job["status"], "interrupted", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_llm_opens_the_breaker_and_then_runs_fail_fast() {
    let llm = LlmServer::start().await;
    llm.set_default(Fault::Hang);
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("bsm.toml");
    std::fs::write(
        &config,
        r#"
[llm.retry]
max-attempts = 1
[llm.breaker]
minimum-calls = 2
wait-in-open-ms = 60000
[[llm.providers]]
name = "default"
base-url = "http://127.0.0.1:9/v1"
default-model = "test-model"
[llm.providers.timeouts]
first-token-ms = 300
attempt-ms = 300
"#,
    )
    .unwrap();
    let s = start(
        data.path(),
        &llm,
        &[("BSM_CONFIG", config.to_str().unwrap())],
    );
    for _ in 0..2 {
        let (status, body) = post(
            &s,
            "/api/agents/run",
            json!({"agentId": "legal-agent", "input": "hi"}),
        )
        .await;
        assert_error(status, &body, StatusCode::GATEWAY_TIMEOUT, "LLM_TIMEOUT");
    }
    let (_, breakers) = get(&s, "/api/health/circuit-breakers").await;
    assert_eq!(
        breakers["circuitBreakers"][0]["state"], "OPEN",
        "{breakers}"
    );
    let hits = llm.hits();
    let r = http()
        .post(s.url("/api/agents/run"))
        .json(&json!({"agentId": "legal-agent", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "LLM_CIRCUIT_OPEN", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker is open"),
        "{body}"
    );
    assert!(body["error"]["retryAfterMs"].as_u64().unwrap() > 50_000);
    assert_eq!(
        llm.hits(),
        hits,
        "failing fast: the provider was not called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_running_jobs_finish_or_marks_them_interrupted() {
    let llm = LlmServer::start().await;
    llm.set_latency(Duration::from_millis(800));
    let data = tempfile::tempdir().unwrap();

    // Within the grace period: the job finishes before the process exits.
    let mut s = start(data.path(), &llm, &[("BSM_SHUTDOWN_GRACE_MS", "10000")]);
    let (_, started) = post(
        &s,
        "/api/orchestrator/run",
        json!({"event": "repository.health_check", "payload": {}}),
    )
    .await;
    let finished_id = started["jobId"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.stop().success());

    // Past the grace period: the job is marked interrupted at shutdown.
    llm.set_latency(Duration::from_secs(30));
    let mut s = start(data.path(), &llm, &[("BSM_SHUTDOWN_GRACE_MS", "100")]);
    let (_, started) = post(
        &s,
        "/api/orchestrator/run",
        json!({"event": "repository.health_check", "payload": {}}),
    )
    .await;
    let cut_id = started["jobId"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.stop().success());
    assert!(s.logs().contains("marked interrupted"), "{}", s.logs());

    llm.set_latency(Duration::ZERO);
    let s = start(data.path(), &llm, &[]);
    let (_, job) = get(&s, &format!("/api/orchestrator/jobs/{finished_id}")).await;
    assert_eq!(job["status"], "completed", "{job}");
    let (_, job) = get(&s, &format!("/api/orchestrator/jobs/{cut_id}")).await;
    assert_eq!(job["status"], "interrupted", "{job}");
    assert!(
        job["job"]["error"].as_str().unwrap().contains("shut down"),
        "{job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_file_sets_the_server_and_the_environment_overrides_it() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("bsm.toml");
    std::fs::write(
        &config,
        "[server]\nrate-limit = 2\nrate-burst = 2\n\n[pipelines.\"deploy.requested\"]\nagents = [\"hello-agent\"]\nmode = \"sequential\"\nreport = false\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let count_429 = async |s: &BsmServer| {
        let mut limited = 0;
        for _ in 0..20 {
            if http().get(s.url("/health")).send().await.unwrap().status()
                == StatusCode::TOO_MANY_REQUESTS
            {
                limited += 1;
            }
        }
        limited
    };
    let s = BsmServer::start(data.path(), &[("BSM_CONFIG", config)]).unwrap();
    let (_, pipelines) = get(&s, "/api/orchestrator/pipelines").await;
    assert_eq!(
        pipelines["pipelines"]["deploy.requested"]["agents"],
        json!(["hello-agent"])
    );
    assert!(
        pipelines["pipelines"]["pull_request.opened"].is_object(),
        "the original pipelines stay"
    );
    assert!(count_429(&s).await > 0, "the file's rate limit applies");
    drop(s);
    let s = BsmServer::start(
        data.path(),
        &[("BSM_CONFIG", config), ("BSM_RATE_LIMIT", "0")],
    )
    .unwrap();
    assert_eq!(count_429(&s).await, 0, "the environment overrides the file");
}

/// Adds an agent (its YAML and a valid registry entry) to a layout copy.
fn add_agent(layout: &std::path::Path, id: &str, yaml: &str) {
    let index_path = layout.join("data/agents/index.json");
    let mut index: Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["agents"]
        .as_array_mut()
        .unwrap()
        .push(json!(format!("{id}.yaml")));
    std::fs::write(&index_path, index.to_string()).unwrap();
    std::fs::write(layout.join(format!("data/agents/{id}.yaml")), yaml).unwrap();
    registry_entry(layout, id, false);
}

/// Appends a valid registry entry for `id`, approval-required or not.
fn registry_entry(layout: &std::path::Path, id: &str, approval: bool) {
    let approval = if approval {
        "{ required: true, type: manual, approvers: [release-managers] }"
    } else {
        "{ required: false, type: none, approvers: [] }"
    };
    let entry = format!(
        "  - id: {id}\n    contexts: {{ allowed: [api, cli] }}\n    risk: {{ level: medium, rationale: \"test\" }}\n    approval: {approval}\n    startup: {{ allowed_profiles: [production] }}\n    healthcheck: {{ endpoint: /h, interval_seconds: 5 }}\n"
    );
    let path = layout.join("agents/registry.yaml");
    let mut registry = std::fs::read_to_string(&path).unwrap();
    registry.push_str(&entry);
    std::fs::write(path, registry).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_agent_is_quarantined_and_every_other_agent_served() {
    let llm = LlmServer::start().await;
    llm.set_reply("Ticket opened.\nACTION: open_ticket");
    let layout = copy_of_shipped_agents();
    add_agent(
        layout.path(),
        "ticket-agent",
        "id: ticket-agent\nname: Ticket Agent\nactions: [open_ticket]\ninstructions: Open tickets.\n",
    );
    let data = tempfile::tempdir().unwrap();
    let layout_dir = layout.path().to_str().unwrap();
    let s = start(data.path(), &llm, &[("BSM_BSM_DIR", layout_dir)]);

    let (_, agents) = get(&s, "/api/agents").await;
    let status_of = |id: &str| {
        agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {agents}"))
            .clone()
    };
    let ticket = status_of("ticket-agent");
    assert_eq!(ticket["status"], "quarantined", "{ticket}");
    assert_eq!(ticket["violations"][0]["field"], "actions", "{ticket}");
    assert!(
        ticket["violations"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("open_ticket"),
        "{ticket}"
    );
    assert_eq!(status_of("security-agent")["status"], "active");

    let (status, body) = post(
        &s,
        "/api/agents/run",
        json!({"agentId": "ticket-agent", "input": "x"}),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "AGENT_QUARANTINED");
    assert_eq!(llm.hits(), 0, "a quarantined agent never runs");
    let (status, body) = post(
        &s,
        "/api/agents/run",
        json!({"agentId": "legal-agent", "input": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the others serve: {body}");

    let (_, health) = get(&s, "/api/health/detailed").await;
    assert_eq!(
        health["agents"]["quarantined"][0]["id"], "ticket-agent",
        "{health}"
    );
    let metrics = s.metrics().await;
    assert!(metrics.contains("bsm_agents_quarantined 1"), "{metrics}");
    assert!(s.logs().contains("agent quarantined"), "{}", s.logs());
    drop(s);

    // The deployment extends the allow-list: the agent is served.
    let config = data.path().join("bsm.toml");
    std::fs::write(&config, "[governance]\nextra-actions = [\"open_ticket\"]\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = start(
        data.path(),
        &llm,
        &[
            ("BSM_BSM_DIR", layout_dir),
            ("BSM_CONFIG", config.to_str().unwrap()),
        ],
    );
    let (status, body) = post(
        &s,
        "/api/agents/run",
        json!({"agentId": "ticket-agent", "input": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["actions"][0]["name"], "open_ticket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_steps_actions_are_governed_and_its_runs_stored() {
    let llm = LlmServer::start().await;
    llm.set_reply("Looks good to me.");
    let layout = copy_of_shipped_agents();
    // The registry governs the decision step too: its actions need approval.
    registry_entry(layout.path(), "pr-decision", true);
    let data = tempfile::tempdir().unwrap();
    let s = start(
        data.path(),
        &llm,
        &[("BSM_BSM_DIR", layout.path().to_str().unwrap())],
    );
    let job = decision_for(&s).await;
    let decision = &job["job"]["result"]["decision"];
    assert_eq!(decision["verdict"], "approve", "{job}");
    let actions = decision["actions"].as_array().unwrap();
    let names: Vec<&str> = actions
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["approve_pr", "auto_merge"], "{decision}");
    assert!(
        actions.iter().all(|a| a["status"] == "pending_approval"),
        "{decision}"
    );
    let r = http()
        .get(s.url("/api/approvals?status=pending"))
        .header("x-admin-token", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let pending: Value = r.json().await.unwrap();
    let pending = pending["approvals"].as_array().unwrap();
    assert_eq!(pending.len(), 2, "{pending:?}");
    for action in actions {
        let approval = pending
            .iter()
            .find(|p| p["id"] == action["approvalId"])
            .unwrap_or_else(|| panic!("{action} not pending: {pending:?}"));
        assert_eq!(approval["agentId"], "pr-decision");
        assert_eq!(approval["approvers"], json!(["release-managers"]));
    }

    let id = job["jobId"].as_str().unwrap();
    let (_, stored) = get(&s, &format!("/api/orchestrator/jobs/{id}")).await;
    assert_eq!(stored["agentRuns"].as_array().unwrap().len(), 4, "{stored}");
    assert_eq!(stored["stepRuns"][0]["stepId"], "pr-decision", "{stored}");
    assert_eq!(stored["stepRuns"][0]["ok"], true, "{stored}");

    let metrics = s.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bsm_plugin_runs_total")
                && l.contains("plugin=\"pr-decision\"")
                && l.contains("outcome=\"ok\"")),
        "step runs are counted: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_metrics_answers_a_json_summary() {
    let llm = LlmServer::start().await;
    llm.set_reply("Fine.");
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &[]);
    let (status, _) = post(
        &s,
        "/api/agents/run",
        json!({"agentId": "legal-agent", "input": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(
        &s,
        "/api/agents/run",
        json!({"agentId": "nobody", "input": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, m) = get(&s, "/api/metrics").await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["runs"]["ok"], 1, "{m}");
    assert_eq!(m["runs"]["failed"], 1, "{m}");
    assert!(m["requests"]["total"].as_u64().unwrap() >= 2, "{m}");
    assert!(m["requests"]["clientErrors"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(
        m["agents"]["active"], 11,
        "nine shipped agents, hello-agent and prompt-agent: {m}"
    );
    assert_eq!(m["agents"]["quarantined"], 0, "{m}");
    assert!(m["memory"]["rssBytes"].as_u64().unwrap() > 0, "{m}");
    assert!(m["caches"]["components"].is_object(), "{m}");
    assert_eq!(m["circuitBreakers"][0]["name"], "llm:default", "{m}");
    assert!(m["timestamp"].as_str().is_some(), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reads the original BSM files from BSM_ORIGINAL_FIXTURES; .ci/run runs it with --ignored"]
async fn the_original_bsm_directory_is_served_as_it_is() {
    let llm = LlmServer::start().await;
    llm.set_reply("Reviewed.");
    let data = tempfile::tempdir().unwrap();
    let fixtures = original_fixtures();
    let s = start(
        data.path(),
        &llm,
        &[("BSM_BSM_DIR", fixtures.to_str().unwrap())],
    );
    let (_, agents) = get(&s, "/api/agents").await;
    let list = agents["agents"].as_array().unwrap();
    for id in [
        "my-agent",
        "agent-auto",
        "legal-agent",
        "governance-agent",
        "governance-review-agent",
        "code-review-agent",
        "security-agent",
        "pr-merge-agent",
        "integrity-agent",
    ] {
        let agent = list
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {agents}"));
        assert_eq!(agent["status"], "active", "{agent}");
    }
    let (_, agent) = get(&s, "/api/agents/pr-merge-agent").await;
    assert_eq!(agent["governance"]["contexts"], json!(["ci", "github"]));
    let job = decision_for(&s).await;
    assert_eq!(
        job["job"]["result"]["decision"]["verdict"], "approve",
        "{job}"
    );
    let knowledge_sent = llm.seen().iter().all(|r| {
        r.body["messages"]
            .to_string()
            .contains("private knowledge document")
    });
    assert!(knowledge_sent, "the original knowledge reaches the agents");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_health_checks_do_not_race_on_a_probe_file() {
    let llm = LlmServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &[]);
    let checks = (0..32).map(|_| get(&s, "/api/health/detailed"));
    for (status, body) in futures_util::future::join_all(checks).await {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ok", "{body}");
        assert_eq!(body["storage"]["reportsWritable"], true, "{body}");
    }
    let left: Vec<_> = std::fs::read_dir(data.path().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(left.is_empty(), "probe files left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waited_job_is_answered_with_the_record_that_was_stored() {
    let llm = LlmServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &[]);
    let job = decision_for(&s).await;
    let id = job["jobId"].as_str().unwrap();
    let (status, stored) = get(&s, &format!("/api/orchestrator/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(
        job["job"], stored["job"],
        "the answer of the wait (built from the job's last event) and the database agree, time included"
    );
    assert_eq!(stored["job"]["status"], "completed", "{stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_job_follows_the_settings_and_never_ends_in_a_timeout() {
    let llm = LlmServer::start().await;
    llm.set_latency(Duration::from_millis(1500));
    let job = json!({"event": "pull_request.opened", "payload": {}});

    // A request timeout shorter than the job: the wait ends first, with the
    // job id to poll, not with 503 REQUEST_TIMEOUT.
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &[("BSM_REQUEST_TIMEOUT_MS", "1000")]);
    let (status, body) = post(&s, "/api/orchestrator/run?wait=true", job.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "running", "{body}");
    assert!(body["jobId"].as_str().is_some(), "{body}");
    drop(s);

    // A configured wait shorter than the job: 202 when it passes.
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &[("BSM_WAIT_TIMEOUT_MS", "300")]);
    let (status, body) = post(&s, "/api/orchestrator/run?wait=true", job.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    drop(s);

    // The defaults wait as long as the request timeout allows: the job ends.
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &[]);
    let (status, body) = post(&s, "/api/orchestrator/run?wait=true", job).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "completed", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_clients_get_their_own_bucket_only_behind_a_trusted_proxy() {
    let llm = LlmServer::start().await;
    let limited = [("BSM_RATE_LIMIT", "1"), ("BSM_RATE_BURST", "2")];
    let status_as = |s: &BsmServer, client: &str| {
        let request = http()
            .get(s.url("/api/health"))
            .header("x-forwarded-for", client);
        async move { request.send().await.unwrap().status() }
    };

    // Not trusted: the header is ignored, every request is 127.0.0.1's.
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &limited);
    assert_eq!(status_as(&s, "203.0.113.1").await, StatusCode::OK);
    assert_eq!(status_as(&s, "203.0.113.2").await, StatusCode::OK);
    assert_eq!(
        status_as(&s, "203.0.113.3").await,
        StatusCode::TOO_MANY_REQUESTS,
        "a client cannot pick a fresh bucket by naming one"
    );
    drop(s);

    // Behind a trusted proxy, each forwarded client has its own bucket.
    let data = tempfile::tempdir().unwrap();
    let mut env = limited.to_vec();
    env.push(("BSM_TRUSTED_PROXIES", "127.0.0.1"));
    let s = start(data.path(), &llm, &env);
    for _ in 0..2 {
        assert_eq!(status_as(&s, "203.0.113.1").await, StatusCode::OK);
    }
    assert_eq!(
        status_as(&s, "203.0.113.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status_as(&s, "203.0.113.2").await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limiter_forgets_clients_that_went_quiet() {
    let llm = LlmServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = start(
        data.path(),
        &llm,
        &[
            // Each client empties its bucket of 3; it is full again (and
            // pruned) 3 s later, and remembered until then.
            ("BSM_RATE_LIMIT", "1"),
            ("BSM_RATE_BURST", "3"),
            ("BSM_TRUSTED_PROXIES", "127.0.0.1"),
            ("BSM_RATE_LIMIT_PRUNE_MS", "200"),
        ],
    );
    for i in 0..100 {
        for _ in 0..3 {
            let r = http()
                .get(s.url("/health"))
                .header("x-forwarded-for", format!("198.51.100.{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // One prober, within its rate: it keeps one bucket of its own.
    let clients = || {
        let request = http()
            .get(s.url("/metrics"))
            .header("x-forwarded-for", "192.0.2.1");
        async move {
            let text = request.send().await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("bsm_rate_limiter_clients "))
                .map(|v| v.trim().parse::<f64>().unwrap())
        }
    };
    let mut seen_many = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = clients().await;
        if now.is_some_and(|n| n >= 100.0) {
            seen_many = true;
        }
        if seen_many && now.is_some_and(|n| n <= 5.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "quiet clients were not pruned (gauge {now:?}, saw 100: {seen_many})"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_read_negations_and_structured_verdicts_and_keep_the_original_names() {
    let llm = LlmServer::start().await;
    llm.set_reply("Reviewed: no blocking issues.");
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &llm, &[]);
    let job = decision_for(&s).await;
    let result = &job["job"]["result"];
    assert_eq!(result["decision"]["verdict"], "approve", "{job}");
    assert_eq!(result["decisionName"], "approve_and_merge", "{job}");

    llm.reply_when(
        "Governance Compliance Officer",
        r#"{"verdict": "block", "findings": ["the PR links no issue"]}"#,
    );
    let job = decision_for(&s).await;
    let result = &job["job"]["result"];
    assert_eq!(result["decision"]["verdict"], "block", "{job}");
    assert_eq!(result["decisionName"], "block_pr", "{job}");
    llm.clear_rules();

    llm.reply_when("Code Review Agent", "Verdict: REQUEST_CHANGES, add tests");
    let job = decision_for(&s).await;
    assert_eq!(
        job["job"]["result"]["decisionName"], "request_changes",
        "{job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_beyond_the_running_and_queued_bounds_are_refused_at_the_door() {
    let llm = LlmServer::start().await;
    llm.set_latency(Duration::from_millis(800));
    let data = tempfile::tempdir().unwrap();
    let s = start(
        data.path(),
        &llm,
        &[("BSM_MAX_RUNNING_JOBS", "1"), ("BSM_MAX_QUEUED_JOBS", "1")],
    );
    let job = json!({"event": "pull_request.opened", "payload": {}});
    let (first, a) = post(&s, "/api/orchestrator/run", job.clone()).await;
    let (second, b) = post(&s, "/api/orchestrator/run", job.clone()).await;
    assert_eq!(
        (first, second),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED),
        "{a} {b}"
    );
    let r = http()
        .post(s.url("/api/orchestrator/run"))
        .json(&job)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().get("retry-after").is_some(), "a retry hint");
    let body: Value = r.json().await.unwrap();
    assert_error(
        StatusCode::SERVICE_UNAVAILABLE,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "JOBS_OVERLOADED",
    );
    // The queued job is not failed: it runs when the first is done.
    let id = b["jobId"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, job) = get(&s, &format!("/api/orchestrator/jobs/{id}")).await;
        if job["status"] == "completed" {
            assert_eq!(
                job["job"]["result"]["decision"]["verdict"], "approve",
                "{job}"
            );
            break;
        }
        assert_eq!(job["status"], "running", "{job}");
        assert!(std::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = post(&s, "/api/orchestrator/run", job).await;
    assert_eq!(status, StatusCode::ACCEPTED, "room again: {body}");
}

/// Lets this process open as many sockets as its hard limit allows (a
/// thousand requests in flight need a thousand client sockets, and the
/// test LLM server as many again).
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_runs_of_one_agent_on_a_slow_llm_all_succeed_with_default_settings() {
    raise_open_file_limit();
    let llm = LlmServer::start().await;
    llm.stop_recording();
    llm.set_latency(Duration::from_millis(200));
    let data = tempfile::tempdir().unwrap();
    // Default settings throughout; only the per-client rate limit is off
    // (as in every test here): this one client stands for a thousand.
    let s = start(data.path(), &llm, &[]);
    let client = bsm_llm::http_client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(1000)
        .build()
        .unwrap();
    let url = s.url("/api/agents/run");
    let runs = (0..1000).map(|i| {
        let request = client
            .post(&url)
            .json(&json!({"agentId": "code-review-agent", "input": format!("Review PR {i}")}));
        async move {
            let r = request.send().await.map_err(|e| e.to_string())?;
            let status = r.status();
            let body: Value = r.json().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body))
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let failures: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r, Ok((StatusCode::OK, _))))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 1000 runs failed; the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    for r in results.iter().take(3) {
        let (_, body) = r.as_ref().unwrap();
        assert_eq!(body["agentId"], "code-review-agent", "{body}");
    }
    assert!(
        llm.max_in_flight() > 32,
        "the provider's limit grew past the old fixed 32 calls: {}",
        llm.max_in_flight()
    );
    let (_, metrics) = get(&s, "/api/metrics").await;
    assert!(
        metrics["llmProviders"][0]["concurrencyLimit"]
            .as_u64()
            .unwrap()
            > 100,
        "{metrics}"
    );
}
