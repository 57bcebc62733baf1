//! Memory and table limits of one run, remembering when the plugin hit them
//! so the failure can be named "memory limit" rather than a generic trap.

use wasmtime::ResourceLimiter;

/// The error a refused `memory.grow` traps with.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (the plugin asked for {desired} bytes)")]
pub struct MemoryLimitExceeded {
    pub limit: usize,
    pub desired: usize,
}

/// Caps every linear memory (and table) of a store.
#[derive(Debug)]
pub struct RunLimits {
    memory_bytes: usize,
    max_table_elements: usize,
    /// Set when the plugin asked for more memory than its cap.
    pub memory_exceeded: Option<usize>,
}

impl RunLimits {
    pub fn new(memory_bytes: usize) -> Self {
        Self {
            memory_bytes,
            max_table_elements: 100_000,
            memory_exceeded: None,
        }
    }
}

impl ResourceLimiter for RunLimits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_exceeded = Some(desired);
            // Trap at the `memory.grow` itself: the guest never gets to turn
            // this into an allocation-failure abort, and the error says why.
            return Err(MemoryLimitExceeded {
                limit: self.memory_bytes,
                desired,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }
}
