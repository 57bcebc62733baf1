//! End-to-end tests of the plugin runtime through its library API, with real
//! WASM components built from `plugins/` and `tests/plugins/`.

mod common;

use std::sync::Arc;

use bsm_runtime::api::{
    AgentOutput, AgentRequest, AgentResult, Contribution, RunContext, StepRequest, Verdict,
};
use bsm_runtime::artifact_cache::CompilerProcess;
use bsm_runtime::bindings::llm::Role;
use bsm_runtime::capabilities::Capabilities;
use bsm_runtime::{Manifest, PluginKind, RunError};
use common::*;
use serde_json::json;

#[tokio::test]
async fn hello_agent_greets_through_the_library_api() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    let run = runtime
        .run_agent("hello-agent", request("World"))
        .await
        .unwrap();
    assert_eq!(run.output.text, "Hello, World!");
    assert!(run.output.actions.is_empty());
    assert_eq!(run.plugin_version, "0.1.0");
    let plugin = runtime.registry().get("hello-agent").unwrap();
    assert_eq!(plugin.kind(), PluginKind::Agent);
    assert_eq!(plugin.described.name, "Hello Agent");
}

#[tokio::test]
async fn an_agents_own_error_is_reported_as_such() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    let err = runtime
        .run_agent("hello-agent", request("   "))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "PLUGIN_FAILED");
    assert!(err.to_string().contains("nobody to greet"), "{err}");
}

#[tokio::test]
async fn config_from_the_manifest_reaches_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = plugin_with_manifest(
        dir.path(),
        &shipped_dir().join("hello-agent.wasm"),
        "id = \"hola-agent\"\nversion = \"2.0.0\"\nkind = \"agent\"\n[config]\ngreeting = \"Hola\"\n",
    );
    let runtime = runtime_with(Capabilities::default());
    let plugin = runtime.load_plugin(&manifest).await.unwrap();
    runtime.registry().install(plugin);
    let run = runtime
        .run_agent("hola-agent", request("Mundo"))
        .await
        .unwrap();
    assert_eq!(run.output.text, "Hola, Mundo!");
}

#[tokio::test]
async fn every_run_gets_a_fresh_instance() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    for _ in 0..5 {
        let run = runtime.run_agent("counter", request("")).await.unwrap();
        assert_eq!(
            run.output.text, "1",
            "a static survived from an earlier run"
        );
    }
}

fn ok(id: &str, text: &str) -> AgentResult {
    AgentResult {
        agent_id: id.into(),
        output: Some(AgentOutput {
            text: text.into(),
            actions: vec![],
            metadata: json!({}),
        }),
        error: None,
    }
}

fn step_request(results: Vec<AgentResult>) -> StepRequest {
    StepRequest {
        event: "pull_request.opened".into(),
        payload: json!({"pull_request": {"number": 7}}),
        context: RunContext::new("ci"),
        results,
    }
}

#[tokio::test]
async fn pr_decision_reaches_each_verdict() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    let good = || {
        vec![
            ok("governance-review-agent", "Compliant, score 96"),
            ok("code-review-agent", "9/10"),
            ok("security-agent", "clean"),
            ok("integrity-agent", "healthy"),
        ]
    };
    let verdict = async |results| match runtime
        .run_step("pr-decision", step_request(results))
        .await
        .unwrap()
        .contribution
    {
        Contribution::Decision {
            verdict, actions, ..
        } => (
            verdict,
            actions.into_iter().map(|a| a.name).collect::<Vec<_>>(),
        ),
        other => panic!("expected a decision, got {other:?}"),
    };

    assert_eq!(
        verdict(good()).await,
        (
            Verdict::Approve,
            vec!["approve_pr".into(), "auto_merge".into()]
        )
    );

    let mut blocked = good();
    blocked[0] = ok("governance-review-agent", "BLOCKED: no linked issue");
    assert_eq!(verdict(blocked).await.0, Verdict::Block);

    let mut changes = good();
    changes[1] = ok("code-review-agent", "REQUEST_CHANGES: add tests");
    assert_eq!(verdict(changes).await.0, Verdict::RequestChanges);

    let mut failed = good();
    failed[3] = AgentResult {
        agent_id: "integrity-agent".into(),
        output: None,
        error: Some("timeout".into()),
    };
    assert_eq!(verdict(failed).await.0, Verdict::ManualReview);
}

