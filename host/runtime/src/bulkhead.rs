//! The per-plugin bulkhead: at most `max_concurrent` runs execute, at most
//! `max_queued` wait (each no longer than `max_queue_wait`), and anything
//! beyond is turned away at once, so a saturated plugin answers "busy"
//! quickly instead of slowing every other plugin down.
//!
//! A bulkhead belongs to a plugin id, not to a version: every version of a
//! plugin shares it, so a hot swap never doubles or loses the limits, and a
//! new version's budget resizes it in place ([`Bulkhead::configure`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a run was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Every slot was taken and the queue was full.
    QueueFull,
    /// The run waited in the queue for `max_queue_wait` without getting a slot.
    QueueTimeout,
}

/// A bulkhead's refusal, with the hint given to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub reason: Rejection,
    /// When a retry has a fair chance.
    pub retry_after: Duration,
}

/// Concurrency limit plus a bounded, time-limited queue.
#[derive(Debug)]
pub struct Bulkhead {
    slots: Arc<Semaphore>,
    max_concurrent: AtomicUsize,
    max_queued: AtomicUsize,
    max_wait_ms: AtomicU64,
    queued: AtomicUsize,
    /// Serialises resizes, so concurrent ones cannot miscount permits.
    resize: std::sync::Mutex<()>,
}

/// A held slot; the slot is freed when this is dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// Keeps the queue count right even when the waiting future is dropped.
struct QueuedGuard<'a>(&'a AtomicUsize);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bulkhead {
    pub fn new(max_concurrent: usize, max_queued: usize, max_wait: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent: AtomicUsize::new(max_concurrent),
            max_queued: AtomicUsize::new(max_queued),
            max_wait_ms: AtomicU64::new(max_wait.as_millis() as u64),
            queued: AtomicUsize::new(0),
            resize: std::sync::Mutex::new(()),
        }
    }

    /// Applies a (new version's) budget to the shared bulkhead: more slots
    /// are free at once; fewer are taken back as runs finish (a background
    /// task holds the surplus permits and forgets them), so the limit is
    /// never exceeded by the runs of both versions together.
    pub fn configure(&self, max_concurrent: usize, max_queued: usize, max_wait: Duration) {
        let _guard = self.resize.lock().unwrap();
        self.max_queued.store(max_queued, Ordering::Release);
        self.max_wait_ms
            .store(max_wait.as_millis() as u64, Ordering::Release);
        let old = self.max_concurrent.swap(max_concurrent, Ordering::AcqRel);
        if max_concurrent > old {
            self.slots.add_permits(max_concurrent - old);
        } else if max_concurrent < old {
            let surplus = (old - max_concurrent) as u32;
            let slots = self.slots.clone();
            let take_back = async move {
                if let Ok(permits) = slots.acquire_many_owned(surplus).await {
                    permits.forget();
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(take_back);
                }
                Err(_) => {
                    if let Ok(permits) = self.slots.clone().try_acquire_many_owned(surplus) {
                        permits.forget();
                    }
                }
            }
        }
    }

    fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms.load(Ordering::Acquire))
    }

    /// Takes a slot: immediately when one is free, after waiting in the queue
    /// when there is room in it, otherwise not at all.
    pub async fn acquire(&self) -> Result<Slot, Busy> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot { _permit: permit });
        }
        let entered = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queued.load(Ordering::Acquire)).then_some(q + 1)
            })
            .is_ok();
        if !entered {
            return Err(self.busy(Rejection::QueueFull));
        }
        let _queued = QueuedGuard(&self.queued);
        match tokio::time::timeout(self.max_wait(), self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot { _permit: permit }),
            // The semaphore is never closed; treat it like a timeout anyway.
            Ok(Err(_)) | Err(_) => Err(self.busy(Rejection::QueueTimeout)),
        }
    }

    fn busy(&self, reason: Rejection) -> Busy {
        Busy {
            reason,
            retry_after: self.max_wait().max(Duration::from_millis(50)),
        }
    }

    /// Runs executing now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrent
            .load(Ordering::Acquire)
            .saturating_sub(self.slots.available_permits())
    }

    /// The current concurrency limit.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent.load(Ordering::Acquire)
    }

    /// Runs waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_with_no_queue_rejects_at_once() {
        let b = Bulkhead::new(2, 0, Duration::from_secs(10));
        let _a = b.acquire().await.unwrap();
        let _c = b.acquire().await.unwrap();
        assert_eq!(b.in_flight(), 2);
        let busy = b.acquire().await.unwrap_err();
        assert_eq!(busy.reason, Rejection::QueueFull);
    }

    #[tokio::test(start_paused = true)]
    async fn queued_run_gets_the_freed_slot() {
        let b = Arc::new(Bulkhead::new(1, 1, Duration::from_secs(5)));
        let first = b.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await.map(|_| ()) }
        });
        while b.queued() == 0 {
            tokio::task::yield_now().await;
        }
        // The queue (size 1) is full now.
        assert_eq!(b.acquire().await.unwrap_err().reason, Rejection::QueueFull);
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(b.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn queued_run_gives_up_after_max_wait() {
        let b = Bulkhead::new(1, 4, Duration::from_millis(100));
        let _held = b.acquire().await.unwrap();
        let busy = b.acquire().await.unwrap_err();
        assert_eq!(busy.reason, Rejection::QueueTimeout);
        assert_eq!(b.queued(), 0, "the queue count is restored after a timeout");
    }

    #[tokio::test]
    async fn dropped_waiter_leaves_the_queue() {
        let b = Bulkhead::new(1, 1, Duration::from_secs(60));
        let _held = b.acquire().await.unwrap();
        {
            let wait = b.acquire();
            tokio::pin!(wait);
            assert!(futures_poll_once(wait.as_mut()).await.is_none());
            assert_eq!(b.queued(), 1);
        }
        assert_eq!(b.queued(), 0);
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(20), f)
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_resize_grows_at_once_and_shrinks_as_runs_finish() {
        let b = Bulkhead::new(1, 0, Duration::from_secs(10));
        let first = b.acquire().await.unwrap();
        assert!(b.acquire().await.is_err());
        b.configure(3, 0, Duration::from_secs(10));
        let second = b.acquire().await.unwrap();
        let third = b.acquire().await.unwrap();
        assert_eq!(b.in_flight(), 3);
        b.configure(1, 0, Duration::from_secs(10));
        drop(first);
        drop(second);
        tokio::task::yield_now().await;
        assert!(
            b.acquire().await.is_err(),
            "two finished runs paid back the surplus: still one in flight, limit one"
        );
        drop(third);
        tokio::task::yield_now().await;
        let _again = b.acquire().await.unwrap();
        assert_eq!(b.max_concurrent(), 1);
    }
}
