//! Hot swap of plugins in a running `bsm serve`, over real HTTP: install,
//! versions, rollback, promote, remove, refusals, canaries, automatic
//! rollback, restarts, swaps under load, and the CLI against the server.
//! The `versioned` test plugin answers `version <tag>`, the tag coming from
//! the manifest of the version that ran.

mod common;
#[path = "common/llm_server.rs"]
mod llm_server;
#[path = "common/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llm_server::{Fault, LlmServer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use server::{ADMIN_TOKEN, BsmServer, http};

fn start(data: &Path, extra: &[(&str, &str)]) -> BsmServer {
    let mut env = vec![("BSM_ADMIN_TOKEN", ADMIN_TOKEN), ("BSM_RATE_LIMIT", "0")];
    env.extend_from_slice(extra);
    BsmServer::start(data, &env).unwrap_or_else(|e| panic!("{e}"))
}

fn versioned_wasm() -> Vec<u8> {
    std::fs::read(common::test_plugins_dir().join("versioned.wasm")).unwrap()
}

/// The manifest of `versioned` version `version`, answering `version <tag>`.
fn manifest(version: &str, tag: &str, extra_config: &str, extra: &str) -> String {
    format!(
        "id = \"versioned\"\nversion = \"{version}\"\nkind = \"agent\"\n{extra}\n[budget]\ntimeout-ms = 3000\nmax-concurrent = 64\nmax-queued = 1024\nmax-queue-wait-ms = 5000\n\n[config]\ntag = \"{tag}\"\n{extra_config}\n"
    )
}

