//! Fair CPU between plugins.
//!
//! Guest code runs on the guest pool's threads ([`crate::guest_pool`]), never
//! on the threads that serve HTTP, and only while its run holds a *CPU
//! turn*: there are as many turns as guest threads. A run takes a turn for
//! one poll of its call (guest code until it awaits a host call, or until
//! the next epoch tick, where every run yields) and gives it back at once.
//! A run waiting on the host (an LLM answer, a sleep) therefore holds no
//! turn at all: waiting is free, only computing is rationed.
//! A poll the call was not woken for (a combinator re-polling everything it
//! holds) asks for no turn and does not resume the call.
//!
//! When every turn is taken, waiting runs queue per plugin, and a freed
//! turn goes to the waiting plugin that has been charged the least CPU time
//! (weighted fair queuing with equal weights; FIFO within a plugin). A
//! plugin starting to wait is charged at least the current virtual time, so
//! it cannot bank idle time. A plugin spinning on every thread thus gets at
//! most an equal share of the CPU once another plugin asks for it, however
//! short the other plugin's steps are, and the other plugin's run starts
//! within two epoch ticks (a poll yields once it has computed for
//! [`MIN_SLICE`]). Accounts start afresh whenever the pool is idle. A run's CPU time (the sum of its turns) is metered; `cpu-ms` in a
//! budget caps it separately from the wall-clock timeout.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

/// Hands out CPU turns: at most `turns` polls of guest code at once, fairly.
#[derive(Debug)]
pub struct CpuScheduler {
    state: Mutex<SchedulerState>,
}

#[derive(Debug)]
struct SchedulerState {
    turns: usize,
    free: usize,
    /// Per plugin: CPU time charged, and runs waiting for a turn.
    plugins: HashMap<Arc<str>, PluginShare>,
    /// Plugins with runs waiting.
    contending: usize,
    /// Counts plugins starting to wait: ties go to the longest waiting.
    arrivals: u64,
    /// The virtual time of the last turn granted: a plugin that starts
    /// waiting is charged at least this, so idle time is not banked.
    virtual_now: u64,
}

#[derive(Debug, Default)]
struct PluginShare {
    /// CPU nanoseconds charged (weighted fair queuing's virtual time).
    charged: u64,
    /// When (in arrivals) the plugin started waiting.
    since: u64,
    waiting: VecDeque<Arc<Ticket>>,
}

/// A run's place in its plugin's queue.
#[derive(Debug, Default)]
struct Ticket {
    granted: AtomicBool,
    waker: AtomicWaker,
}

impl CpuScheduler {
    pub fn new(turns: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(SchedulerState {
                turns: turns.max(1),
                free: turns.max(1),
                plugins: HashMap::new(),
                contending: 0,
                arrivals: 0,
                virtual_now: 0,
            }),
        })
    }

    /// Runs waiting for a turn now.
    pub fn waiting(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .plugins
            .values()
            .map(|p| p.waiting.len())
            .sum()
    }

    /// A turn now (when one is free and nobody is queued ahead), or a
    /// ticket in `plugin`'s queue.
    fn take_or_queue(&self, plugin: &Arc<str>) -> Option<Arc<Ticket>> {
        let mut state = self.state.lock().unwrap();
        if state.free > 0 && state.contending == 0 {
            state.free -= 1;
            return None;
        }
        let ticket = Arc::new(Ticket::default());
        let state = &mut *state;
        state.arrivals += 1;
        let share = state.plugins.entry(plugin.clone()).or_default();
        if share.waiting.is_empty() {
            share.charged = share.charged.max(state.virtual_now);
            share.since = state.arrivals;
            state.contending += 1;
        }
        share.waiting.push_back(ticket.clone());
        Some(ticket)
    }

    /// Gives a turn back after `plugin` used it for `used` nanoseconds: to
    /// the waiting plugin charged least so far, else to the pool.
    fn release(&self, plugin: &Arc<str>, used: u64) {
        let mut state = self.state.lock().unwrap();
        let now = state.virtual_now;
        let contended = state.contending > 0;
        match state.plugins.get_mut(plugin) {
            Some(share) => share.charged += used,
            // Nobody waits: no account is needed (the fast path).
            None if !contended => {}
            None => {
                state.plugins.insert(
                    plugin.clone(),
                    PluginShare {
                        charged: now + used,
                        since: 0,
                        waiting: VecDeque::new(),
                    },
                );
            }
        }
        self.grant_next(state);
    }

    fn grant_next(&self, mut state: std::sync::MutexGuard<'_, SchedulerState>) {
        let next = state
            .plugins
            .iter()
            .filter(|(_, s)| !s.waiting.is_empty())
            .min_by_key(|(_, s)| (s.charged, s.since))
            .map(|(id, s)| (id.clone(), s.charged));
        let Some((id, charged)) = next else {
            state.free += 1;
            if state.free == state.turns {
                // Idle: nothing runs, nothing waits. Accounts start afresh.
                state.plugins.clear();
                state.virtual_now = 0;
            }
            return;
        };
        state.virtual_now = state.virtual_now.max(charged);
        let share = state.plugins.get_mut(&id).expect("chosen from the map");
        let ticket = share.waiting.pop_front().expect("has waiters");
        if share.waiting.is_empty() {
            state.contending -= 1;
        }
        ticket.granted.store(true, Ordering::Release);
        drop(state);
        ticket.waker.wake();
    }

    /// A run that stops waiting (dropped, timed out) leaves the queue, and
    /// passes on a turn it was granted but never used.
    fn withdraw(&self, plugin: &Arc<str>, ticket: &Arc<Ticket>) {
        let mut state = self.state.lock().unwrap();
        if ticket.granted.load(Ordering::Acquire) {
            self.grant_next(state);
            return;
        }
        if let Some(share) = state.plugins.get_mut(plugin) {
            let before = share.waiting.len();
            share.waiting.retain(|t| !Arc::ptr_eq(t, ticket));
            if before > 0 && share.waiting.is_empty() {
                state.contending -= 1;
            }
        }
    }
}

