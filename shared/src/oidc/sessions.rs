//! What the user-info cache holds besides claims, so that a back-channel logout reaches every
//! session it names on every node and keeps them out (spec §7.3).
//!
//! oCIS keeps only `sid` → token hash, pointing at the latest token of a session, and logout just
//! evicts that one cache record: the next request re-verifies the still-valid JWT and is let in
//! again, older tokens of the session stay cached, and logout by `sub` is impossible. Gatehouse
//! adds, in the same store (so they are as shared as the claims):
//!
//! - a **session list per subject** ([`sessions_key`]): every cached token hash of the subject
//!   with its `sid` and `exp`. The store has no key listing, so this is one record updated by
//!   compare-and-set: writers on different nodes retry instead of overwriting each other.
//!   Expired entries are pruned on every write and the record expires with its last token.
//! - **logout markers** ("tombstones"): [`logged_out_sid_key`] (the session ended) and
//!   [`logged_out_sub_key`] (every token of the subject issued at or before the stored time is
//!   refused). They are read on a claims-cache miss only, so requests served from the cache pay
//!   nothing, and they live as long as a token issued before the logout could.
//!
//! The key prefixes cannot be produced by [`token_cache_key`](crate::auth::token_hash) (88
//! base64url characters) and are not plausible OIDC `sid` values, so the records share the
//! bucket with oCIS nodes without colliding with theirs; oCIS never reads them.

use serde::{Deserialize, Serialize};

/// Prefix of the per-subject session lists.
pub const SESSIONS_PREFIX: &str = "gatehouse:sessions:";
/// Prefix of both kinds of logout marker.
pub const LOGGED_OUT_PREFIX: &str = "gatehouse:logged-out:";
/// Sessions kept per subject; beyond this the entries expiring first are dropped (a dropped
/// token is still refused after a logout by `sub` once its cached claims expire, just not
/// evicted at once).
pub const MAX_SESSIONS: usize = 256;

pub fn sessions_key(sub: &str) -> String {
    format!("{SESSIONS_PREFIX}{sub}")
}

pub fn logged_out_sid_key(sid: &str) -> String {
    format!("{LOGGED_OUT_PREFIX}sid:{sid}")
}

pub fn logged_out_sub_key(sub: &str) -> String {
    format!("{LOGGED_OUT_PREFIX}sub:{sub}")
}

/// Whether a change to `key` means that a session was logged out (what per-worker memos of
/// accepted tokens must react to).
pub fn is_logout_marker(key: &str) -> bool {
    key.starts_with(LOGGED_OUT_PREFIX)
}

/// One cached token of a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    /// The user-info cache key of the token.
    #[serde(rename = "h")]
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// When the cached claims expire (Unix seconds).
    pub exp: i64,
}

/// The session list of one subject, as stored (JSON array).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionList(pub Vec<SessionEntry>);

impl SessionList {
    /// Decodes a stored list. A value that does not decode (another writer's bug, a foreign
    /// record) counts as empty: it is overwritten by the next write.
    pub fn decode(bytes: &[u8]) -> Self {
        Self(serde_json::from_slice(bytes).unwrap_or_default())
    }

    pub fn encode(&self) -> Vec<u8> {
        // A Vec of plain structs always serialises.
        serde_json::to_vec(&self.0).unwrap_or_else(|_| b"[]".to_vec())
    }

    /// Adds (or refreshes) `entry`, drops entries expired at `now`, and keeps at most
    /// [`MAX_SESSIONS`], preferring the ones that expire last. Returns whether anything changed.
    pub fn add(&mut self, entry: SessionEntry, now: i64) -> bool {
        let before = self.0.len();
        self.0.retain(|e| e.exp > now);
        let mut changed = self.0.len() != before;
        match self.0.iter_mut().find(|e| e.hash == entry.hash) {
            Some(existing) if *existing == entry => {}
            Some(existing) => {
                *existing = entry;
                changed = true;
            }
            None if entry.exp > now => {
                self.0.push(entry);
                changed = true;
            }
            None => {}
        }
        if self.0.len() > MAX_SESSIONS {
            self.0.sort_by_key(|e| std::cmp::Reverse(e.exp));
            self.0.truncate(MAX_SESSIONS);
        }
        changed
    }

    /// The latest expiry in the list.
    pub fn last_exp(&self) -> Option<i64> {
        self.0.iter().map(|e| e.exp).max()
    }

    /// Token hashes of the session `sid`.
    pub fn hashes_of_sid<'a>(&'a self, sid: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |e| e.sid.as_deref() == Some(sid))
            .map(|e| e.hash.as_str())
    }
}

/// The value of a `sub` marker: the logout time (Unix seconds), decimal ASCII.
pub fn encode_logout_time(t: i64) -> Vec<u8> {
    t.to_string().into_bytes()
}

