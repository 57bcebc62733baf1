//! Outbound connections belong to the server's runtime, not the guest
//! pool's.
//!
//! A connection is registered with the reactor of the runtime that opens
//! it, and its connection task runs there for as long as the client's pool
//! keeps it. A run that moved to the guest pool (it had computed for a
//! slice, see [`crate::guest_pool`]) and then opened a connection to the
//! LLM left that connection to the pool's threads: every later answer on
//! it, for any run, woke a guest thread which then handed over to the
//! server's (at 0 ms LLM latency and 50 connections, 13% of the server's
//! samples were guest threads waking for that). Clients that may open a
//! connection send their requests from the runtime they were built on.

use std::future::Future;

use tokio::runtime::Handle;
use tokio_util::task::AbortOnDropHandle;

/// The runtime a client was built on: where its requests are sent from.
/// The default has none: requests are awaited where they are, and calls
/// apart run on the runtime that awaits them.
#[derive(Debug, Clone, Default)]
pub struct IoHome(Option<Handle>);

/// The home runtime is shutting down: the request was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HomeGone;

impl std::fmt::Display for HomeGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the host is shutting down")
    }
}

impl IoHome {
    /// The runtime this is called on; outside one, requests are sent from
    /// wherever they are awaited.
    pub fn current() -> Self {
        Self(Handle::try_current().ok())
    }

    /// Runs `request` on the home runtime: in place when already there (no
    /// hand-off), otherwise as a task there that is aborted if this future
    /// is dropped.
    pub async fn run<F>(&self, request: F) -> Result<F::Output, HomeGone>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let Some(home) = &self.0 else {
            return Ok(request.await);
        };
        if Handle::try_current().is_ok_and(|here| here.id() == home.id()) {
            return Ok(request.await);
        }
        spawned_on(home, request).await
    }

    /// Runs `call` to its end as a task of its own on the home runtime (the
    /// current one when there is no home), aborted if this future is
    /// dropped: whoever awaits this is woken once, when `call` is done,
    /// not at each of its steps.
    ///
    /// For host calls awaited on a guest's fiber: every time such a call is
    /// pending the fiber is switched out, and every wake-up switches it
    /// back in after a fresh CPU turn, through every future between the
    /// connection and the guest. A streamed LLM answer woke its run about
    /// ten times (BENCHMARKS.md, "The thirteenth pass"); as a task of its
    /// own it is polled by tokio alone and wakes the run once.
    pub async fn spawn_and_wait<F>(&self, call: F) -> Result<F::Output, HomeGone>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(home) => spawned_on(home, call).await,
            None => match Handle::try_current() {
                Ok(here) => spawned_on(&here, call).await,
                Err(_) => Ok(call.await),
            },
        }
    }
}

/// `task` spawned on `runtime` and awaited; aborted when the waiter is
/// dropped, its panic resumed in the waiter.
async fn spawned_on<F>(runtime: &Handle, task: F) -> Result<F::Output, HomeGone>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match AbortOnDropHandle::new(runtime.spawn(task)).await {
        Ok(output) => Ok(output),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(HomeGone),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime(name: &str) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap()
    }

    /// A server runtime, a guest runtime, and the server as home.
    fn server_and_guests() -> (tokio::runtime::Runtime, tokio::runtime::Runtime, IoHome) {
        let server = runtime("server");
        let home = server.block_on(async { IoHome::current() });
        (server, runtime("guests"), home)
    }

    #[test]
    fn a_request_from_another_runtime_is_sent_from_home() {
        let (server, guests, home) = server_and_guests();
        let (ran_on, awaited_on) = guests.block_on(async {
            let ran_on = home.run(async { Handle::current().id() }).await.unwrap();
            (ran_on, Handle::current().id())
        });
        assert_eq!(ran_on, server.handle().id(), "sent from home");
        assert_ne!(ran_on, awaited_on);
    }

    #[test]
    fn a_request_at_home_runs_in_place() {
        let server = runtime("server");
        server.block_on(async {
            let home = IoHome::current();
            let outer = std::thread::current().id();
            // In place: no task was spawned, the same thread ran it.
            let inner = home
                .run(async { std::thread::current().id() })
                .await
                .unwrap();
            assert_eq!(inner, outer);
        });
    }

    #[test]
    fn a_dropped_waiter_aborts_the_request_at_home() {
        let (_server, guests, home) = server_and_guests();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        guests.block_on(async {
            let request = home.run(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(tx);
            });
            let _ = tokio::time::timeout(Duration::from_millis(20), request).await;
        });
        // Aborted at home: its sender is dropped long before 60 s.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }

    /// A future's polls: how often whoever awaits it was woken.
    pub(crate) struct CountPolls<F> {
        pub(crate) inner: std::pin::Pin<Box<F>>,
        pub(crate) polls: usize,
    }

    impl<F: Future> Future for CountPolls<F> {
        type Output = F::Output;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            self.polls += 1;
            self.inner.as_mut().poll(cx)
        }
    }

    pub(crate) async fn steps(n: usize) -> usize {
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
        n
    }

    #[test]
    fn a_call_of_many_steps_apart_wakes_its_waiter_once() {
        let server = runtime("server");
        server.block_on(async {
            let home = IoHome::current();
            let mut in_place = CountPolls {
                inner: Box::pin(steps(50)),
                polls: 0,
            };
            assert_eq!((&mut in_place).await, 50);
            assert!(in_place.polls > 50, "in place: woken at every step");

            let mut apart = CountPolls {
                inner: Box::pin(home.spawn_and_wait(steps(50))),
                polls: 0,
            };
            assert_eq!((&mut apart).await, Ok(50));
            assert!(apart.polls <= 2, "apart: polled {} times", apart.polls);
        });
    }

    #[test]
    fn a_call_apart_runs_at_home_and_stops_with_its_waiter() {
        let (server, guests, home) = server_and_guests();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let ran_on = guests.block_on(async {
            let ran_on = home
                .spawn_and_wait(async { Handle::current().id() })
                .await
                .unwrap();
            let call = home.spawn_and_wait(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(tx);
            });
            let _ = tokio::time::timeout(Duration::from_millis(20), call).await;
            ran_on
        });
        assert_eq!(ran_on, server.handle().id(), "run at home");
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
            "aborted when its waiter was dropped"
        );
    }

    #[test]
    fn a_home_that_shut_down_says_so() {
        let server = runtime("server");
        let home = server.block_on(async { IoHome::current() });
        server.shutdown_background();
        let guests = runtime("guests");
        let result = guests.block_on(home.run(async { 1 }));
        assert_eq!(result, Err(HomeGone));
    }
}