/// The least a poll computes before an epoch tick makes it yield its turn.
/// Shorter polls (a run that has just come back from a host call) go on:
/// yielding them would move a run that barely computed to the guest pool,
/// two thread hand-offs for nothing. A spinning run still yields within
/// two ticks. Measured: at 100 us, runs preempted by the OS for a moment
/// (a 2-core machine under load) moved to the pool for nothing (its
/// threads switched ~2,400 times a second in the fan-out; at one tick,
/// 1 ms, ~350), with the fairness row well within its target
/// (BENCHMARKS.md, "The sixth pass").
pub const MIN_SLICE: Duration = Duration::from_millis(1);

/// CPU time used by one run, shared with the run's epoch callback, which
/// also reads how long the poll in progress has been computing: an epoch
/// tick counts wall time, and a run that waited on the host (an LLM answer)
/// across ticks has not computed for them.
#[derive(Debug, Clone, Default)]
pub struct CpuMeter(Arc<MeterCells>);

#[derive(Debug, Default)]
struct MeterCells {
    used: AtomicU64,
    /// When the poll in progress started, in nanoseconds since
    /// [`meter_epoch`]; 0 between polls.
    poll_started: AtomicU64,
}

/// The instant the meters' poll start times count from.
fn meter_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl CpuMeter {
    pub fn used_nanos(&self) -> u64 {
        self.0.used.load(Ordering::Relaxed)
    }

    /// How long the poll in progress has been running (zero between polls).
    pub fn current_poll(&self) -> Duration {
        match self.0.poll_started.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            started => meter_epoch()
                .elapsed()
                .saturating_sub(Duration::from_nanos(started)),
        }
    }

    fn start_poll(&self) -> Instant {
        let now = Instant::now();
        let since = now.saturating_duration_since(meter_epoch()).as_nanos() as u64;
        self.0.poll_started.store(since.max(1), Ordering::Relaxed);
        now
    }

    fn add(&self, since: Instant) -> u64 {
        self.0.poll_started.store(0, Ordering::Relaxed);
        let used = since.elapsed().as_nanos() as u64;
        self.0.used.fetch_add(used, Ordering::Relaxed);
        used
    }
}

/// A run's call, polled only while it holds a CPU turn, and only when it
/// was woken: a combinator that polls every future it holds on any wake
/// (`join_all` of a job's agents does) would otherwise make runs waiting on
/// the LLM take turns, and each turn given back woke the next queued run:
/// a storm of empty turns that kept the CPU busy while every run waited.
pub struct FairShare<F> {
    inner: Pin<Box<F>>,
    scheduler: Arc<CpuScheduler>,
    plugin: Arc<str>,
    ticket: Option<Arc<Ticket>>,
    meter: CpuMeter,
    wake: Arc<InnerWake>,
    waker: Waker,
}

