//! A circuit breaker with the semantics of resilience4j.
//!
//! States: `Closed` (calls flow, outcomes are recorded in a sliding window),
//! `Open` (calls are refused at once until `wait_in_open` has passed),
//! `HalfOpen` (exactly `permitted_calls_in_half_open` probe calls are let
//! through; their outcome closes or re-opens the breaker), plus `ForcedOpen`
//! (isolated by an operator) and `Disabled` (always lets calls through,
//! records nothing).
//!
//! In `Closed`, once the window holds at least `minimum_calls`, the breaker
//! opens when the failure rate or the slow-call rate reaches its threshold.
//! "Slow" is decided by the caller's measured duration (for LLM calls: time
//! to first token) against `slow_call_duration`.
//!
//! Time comes from `tokio::time::Instant`, so tests drive it with tokio's
//! paused clock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            _ => State::Disabled,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
            State::Disabled => 4,
        }
    }
}

/// How outcomes are aggregated in `Closed`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SlidingWindow {
    /// The last `size` calls.
    CountBased { size: u32 },
    /// The calls of the last `seconds` seconds (one bucket per second).
    TimeBased { seconds: u32 },
}

/// Breaker settings; the defaults suit an LLM provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct BreakerConfig {
    pub sliding_window: SlidingWindow,
    /// Percentage of failed calls at which the breaker opens.
    pub failure_rate_threshold: f64,
    /// Percentage of slow calls at which the breaker opens.
    pub slow_call_rate_threshold: f64,
    /// A call slower than this (time to first token) is slow.
    #[serde(with = "millis", rename = "slow-call-duration-ms")]
    pub slow_call_duration: Duration,
    /// Calls the window must hold before the rates count.
    pub minimum_calls: u32,
    #[serde(with = "millis", rename = "wait-in-open-ms")]
    pub wait_in_open: Duration,
    /// Probe calls let through in `HalfOpen`.
    pub permitted_calls_in_half_open: u32,
    /// Start disabled (always closed, nothing recorded).
    pub disabled: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            sliding_window: SlidingWindow::CountBased { size: 20 },
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 80.0,
            slow_call_duration: Duration::from_secs(10),
            minimum_calls: 10,
            wait_in_open: Duration::from_secs(30),
            permitted_calls_in_half_open: 3,
            disabled: false,
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// A refused call, with how long until the breaker may let calls through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPermitted {
    pub state: State,
    pub retry_after: Duration,
}

/// Permission for one call. Record its outcome with [`Permit::success`],
/// [`Permit::failure`] or [`Permit::ignore`]; dropping it unrecorded counts
/// as ignored (e.g. a call cancelled by an outer timeout).
#[must_use = "record the call's outcome"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    recorded: bool,
}

impl Permit<'_> {
    /// The call succeeded; `duration` decides whether it was slow.
    pub fn success(mut self, duration: Duration) {
        self.recorded = true;
        self.breaker.record(
            self.generation,
            Outcome::Done {
                failed: false,
                duration,
            },
        );
    }

    /// The call failed in a way that counts against the upstream.
    pub fn failure(mut self, duration: Duration) {
        self.recorded = true;
        self.breaker.record(
            self.generation,
            Outcome::Done {
                failed: true,
                duration,
            },
        );
    }

    /// The call's outcome says nothing about the upstream's health (e.g. a
    /// rate limit or a bad request); in `HalfOpen` its probe slot is returned.
    pub fn ignore(mut self) {
        self.recorded = true;
        self.breaker.record(self.generation, Outcome::Ignored);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(self.generation, Outcome::Ignored);
        }
    }
}

enum Outcome {
    Done { failed: bool, duration: Duration },
    Ignored,
}

/// What the breaker looks like now, for health endpoints and logs.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub name: String,
    pub state: State,
    /// `None` until the window holds `minimum_calls`.
    pub failure_rate: Option<f64>,
    pub slow_call_rate: Option<f64>,
    pub buffered_calls: u32,
    pub failed_calls: u32,
    pub slow_calls: u32,
    pub not_permitted_calls: u64,
    pub state_transitions: u64,
    /// Milliseconds until an open breaker lets probe calls through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    total: u32,
    failed: u32,
    slow: u32,
}

impl Counts {
    fn add(&mut self, failed: bool, slow: bool) {
        self.total += 1;
        self.failed += failed as u32;
        self.slow += slow as u32;
    }

    fn sub(&mut self, other: Counts) {
        self.total -= other.total;
        self.failed -= other.failed;
        self.slow -= other.slow;
    }
}

/// The sliding window of call outcomes.
#[derive(Debug)]
enum Window {
    Count {
        size: usize,
        calls: VecDeque<(bool, bool)>,
        totals: Counts,
    },
    Time {
        seconds: u64,
        origin: Instant,
        buckets: VecDeque<(u64, Counts)>,
        totals: Counts,
    },
}

