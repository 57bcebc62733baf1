//! Log lines that cannot flood the disk. During an outage every call fails
//! the same way (thousands per second once the breaker refuses them): the
//! first is logged, then at most one line per interval says how many were
//! suppressed in between. The metrics keep the exact counts.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How often a throttled line may be written by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// One throttled kind of log line (e.g. "provider X refused a call").
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_written: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether this occurrence may be logged now. `Some(n)`: write the line,
    /// mentioning the `n` occurrences suppressed since the last one;
    /// `None`: count it and stay quiet.
    pub fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        let due = state
            .last_written
            .is_none_or(|last| now.duration_since(last) >= self.interval);
        if due {
            state.last_written = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }

    /// Starts afresh (e.g. when the condition ends), so the next occurrence
    /// is logged at once.
    pub fn reset(&self) {
        *self.state.lock().unwrap() = State::default();
    }
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new(DEFAULT_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_is_written_then_one_line_per_interval_with_the_count() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(throttle.admit(), Some(0));
        for _ in 0..999 {
            assert_eq!(throttle.admit(), None);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(throttle.admit(), Some(999), "the suppressed count");
        assert_eq!(throttle.admit(), None);
        throttle.reset();
        assert_eq!(throttle.admit(), Some(0), "after a reset, at once");
    }
}
