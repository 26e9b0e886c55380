//! The layout of the `redis-sentinel` store, shared by Go oCIS services and Gatehouse nodes.
//!
//! What oCIS writes (go-micro's `plugins/v4/store/redis`, selected by `ocis-pkg/store`): the Redis
//! key is `<table><key>` with no separator, the value is the raw record value, and the record's
//! expiry is the key's TTL (`SET … PX`). The database is ignored (always DB 0). The store's nodes
//! are `<sentinel-host>:<port>/<master-name>`; oCIS takes the master name from the first node.
//!
//! What Gatehouse adds, beside the data and never inside it, so that Go nodes keep reading and
//! writing the same keys:
//! - a revision per key (`gatehouse:rev:<table><key>` = `"<revision> <sha1 of the value>"`, with
//!   the data key's TTL), drawn from one counter per Redis database ([`REVISION_COUNTER`]). The
//!   digest tells a revision that belongs to the current value from one a Go writer has since
//!   made stale; such a value gets a new revision when it is next read.
//! - a change channel per table ([`change_channel`]) on which every Gatehouse write publishes the
//!   change with its value, so that peers' near-caches apply it without reading it back.

use std::time::Duration;

/// One counter per Redis database; `INCR` gives every write a revision above all earlier ones.
pub const REVISION_COUNTER: &str = "gatehouse:revision";
const REVISION_PREFIX: &str = "gatehouse:rev:";
const CHANNEL_PREFIX: &str = "gatehouse:changes:";
const KEYSPACE_PREFIX: &str = "__keyspace@0__:";

/// Where `<sentinel-host>:<port>/<master-name>` entries point: the sentinels and the master name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelNodes {
    /// `host:port` of every sentinel, in configuration order.
    pub sentinels: Vec<String>,
    pub master: String,
}

/// Reads the oCIS node list. Unlike oCIS (which returns no store at all for an entry without
/// `/` and silently uses the first entry's master name), every entry must name the master, and
/// the same one; the error says which entry is wrong (by index).
pub fn parse_sentinel_nodes(nodes: &[String]) -> Result<SentinelNodes, (usize, String)> {
    let mut sentinels = Vec::with_capacity(nodes.len());
    let mut master: Option<&str> = None;
    for (i, node) in nodes.iter().enumerate() {
        let Some((addr, name)) = node.split_once('/') else {
            return Err((
                i,
                format!("{node:?} is not <sentinel-host>:<port>/<master-name>"),
            ));
        };
        if name.is_empty() {
            return Err((i, format!("{node:?} names no master after '/'")));
        }
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| (i, format!("{node:?} has no sentinel port")))?;
        if host.is_empty() || !port.parse::<u16>().is_ok_and(|p| p != 0) {
            return Err((
                i,
                format!("{node:?} is not <sentinel-host>:<port>/<master-name>"),
            ));
        }
        match master {
            None => master = Some(name),
            Some(first) if first != name => {
                return Err((
                    i,
                    format!("names master {name:?}, but the first entry names {first:?}"),
                ));
            }
            Some(_) => {}
        }
        sentinels.push(addr.to_owned());
    }
    match master {
        Some(master) => Ok(SentinelNodes {
            sentinels,
            master: master.to_owned(),
        }),
        None => Err((0, "redis-sentinel needs at least one sentinel".to_owned())),
    }
}

/// The Redis key of `key` in `table`, as go-micro builds it.
pub fn data_key(table: &str, key: &str) -> String {
    format!("{table}{key}")
}

/// The key holding the revision of the data key `data_key`.
pub fn revision_key(data_key: &str) -> String {
    format!("{REVISION_PREFIX}{data_key}")
}

/// The channel Gatehouse writes to `table` are announced on.
pub fn change_channel(table: &str) -> String {
    format!("{CHANNEL_PREFIX}{table}")
}

/// Keyspace notifications (`notify-keyspace-events`) are how writes by Go services, which
/// publish nothing, reach Gatehouse's near-caches: the pattern for the keys of `table` in DB 0.
pub fn keyspace_pattern(table: &str) -> String {
    let mut pattern = String::from(KEYSPACE_PREFIX);
    for c in table.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// The plain key a keyspace notification channel names, if it is a data key of `table` (not one
/// of Gatehouse's own keys beside the data, which an empty table would match too).
pub fn keyspace_key(channel: &str, table: &str) -> Option<String> {
    let data = channel.strip_prefix(KEYSPACE_PREFIX)?;
    if data.starts_with("gatehouse:") {
        return None;
    }
    data.strip_prefix(table).map(str::to_owned)
}

/// A change as published on the channel by the write scripts:
/// `P <revision> <ttl-ms> <key-length>\n<key><value>` for a write (`ttl-ms` −1: no expiry) and
/// `D <revision> 0 <key-length>\n<key>` for a deletion. The key is the plain key, without the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeMessage {
    Put {
        key: String,
        revision: u64,
        ttl: Option<Duration>,
        value: Vec<u8>,
    },
    Delete {
        key: String,
        revision: u64,
    },
}

impl ChangeMessage {
    /// `None` for anything that is not a well-formed message.
    pub fn decode(payload: &[u8]) -> Option<ChangeMessage> {
        let newline = payload.iter().position(|&b| b == b'\n')?;
        let header = std::str::from_utf8(&payload[..newline]).ok()?;
        let body = &payload[newline + 1..];
        let mut fields = header.split(' ');
        let kind = fields.next()?;
        let revision: u64 = fields.next()?.parse().ok()?;
        let ttl_ms: i64 = fields.next()?.parse().ok()?;
        let key_len: usize = fields.next()?.parse().ok()?;
        if fields.next().is_some() || key_len > body.len() {
            return None;
        }
        let key = std::str::from_utf8(&body[..key_len]).ok()?.to_owned();
        let rest = &body[key_len..];
        match kind {
            "P" => Some(ChangeMessage::Put {
                key,
                revision,
                ttl: u64::try_from(ttl_ms).ok().map(Duration::from_millis),
                value: rest.to_vec(),
            }),
            "D" if rest.is_empty() => Some(ChangeMessage::Delete { key, revision }),
            _ => None,
        }
    }

