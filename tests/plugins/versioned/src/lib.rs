//! Test plugin for hot swap: one component, many versions. It answers
//! `version <tag>` where `tag` comes from its manifest's `[config]`, so a
//! test can tell which version served a run. `payload.ms` makes a run last
//! that long (a run in flight during a swap). `[config] describe` makes
//! `describe()` misbehave: `trap`, `spin` (past the budget) or `wrong-id`;
//! `[config] run = "trap"` makes every run trap (a faulty version).

use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output, config};

struct Versioned;

impl Agent for Versioned {
    fn describe() -> AgentInfo {
        match config::get("describe").as_deref() {
            Some("trap") => panic!("describe() was told to trap"),
            Some("spin") => {
                let mut n: u64 = 0;
                loop {
                    n = n.wrapping_add(1);
                    std::hint::black_box(n);
                }
            }
            Some("wrong-id") => AgentInfo::new("someone-else", "Versioned", "0"),
            _ => AgentInfo::new("versioned", "Versioned", "0"),
        }
    }

    fn run(input: Input) -> Result<Output, AgentError> {
        if config::get("run").as_deref() == Some("trap") {
            panic!("this version traps on every run");
        }
        if let Some(ms) = parse_ms(&input.payload) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let tag = config::get("tag").unwrap_or_else(|| "none".into());
        Ok(Output::text(format!("version {tag}")))
    }
}

/// Reads `{"ms": N}` without pulling a JSON library into a test plugin.
fn parse_ms(payload: &str) -> Option<u64> {
    let after = payload
        .split("\"ms\"")
        .nth(1)?
        .trim_start()
        .strip_prefix(':')?;
    let digits: String = after
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

bsm_sdk::export_agent!(Versioned);
