//! The provider's adaptive concurrency limit.
//!
//! A fixed limit is wrong at every latency but one: 32 upstream calls in
//! flight allow 640 answers/s from a 50 ms provider and 3 from a 10 s one.
//! This limit follows the provider instead, in the spirit of Netflix's
//! concurrency-limits (AIMD with a latency gradient):
//!
//! - **Additive increase** while latency holds: each successful answer of
//!   a limit that was at least half used adds one call (the limit doubles
//!   per round trip while the provider keeps up, like TCP slow start).
//! - **Multiplicative decrease** on overload: a 429, a timeout or a 503
//!   (and a smoothed latency grown past `tolerance` times its long-term
//!   baseline) multiplies the limit by `backoff`, at most once per round
//!   trip so that one burst of refusals counts once.
//! - Between healthy and overloaded (latency up, but within the tolerance)
//!   the limit holds.
//!
//! The limit stays within `min..=max`; `max` is the configurable ceiling.
//! Waiters queue in FIFO order on a semaphore whose permits follow the
//! limit: growth adds permits at once, a decrease forgets free permits and
//! takes the rest back as calls finish.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How a provider's concurrency limit moves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct AdaptiveSettings {
    /// The limit a fresh provider starts with.
    pub initial: u32,
    /// The limit never falls below this.
    pub min: u32,
    /// The ceiling: the limit never grows past this.
    pub max: u32,
    /// Factor applied on overload (0 < backoff < 1).
    pub backoff: f64,
    /// Smoothed latency above `tolerance` × the long-term baseline counts
    /// as overload.
    pub tolerance: f64,
    /// ... and only when it is also this much above the baseline, so that
    /// sub-millisecond jitter of a fast provider is not read as overload.
    pub latency_margin_ms: u64,
}

impl Default for AdaptiveSettings {
    fn default() -> Self {
        Self {
            initial: 100,
            min: 16,
            max: 4096,
            backoff: 0.9,
            tolerance: 2.0,
            latency_margin_ms: 50,
        }
    }
}

impl AdaptiveSettings {
    /// A limit that never moves (min = initial = max).
    pub fn fixed(limit: u32) -> Self {
        Self {
            initial: limit,
            min: limit,
            max: limit,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.min == 0 || self.min > self.max {
            return Err(format!(
                "concurrency: min ({}) must be at least 1 and at most max ({})",
                self.min, self.max
            ));
        }
        if !(self.min..=self.max).contains(&self.initial) {
            return Err(format!(
                "concurrency: initial ({}) must lie within min..=max ({}..={})",
                self.initial, self.min, self.max
            ));
        }
        if !(self.backoff > 0.0 && self.backoff < 1.0) {
            return Err(format!(
                "concurrency: backoff must lie strictly between 0 and 1, not {}",
                self.backoff
            ));
        }
        if self.tolerance < 1.0 {
            return Err(format!(
                "concurrency: tolerance must be at least 1, not {}",
                self.tolerance
            ));
        }
        Ok(())
    }
}

/// What one upstream call told the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// An answer, and how long it took.
    Answered(Duration),
    /// The provider pushed back: 429, timeout, 503.
    Overloaded,
    /// Says nothing about load (a bad request, a broken connection: the
    /// breaker's business, not the limit's).
    Ignored,
}

/// The short-term latency follows within about a quarter of a round trip
/// (a round trip being `limit` answers when the limit is in use)...
const SHORT_ROUND_TRIPS: f64 = 0.25;
/// ... the long-term baseline over about twenty round trips, so that a
/// provider slowing down is seen as such for several round trips before
/// the new latency becomes the baseline.
const LONG_ROUND_TRIPS: f64 = 20.0;
/// Latency within this factor of the baseline is healthy: the limit grows.
const HEALTHY_BAND: f64 = 1.25;
/// Decreases are at most one per round trip, and at most one per this.
const MIN_DECREASE_INTERVAL: Duration = Duration::from_millis(10);

/// The moving part, behind a mutex (a few arithmetic operations per call).
#[derive(Debug)]
struct LimitState {
    limit: f64,
    /// Smoothed latency of recent answers, seconds.
    short: Option<f64>,
    /// Long-term latency baseline, seconds.
    long: Option<f64>,
    last_decrease: Option<Instant>,
}

/// An adaptive concurrency limit with a FIFO queue.
#[derive(Debug)]
pub struct AdaptiveLimit {
    settings: AdaptiveSettings,
    slots: Arc<Semaphore>,
    state: Mutex<LimitState>,
    /// Permits the semaphore holds beyond the limit, forgotten as they return.
    debt: AtomicUsize,
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
}

/// A call's place under the limit; report how the call went with
/// [`Permit::record`] (dropping it unrecorded counts as [`Sample::Ignored`]).
#[derive(Debug)]
pub struct Permit {
    limit: Arc<AdaptiveLimit>,
    permit: Option<OwnedSemaphorePermit>,
    started: Instant,
    in_flight_at_start: usize,
}

