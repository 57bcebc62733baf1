//! # bsm-sdk: write BSM plugins in plain Rust
//!
//! A BSM plugin is a WebAssembly component that the BSM host runs in its own
//! sandbox, with its own CPU, memory and concurrency budget. This crate hides
//! the component-model plumbing: implement [`Agent`] (or [`Step`]) on a type,
//! call [`export_agent!`] (or [`export_step!`]) once, and build the crate for
//! `wasm32-wasip2` as a `cdylib`.
//!
//! ```no_run
//! use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output};
//!
//! struct Hello;
//!
//! impl Agent for Hello {
//!     fn describe() -> AgentInfo {
//!         AgentInfo::new("hello-agent", "Hello Agent", "0.1.0")
//!     }
//!
//!     fn run(input: Input) -> Result<Output, AgentError> {
//!         Ok(Output::text(format!("Hello, {}!", input.input)))
//!     }
//! }
//!
//! bsm_sdk::export_agent!(Hello);
//! ```
//!
//! Everything a plugin can do outside its sandbox goes through the host
//! capability modules: [`llm`], [`cache`], [`knowledge`], [`reports`],
//! [`http`], [`log`] and [`config`]. Action handlers implement
//! [`ActionHandler`] and export it with [`export_handler!`].

#[doc(hidden)]
pub mod bindings;

mod agent;
pub mod cache;
pub mod config;
mod handler;
pub mod http;
pub mod knowledge;
pub mod llm;
pub mod log;
pub mod reports;
mod step;

pub use agent::{Action, Agent, AgentError, AgentInfo, Context, Input, Output};
pub use handler::{ActionHandler, ActionRequest, DeliveryError, HandlerInfo};
pub use step::{
    AgentResult, Contribution, Decision, PipelineState, Route, RunMode, Step, StepError, StepInfo,
    Verdict,
};

/// Exports a type implementing [`Agent`] as the plugin's `agent` world.
///
/// Use it exactly once per plugin crate.
///
/// ```no_run
/// # use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output};
/// struct Echo;
/// impl Agent for Echo {
///     fn describe() -> AgentInfo { AgentInfo::new("echo", "Echo", "1.0.0") }
///     fn run(input: Input) -> Result<Output, AgentError> { Ok(Output::text(input.input)) }
/// }
/// bsm_sdk::export_agent!(Echo);
/// ```
#[macro_export]
macro_rules! export_agent {
    ($agent:ty) => {
        const _: () = {
            struct __BsmAgentExport;

            impl $crate::bindings::agent::Guest for __BsmAgentExport {
                fn describe() -> $crate::AgentInfo {
                    <$agent as $crate::Agent>::describe()
                }

                fn run(
                    input: $crate::Input,
                ) -> ::core::result::Result<$crate::Output, $crate::AgentError> {
                    <$agent as $crate::Agent>::run(input)
                }
            }

            $crate::bindings::agent::export_agent_world!(
                __BsmAgentExport with_types_in $crate::bindings::agent
            );
        };
    };
}

/// Exports a type implementing [`Step`] as the plugin's `step` world.
///
/// Use it exactly once per plugin crate.
///
/// ```no_run
/// # use bsm_sdk::{Contribution, Decision, PipelineState, Step, StepError, StepInfo, Verdict};
/// struct AlwaysReview;
/// impl Step for AlwaysReview {
///     fn describe() -> StepInfo { StepInfo::new("always-review", "Always review", "1.0.0") }
///     fn run(_state: PipelineState) -> Result<Contribution, StepError> {
///         Ok(Contribution::Decision(Decision::new(Verdict::ManualReview, "humans decide")))
///     }
/// }
/// bsm_sdk::export_step!(AlwaysReview);
/// ```
#[macro_export]
macro_rules! export_step {
    ($step:ty) => {
        const _: () = {
            struct __BsmStepExport;

            impl $crate::bindings::step::Guest for __BsmStepExport {
                fn describe() -> $crate::StepInfo {
                    <$step as $crate::Step>::describe()
                }

                fn run(
                    state: $crate::PipelineState,
                ) -> ::core::result::Result<$crate::Contribution, $crate::StepError> {
                    <$step as $crate::Step>::run(state)
                }
            }

            $crate::bindings::step::export_step_world!(
                __BsmStepExport with_types_in $crate::bindings::step
            );
        };
    };
}

/// Exports a type implementing [`ActionHandler`] as the plugin's
/// `action-handler` world.
///
/// Use it exactly once per plugin crate.
///
/// ```no_run
/// # use bsm_sdk::{ActionHandler, ActionRequest, DeliveryError, HandlerInfo};
/// struct Logger;
/// impl ActionHandler for Logger {
///     fn describe() -> HandlerInfo { HandlerInfo::new("logger", "Logger", "1.0.0") }
///     fn handle(request: ActionRequest) -> Result<String, DeliveryError> {
///         bsm_sdk::log::info(&format!("{} {}", request.name, request.args));
///         Ok("logged".into())
///     }
/// }
/// bsm_sdk::export_handler!(Logger);
/// ```
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        const _: () = {
            struct __BsmHandlerExport;

            impl $crate::bindings::handler::Guest for __BsmHandlerExport {
                fn describe() -> $crate::HandlerInfo {
                    <$handler as $crate::ActionHandler>::describe()
                }

                fn handle(
                    request: $crate::ActionRequest,
                ) -> ::core::result::Result<::std::string::String, $crate::DeliveryError> {
                    <$handler as $crate::ActionHandler>::handle(request)
                }
            }

            $crate::bindings::handler::export_handler_world!(
                __BsmHandlerExport with_types_in $crate::bindings::handler
            );
        };
    };
}
