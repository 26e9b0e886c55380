//! The timers of one client connection — `header_read_timeout`, `idle_timeout` and the drain
//! signal — watched from a task of their own.
//!
//! A connection's task is woken for every read and write of every request. Had it also polled
//! the connection's sleeps and the shutdown token on each wake-up, that alone would cost some
//! 500 instructions a request (docs/performance.md). The watchdog task only wakes when one of
//! them is due, and tells the connection through a [`Verdict`] that costs an atomic load to poll.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::conn::Activity;

/// What the connection must do, in increasing severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verdict {
    /// Finish the requests in flight and close (idle, or the node is draining).
    Drain = 1,
    /// Close at once: the client owes a request head past `header_read_timeout`.
    Close = 2,
}

#[derive(Default)]
struct Signal {
    level: AtomicU8,
    waker: AtomicWaker,
}

impl Signal {
    fn raise(&self, verdict: Verdict) {
        self.level.fetch_max(verdict as u8, Ordering::AcqRel);
        self.waker.wake();
    }

    fn level(&self) -> u8 {
        self.level.load(Ordering::Acquire)
    }
}

/// The connection's side of its watchdog; dropping it stops the watchdog.
pub(crate) struct Watchdog {
    signal: Arc<Signal>,
    seen: u8,
    task: JoinHandle<()>,
}

impl Watchdog {
    /// Starts watching `activity` on the current runtime.
    pub(crate) fn start(
        activity: Arc<Activity>,
        header_read_timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
        shutdown: CancellationToken,
    ) -> Self {
        let signal = Arc::new(Signal::default());
        let task = tokio::spawn(watch(
            activity,
            header_read_timeout,
            idle_timeout,
            shutdown,
            signal.clone(),
        ));
        Self {
            signal,
            seen: 0,
            task,
        }
    }

    /// The next verdict more severe than the last one returned.
    pub(crate) async fn next(&mut self) -> Verdict {
        std::future::poll_fn(|cx| {
            let mut level = self.signal.level();
            if level <= self.seen {
                self.signal.waker.register(cx.waker());
                level = self.signal.level();
                if level <= self.seen {
                    return Poll::Pending;
                }
            }
            self.seen = level;
            Poll::Ready(if level >= Verdict::Close as u8 {
                Verdict::Close
            } else {
                Verdict::Drain
            })
        })
        .await
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch(
    activity: Arc<Activity>,
    header_read_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    shutdown: CancellationToken,
    signal: Arc<Signal>,
) {
    let head_overdue = async {
        match header_read_timeout {
            Some(t) => activity.head_overdue(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(head_overdue);
    let idle = async {
        match idle_timeout {
            Some(t) => activity.idle_for(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(idle);
    let mut draining = false;
    loop {
        tokio::select! {
            () = &mut head_overdue => {
                signal.raise(Verdict::Close);
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                signal.raise(Verdict::Drain);
            }
            () = &mut idle, if !draining => {
                draining = true;
                signal.raise(Verdict::Drain);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Version;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn drain_then_close_each_reported_once() {
        let activity = Activity::new();
        let shutdown = CancellationToken::new();
        let mut dog = Watchdog::start(
            activity,
            Some(Duration::from_secs(2)),
            None,
            shutdown.clone(),
        );
        shutdown.cancel();
        assert_eq!(dog.next().await, Verdict::Drain);
        let started = Instant::now();
        assert_eq!(dog.next().await, Verdict::Close);
        assert!(started.elapsed() <= Duration::from_secs(2));
        let again = tokio::time::timeout(Duration::from_secs(60), dog.next()).await;
        assert!(again.is_err(), "a verdict was reported twice");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_drained_after_idle_timeout() {
        let activity = Activity::new();
        drop(activity.start(Version::HTTP_2));
        let started = Instant::now();
        let mut dog = Watchdog::start(
            activity,
            Some(Duration::from_secs(1)),
            Some(Duration::from_secs(5)),
            CancellationToken::new(),
        );
        assert_eq!(dog.next().await, Verdict::Drain);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
