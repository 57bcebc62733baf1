//! The per-plugin bulkhead: at most `max_concurrent` runs execute, at most
//! `max_queued` wait (each no longer than `max_queue_wait`), and anything
//! beyond is turned away at once, so a saturated plugin answers "busy"
//! quickly instead of slowing every other plugin down.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    max_concurrent: usize,
    max_queued: usize,
    max_wait: Duration,
    queued: AtomicUsize,
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
            max_concurrent,
            max_queued,
            max_wait,
            queued: AtomicUsize::new(0),
        }
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
                (q < self.max_queued).then_some(q + 1)
            })
            .is_ok();
        if !entered {
            return Err(self.busy(Rejection::QueueFull));
        }
        let _queued = QueuedGuard(&self.queued);
        match tokio::time::timeout(self.max_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot { _permit: permit }),
            // The semaphore is never closed; treat it like a timeout anyway.
            Ok(Err(_)) | Err(_) => Err(self.busy(Rejection::QueueTimeout)),
        }
    }

    fn busy(&self, reason: Rejection) -> Busy {
        Busy {
            reason,
            retry_after: self.max_wait.max(Duration::from_millis(50)),
        }
    }

    /// Runs executing now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
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
}
