//! Raw wit-bindgen output for the plugin worlds. Hidden from the docs:
//! plugin authors use the re-exports at the crate root instead.

/// Bindings of the `agent` world; also the one place where the shared
/// interfaces (types and host capabilities) are generated.
#[allow(clippy::too_many_arguments)]
pub mod agent {
    wit_bindgen::generate!({
        path: "../wit",
        world: "bsm:plugin/agent@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export_agent_world",
        default_bindings_module: "bsm_sdk::bindings::agent",
    });
}

/// Bindings of the `step` world, reusing the agent world's interface types so
/// that `llm::Message` and friends are one Rust type across both kinds.
#[allow(clippy::too_many_arguments)]
pub mod step {
    wit_bindgen::generate!({
        path: "../wit",
        world: "bsm:plugin/step@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export_step_world",
        default_bindings_module: "bsm_sdk::bindings::step",
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

/// Bindings of the `action-handler` world, reusing the agent world's
/// interface types.
#[allow(clippy::too_many_arguments)]
pub mod handler {
    wit_bindgen::generate!({
        path: "../wit",
        world: "bsm:plugin/action-handler@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export_handler_world",
        default_bindings_module: "bsm_sdk::bindings::handler",
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
