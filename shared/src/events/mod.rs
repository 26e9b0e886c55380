//! Events Gatehouse puts on the oCIS event bus (spec §5.6).
//!
//! oCIS services (notifications, activitylog, userlog, audit, search, …) consume reva events
//! from the NATS JetStream subject `main-queue`. To be one of their producers Gatehouse must
//! speak their format exactly: the payload structs in [`types`] mirror reva's Go structs and
//! [`envelope`] reproduces the go-micro envelope around them.
//!
//! Publishing goes through an [`EventSink`], which never waits for the network: request
//! handling must not slow down or fail because the bus is slow or down. The NATS implementation
//! (a bounded queue drained by a background task) lives in `gatehouse-nats`; [`NoopSink`] is used
//! when events are disabled and [`RecordingSink`] lets other modules' tests see what they emitted.

pub mod envelope;
pub mod time;
pub mod types;

use std::sync::Mutex;

pub use envelope::{
    CodecError, DecodedEnvelope, EncodedEvent, MAIN_QUEUE, decode, encode, encode_with,
    is_valid_traceparent, new_traceparent,
};
pub use types::{
    BackchannelLogout, CsTimestamp, EVENT_TYPES, Event, GoTime, GroupCreated, GroupId,
    GroupMembership, SpaceShareChange, SpaceShared, StorageSpaceId, UserCreated, UserSignedIn,
};

/// An event with the request context it was raised in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEvent {
    pub event: Event,
    /// The W3C `traceparent` of the request that caused the event, if it was traced.
    pub traceparent: Option<String>,
    /// The client's initiator id (oCIS web sends it so it can ignore its own events).
    pub initiator_id: Option<String>,
}

impl OutgoingEvent {
    pub fn new(event: Event) -> Self {
        Self {
            event,
            traceparent: None,
            initiator_id: None,
        }
    }

    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    pub fn with_initiator(mut self, initiator_id: impl Into<String>) -> Self {
        self.initiator_id = Some(initiator_id.into());
        self
    }

    /// The wire form, with a fresh event id.
    pub fn encode(&self) -> Result<EncodedEvent, CodecError> {
        encode(
            &self.event,
            self.traceparent.as_deref(),
            self.initiator_id.as_deref(),
        )
    }
}

/// Why an event was not accepted. The event is lost in every case; callers log and go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The outgoing queue is full (the bus has been unreachable for long). Transient: later
    /// events are accepted again once the queue drains.
    #[error("event queue is full ({capacity} events waiting)")]
    QueueFull { capacity: usize },
    /// The publisher has been shut down. Permanent.
    #[error("event publisher is closed")]
    Closed,
    /// The event could not be encoded. Permanent for this event.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl PublishError {
    /// Whether publishing the same kind of event later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, PublishError::QueueFull { .. })
    }
}

/// Where events go. `publish` returns at once: it never waits for the network.
pub trait EventSink: Send + Sync {
    fn publish(&self, event: OutgoingEvent) -> Result<(), PublishError>;
}

/// Drops every event (events disabled: empty `events.endpoint`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopSink;

impl EventSink for NoopSink {
    fn publish(&self, _event: OutgoingEvent) -> Result<(), PublishError> {
        Ok(())
    }
}

/// Keeps every event in memory, for tests of the code that raises events.
#[derive(Debug, Default)]
pub struct RecordingSink {
    events: Mutex<Vec<OutgoingEvent>>,
}

impl RecordingSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything published so far, in order.
    pub fn events(&self) -> Vec<OutgoingEvent> {
        self.lock().clone()
    }

    /// Everything published so far, emptying the record.
    pub fn take(&self) -> Vec<OutgoingEvent> {
        std::mem::take(&mut *self.lock())
    }

    /// The `eventtype` of every event so far, in order.
    pub fn types(&self) -> Vec<&'static str> {
        self.lock().iter().map(|e| e.event.type_name()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OutgoingEvent>> {
        // A panicking test thread must not hide the events from the others.
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl EventSink for RecordingSink {
    fn publish(&self, event: OutgoingEvent) -> Result<(), PublishError> {
        event.encode()?;
        self.lock().push(event);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
