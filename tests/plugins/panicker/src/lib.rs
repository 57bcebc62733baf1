//! Panics: proves a trap is contained and its message reaches the caller.

use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output};

struct Panicker;

impl Agent for Panicker {
    fn describe() -> AgentInfo {
        AgentInfo::new("panicker", "Panicker", "0.1.0")
    }

    fn run(input: Input) -> Result<Output, AgentError> {
        panic!("panicker gave up on {:?}", input.input);
    }
}

bsm_sdk::export_agent!(Panicker);
