//! Fair CPU between plugins.
//!
//! Guest code runs on the guest pool's threads ([`crate::guest_pool`]), never
//! on the threads that serve HTTP, and only while its run holds a *CPU
//! turn*: there are as many turns as guest threads. A run takes a turn for
//! one poll of its call (guest code until it awaits a host call, or until
//! the next epoch tick, where every run yields) and gives it back at once.
//! A run waiting on the host (an LLM answer, a sleep) therefore holds no
//! turn at all: waiting is free, only computing is rationed.
//!
//! When every turn is taken, waiting runs queue per plugin, and turns go
//! round-robin over the plugins with runs waiting, FIFO within a plugin. A
//! plugin spinning on every thread thus gets at most its share once another
//! plugin asks for CPU, and the other plugin's run starts within one epoch
//! tick. A run's CPU time (the sum of its turns) is metered; `cpu-ms` in a
//! budget caps it separately from the wall-clock timeout.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::task::AtomicWaker;

/// Hands out CPU turns: at most `turns` polls of guest code at once, fairly.
#[derive(Debug)]
pub struct CpuScheduler {
    state: Mutex<SchedulerState>,
}

#[derive(Debug)]
struct SchedulerState {
    free: usize,
    /// Plugins with runs waiting, in the order they get the next turns.
    rotation: VecDeque<Arc<str>>,
    queues: HashMap<Arc<str>, VecDeque<Arc<Ticket>>>,
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
                free: turns.max(1),
                rotation: VecDeque::new(),
                queues: HashMap::new(),
            }),
        })
    }

    /// Whether some run is waiting for a turn now.
    pub fn contended(&self) -> bool {
        !self.state.lock().unwrap().rotation.is_empty()
    }

    /// Runs waiting for a turn now.
    pub fn waiting(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .queues
            .values()
            .map(|q| q.len())
            .sum()
    }

    /// A turn now (when one is free and nobody is queued ahead), or a
    /// ticket in `plugin`'s queue.
    fn take_or_queue(&self, plugin: &Arc<str>) -> Option<Arc<Ticket>> {
        let mut state = self.state.lock().unwrap();
        if state.free > 0 && state.rotation.is_empty() {
            state.free -= 1;
            return None;
        }
        let ticket = Arc::new(Ticket::default());
        let state = &mut *state;
        let queue = state.queues.entry(plugin.clone()).or_default();
        if queue.is_empty() {
            state.rotation.push_back(plugin.clone());
        }
        queue.push_back(ticket.clone());
        Some(ticket)
    }

    /// Gives a turn back: to the next plugin in the rotation, else to the pool.
    fn release(&self) {
        let mut state = self.state.lock().unwrap();
        while let Some(plugin) = state.rotation.pop_front() {
            let queue = state
                .queues
                .get_mut(&plugin)
                .expect("a plugin in the rotation has a queue");
            let next = queue.pop_front();
            if queue.is_empty() {
                state.queues.remove(&plugin);
            } else {
                state.rotation.push_back(plugin);
            }
            if let Some(ticket) = next {
                ticket.granted.store(true, Ordering::Release);
                drop(state);
                ticket.waker.wake();
                return;
            }
        }
        state.free += 1;
    }

    /// A run that stops waiting (dropped, timed out) leaves the queue, and
    /// passes on a turn it was granted but never used.
    fn withdraw(&self, plugin: &Arc<str>, ticket: &Arc<Ticket>) {
        let mut state = self.state.lock().unwrap();
        if ticket.granted.load(Ordering::Acquire) {
            drop(state);
            self.release();
            return;
        }
        if let Some(queue) = state.queues.get_mut(plugin) {
            queue.retain(|t| !Arc::ptr_eq(t, ticket));
            if queue.is_empty() {
                state.queues.remove(plugin);
                state.rotation.retain(|p| p != plugin);
            }
        }
    }
}

/// CPU time used by one run, shared with the run's epoch callback.
#[derive(Debug, Clone, Default)]
pub struct CpuMeter(Arc<AtomicU64>);

impl CpuMeter {
    pub fn used_nanos(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, since: Instant) {
        self.0
            .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// A run's call, polled only while it holds a CPU turn.
pub struct FairShare<F> {
    inner: Pin<Box<F>>,
    scheduler: Arc<CpuScheduler>,
    plugin: Arc<str>,
    ticket: Option<Arc<Ticket>>,
    meter: CpuMeter,
}

impl<F: Future> FairShare<F> {
    pub fn new(scheduler: Arc<CpuScheduler>, plugin: Arc<str>, meter: CpuMeter, inner: F) -> Self {
        Self {
            inner: Box::pin(inner),
            scheduler,
            plugin,
            ticket: None,
            meter,
        }
    }
}

impl<F: Future> Future for FairShare<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let ticket = match this.ticket.take() {
            Some(ticket) => Some(ticket),
            None => this.scheduler.take_or_queue(&this.plugin),
        };
        if let Some(ticket) = ticket {
            ticket.waker.register(cx.waker());
            if !ticket.granted.load(Ordering::Acquire) {
                this.ticket = Some(ticket);
                return Poll::Pending;
            }
        }
        // The turn is ours for this one poll.
        let started = Instant::now();
        let result = this.inner.as_mut().poll(cx);
        this.meter.add(started);
        this.scheduler.release();
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
        tickets: &[(&'static str, Arc<Ticket>)],
    ) -> Vec<&'static str> {
        let mut order = Vec::new();
        let mut granted = vec![false; tickets.len()];
        for _ in 0..tickets.len() {
            scheduler.release();
            for (i, (name, t)) in tickets.iter().enumerate() {
                if !granted[i] && t.granted.load(Ordering::Acquire) {
                    granted[i] = true;
                    order.push(*name);
                }
            }
        }
        order
    }

    #[test]
    fn turns_go_round_robin_over_plugins_fifo_within_one() {
        let scheduler = CpuScheduler::new(1);
        let spin: Arc<str> = Arc::from("spin");
        let ok: Arc<str> = Arc::from("ok");
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
            grant_order(&scheduler, &tickets),
            ["s1", "o1", "s2", "o2", "s3"],
            "the healthy plugin waits behind one run of the spinning one, not three"
        );
        scheduler.release();
        assert_eq!(scheduler.state.lock().unwrap().free, 1);
    }

    #[test]
    fn a_free_turn_is_not_taken_ahead_of_the_queue() {
        let scheduler = CpuScheduler::new(2);
        let a: Arc<str> = Arc::from("a");
        assert!(scheduler.take_or_queue(&a).is_none());
        assert!(scheduler.take_or_queue(&a).is_none());
        let queued = scheduler.take_or_queue(&a).expect("both turns are out");
        scheduler.release();
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
        assert!(!scheduler.contended());
        assert_eq!(
            scheduler.state.lock().unwrap().free,
            2,
            "every turn returned"
        );
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
        scheduler.release();
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
        scheduler.release(); // grants b's ticket
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

    #[tokio::test]
    async fn the_meter_counts_only_polls() {
        let scheduler = CpuScheduler::new(1);
        let meter = CpuMeter::default();
        FairShare::new(scheduler, Arc::from("a"), meter.clone(), async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        })
        .await;
        assert!(
            meter.used_nanos() < 150_000_000,
            "sleeping is not CPU: {} ns",
            meter.used_nanos()
        );
    }
}
