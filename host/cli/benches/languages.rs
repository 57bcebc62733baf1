//! The same kind of agent in Rust and in JavaScript, side by side: each
//! asks the LLM once (an in-process engine that answers at once, so only
//! the plugin and the host are measured) and turns the answer into text
//! and actions.
//!
//! - `rust prompt-agent`: the shipped Rust agent (plugins/prompt-agent);
//! - `js pr-summary-js`: the JavaScript example (examples/js-agent,
//!   componentize-js: the component embeds a JavaScript engine).
//!
//! Before the criterion groups it prints each component's size and the
//! time to compile it (cold load, no artifact cache).
//!
//! Run: `cargo bench -p bsm-cli --bench languages`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bsm_runtime::api::{AgentRequest, RunContext};
use bsm_runtime::bindings::llm::{ChatRequest, ChatResponse, Error as LlmError, Usage};
use bsm_runtime::capabilities::llm::LlmEngine;
use bsm_runtime::capabilities::{Caller, Capabilities};
use bsm_runtime::{Runtime, RuntimeOptions};
use criterion::{Criterion, criterion_group, criterion_main};

/// Answers every chat at once with the same text.
struct Instant0;

#[async_trait::async_trait]
impl LlmEngine for Instant0 {
    async fn chat(&self, _: &Caller, _: ChatRequest) -> Result<ChatResponse, LlmError> {
        Ok(ChatResponse {
            content: "- adds hot swap\nACTION: label_pr {\"label\": \"feature\"}".into(),
            model: "bench".into(),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 10,
            },
            finish_reason: Some("stop".into()),
        })
    }

    async fn embed(
        &self,
        _: &Caller,
        _: Option<String>,
        _: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, LlmError> {
        Ok(Vec::new())
    }
}

fn languages(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = Arc::new(
        Runtime::new(RuntimeOptions {
            capabilities: Capabilities::with_llm(Arc::new(Instant0)),
            ..RuntimeOptions::default()
        })
        .unwrap(),
    );
    let agents = [
        (
            "rust prompt-agent",
            "prompt-agent",
            PathBuf::from(env!("BSM_SHIPPED_PLUGINS_DIR")),
        ),
        (
            "js pr-summary-js",
            "pr-summary-js",
            PathBuf::from(env!("BSM_JS_PLUGINS_DIR")),
        ),
    ];
    for (label, id, dir) in &agents {
        let wasm = dir.join(format!("{id}.wasm"));
        let bytes = std::fs::metadata(&wasm)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (for the JavaScript agent: npm ci --prefix examples/js-agent)",
                    wasm.display()
                )
            })
            .len();
        let started = Instant::now();
        let plugin = rt
            .block_on(runtime.load_plugin(&dir.join(format!("{id}.toml"))))
            .unwrap();
        let compile = started.elapsed();
        runtime.registry().install(plugin);
        println!(
            "{label}: component {:.2} MB, cold load (compile) {:.2} s",
            bytes as f64 / 1e6,
            compile.as_secs_f64()
        );
    }

    let mut group = c.benchmark_group("agent run, one LLM call");
    for (label, id, _) in agents {
        group.bench_function(label, |b| {
            b.to_async(&rt).iter(|| async {
                let request = AgentRequest {
                    input: "Summarise PR #7".into(),
                    payload: serde_json::json!({}),
                    context: RunContext::new("api"),
                };
                let run = runtime.run_agent(id, request).await.unwrap();
                assert!(run.output.text.contains("adds hot swap"));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, languages);
criterion_main!(benches);