impl AdaptiveLimit {
    /// A limit starting at `settings.initial` (clamped into `min..=max`).
    pub fn new(settings: AdaptiveSettings) -> Arc<Self> {
        let min = settings.min.max(1);
        let max = settings.max.max(min);
        let initial = settings.initial.clamp(min, max);
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(initial as usize)),
            state: Mutex::new(LimitState {
                limit: initial as f64,
                short: None,
                long: None,
                last_decrease: None,
            }),
            debt: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            settings: AdaptiveSettings {
                min,
                max,
                initial,
                ..settings
            },
        })
    }

    /// Waits (FIFO) for a place under the current limit.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.waiting.fetch_add(1, Ordering::AcqRel);
                let _waiting = Waiting(&self.waiting);
                self.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the limit's semaphore is never closed")
            }
        };
        let in_flight_at_start = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        Permit {
            limit: self.clone(),
            permit: Some(permit),
            started: Instant::now(),
            in_flight_at_start,
        }
    }

    /// The current limit (whole calls).
    pub fn limit(&self) -> u32 {
        self.state.lock().unwrap().limit as u32
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Calls waiting for a place now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    fn on_sample(&self, sample: Sample, in_flight_at_start: usize, now: Instant) {
        let mut state = self.state.lock().unwrap();
        let before = state.limit as usize;
        match sample {
            Sample::Ignored => return,
            Sample::Overloaded => self.decrease(&mut state, now),
            Sample::Answered(latency) => {
                let seconds = latency.as_secs_f64();
                // Weights per answer, from the answers per round trip.
                let per_round_trip = state.limit.max(1.0);
                let short_weight = (1.0 / (SHORT_ROUND_TRIPS * per_round_trip)).min(0.5);
                let long_weight = (1.0 / (LONG_ROUND_TRIPS * per_round_trip)).min(0.05);
                let short = smooth(state.short, seconds, short_weight);
                let long = smooth(state.long, seconds, long_weight);
                state.short = Some(short);
                state.long = Some(long);
                let margin = Duration::from_millis(self.settings.latency_margin_ms).as_secs_f64();
                if short > long * self.settings.tolerance && short - long > margin {
                    self.decrease(&mut state, now);
                } else if short <= long * HEALTHY_BAND
                    && in_flight_at_start * 2 >= state.limit as usize
                {
                    state.limit = (state.limit + 1.0).min(self.settings.max as f64);
                }
            }
        }
        let after = state.limit as usize;
        drop(state);
        self.resize(before, after);
    }

    fn decrease(&self, state: &mut LimitState, now: Instant) {
        let interval = state
            .short
            .map(Duration::from_secs_f64)
            .unwrap_or_default()
            .max(MIN_DECREASE_INTERVAL);
        if state
            .last_decrease
            .is_some_and(|at| now.duration_since(at) < interval)
        {
            return;
        }
        state.limit = (state.limit * self.settings.backoff).max(self.settings.min as f64);
        state.last_decrease = Some(now);
    }

    /// Moves the semaphore's permits from `before` to `after`.
    fn resize(&self, before: usize, after: usize) {
        if after > before {
            let mut grow = after - before;
            // Pay back debt first: those permits are still out.
            let _ = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    let paid = d.min(grow);
                    Some(d - paid)
                })
                .map(|d| grow -= d.min(grow));
            if grow > 0 {
                self.slots.add_permits(grow);
            }
        } else if after < before {
            let shrink = before - after;
            let forgotten = self.slots.forget_permits(shrink);
            if forgotten < shrink {
                self.debt.fetch_add(shrink - forgotten, Ordering::AcqRel);
            }
        }
    }

    fn release(&self, permit: OwnedSemaphorePermit) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let owed = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if owed {
            permit.forget();
        }
    }
}

/// Keeps the waiting count right when a waiter is dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn smooth(previous: Option<f64>, sample: f64, weight: f64) -> f64 {
    match previous {
        None => sample,
        Some(p) => p + weight * (sample - p),
    }
}

