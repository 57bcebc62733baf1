//! Actions that happen, end to end over real HTTP: a signed GitHub webhook
//! → four agents (the local OpenAI-protocol server) → the decision → the
//! outbox → the shipped `github-actions` and `webhook-sink` handler plugins
//! → a local fake GitHub / receiver that records every call and fails on
//! demand.

mod common;
#[path = "common/fake_github.rs"]
mod fake_github;
#[path = "common/llm_server.rs"]
mod llm_server;
#[path = "common/server.rs"]
mod server;

use std::time::Duration;

use fake_github::FakeGitHub;
use hmac::{Hmac, Mac};
use llm_server::LlmServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use server::{ADMIN_TOKEN, BsmServer, http};
use sha2::Sha256;

const WEBHOOK_SECRET: &str = "whs-7Hq2Lp9Xc4Vb8Nm3Kd6Fg1Jt5Rz0Ys";
const GITHUB_TOKEN: &str = "ghp_testtoken0123456789abcdefABCDEF";
const SINK_KEY: &str = "sink-key-Zq8Xv2Lw9Pn4Rb7Ys1Ud6Hf3Kc";

/// The shipped plugins, with the handlers pointed at the fake, and the
/// configuration routing decisions to `github-actions`, the rest to the
/// webhook sink.
struct Setup {
    plugins: tempfile::TempDir,
    config: std::path::PathBuf,
}

fn setup(fake: &FakeGitHub, data: &std::path::Path, sink_host: &str) -> Setup {
    let plugins = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(common::shipped_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, plugins.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        plugins.path().join("github-actions.toml"),
        format!(
            "id = \"github-actions\"\nversion = \"0.1.0\"\nkind = \"handler\"\n[capabilities.http]\nallowed-hosts = [\"{url}\"]\nsecrets = [\"github-token\"]\n[config]\napi-base = \"{url}\"\ntoken-secret = \"github-token\"\n",
            url = fake.url
        ),
    )
    .unwrap();
    std::fs::write(
        plugins.path().join("webhook-sink.toml"),
        format!(
            "id = \"webhook-sink\"\nversion = \"0.1.0\"\nkind = \"handler\"\n[capabilities.http]\nallowed-hosts = [\"{sink_host}\"]\nsecrets = [\"webhook-sink-key\"]\n[config]\nurl = \"{url}/hooks/bsm\"\nsigning-secret = \"webhook-sink-key\"\n",
            url = fake.url
        ),
    )
    .unwrap();
    let config = data.join("bsm.toml");
    std::fs::write(
        &config,
        r#"
[secrets]
github-token = { env = "TEST_GITHUB_TOKEN" }
webhook-sink-key = { env = "TEST_SINK_KEY" }

[actions]
max-attempts = 3
base-backoff-ms = 50
max-backoff-ms = 200
poll-ms = 50

[actions.routes]
approve_pr = "github-actions"
auto_merge = "github-actions"
request_changes = "github-actions"
block_pr = "github-actions"
manual_review_request = "github-actions"
"*" = "webhook-sink"
"#,
    )
    .unwrap();
    Setup { plugins, config }
}

