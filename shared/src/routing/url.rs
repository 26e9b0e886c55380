//! Small URL pieces the router needs on every request, written to avoid allocation: query
//! parameter lookup with `application/x-www-form-urlencoded` decoding (as Go's `url.Query`), the
//! upstream path/query join of the reverse proxy, and cookie lookup in a raw `Cookie` header.

/// The value of one hexadecimal digit of a percent escape.
pub(super) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Form-decodes `raw` byte by byte (`+` is a space). `None` when an escape is invalid.
fn form_decoded(raw: &str) -> impl Iterator<Item = Option<u8>> + '_ {
    let bytes = raw.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *bytes.get(i)?;
        match b {
            b'%' => {
                let decoded = bytes
                    .get(i + 1)
                    .copied()
                    .and_then(hex_value)
                    .zip(bytes.get(i + 2).copied().and_then(hex_value))
                    .map(|(hi, lo)| hi << 4 | lo);
                i = if decoded.is_some() {
                    i + 3
                } else {
                    bytes.len()
                };
                Some(decoded)
            }
            b'+' => {
                i += 1;
                Some(Some(b' '))
            }
            _ => {
                i += 1;
                Some(Some(b))
            }
        }
    })
}

fn is_valid_form_encoding(raw: &str) -> bool {
    form_decoded(raw).all(|b| b.is_some())
}

/// Whether form-decoding `raw` yields exactly `want`. Callers check validity first.
fn form_decodes_to(raw: &str, want: &[u8]) -> bool {
    let mut want = want.iter();
    for b in form_decoded(raw) {
        match (b, want.next()) {
            (Some(got), Some(expected)) if got == *expected => {}
            _ => return false,
        }
    }
    want.next().is_none()
}