#[tokio::test]
async fn prompt_agent_renders_its_config_into_the_host_llm_call() {
    let llm = RecordingLlm::new(
        "Needs work.\nACTION: request_changes {\"reason\": \"no tests\"}\nDo not approve_pr yet.",
    );
    let runtime = runtime_with(Capabilities::with_llm(llm.clone()));
    let dir = tempfile::tempdir().unwrap();
    let manifest = plugin_with_manifest(
        dir.path(),
        &shipped_dir().join("prompt-agent.wasm"),
        r#"id = "code-review-agent"
version = "2"
kind = "agent"
allowed-actions = ["review_pr", "request_changes", "approve_pr"]
[config]
id = "code-review-agent"
name = "Code Review Agent"
role = "Senior Software Engineer"
instructions = "افحص جودة الكود"
user-template = "Review PR {{payload.pr.title}} (#{{payload.pr.number}}): {{input}}"
model = "gpt-4o"
temperature = 0
max-tokens = 256
actions = ["review_pr", "request_changes", "approve_pr"]
[capabilities.llm]
models = ["gpt-4o"]
[capabilities.knowledge]
"#,
    );
    let plugin = runtime.load_plugin(&manifest).await.unwrap();
    assert_eq!(
        plugin.described.actions,
        ["review_pr", "request_changes", "approve_pr"]
    );
    runtime.registry().install(plugin);

    let mut context = RunContext::new("ci");
    context.correlation_id = "corr-123".into();
    let run = runtime
        .run_agent(
            "code-review-agent",
            AgentRequest {
                input: "be strict".into(),
                payload: json!({"pr": {"title": "Fix login", "number": 42}}),
                context,
            },
        )
        .await
        .unwrap();

    let seen = llm.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let call = &seen[0];
    assert_eq!(call.caller_plugin, "code-review-agent");
    assert_eq!(call.correlation_id, "corr-123");
    assert_eq!(call.request.model.as_deref(), Some("gpt-4o"));
    assert_eq!(call.request.max_tokens, Some(256));
    assert_eq!(call.request.temperature, Some(0.0));
    let roles: Vec<Role> = call.request.messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::System, Role::User]);
    let system = &call.request.messages[0].content;
    assert!(
        system.starts_with(
            "You are Code Review Agent.\nRole: Senior Software Engineer\n\nافحص جودة الكود"
        ),
        "{system}"
    );
    assert!(
        system.contains("review_pr, request_changes, approve_pr"),
        "{system}"
    );
    assert_eq!(
        call.request.messages[1].content,
        "Review PR Fix login (#42): <input>\nbe strict\n</input>"
    );

    assert!(run.output.text.starts_with("Needs work."));
    let actions: Vec<_> = run
        .output
        .actions
        .iter()
        .map(|a| (a.name.as_str(), a.args.clone()))
        .collect();
    assert_eq!(
        actions,
        [("request_changes", json!({"reason": "no tests"}))],
        "mentions are not actions"
    );
    assert_eq!(run.output.metadata["model"], "gpt-4o");
    assert_eq!(run.output.metadata["usage"]["completionTokens"], 7);
}

#[tokio::test]
async fn prompt_agent_without_a_provider_says_so() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    let err = runtime
        .run_agent("prompt-agent", request("hi"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "PLUGIN_FAILED");
    assert!(
        err.to_string().contains("no LLM provider is configured"),
        "{err}"
    );
}

#[tokio::test]
async fn actions_outside_the_manifest_allow_list_are_rejected() {
    let llm = RecordingLlm::new("ACTION: deploy_prod");
    let runtime = runtime_with(Capabilities::with_llm(llm));
    let dir = tempfile::tempdir().unwrap();
    let manifest = plugin_with_manifest(
        dir.path(),
        &shipped_dir().join("prompt-agent.wasm"),
        "id = \"eager\"\nversion = \"1\"\nkind = \"agent\"\nallowed-actions = [\"review_pr\"]\n[config]\nactions = [\"deploy_prod\", \"review_pr\"]\n[capabilities.llm]\n[capabilities.knowledge]\n",
    );
    runtime
        .registry()
        .install(runtime.load_plugin(&manifest).await.unwrap());
    let err = runtime.run_agent("eager", request("go")).await.unwrap_err();
    assert!(
        matches!(&err, RunError::ActionNotAllowed { action, .. } if action == "deploy_prod"),
        "{err:?}"
    );
    assert_eq!(err.code(), "ACTION_NOT_ALLOWED");
}

