//! Sleeps for `payload.ms` milliseconds (without burning CPU), then answers:
//! keeps runs in flight for the concurrency-limit tests.

use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output};

struct Sleepy;

impl Agent for Sleepy {
    fn describe() -> AgentInfo {
        AgentInfo::new("sleepy", "Sleepy", "0.1.0")
    }

    fn run(input: Input) -> Result<Output, AgentError> {
        let ms = parse_ms(&input.payload)
            .ok_or_else(|| AgentError::InvalidInput("payload needs {\"ms\": N}".into()))?;
        std::thread::sleep(std::time::Duration::from_millis(ms));
        Ok(Output::text(format!("slept {ms} ms")))
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

bsm_sdk::export_agent!(Sleepy);
