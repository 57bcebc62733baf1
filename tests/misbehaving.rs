//! Plugins that loop, over-allocate, panic or answer too much each fail
//! alone, with their own named error, while healthy plugins keep working.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bsm_runtime::capabilities::Capabilities;
use bsm_runtime::{RunError, Runtime};
use common::*;
use serde_json::json;

/// Four hello-agent runs started at once, each named "run {i}".
fn spawn_healthy(
    runtime: &Arc<Runtime>,
) -> Vec<tokio::task::JoinHandle<Result<bsm_runtime::api::AgentRun, RunError>>> {
    (0..4)
        .map(|i| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                runtime
                    .run_agent("hello-agent", request(&format!("run {i}")))
                    .await
            })
        })
        .collect()
}

/// Checks every run of [`spawn_healthy`] succeeded with its own answer.
async fn expect_healthy(
    healthy: Vec<tokio::task::JoinHandle<Result<bsm_runtime::api::AgentRun, RunError>>>,
    beside: &str,
) {
    for (i, h) in healthy.into_iter().enumerate() {
        let run = h
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("healthy run {i} failed beside {beside}: {e}"));
        assert_eq!(run.output.text, format!("Hello, run {i}!"));
    }
}

/// Runs `bad` while hello-agent runs beside it; returns the bad run's error
/// after checking every healthy run succeeded.
async fn fails_alone(runtime: &Arc<Runtime>, bad: &str) -> RunError {
    let healthy = spawn_healthy(runtime);
    let err = runtime
        .run_agent(bad, request("x"))
        .await
        .expect_err("the misbehaving plugin must fail");
    expect_healthy(healthy, bad).await;
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_at_its_deadline() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    let err = fails_alone(&runtime, "spin-loop").await;
    assert!(
        matches!(
            err,
            RunError::PluginTimeout {
                timeout_ms: 300,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "PLUGIN_TIMEOUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_hits_its_memory_cap() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    let err = fails_alone(&runtime, "memory-bomb").await;
    match &err {
        RunError::PluginMemoryLimit {
            limit_bytes,
            requested_bytes,
            ..
        } => {
            assert_eq!(*limit_bytes, 16 << 20);
            assert!(requested_bytes > limit_bytes, "{err}");
        }
        other => panic!("expected a memory limit error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_trap_carrying_the_panic_message() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    let err = fails_alone(&runtime, "panicker").await;
    match &err {
        RunError::PluginTrap { message, .. } => {
            assert!(message.contains("panicker gave up on \"x\""), "{message}");
            assert!(
                message.contains("src/lib.rs"),
                "the location is kept: {message}"
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_output_is_refused() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    let err = fails_alone(&runtime, "oversized-output").await;
    match &err {
        RunError::PluginOutputTooLarge {
            bytes, limit_bytes, ..
        } => {
            assert_eq!(*limit_bytes, 1 << 20);
            assert!(*bytes >= 4 << 20, "{err}");
        }
        other => panic!("expected output too large, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_misbehaviours_at_once_leave_the_host_healthy() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    let bad = ["spin-loop", "memory-bomb", "panicker", "oversized-output"].map(|id| {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            runtime
                .run_agent(id, request("x"))
                .await
                .map(|_| ())
                .unwrap_err()
                .code()
        })
    });
    let mut codes = Vec::new();
    for b in bad {
        codes.push(b.await.unwrap());
    }
    assert_eq!(
        codes,
        [
            "PLUGIN_TIMEOUT",
            "PLUGIN_MEMORY_LIMIT",
            "PLUGIN_TRAP",
            "PLUGIN_OUTPUT_TOO_LARGE"
        ]
    );
    // The same plugins can run (and fail the same way) again: nothing is poisoned.
    assert_eq!(
        runtime
            .run_agent("panicker", request("x"))
            .await
            .unwrap_err()
            .code(),
        "PLUGIN_TRAP"
    );
    assert!(
        runtime
            .run_agent("hello-agent", request("after"))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_plugin_rejects_the_third_run_as_busy() {
    // sleepy's manifest: max-concurrent = 2, max-queued = 0.
    let runtime = loaded_runtime(Capabilities::default()).await;
    let sleepy = runtime.registry().get("sleepy").unwrap();
    let slow = |ms: u64| {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let mut req = request("x");
            req.payload = json!({ "ms": ms });
            runtime.run_agent("sleepy", req).await
        })
    };
    let first = slow(1500);
    let second = slow(1500);
    let admitted = tokio::time::timeout(Duration::from_secs(30), async {
        while sleepy.in_flight() < 2 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(admitted.is_ok(), "the first two runs never got their slots");

    let mut third = request("x");
    third.payload = json!({ "ms": 1 });
    let err = runtime.run_agent("sleepy", third).await.unwrap_err();
    match &err {
        RunError::PluginBusy { retry_after_ms, .. } => assert!(*retry_after_ms > 0),
        other => panic!("expected busy, got {other:?}"),
    }
    // Another plugin is not affected by sleepy's saturation.
    assert!(
        runtime
            .run_agent("hello-agent", request("neighbour"))
            .await
            .is_ok()
    );

    assert_eq!(first.await.unwrap().unwrap().output.text, "slept 1500 ms");
    assert_eq!(second.await.unwrap().unwrap().output.text, "slept 1500 ms");
    assert_eq!(sleepy.in_flight(), 0);
}

/// Loads a test plugin under a manifest of the test's own.
async fn load_with_manifest(runtime: &Runtime, dir: &std::path::Path, wasm: &str, manifest: &str) {
    let path = plugin_with_manifest(dir, &test_plugins_dir().join(wasm), manifest);
    let plugin = runtime
        .load_plugin(&path)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.registry().install(plugin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_spinning_at_its_max_concurrent_does_not_hold_up_a_healthy_plugin() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    let dir = tempfile::tempdir().unwrap();
    load_with_manifest(
        &runtime,
        dir.path(),
        "spin-loop.wasm",
        "id = \"spinner\"\nversion = \"1\"\nkind = \"agent\"\n[budget]\ntimeout-ms = 4000\nmemory-mb = 16\nmax-concurrent = 2\nmax-queued = 0\n",
    )
    .await;
    let spinner = runtime.registry().get("spinner").unwrap();
    let spin = || {
        let runtime = runtime.clone();
        tokio::spawn(async move { runtime.run_agent("spinner", request("x")).await })
    };
    let spinning = [spin(), spin()];
    while spinner.in_flight() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Both runs compute on every guest thread there is (two on this machine).
    let scheduler = runtime.guest_pool().scheduler().clone();
    assert!(
        matches!(
            runtime.run_agent("spinner", request("x")).await,
            Err(RunError::PluginBusy { .. })
        ),
        "the spinning plugin is at its max-concurrent"
    );

    // The healthy plugin's runs, one after another and four at once, all
    // finish while the spinning runs are still going: they were not queued
    // behind them.
    for i in 0..20 {
        let run = runtime
            .run_agent("hello-agent", request(&format!("h{i}")))
            .await
            .unwrap_or_else(|e| panic!("healthy run {i} failed beside the spinner: {e}"));
        assert_eq!(run.output.text, format!("Hello, h{i}!"));
    }
    expect_healthy(spawn_healthy(&runtime), "the spinner").await;
    assert!(
        spinning.iter().all(|s| !s.is_finished()) && spinner.in_flight() == 2,
        "every healthy run finished while both spinning runs still computed"
    );
    assert_eq!(scheduler.waiting(), 0);

    for s in spinning {
        let err = s.await.unwrap().unwrap_err();
        assert_eq!(err.code(), "PLUGIN_TIMEOUT", "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_budget_stops_a_spinning_run_but_not_a_waiting_one() {
    let runtime = loaded_runtime(Capabilities::default()).await;
    let dir = tempfile::tempdir().unwrap();
    load_with_manifest(
        &runtime,
        dir.path(),
        "spin-loop.wasm",
        "id = \"cpu-capped\"\nversion = \"1\"\nkind = \"agent\"\n[budget]\ntimeout-ms = 30000\ncpu-ms = 100\nmemory-mb = 16\n",
    )
    .await;
    load_with_manifest(
        &runtime,
        dir.path(),
        "sleepy.wasm",
        "id = \"sleepy-capped\"\nversion = \"1\"\nkind = \"agent\"\n[budget]\ntimeout-ms = 30000\ncpu-ms = 50\nmemory-mb = 16\n",
    )
    .await;
    let err = runtime
        .run_agent("cpu-capped", request("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RunError::PluginCpuLimit { cpu_ms: 100, .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), "PLUGIN_CPU_LIMIT");
    assert!(err.is_plugin_fault());

    // Sleeping 400 ms costs (almost) no CPU: a 50 ms CPU budget is plenty.
    let mut asleep = request("x");
    asleep.payload = json!({ "ms": 400 });
    let run = runtime
        .run_agent("sleepy-capped", asleep)
        .await
        .expect("waiting is not computing");
    assert_eq!(run.output.text, "slept 400 ms");
}
