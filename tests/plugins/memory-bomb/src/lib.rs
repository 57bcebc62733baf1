//! Allocates 1 MiB blocks until the host refuses: proves the memory cap holds.

use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output};

struct MemoryBomb;

impl Agent for MemoryBomb {
    fn describe() -> AgentInfo {
        AgentInfo::new("memory-bomb", "Memory bomb", "0.1.0")
    }

    fn run(_input: Input) -> Result<Output, AgentError> {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            blocks.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}

bsm_sdk::export_agent!(MemoryBomb);
