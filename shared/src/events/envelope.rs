//! The go-micro `events.Event` envelope every oCIS event travels in.
//!
//! reva's `events.Publish` hands the payload struct to the go-micro `natsjs` stream, which
//! marshals it to JSON and wraps it in `events.Event{ID, Topic, Timestamp, Metadata, Payload}`.
//! That struct has no JSON tags, so the keys are the Go field names; `Payload` is a `[]byte` and
//! therefore standard base64; `Timestamp` is a `time.Time` (RFC 3339 with nanoseconds). The
//! metadata carries `eventtype` (the Go type name consumers dispatch on), `eventid` (a UUID),
//! `traceparent`, `initiatorid` and, in recent reva, `extrainfo` (auto-propagated metadata as a
//! JSON object; Gatehouse has none to propagate and sends `{}`).
//!
//! Gatehouse uses one UUID for the envelope `ID`, the `eventid` metadata and the JetStream
//! `Nats-Msg-Id`, so a re-sent event is recognised as the same event everywhere.

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::time::format_rfc3339_nano;
use super::types::Event;

/// The subject (go-micro "topic") every reva event is published to.
pub const MAIN_QUEUE: &str = "main-queue";

pub const METADATA_EVENT_TYPE: &str = "eventtype";
pub const METADATA_EVENT_ID: &str = "eventid";
pub const METADATA_TRACE_PARENT: &str = "traceparent";
pub const METADATA_INITIATOR_ID: &str = "initiatorid";
pub const METADATA_EXTRA_INFO: &str = "extrainfo";

/// Why an envelope could not be built or read. Neither is cured by retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode event: {0}")]
    Encode(String),
    #[error("malformed event envelope: {0}")]
    Malformed(String),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
}

/// An event ready for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    /// The event id: envelope `ID`, metadata `eventid` and the de-duplication id.
    pub id: String,
    /// The `eventtype`, for logs.
    pub event_type: &'static str,
    /// The JSON envelope.
    pub bytes: Vec<u8>,
}

/// The envelope as read back (tests, diagnostics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedEnvelope {
    pub id: String,
    pub topic: String,
    /// The `Timestamp` as written (RFC 3339).
    pub timestamp: String,
    pub metadata: BTreeMap<String, String>,
    /// The payload JSON (already base64-decoded).
    pub payload: Vec<u8>,
}

impl DecodedEnvelope {
    pub fn event_type(&self) -> &str {
        self.meta(METADATA_EVENT_TYPE)
    }

    pub fn event_id(&self) -> &str {
        self.meta(METADATA_EVENT_ID)
    }

    pub fn traceparent(&self) -> &str {
        self.meta(METADATA_TRACE_PARENT)
    }

    pub fn initiator_id(&self) -> &str {
        self.meta(METADATA_INITIATOR_ID)
    }

    fn meta(&self, key: &str) -> &str {
        self.metadata.get(key).map_or("", String::as_str)
    }

    /// The payload decoded according to `eventtype`.
    pub fn event(&self) -> Result<Event, CodecError> {
        match Event::from_payload(self.event_type(), &self.payload) {
            Some(Ok(e)) => Ok(e),
            Some(Err(e)) => Err(CodecError::Malformed(format!("payload: {e}"))),
            None => Err(CodecError::UnknownType(self.event_type().to_owned())),
        }
    }
}

/// Field order of go-micro v4's `events.Event` (Go marshals fields in declaration order).
#[derive(Serialize, Deserialize)]
struct WireEnvelope {
    #[serde(rename = "Timestamp")]
    timestamp: String,
    #[serde(rename = "Metadata", default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Topic")]
    topic: String,
    #[serde(rename = "Payload", default)]
    payload: Option<String>,
}

/// Wraps `event` in a new envelope with a fresh id, stamped now. `traceparent` is used when it
/// is a valid W3C `traceparent`; otherwise a new (unsampled) root context is generated, so every
/// event carries one. `initiator` is the client-supplied initiator id, if any.
pub fn encode(
    event: &Event,
    traceparent: Option<&str>,
    initiator: Option<&str>,
) -> Result<EncodedEvent, CodecError> {
    let id = uuid::Uuid::new_v4().to_string();
    let traceparent = match traceparent {
        Some(tp) if is_valid_traceparent(tp) => tp.to_owned(),
        _ => new_traceparent(),
    };
    encode_with(
        event,
        &id,
        SystemTime::now(),
        &traceparent,
        initiator.unwrap_or(""),
    )
}

/// [`encode`] with every variable part given (deterministic; for tests and re-encoding).
pub fn encode_with(
    event: &Event,
    id: &str,
    now: SystemTime,
    traceparent: &str,
    initiator: &str,
) -> Result<EncodedEvent, CodecError> {
    let payload = event
        .payload_json()
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let metadata = BTreeMap::from([
        (METADATA_EVENT_TYPE.to_owned(), event.type_name().to_owned()),
        (METADATA_EVENT_ID.to_owned(), id.to_owned()),
        (METADATA_TRACE_PARENT.to_owned(), traceparent.to_owned()),
        (METADATA_INITIATOR_ID.to_owned(), initiator.to_owned()),
        (METADATA_EXTRA_INFO.to_owned(), "{}".to_owned()),
    ]);
    let wire = WireEnvelope {
        timestamp: format_rfc3339_nano(now),
        metadata: Some(metadata),
        id: id.to_owned(),
        topic: MAIN_QUEUE.to_owned(),
        payload: Some(STANDARD.encode(payload)),
    };
    let bytes = serde_json::to_vec(&wire).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(EncodedEvent {
        id: id.to_owned(),
        event_type: event.type_name(),
        bytes,
    })
}

/// Reads an envelope (as written by Gatehouse or by go-micro).
pub fn decode(bytes: &[u8]) -> Result<DecodedEnvelope, CodecError> {
    let wire: WireEnvelope =
        serde_json::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
    let payload = match wire.payload {
        Some(p) => STANDARD
            .decode(p)
            .map_err(|e| CodecError::Malformed(format!("payload is not base64: {e}")))?,
        None => Vec::new(),
    };
    Ok(DecodedEnvelope {
        id: wire.id,
        topic: wire.topic,
        timestamp: wire.timestamp,
        metadata: wire.metadata.unwrap_or_default(),
        payload,
    })
}

/// W3C trace-context `traceparent`: `vv-<32 hex>-<16 hex>-ff`, lowercase, version not `ff`,
/// ids not all zero. Version 00 must have exactly four fields; later versions may append more.
pub fn is_valid_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    if parts.len() < 4 {
        return false;
    }
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    let (version, trace, parent, flags) = (parts[0], parts[1], parts[2], parts[3]);
    hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.len() == 4)
        && hex(trace, 32)
        && trace.bytes().any(|c| c != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|c| c != b'0')
        && hex(flags, 2)
}

/// A fresh root context: random trace and span ids, not sampled (Gatehouse recorded no span
/// for it; consumers may still link to it).
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace}-{}-00", &span[..16])
}
