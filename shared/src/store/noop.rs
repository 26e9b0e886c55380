//! A [`Store`] that keeps nothing: reads find nothing, writes succeed and vanish. It is what a
//! cache configured as `noop` (oCIS store type `noop`) needs: every lookup goes to the source.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use super::{Change, Entry, Store, StoreResult};

pub struct NoopStore {
    /// Kept so that subscribers wait forever instead of seeing a closed feed.
    feed: broadcast::Sender<Change>,
}

impl NoopStore {
    pub fn new() -> Self {
        let (feed, _) = broadcast::channel(1);
        Self { feed }
    }
}

impl Default for NoopStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Store for NoopStore {
    async fn get(&self, _key: &str) -> StoreResult<Option<Entry>> {
        Ok(None)
    }

    async fn put(&self, _key: &str, _value: Bytes, _ttl: Option<Duration>) -> StoreResult<u64> {
        Ok(0)
    }

    async fn create(&self, _key: &str, _value: Bytes, _ttl: Option<Duration>) -> StoreResult<u64> {
        Ok(0)
    }

    async fn update(
        &self,
        _key: &str,
        _value: Bytes,
        _ttl: Option<Duration>,
        _expected: u64,
    ) -> StoreResult<u64> {
        Ok(0)
    }

    async fn delete(&self, _key: &str) -> StoreResult<()> {
        Ok(())
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.feed.subscribe()
    }

    fn kind(&self) -> &'static str {
        "noop"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_vanish() {
        let s = NoopStore::new();
        let mut feed = s.changes();
        s.put("k", Bytes::from_static(b"v"), None).await.unwrap();
        s.create("k", Bytes::from_static(b"v"), None).await.unwrap();
        s.create("k", Bytes::from_static(b"v"), None).await.unwrap();
        s.update("k", Bytes::from_static(b"v"), None, 42)
            .await
            .unwrap();
        s.delete("k").await.unwrap();
        assert_eq!(s.get("k").await.unwrap(), None);
        assert!(matches!(
            feed.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
    }
}
