//! Host-side bindings of the plugin worlds (agent, step, action handler),
//! generated from `wit/`.
//!
//! The shared interfaces (types and the host capabilities) are generated once,
//! in [`agent`], and reused by [`step`] and [`handler`], so a capability
//! implements each interface's `Host` trait exactly once for every kind.

/// Bindings of the `agent` world (and of every shared interface).
pub mod agent {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "bsm:plugin/agent@0.1.0",
        imports: { default: async },
        exports: { default: async },
        // Recordings of host calls are JSON (see `tape`).
        additional_derives: [serde::Serialize, serde::Deserialize],
    });
}

/// Bindings of the `step` world.
pub mod step {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "bsm:plugin/step@0.1.0",
        imports: { default: async },
        exports: { default: async },
        // Recordings of host calls are JSON (see `tape`).
        additional_derives: [serde::Serialize, serde::Deserialize],
        with: {
            "bsm:plugin/types@0.1.0": crate::bindings::agent::bsm::plugin::types,
            "bsm:plugin/llm@0.1.0": crate::bindings::agent::bsm::plugin::llm,
            "bsm:plugin/cache@0.1.0": crate::bindings::agent::bsm::plugin::cache,
            "bsm:plugin/knowledge@0.1.0": crate::bindings::agent::bsm::plugin::knowledge,
            "bsm:plugin/reports@0.1.0": crate::bindings::agent::bsm::plugin::reports,
            "bsm:plugin/log@0.1.0": crate::bindings::agent::bsm::plugin::log,
            "bsm:plugin/config@0.1.0": crate::bindings::agent::bsm::plugin::config,
            "bsm:plugin/http@0.1.0": crate::bindings::agent::bsm::plugin::http,
        },
    });
}

/// Bindings of the `action-handler` world.
pub mod handler {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "bsm:plugin/action-handler@0.1.0",
        imports: { default: async },
        exports: { default: async },
        // Recordings of host calls are JSON (see `tape`).
        additional_derives: [serde::Serialize, serde::Deserialize],
        with: {
            "bsm:plugin/types@0.1.0": crate::bindings::agent::bsm::plugin::types,
            "bsm:plugin/llm@0.1.0": crate::bindings::agent::bsm::plugin::llm,
            "bsm:plugin/cache@0.1.0": crate::bindings::agent::bsm::plugin::cache,
            "bsm:plugin/knowledge@0.1.0": crate::bindings::agent::bsm::plugin::knowledge,
            "bsm:plugin/reports@0.1.0": crate::bindings::agent::bsm::plugin::reports,
            "bsm:plugin/log@0.1.0": crate::bindings::agent::bsm::plugin::log,
            "bsm:plugin/config@0.1.0": crate::bindings::agent::bsm::plugin::config,
            "bsm:plugin/http@0.1.0": crate::bindings::agent::bsm::plugin::http,
        },
    });
}

pub use agent::bsm::plugin::{cache, config, http, knowledge, llm, log, reports, types};
