//! The oCIS / go-micro `nats-js-kv` wire format (spec §6.6), so that Gatehouse nodes and the Go
//! oCIS services can share a bucket.
//!
//! Format, as written by go-micro's `plugins/v4/store/nats-js-kv` (`keys.go`, `nats.go`):
//! - NATS key: RFC 4648 base32, standard alphabet with `=` padding, of `<table>_<key>`, or of
//!   `<key>` when the table is empty.
//! - value: the JSON of Go's `KeyValueEnvelope{Key string; Data []byte; Metadata
//!   map[string]interface{}}` with the JSON names `key`, `data`, `metadata`. `key` is the plain key
//!   without the table; `data` is standard base64 with padding (Go's `encoding/json` for `[]byte`).
//!   Go writes `null` for a nil `data` or `metadata`, so both are accepted as empty.
//!
//! go-micro has no expiry in the envelope (its `Record.Expiry` is dropped on write; the bucket's
//! max-age is the only TTL). Gatehouse carries its per-entry expiry in `metadata` under
//! [`EXPIRES_AT_METADATA_KEY`] as integer Unix milliseconds: Go nodes decode `metadata` into a
//! `map[string]interface{}` and so read and pass it through without complaint. Entries written
//! without it (by Go) have no per-entry expiry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};

use super::{StoreError, StoreResult};

/// Metadata field holding the entry's expiry in Unix milliseconds.
pub const EXPIRES_AT_METADATA_KEY: &str = "gatehouse.expires_at_unix_ms";

/// The JSON envelope go-micro's nats-js-kv store writes as the value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The plain key (without table prefix).
    #[serde(default, deserialize_with = "null_as_default")]
    pub key: String,
    /// The value, standard base64 with padding.
    #[serde(default, deserialize_with = "null_as_default")]
    pub data: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn full_key(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_owned()
    } else {
        format!("{table}_{key}")
    }
}

/// NATS key for `(table, key)`: base32 (standard alphabet, padded) of `table_key`, or of `key`.
pub fn encode_key(table: &str, key: &str) -> String {
    data_encoding::BASE32.encode(full_key(table, key).as_bytes())
}

/// Inverse of [`encode_key`]: the plain key with the table prefix removed, `None` if not in the table.
pub fn decode_key(table: &str, encoded: &str) -> Option<String> {
    let raw = data_encoding::BASE32.decode(encoded.as_bytes()).ok()?;
    let full = String::from_utf8(raw).ok()?;
    if table.is_empty() {
        return Some(full);
    }
    full.strip_prefix(table)
        .and_then(|rest| rest.strip_prefix('_'))
        .map(str::to_owned)
}

fn to_unix_ms(t: SystemTime) -> u64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

/// The envelope bytes for `value`, with `expires_at` (if any) in the metadata.
pub fn encode_value(plain_key: &str, value: &[u8], expires_at: Option<SystemTime>) -> Bytes {
    let mut metadata = serde_json::Map::new();
    if let Some(t) = expires_at {
        metadata.insert(EXPIRES_AT_METADATA_KEY.to_owned(), to_unix_ms(t).into());
    }
    let envelope = Envelope {
        key: plain_key.to_owned(),
        data: STANDARD.encode(value),
        metadata,
    };
    // Serialising a struct of strings and a JSON map cannot fail.
    Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
}

/// Decodes an envelope completely: the value bytes, the expiry, and the envelope itself.
pub fn decode_envelope(raw: &[u8]) -> StoreResult<(Bytes, Option<SystemTime>, Envelope)> {
    let envelope: Envelope = serde_json::from_slice(raw)
        .map_err(|e| StoreError::Invalid(format!("value is not a go-micro envelope: {e}")))?;
    let data = STANDARD
        .decode(envelope.data.as_bytes())
        .or_else(|_| STANDARD_NO_PAD.decode(envelope.data.as_bytes()))
        .map_err(|e| StoreError::Invalid(format!("envelope data is not base64: {e}")))?;
    let expires_at = match envelope.metadata.get(EXPIRES_AT_METADATA_KEY) {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => {
            // Go re-encodes numbers it passed through `interface{}` as float64.
            let ms = v.as_u64().or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            });
            let ms = ms.ok_or_else(|| {
                StoreError::Invalid(format!("{EXPIRES_AT_METADATA_KEY} is not a timestamp: {v}"))
            })?;
            Some(UNIX_EPOCH + Duration::from_millis(ms))
        }
    };
    Ok((Bytes::from(data), expires_at, envelope))
}

