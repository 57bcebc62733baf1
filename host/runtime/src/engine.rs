//! The process-wide wasmtime [`Engine`] and the epoch ticker that gives every
//! run a wall-clock deadline.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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

/// Advances the engine's epoch every [`EPOCH_TICK`] on a small thread while
/// any run is in flight, until dropped. Runs check their deadline and CPU
/// time at each tick; with no run in flight there is nothing to check, and
/// the thread sleeps until the next run instead of waking a thousand times a
/// second on an idle server.
pub struct EpochTicker {
    shared: Arc<Ticking>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Ticking {
    /// Holds of [`EpochTicker::hold`] alive: stores that may run guest code.
    runs: AtomicUsize,
    /// Taken to wait for the first run, and by the run that ends the wait.
    parked: Mutex<()>,
    resumed: Condvar,
    stop: AtomicBool,
    ticks: AtomicU64,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Self {
        let shared = Arc::new(Ticking {
            runs: AtomicUsize::new(0),
            parked: Mutex::new(()),
            resumed: Condvar::new(),
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
        });
        let weak = engine.weak();
        let ticking = shared.clone();
        let thread = std::thread::Builder::new()
            .name("bsm-epoch".into())
            .spawn(move || {
                loop {
                    ticking.wait_for_a_run();
                    if ticking.stop.load(Ordering::Acquire) {
                        break;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                    ticking.ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
            .expect("spawning the epoch ticker thread");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// Keeps the epoch advancing for as long as the returned hold lives: a
    /// store that may run guest code holds one from its creation to its
    /// drop, so every run's deadline and CPU time are checked.
    pub fn hold(&self) -> TickingHold {
        if self.shared.runs.fetch_add(1, Ordering::AcqRel) == 0 {
            // Under the lock the ticker checks `runs` with: it either saw
            // this run already or is waiting and gets the notification.
            let _parked = self.shared.parked.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.resumed.notify_one();
        }
        TickingHold(self.shared.clone())
    }

    /// Ticks so far (the epoch's advance since start).
    pub fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }
}

impl Ticking {
    fn wait_for_a_run(&self) {
        if self.runs.load(Ordering::Acquire) > 0 {
            return;
        }
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        while self.runs.load(Ordering::Acquire) == 0 && !self.stop.load(Ordering::Acquire) {
            parked = self.resumed.wait(parked).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One run's claim on the epoch ticker (see [`EpochTicker::hold`]).
pub struct TickingHold(Arc<Ticking>);

impl Drop for TickingHold {
    fn drop(&mut self) {
        self.0.runs.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _parked = self.shared.parked.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.resumed.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits up to 10 s for `ticker` to pass `ticks`.
    fn ticks_past(ticker: &EpochTicker, ticks: u64) -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < until {
            if ticker.ticks() > ticks {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn the_epoch_ticks_only_while_a_run_holds_it() {
        let engine = Engine::default();
        let ticker = EpochTicker::start(&engine);
        std::thread::sleep(EPOCH_TICK * 30);
        assert_eq!(ticker.ticks(), 0, "no run in flight: no tick");

        let first = ticker.hold();
        let second = ticker.hold();
        assert!(ticks_past(&ticker, 3), "a held ticker advances");
        drop(first);
        let at = ticker.ticks();
        assert!(ticks_past(&ticker, at + 3), "one hold left: still ticking");

        drop(second);
        // At most the tick under way when the last hold went.
        std::thread::sleep(EPOCH_TICK * 5);
        let parked = ticker.ticks();
        std::thread::sleep(EPOCH_TICK * 30);
        assert_eq!(
            ticker.ticks(),
            parked,
            "the last run ended: the ticker sleeps"
        );

        let _again = ticker.hold();
        assert!(ticks_past(&ticker, parked), "the next run wakes it");
    }

    #[test]
    fn a_parked_ticker_stops_when_dropped() {
        let engine = Engine::default();
        let ticker = EpochTicker::start(&engine);
        std::thread::sleep(EPOCH_TICK * 5);
        // Joins the thread: returns only if the parked thread saw the stop.
        drop(ticker);
    }
}
