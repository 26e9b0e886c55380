//! oCIS wire format for KV entries (spec §6.6). STUB: to be implemented.
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::StoreResult;

/// The JSON envelope go-micro's nats-js-kv store writes as the value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub key: String,
    pub data: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// NATS key for `(table, key)`: base32 (standard alphabet, padded) of `table_key`, or of `key`.
pub fn encode_key(_table: &str, _key: &str) -> String {
    unimplemented!()
}
/// Inverse of [`encode_key`]: the plain key with the table prefix removed, `None` if not in the table.
pub fn decode_key(_table: &str, _encoded: &str) -> Option<String> {
    unimplemented!()
}
pub fn encode_value(
    _plain_key: &str,
    _value: &[u8],
    _expires_at: Option<std::time::SystemTime>,
) -> Bytes {
    unimplemented!()
}
/// Returns the value bytes and the expiry carried in the envelope.
pub fn decode_value(_raw: &[u8]) -> StoreResult<(Bytes, Option<std::time::SystemTime>)> {
    unimplemented!()
}
