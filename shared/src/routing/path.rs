//! Fail-closed request-path hygiene, applied before routing; the normalised path is also the one
//! forwarded upstream, so the gateway and the backend always agree on what was requested.
//!
//! Why: routing decides whether a request is authenticated. If the gateway matched one spelling
//! of a path (`/status/../dav/files/x` starts with the unprotected `/status`) while the backend
//! resolved another (`/dav/files/x`), a client could reach a protected resource without
//! credentials — the classic auth-proxy bypass. So ambiguous spellings are either rejected or
//! rewritten to their one canonical form:
//!
//! * rejected (answer 400): a path not starting with `/`, control bytes, a backslash, invalid
//!   percent escapes, percent-encoded `.`, `/`, `\` and NUL (`%2e`, `%2f`, `%5c`, `%00`, any case)
//!   — backends decode these differently, so there is no safe canonical form —, and `..` segments
//!   that would climb above the root;
//! * rewritten: `.` and `..` segments are removed (RFC 3986 §5.2.4), and percent-encoded
//!   unreserved characters (letters, digits, `-`, `_`, `~`) are decoded (RFC 3986 §6.2.2.2), so
//!   `/st%61tus` is routed like `/status`, as oCIS does when it matches on the decoded path;
//! * kept: empty segments (`//`) — some WebDAV clients send them and collapsing them would change
//!   the resource name; `;` (no path parameters are interpreted anywhere); other escapes.

use std::borrow::Cow;

use super::url::hex_value;

/// Why a request path was refused. All variants mean "400 Bad Request"; none is retryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request path must start with '/'")]
    NotAbsolute,
    #[error("request path contains a control character")]
    ControlCharacter,
    #[error("request path contains a backslash")]
    Backslash,
    #[error("request path contains an invalid percent escape")]
    InvalidPercentEncoding,
    #[error("request path contains a percent-encoded '.', '/', '\\' or NUL")]
    EncodedSeparator,
    #[error("request path climbs above the root with '..'")]
    EscapesRoot,
}

fn is_decodable_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~')
}

/// Checks `raw` and returns its canonical form (borrowed when already canonical).
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut needs_decoding = false;
    // A dot segment starts with `.` right after a slash; most paths have none to look for.
    let mut dot_after_slash = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::InvalidPercentEncoding);
                };
                let decoded = hi << 4 | lo;
                if matches!(decoded, b'.' | b'/' | b'\\' | 0) {
                    return Err(PathError::EncodedSeparator);
                }
                needs_decoding |= is_decodable_unreserved(decoded);
                i += 3;
                continue;
            }
            b'.' => dot_after_slash |= bytes[i - 1] == b'/',
            _ => {}
        }
        i += 1;
    }
    let has_dot_segment = dot_after_slash && raw[1..].split('/').any(|s| s == "." || s == "..");
    if !needs_decoding && !has_dot_segment {
        return Ok(Cow::Borrowed(raw));
    }

    let decoded: Cow<'_, str> = if needs_decoding {
        Cow::Owned(decode_unreserved(raw))
    } else {
        Cow::Borrowed(raw)
    };
    if !has_dot_segment {
        return Ok(decoded);
    }
    remove_dot_segments(&decoded).map(Cow::Owned)
}

fn decode_unreserved(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // The caller validated every escape, so both hex digits are present.
            if let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) {
                let b = hi << 4 | lo;
                if is_decodable_unreserved(b) {
                    out.push_str(&raw[start..i]);
                    out.push(char::from(b));
                    start = i + 3;
                }
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    out.push_str(&raw[start..]);
    out
}

/// `path` starts with `/`. Segments are the pieces between slashes, so `//` yields an empty
/// segment that is kept.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = false;
        match segment {
            "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        normalize_path(raw)
            .unwrap_or_else(|e| panic!("{raw}: {e}"))
            .into_owned()
    }

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/dav/files/einstein/a%20b.txt",
            "/remote.php//dav",
            "/a;b/c",
            "/%23hash",
            "/file..txt",
            "/.well-known/openid-configuration",
            "/...",
        ] {
            assert!(
                matches!(normalize_path(p), Ok(Cow::Borrowed(s)) if s == p),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(ok("/a/./b"), "/a/b");
        assert_eq!(ok("/a/b/../c"), "/a/c");
        assert_eq!(ok("/a/."), "/a/");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/./"), "/");
        assert_eq!(ok("/."), "/");
        assert_eq!(ok("/status/../dav/files/x"), "/dav/files/x");
        assert_eq!(ok("/a//../b"), "/a/b");
        assert_eq!(ok("/a/..;/b"), "/a/..;/b");
    }

    #[test]
    fn climbing_above_root_is_rejected() {
        assert_eq!(normalize_path("/.."), Err(PathError::EscapesRoot));
        assert_eq!(normalize_path("/a/../.."), Err(PathError::EscapesRoot));
        assert_eq!(
            normalize_path("/../etc/passwd"),
            Err(PathError::EscapesRoot)
        );
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_kept() {
        assert_eq!(ok("/st%61tus"), "/status");
        assert_eq!(ok("/%7Euser/%2D%5F"), "/~user/-_");
        assert_eq!(ok("/a%20b/%40/%3F"), "/a%20b/%40/%3F");
        assert_eq!(ok("/x/%61/../y"), "/x/y");
    }

    #[test]
    fn ambiguous_spellings_are_rejected() {
        for (p, e) in [
            ("", PathError::NotAbsolute),
            ("dav/files", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/a\\..\\b", PathError::Backslash),
            ("/a\u{0}b", PathError::ControlCharacter),
            ("/a\nb", PathError::ControlCharacter),
            ("/a\u{7f}", PathError::ControlCharacter),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/%2e%2e/x", PathError::EncodedSeparator),
            ("/%2E", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a%5C", PathError::EncodedSeparator),
            ("/a%00", PathError::EncodedSeparator),
            ("/a%zz", PathError::InvalidPercentEncoding),
            ("/a%4", PathError::InvalidPercentEncoding),
            ("/a%", PathError::InvalidPercentEncoding),
        ] {
            assert_eq!(normalize_path(p), Err(e), "{p:?}");
        }
    }
}
