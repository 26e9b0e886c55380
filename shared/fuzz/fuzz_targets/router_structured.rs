//! Structure-aware router input: the method and the path segments are drawn mostly from the
//! vocabulary of the oCIS routes (so the fuzzer reaches deep prefixes such as
//! `/ocs/v2.php/apps/notifications/api/v1/notifications/sse` quickly), mixed with dot segments,
//! escapes and arbitrary text.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const METHODS: &[&str] = &[
    "GET",
    "PUT",
    "POST",
    "DELETE",
    "HEAD",
    "OPTIONS",
    "PROPFIND",
    "PROPPATCH",
    "REPORT",
    "MKCOL",
    "MOVE",
    "COPY",
    "LOCK",
    "UNLOCK",
    "SEARCH",
    "get",
];

const SEGMENTS: &[&str] = &[
    "",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    "%2f",
    "%5c",
    "%00",
    "%61",
    "%7E",
    "%20",
    "%",
    "%g0",
    ";",
    "..;",
    ".well-known",
    "ocm",
    "webfinger",
    "openid-configuration",
    "branding",
    "logo",
    "konnect",
    "signin",
    "v1",
    "archiver",
    "ocs",
    "v1.php",
    "v2.php",
    "v3.php",
    "apps",
    "notifications",
    "api",
    "sse",
    "cloud",
    "user",
    "signing-key",
    "config",
    "remote.php",
    "webdav",
    "dav",
    "files",
    "spaces",
    "public-files",
    "meta",
    "trash-bin",
    "graph",
    "v1.0",
    "v1beta1",
    "extensions",
    "org.libregraph",
    "activities",
    "invitations",
    "me",
    "drives",
    "settings",
    "auth-app",
    "tokens",
    "data",
    "app",
    "open",
    "list",
    "thumbnails",
    "status.php",
    "index.php",
    "einstein",
    "a b",
    "ü",
    "\\",
    "?",
    "#",
];

const QUERY_KEYS: &[&str] = &[
    "preview",
    "preview%3D1",
    "pre%76iew",
    "x",
    "OC-Signature",
    "",
];

#[derive(Debug, Arbitrary)]
enum Method {
    Known(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Segment {
    Known(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    method: Method,
    segments: Vec<Segment>,
    trailing_slash: bool,
    query: Option<Vec<(u8, String)>>,
    cookie: Option<String>,
}

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

fuzz_target!(|input: Input| {
    let method = match &input.method {
        Method::Known(i) => pick(METHODS, *i).to_owned(),
        Method::Other(s) => s.clone(),
    };
    let mut path = String::new();
    for s in &input.segments {
        path.push('/');
        match s {
            Segment::Known(i) => path.push_str(pick(SEGMENTS, *i)),
            Segment::Other(s) => path.push_str(s),
        }
    }
    if input.trailing_slash || path.is_empty() {
        path.push('/');
    }
    let query = input.query.as_ref().map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{}={v}", pick(QUERY_KEYS, *k)))
            .collect::<Vec<_>>()
            .join("&")
    });
    let cookie = input
        .cookie
        .as_ref()
        .map(|c| format!("a=b; owncloud-selector={c}"));
    gatehouse_shared_fuzz::route_and_check(&method, &path, query.as_deref(), cookie.as_deref());
});
