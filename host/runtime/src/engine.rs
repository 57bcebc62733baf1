//! The process-wide wasmtime [`Engine`] and the epoch ticker that lets guest
//! code be interrupted at its run's deadline and yield its CPU turn.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
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
/// any run is computing, until dropped. Runs check their deadline, CPU time
/// and CPU turn at each tick, and only guest code sees a tick: a run waiting
/// on the host (an LLM call of seconds) is bounded by its wall-clock timeout
/// instead. So the thread ticks only while some run is inside a poll of its
/// guest call ([`TickerHandle::while_polled`]) and sleeps otherwise: an idle
/// server, or one whose runs all wait on the LLM, is not woken a thousand
/// times a second.
pub struct EpochTicker {
    shared: Arc<Ticking>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Ticking {
    /// Holds alive ([`TickingHold`]): runs inside a poll of their guest call.
    computing: AtomicUsize,
    /// Whether a hold was taken since the last tick: the ticker parks only
    /// after a whole tick with no run computing, so that a busy server,
    /// whose runs compute every millisecond but not at every instant, keeps
    /// ticking instead of parking and being woken again each time.
    held_since_tick: AtomicBool,
    /// Whether the ticker waits (or is about to) for a run to compute: only
    /// then does the hold that ends the wait take the lock and notify, so a
    /// busy server pays no system call per poll.
    parked: AtomicBool,
    /// Taken to wait for the first run, and by the run that ends the wait.
    lock: Mutex<()>,
    resumed: Condvar,
    stop: AtomicBool,
    ticks: AtomicU64,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Self {
        let shared = Arc::new(Ticking {
            computing: AtomicUsize::new(0),
            held_since_tick: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            lock: Mutex::new(()),
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

    /// What a run takes along to keep the epoch advancing while it computes.
    pub fn handle(&self) -> TickerHandle {
        TickerHandle(self.shared.clone())
    }

    /// Ticks so far (the epoch's advance since start).
    pub fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }
}

impl Ticking {
    fn hold(self: &Arc<Self>) -> TickingHold {
        self.held_since_tick.store(true, Ordering::Relaxed);
        // SeqCst pairs with `wait_for_a_run`: either the ticker sees this
        // run computing, or this run sees the ticker parked and wakes it.
        if self.computing.fetch_add(1, Ordering::SeqCst) == 0 && self.parked.load(Ordering::SeqCst)
        {
            // Under the lock the ticker parks with: it is either waiting and
            // gets the notification, or has not yet checked `computing`.
            let _parked = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.resumed.notify_one();
        }
        TickingHold(self.clone())
    }

    fn wait_for_a_run(&self) {
        let held = self.held_since_tick.swap(false, Ordering::Relaxed);
        if held || self.computing.load(Ordering::SeqCst) > 0 {
            return;
        }
        let mut parked = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.parked.store(true, Ordering::SeqCst);
        while self.computing.load(Ordering::SeqCst) == 0 && !self.stop.load(Ordering::Acquire) {
            parked = self.resumed.wait(parked).unwrap_or_else(|p| p.into_inner());
        }
        self.parked.store(false, Ordering::SeqCst);
    }
}

/// A run's way to the epoch ticker, outliving the borrow of the runtime.
#[derive(Clone)]
pub struct TickerHandle(Arc<Ticking>);

impl TickerHandle {
    /// `call`, keeping the epoch advancing during each of its polls (while
    /// guest code may run) and not between them (while it waits on the host).
    pub fn while_polled<F: Future + Unpin>(&self, call: F) -> WhilePolled<F> {
        WhilePolled {
            call,
            ticking: self.0.clone(),
        }
    }
}

/// One poll's claim on the epoch ticker (see [`TickerHandle::while_polled`]).
struct TickingHold(Arc<Ticking>);

impl Drop for TickingHold {
    fn drop(&mut self) {
        self.0.computing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A guest call that holds the epoch ticker during its polls (see
/// [`TickerHandle::while_polled`]).
pub struct WhilePolled<F> {
    call: F,
    ticking: Arc<Ticking>,
}

impl<F: Future + Unpin> Future for WhilePolled<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _computing = self.ticking.hold();
        Pin::new(&mut self.call).poll(cx)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _parked = self.shared.lock.lock().unwrap_or_else(|p| p.into_inner());
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

        let first = ticker.shared.hold();
        let second = ticker.shared.hold();
        assert!(ticks_past(&ticker, 3), "a held ticker advances");
        drop(first);
        let at = ticker.ticks();
        assert!(ticks_past(&ticker, at + 3), "one hold left: still ticking");

        drop(second);
        // At most the tick under way when the last hold went, and one
        // more to see a whole tick without a run.
        std::thread::sleep(EPOCH_TICK * 10);
        let parked = ticker.ticks();
        std::thread::sleep(EPOCH_TICK * 30);
        assert_eq!(
            ticker.ticks(),
            parked,
            "the last run ended: the ticker sleeps"
        );

        let _again = ticker.shared.hold();
        assert!(ticks_past(&ticker, parked), "the next run wakes it");
    }

    #[test]
    fn a_run_keeps_the_epoch_ticking_while_it_computes_and_not_while_it_waits() {
        let engine = Engine::default();
        let ticker = EpochTicker::start(&engine);
        let handle = ticker.handle();
        let start = ticker.ticks();
        let mut polls = 0;
        // A call that computes in its first poll until the epoch has moved
        // on (what guest code does between host calls), then waits on the
        // host, then ends.
        let ticks = ticker.shared.clone();
        let call = std::future::poll_fn(move |_| {
            polls += 1;
            if polls > 1 {
                return Poll::Ready(());
            }
            let until = std::time::Instant::now() + Duration::from_secs(10);
            while ticks.ticks.load(Ordering::Relaxed) < start + 3
                && std::time::Instant::now() < until
            {
                std::hint::spin_loop();
            }
            Poll::Pending
        });
        let mut run = handle.while_polled(Box::pin(call));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut run).poll(&mut cx).is_pending());
        assert!(ticker.ticks() >= start + 3, "computing: the epoch advances");

        std::thread::sleep(EPOCH_TICK * 10);
        let waiting = ticker.ticks();
        std::thread::sleep(EPOCH_TICK * 30);
        assert!(
            ticker.ticks() <= waiting + 1,
            "a run waiting on the host keeps the ticker going: {} ticks",
            ticker.ticks() - waiting
        );
        assert!(Pin::new(&mut run).poll(&mut cx).is_ready());
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
