//! Never returns: proves the wall-clock deadline (epoch interruption) holds.

use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output};

struct SpinLoop;

impl Agent for SpinLoop {
    fn describe() -> AgentInfo {
        AgentInfo::new("spin-loop", "Spin loop", "0.1.0")
    }

    fn run(_input: Input) -> Result<Output, AgentError> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

bsm_sdk::export_agent!(SpinLoop);
