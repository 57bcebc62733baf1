//! The data of one run's [`wasmtime::Store`]: a deny-by-default WASI context,
//! the run's limits and deadline, captured output and the capabilities.

use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::{HasCapabilities, RunCapabilities};
use crate::cpu_share::CpuMeter;
use crate::limits::RunLimits;
use crate::output_capture::CapturedOutput;

/// Bytes of guest stdout/stderr kept per run (enough for a panic message).
pub const CAPTURE_BYTES: usize = 16 * 1024;

/// Everything a run's store holds. One per run: never reused, so nothing
/// leaks from one run into the next.
pub struct RunState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: RunLimits,
    pub deadline: Instant,
    /// CPU time the run has used, and its cap (`cpu-ms`), if any.
    pub cpu: CpuMeter,
    pub cpu_limit_nanos: Option<u64>,
    /// Set when the epoch callback stopped the run for its CPU time.
    pub cpu_exceeded: bool,
    /// Set at the run's first epoch tick: it computes for long, and moves
    /// from the caller's thread to the guest pool (see `guest_pool`).
    pub used_a_tick: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub stderr: CapturedOutput,
    pub caps: RunCapabilities,
}

impl RunState {
    pub fn new(limits: RunLimits, deadline: Instant, caps: RunCapabilities) -> Self {
        let stdout = CapturedOutput::new(CAPTURE_BYTES);
        let stderr = CapturedOutput::new(CAPTURE_BYTES);
        // Deny by default: no preopened directories, no environment, no
        // arguments, no network. Clocks and randomness stay (they are not
        // effects on the outside world).
        let wasi = WasiCtx::builder()
            .stdout(stdout)
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits,
            deadline,
            cpu: CpuMeter::default(),
            cpu_limit_nanos: None,
            cpu_exceeded: false,
            used_a_tick: Default::default(),
            stderr,
            caps,
        }
    }
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HasCapabilities for RunState {
    fn capabilities(&mut self) -> &mut RunCapabilities {
        &mut self.caps
    }
}