#[tokio::test]
async fn unknown_plugins_and_wrong_kinds_are_named() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    let err = runtime.run_agent("nope", request("x")).await.unwrap_err();
    assert_eq!(err.code(), "PLUGIN_NOT_FOUND");
    let err = runtime
        .run_agent("pr-decision", request("x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "WRONG_PLUGIN_KIND");
    assert!(err.to_string().contains("step"), "{err}");
}

#[tokio::test]
async fn a_manifest_naming_the_wrong_world_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = plugin_with_manifest(
        dir.path(),
        &shipped_dir().join("hello-agent.wasm"),
        "id = \"confused\"\nversion = \"1\"\nkind = \"step\"\n",
    );
    let runtime = runtime_with(Capabilities::default());
    let err = runtime.load_plugin(&manifest).await.unwrap_err();
    assert!(
        err.to_string().contains("does not export the step world"),
        "{err}"
    );
}

#[tokio::test]
async fn a_memory_budget_above_what_the_instance_pool_holds_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = plugin_with_manifest(
        dir.path(),
        &shipped_dir().join("hello-agent.wasm"),
        "id = \"greedy\"\nversion = \"1\"\nkind = \"agent\"\n[budget]\nmemory-mb = 2048\n",
    );
    let runtime = runtime_with(Capabilities::default());
    let err = runtime.load_plugin(&manifest).await.unwrap_err();
    assert_eq!(err.stage, bsm_runtime::LoadStage::Manifest);
    assert!(
        err.to_string()
            .contains("budget.memory-mb must be 1..=1024")
            && err.to_string().contains("instance pool"),
        "{err}"
    );
    let fits = plugin_with_manifest(
        dir.path(),
        &shipped_dir().join("hello-agent.wasm"),
        "id = \"roomy\"\nversion = \"1\"\nkind = \"agent\"\n[budget]\nmemory-mb = 1024\n",
    );
    runtime
        .load_plugin(&fits)
        .await
        .expect("the largest budget the pool holds loads");
}