/// The value of a `sid` marker: the logout time, then — when the logout was traced — the
/// `traceparent` of the request that recorded it, so that the nodes reacting to the marker can
/// link their work to that trace. Only the marker's presence is ever checked.
pub fn encode_sid_marker(t: i64, traceparent: Option<&str>) -> Vec<u8> {
    match traceparent {
        Some(tp) => format!("{t} {tp}").into_bytes(),
        None => encode_logout_time(t),
    }
}

/// The `traceparent` a logout marker carries, if any.
pub fn marker_traceparent(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?;
    let (_, tp) = text.split_once(' ')?;
    Some(tp.trim()).filter(|tp| !tp.is_empty())
}

/// `None` for a value that is not a decimal integer.
pub fn decode_logout_time(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

/// Why a token is refused by a logout marker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoggedOut {
    #[error("the session was logged out")]
    Session,
    #[error("the subject was logged out after this token was issued")]
    Subject,
}

/// Decides from the markers found for a token's `sid` and `sub` whether the token is refused.
/// `sub_logout` is the stored logout time of the subject; a token is refused when it was issued
/// (`iat`) at or before it. A token without `iat` cannot be dated and is not refused by a
/// subject logout (the provider's userinfo answer is then the only check, as in oCIS).
pub fn check_markers(
    sid_marker: bool,
    sub_logout: Option<i64>,
    iat: Option<i64>,
) -> Result<(), LoggedOut> {
    if sid_marker {
        return Err(LoggedOut::Session);
    }
    match (sub_logout, iat) {
        (Some(t), Some(iat)) if iat <= t => Err(LoggedOut::Subject),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hash: &str, sid: Option<&str>, exp: i64) -> SessionEntry {
        SessionEntry {
            hash: hash.into(),
            sid: sid.map(Into::into),
            exp,
        }
    }

    #[test]
    fn the_list_prunes_refreshes_and_caps() {
        let mut list = SessionList::default();
        assert!(list.add(entry("a", Some("s1"), 200), 100));
        assert!(list.add(entry("b", Some("s1"), 300), 100));
        assert!(list.add(entry("c", None, 150), 100));
        // Same hash again with the same data: nothing changes.
        assert!(!list.add(entry("a", Some("s1"), 200), 100));
        assert_eq!(list.hashes_of_sid("s1").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(list.last_exp(), Some(300));
        // At 160, "c" has expired and is pruned by the next write.
        assert!(list.add(entry("d", Some("s2"), 400), 160));
        assert_eq!(
            list.0.iter().map(|e| e.hash.as_str()).collect::<Vec<_>>(),
            ["a", "b", "d"]
        );
        // An already expired token is not added.
        list.add(entry("old", None, 100), 160);
        assert!(list.0.iter().all(|e| e.hash != "old"));

        let bytes = list.encode();
        assert_eq!(SessionList::decode(&bytes), list);
        assert_eq!(SessionList::decode(b"garbage"), SessionList::default());

        let mut full = SessionList::default();
        for i in 0..=MAX_SESSIONS as i64 {
            full.add(entry(&format!("h{i}"), None, 1000 + i), 0);
        }
        assert_eq!(full.0.len(), MAX_SESSIONS);
        assert!(
            full.0.iter().all(|e| e.hash != "h0"),
            "earliest expiry dropped"
        );
    }

    #[test]
    fn markers_refuse_the_session_and_older_tokens_of_the_subject() {
        assert_eq!(check_markers(false, None, Some(5)), Ok(()));
        assert_eq!(check_markers(true, None, Some(5)), Err(LoggedOut::Session));
        assert_eq!(
            check_markers(false, Some(10), Some(9)),
            Err(LoggedOut::Subject)
        );
        assert_eq!(
            check_markers(false, Some(10), Some(10)),
            Err(LoggedOut::Subject)
        );
        assert_eq!(check_markers(false, Some(10), Some(11)), Ok(()));
        assert_eq!(check_markers(false, Some(10), None), Ok(()));
    }

    #[test]
    fn keys_and_values() {
        assert_eq!(
            marker_traceparent(&encode_sid_marker(
                7,
                Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            )),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(marker_traceparent(&encode_sid_marker(7, None)), None);
        assert_eq!(marker_traceparent(b"7"), None);
        assert!(is_logout_marker(&logged_out_sid_key("s")));
        assert!(is_logout_marker(&logged_out_sub_key("u")));
        assert!(!is_logout_marker(&sessions_key("u")));
        assert!(!is_logout_marker("s"));
        assert_ne!(logged_out_sid_key("x"), logged_out_sub_key("x"));
        assert_eq!(
            decode_logout_time(&encode_logout_time(1_700_000_000)),
            Some(1_700_000_000)
        );
        assert_eq!(decode_logout_time(b"soon"), None);
    }
}