/// Returns the value bytes and the expiry carried in the envelope.
pub fn decode_value(raw: &[u8]) -> StoreResult<(Bytes, Option<SystemTime>)> {
    decode_envelope(raw).map(|(value, expires_at, _)| (value, expires_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Independently computed (Python `base64.b32encode`), so a change of alphabet or padding fails.
    const SIGNING_KEY_NATS_KEY: &str = "ONUWO3TJNZTS223FPFZV6ZLJNZZXIZLJNY======";

    #[test]
    fn key_vector_signing_keys() {
        assert_eq!(encode_key("signing-keys", "einstein"), SIGNING_KEY_NATS_KEY);
        assert_eq!(
            decode_key("signing-keys", SIGNING_KEY_NATS_KEY).as_deref(),
            Some("einstein")
        );
    }

    #[test]
    fn key_vector_registry() {
        let encoded =
            "ONSXE5TJMNSS24TFM5UXG5DSPFPWG33NFZXXO3TDNRXXKZBOO5SWELTXMVREAYLCMNADCLRQFYYA====";
        assert_eq!(
            encode_key("service-registry", "com.owncloud.web.web@abc@1.0.0"),
            encoded
        );
        assert_eq!(
            decode_key("service-registry", encoded).as_deref(),
            Some("com.owncloud.web.web@abc@1.0.0")
        );
    }

    #[test]
    fn key_without_table_is_the_plain_key() {
        // base32("einstein")
        assert_eq!(encode_key("", "einstein"), "MVUW443UMVUW4===");
        assert_eq!(
            decode_key("", "MVUW443UMVUW4===").as_deref(),
            Some("einstein")
        );
    }

    #[test]
    fn keys_of_other_tables_are_not_decoded() {
        let other = encode_key("signing-keys", "einstein");
        assert_eq!(decode_key("signing", &other), None);
        assert_eq!(decode_key("other", &other), None);
        assert_eq!(decode_key("signing-keys", "not base32!"), None);
        // A table name that is a prefix of another must not match without the separator.
        let k = encode_key("", "signing-keysX_einstein");
        assert_eq!(decode_key("signing-keys", &k), None);
    }

    #[test]
    fn value_vector_without_expiry() {
        let raw = encode_value("einstein", b"0123456789abcdef", None);
        assert_eq!(
            std::str::from_utf8(&raw).unwrap(),
            r#"{"key":"einstein","data":"MDEyMzQ1Njc4OWFiY2RlZg==","metadata":{}}"#
        );
        let (v, exp) = decode_value(&raw).unwrap();
        assert_eq!(&v[..], b"0123456789abcdef");
        assert_eq!(exp, None);
    }

    #[test]
    fn value_vector_with_expiry() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_123_456);
        let raw = encode_value("einstein", b"0123456789abcdef", Some(at));
        assert_eq!(
            std::str::from_utf8(&raw).unwrap(),
            r#"{"key":"einstein","data":"MDEyMzQ1Njc4OWFiY2RlZg==","metadata":{"gatehouse.expires_at_unix_ms":1700000123456}}"#
        );
        assert_eq!(decode_value(&raw).unwrap().1, Some(at));
    }

    #[test]
    fn decodes_what_go_writes() {
        // nil []byte and nil map marshal as null in Go.
        let (v, exp) = decode_value(br#"{"key":"k","data":null,"metadata":null}"#).unwrap();
        assert!(v.is_empty());
        assert_eq!(exp, None);
        // Foreign metadata is tolerated; a float64 round-tripped expiry is understood.
        let (v, exp) = decode_value(
            br#"{"key":"k","data":"aGk=","metadata":{"x":"y","gatehouse.expires_at_unix_ms":1.7e12}}"#,
        )
        .unwrap();
        assert_eq!(&v[..], b"hi");
        assert_eq!(
            exp,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_000))
        );
        let (_, _, env) = decode_envelope(br#"{"key":"k","data":"aGk="}"#).unwrap();
        assert_eq!(env.key, "k");
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            decode_value(b"not json"),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            decode_value(br#"{"key":"k","data":"%%%","metadata":{}}"#),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            decode_value(
                br#"{"key":"k","data":"","metadata":{"gatehouse.expires_at_unix_ms":"soon"}}"#
            ),
            Err(StoreError::Invalid(_))
        ));
    }
}
