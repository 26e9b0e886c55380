//! Fail-closed request-path hygiene, applied before routing and before any authenticator looks
//! at the request; the normalised path is also the one forwarded upstream, so the gateway and the
//! backend always agree on what was requested.
//!
//! Why: routing decides whether a request is authenticated. If the gateway matched one spelling
//! of a path (`/status/../dav/files/x` starts with the unprotected `/status`) while the backend
//! resolved another (`/dav/files/x`), a client could reach a protected resource without
//! credentials — the classic auth-proxy bypass. So every spelling a backend could read in more than
//! one way is either refused (400) or rewritten to the one reading the router then uses. Each class
//! and the reason for its treatment are listed in `docs/security.md` ("One reading of every path"):
//!
//! * refused: a path not starting with `/`; control bytes, raw or percent-encoded; a backslash,
//!   raw or encoded; invalid percent escapes; percent-encoded `.`, `/` and NUL; a `%25` whose
//!   second decoding gives one of those (or another `%`); escapes that do not decode to valid
//!   UTF-8 (overlong forms such as `%c0%ae` included); dot segments carrying path parameters
//!   (`..;x`) or padded with whitespace (`..%20`); and `..` segments that would climb above the root;
//! * rewritten: runs of `/` become one (Go's `path.Clean`, and most servers, read `//` as `/`);
//!   `.` and `..` segments are removed (RFC 3986 §5.2.4); percent-encoded unreserved characters
//!   (letters, digits, `-`, `_`, `~`) are decoded (RFC 3986 §6.2.2.2), so `/st%61tus` is routed
//!   like `/status`, as oCIS does when it matches on the decoded path;
//! * kept: `;` elsewhere (no path parameters are interpreted anywhere) and other valid escapes.

use std::borrow::Cow;

use super::url::hex_value;

/// Why a request path was refused. All variants mean "400 Bad Request"; none is retryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request path must start with '/'")]
    NotAbsolute,
    #[error("request path contains a control character (raw or percent-encoded)")]
    ControlCharacter,
    #[error("request path contains a backslash")]
    Backslash,
    #[error("request path contains an invalid percent escape")]
    InvalidPercentEncoding,
    #[error("request path contains a percent-encoded '.', '/', '\\' or NUL")]
    EncodedSeparator,
    #[error(
        "request path contains a percent-encoded '%' that decodes to a separator on a second decoding"
    )]
    DoubleEncoded,
    #[error("request path does not decode to valid UTF-8")]
    InvalidUtf8,
    #[error("request path has a dot segment with parameters or padding")]
    AmbiguousDotSegment,
    #[error("request path climbs above the root with '..'")]
    EscapesRoot,
}

fn is_decodable_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~')
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// The byte `%XY` at `bytes[i..]` stands for, if `bytes[i]` starts a valid escape.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    if bytes.get(i) != Some(&b'%') {
        return None;
    }
    let hi = bytes.get(i + 1).copied().and_then(hex_value)?;
    let lo = bytes.get(i + 2).copied().and_then(hex_value)?;
    Some(hi << 4 | lo)
}

/// A hex digit at `bytes[j..]`, plain (`2`) or itself encoded (`%32`): its value and length.
fn hex_digit_at(bytes: &[u8], j: usize) -> Option<(u8, usize)> {
    match escape_at(bytes, j) {
        Some(b) => hex_value(b).map(|v| (v, 3)),
        None => bytes.get(j).copied().and_then(hex_value).map(|v| (v, 1)),
    }
}

/// What a second decoding reads after a `%25` that ends at `j`: the byte of the two hex digits
/// there, each plain or encoded (`%252e`, `%25%32%65`, `%252%65`).
fn second_decoding(bytes: &[u8], j: usize) -> Option<u8> {
    let (hi, len) = hex_digit_at(bytes, j)?;
    let (lo, _) = hex_digit_at(bytes, j + len)?;
    Some(hi << 4 | lo)
}

/// Checks `raw` and returns its canonical form (borrowed when already canonical).
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut needs_decoding = false;
    let mut non_ascii_escape = false;
    let mut repeated_slash = false;
    // Dot segments (plain, with parameters or padded) all contain a `.`; most paths have a dot
    // only in file names, and the segment check below runs only then.
    let mut has_dot = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b if is_control(b) => return Err(PathError::ControlCharacter),
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let Some(decoded) = escape_at(bytes, i) else {
                    return Err(PathError::InvalidPercentEncoding);
                };
                match decoded {
                    b'.' | b'/' | b'\\' | 0 => return Err(PathError::EncodedSeparator),
                    b if is_control(b) => return Err(PathError::ControlCharacter),
                    b'%' => {
                        if let Some(second) = second_decoding(bytes, i + 3)
                            && (matches!(second, b'.' | b'/' | b'\\' | b'%') || is_control(second))
                        {
                            return Err(PathError::DoubleEncoded);
                        }
                    }
                    b if b >= 0x80 => non_ascii_escape = true,
                    b => needs_decoding |= is_decodable_unreserved(b),
                }
                i += 3;
                continue;
            }
            b'/' => repeated_slash |= bytes.get(i + 1) == Some(&b'/'),
            b'.' => has_dot = true,
            _ => {}
        }
        i += 1;
    }
    if non_ascii_escape && !decodes_to_utf8(bytes) {
        return Err(PathError::InvalidUtf8);
    }
    let mut has_dot_segment = false;
    if has_dot || non_ascii_escape {
        for segment in raw[1..]
            .split('/')
            .filter(|s| s.contains('.') || s.contains('%'))
        {
            match classify_segment(segment) {
                Segment::Plain => {}
                Segment::Dot => has_dot_segment = true,
                Segment::Ambiguous => return Err(PathError::AmbiguousDotSegment),
            }
        }
    }
    if !needs_decoding && !has_dot_segment && !repeated_slash {
        return Ok(Cow::Borrowed(raw));
    }

    let mut path: Cow<'_, str> = if needs_decoding {
        Cow::Owned(decode_unreserved(raw))
    } else {
        Cow::Borrowed(raw)
    };
    if repeated_slash {
        path = Cow::Owned(collapse_slashes(&path));
    }
    if !has_dot_segment {
        return Ok(path);
    }
    remove_dot_segments(&path).map(Cow::Owned)
}

