//! The user-info cache value: a token's claims as a msgpack map, as oCIS writes it (spec §4.1,
//! §6.6), so that Go and Rust nodes can share one cache bucket.
//!
//! `exp` is an integer; msgpack's compact integer encoding stores current Unix times as
//! `uint32`, one of the two kinds the Go reader accepts. Other numbers keep their JSON kind
//! (integers stay integers). Reading is defensive: the bucket is shared with other writers, so
//! bytes that do not decode are an error the caller treats as a miss, and a value without a
//! usable integer `exp`, or whose `exp` has passed, is reported as [`Cached::Expired`].

use std::time::SystemTime;

use serde_json::Value;

use super::{Claims, unix_secs_f64};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheCodecError {
    #[error("cannot encode claims as msgpack: {0}")]
    Encode(String),
    #[error("cached value is not a msgpack map of claims: {0}")]
    Decode(String),
}

pub fn encode_claims(claims: &Claims) -> Result<Vec<u8>, CacheCodecError> {
    rmp_serde::to_vec(claims).map_err(|e| CacheCodecError::Encode(e.to_string()))
}

pub fn decode_claims(bytes: &[u8]) -> Result<Claims, CacheCodecError> {
    rmp_serde::from_slice(bytes).map_err(|e| CacheCodecError::Decode(e.to_string()))
}

/// A decoded cache value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cached {
    Valid {
        claims: Claims,
        exp: i64,
    },
    /// `exp` missing, not an integer, or not after now.
    Expired,
}

/// Decodes a cache value and checks its `exp` against `now`.
pub fn read_cached(bytes: &[u8], now: SystemTime) -> Result<Cached, CacheCodecError> {
    let claims = decode_claims(bytes)?;
    let exp = match claims.get("exp") {
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    };
    Ok(match exp {
        Some(exp) if (exp as f64) > unix_secs_f64(now) => Cached::Valid { claims, exp },
        _ => Cached::Expired,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn claims(v: Value) -> Claims {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn exp_is_a_msgpack_uint32_and_the_map_round_trips() {
        let c = claims(
            json!({"exp": NOW + 60, "sub": "einstein", "groups": ["a", "b"], "n": -3, "f": 1.5, "o": {"x": null}}),
        );
        let bytes = encode_claims(&c).unwrap();
        assert_eq!(bytes[0] & 0xf0, 0x80, "fixmap marker");
        let exp_pos = bytes
            .windows(4)
            .position(|w| w == b"\xa3exp")
            .expect("exp key");
        assert_eq!(bytes[exp_pos + 4], 0xce, "uint32 marker");
        assert_eq!(
            &bytes[exp_pos + 5..exp_pos + 9],
            &((NOW + 60) as u32).to_be_bytes()
        );
        assert_eq!(decode_claims(&bytes).unwrap(), c);
    }

    #[test]
    fn reads_a_value_written_by_go() {
        // vmihailenco/msgpack of map[string]interface{}{"exp": int64(1700000060), "sub": "einstein"}
        // as oCIS writes it (int64 marker 0xd3), plus a float64 claim.
        let mut go = vec![0x83];
        go.extend_from_slice(b"\xa3exp\xd3");
        go.extend_from_slice(&1_700_000_060i64.to_be_bytes());
        go.extend_from_slice(b"\xa3sub\xa8einstein");
        go.extend_from_slice(b"\xa3iat\xcb");
        go.extend_from_slice(&1_699_999_000f64.to_be_bytes());
        match read_cached(&go, now()).unwrap() {
            Cached::Valid { claims, exp } => {
                assert_eq!(exp, 1_700_000_060);
                assert_eq!(claims["sub"], "einstein");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expiry_rules() {
        let at = |exp: Value| encode_claims(&claims(json!({"sub": "x", "exp": exp}))).unwrap();
        assert!(matches!(
            read_cached(&at(json!(NOW + 1)), now()).unwrap(),
            Cached::Valid { .. }
        ));
        for (name, bytes) in [
            ("exp now", at(json!(NOW))),
            ("exp past", at(json!(NOW - 1))),
            ("exp float", at(json!(NOW as f64 + 100.0))),
            ("exp string", at(json!("later"))),
            (
                "no exp",
                encode_claims(&claims(json!({"sub": "x"}))).unwrap(),
            ),
        ] {
            assert_eq!(
                read_cached(&bytes, now()).unwrap(),
                Cached::Expired,
                "{name}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\xc1",
            b"{\"exp\": 1}",
            b"\x92\x01\x02",
            b"\x81\x01\x02",
            b"\x85\xa3exp",
            b"\xdf\xff\xff\xff\xff",
        ] {
            assert!(
                matches!(read_cached(bytes, now()), Err(CacheCodecError::Decode(_))),
                "{bytes:?}"
            );
        }
    }
}