impl Window {
    fn new(kind: SlidingWindow, origin: Instant) -> Self {
        match kind {
            SlidingWindow::CountBased { size } => Window::Count {
                size: size.max(1) as usize,
                calls: VecDeque::new(),
                totals: Counts::default(),
            },
            SlidingWindow::TimeBased { seconds } => Window::Time {
                seconds: seconds.max(1) as u64,
                origin,
                buckets: VecDeque::new(),
                totals: Counts::default(),
            },
        }
    }

    fn record(&mut self, failed: bool, slow: bool, now: Instant) {
        self.expire(now);
        match self {
            Window::Count {
                size,
                calls,
                totals,
            } => {
                if calls.len() == *size
                    && let Some((f, s)) = calls.pop_front()
                {
                    totals.sub(Counts {
                        total: 1,
                        failed: f as u32,
                        slow: s as u32,
                    });
                }
                calls.push_back((failed, slow));
                totals.add(failed, slow);
            }
            Window::Time {
                origin,
                buckets,
                totals,
                ..
            } => {
                let second = now.duration_since(*origin).as_secs();
                match buckets.back_mut() {
                    Some((s, counts)) if *s == second => counts.add(failed, slow),
                    _ => {
                        let mut counts = Counts::default();
                        counts.add(failed, slow);
                        buckets.push_back((second, counts));
                    }
                }
                totals.add(failed, slow);
            }
        }
    }

    /// Drops the buckets that fell out of a time-based window.
    fn expire(&mut self, now: Instant) {
        if let Window::Time {
            seconds,
            origin,
            buckets,
            totals,
        } = self
        {
            let second = now.duration_since(*origin).as_secs();
            while let Some((s, counts)) = buckets.front() {
                if *s + *seconds <= second {
                    totals.sub(*counts);
                    buckets.pop_front();
                } else {
                    break;
                }
            }
        }
    }

