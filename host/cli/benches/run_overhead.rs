//! Per-run overhead of a plugin through the host, against the bare floor.
//!
//! - `host`: `Runtime::run_agent("hello-agent")`: bulkhead slot, fresh store
//!   with limits and deadline, instantiate, call, output validation.
//! - `bare`: the same component, engine and linker; only a fresh store,
//!   instantiate and call: what any wasmtime embedding pays at least.
//!
//! Run: `cargo bench -p bsm-cli --bench run_overhead`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bsm_runtime::api::{AgentRequest, RunContext};
use bsm_runtime::bindings::agent::AgentPre;
use bsm_runtime::bindings::types::{AgentInput, InvocationContext};
use bsm_runtime::capabilities::{Caller, Capabilities, RunInfo};
use bsm_runtime::limits::RunLimits;
use bsm_runtime::run_state::RunState;
use bsm_runtime::{Runtime, RuntimeOptions};
use criterion::{Criterion, criterion_group, criterion_main};
use wasmtime::Store;
use wasmtime::component::Component;

fn shipped(file: &str) -> PathBuf {
    PathBuf::from(env!("BSM_SHIPPED_PLUGINS_DIR")).join(file)
}

fn run_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = Arc::new(Runtime::new(RuntimeOptions::default()).unwrap());
    let plugin = rt
        .block_on(runtime.load_plugin(&shipped("hello-agent.toml")))
        .unwrap();
    runtime.registry().install(plugin.clone());

    let engine = runtime.engine().clone();
    let component = Component::from_file(&engine, shipped("hello-agent.wasm")).unwrap();
    let pre = AgentPre::new(runtime.linker().instantiate_pre(&component).unwrap()).unwrap();
    let capabilities = Capabilities::default();
    let config = Arc::new(plugin.manifest.config_pairs());
    let caller = Caller {
        plugin_id: Arc::from("hello-agent"),
        correlation_id: Arc::from("bench"),
    };
    let input = AgentInput {
        input: "bench".into(),
        payload: "{}".into(),
        context: InvocationContext {
            correlation_id: "bench".into(),
            event: None,
            calling_context: "api".into(),
        },
    };

    let mut group = c.benchmark_group("hello-agent per run");
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("bare wasmtime instantiate+call", |b| {
        b.to_async(&rt).iter(|| async {
            let state = RunState::new(
                RunLimits::new(usize::MAX),
                Instant::now() + Duration::from_secs(3600),
                capabilities.for_run(&RunInfo {
                    caller: caller.clone(),
                    manifest: &plugin.manifest,
                    config: &config,
                    tape: None,
                }),
            );
            let mut store = Store::new(&engine, state);
            store.set_epoch_deadline(u64::MAX / 2);
            let agent = pre.instantiate_async(&mut store).await.unwrap();
            let out = agent.call_run(&mut store, &input).await.unwrap().unwrap();
            assert_eq!(out.text, "Hello, bench!");
        })
    });
    group.bench_function("host run_agent", |b| {
        b.to_async(&rt).iter(|| async {
            let request = AgentRequest {
                input: "bench".into(),
                payload: serde_json::json!({}),
                context: RunContext {
                    correlation_id: "bench".into(),
                    event: None,
                    calling_context: "api".into(),
                },
            };
            let run = runtime.run_agent("hello-agent", request).await.unwrap();
            assert_eq!(run.output.text, "Hello, bench!");
        })
    });
    group.finish();
}

criterion_group!(benches, run_overhead);
criterion_main!(benches);