impl Permit {
    /// Reports how the call went, then frees the place.
    pub fn record(mut self, sample: Sample) {
        let sample = match sample {
            // The caller's measure is the attempt; fall back to ours.
            Sample::Answered(d) if d.is_zero() => Sample::Answered(self.started.elapsed()),
            s => s,
        };
        self.limit
            .on_sample(sample, self.in_flight_at_start, Instant::now());
        if let Some(permit) = self.permit.take() {
            self.limit.release(permit);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.limit.release(permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(initial: u32, min: u32, max: u32) -> AdaptiveSettings {
        AdaptiveSettings {
            initial,
            min,
            max,
            ..AdaptiveSettings::default()
        }
    }

    /// Runs `n` calls at the current limit, each answered after `latency`
    /// (with the clock paused, the latency is exact), and returns the limit.
    async fn round(limit: &Arc<AdaptiveLimit>, latency: Duration) -> u32 {
        let n = limit.limit() as usize;
        let mut permits = Vec::new();
        for _ in 0..n {
            permits.push(limit.acquire().await);
        }
        tokio::time::advance(latency).await;
        for p in permits {
            p.record(Sample::Answered(latency));
        }
        limit.limit()
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_slow_provider_lets_the_limit_grow_to_the_ceiling() {
        let limit = AdaptiveLimit::new(settings(10, 4, 1000));
        let mut seen = vec![limit.limit()];
        for _ in 0..20 {
            seen.push(round(&limit, Duration::from_secs(2)).await);
        }
        assert!(
            seen.windows(2).all(|w| w[1] >= w[0]),
            "never shrinks while latency holds: {seen:?}"
        );
        assert_eq!(*seen.last().unwrap(), 1000, "reaches the ceiling: {seen:?}");
        assert!(
            seen[1..8]
                .windows(2)
                .all(|w| w[1] as f64 >= w[0] as f64 * 1.4),
            "grows by half or more per round trip while busy: {seen:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_limit_does_not_grow() {
        let limit = AdaptiveLimit::new(settings(100, 4, 1000));
        for _ in 0..200 {
            let p = limit.acquire().await;
            tokio::time::advance(Duration::from_millis(100)).await;
            p.record(Sample::Answered(Duration::from_millis(100)));
        }
        assert_eq!(
            limit.limit(),
            100,
            "one call at a time proves nothing about 101"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiting_shrinks_the_limit_once_per_round_trip() {
        let limit = AdaptiveLimit::new(settings(100, 4, 1000));
        round(&limit, Duration::from_millis(200)).await;
        let grown = limit.limit();
        // A burst of 429s arriving together counts once.
        let permits: Vec<_> =
            futures_util::future::join_all((0..50).map(|_| limit.acquire())).await;
        for p in permits {
            p.record(Sample::Overloaded);
        }
        let after_burst = limit.limit();
        assert_eq!(after_burst, (grown as f64 * 0.9) as u32);
        // Refusals that keep coming, one round trip apart, keep shrinking it.
        for _ in 0..30 {
            tokio::time::advance(Duration::from_millis(250)).await;
            limit.acquire().await.record(Sample::Overloaded);
        }
        assert!(limit.limit() < after_burst / 4, "{}", limit.limit());
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(250)).await;
            limit.acquire().await.record(Sample::Overloaded);
        }
        assert_eq!(limit.limit(), 4, "never below the minimum");
    }

    #[tokio::test(start_paused = true)]
    async fn rising_latency_shrinks_the_limit() {
        let limit = AdaptiveLimit::new(settings(64, 4, 4096));
        for _ in 0..3 {
            round(&limit, Duration::from_millis(200)).await;
        }
        let before = limit.limit();
        assert!(before > 64);
        // The provider slows down five-fold under the same load.
        let mut lows = Vec::new();
        for _ in 0..5 {
            lows.push(round(&limit, Duration::from_secs(1)).await);
        }
        assert!(
            lows.iter().all(|&l| l <= before),
            "no growth while latency is up: {before} then {lows:?}"
        );
        assert!(
            *lows.last().unwrap() < before * 3 / 4,
            "shrinks round after round: {before} then {lows:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn small_jitter_of_a_fast_provider_is_not_overload() {
        let limit = AdaptiveLimit::new(settings(32, 4, 4096));
        for i in 0..20 {
            // 0.2 ms to 3 ms: ten-fold, but far below the margin.
            let latency = Duration::from_micros(if i % 2 == 0 { 200 } else { 3000 });
            round(&limit, latency).await;
        }
        assert!(limit.limit() > 32, "{}", limit.limit());
    }

    #[tokio::test(start_paused = true)]
    async fn a_shrunk_limit_takes_its_permits_back_as_calls_finish() {
        let limit = AdaptiveLimit::new(AdaptiveSettings {
            backoff: 0.5,
            ..settings(10, 2, 100)
        });
        let mut held: Vec<_> = Vec::new();
        for _ in 0..10 {
            held.push(limit.acquire().await);
        }
        held.pop().unwrap().record(Sample::Overloaded);
        assert_eq!(limit.limit(), 5);
        // Nine calls are still out; as they finish, only five may be out again.
        for p in held.drain(..) {
            drop(p);
        }
        let mut again = Vec::new();
        for _ in 0..5 {
            again.push(limit.acquire().await);
        }
        let sixth = tokio::time::timeout(Duration::from_secs(1), limit.acquire()).await;
        assert!(sixth.is_err(), "the sixth call waits: the limit is five");
        assert_eq!(limit.in_flight(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_limit_never_moves() {
        let limit = AdaptiveLimit::new(AdaptiveSettings::fixed(8));
        round(&limit, Duration::from_millis(10)).await;
        limit.acquire().await.record(Sample::Overloaded);
        assert_eq!(limit.limit(), 8);
    }

    #[test]
    fn settings_are_validated() {
        assert!(AdaptiveSettings::default().validate().is_ok());
        assert!(
            settings(1, 2, 3)
                .validate()
                .unwrap_err()
                .contains("initial")
        );
        assert!(settings(5, 10, 3).validate().unwrap_err().contains("min"));
        let bad_backoff = AdaptiveSettings {
            backoff: 1.5,
            ..AdaptiveSettings::default()
        };
        assert!(bad_backoff.validate().unwrap_err().contains("backoff"));
    }
}