    /// The message bytes, as the scripts build them (used by tests and fixtures).
    pub fn encode(&self) -> Vec<u8> {
        let (header, key, value): (String, &str, &[u8]) = match self {
            ChangeMessage::Put {
                key,
                revision,
                ttl,
                value,
            } => {
                let ttl = ttl.map_or(-1, |t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
                (format!("P {revision} {ttl} {}\n", key.len()), key, value)
            }
            ChangeMessage::Delete { key, revision } => {
                (format!("D {revision} 0 {}\n", key.len()), key, &[])
            }
        };
        let mut out = header.into_bytes();
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(value);
        out
    }
}

/// A TTL as the `PX` argument of the scripts: whole milliseconds, at least 1; 0 for none.
pub fn ttl_millis(ttl: Option<Duration>) -> u64 {
    match ttl {
        None => 0,
        Some(t) => u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ocis_node_syntax() {
        let parsed = parse_sentinel_nodes(&nodes(&[
            "sentinel-1:26379/mymaster",
            "10.0.0.2:26380/mymaster",
        ]))
        .unwrap();
        assert_eq!(parsed.master, "mymaster");
        assert_eq!(parsed.sentinels, ["sentinel-1:26379", "10.0.0.2:26380"]);
    }

    #[test]
    fn mistakes_name_the_entry() {
        let err = |l: &[&str]| parse_sentinel_nodes(&nodes(l)).unwrap_err();
        assert_eq!(err(&["a:1/m", "b:2"]).0, 1);
        assert_eq!(err(&["a:1/"]).0, 0);
        assert_eq!(err(&["a/m"]).0, 0);
        assert_eq!(err(&["a:0/m"]).0, 0);
        assert_eq!(err(&[":1/m"]).0, 0);
        let (i, msg) = err(&["a:1/m", "b:2/other"]);
        assert_eq!(i, 1);
        assert!(msg.contains("\"other\"") && msg.contains("\"m\""), "{msg}");
        assert_eq!(err(&[]).0, 0);
    }

    #[test]
    fn keys_as_go_micro_builds_them() {
        // go-micro: fmt.Sprintf("%s%s", options.Table, key), no separator.
        assert_eq!(data_key("signing-keys", "einstein"), "signing-keyseinstein");
        assert_eq!(data_key("", "einstein"), "einstein");
        assert_eq!(
            revision_key("signing-keyseinstein"),
            "gatehouse:rev:signing-keyseinstein"
        );
        assert_eq!(change_channel("t"), "gatehouse:changes:t");
    }

    #[test]
    fn keyspace_notifications_of_a_table() {
        assert_eq!(
            keyspace_pattern("signing-keys"),
            "__keyspace@0__:signing-keys*"
        );
        assert_eq!(
            keyspace_pattern("a*b?[c]\\"),
            r"__keyspace@0__:a\*b\?\[c\]\\*"
        );
        assert_eq!(keyspace_pattern(""), "__keyspace@0__:*");
        assert_eq!(
            keyspace_key("__keyspace@0__:signing-keyseinstein", "signing-keys").as_deref(),
            Some("einstein")
        );
        assert_eq!(keyspace_key("__keyspace@0__:other", "signing-keys"), None);
        assert_eq!(keyspace_key("__keyspace@0__:gatehouse:revision", ""), None);
        assert_eq!(keyspace_key("__keyspace@0__:gatehouse:rev:k", ""), None);
        assert_eq!(keyspace_key("__keyspace@0__:k", "").as_deref(), Some("k"));
        assert_eq!(keyspace_key("gatehouse:changes:", ""), None);
    }

    #[test]
    fn change_messages_round_trip() {
        let put = ChangeMessage::Put {
            key: "a b\nc".to_owned(),
            revision: 42,
            ttl: Some(Duration::from_millis(1500)),
            value: b"\x00\nvalue".to_vec(),
        };
        assert_eq!(put.encode(), b"P 42 1500 5\na b\nc\x00\nvalue");
        assert_eq!(ChangeMessage::decode(&put.encode()), Some(put));
        let forever = ChangeMessage::Put {
            key: "k".to_owned(),
            revision: 1,
            ttl: None,
            value: Vec::new(),
        };
        assert_eq!(forever.encode(), b"P 1 -1 1\nk");
        assert_eq!(ChangeMessage::decode(&forever.encode()), Some(forever));
        let del = ChangeMessage::Delete {
            key: "k".to_owned(),
            revision: 7,
        };
        assert_eq!(del.encode(), b"D 7 0 1\nk");
        assert_eq!(ChangeMessage::decode(&del.encode()), Some(del));
    }

    #[test]
    fn malformed_messages_are_ignored() {
        for bad in [
            &b""[..],
            b"P 1 -1 1",
            b"P x -1 1\nk",
            b"P 1 -1 9\nk",
            b"X 1 -1 1\nk",
            b"D 1 0 1\nkv",
            b"P 1 -1 1 extra\nk",
            b"P 1 -1 1\n\xff",
        ] {
            assert_eq!(ChangeMessage::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ttl_in_whole_milliseconds() {
        assert_eq!(ttl_millis(None), 0);
        assert_eq!(ttl_millis(Some(Duration::from_micros(10))), 1);
        assert_eq!(ttl_millis(Some(Duration::from_secs(2))), 2000);
    }
}
