//! Round-robin over the URLs of one service, skipping for `unhealthy_backoff` a URL that refused a
//! connection. When every URL is marked unhealthy the next one in turn is tried anyway: a service
//! that is down answers 502 quickly, and one that came back is found again without waiting.
//!
//! Lock-free: a shared counter picks the start, each URL holds the instant (relative to the
//! balancer's creation, in the tokio clock so tests can pause time) until which it is skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::UpstreamBase;

#[derive(Debug)]
pub struct Balancer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    members: Vec<Member>,
    next: AtomicUsize,
    epoch: Instant,
    backoff: Duration,
}

#[derive(Debug)]
struct Member {
    base: Arc<UpstreamBase>,
    /// Milliseconds since `epoch` until which the member is skipped; 0 = healthy.
    unhealthy_until_ms: AtomicU64,
}

/// One choice of the balancer; can mark its member unhealthy.
#[derive(Debug, Clone)]
pub struct Pick {
    inner: Arc<Inner>,
    index: usize,
}

impl Balancer {
    pub fn new(bases: Vec<Arc<UpstreamBase>>, backoff: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                members: bases
                    .into_iter()
                    .map(|base| Member {
                        base,
                        unhealthy_until_ms: AtomicU64::new(0),
                    })
                    .collect(),
                next: AtomicUsize::new(0),
                epoch: Instant::now(),
                backoff,
            }),
        }
    }

    /// The next healthy member in turn, or the next member if none is healthy.
    pub fn pick(&self) -> Pick {
        let inner = &self.inner;
        let n = inner.members.len();
        let start = inner.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = inner.now_ms();
        let index = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| inner.members[i].unhealthy_until_ms.load(Ordering::Relaxed) <= now)
            .unwrap_or(start);
        Pick {
            inner: self.inner.clone(),
            index,
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Pick {
    pub fn base(&self) -> &Arc<UpstreamBase> {
        &self.inner.members[self.index].base
    }

    pub fn mark_unhealthy(&self) {
        let until = self
            .inner
            .now_ms()
            .saturating_add(u64::try_from(self.inner.backoff.as_millis()).unwrap_or(u64::MAX))
            .max(1);
        self.inner.members[self.index]
            .unhealthy_until_ms
            .store(until, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(urls: &[&str]) -> Balancer {
        Balancer::new(
            urls.iter()
                .map(|u| Arc::new(UpstreamBase::parse(u).unwrap()))
                .collect(),
            Duration::from_secs(10),
        )
    }

    fn urls(b: &Balancer, n: usize) -> Vec<String> {
        (0..n).map(|_| b.pick().base().url.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin() {
        let b = balancer(&["http://a", "http://b", "http://c"]);
        assert_eq!(
            urls(&b, 6),
            [
                "http://a", "http://b", "http://c", "http://a", "http://b", "http://c"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refused_member_is_skipped_until_backoff_expires() {
        let b = balancer(&["http://a", "http://b"]);
        let first = b.pick();
        assert_eq!(&*first.base().url, "http://a");
        first.mark_unhealthy();
        assert_eq!(urls(&b, 4), ["http://b"; 4]);

        tokio::time::advance(Duration::from_millis(9_900)).await;
        assert_eq!(urls(&b, 2), ["http://b"; 2]);

        tokio::time::advance(Duration::from_millis(200)).await;
        let mut seen = urls(&b, 2);
        seen.sort();
        assert_eq!(seen, ["http://a", "http://b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn all_unhealthy_still_tries_in_turn() {
        let b = balancer(&["http://a", "http://b"]);
        b.pick().mark_unhealthy();
        b.pick().mark_unhealthy();
        let mut seen = urls(&b, 2);
        seen.sort();
        assert_eq!(seen, ["http://a", "http://b"]);
    }
}
