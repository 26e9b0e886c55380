//! Shared harness code for the fuzz targets in `fuzz_targets/`: the routers are built once per
//! process, and the properties checked after every routed request live here so that the raw and
//! the structure-aware router targets assert the same things.

use std::sync::LazyLock;

use gatehouse_shared::routing::{
    ClaimsSelector, PolicyConfig, PolicySelectorConfig, RouteConfig, RouteRequest, RouteType,
    Router, Target, effective_policies, normalize_path, upstream_path_and_query,
};

/// The policies of a node started without any routing configuration (oCIS's defaults), plus an
/// extra policy reachable only through the selector cookie, served by a static backend with a
/// base path and query so that the upstream rewrite runs too.
pub static POLICIES: LazyLock<Vec<PolicyConfig>> = LazyLock::new(|| {
    let extra = PolicyConfig {
        name: "other".to_owned(),
        routes: vec![
            RouteConfig {
                endpoint: "/".to_owned(),
                backend: "http://other.internal:8080/base?tenant=1".to_owned(),
                ..Default::default()
            },
            RouteConfig {
                kind: RouteType::Regex,
                method: "PROPFIND".to_owned(),
                endpoint: "^/dav/(spaces|files)/[^/]+$".to_owned(),
                backend: "https://dav.internal/".to_owned(),
                ..Default::default()
            },
        ],
    };
    effective_policies(&[], &[extra])
});

/// The router of a node with the default configuration (static selector: always `ocis`).
pub static DEFAULT_ROUTER: LazyLock<Router> = LazyLock::new(|| {
    Router::new(&effective_policies(&[], &[]), None).expect("the default routes compile")
});

/// The same routes behind a claims selector, so the selector cookie picks the policy.
pub static COOKIE_ROUTER: LazyLock<Router> = LazyLock::new(|| {
    let selector = PolicySelectorConfig {
        claims: Some(ClaimsSelector {
            default_policy: "ocis".to_owned(),
            unauthenticated_policy: "ocis".to_owned(),
            selector_cookie_name: String::new(),
        }),
        ..Default::default()
    };
    Router::new(&POLICIES, Some(&selector)).expect("the fuzz routes compile")
});

/// Normalises `raw_path` and routes the request on both routers, checking:
/// * a normalised path starts with `/`, has no `.`/`..` segment, no backslash, no control byte, and
///   normalising it again changes nothing (the gateway and the backend see one spelling);
/// * a path that needed no rewriting is returned unchanged;
/// * text in the query cannot select an unprotected regex route that the path alone would not,
///   and such a route matches from the start of the path;
/// * a normalised path has no repeated slash, decodes to UTF-8 and has no segment that decodes to
///   a dot segment with parameters or padding;
/// * the upstream path of a static backend starts with the backend's base path.
pub fn route_and_check(method: &str, raw_path: &str, query: Option<&str>, cookie: Option<&str>) {
    let Ok(path) = normalize_path(raw_path) else {
        return;
    };
    check_normalised(raw_path, &path);

    let req = RouteRequest {
        method,
        path: &path,
        query,
        cookie_header: cookie,
        ..Default::default()
    };
    if let Ok(m) = DEFAULT_ROUTER.route(&req) {
        let with_query = (m.policy_index, m.route_index, m.unprotected);
        let route = &effective_default()[m.policy_index].routes[m.route_index];
        if route.kind == RouteType::Regex && m.unprotected {
            let anchored = regex::Regex::new(&format!("^(?:{})", route.endpoint))
                .expect("the default regexes compile");
            assert!(
                anchored.is_match(&path),
                "the unprotected regex route {:?} matched {path:?} not at its start",
                route.endpoint
            );
        }
        if route.kind == RouteType::Regex && m.unprotected && query.is_some_and(|q| !q.is_empty()) {
            let without = DEFAULT_ROUTER
                .route(&RouteRequest { query: None, ..req })
                .map(|m| (m.policy_index, m.route_index, m.unprotected));
            assert_eq!(
                without,
                Ok(with_query),
                "the query selected an unprotected regex route for {path:?}"
            );
        }
    }
    if let Ok(m) = COOKIE_ROUTER.route(&req)
        && let Target::Backend(b) = m.target
    {
        let upstream = upstream_path_and_query(&b.base_path, b.base_query.as_deref(), &path, query);
        assert!(
            upstream.starts_with(b.base_path.trim_end_matches('/')),
            "{upstream:?} left the backend base path {:?}",
            b.base_path
        );
    }
}

fn effective_default() -> &'static [PolicyConfig] {
    static DEFAULT: LazyLock<Vec<PolicyConfig>> = LazyLock::new(|| effective_policies(&[], &[]));
    &DEFAULT
}

/// The path with every escape decoded, if that is UTF-8.
fn percent_decoded(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn check_normalised(raw: &str, path: &str) {
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
    assert!(
        !path[1..].split('/').any(|s| s == "." || s == ".."),
        "{raw:?} -> {path:?} keeps a dot segment"
    );
    assert!(
        !path.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\'),
        "{raw:?} -> {path:?}"
    );
    assert!(!path.contains("//"), "{raw:?} -> {path:?} keeps a repeated slash");
    assert!(
        percent_decoded(path).is_some(),
        "{raw:?} -> {path:?} does not decode to UTF-8"
    );
    if let Some(decoded) = percent_decoded(path) {
        assert!(
            !decoded[1..].split('/').any(|s| {
                let s = s.split(';').next().unwrap_or_default().trim();
                s == "." || s == ".."
            }),
            "{raw:?} -> {path:?} decodes to a dot segment: {decoded:?}"
        );
    }
    match normalize_path(path) {
        Ok(again) => assert_eq!(again, path, "normalising {raw:?} is not idempotent"),
        Err(e) => panic!("{raw:?} -> {path:?}, which is then refused: {e}"),
    }
    let plain = !raw.contains('%')
        && !raw.contains("//")
        && !raw[1..].split('/').any(|s| s == "." || s == "..");
    if plain {
        assert_eq!(
            path, raw,
            "a path without escapes or dot segments was rewritten"
        );
    }
}
