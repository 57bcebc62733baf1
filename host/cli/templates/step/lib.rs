//! {{id}}: a BSM decision step. Looks at the agents' results of a pipeline
//! and decides: block on a blocking finding, manual review when an agent
//! failed, approve otherwise.

use bsm_sdk::{
    Action, Contribution, Decision, PipelineState, Step, StepError, StepInfo, Verdict, config,
};

struct {{type_name}};

impl Step for {{type_name}} {
    fn describe() -> StepInfo {
        StepInfo::new("{{id}}", "{{title}}", env!("CARGO_PKG_VERSION"))
            .with_description("{{description}}")
    }

    fn run(state: PipelineState) -> Result<Contribution, StepError> {
        let blocking = config::get("blocking-word").unwrap_or_else(|| "CRITICAL".into());
        if state.results.is_empty() {
            return Ok(decide(
                Verdict::ManualReview,
                "no agent results to decide on",
                "manual_review_request",
            ));
        }
        if let Some(r) = state
            .results
            .iter()
            .find(|r| r.text().is_some_and(|t| t.contains(&blocking)))
        {
            let reason = format!("{} reported a {blocking} finding", r.agent_id);
            return Ok(decide(Verdict::Block, &reason, "block_pr"));
        }
        if let Some(r) = state.results.iter().find(|r| !r.succeeded()) {
            let reason = format!("{} failed; a human should look", r.agent_id);
            return Ok(decide(
                Verdict::ManualReview,
                &reason,
                "manual_review_request",
            ));
        }
        let reason = format!("all {} agents succeeded", state.results.len());
        Ok(decide(Verdict::Approve, &reason, "approve_pr"))
    }
}

fn decide(verdict: Verdict, reason: &str, action: &str) -> Contribution {
    Contribution::Decision(Decision::new(verdict, reason).with_action(Action::new(action)))
}

bsm_sdk::export_step!({{type_name}});
