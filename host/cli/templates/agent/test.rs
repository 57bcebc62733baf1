//! Runs the built component in the BSM sandbox with scripted host answers:
//! no LLM, no network. `bsm plugin test` builds it and runs these.

use bsm_harness::{Error, Plugin, Script};

#[test]
fn answers_what_the_llm_says() {
    let agent = Plugin::built().unwrap();
    let out = agent
        .run_with(
            "What is BSM?",
            Script::new().llm_reply("A host for sandboxed agents."),
        )
        .unwrap();
    assert_eq!(out.text, "A host for sandboxed agents.");
    assert!(out.actions.is_empty());
    // What it asked the LLM: the system prompt from plugin.toml, then the input.
    let chat = &out.calls_to("llm.chat")[0];
    assert_eq!(chat["messages"][1]["content"], "What is BSM?");
}

#[test]
fn refuses_an_empty_input() {
    let err = Plugin::built()
        .unwrap()
        .run_with("   ", Script::new())
        .unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err}");
    assert!(err.to_string().contains("the input is empty"), "{err}");
}

#[test]
fn says_so_when_the_llm_does_not_answer() {
    let err = Plugin::built()
        .unwrap()
        .run_with("Hello?", Script::new().llm_timeout())
        .unwrap_err();
    assert!(err.to_string().contains("the LLM did not answer"), "{err}");
}