    fn totals(&mut self, now: Instant) -> Counts {
        self.expire(now);
        match self {
            Window::Count { totals, .. } | Window::Time { totals, .. } => *totals,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Bumped at every transition: outcomes of calls permitted in an earlier
    /// state are not recorded into the new state's window.
    generation: u64,
    window: Window,
    opened_at: Instant,
    /// Probe slots left in `HalfOpen`.
    half_open_permits: u32,
    /// Outcomes of the probes in `HalfOpen`.
    half_open: Counts,
}

/// One circuit breaker (one per upstream).
#[derive(Debug)]
pub struct CircuitBreaker {
    name: String,
    config: BreakerConfig,
    /// Mirror of `inner.state` for the lock-free fast path in `Closed`.
    state: AtomicU8,
    /// Mirror of `inner.generation`, for the same fast path.
    generation: AtomicU64,
    inner: Mutex<Inner>,
    not_permitted: AtomicU64,
    transitions: AtomicU64,
}

impl CircuitBreaker {
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        let now = Instant::now();
        let state = if config.disabled {
            State::Disabled
        } else {
            State::Closed
        };
        Self {
            name: name.into(),
            state: AtomicU8::new(state.as_u8()),
            generation: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                state,
                generation: 0,
                window: Window::new(config.sliding_window, now),
                opened_at: now,
                half_open_permits: 0,
                half_open: Counts::default(),
            }),
            config,
            not_permitted: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Asks to make a call. Refused at once while open (with the remaining
    /// wait) or when no probe slot is left in half-open.
    pub fn try_acquire(&self) -> Result<Permit<'_>, NotPermitted> {
        // Fast path without the lock: closed and disabled breakers admit
        // everyone. A transition racing with this read at worst lets one
        // call through whose outcome is then dropped (its generation is old).
        if matches!(self.state(), State::Closed | State::Disabled) {
            return Ok(Permit {
                breaker: self,
                generation: self.generation.load(Ordering::Acquire),
                recorded: false,
            });
        }
        let mut inner = self.inner.lock().unwrap();
        let now = Instant::now();
        match inner.state {
            State::Closed | State::Disabled => {}
            State::Open => {
                let elapsed = now.duration_since(inner.opened_at);
                if elapsed < self.config.wait_in_open {
                    return Err(self.refuse(State::Open, self.config.wait_in_open - elapsed));
                }
                self.transition(&mut inner, State::HalfOpen, now);
                self.take_probe(&mut inner)?;
            }
            State::HalfOpen => self.take_probe(&mut inner)?,
            State::ForcedOpen => {
                return Err(self.refuse(State::ForcedOpen, self.config.wait_in_open));
            }
        }
        Ok(Permit {
            breaker: self,
            generation: inner.generation,
            recorded: false,
        })
    }

    fn take_probe(&self, inner: &mut Inner) -> Result<(), NotPermitted> {
        if inner.half_open_permits == 0 {
            // The probes are out; their outcome decides soon.
            return Err(self.refuse(State::HalfOpen, Duration::from_millis(100)));
        }
        inner.half_open_permits -= 1;
        Ok(())
    }

    fn refuse(&self, state: State, retry_after: Duration) -> NotPermitted {
        self.not_permitted.fetch_add(1, Ordering::Relaxed);
        NotPermitted { state, retry_after }
    }

    fn record(&self, generation: u64, outcome: Outcome) {
        let mut inner = self.inner.lock().unwrap();
        if inner.generation != generation {
            return;
        }
        let now = Instant::now();
        match (inner.state, outcome) {
            (State::Closed, Outcome::Done { failed, duration }) => {
                let slow = duration >= self.config.slow_call_duration;
                inner.window.record(failed, slow, now);
                let totals = inner.window.totals(now);
                if self.exceeds_thresholds(totals, self.config.minimum_calls) {
                    self.transition(&mut inner, State::Open, now);
                }
            }
            (State::HalfOpen, Outcome::Done { failed, duration }) => {
                let slow = duration >= self.config.slow_call_duration;
                inner.half_open.add(failed, slow);
                let probes = self.config.permitted_calls_in_half_open.max(1);
                if inner.half_open.total >= probes {
                    let next = if self.exceeds_thresholds(inner.half_open, probes) {
                        State::Open
                    } else {
                        State::Closed
                    };
                    self.transition(&mut inner, next, now);
                }
            }
            (State::HalfOpen, Outcome::Ignored) => inner.half_open_permits += 1,
            _ => {}
        }
    }

    fn exceeds_thresholds(&self, counts: Counts, minimum: u32) -> bool {
        if counts.total == 0 || counts.total < minimum {
            return false;
        }
        let total = counts.total as f64;
        counts.failed as f64 * 100.0 / total >= self.config.failure_rate_threshold
            || counts.slow as f64 * 100.0 / total >= self.config.slow_call_rate_threshold
    }

    fn transition(&self, inner: &mut Inner, to: State, now: Instant) {
        let from = inner.state;
        if from == to {
            return;
        }
        inner.state = to;
        inner.generation += 1;
        inner.window = Window::new(self.config.sliding_window, now);
        inner.half_open = Counts::default();
        inner.half_open_permits = if to == State::HalfOpen {
            self.config.permitted_calls_in_half_open.max(1)
        } else {
            0
        };
        if to == State::Open {
            inner.opened_at = now;
        }
        self.generation.store(inner.generation, Ordering::Release);
        self.state.store(to.as_u8(), Ordering::Release);
        self.transitions.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(breaker = %self.name, from = ?from, to = ?to, "circuit breaker state change");
    }

    /// Forces the breaker open (isolates the upstream) until [`Self::reset`].
    pub fn isolate(&self) {
        let mut inner = self.inner.lock().unwrap();
        self.transition(&mut inner, State::ForcedOpen, Instant::now());
    }

    /// Back to `Closed` with an empty window (or `Disabled` if configured so).
    pub fn reset(&self) {
        let mut inner = self.inner.lock().unwrap();
        let to = if self.config.disabled {
            State::Disabled
        } else {
            State::Closed
        };
        let now = Instant::now();
        if inner.state == to {
            inner.window = Window::new(self.config.sliding_window, now);
            inner.generation += 1;
            self.generation.store(inner.generation, Ordering::Release);
        } else {
            self.transition(&mut inner, to, now);
        }
    }

    /// Stops the breaker from refusing or recording anything.
    pub fn disable(&self) {
        let mut inner = self.inner.lock().unwrap();
        self.transition(&mut inner, State::Disabled, Instant::now());
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut inner = self.inner.lock().unwrap();
        let now = Instant::now();
        let counts = match inner.state {
            State::HalfOpen => inner.half_open,
            _ => inner.window.totals(now),
        };
        let minimum = match inner.state {
            State::HalfOpen => 1,
            _ => self.config.minimum_calls.max(1),
        };
        let rate =
            |n: u32| (counts.total >= minimum).then(|| n as f64 * 100.0 / counts.total as f64);
        let retry_after_ms = match inner.state {
            State::Open => Some(
                self.config
                    .wait_in_open
                    .saturating_sub(now.duration_since(inner.opened_at))
                    .as_millis() as u64,
            ),
            _ => None,
        };
        Snapshot {
            name: self.name.clone(),
            state: inner.state,
            failure_rate: rate(counts.failed),
            slow_call_rate: rate(counts.slow),
            buffered_calls: counts.total,
            failed_calls: counts.failed,
            slow_calls: counts.slow,
            not_permitted_calls: self.not_permitted.load(Ordering::Relaxed),
            state_transitions: self.transitions.load(Ordering::Relaxed),
            retry_after_ms,
        }
    }
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
