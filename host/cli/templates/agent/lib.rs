//! {{id}}: a BSM agent. Answers its input through the host's LLM, with the
//! system prompt from its manifest's `[config]`.

use bsm_sdk::llm::{self, ChatRequest, Message};
use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output, config};

struct {{type_name}};

impl Agent for {{type_name}} {
    fn describe() -> AgentInfo {
        AgentInfo::new("{{id}}", "{{title}}", env!("CARGO_PKG_VERSION"))
            .with_description("{{description}}")
    }

    fn run(input: Input) -> Result<Output, AgentError> {
        let question = input.input.trim();
        if question.is_empty() {
            return Err(AgentError::InvalidInput("the input is empty".into()));
        }
        let system = config::get("system-prompt").unwrap_or_else(|| "Be concise.".into());
        let reply = llm::chat(&ChatRequest::new(vec![
            Message::system(system),
            Message::user(question),
        ]))
        .map_err(|e| AgentError::Capability(format!("the LLM did not answer: {e}")))?;
        Ok(Output::text(reply.content.trim()))
    }
}

bsm_sdk::export_agent!({{type_name}});