/// Whether the run's call was woken since its last poll; the waker the
/// call sees sets it and passes the wake on to whoever polls the run.
struct InnerWake {
    woken: AtomicBool,
    outer: AtomicWaker,
}

impl Wake for InnerWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.outer.wake();
    }
}

impl<F: Future> FairShare<F> {
    pub fn new(scheduler: Arc<CpuScheduler>, plugin: Arc<str>, meter: CpuMeter, inner: F) -> Self {
        // Woken to begin with: the first poll starts the call.
        let wake = Arc::new(InnerWake {
            woken: AtomicBool::new(true),
            outer: AtomicWaker::new(),
        });
        Self {
            inner: Box::pin(inner),
            scheduler,
            plugin,
            ticket: None,
            meter,
            waker: Waker::from(wake.clone()),
            wake,
        }
    }
}

impl<F: Future> Future for FairShare<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.wake.outer.register(cx.waker());
        let ticket = match this.ticket.take() {
            Some(ticket) => Some(ticket),
            // Not woken since the last poll: nothing for the call to do.
            None if !this.wake.woken.load(Ordering::Acquire) => return Poll::Pending,
            None => this.scheduler.take_or_queue(&this.plugin),
        };
        if let Some(ticket) = ticket {
            ticket.waker.register(cx.waker());
            if !ticket.granted.load(Ordering::Acquire) {
                this.ticket = Some(ticket);
                return Poll::Pending;
            }
        }
        // The turn is ours for this one poll. Cleared before polling, so
        // that a wake during the poll is kept for the next one.
        this.wake.woken.store(false, Ordering::Release);
        let started = this.meter.start_poll();
        let result = this
            .inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker));
        let used = this.meter.add(started);
        this.scheduler.release(&this.plugin, used);
        result
    }
}

