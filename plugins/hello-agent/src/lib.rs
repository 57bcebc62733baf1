//! The smallest BSM agent: greets its input. No LLM, no state.

use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output, config};

struct Hello;

impl Agent for Hello {
    fn describe() -> AgentInfo {
        AgentInfo::new("hello-agent", "Hello Agent", env!("CARGO_PKG_VERSION"))
            .with_description("Greets whoever it is given.")
    }

    fn run(input: Input) -> Result<Output, AgentError> {
        let greeting = config::get("greeting").unwrap_or_else(|| "Hello".to_string());
        let name = input.input.trim();
        if name.is_empty() {
            return Err(AgentError::InvalidInput(
                "nobody to greet: the input is empty".into(),
            ));
        }
        Ok(Output::text(format!("{greeting}, {name}!")))
    }
}

bsm_sdk::export_agent!(Hello);