/// Form-decodes `raw` into a `String` (lossy for non-UTF-8). Used only at configuration time.
pub(crate) fn form_decode_owned(raw: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = form_decoded(raw).collect();
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Splits a raw query into `(key, value)` pairs like Go's `url.ParseQuery`: `&`-separated, pairs
/// containing `;` or an invalid escape are skipped, empty pairs ignored.
pub(crate) fn raw_query_pairs(raw: &str) -> impl Iterator<Item = (&str, &str)> {
    raw.split('&')
        .filter(|pair| !pair.is_empty() && !pair.contains(';'))
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .filter(|(k, v)| is_valid_form_encoding(k) && is_valid_form_encoding(v))
}

/// Whether the first value of `key` in `query` equals `want` after decoding; a missing key has
/// the value `""` (Go's `Values.Get`).
pub(crate) fn query_first_value_is(query: Option<&str>, key: &str, want: &str) -> bool {
    let first = query.and_then(|q| {
        raw_query_pairs(q).find_map(|(k, v)| form_decodes_to(k, key.as_bytes()).then_some(v))
    });
    match first {
        Some(v) => form_decodes_to(v, want.as_bytes()),
        None => want.is_empty(),
    }
}

/// Joins `a` and `b` with exactly one slash between them (Go's `singleJoiningSlash`).
pub fn single_joining_slash(a: &str, b: &str) -> String {
    let mut out = String::with_capacity(a.len() + b.len() + 1);
    match (a.ends_with('/'), b.starts_with('/')) {
        (true, true) => {
            out.push_str(a);
            out.push_str(&b[1..]);
        }
        (false, false) => {
            out.push_str(a);
            out.push('/');
            out.push_str(b);
        }
        _ => {
            out.push_str(a);
            out.push_str(b);
        }
    }
    out
}

/// The path and query sent upstream (spec §1.3 rewrite hook): the backend's base path joined to
/// the request path with a single slash, then the backend query and the request query joined by
/// `&` (either may be absent).
pub fn upstream_path_and_query(
    backend_base_path: &str,
    backend_query: Option<&str>,
    req_path: &str,
    req_query: Option<&str>,
) -> String {
    let backend_query = backend_query.unwrap_or("");
    let req_query = req_query.unwrap_or("");
    let mut out = single_joining_slash(backend_base_path, req_path);
    out.reserve(backend_query.len() + req_query.len() + 2);
    if !backend_query.is_empty() || !req_query.is_empty() {
        out.push('?');
        out.push_str(backend_query);
        if !backend_query.is_empty() && !req_query.is_empty() {
            out.push('&');
        }
        out.push_str(req_query);
    }
    out
}

/// Whether [`upstream_path_and_query`] returns the request's own path and query unchanged
/// (`path`, then `?query` when there is one): the backend adds no base path and no query. The
/// proxy then forwards the request's already validated path and query as they are.
pub fn upstream_path_is_unchanged(
    backend_base_path: &str,
    backend_query: Option<&str>,
    req_path: &str,
    req_query: Option<&str>,
) -> bool {
    matches!(backend_base_path, "" | "/")
        && backend_query.is_none_or(str::is_empty)
        && req_path.starts_with('/')
        && req_query != Some("")
}

fn is_valid_cookie_value_byte(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'"' && b != b';' && b != b'\\'
}

/// The value of the first cookie called `name` in a raw `Cookie` header (`a=b; c=d`), with
/// surrounding double quotes removed, as Go's `Request.Cookie`. Cookies with invalid values are
/// skipped.
pub fn cookie_value<'h>(cookie_header: &'h str, name: &str) -> Option<&'h str> {
    cookie_header.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        if k.trim() != name {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|inner| inner.strip_suffix('"'))
            .unwrap_or(v);
        v.bytes().all(is_valid_cookie_value_byte).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_joining_slash_cases() {
        // TestSingleJoiningSlash
        for (a, b) in [("a", "b"), ("a/", "b"), ("a", "/b"), ("a/", "/b")] {
            assert_eq!(single_joining_slash(a, b), "a/b", "{a} + {b}");
        }
        assert_eq!(single_joining_slash("", "/dav"), "/dav");
        assert_eq!(single_joining_slash("/", "/dav"), "/dav");
    }

    #[test]
    fn an_unchanged_upstream_path_is_the_request_path_and_query() {
        let bases = ["", "/", "/base", "/base/", "base"];
        let backend_queries = [None, Some(""), Some("k=v")];
        let paths = ["/", "/a/b", "/a/", "", "a", "//a"];
        let queries = [None, Some(""), Some("x=1"), Some("x=1&y")];
        for base in bases {
            for bq in backend_queries {
                for path in paths {
                    for q in queries {
                        let own = match q {
                            Some(q) => format!("{path}?{q}"),
                            None => path.to_owned(),
                        };
                        let joined = upstream_path_and_query(base, bq, path, q);
                        if upstream_path_is_unchanged(base, bq, path, q) {
                            assert_eq!(joined, own, "{base:?} {bq:?} {path:?} {q:?}");
                        }
                    }
                }
            }
        }
        assert!(upstream_path_is_unchanged("", None, "/a", Some("x=1")));
        assert!(upstream_path_is_unchanged("/", Some(""), "/a", None));
        assert!(!upstream_path_is_unchanged("/base", None, "/a", None));
        assert!(!upstream_path_is_unchanged("", Some("k=v"), "/a", None));
        assert!(!upstream_path_is_unchanged("", None, "/a", Some("")));
    }

    #[test]
    fn upstream_path_and_query_cases() {
        assert_eq!(upstream_path_and_query("", None, "/api", None), "/api");
        assert_eq!(
            upstream_path_and_query("/service1/", None, "/api", None),
            "/service1/api"
        );
        assert_eq!(
            upstream_path_and_query("", None, "/api", Some("format=json")),
            "/api?format=json"
        );
        assert_eq!(
            upstream_path_and_query("/base", Some("k=v"), "/x", Some("a=1")),
            "/base/x?k=v&a=1"
        );
        assert_eq!(
            upstream_path_and_query("/base", Some("k=v"), "/x", None),
            "/base/x?k=v"
        );
        assert_eq!(
            upstream_path_and_query("/base", Some(""), "/x", Some("")),
            "/base/x"
        );
    }

    #[test]
    fn query_lookup_decodes_and_takes_first_value() {
        let q = Some("a=1&b=x%20y&a=2&c=d+e&bad=%zz&semi=1;x");
        assert!(query_first_value_is(q, "a", "1"));
        assert!(!query_first_value_is(q, "a", "2"));
        assert!(query_first_value_is(q, "b", "x y"));
        assert!(query_first_value_is(q, "c", "d e"));
        assert!(query_first_value_is(q, "missing", ""));
        assert!(!query_first_value_is(q, "missing", "1"));
        assert!(query_first_value_is(q, "bad", ""));
        assert!(query_first_value_is(q, "semi", ""));
        assert!(query_first_value_is(Some("pre%76iew=1"), "preview", "1"));
        assert!(query_first_value_is(Some("flag"), "flag", ""));
        assert!(!query_first_value_is(None, "preview", "1"));
        assert!(!query_first_value_is(Some("preview=10"), "preview", "1"));
        assert!(!query_first_value_is(Some("preview=1"), "preview", "10"));
    }

    #[test]
    fn cookie_lookup() {
        let h = "a=1; owncloud-selector=oc10;other=x";
        assert_eq!(cookie_value(h, "owncloud-selector"), Some("oc10"));
        assert_eq!(cookie_value(h, "a"), Some("1"));
        assert_eq!(cookie_value(h, "other"), Some("x"));
        assert_eq!(cookie_value(h, "missing"), None);
        assert_eq!(cookie_value("sel=\"quoted\"", "sel"), Some("quoted"));
        assert_eq!(cookie_value("sel=", "sel"), Some(""));
        assert_eq!(cookie_value("sel=a\\b; sel=ok", "sel"), Some("ok"));
        assert_eq!(cookie_value("xsel=1; sel=2", "sel"), Some("2"));
        assert_eq!(cookie_value("", "sel"), None);
    }
}
