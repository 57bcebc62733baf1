//! Behaviours of the circuit breaker, each test named after what it proves.
//! Time is tokio's paused clock unless a test needs real threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;

const FAST: Duration = Duration::from_millis(5);
const SLOW: Duration = Duration::from_secs(20);

fn config() -> BreakerConfig {
    BreakerConfig {
        sliding_window: SlidingWindow::CountBased { size: 10 },
        failure_rate_threshold: 50.0,
        slow_call_rate_threshold: 60.0,
        slow_call_duration: Duration::from_secs(10),
        minimum_calls: 6,
        wait_in_open: Duration::from_secs(30),
        permitted_calls_in_half_open: 3,
        disabled: false,
    }
}

fn fail(b: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        b.try_acquire().expect("permitted").failure(FAST);
    }
}

fn succeed(b: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        b.try_acquire().expect("permitted").success(FAST);
    }
}

fn open_breaker() -> CircuitBreaker {
    let b = CircuitBreaker::new("test", config());
    fail(&b, 6);
    assert_eq!(b.state(), State::Open);
    b
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_failure_rate_threshold_only_after_the_minimum_calls() {
    let b = CircuitBreaker::new("test", config());
    // 5 failures out of 5 is a 100% failure rate, but below the minimum of 6.
    fail(&b, 5);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().failure_rate, None);
    // The 6th call reaches the minimum: 5 failed of 6 = 83% >= 50%.
    succeed(&b, 1);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_failure_rate_threshold() {
    let b = CircuitBreaker::new("test", config());
    for _ in 0..4 {
        succeed(&b, 2);
        fail(&b, 1);
    }
    // 4 failed of 12 calls, window of the last 10: at most 4/10 = 40% < 50%.
    assert_eq!(b.state(), State::Closed);
    let s = b.snapshot();
    assert_eq!(s.buffered_calls, 10);
    assert!(s.failure_rate.unwrap() < 50.0);
}

#[tokio::test(start_paused = true)]
async fn opens_on_slow_calls() {
    let b = CircuitBreaker::new("test", config());
    for _ in 0..6 {
        b.try_acquire().unwrap().success(SLOW);
    }
    assert_eq!(
        b.state(),
        State::Open,
        "6 of 6 successful but slow calls: 100% >= 60%"
    );
    let s = b.snapshot();
    assert_eq!(s.failed_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn rejects_while_open_with_a_retry_hint() {
    let b = open_breaker();
    let refused = b.try_acquire().err().expect("refused while open");
    assert_eq!(refused.state, State::Open);
    assert_eq!(refused.retry_after, Duration::from_secs(30));
    tokio::time::advance(Duration::from_secs(10)).await;
    let refused = b.try_acquire().err().unwrap();
    assert_eq!(
        refused.retry_after,
        Duration::from_secs(20),
        "the hint is the remaining wait"
    );
    assert_eq!(b.snapshot().not_permitted_calls, 2);
    assert_eq!(b.snapshot().retry_after_ms, Some(20_000));
}

#[tokio::test(start_paused = true)]
async fn moves_to_half_open_after_the_wait() {
    let b = open_breaker();
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(b.try_acquire().is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    let probe = b
        .try_acquire()
        .expect("a probe is let through after the wait");
    assert_eq!(b.state(), State::HalfOpen);
    probe.success(FAST);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_the_permitted_number_of_probes() {
    let b = open_breaker();
    tokio::time::advance(Duration::from_secs(30)).await;
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire().expect("probe")).collect();
    let refused = b.try_acquire().err().expect("a 4th caller is refused");
    assert_eq!(refused.state, State::HalfOpen);
    drop(probes);
}

#[test]
fn with_1000_concurrent_callers_in_half_open_exactly_the_permitted_number_are_admitted() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let b = Arc::new(CircuitBreaker::new(
            "test",
            BreakerConfig {
                wait_in_open: Duration::from_millis(20),
                ..config()
            },
        ));
        fail(&b, 6);
        assert_eq!(b.state(), State::Open);
        tokio::time::sleep(Duration::from_millis(40)).await;

        let callers = 1000;
        let start = Arc::new(tokio::sync::Barrier::new(callers));
        let done = Arc::new(tokio::sync::Barrier::new(callers));
        let admitted = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let (b, start, done, admitted) =
                    (b.clone(), start.clone(), done.clone(), admitted.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    let permit = b.try_acquire().ok();
                    if permit.is_some() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                    // Hold the probe until every caller has tried.
                    done.wait().await;
                    if let Some(p) = permit {
                        p.success(FAST);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(admitted.load(Ordering::SeqCst), 3);
        assert_eq!(b.state(), State::Closed, "the 3 probes succeeded");
    });
}

#[tokio::test(start_paused = true)]
async fn closes_when_the_probes_succeed() {
    let b = open_breaker();
    tokio::time::advance(Duration::from_secs(30)).await;
    succeed(&b, 2);
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "decided only when all probes are back"
    );
    succeed(&b, 1);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        b.snapshot().buffered_calls,
        0,
        "closed starts with an empty window"
    );
}

#[tokio::test(start_paused = true)]
async fn reopens_when_the_probes_fail() {
    let b = open_breaker();
    tokio::time::advance(Duration::from_secs(30)).await;
    succeed(&b, 1);
    fail(&b, 2);
    assert_eq!(b.state(), State::Open, "2 of 3 probes failed: 67% >= 50%");
    let refused = b.try_acquire().err().unwrap();
    assert_eq!(
        refused.retry_after,
        Duration::from_secs(30),
        "a fresh wait starts"
    );
}

#[tokio::test(start_paused = true)]
async fn ignored_calls_do_not_count_and_return_their_probe_slot() {
    let b = CircuitBreaker::new("test", config());
    for _ in 0..20 {
        b.try_acquire().unwrap().ignore();
    }
    assert_eq!(b.snapshot().buffered_calls, 0);

    let b = open_breaker();
    tokio::time::advance(Duration::from_secs(30)).await;
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    assert!(b.try_acquire().is_err());
    let mut probes = probes.into_iter();
    probes.next().unwrap().ignore();
    // A dropped (cancelled) probe is ignored too.
    drop(probes.next());
    let again: Vec<_> = (0..2)
        .map(|_| b.try_acquire().expect("slots returned"))
        .collect();
    assert!(b.try_acquire().is_err());
    for p in again.into_iter().chain(probes) {
        p.success(FAST);
    }
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn isolate_refuses_everything_until_reset() {
    let b = CircuitBreaker::new("test", config());
    b.isolate();
    assert_eq!(b.state(), State::ForcedOpen);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(
        b.try_acquire().err().unwrap().state,
        State::ForcedOpen,
        "no wait ends an isolation"
    );
    b.reset();
    assert_eq!(b.state(), State::Closed);
    succeed(&b, 1);
}

#[tokio::test(start_paused = true)]
async fn reset_closes_an_open_breaker_with_a_clean_window() {
    let b = open_breaker();
    b.reset();
    assert_eq!(b.state(), State::Closed);
    fail(&b, 5);
    assert_eq!(b.state(), State::Closed, "old failures were forgotten");
}

#[tokio::test(start_paused = true)]
async fn disabled_breaker_never_refuses_nor_records() {
    let b = CircuitBreaker::new(
        "test",
        BreakerConfig {
            disabled: true,
            ..config()
        },
    );
    fail(&b, 100);
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(b.snapshot().buffered_calls, 0);
    let b = CircuitBreaker::new("test", config());
    b.disable();
    fail(&b, 100);
    assert_eq!(b.state(), State::Disabled);
}

#[tokio::test(start_paused = true)]
async fn time_based_window_forgets_failures_older_than_the_window() {
    let b = CircuitBreaker::new(
        "test",
        BreakerConfig {
            sliding_window: SlidingWindow::TimeBased { seconds: 10 },
            ..config()
        },
    );
    fail(&b, 5);
    tokio::time::advance(Duration::from_secs(11)).await;
    succeed(&b, 1);
    assert_eq!(b.state(), State::Closed, "the 5 failures left the window");
    assert_eq!(b.snapshot().buffered_calls, 1);
    fail(&b, 5);
    assert_eq!(b.state(), State::Open, "5 failed of 6 within 10 s");
}

#[tokio::test(start_paused = true)]
async fn outcomes_of_calls_permitted_before_a_transition_are_not_counted() {
    let b = CircuitBreaker::new("test", config());
    let straggler = b.try_acquire().unwrap();
    fail(&b, 6);
    assert_eq!(b.state(), State::Open);
    tokio::time::advance(Duration::from_secs(30)).await;
    let probe = b.try_acquire().unwrap();
    assert_eq!(b.state(), State::HalfOpen);
    // The straggler from the closed state fails late: it must not count as a probe.
    straggler.failure(FAST);
    assert_eq!(b.snapshot().buffered_calls, 0);
    probe.success(FAST);
    succeed(&b, 2);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn transitions_are_counted() {
    let b = open_breaker();
    tokio::time::advance(Duration::from_secs(30)).await;
    succeed(&b, 3);
    assert_eq!(
        b.snapshot().state_transitions,
        3,
        "closed→open→half-open→closed"
    );
}