#[tokio::test]
async fn start_up_names_the_budgets_the_instance_pool_cannot_hold_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime_with(Capabilities::default());
    let install = |id: &str, concurrent: u32| {
        plugin_with_manifest(
            dir.path(),
            &shipped_dir().join("hello-agent.wasm"),
            &format!(
                "id = \"{id}\"\nversion = \"1\"\nkind = \"agent\"\n[budget]\nmax-concurrent = {concurrent}\n"
            ),
        )
    };
    for (id, n) in [("small", 16), ("fits", 4_000)] {
        let plugin = runtime.load_plugin(&install(id, n)).await.unwrap();
        runtime.registry().install(plugin);
    }
    assert!(runtime.pool_pressure().is_empty(), "4,016 of 4,096 places");
    let plugin = runtime.load_plugin(&install("huge", 5_000)).await.unwrap();
    runtime.registry().install(plugin);
    let lines = runtime.pool_pressure();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("\"huge\"") && lines[0].contains("5000 exceeds the instance pool's 4096"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("9016 at once together") && lines[1].contains("PLUGIN_BUSY"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_broken_plugin_in_the_directory_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    plugin_with_manifest(
        dir.path(),
        &shipped_dir().join("hello-agent.wasm"),
        "id = \"hello-agent\"\nversion = \"1\"\nkind = \"agent\"\n",
    );
    std::fs::write(
        dir.path().join("broken.toml"),
        "id = \"broken\"\nversion = \"1\"\nkind = \"agent\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    let runtime = runtime_with(Capabilities::default());
    let report = runtime.load_dir(dir.path()).await.unwrap();
    assert_eq!(report.loaded.len(), 1);
    assert_eq!(report.failed.len(), 1);
    assert!(
        report.failed[0].to_string().contains("broken.wasm"),
        "{}",
        report.failed[0]
    );
    assert!(
        runtime
            .run_agent("hello-agent", request("still here"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk_and_bad_artifacts_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let options = || bsm_runtime::RuntimeOptions {
        artifact_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let manifest = shipped_dir().join("hello-agent.toml");

    let first = bsm_runtime::Runtime::new(options()).unwrap();
    first.load_plugin(&manifest).await.unwrap();
    let artifacts: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(artifacts.len(), 1, "one compiled artifact: {artifacts:?}");
    let digest = first
        .registry()
        .get("hello-agent")
        .map(|p| p.digest.clone());
    assert!(digest.is_none(), "load_plugin does not install");
    assert!(
        artifacts[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with(".cwasm")
    );

    // A restart loads the artifact instead of compiling; a damaged artifact
    // is replaced, never trusted.
    std::fs::write(&artifacts[0], b"not a compiled component").unwrap();
    let second = bsm_runtime::Runtime::new(options()).unwrap();
    let plugin = second.load_plugin(&manifest).await.unwrap();
    second.registry().install(plugin);
    assert_eq!(
        second
            .run_agent("hello-agent", request("cache"))
            .await
            .unwrap()
            .output
            .text,
        "Hello, cache!"
    );
    assert!(
        std::fs::metadata(&artifacts[0]).unwrap().len() > 1000,
        "the artifact was rewritten"
    );
}

#[tokio::test]
async fn replacing_a_plugin_keeps_runs_in_flight_on_their_version() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    let old = runtime.registry().get("sleepy").unwrap();
    let in_flight = tokio::spawn({
        let runtime = runtime.clone();
        let old = old.clone();
        async move {
            let mut req = request("x");
            req.payload = json!({"ms": 300});
            runtime.run_agent_plugin(&old, req).await
        }
    });
    while old.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let mut manifest: Manifest = old.manifest.clone();
    manifest.version = "0.2.0".into();
    let bytes = std::fs::read(&old.source).unwrap();
    let new = runtime
        .build_plugin(manifest, bytes, old.source.clone())
        .await
        .unwrap();
    let replaced = runtime.registry().install(new).unwrap();
    assert!(Arc::ptr_eq(&replaced, &old));

    let finished = in_flight.await.unwrap().unwrap();
    assert_eq!(
        finished.plugin_version, "0.1.0",
        "the run kept the version it started on"
    );
    let mut req = request("x");
    req.payload = json!({"ms": 1});
    assert_eq!(
        runtime
            .run_agent("sleepy", req)
            .await
            .unwrap()
            .plugin_version,
        "0.2.0"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_planted_artifact_in_a_directory_others_can_write_is_never_run() {
    use std::os::unix::fs::PermissionsExt as _;
    let data = tempfile::tempdir().unwrap();
    let cache = data.path().join("artifacts");
    let runtime_over = |dir: &std::path::Path| {
        bsm_runtime::Runtime::new(bsm_runtime::RuntimeOptions {
            artifact_dir: Some(dir.to_path_buf()),
            ..bsm_runtime::RuntimeOptions::default()
        })
        .unwrap()
    };
    // The host's own artifacts of two plugins.
    let first = runtime_over(&cache);
    let hello = first
        .load_plugin(&shipped_dir().join("hello-agent.toml"))
        .await
        .unwrap();
    let panicker = first
        .load_plugin(&test_plugins_dir().join("panicker.toml"))
        .await
        .unwrap();
    let artifact = |digest: &str| {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(digest))
            .unwrap()
    };
    // Plant: the panicker's native code under hello-agent's name.
    std::fs::copy(artifact(&panicker.digest), artifact(&hello.digest)).unwrap();

    // In a private directory the planted code would run (what the check is for).
    let trusting = runtime_over(&cache);
    let planted = trusting
        .load_plugin(&shipped_dir().join("hello-agent.toml"))
        .await
        .unwrap();
    assert_eq!(
        planted.described.id, "panicker",
        "the planted artifact is what ran"
    );

    // In a directory others can write, the cache is not used at all.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let careful = runtime_over(&cache);
    let plugin = careful
        .load_plugin(&shipped_dir().join("hello-agent.toml"))
        .await
        .expect("compiled from its own bytes");
    careful.registry().install(plugin);
    let run = careful
        .run_agent("hello-agent", request("x"))
        .await
        .unwrap();
    assert_eq!(run.output.text, "Hello, x!");
}

#[cfg(unix)]
/// A compiler process that notes each call in `marker`, then is `bsm`'s own
/// (or, with `exit`, fails with that status without compiling).
fn noting_compiler(marker: &std::path::Path, exit: Option<i32>) -> CompilerProcess {
    let then = match exit {
        Some(code) => format!("exit {code}"),
        None => format!(
            "exec '{}' __compile-artifact \"$@\"",
            env!("CARGO_BIN_EXE_bsm")
        ),
    };
    CompilerProcess {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            format!("echo called >> '{}'; {then}", marker.display()).into(),
            "sh".into(),
        ],
    }
}

#[cfg(unix)]
fn calls(marker: &std::path::Path) -> usize {
    std::fs::read_to_string(marker).map_or(0, |s| s.lines().count())
}

#[cfg(unix)]
#[tokio::test]
async fn a_missing_artifact_is_compiled_by_the_compiler_process_and_loaded_from_its_file() {
    let cache = tempfile::tempdir().unwrap();
    let marker = cache.path().join("calls");
    let artifacts = cache.path().join("components");
    let options = || bsm_runtime::RuntimeOptions {
        artifact_dir: Some(artifacts.clone()),
        compiler: Some(noting_compiler(&marker, None)),
        ..Default::default()
    };
    let manifest = shipped_dir().join("hello-agent.toml");
    let first = bsm_runtime::Runtime::new(options()).unwrap();
    let plugin = first.load_plugin(&manifest).await.unwrap();
    first.registry().install(plugin);
    assert_eq!(calls(&marker), 1, "compiled by the compiler process");
    let written: Vec<_> = std::fs::read_dir(&artifacts).unwrap().collect();
    assert_eq!(
        written.len(),
        1,
        "its artifact is in the cache: {written:?}"
    );
    let run = first.run_agent("hello-agent", request("child")).await;
    assert_eq!(run.unwrap().output.text, "Hello, child!");

    // A restart loads the artifact: no compilation at all.
    let second = bsm_runtime::Runtime::new(options()).unwrap();
    second.load_plugin(&manifest).await.unwrap();
    assert_eq!(calls(&marker), 1, "not compiled again");
}

#[cfg(unix)]
#[tokio::test]
async fn an_invalid_component_is_refused_with_the_compiler_processs_reason() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("calls");
    let whole = std::fs::read(shipped_dir().join("hello-agent.wasm")).unwrap();
    let wasm = dir.path().join("half.wasm");
    // The header of a component, then half of its sections.
    std::fs::write(&wasm, &whole[..whole.len() / 2]).unwrap();
    let manifest = plugin_with_manifest(
        dir.path(),
        &wasm,
        "id = \"half-agent\"\nversion = \"1.0.0\"\nkind = \"agent\"\n",
    );
    let runtime = bsm_runtime::Runtime::new(bsm_runtime::RuntimeOptions {
        artifact_dir: Some(dir.path().join("components")),
        compiler: Some(noting_compiler(&marker, None)),
        ..Default::default()
    })
    .unwrap();
    let err = runtime.load_plugin(&manifest).await.unwrap_err();
    assert_eq!(err.stage, bsm_runtime::LoadStage::Component, "{err}");
    assert!(err.to_string().contains("not a valid component"), "{err}");
    assert_eq!(calls(&marker), 1, "the compiler process said so, once");
    assert_eq!(
        std::fs::read_dir(dir.path().join("components"))
            .unwrap()
            .count(),
        0,
        "no artifact is left for an invalid component"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_compiler_process_that_fails_leaves_the_compilation_to_the_host() {
    let cache = tempfile::tempdir().unwrap();
    let marker = cache.path().join("calls");
    let runtime = bsm_runtime::Runtime::new(bsm_runtime::RuntimeOptions {
        artifact_dir: Some(cache.path().join("components")),
        compiler: Some(noting_compiler(&marker, Some(3))),
        ..Default::default()
    })
    .unwrap();
    let plugin = runtime
        .load_plugin(&shipped_dir().join("hello-agent.toml"))
        .await
        .unwrap();
    runtime.registry().install(plugin);
    assert_eq!(calls(&marker), 1);
    let run = runtime.run_agent("hello-agent", request("host")).await;
    assert_eq!(run.unwrap().output.text, "Hello, host!");
}
