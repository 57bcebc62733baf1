//! The process-wide wasmtime [`Engine`] and the epoch ticker that gives every
//! run a wall-clock deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the engine's epoch advances: the granularity of run deadlines
/// and the longest a run computes before it yields its CPU turn (a run
/// waiting for a turn waits at most about this long per step). Each tick
/// wakes a thread, and each yield can move a run between threads: 1 ms
/// (with a [`crate::cpu_share::MIN_SLICE`] of 1 ms) against 0.5 ms cut the
/// machine's context switches by a quarter under load, with the
/// spinning-plugin p99 ratio still under 2x (BENCHMARKS.md, "The sixth
/// pass").
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Upper bound of any plugin's memory budget: the pooling allocator reserves
/// address space for this much per memory slot.
pub const MAX_PLUGIN_MEMORY_BYTES: usize = 1 << 30;

/// Bytes of each freed linear memory reset in place rather than decommitted.
pub const KEEP_RESIDENT_BYTES: usize = 1 << 20;

/// Sizing of the instance pool, shared by all plugins.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Component instances alive at once across all plugins: runs beyond
    /// this wait for one (within their plugin's queue wait), then are busy.
    pub max_instances: u32,
    /// Threads running guest code (0: one per core).
    pub guest_threads: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_instances: 4096,
            guest_threads: 0,
        }
    }
}

/// Builds the one engine of the process: component model, epoch
/// interruption for deadlines, and the pooling allocator (about half the
/// per-run cost of on-demand allocation, see `shared/notes/wasmtime-48.md`).
pub fn build_engine(pool: &PoolSettings) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);

    let n = pool.max_instances;
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        // One linear memory per component instance (a Rust, JS or Python
        // component has one); each slot reserves 4 GiB of address space
        // (no bounds checks), so 4,096 slots take 16 TiB of the 128 TiB.
        .total_memories(n)
        .total_tables(n.saturating_mul(8))
        .total_stacks(n)
        .max_memory_size(MAX_PLUGIN_MEMORY_BYTES)
        // Reset the first pages of a freed slot with memset instead of
        // madvise: a run touches little memory, and madvise's TLB-shootdown
        // IPIs were the largest cost of a run under load (see BENCHMARKS.md).
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(64 << 10)
        // Async stacks are not zeroed between runs (wasmtime's default:
        // guests cannot read the native stack, and reuse then costs no
        // memset and no madvise); `async_stack_keep_resident` only applies
        // with zeroing on, so it is not set.
        // The rest is decommitted in batches: fewer, larger madvise calls.
        .decommit_batch_size(16)
        .pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    Engine::new(&config)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a small thread, until
/// dropped. Runs check their deadline at each tick.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bsm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .expect("spawning the epoch ticker thread");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