fn start(data: &std::path::Path, llm: &LlmServer, setup: &Setup) -> BsmServer {
    BsmServer::with_llm(
        data,
        &llm.base_url,
        &[
            ("BSM_GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("BSM_PLUGINS_DIR", setup.plugins.path().to_str().unwrap()),
            ("BSM_CONFIG", setup.config.to_str().unwrap()),
            ("TEST_GITHUB_TOKEN", GITHUB_TOKEN),
            ("TEST_SINK_KEY", SINK_KEY),
        ],
    )
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn pull_request(action: &str, number: u64) -> Value {
    json!({
        "action": action,
        "number": number,
        "pull_request": {"title": "Add a feature", "body": "Adds it.", "head": {"sha": format!("sha{number}")}},
        "repository": {"full_name": "acme/app"}
    })
}

/// Delivers a signed webhook; the job id.
async fn webhook(s: &BsmServer, delivery: &str, payload: &Value) -> String {
    let bytes = serde_json::to_vec(payload).unwrap();
    let r = http()
        .post(s.url("/api/webhooks/github"))
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", delivery)
        .header(
            "x-hub-signature-256",
            format!("sha256={}", hmac_hex(WEBHOOK_SECRET, &bytes)),
        )
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["jobId"].as_str().unwrap().to_string()
}

async fn get(s: &BsmServer, path: &str) -> Value {
    http()
        .get(s.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The job's actions once none is queued, delivering or failed any more.
async fn settled_actions(s: &BsmServer, job: &str) -> Vec<Value> {
    let mut last = Vec::new();
    for _ in 0..300 {
        let body = get(s, &format!("/api/actions?job={job}")).await;
        last = body["actions"].as_array().cloned().unwrap_or_default();
        let busy = last.iter().any(|a| {
            matches!(
                a["status"].as_str(),
                Some("queued" | "delivering" | "failed")
            )
        });
        if !last.is_empty() && !busy {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the actions of job {job} did not settle: {last:#?}");
}

/// The action once it reaches `status` (or as it is after 10 s).
async fn action_when(s: &BsmServer, id: &str, status: &str) -> Value {
    let mut action = Value::Null;
    for _ in 0..200 {
        action = get(s, &format!("/api/actions/{id}")).await["action"].clone();
        if action["status"] == status {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    action
}

fn statuses(actions: &[Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = actions
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_pull_request_is_commented_once_approved_and_merged_on_github() {
    let llm = LlmServer::start().await;
    llm.set_reply("Looks good to me.");
    let fake = FakeGitHub::start().await;
    let data = tempfile::tempdir().unwrap();
    let setup = setup(&fake, data.path(), &fake.host());
    let s = start(data.path(), &llm, &setup);

    let job = webhook(&s, "d-1", &pull_request("opened", 7)).await;
    let actions = settled_actions(&s, &job).await;
    let delivered: Vec<_> = statuses(&actions)
        .into_iter()
        .filter(|(n, _)| n == "approve_pr" || n == "auto_merge")
        .collect();
    assert_eq!(
        delivered,
        [
            ("approve_pr".to_string(), "delivered".to_string()),
            ("auto_merge".to_string(), "delivered".to_string())
        ],
        "{actions:#?}"
    );
    let comments = fake.comments(7);
    assert_eq!(comments.len(), 1, "one report comment: {comments:?}");
    assert!(
        comments[0].contains("approve_and_merge") && comments[0].contains("#"),
        "{}",
        comments[0]
    );
    let reviews = fake.calls_to("POST", "/repos/acme/app/pulls/7/reviews");
    assert_eq!(reviews[0].body["event"], "APPROVE");
    let merges = fake.calls_to("PUT", "/repos/acme/app/pulls/7/merge");
    assert_eq!(merges.len(), 1);
    assert_eq!(merges[0].body["sha"], "sha7", "merges what was reviewed");
    for call in fake.calls() {
        assert_eq!(
            call.header("authorization"),
            Some(format!("Bearer {GITHUB_TOKEN}").as_str()),
            "the host put the token in: {call:?}"
        );
    }
    assert!(
        !s.logs().contains(GITHUB_TOKEN),
        "the token is never logged"
    );

    // A new push: the same comment is updated, not duplicated.
    let job = webhook(&s, "d-2", &pull_request("synchronize", 7)).await;
    settled_actions(&s, &job).await;
    assert_eq!(fake.comments(7).len(), 1);
    assert!(
        !fake
            .calls_to("PATCH", "/repos/acme/app/issues/comments/")
            .is_empty()
    );
    assert_eq!(fake.calls_to("PUT", "/pulls/7/merge").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_finding_blocks_and_a_change_request_requests_changes() {
    let llm = LlmServer::start().await;
    llm.set_reply("Looks good to me.");
    llm.reply_when(
        "Security Scanner",
        "Severity: CRITICAL - SQL injection in login",
    );
    let fake = FakeGitHub::start().await;
    let data = tempfile::tempdir().unwrap();
    let setup = setup(&fake, data.path(), &fake.host());
    let s = start(data.path(), &llm, &setup);

    let job = webhook(&s, "d-1", &pull_request("opened", 8)).await;
    let actions = settled_actions(&s, &job).await;
    assert!(
        statuses(&actions).contains(&("block_pr".to_string(), "delivered".to_string())),
        "{actions:#?}"
    );
    let labels = fake.calls_to("POST", "/repos/acme/app/issues/8/labels");
    assert_eq!(labels[0].body["labels"], json!(["bsm-blocked"]));
    let status = fake.calls_to("POST", "/repos/acme/app/statuses/sha8");
    assert_eq!(status[0].body["state"], "failure");
    assert!(fake.calls_to("PUT", "/merge").is_empty(), "nothing merged");
    let comment = &fake.comments(8)[0];
    assert!(
        comment.contains("block_pr"),
        "the job's decision: {comment}"
    );
    assert!(
        comment.contains("## Agents"),
        "the job's report, found through its stored result: {comment}"
    );

    llm.clear_rules();
    llm.reply_when("Code Review Agent", "Verdict: REQUEST_CHANGES, add tests");
    let job = webhook(&s, "d-2", &pull_request("opened", 9)).await;
    settled_actions(&s, &job).await;
    let reviews = fake.calls_to("POST", "/repos/acme/app/pulls/9/reviews");
    assert_eq!(reviews[0].body["event"], "REQUEST_CHANGES");
    assert!(fake.calls_to("PUT", "/merge").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_github_is_retried_then_dead_lettered_and_an_admin_retry_delivers() {
    let llm = LlmServer::start().await;
    llm.set_reply("Looks good to me.");
    let fake = FakeGitHub::start().await;
    fake.fail_next(502, 1_000);
    let data = tempfile::tempdir().unwrap();
    let setup = setup(&fake, data.path(), &fake.host());
    let s = start(data.path(), &llm, &setup);

    let job = webhook(&s, "d-1", &pull_request("opened", 10)).await;
    let actions = settled_actions(&s, &job).await;
    let merge = actions.iter().find(|a| a["name"] == "auto_merge").unwrap();
    assert_eq!(merge["status"], "dead", "{merge:#}");
    assert_eq!(merge["attempts"], 3, "max-attempts");
    assert!(
        merge["lastError"].as_str().unwrap().contains("502"),
        "{merge:#}"
    );
    let dead = get(&s, "/api/actions?status=dead").await;
    assert!(
        dead["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == merge["id"]),
        "visible as dead: {dead}"
    );
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("bsm_actions{status=\"dead\"}"),
        "per-status gauge"
    );

    fake.fail_next(502, 0);
    let r = http()
        .post(s.url(&format!(
            "/api/actions/{}/retry",
            merge["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "retry is admin-only");
    let r = http()
        .post(s.url(&format!(
            "/api/actions/{}/retry",
            merge["id"].as_str().unwrap()
        )))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let actions = settled_actions(&s, &job).await;
    let merge = actions.iter().find(|a| a["name"] == "auto_merge").unwrap();
    assert_eq!(merge["status"], "delivered", "{merge:#}");
    assert_eq!(fake.comments(10).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_waiting_for_approval_is_delivered_only_after_it() {
    let llm = LlmServer::start().await;
    // pr-merge-agent's registry entry requires a manual approval.
    llm.set_reply("All gates passed.\nACTION: auto_merge");
    let fake = FakeGitHub::start().await;
    let data = tempfile::tempdir().unwrap();
    let setup = setup(&fake, data.path(), &fake.host());
    let s = start(data.path(), &llm, &setup);
    let r = http()
        .post(s.url("/api/agents/run"))
        .json(&json!({
            "agentId": "pr-merge-agent",
            "input": "merge?",
            "context": "ci",
            "payload": {"number": 11, "repository": {"full_name": "acme/app"}}
        }))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let action = &body["actions"][0];
    assert_eq!(action["status"], "pending_approval", "{body}");
    let id = action["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        fake.calls().is_empty(),
        "nothing is delivered before approval"
    );
    let a = get(&s, &format!("/api/actions/{id}")).await;
    assert_eq!(a["action"]["status"], "pending_approval");

    let approval = action["approvalId"].as_str().unwrap();
    let r = http()
        .post(s.url(&format!("/api/approvals/{approval}/approve")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let status = action_when(&s, &id, "delivered").await;
    assert_eq!(status["status"], "delivered", "{status:#}");
    assert_eq!(status["decidedBy"], "admin");
    // A direct run's payload names the pull request.
    assert_eq!(
        fake.calls_to("PUT", "/repos/acme/app/pulls/11/merge").len(),
        1
    );

    // Rejecting records who and why, and nothing is delivered.
    let r = http()
        .post(s.url("/api/agents/run"))
        .json(&json!({"agentId": "pr-merge-agent", "input": "merge?", "context": "ci"}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let id = body["actions"][0]["id"].as_str().unwrap().to_string();
    let approval = body["actions"][0]["approvalId"].as_str().unwrap();
    let r = http()
        .post(s.url(&format!("/api/approvals/{approval}/reject")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"reason": "not during the freeze"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let a = get(&s, &format!("/api/actions/{id}")).await;
    assert_eq!(a["action"]["status"], "rejected");
    assert_eq!(a["action"]["reason"], "not during the freeze");
    assert_eq!(a["action"]["decidedBy"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_sink_signs_what_it_posts_and_a_host_not_granted_is_refused() {
    let llm = LlmServer::start().await;
    llm.set_reply("Compliant.\nACTION: review_pr");
    let fake = FakeGitHub::start().await;
    let data = tempfile::tempdir().unwrap();
    let setup = setup(&fake, data.path(), &fake.host());
    let s = start(data.path(), &llm, &setup);
    let r = http()
        .post(s.url("/api/agents/run"))
        .json(&json!({"agentId": "code-review-agent", "input": "review"}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let id = body["actions"][0]["id"].as_str().unwrap().to_string();
    let action = action_when(&s, &id, "delivered").await;
    assert_eq!(action["status"], "delivered", "{action:#}");
    assert_eq!(action["handler"], "webhook-sink");
    let posts = fake.calls_to("POST", "/hooks/bsm");
    assert_eq!(posts.len(), 1);
    let post = &posts[0];
    let expected = format!("sha256={}", hmac_hex(SINK_KEY, &post.raw));
    assert_eq!(
        post.header("x-bsm-signature-256"),
        Some(expected.as_str()),
        "the signature verifies"
    );
    assert_eq!(post.body["name"], "review_pr");
    assert_eq!(
        post.header("x-bsm-idempotency-key"),
        action["idempotencyKey"].as_str()
    );
    drop(s);

    // The same sink granted another host only: refused, and dead at once.
    let data = tempfile::tempdir().unwrap();
    let elsewhere = self::setup(&fake, data.path(), "https://hooks.example.com");
    let s = start(data.path(), &llm, &elsewhere);
    let before = fake.calls().len();
    let r = http()
        .post(s.url("/api/agents/run"))
        .json(&json!({"agentId": "code-review-agent", "input": "review"}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let id = body["actions"][0]["id"].as_str().unwrap().to_string();
    let action = action_when(&s, &id, "dead").await;
    assert_eq!(action["status"], "dead", "{action:#}");
    assert!(
        action["lastError"]
            .as_str()
            .unwrap()
            .contains("allowed-hosts"),
        "{action:#}"
    );
    assert_eq!(fake.calls().len(), before, "no request left the host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_delivery_loses_nothing_and_redelivers_with_the_same_key() {
    let llm = LlmServer::start().await;
    llm.set_reply("Compliant.\nACTION: review_pr");
    let fake = FakeGitHub::start().await;
    let data = tempfile::tempdir().unwrap();
    let setup = setup(&fake, data.path(), &fake.host());
    let mut s = start(data.path(), &llm, &setup);
    // The receiver takes its time: the server dies while delivering.
    fake.set_delay_ms(3_000);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = http()
            .post(s.url("/api/agents/run"))
            .json(&json!({"agentId": "code-review-agent", "input": "review"}))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        ids.push(body["actions"][0]["id"].as_str().unwrap().to_string());
    }
    for _ in 0..100 {
        if fake.calls_to("POST", "/hooks/bsm").len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fake.calls_to("POST", "/hooks/bsm").len(),
        3,
        "all three in flight"
    );
    s.crash();
    fake.set_delay_ms(0);

    let s = start(data.path(), &llm, &setup);
    for id in &ids {
        let action = action_when(&s, id, "delivered").await;
        assert_eq!(action["status"], "delivered", "nothing lost: {action:#}");
        assert_eq!(action["attempts"], 2, "delivered again after the crash");
    }
    // At least once: each action arrived twice, both times with its key.
    let posts = fake.calls_to("POST", "/hooks/bsm");
    assert_eq!(posts.len(), 6);
    let mut keys: Vec<&str> = posts
        .iter()
        .map(|p| p.header("x-bsm-idempotency-key").unwrap())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        3,
        "a receiver dropping duplicates by key sees each once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_blocking_issues_merges_and_a_json_block_verdict_blocks() {
    let llm = LlmServer::start().await;
    llm.set_reply("Looks good to me.");
    llm.reply_when(
        "Governance Compliance Officer",
        "No blocking issues found; the change is compliant.",
    );
    let fake = FakeGitHub::start().await;
    let data = tempfile::tempdir().unwrap();
    let setup = setup(&fake, data.path(), &fake.host());
    let s = start(data.path(), &llm, &setup);

    let job = webhook(&s, "d-1", &pull_request("opened", 21)).await;
    settled_actions(&s, &job).await;
    assert_eq!(
        fake.calls_to("PUT", "/pulls/21/merge").len(),
        1,
        "\"no blocking issues\" does not block"
    );
    // The PR agents are asked for a structured verdict, by JSON mode too.
    let asked = llm
        .seen()
        .into_iter()
        .find(|r| r.body["messages"].to_string().contains("Code Review Agent"))
        .unwrap();
    assert_eq!(asked.body["response_format"]["type"], "json_object");
    assert!(
        asked.body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("\"verdict\"")
    );

    llm.reply_when(
        "Security Scanner",
        r#"{"verdict": "block", "summary": "a secret in the code", "findings": [{"severity": "high", "message": "AWS key in config.js"}]}"#,
    );
    let job = webhook(&s, "d-2", &pull_request("opened", 22)).await;
    let actions = settled_actions(&s, &job).await;
    assert!(
        statuses(&actions).contains(&("block_pr".to_string(), "delivered".to_string())),
        "{actions:#?}"
    );
    assert!(fake.calls_to("PUT", "/pulls/22/merge").is_empty());
    assert_eq!(
        fake.calls_to("POST", "/repos/acme/app/issues/22/labels")[0].body["labels"],
        json!(["bsm-blocked"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_without_a_route_is_dead_at_once_with_the_reason_and_none_is_left_behind() {
    let llm = LlmServer::start().await;
    llm.set_reply("Reviewed: looks good to me.\nACTION: review_pr");
    let data = tempfile::tempdir().unwrap();
    // No [actions.routes]: nothing would deliver `review_pr`.
    let s = BsmServer::with_llm(data.path(), &llm.base_url, &[]);
    // More runs than the dispatcher's 16 delivery places, side by side.
    let runs = (0..40).map(|i| {
        let s = &s;
        async move {
            let r = http()
                .post(s.url("/api/agents/run"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"agentId": "code-review-agent", "input": format!("Review PR {i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let body: Value = r.json().await.unwrap();
            // The run's answer says so already: nothing waits for a claim.
            let action = &body["actions"][0];
            assert_eq!(action["status"], "dead", "{body}");
            assert!(
                action["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no handler is configured")),
                "{body}"
            );
            action["id"].as_str().unwrap().to_string()
        }
    });
    let ids = futures_util::future::join_all(runs).await;
    for id in &ids {
        let action = action_when(&s, id, "dead").await;
        assert_eq!(action["status"], "dead", "{action:#}");
        assert_eq!(
            action["attempts"], 0,
            "no delivery was attempted: {action:#}"
        );
        assert!(
            action["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("no handler is configured for action \"review_pr\"")),
            "{action:#}"
        );
    }
    let listed = get(&s, "/api/actions?status=dead").await;
    assert_eq!(listed["actions"].as_array().map(Vec::len), Some(40));
    let queued = get(&s, "/api/actions?status=queued").await;
    assert_eq!(queued["actions"].as_array().map(Vec::len), Some(0));
}
