//! Counts runs in a static variable. Each run must see 1: proves every run
//! gets a fresh instance and no state leaks from one run into the next.

use std::sync::atomic::{AtomicU32, Ordering};

use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output};

static RUNS: AtomicU32 = AtomicU32::new(0);

struct Counter;

impl Agent for Counter {
    fn describe() -> AgentInfo {
        AgentInfo::new("counter", "Counter", "0.1.0")
    }

    fn run(_input: Input) -> Result<Output, AgentError> {
        let n = RUNS.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Output::text(n.to_string()))
    }
}

bsm_sdk::export_agent!(Counter);
