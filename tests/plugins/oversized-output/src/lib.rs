//! Answers 4 MiB of text: proves the output size limit holds.

use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output};

struct Oversized;

impl Agent for Oversized {
    fn describe() -> AgentInfo {
        AgentInfo::new("oversized-output", "Oversized output", "0.1.0")
    }

    fn run(_input: Input) -> Result<Output, AgentError> {
        Ok(Output::text("x".repeat(4 << 20)))
    }
}

bsm_sdk::export_agent!(Oversized);
