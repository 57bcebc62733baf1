//! The guest pool: the threads where plugin code runs.
//!
//! A plugin spinning inside its budget used to run on the same tokio
//! workers as the HTTP server and the I/O reactor: two spinning runs on a
//! 2-core machine kept both workers busy, and the reactor was polled only
//! between their slices (a healthy plugin's p99 went from ~6 ms to
//! ~580 ms). Guest code now runs on a runtime of its own, one thread per
//! core by default, under the fair CPU turns of [`crate::cpu_share`]; the
//! caller's runtime (axum, the database, the reports) only waits for the
//! result. The OS shares the cores between the two pools, so the server
//! keeps accepting and answering however busy the guests are.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

use crate::cpu_share::CpuScheduler;

/// The guest runtime and the CPU turns of its threads.
pub struct GuestPool {
    runtime: Option<Runtime>,
    handle: Handle,
    scheduler: Arc<CpuScheduler>,
}

impl GuestPool {
    /// A pool of `threads` threads (0: one per available core).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("bsm-guest")
            // Guest polls are short (two epoch ticks at most); look at I/O
            // (LLM answers) and timers more often than tokio's default.
            .event_interval(8)
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            scheduler: CpuScheduler::new(threads),
        })
    }

    /// The CPU turns runs take here.
    pub fn scheduler(&self) -> &Arc<CpuScheduler> {
        &self.scheduler
    }

    /// Runs `task` on the caller's thread until `moved` is set (the run has
    /// computed for a whole epoch tick: guest code yields there), then moves
    /// the rest of it to the pool. Most runs are short or wait on the host
    /// (an LLM answer): they finish where they started, without the two
    /// thread hand-offs a spawn costs (~35 us a run, measured). A run
    /// computing for long takes at most two ticks of the caller's thread.
    pub async fn run_from_here<T: Send + 'static>(
        &self,
        task: impl Future<Output = T> + Send + 'static,
        moved: Arc<AtomicBool>,
    ) -> Result<T, String> {
        let mut task = Box::pin(task);
        let here = std::future::poll_fn(|cx| match task.as_mut().poll(cx) {
            Poll::Ready(value) => Poll::Ready(Some(value)),
            Poll::Pending if moved.load(Ordering::Relaxed) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        match here {
            Some(value) => Ok(value),
            None => self.run(task).await,
        }
    }

    /// Runs `task` on the pool; dropping the returned future cancels it
    /// (a caller that goes away does not leave its run behind).
    pub async fn run<T: Send + 'static>(
        &self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, String> {
        let handle = CancelOnDrop(self.handle.spawn(task));
        handle.await
    }
}

impl Drop for GuestPool {
    fn drop(&mut self) {
        // May be dropped inside an async context (tests, shutdown): never block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A spawned task that is aborted when its waiter is dropped.
struct CancelOnDrop<T>(JoinHandle<T>);

impl<T> Future for CancelOnDrop<T> {
    type Output = Result<T, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| {
            r.map_err(|e| match e.try_into_panic() {
                Ok(panic) => format!(
                    "the host panicked running the plugin: {}",
                    panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default()
                ),
                Err(_) => "the run was cancelled".to_string(),
            })
        })
    }
}

impl<T> Drop for CancelOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_on_its_own_threads() {
        let pool = GuestPool::new(1).unwrap();
        let name = pool
            .run(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("bsm-guest"));
    }

    #[tokio::test]
    async fn a_run_moves_to_the_pool_only_once_flagged() {
        let pool = GuestPool::new(1).unwrap();
        let moved = Arc::new(AtomicBool::new(false));
        let short = pool
            .run_from_here(
                async { std::thread::current().name().map(str::to_string) },
                moved.clone(),
            )
            .await
            .unwrap();
        assert_ne!(
            short.as_deref(),
            Some("bsm-guest"),
            "a short run stays here"
        );
        let flag = moved.clone();
        let long = pool
            .run_from_here(
                async move {
                    // Computes for a tick: flagged, yields, resumes elsewhere.
                    flag.store(true, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    std::thread::current().name().map(str::to_string)
                },
                moved,
            )
            .await
            .unwrap();
        assert_eq!(long.as_deref(), Some("bsm-guest"), "a long run moved");
    }

    #[tokio::test]
    async fn a_dropped_waiter_cancels_the_run() {
        let pool = GuestPool::new(1).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = pool.run(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(tx);
        });
        let _ = tokio::time::timeout(Duration::from_millis(20), run).await;
        // The task was aborted: its sender is dropped without waiting 60 s.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_panic_is_reported_not_propagated() {
        let pool = GuestPool::new(1).unwrap();
        let e = pool
            .run(async {
                if true {
                    panic!("boom")
                }
            })
            .await
            .unwrap_err();
        assert!(e.contains("boom"), "{e}");
    }
}
