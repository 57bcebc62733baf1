//! Writes its input as a markdown report named by the payload's `name`
//! (default `report`), and answers either way: a failed report write must
//! not cost the run its result.

use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output, reports};

struct Reporter;

impl Agent for Reporter {
    fn describe() -> AgentInfo {
        AgentInfo::new("reporter", "Reporter", "0.1.0")
    }

    fn run(input: Input) -> Result<Output, AgentError> {
        let name = input
            .payload
            .split("\"name\"")
            .nth(1)
            .and_then(|rest| rest.split('"').nth(1))
            .unwrap_or("report")
            .to_string();
        let status = match reports::write(&name, &input.input) {
            Ok(r) => format!("wrote {} {} {}", r.id, r.name, r.bytes),
            Err(e) => format!("report failed: {e:?}"),
        };
        Ok(Output::text(format!("analysis done; {status}")))
    }
}

bsm_sdk::export_agent!(Reporter);
