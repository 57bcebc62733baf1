//! The original BSM pull-request decision, moved out of the host into a step
//! plugin:
//!
//! 1. a failed governance review, or one saying "block"/"BLOCKED", blocks;
//! 2. a failed security scan, or one mentioning CRITICAL, blocks;
//! 3. a code review containing REQUEST_CHANGES requests changes;
//! 4. every agent succeeded: approve and merge;
//! 5. otherwise: manual review.
//!
//! An agent's structured verdict wins over its words: `{"verdict":
//! "block"|"request_changes"|"approve", ...}` as its answer (or fenced in
//! it) or in its metadata. The word rules are the fallback, and they read
//! negation: "no blocking issues" does not block, "No CRITICAL findings"
//! is not a critical finding.
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
            Ok(out) => {
                let blocks = match structured_verdict(out) {
                    Some(verdict) => verdict == Said::Block,
                    None => mentions(&out.text.to_lowercase(), "block"),
                };
                if blocks {
                    return block("governance review blocks the change".to_string());
                }
            }
        }
    }
    if let Some(security) = find(&roles.security) {
        match &security.outcome {
            Err(e) => return block(format!("security scan failed: {e}")),
            Ok(out) => {
                let (blocks, reason) = match structured_verdict(out) {
                    Some(verdict) => (verdict == Said::Block, "security scan blocks the change"),
                    None => (
                        mentions(&out.text, "CRITICAL"),
                        "security scan found a CRITICAL issue",
                    ),
                };
                if blocks {
                    return block(reason.to_string());
                }
            }
        }
    }
    if let Some(review) = find(&roles.code_review)
        && let Ok(out) = &review.outcome
    {
        let requests = match structured_verdict(out) {
            Some(verdict) => verdict == Said::RequestChanges,
            None => mentions(&out.text, "REQUEST_CHANGES"),
        };
        if requests {
            return Decision::new(Verdict::RequestChanges, "code review requests changes")
                .with_action(Action::new("request_changes"));
        }
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

/// A verdict an agent gave in structured form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    Block,
    RequestChanges,
    Approve,
}

/// The agent's structured verdict: its metadata's `verdict`, or a JSON
/// object with a `verdict` as its answer (alone or in a fenced block).
fn structured_verdict(out: &bsm_sdk::Output) -> Option<Said> {
    let from = |v: &serde_json::Value| match v.get("verdict")?.as_str()? {
        "block" | "block_pr" => Some(Said::Block),
        "request_changes" => Some(Said::RequestChanges),
        "approve" | "approve_and_merge" => Some(Said::Approve),
        _ => None,
    };
    if let Ok(meta) = serde_json::from_str::<serde_json::Value>(&out.metadata)
        && let Some(said) = from(&meta)
    {
        return Some(said);
    }
    let text = out.text.trim();
    let object = match (text.find('{'), text.rfind('}')) {
        (Some(start), Some(end)) if start < end => &text[start..=end],
        _ => return None,
    };
    serde_json::from_str::<serde_json::Value>(object)
        .ok()
        .as_ref()
        .and_then(from)
}

/// Words that, shortly before a keyword, turn it around.
const NEGATIONS: &[&str] = &[
    "no", "not", "without", "nothing", "none", "never", "zero", "non", "neither", "nor",
];

/// Whether `text` says `keyword` (a word starting with it) other than in a
/// negation: "no blocking issues", "does not block", "No CRITICAL findings"
/// do not count; "Decision: BLOCKED", "I must block this" do.
fn mentions(text: &str, keyword: &str) -> bool {
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '\''))
        .filter(|w| !w.is_empty())
        .collect();
    words.iter().enumerate().any(|(i, word)| {
        word.starts_with(keyword)
            && !words[i.saturating_sub(3)..i].iter().any(|w| {
                let w = w.to_lowercase();
                NEGATIONS.contains(&w.as_str()) || w.ends_with("n't")
            })
    })
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

    #[test]
    fn a_negated_keyword_does_not_count() {
        let mut r = all_good();
        r[0] = ok("governance-review-agent", "Reviewed: no blocking issues.");
        assert_eq!(verdict(&r), Verdict::Approve);
        r[0] = ok("governance-review-agent", "This does not block the merge.");
        assert_eq!(verdict(&r), Verdict::Approve);
        r[0] = ok(
            "governance-review-agent",
            "Nothing here blocks it, but BLOCKED: no issue link.",
        );
        assert_eq!(
            verdict(&r),
            Verdict::Block,
            "a later plain BLOCKED still blocks"
        );
        let mut r = all_good();
        r[2] = ok("security-agent", "No CRITICAL findings; two LOW ones.");
        assert_eq!(verdict(&r), Verdict::Approve);
        r[2] = ok("security-agent", "Findings: CRITICAL secret in config.rs");
        assert_eq!(verdict(&r), Verdict::Block);
    }

    #[test]
    fn a_structured_verdict_wins_over_words() {
        let mut r = all_good();
        r[0] = ok(
            "governance-review-agent",
            "```json\n{\"verdict\": \"block\", \"findings\": [\"no linked issue\"]}\n```",
        );
        assert_eq!(verdict(&r), Verdict::Block, "a JSON block verdict blocks");
        r[0] = ok(
            "governance-review-agent",
            "{\"verdict\": \"approve\", \"findings\": [\"would block if unlinked\"]}",
        );
        assert_eq!(verdict(&r), Verdict::Approve, "the word inside does not");
        let mut r = all_good();
        r[1] = AgentResult {
            agent_id: "code-review-agent".into(),
            outcome: Ok(
                Output::text("see metadata").with_metadata("{\"verdict\": \"request_changes\"}")
            ),
        };
        assert_eq!(verdict(&r), Verdict::RequestChanges, "from the metadata");
    }
}