/// `bytes` with every valid escape decoded (others kept as they are).
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match escape_at(bytes, i) {
            Some(b) => {
                decoded.push(b);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    decoded
}

/// Whether `bytes` (every escape valid, checked by the caller) decodes to valid UTF-8.
fn decodes_to_utf8(bytes: &[u8]) -> bool {
    std::str::from_utf8(&percent_decode(bytes)).is_ok()
}

enum Segment {
    /// Not a dot segment in any reading.
    Plain,
    /// `.` or `..`, to be resolved.
    Dot,
    /// A dot segment to some readers only: `..;param`, `..%20`, `.%09`, `..%3b`.
    Ambiguous,
}

/// `segment` has no `%2e` (refused earlier).
fn classify_segment(segment: &str) -> Segment {
    if segment == "." || segment == ".." {
        return Segment::Dot;
    }
    // What a lenient reader makes of it: decoded, parameters cut off, whitespace trimmed, and
    // look-alike dots (full-width, one-dot leader, small full stop) folded as NFKC does.
    let decoded = String::from_utf8_lossy(&percent_decode(segment.as_bytes())).into_owned();
    let before_params = decoded.split(';').next().unwrap_or_default();
    let trimmed = before_params.trim_matches(|c: char| c.is_whitespace() || c.is_control());
    let dots = trimmed.chars().count();
    if (1..=2).contains(&dots)
        && trimmed
            .chars()
            .all(|c| matches!(c, '.' | '\u{ff0e}' | '\u{2024}' | '\u{fe52}'))
    {
        Segment::Ambiguous
    } else {
        Segment::Plain
    }
}

fn collapse_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous_slash = false;
    for c in path.chars() {
        if c == '/' && previous_slash {
            continue;
        }
        previous_slash = c == '/';
        out.push(c);
    }
    out
}

fn decode_unreserved(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(b) = escape_at(bytes, i) {
            if is_decodable_unreserved(b) {
                out.push_str(&raw[start..i]);
                out.push(char::from(b));
                start = i + 3;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    out.push_str(&raw[start..]);
    out
}

/// `path` starts with `/` and has no repeated slashes.
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
            "/dav/files/einstein/%C3%A4rger.txt",
            "/a;b/c",
            "/a/.hidden;x",
            "/100%25.txt",
            "/%25zz",
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
        assert_eq!(ok("/a//../b"), "/b");
    }

    #[test]
    fn repeated_slashes_become_one() {
        assert_eq!(ok("//remote.php/dav"), "/remote.php/dav");
        assert_eq!(ok("/remote.php//dav///files/"), "/remote.php/dav/files/");
        assert_eq!(ok("//"), "/");
        assert_eq!(ok("//open/../files/x"), "/files/x");
    }

    #[test]
    fn lenient_readings_of_dot_segments_are_refused() {
        for p in [
            "/a/..;/b",
            "/a/.;x/b",
            "/a/..;jsessionid=1",
            "/a/..%3b/b",
            "/a/..%20/b",
            "/a/%20../b",
            "/a/..%C2%A0/b",
            "/a/%EF%BC%8E%EF%BC%8E/b",
            "/a/%E2%80%A4/b",
        ] {
            assert_eq!(
                normalize_path(p),
                Err(PathError::AmbiguousDotSegment),
                "{p}"
            );
        }
        // Not dot segments to anyone.
        assert_eq!(ok("/a/...;x"), "/a/...;x");
        assert_eq!(ok("/a/.. b"), "/a/.. b");
    }

    #[test]
    fn second_decodings_to_separators_are_refused() {
        for p in [
            "/a/%252e%252e/b",
            "/a/%252E/b",
            "/a%252fb",
            "/a%255cb",
            "/a%2500",
            "/a%25%32%65",
            "/a%252%65",
            "/a%2525",
            "/a%250a",
        ] {
            assert_eq!(normalize_path(p), Err(PathError::DoubleEncoded), "{p}");
        }
        assert_eq!(ok("/100%25/x"), "/100%25/x");
        assert_eq!(ok("/a%2541"), "/a%2541");
    }

    #[test]
    fn escapes_must_decode_to_utf8() {
        for p in [
            "/a/%c0%ae%c0%ae/b",
            "/a/%ff",
            "/a/%C3",
            "/a/%e2%82",
            "/a/%ed%a0%80",
        ] {
            assert_eq!(normalize_path(p), Err(PathError::InvalidUtf8), "{p}");
        }
        assert_eq!(ok("/a/%E2%82%AC"), "/a/%E2%82%AC");
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
            ("/a%0a", PathError::ControlCharacter),
            ("/a%0D%0Ab", PathError::ControlCharacter),
            ("/a%7f", PathError::ControlCharacter),
            ("/a%09..", PathError::ControlCharacter),
            ("/a%zz", PathError::InvalidPercentEncoding),
            ("/a%4", PathError::InvalidPercentEncoding),
            ("/a%", PathError::InvalidPercentEncoding),
        ] {
            assert_eq!(normalize_path(p), Err(e), "{p:?}");
        }
    }
}
