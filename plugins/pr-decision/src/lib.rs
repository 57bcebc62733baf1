//! The original BSM pull-request decision, moved out of the host into a step
//! plugin:
//!
//! 1. a failed governance review, or one saying "block"/"BLOCKED", blocks;
//! 2. a failed security scan, or one mentioning CRITICAL, blocks;
//! 3. a code review containing REQUEST_CHANGES requests changes;
//! 4. every agent succeeded: approve and merge;
//! 5. otherwise: manual review.
//!
//! Which agent plays which part comes from the plugin's config.

use bsm_sdk::{
    Action, AgentResult, Contribution, Decision, PipelineState, Step, StepError, StepInfo, Verdict,
    config,
};

struct PrDecision;

/// The agent ids the rules look at.
#[derive(Debug, Clone)]
pub struct Roles {
    pub governance: String,
    pub security: String,
    pub code_review: String,
}

impl Default for Roles {
    fn default() -> Self {
        Self {
            governance: "governance-review-agent".into(),
            security: "security-agent".into(),
            code_review: "code-review-agent".into(),
        }
    }
}

impl Roles {
    fn from_config() -> Self {
        let d = Roles::default();
        Self {
            governance: config::get("governance-agent").unwrap_or(d.governance),
            security: config::get("security-agent").unwrap_or(d.security),
            code_review: config::get("code-review-agent").unwrap_or(d.code_review),
        }
    }
}

/// Applies the decision rules to the results of a pipeline.
pub fn decide(results: &[AgentResult], roles: &Roles) -> Decision {
    let find = |id: &str| results.iter().find(|r| r.agent_id == id);

    if let Some(governance) = find(&roles.governance) {
        match &governance.outcome {
            Err(e) => {
                return block(format!("governance review failed: {e}"));
            }
            Ok(out) if out.text.to_lowercase().contains("block") => {
                return block("governance review blocks the change".to_string());
            }
            Ok(_) => {}
        }
    }
    if let Some(security) = find(&roles.security) {
        match &security.outcome {
            Err(e) => return block(format!("security scan failed: {e}")),
            Ok(out) if out.text.contains("CRITICAL") => {
                return block("security scan found a CRITICAL issue".to_string());
            }
            Ok(_) => {}
        }
    }
    if let Some(review) = find(&roles.code_review)
        && review.text().is_some_and(|t| t.contains("REQUEST_CHANGES"))
    {
        return Decision::new(Verdict::RequestChanges, "code review requests changes")
            .with_action(Action::new("request_changes"));
    }
    if !results.is_empty() && results.iter().all(AgentResult::succeeded) {
        return Decision::new(
            Verdict::Approve,
            format!("all {} agents succeeded", results.len()),
        )
        .with_action(Action::new("approve_pr"))
        .with_action(Action::new("auto_merge"));
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.succeeded())
        .map(|r| r.agent_id.as_str())
        .collect();
    let reason = if results.is_empty() {
        "no agent results to decide on".to_string()
    } else {
        format!("agents failed: {}", failed.join(", "))
    };
    Decision::new(Verdict::ManualReview, reason).with_action(Action::new("manual_review_request"))
}

fn block(reason: String) -> Decision {
    Decision::new(Verdict::Block, reason).with_action(Action::new("block_pr"))
}

impl Step for PrDecision {
    fn describe() -> StepInfo {
        StepInfo::new("pr-decision", "PR decision", env!("CARGO_PKG_VERSION")).with_description(
            "The original BSM decision over governance, security and code review results.",
        )
    }

    fn run(state: PipelineState) -> Result<Contribution, StepError> {
        Ok(Contribution::Decision(decide(
            &state.results,
            &Roles::from_config(),
        )))
    }
}

bsm_sdk::export_step!(PrDecision);

#[cfg(test)]
mod tests {
    use super::*;
    use bsm_sdk::Output;

    fn ok(id: &str, text: &str) -> AgentResult {
        AgentResult {
            agent_id: id.into(),
            outcome: Ok(Output::text(text)),
        }
    }

    fn failed(id: &str) -> AgentResult {
        AgentResult {
            agent_id: id.into(),
            outcome: Err("LLM timeout".into()),
        }
    }

    fn verdict(results: &[AgentResult]) -> Verdict {
        decide(results, &Roles::default()).verdict
    }

    fn all_good() -> Vec<AgentResult> {
        vec![
            ok("governance-review-agent", "Compliance score 95. Approve."),
            ok("code-review-agent", "Looks good: 9/10"),
            ok("security-agent", "No issues found"),
            ok("integrity-agent", "Healthy"),
        ]
    }

    #[test]
    fn all_successful_approves_and_merges() {
        let d = decide(&all_good(), &Roles::default());
        assert_eq!(d.verdict, Verdict::Approve);
        let names: Vec<_> = d.actions.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["approve_pr", "auto_merge"]);
    }

    #[test]
    fn governance_block_or_failure_blocks() {
        let mut r = all_good();
        r[0] = ok(
            "governance-review-agent",
            "Decision: BLOCKED (missing issue link)",
        );
        assert_eq!(verdict(&r), Verdict::Block);
        r[0] = ok("governance-review-agent", "I must block this");
        assert_eq!(verdict(&r), Verdict::Block);
        r[0] = failed("governance-review-agent");
        assert_eq!(verdict(&r), Verdict::Block);
    }

    #[test]
    fn security_critical_or_failure_blocks() {
        let mut r = all_good();
        r[2] = ok("security-agent", "Severity: CRITICAL - SQL injection");
        assert_eq!(verdict(&r), Verdict::Block);
        r[2] = failed("security-agent");
        assert_eq!(verdict(&r), Verdict::Block);
        // Only the upper-case word counts, as in the original.
        r[2] = ok("security-agent", "nothing critical here");
        assert_eq!(verdict(&r), Verdict::Approve);
    }

    #[test]
    fn request_changes_from_code_review() {
        let mut r = all_good();
        r[1] = ok("code-review-agent", "Verdict: REQUEST_CHANGES");
        assert_eq!(verdict(&r), Verdict::RequestChanges);
    }

    #[test]
    fn other_failures_go_to_manual_review() {
        let mut r = all_good();
        r[3] = failed("integrity-agent");
        let d = decide(&r, &Roles::default());
        assert_eq!(d.verdict, Verdict::ManualReview);
        assert!(d.reason.contains("integrity-agent"));
        assert_eq!(verdict(&[]), Verdict::ManualReview);
    }

    #[test]
    fn governance_outranks_code_review() {
        let mut r = all_good();
        r[0] = ok("governance-review-agent", "BLOCKED");
        r[1] = ok("code-review-agent", "REQUEST_CHANGES");
        assert_eq!(verdict(&r), Verdict::Block);
    }
}