async fn upload(
    s: &BsmServer,
    id: &str,
    component: Vec<u8>,
    manifest: String,
    query: &str,
) -> (StatusCode, Value) {
    let form = reqwest::multipart::Form::new()
        .part(
            "component",
            reqwest::multipart::Part::bytes(component).file_name("plugin.wasm"),
        )
        .text("manifest", manifest);
    let r = http()
        .put(s.url(&format!("/api/plugins/{id}{query}")))
        .header("x-admin-token", ADMIN_TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn install(s: &BsmServer, version: &str, tag: &str) {
    let (status, body) = upload(
        s,
        "versioned",
        versioned_wasm(),
        manifest(version, tag, "", ""),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn admin(
    s: &BsmServer,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = http()
        .request(method, s.url(path))
        .header("x-admin-token", ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn run(s: &BsmServer, payload: Value) -> (StatusCode, Value) {
    let r = http()
        .post(s.url("/api/agents/run"))
        .json(&json!({"agentId": "versioned", "input": "x", "payload": payload}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `n` runs of 20 ms each, started now (load during a change).
fn runs_in_flight(
    s: &Arc<BsmServer>,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(StatusCode, Value)>> {
    (0..n)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { run(&s, json!({"ms": 20})).await })
        })
        .collect()
}

async fn all_succeed(runs: Vec<tokio::task::JoinHandle<(StatusCode, Value)>>) {
    for r in runs {
        let (status, body) = r.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// The tag of the version that answered a run.
async fn answer(s: &BsmServer) -> String {
    let (status, body) = run(s, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["output"].as_str().unwrap().to_string()
}

async fn versions(s: &BsmServer) -> Vec<Value> {
    let r = http()
        .get(s.url("/api/plugins/versioned/versions"))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    body["versions"].as_array().cloned().unwrap_or_default()
}

/// How many components the server compiled (or loaded from its artifact cache).
async fn components_loaded(s: &BsmServer) -> u64 {
    let r = http().get(s.url("/api/cache/stats")).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    body["caches"]["components"]["loads"].as_u64().unwrap()
}

fn status_of<'a>(versions: &'a [Value], version: &str) -> &'a str {
    versions
        .iter()
        .find(|v| v["version"] == version)
        .and_then(|v| v["status"].as_str())
        .unwrap_or_else(|| panic!("no version {version}: {versions:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_install_roll_back_and_remove_and_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut s = start(data.path(), &[]);

    let (status, body) = upload(
        &s,
        "versioned",
        versioned_wasm(),
        manifest("1.0.0", "1", "", ""),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"]["status"], "current");
    assert_eq!(body["version"]["route"], "api");
    assert_eq!(body["version"]["digest"].as_str().unwrap().len(), 64);
    assert_eq!(answer(&s).await, "version 1");

    let compiled = components_loaded(&s).await;
    install(&s, "2.0.0", "2").await;
    assert_eq!(answer(&s).await, "version 2");
    assert_eq!(
        components_loaded(&s).await,
        compiled,
        "the same component under a new manifest is not compiled again"
    );
    let list = versions(&s).await;
    assert_eq!(status_of(&list, "2.0.0"), "current");
    assert_eq!(status_of(&list, "1.0.0"), "previous");
    assert_eq!(list[0]["version"], "2.0.0", "newest first");
    assert_eq!(list[0]["runs"], 1);
    assert!(list[0]["installedAt"].as_str().is_some());

    let (status, body) = admin(
        &s,
        reqwest::Method::POST,
        "/api/plugins/versioned/rollback",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["current"]["version"], "1.0.0");
    assert_eq!(answer(&s).await, "version 1");
    let list = versions(&s).await;
    assert_eq!(status_of(&list, "2.0.0"), "rolled_back");

    let (status, body) = admin(
        &s,
        reqwest::Method::POST,
        "/api/plugins/versioned/rollback",
        json!({"version": "2.0.0"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(answer(&s).await, "version 2");
    let (status, body) = admin(
        &s,
        reqwest::Method::POST,
        "/api/plugins/versioned/rollback",
        json!({"version": "9.9.9"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("VERSION_NOT_FOUND")),
        "{body}"
    );

    // A restart serves the same version.
    s.stop();
    let mut s = start(data.path(), &[]);
    assert_eq!(answer(&s).await, "version 2");
    assert_eq!(status_of(&versions(&s).await, "2.0.0"), "current");

    let (status, body) = admin(
        &s,
        reqwest::Method::DELETE,
        "/api/plugins/versioned",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = run(&s, json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("AGENT_NOT_FOUND")),
        "{body}"
    );
    s.stop();
    let s = start(data.path(), &[]);
    let (status, _) = run(&s, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "removed stays removed");

    // Admin only.
    let r = http()
        .delete(s.url("/api/plugins/hello-agent"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_version_leaves_the_current_one_serving_with_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &[("BSM_UPLOAD_LIMIT", "2000000")]);
    install(&s, "1.0.0", "1").await;
    let wrong_world = std::fs::read(common::test_plugins_dir().join("cli-command.wasm")).unwrap();
    let cases: Vec<(&str, Vec<u8>, String, &str)> = vec![
        (
            "corrupt",
            b"\0asm\x0d\0\x01\0 not really".to_vec(),
            manifest("2", "2", "", ""),
            "INVALID_COMPONENT",
        ),
        (
            "not wasm",
            b"hello".to_vec(),
            manifest("2", "2", "", ""),
            "INVALID_COMPONENT",
        ),
        (
            "wrong world",
            wrong_world,
            manifest("2", "2", "", ""),
            "WRONG_WORLD",
        ),
        (
            "trap in describe",
            versioned_wasm(),
            manifest("2", "2", "describe = \"trap\"", ""),
            "DESCRIBE_FAILED",
        ),
        (
            "timeout in describe",
            versioned_wasm(),
            manifest("2", "2", "describe = \"spin\"", "")
                .replace("timeout-ms = 3000", "timeout-ms = 300"),
            "DESCRIBE_FAILED",
        ),
        (
            "describe says another id",
            versioned_wasm(),
            manifest("2", "2", "describe = \"wrong-id\"", ""),
            "ID_MISMATCH",
        ),
        (
            "manifest error",
            versioned_wasm(),
            "id = \"versioned\"\nversion = 2\n".into(),
            "INVALID_MANIFEST",
        ),
        (
            "manifest of another plugin",
            versioned_wasm(),
            manifest("2", "2", "", "").replace("id = \"versioned\"", "id = \"hello-agent\""),
            "ID_MISMATCH",
        ),
        (
            "oversized upload",
            // Just over the limit: the server answers 413 once it has read
            // the limit, and closes; what the client has not yet sent by
            // then must fit in the sockets' buffers, or the client fails
            // writing (a broken pipe) before it reads the answer. 3 MB
            // lost that race now and then on a loaded machine.
            vec![0u8; 2_100_000],
            manifest("2", "2", "", ""),
            "PAYLOAD_TOO_LARGE",
        ),
    ];
    for (case, component, manifest, code) in cases {
        let (status, body) = upload(&s, "versioned", component, manifest, "").await;
        assert!(status.is_client_error(), "{case}: {status} {body}");
        assert_eq!(body["error"]["code"], code, "{case}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{case}: {body}"
        );
        assert_eq!(
            answer(&s).await,
            "version 1",
            "{case}: the current version still serves"
        );
    }
    assert_eq!(versions(&s).await.len(), 1, "nothing refused was recorded");
    assert!(s.logs().contains("plugin version refused"), "{}", s.logs());
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("bsm_plugin_installs_total{outcome=\"DESCRIBE_FAILED\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_flight_during_a_swap_finishes_on_its_old_version() {
    let data = tempfile::tempdir().unwrap();
    let s = Arc::new(start(data.path(), &[]));
    install(&s, "1.0.0", "1").await;
    let slow = {
        let s = s.clone();
        tokio::spawn(async move { run(&s, json!({"ms": 1500})).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    install(&s, "2.0.0", "2").await;
    assert_eq!(
        answer(&s).await,
        "version 2",
        "new runs go to the new version"
    );
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["output"], "version 1",
        "the run kept the version it started on"
    );
}

/// 50 clients call the plugin without pause while `swap(tag)` installs
/// versions 2 to 6: no request fails, every answer comes from an installed
/// version, and a request sent a second after a swap is answered by it.
async fn swaps_under_load<F, Fut>(s: Arc<BsmServer>, swap: F)
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    // (tag, when the request was sent, when it was answered)
    let answers: Arc<Mutex<Vec<(String, Duration, Duration)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let (s, answers, failures, stop) =
                (s.clone(), answers.clone(), failures.clone(), stop.clone());
            tokio::spawn(async move {
                let client = http();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = started.elapsed();
                    let r = client
                        .post(s.url("/api/agents/run"))
                        .json(&json!({"agentId": "versioned", "input": "x"}))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == StatusCode::OK => {
                            let body: Value = r.json().await.unwrap();
                            let tag = body["output"].as_str().unwrap().to_string();
                            answers.lock().unwrap().push((tag, sent, started.elapsed()));
                        }
                        Ok(r) => {
                            let failure =
                                format!("{} {}", r.status(), r.text().await.unwrap_or_default());
                            failures.lock().unwrap().push(failure);
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    // Swaps: (tag, when the swap began: the upload sent, the file dropped).
    let mut swaps = vec![("1".to_string(), Duration::ZERO)];
    for tag in 2..=6 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        swaps.push((tag.to_string(), started.elapsed()));
        swap(tag).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let answers = answers.lock().unwrap();
    assert!(
        answers.len() > 200,
        "sustained load: {} answers",
        answers.len()
    );
    let installed: Vec<String> = swaps.iter().map(|(t, _)| format!("version {t}")).collect();
    for (tag, _, _) in answers.iter() {
        assert!(
            installed.contains(tag),
            "an answer from no installed version: {tag}"
        );
    }
    // A request sent a second or more after a swap, and answered before the
    // next one, comes from that swap's version.
    for (i, (tag, at)) in swaps.iter().enumerate() {
        let until = swaps.get(i + 1).map_or(Duration::MAX, |(_, next)| *next);
        let late: Vec<_> = answers
            .iter()
            .filter(|(_, sent, done)| *sent >= *at + Duration::from_secs(1) && *done < until)
            .filter(|(t, _, _)| t != &format!("version {tag}"))
            .collect();
        assert!(late.is_empty(), "after the swap to {tag}: {late:?}");
    }
    let mut per_version: BTreeMap<&str, usize> = BTreeMap::new();
    for (tag, _, _) in answers.iter() {
        *per_version.entry(tag).or_default() += 1;
    }
    assert_eq!(
        per_version.len(),
        6,
        "every version served: {per_version:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_through_the_api_under_load_fail_no_request() {
    let data = tempfile::tempdir().unwrap();
    let s = Arc::new(start(data.path(), &[]));
    install(&s, "1.0.0", "1").await;
    let server = s.clone();
    swaps_under_load(s, move |tag| {
        let s = server.clone();
        async move { install(&s, &format!("{tag}.0.0"), &tag.to_string()).await }
    })
    .await;
}

/// Writes a file the atomic way: elsewhere in the directory, then renamed.
fn drop_file(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.partial"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A plugins directory holding `versioned` version 1.
fn plugins_dir_with_versioned() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "versioned.wasm", &versioned_wasm());
    drop_file(
        dir.path(),
        "versioned.toml",
        manifest("1.0.0", "1", "", "").as_bytes(),
    );
    dir
}

/// Waits (up to 10 s) until runs answer `expected`.
async fn until_answer(s: &BsmServer, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while answer(s).await != expected {
        assert!(Instant::now() < deadline, "never answered {expected:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_through_the_plugins_directory_under_load_fail_no_request() {
    let plugins = plugins_dir_with_versioned();
    let data = tempfile::tempdir().unwrap();
    let s = Arc::new(start(
        data.path(),
        &[("BSM_PLUGINS_DIR", plugins.path().to_str().unwrap())],
    ));
    assert_eq!(answer(&s).await, "version 1");
    let dir = plugins.path().to_path_buf();
    let server = s.clone();
    swaps_under_load(s, move |tag| {
        let (dir, s) = (dir.clone(), server.clone());
        async move {
            drop_file(
                &dir,
                "versioned.toml",
                manifest(&format!("{tag}.0.0"), &tag.to_string(), "", "").as_bytes(),
            );
            until_answer(&s, &format!("version {tag}")).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugins_directory_is_watched_and_a_half_written_file_never_serves() {
    let plugins = plugins_dir_with_versioned();
    let data = tempfile::tempdir().unwrap();
    let s = start(
        data.path(),
        &[("BSM_PLUGINS_DIR", plugins.path().to_str().unwrap())],
    );
    assert_eq!(answer(&s).await, "version 1");
    drop_file(
        plugins.path(),
        "versioned.toml",
        manifest("2.0.0", "2", "", "").as_bytes(),
    );
    until_answer(&s, "version 2").await;
    let list = versions(&s).await;
    assert_eq!(status_of(&list, "2.0.0"), "current");
    assert_eq!(list[0]["route"], "directory");

    // A component copied in place (not renamed), caught half-written.
    let wasm = versioned_wasm();
    std::fs::write(
        plugins.path().join("versioned.toml"),
        manifest("3.0.0", "3", "", ""),
    )
    .unwrap();
    std::fs::write(
        plugins.path().join("versioned.wasm"),
        &wasm[..wasm.len() / 2],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.logs().contains("plugin version refused") {
        assert!(
            Instant::now() < deadline,
            "the half-written file was not refused: {}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        answer(&s).await,
        "version 2",
        "the current version keeps serving"
    );
    std::fs::write(plugins.path().join("versioned.wasm"), &wasm).unwrap();
    until_answer(&s, "version 3").await;

    // A broken manifest edit is refused too.
    drop_file(
        plugins.path(),
        "versioned.toml",
        b"id = \"versioned\"\nversion = [\n",
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(answer(&s).await, "version 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_its_share_and_can_be_promoted_or_rolled_back() {
    let data = tempfile::tempdir().unwrap();
    let s = Arc::new(start(data.path(), &[]));
    install(&s, "1.0.0", "1").await;
    let (status, body) = upload(
        &s,
        "versioned",
        versioned_wasm(),
        manifest("2.0.0", "2", "", ""),
        "?canary=10",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"]["status"], "canary");
    assert_eq!(body["version"]["canaryPercent"], 10);

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for chunk in 0..10 {
        let runs: Vec<_> = (0..100)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { answer(&s).await })
            })
            .collect();
        for r in runs {
            *counts.entry(r.await.unwrap()).or_default() += 1;
        }
        let _ = chunk;
    }
    let canary = counts.get("version 2").copied().unwrap_or(0);
    // Binomial(1000, 0.1): mean 100, sd 9.5; these bounds are over 4 sd.
    assert!(
        (60..=140).contains(&canary),
        "the canary took {canary} of 1000 runs: {counts:?}"
    );
    assert_eq!(canary + counts["version 1"], 1000);

    // Promoted while runs are in flight: none fails.
    let load = runs_in_flight(&s, 200);
    let (status, body) = admin(
        &s,
        reqwest::Method::POST,
        "/api/plugins/versioned/promote",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    all_succeed(load).await;
    for _ in 0..20 {
        assert_eq!(answer(&s).await, "version 2");
    }
    let list = versions(&s).await;
    assert_eq!(status_of(&list, "2.0.0"), "current");
    assert_eq!(status_of(&list, "1.0.0"), "previous");

    // A second canary, rolled back under load.
    upload(
        &s,
        "versioned",
        versioned_wasm(),
        manifest("3.0.0", "3", "", ""),
        "?canary=50",
    )
    .await;
    let load = runs_in_flight(&s, 200);
    let (status, body) = admin(
        &s,
        reqwest::Method::POST,
        "/api/plugins/versioned/rollback",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    all_succeed(load).await;
    for _ in 0..20 {
        assert_eq!(answer(&s).await, "version 2", "the canary is gone");
    }
    assert_eq!(status_of(&versions(&s).await, "3.0.0"), "rolled_back");
    let (status, body) = admin(
        &s,
        reqwest::Method::POST,
        "/api/plugins/versioned/promote",
        json!({}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("NO_CANARY"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_version_is_rolled_back_by_itself_and_a_healthy_one_is_not() {
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &[]);
    install(&s, "1.0.0", "1").await;
    let probation = "[rollout]\nprobation-runs = 10\nmax-failure-rate = 0.3\n";
    let (status, body) = upload(
        &s,
        "versioned",
        versioned_wasm(),
        manifest("2.0.0", "2", "run = \"trap\"", probation),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut trapped = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = run(&s, json!({})).await;
        if status == StatusCode::OK {
            assert_eq!(body["output"], "version 1", "{body}");
            break;
        }
        assert_eq!(body["error"]["code"], "PLUGIN_TRAP", "{body}");
        trapped += 1;
        assert!(
            Instant::now() < deadline,
            "never rolled back after {trapped} traps"
        );
    }
    assert!(
        (4..=6).contains(&trapped),
        "rolled back after the 4th fault of 10: {trapped}"
    );
    let list = versions(&s).await;
    let v2 = list.iter().find(|v| v["version"] == "2.0.0").unwrap();
    assert_eq!(v2["status"], "rolled_back", "{v2}");
    assert!(
        v2["reason"]
            .as_str()
            .unwrap()
            .contains("automatic rollback"),
        "{v2}"
    );
    assert_eq!(status_of(&list, "1.0.0"), "current");
    assert!(s.logs().contains("plugin rolled back"), "{}", s.logs());

    // A healthy version passes its probation and stays.
    upload(
        &s,
        "versioned",
        versioned_wasm(),
        manifest("3.0.0", "3", "", probation),
        "",
    )
    .await;
    for _ in 0..30 {
        assert_eq!(answer(&s).await, "version 3");
    }
    assert_eq!(status_of(&versions(&s).await, "3.0.0"), "current");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_outage_does_not_roll_a_version_back() {
    let llm = LlmServer::start().await;
    llm.set_default(Fault::Status(500));
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &[("BSM_LLM_BASE_URL", &llm.base_url)]);
    let prompt_agent = std::fs::read(common::shipped_dir().join("prompt-agent.wasm")).unwrap();
    let manifest = |version: &str| {
        format!(
            "id = \"prompt-agent\"\nversion = \"{version}\"\nkind = \"agent\"\n[rollout]\nprobation-runs = 5\nmax-failure-rate = 0.2\n[config]\nname = \"Canary writer\"\n[capabilities.llm]\n[capabilities.knowledge]\n"
        )
    };
    let (status, body) = upload(&s, "prompt-agent", prompt_agent, manifest("2.0.0"), "").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for _ in 0..10 {
        let r = http()
            .post(s.url("/api/agents/run"))
            .json(&json!({"agentId": "prompt-agent", "input": "hi"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_server_error(), "the LLM is down");
    }
    let r = http()
        .get(s.url("/api/plugins/prompt-agent/versions"))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["versions"][0]["version"], "2.0.0", "{body}");
    assert_eq!(
        body["versions"][0]["status"], "current",
        "not the plugin's fault: {body}"
    );
    assert_eq!(body["versions"][0]["failures"], 0, "{body}");
}

fn bsm_cli(args: &[&str], server: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_bsm"))
        .args(args)
        .env("BSM_SERVER", server)
        .env("BSM_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("bsm runs")
}

fn versioned_files(dir: &Path, version: &str, tag: &str) -> PathBuf {
    let wasm = dir.join("versioned.wasm");
    std::fs::write(&wasm, versioned_wasm()).unwrap();
    std::fs::write(dir.join("versioned.toml"), manifest(version, tag, "", "")).unwrap();
    wasm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_installs_lists_rolls_back_and_removes_on_a_running_server() {
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &[]);
    let files = tempfile::tempdir().unwrap();
    let url = s.url.clone();
    let out = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let wasm = versioned_files(files.path(), "1.0.0", "1");
    let o = bsm_cli(&["plugins", "install", wasm.to_str().unwrap()], &url);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).starts_with("installed versioned 1.0.0 (sha256 "),
        "{}",
        out(&o)
    );
    assert!(out(&o).trim_end().ends_with("as current"), "{}", out(&o));
    let wasm = versioned_files(files.path(), "2.0.0", "2");
    let o = bsm_cli(
        &[
            "plugins",
            "install",
            wasm.to_str().unwrap(),
            "--canary",
            "20",
        ],
        &url,
    );
    assert!(
        out(&o).contains("as canary taking 20% of new runs"),
        "{}{}",
        out(&o),
        err(&o)
    );
    let o = bsm_cli(&["plugins", "promote", "versioned"], &url);
    assert_eq!(
        out(&o),
        "promoted versioned: 2.0.0 is current\n",
        "{}",
        err(&o)
    );
    assert_eq!(answer(&s).await, "version 2");

    let o = bsm_cli(&["plugins", "versions", "versioned"], &url);
    let table = out(&o);
    assert!(table.lines().next().unwrap().contains("STATUS"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("2.0.0") && l.contains("current")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("1.0.0") && l.contains("previous")),
        "{table}"
    );

    let o = bsm_cli(&["plugins", "rollback", "versioned"], &url);
    assert_eq!(
        out(&o),
        "rolled back versioned: 1.0.0 is current\n",
        "{}",
        err(&o)
    );
    assert_eq!(answer(&s).await, "version 1");
    let o = bsm_cli(&["plugins", "rollback", "versioned", "7.7.7"], &url);
    assert!(!o.status.success());
    assert!(
        err(&o).starts_with("error: VERSION_NOT_FOUND: "),
        "{}",
        err(&o)
    );
    assert_eq!(err(&o).lines().count(), 1, "one line: {}", err(&o));

    let o = bsm_cli(&["plugins", "remove", "versioned"], &url);
    assert_eq!(out(&o), "removed versioned\n", "{}", err(&o));
    let (status, _) = run(&s, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let o = std::process::Command::new(env!("CARGO_BIN_EXE_bsm"))
        .args(["plugins", "remove", "hello-agent"])
        .env("BSM_SERVER", &url)
        .env_remove("BSM_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(err(&o).contains("BSM_ADMIN_TOKEN"), "{}", err(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_trusted_keys_only_validly_signed_components_are_accepted() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("signing.key");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_bsm"))
        .args(["keys", "generate", "--out", key_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = String::from_utf8_lossy(&o.stdout).into_owned();
    let public = printed
        .lines()
        .find_map(|l| l.strip_prefix("public key:"))
        .unwrap()
        .trim()
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the private key is the owner's only");
    }
    let config = keys.path().join("bsm.toml");
    std::fs::write(
        &config,
        format!("[plugins]\ntrusted-keys = [\"{public}\"]\n"),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), &[("BSM_CONFIG", config.to_str().unwrap())]);
    assert!(
        s.logs().contains("unsigned or badly signed"),
        "the unsigned shipped plugins are not loaded: {}",
        s.logs()
    );

    let files = tempfile::tempdir().unwrap();
    let wasm = versioned_files(files.path(), "1.0.0", "1");
    let upload_with = |signature: Option<String>| {
        let mut form = reqwest::multipart::Form::new()
            .part(
                "component",
                reqwest::multipart::Part::bytes(versioned_wasm()).file_name("v.wasm"),
            )
            .text("manifest", manifest("1.0.0", "1", "", ""));
        if let Some(sig) = signature {
            form = form.text("signature", sig);
        }
        http()
            .put(s.url("/api/plugins/versioned"))
            .header("x-admin-token", ADMIN_TOKEN)
            .multipart(form)
            .send()
    };
    let r = upload_with(None).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "SIGNATURE_REQUIRED", "{body}");

    // A signature of other bytes (a tampered component) is refused.
    let other = files.path().join("other.wasm");
    std::fs::write(&other, b"other bytes").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_bsm"))
        .args([
            "plugins",
            "sign",
            other.to_str().unwrap(),
            "--key",
            key_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tampered = std::fs::read_to_string(files.path().join("other.wasm.sig")).unwrap();
    let r = upload_with(Some(tampered.trim().into())).await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "SIGNATURE_INVALID", "{body}");
    let (status, _) = run(&s, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was installed");

    // Signed: the CLI sends FILE.sig with the component.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_bsm"))
        .args([
            "plugins",
            "sign",
            wasm.to_str().unwrap(),
            "--key",
            key_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bsm_cli(&["plugins", "install", wasm.to_str().unwrap()], &s.url);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(answer(&s).await, "version 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_agent_yaml_serves_without_a_restart_and_a_bad_registry_edit_is_refused() {
    let llm = LlmServer::start().await;
    llm.set_reply("Noted.");
    let layout = common::copy_of_shipped_agents();
    let data = tempfile::tempdir().unwrap();
    let s = start(
        data.path(),
        &[
            ("BSM_BSM_DIR", layout.path().to_str().unwrap()),
            ("BSM_LLM_BASE_URL", &llm.base_url),
        ],
    );
    let system_prompt = || {
        llm.seen().last().unwrap().body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ask = |agent: &'static str| {
        let url = s.url("/api/agents/run");
        async move {
            let r = http()
                .post(url)
                .json(&json!({"agentId": agent, "input": "hi"}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(ask("legal-agent").await.0, StatusCode::OK);
    assert!(system_prompt().contains("Answer questions about licences"));

    let agents = layout.path().join("data/agents");
    let yaml = std::fs::read_to_string(agents.join("legal-agent.yaml")).unwrap();
    let edited = yaml.replace(
        "Answer questions about licences and regulations.",
        "Answer in haiku.",
    );
    drop_file(&agents, "legal-agent.yaml", edited.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(ask("legal-agent").await.0, StatusCode::OK);
        if system_prompt().contains("Answer in haiku.") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edit never reached the agent: {}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A registry edit with a violation is refused and listed; the previous
    // governance keeps governing.
    let registry_path = layout.path().join("agents/registry.yaml");
    let registry = std::fs::read_to_string(&registry_path).unwrap();
    let broken = registry.replacen(
        "allowed: [chat, api, mobile, cli]",
        "allowed: [chat, telepathy]",
        1,
    );
    assert_ne!(broken, registry);
    drop_file(
        &layout.path().join("agents"),
        "registry.yaml",
        broken.as_bytes(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.logs().contains("BSM agent set edit refused") {
        assert!(
            Instant::now() < deadline,
            "the bad registry was not refused: {}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        s.logs().contains("telepathy"),
        "the violation is listed: {}",
        s.logs()
    );
    let (status, body) = ask("governance-agent").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the api context is still allowed: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_belongs_to_the_plugin_not_the_version_so_a_swap_never_doubles_it() {
    let data = tempfile::tempdir().unwrap();
    let s = Arc::new(start(data.path(), &[]));
    let tight = |version: &str, tag: &str| {
        manifest(version, tag, "", "")
            .replace("max-concurrent = 64", "max-concurrent = 2")
            .replace("max-queued = 1024", "max-queued = 0")
    };
    let (status, body) = upload(&s, "versioned", versioned_wasm(), tight("1.0.0", "1"), "").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { run(&s, json!({"ms": 1500})).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = upload(&s, "versioned", versioned_wasm(), tight("2.0.0", "2"), "").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Both slots are held by version 1's runs: version 2 gets no fresh ones.
    let (status, body) = run(&s, json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("PLUGIN_BUSY")),
        "{body}"
    );
    for r in slow {
        let (status, body) = r.await.unwrap();
        assert_eq!(
            (status, body["output"].as_str()),
            (StatusCode::OK, Some("version 1"))
        );
    }
    // Nor are slots lost: both are free again for the new version.
    let both: Vec<_> = (0..2)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { run(&s, json!({"ms": 300})).await })
        })
        .collect();
    for r in both {
        let (status, body) = r.await.unwrap();
        assert_eq!(
            (status, body["output"].as_str()),
            (StatusCode::OK, Some("version 2")),
            "{body}"
        );
    }
}
