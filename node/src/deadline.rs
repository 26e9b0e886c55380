//! Coarse per-worker deadlines for timeouts that guard every request and almost never fire.
//!
//! A `tokio::time` sleep per request costs a registration with the runtime's timer wheel when
//! it is first polled and a removal when it is dropped: about 800 instructions for the upstream
//! response-head timeout alone (docs/performance.md). A [`Deadlines`] set belongs to one HTTP
//! worker; arming a deadline is a slot in a vector under an uncontended lock, and one sweeper
//! task per worker ticks every [`Deadlines::tick`] while deadlines exist, wakes the requests
//! whose deadline has passed, and parks once the set has stayed empty for a second.
//!
//! The guarantee is the same as a sleep's, only coarser: a deadline never fires before its
//! time, and fires at most one tick (plus scheduling) after it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;
use tokio::time::{Instant, MissedTickBehavior};

/// Ticks with nothing armed before the sweeper parks.
const PARK_AFTER_EMPTY_TICKS: u32 = 100;

/// The deadlines of one worker. Cloning shares the set.
#[derive(Clone)]
pub struct Deadlines {
    shared: Arc<Shared>,
}

struct Shared {
    tick: Duration,
    state: Mutex<State>,
}

struct State {
    slots: Slab<Slot>,
    sweeper: Sweeper,
}

enum Sweeper {
    NotStarted,
    Running,
    Parked(Waker),
}

struct Slot {
    due: Instant,
    fired: bool,
    waker: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every await-free step, so a panic elsewhere cannot
        // leave it half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Deadlines {
    pub fn new(tick: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                tick,
                state: Mutex::new(State {
                    slots: Slab::new(),
                    sweeper: Sweeper::NotStarted,
                }),
            }),
        }
    }

    /// How late a deadline may fire at most (scheduling aside).
    pub fn tick(&self) -> Duration {
        self.shared.tick
    }

    /// A deadline `timeout` from now. Must be called inside the worker's runtime: the first
    /// deadline starts the sweeper there.
    pub fn after(&self, timeout: Duration) -> Deadline {
        let due = Instant::now() + timeout;
        let (key, start) = {
            let mut state = self.shared.lock();
            let key = state.slots.insert(Slot {
                due,
                fired: false,
                waker: None,
            });
            match std::mem::replace(&mut state.sweeper, Sweeper::Running) {
                Sweeper::NotStarted => (key, true),
                Sweeper::Running => (key, false),
                Sweeper::Parked(waker) => {
                    waker.wake();
                    (key, false)
                }
            }
        };
        if start {
            tokio::spawn(sweep(Arc::clone(&self.shared)));
        }
        Deadline {
            shared: Arc::clone(&self.shared),
            key,
        }
    }

    #[cfg(test)]
    fn armed(&self) -> usize {
        self.shared.lock().slots.len()
    }
}

/// One armed deadline; disarmed when dropped.
pub struct Deadline {
    shared: Arc<Shared>,
    key: usize,
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.lock();
        let slot = &mut state.slots[self.key];
        if slot.fired {
            return Poll::Ready(());
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let slot = self.shared.lock().slots.remove(self.key);
        drop(slot);
    }
}

async fn sweep(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(shared.tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut empty_ticks = 0;
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut state = shared.lock();
            if state.slots.is_empty() {
                empty_ticks += 1;
            } else {
                empty_ticks = 0;
            }
            for (_, slot) in state.slots.iter_mut() {
                if !slot.fired && slot.due <= now {
                    slot.fired = true;
                    due.extend(slot.waker.take());
                }
            }
        }
        due.into_iter().for_each(Waker::wake);
        if empty_ticks >= PARK_AFTER_EMPTY_TICKS {
            std::future::poll_fn(|cx| {
                let mut state = shared.lock();
                match state.sweeper {
                    // `after` woke us (and set `Running`), or we have not parked yet.
                    Sweeper::Running if !state.slots.is_empty() => Poll::Ready(()),
                    Sweeper::Parked(_) if !state.slots.is_empty() => Poll::Ready(()),
                    _ => {
                        state.sweeper = Sweeper::Parked(cx.waker().clone());
                        Poll::Pending
                    }
                }
            })
            .await;
            empty_ticks = 0;
            ticks.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    #[tokio::test(start_paused = true)]
    async fn fires_no_earlier_than_due_and_within_a_tick() {
        let deadlines = Deadlines::new(TICK);
        for timeout in [
            Duration::from_millis(1),
            Duration::from_millis(250),
            Duration::from_secs(3),
        ] {
            let started = Instant::now();
            deadlines.after(timeout).await;
            let took = started.elapsed();
            assert!(took >= timeout, "{timeout:?} fired after {took:?}");
            assert!(took <= timeout + TICK, "{timeout:?} fired after {took:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_deadline_is_disarmed_and_the_others_still_fire() {
        let deadlines = Deadlines::new(TICK);
        let early = deadlines.after(Duration::from_millis(100));
        let late = deadlines.after(Duration::from_millis(300));
        assert_eq!(deadlines.armed(), 2);
        drop(early);
        assert_eq!(deadlines.armed(), 1);
        let started = Instant::now();
        late.await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(deadlines.armed(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_parks_when_idle_and_resumes_for_a_new_deadline() {
        let deadlines = Deadlines::new(TICK);
        deadlines.after(Duration::from_millis(5)).await;
        // Long enough for the sweeper to park.
        tokio::time::sleep(TICK * (PARK_AFTER_EMPTY_TICKS + 10)).await;
        assert!(matches!(
            deadlines.shared.lock().sweeper,
            Sweeper::Parked(_)
        ));
        let started = Instant::now();
        deadlines.after(Duration::from_millis(50)).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(50) && took <= Duration::from_millis(50) + TICK,
            "fired after {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_has_not_come_does_not_fire() {
        let deadlines = Deadlines::new(TICK);
        let waited = tokio::time::timeout(
            Duration::from_secs(5),
            deadlines.after(Duration::from_secs(6)),
        )
        .await;
        assert!(waited.is_err());
    }
}
