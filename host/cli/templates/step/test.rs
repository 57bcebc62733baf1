//! Runs the built component in the BSM sandbox over scripted agent
//! results. `bsm plugin test` builds it and runs these.

use bsm_harness::{Plugin, Script, Value, json};

fn answered(agent: &str, text: &str) -> Value {
    json!({"agentId": agent, "output": {"text": text, "actions": [], "metadata": {}}})
}

#[test]
fn approves_when_every_agent_succeeded() {
    let results = json!([
        answered("security-agent", "No issues."),
        answered("code-review-agent", "Looks good.")
    ]);
    let out = Plugin::built()
        .unwrap()
        .step("pull_request.opened", &json!({}), &results, Script::new())
        .unwrap();
    assert_eq!(out.verdict(), Some("approve"));
    assert_eq!(out.contribution["actions"][0]["name"], "approve_pr");
}

#[test]
fn blocks_on_a_blocking_finding() {
    let results = json!([answered("security-agent", "CRITICAL: a leaked token")]);
    let out = Plugin::built()
        .unwrap()
        .step("pull_request.opened", &json!({}), &results, Script::new())
        .unwrap();
    assert_eq!(out.verdict(), Some("block"));
}

#[test]
fn asks_a_human_when_an_agent_failed() {
    let results = json!([answered("security-agent", "No issues."), {"agentId": "code-review-agent", "error": "timed out"}]);
    let out = Plugin::built()
        .unwrap()
        .step("pull_request.opened", &json!({}), &results, Script::new())
        .unwrap();
    assert_eq!(out.verdict(), Some("manual_review"));
}