impl<F> Drop for FairShare<F> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.scheduler.withdraw(&self.plugin, &ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A future that needs `polls` polls, recording each into `log`.
    fn worker(
        name: &'static str,
        polls: usize,
        log: Arc<Mutex<Vec<&'static str>>>,
    ) -> impl Future<Output = ()> {
        let mut left = polls;
        std::future::poll_fn(move |cx| {
            log.lock().unwrap().push(name);
            left -= 1;
            if left == 0 {
                Poll::Ready(())
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
    }

    /// The ticket of each queued run, in the order turns are granted.
    fn grant_order(
        scheduler: &CpuScheduler,
        holder: &str,
        tickets: &[(&'static str, Arc<Ticket>)],
    ) -> Vec<&'static str> {
        // Each step, whoever holds the turn uses it for 1 ms and gives it back.
        let mut order = Vec::new();
        let mut granted = vec![false; tickets.len()];
        let mut holder: Arc<str> = Arc::from(holder);
        for _ in 0..tickets.len() {
            scheduler.release(&holder, 1_000_000);
            for (i, (name, t)) in tickets.iter().enumerate() {
                if !granted[i] && t.granted.load(Ordering::Acquire) {
                    granted[i] = true;
                    order.push(*name);
                    holder = Arc::from(&name[..1]);
                }
            }
        }
        order
    }

    #[test]
    fn equal_charges_alternate_between_plugins_fifo_within_one() {
        let scheduler = CpuScheduler::new(1);
        let spin: Arc<str> = Arc::from("s");
        let ok: Arc<str> = Arc::from("o");
        // The only turn is taken; then the spinning plugin queues three
        // runs before the healthy plugin queues two.
        assert!(scheduler.take_or_queue(&spin).is_none());
        let tickets: Vec<_> = [
            ("s1", &spin),
            ("s2", &spin),
            ("s3", &spin),
            ("o1", &ok),
            ("o2", &ok),
        ]
        .into_iter()
        .map(|(name, p)| (name, scheduler.take_or_queue(p).expect("queued")))
        .collect();
        assert_eq!(scheduler.waiting(), 5);
        assert_eq!(
            grant_order(&scheduler, "s", &tickets),
            ["o1", "s1", "o2", "s2", "s3"],
            "the spinner just had 1 ms: the healthy plugin goes first, then they alternate"
        );
        scheduler.release(&Arc::from("s"), 0);
        assert_eq!(scheduler.state.lock().unwrap().free, 1);
    }

    #[test]
    fn the_plugin_charged_least_cpu_goes_first_however_short_its_steps() {
        let scheduler = CpuScheduler::new(1);
        let spin: Arc<str> = Arc::from("spin");
        let ok: Arc<str> = Arc::from("ok");
        assert!(scheduler.take_or_queue(&spin).is_none());
        // The spinning plugin queues its next step; the healthy one queues
        // three short ones.
        let s = scheduler.take_or_queue(&spin).unwrap();
        let oks: Vec<_> = (0..3)
            .map(|_| scheduler.take_or_queue(&ok).unwrap())
            .collect();
        // The spinner's 1 ms step ends: the healthy plugin (charged 0) goes.
        scheduler.release(&spin, 1_000_000);
        assert!(oks[0].granted.load(Ordering::Acquire));
        // Each 40 us step of the healthy plugin hands the turn to its next
        // step: 120 us charged is still far below the spinner's 1 ms.
        scheduler.release(&ok, 40_000);
        assert!(oks[1].granted.load(Ordering::Acquire));
        scheduler.release(&ok, 40_000);
        assert!(oks[2].granted.load(Ordering::Acquire));
        assert!(!s.granted.load(Ordering::Acquire));
        scheduler.release(&ok, 40_000);
        assert!(s.granted.load(Ordering::Acquire), "then the spinner again");
    }

    #[test]
    fn idle_time_is_not_banked() {
        let scheduler = CpuScheduler::new(1);
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        // a computes alone for a long time while b is contended...
        assert!(scheduler.take_or_queue(&a).is_none());
        let b1 = scheduler.take_or_queue(&b).unwrap();
        scheduler.release(&a, 50_000_000);
        assert!(b1.granted.load(Ordering::Acquire));
        let a1 = scheduler.take_or_queue(&a).unwrap();
        // b runs 1 ms, then queues again: b was charged from the virtual
        // time it started waiting at, so its 1 ms is compared fairly.
        let b2 = scheduler.take_or_queue(&b).unwrap();
        scheduler.release(&b, 1_000_000);
        assert!(
            b2.granted.load(Ordering::Acquire),
            "b is still far behind a"
        );
        assert!(!a1.granted.load(Ordering::Acquire));
        scheduler.release(&b, 1_000_000);
        assert!(a1.granted.load(Ordering::Acquire));
        scheduler.release(&a, 0);
        assert_eq!(scheduler.state.lock().unwrap().free, 1);
        assert!(
            scheduler.state.lock().unwrap().plugins.is_empty(),
            "idle: accounts start afresh"
        );
    }

    #[test]
    fn a_free_turn_is_not_taken_ahead_of_the_queue() {
        let scheduler = CpuScheduler::new(2);
        let a: Arc<str> = Arc::from("a");
        assert!(scheduler.take_or_queue(&a).is_none());
        assert!(scheduler.take_or_queue(&a).is_none());
        let queued = scheduler.take_or_queue(&a).expect("both turns are out");
        scheduler.release(&a, 10);
        assert!(
            queued.granted.load(Ordering::Acquire),
            "the freed turn went to the queue"
        );
        assert!(scheduler.take_or_queue(&a).is_some(), "no turn is free");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contended_runs_all_finish_and_return_every_turn() {
        let scheduler = CpuScheduler::new(2);
        let log = Arc::new(Mutex::new(Vec::new()));
        let runs: Vec<_> = (0..6)
            .map(|i| {
                let plugin: Arc<str> = Arc::from(if i % 3 == 0 { "ok" } else { "spin" });
                let name = if i % 3 == 0 { "ok" } else { "spin" };
                tokio::spawn(FairShare::new(
                    scheduler.clone(),
                    plugin,
                    CpuMeter::default(),
                    worker(name, 50, log.clone()),
                ))
            })
            .collect();
        for r in runs {
            r.await.unwrap();
        }
        assert_eq!(log.lock().unwrap().len(), 300);
        assert_eq!(scheduler.waiting(), 0);
        assert_eq!(
            scheduler.state.lock().unwrap().free,
            2,
            "every turn returned"
        );
    }

    #[test]
    fn a_run_polled_without_being_woken_takes_no_turn_and_does_not_poll_its_call() {
        let scheduler = CpuScheduler::new(1);
        let polls = Arc::new(AtomicUsize::new(0));
        let inner_waker = Arc::new(Mutex::new(None::<Waker>));
        let call = {
            let (polls, inner_waker) = (polls.clone(), inner_waker.clone());
            std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                *inner_waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::<()>::Pending
            })
        };
        let mut run = Box::pin(FairShare::new(
            scheduler.clone(),
            Arc::from("p"),
            CpuMeter::default(),
            call,
        ));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(run.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the first poll starts the call"
        );
        // A combinator polling everything it holds, with the call still waiting.
        for _ in 0..10 {
            assert!(run.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "spurious polls reach nothing"
        );
        // Holding the only turn elsewhere: a spurious poll does not queue.
        assert!(scheduler.take_or_queue(&Arc::from("other")).is_none());
        assert!(run.as_mut().poll(&mut cx).is_pending());
        assert_eq!(scheduler.waiting(), 0, "no turn asked for");
        scheduler.release(&Arc::from("other"), 0);
        // The call's own wake-up (an LLM answer) gets it polled again.
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert!(run.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2, "woken, it is polled");
    }

    #[tokio::test]
    async fn uncontended_runs_never_queue() {
        let scheduler = CpuScheduler::new(2);
        let log = Arc::new(Mutex::new(Vec::new()));
        FairShare::new(
            scheduler.clone(),
            Arc::from("a"),
            CpuMeter::default(),
            worker("a", 5, log.clone()),
        )
        .await;
        assert_eq!(scheduler.state.lock().unwrap().contending, 0);
        assert_eq!(
            scheduler.state.lock().unwrap().free,
            2,
            "every turn returned"
        );
    }

    #[tokio::test]
    async fn the_meter_sees_the_poll_in_progress_and_not_the_wait_between_polls() {
        let meter = CpuMeter::default();
        let inside = meter.clone();
        let mut polls = 0;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        FairShare::new(
            CpuScheduler::new(1),
            Arc::from("a"),
            meter.clone(),
            std::future::poll_fn(move |cx| {
                polls += 1;
                // Inside a poll: it has been running at least this long.
                std::thread::sleep(Duration::from_millis(2));
                record.lock().unwrap().push(inside.current_poll());
                if polls == 2 {
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }),
        )
        .await;
        for during in seen.lock().unwrap().iter() {
            assert!(*during >= Duration::from_millis(2), "{during:?}");
        }
        assert_eq!(meter.current_poll(), Duration::ZERO, "between polls");
        assert!(meter.used_nanos() >= 4_000_000);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_and_passes_on_its_turn() {
        let scheduler = CpuScheduler::new(1);
        let counter = Arc::new(AtomicUsize::new(0));
        // Hold the only turn by hand.
        assert!(scheduler.take_or_queue(&Arc::from("x")).is_none());
        let waiting = FairShare::new(
            scheduler.clone(),
            Arc::from("a"),
            CpuMeter::default(),
            std::future::ready(()),
        );
        let mut waiting = Box::pin(waiting);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        assert_eq!(scheduler.waiting(), 1);
        drop(waiting);
        assert_eq!(scheduler.waiting(), 0, "the dropped run left the queue");
        scheduler.release(&Arc::from("x"), 0);
        // Granted-then-dropped: the turn goes on to the next run.
        let granted = Box::pin(FairShare::new(
            scheduler.clone(),
            Arc::from("b"),
            CpuMeter::default(),
            std::future::ready(()),
        ));
        let mut granted = granted;
        assert!(scheduler.take_or_queue(&Arc::from("x")).is_none());
        assert!(granted.as_mut().poll(&mut cx).is_pending());
        scheduler.release(&Arc::from("x"), 0); // grants b's ticket
        drop(granted); // b never used it
        let c = FairShare::new(
            scheduler.clone(),
            Arc::from("c"),
            CpuMeter::default(),
            async {
                counter.fetch_add(1, Ordering::SeqCst);
            },
        );
        tokio::time::timeout(std::time::Duration::from_secs(5), c)
            .await
            .expect("the turn b never used came back");
        assert_eq!(counter.load(Ordering::SeqCst), 1);
    }
}
