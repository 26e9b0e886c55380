//! Router and selector tests: the upstream router/selector cases (spec §9.4), the default table,
//! and the path-hygiene bypass attempts against the default table.

use serde_json::json;

use super::*;

fn route(kind: RouteType, method: &str, endpoint: &str, target: &str) -> RouteConfig {
    let (backend, service) = if target.contains("://") {
        (target.to_owned(), String::new())
    } else {
        (String::new(), target.to_owned())
    };
    RouteConfig {
        kind,
        method: method.into(),
        endpoint: endpoint.into(),
        backend,
        service,
        ..Default::default()
    }
}

fn prefix(endpoint: &str, target: &str) -> RouteConfig {
    route(RouteType::Prefix, "", endpoint, target)
}

fn policy(name: &str, routes: Vec<RouteConfig>) -> PolicyConfig {
    PolicyConfig {
        name: name.into(),
        routes,
    }
}

fn get<'a>(path: &'a str, query: Option<&'a str>) -> RouteRequest<'a> {
    RouteRequest {
        method: "GET",
        path,
        query,
        ..Default::default()
    }
}

fn service_of<'a>(m: &RouteMatch<'a>) -> &'a str {
    match m.target {
        Target::Service(s) => s,
        Target::Backend(b) => &b.authority,
    }
}

/// Whether a single-route policy (no fallback) matches `target` (path with optional query).
fn single_route_matches(kind: RouteType, endpoint: &str, target: &str) -> bool {
    let router = Router::new(&[policy("p", vec![route(kind, "", endpoint, "hit")])], None).unwrap();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    match router.route(&get(path, query)) {
        Ok(m) => {
            assert_eq!(service_of(&m), "hit");
            true
        }
        Err(RoutingError::NoRoute { policy }) => {
            assert_eq!(policy, "p");
            false
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn prefix_route_matcher() {
    // TestPrefixRouteMatcher
    assert!(single_route_matches(
        RouteType::Prefix,
        "/foobar",
        "/foobar/baz/some/url"
    ));
    assert!(!single_route_matches(
        RouteType::Prefix,
        "/fobar",
        "/foobar/baz/some/url"
    ));
    // "/" is never a prefix match, only the fallback: later routes still get their chance.
    let r = Router::new(
        &[policy("p", vec![prefix("/", "root"), prefix("/x", "x")])],
        None,
    )
    .unwrap();
    assert_eq!(service_of(&r.route(&get("/x/y", None)).unwrap()), "x");
    assert_eq!(service_of(&r.route(&get("/y", None)).unwrap()), "root");
}

#[test]
fn query_route_matcher() {
    // TestQueryRouteMatcher
    let t = "/foobar/baz/some/url?parameter=true";
    assert!(single_route_matches(
        RouteType::Query,
        "/foobar?parameter=true",
        t
    ));
    assert!(!single_route_matches(
        RouteType::Query,
        "/foobar?parameter=false",
        t
    ));
    assert!(!single_route_matches(
        RouteType::Query,
        "/foobar?parameter=false&other=true",
        t
    ));
    assert!(single_route_matches(
        RouteType::Query,
        "/foobar?parameter=false&other=true",
        "/foobar/baz/some/url?parameter=false&other=true"
    ));
    assert!(!single_route_matches(
        RouteType::Query,
        "/fobar?parameter=true",
        "/foobar?parameter=true"
    ));
    // An endpoint without a query can never match: refused at start-up instead.
    let err = Router::new(
        &[policy(
            "p",
            vec![route(RouteType::Query, "", "/foobar", "s")],
        )],
        None,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("policies[p].routes[0].endpoint"),
        "{err}"
    );
}

#[test]
fn regex_route_matcher() {
    // TestRegexRouteMatcher: the query string is part of the subject of protected routes.
    assert!(single_route_matches(
        RouteType::Regex,
        r".*some\/url.*parameter=true",
        "/foobar/baz/some/url?parameter=true"
    ));
    assert!(!single_route_matches(RouteType::Regex, r"^/x$", "/foobar"));
    // An invalid regex is refused at start-up (oCIS logs it and never matches).
    let err = Router::new(
        &[policy(
            "p",
            vec![route(RouteType::Regex, "", r"([\])\w+", "s")],
        )],
        None,
    )
    .unwrap_err();
    let RoutingError::InvalidConfig(issues) = &err else {
        panic!("{err}")
    };
    assert_eq!(issues[0].field, "policies[p].routes[0].endpoint");
    assert!(issues[0].message.contains("regular expression"));
}

#[test]
fn router_method_specific_routes() {
    // TestRouter
    let policies = [policy(
        "default",
        vec![
            RouteConfig {
                unprotected: true,
                ..prefix("/web/unprotected/demo/", "http://web")
            },
            prefix("/dav", "http://ocdav"),
            route(RouteType::Prefix, "REPORT", "/dav", "http://ocis-webdav"),
        ],
    )];
    let router = Router::new(&policies, None).unwrap();
    let at = |method: &str, path: &str| {
        let m = router
            .route(&RouteRequest {
                method,
                path,
                ..Default::default()
            })
            .unwrap();
        (
            service_of(&m).to_owned(),
            m.unprotected,
            m.policy.to_owned(),
        )
    };
    assert_eq!(
        at("PROPFIND", "/dav/files/demo/"),
        ("ocdav".into(), false, "default".into())
    );
    assert_eq!(
        at("REPORT", "/dav/files/demo/"),
        ("ocis-webdav".into(), false, "default".into())
    );
    assert_eq!(
        at("GET", "/web/unprotected/demo/"),
        ("web".into(), true, "default".into())
    );
}

fn upstream_url(router: &Router, method: &str, path: &str, query: Option<&str>) -> String {
    let m = router
        .route(&RouteRequest {
            method,
            path,
            query,
            ..Default::default()
        })
        .unwrap();
    let Target::Backend(b) = m.target else {
        panic!("service target")
    };
    format!(
        "{}://{}{}",
        b.scheme,
        b.authority,
        upstream_path_and_query(&b.base_path, b.base_query.as_deref(), path, query)
    )
}

#[test]
fn proxy_integration_rewrites() {
    // TestProxyIntegration, as URL building.
    let one = |r: RouteConfig| Router::new(&[policy("ocis", vec![r])], None).unwrap();
    let r = one(prefix("/api", "http://api.example.com"));
    assert_eq!(
        upstream_url(&r, "GET", "/api", None),
        "http://api.example.com/api"
    );
    let r = one(prefix("/api", "http://api.example.com/service1/"));
    assert_eq!(
        upstream_url(&r, "POST", "/api", None),
        "http://api.example.com/service1/api"
    );
    let r = one(route(
        RouteType::Query,
        "",
        "/api?format=json",
        "http://backend/",
    ));
    assert_eq!(
        upstream_url(&r, "GET", "/api", Some("format=json")),
        "http://backend/api?format=json"
    );
    let r = one(route(
        RouteType::Regex,
        "",
        r"\/user\/(\d+)",
        "http://backend/",
    ));
    assert_eq!(
        upstream_url(&r, "POST", "/user/1234", None),
        "http://backend/user/1234"
    );

    let two = Router::new(
        &[policy(
            "ocis",
            vec![
                prefix("/api", "http://api.example.com"),
                prefix("/payment", "http://payment.example.com"),
            ],
        )],
        None,
    )
    .unwrap();
    assert_eq!(
        upstream_url(&two, "GET", "/payment", None),
        "http://payment.example.com/payment"
    );
    assert_eq!(
        upstream_url(&two, "GET", "/api", None),
        "http://api.example.com/api"
    );

    let mixed = Router::new(
        &[policy(
            "ocis",
            vec![
                prefix("/api", "http://api.example.com"),
                route(
                    RouteType::Regex,
                    "",
                    r"\/user\/(\d+)",
                    "http://users.example.com",
                ),
            ],
        )],
        None,
    )
    .unwrap();
    assert_eq!(
        upstream_url(&mixed, "GET", "/api", None),
        "http://api.example.com/api"
    );
    assert_eq!(
        upstream_url(&mixed, "GET", "/user/1234", None),
        "http://users.example.com/user/1234"
    );

    let with_query = one(prefix("/x", "https://b.example:8443/base?k=v"));
    assert_eq!(
        upstream_url(&with_query, "GET", "/x/y", Some("a=1")),
        "https://b.example:8443/base/x/y?k=v&a=1"
    );
}

#[test]
fn backend_urls_are_parsed_and_validated() {
    let r = Router::new(&[policy("p", vec![prefix("/", "http://h:1/b?q=1")])], None).unwrap();
    let m = r.route(&get("/x", None)).unwrap();
    assert_eq!(
        m.target,
        &Target::Backend(Backend {
            scheme: "http".into(),
            authority: "h:1".into(),
            base_path: "/b".into(),
            base_query: Some("q=1".into()),
        })
    );
    for bad in [
        "ftp://h/",
        "//h/x",
        "http://",
        "http://user:pw@h/",
        "not a url",
        "/relative",
    ] {
        let routes = vec![RouteConfig {
            endpoint: "/".into(),
            backend: bad.into(),
            ..Default::default()
        }];
        let err = Router::new(&[policy("p", routes)], None).unwrap_err();
        assert!(
            err.to_string().contains("policies[p].routes[0].backend"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn service_wins_over_backend() {
    let r = Router::new(
        &[policy(
            "p",
            vec![RouteConfig {
                backend: "http://b".into(),
                ..prefix("/x", "svc")
            }],
        )],
        None,
    )
    .unwrap();
    assert_eq!(
        r.route(&get("/x", None)).unwrap().target,
        &Target::Service("svc".into())
    );
}

#[test]
fn configuration_errors_are_collected() {
    let policies = [
        policy(
            "a",
            vec![
                RouteConfig {
                    endpoint: "/x".into(),
                    ..Default::default()
                },
                route(RouteType::Regex, "", "(", "s"),
                route(RouteType::Prefix, "", "x", "s"),
                route(RouteType::Prefix, "", "/x?y=1", "s"),
                route(RouteType::Prefix, "BAD METHOD", "/x", "s"),
            ],
        ),
        policy("a", vec![]),
    ];
    let sel = PolicySelectorConfig::static_policy("nope");
    let RoutingError::InvalidConfig(issues) = Router::new(&policies, Some(&sel)).unwrap_err()
    else {
        panic!()
    };
    let fields: Vec<&str> = issues.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "policies[a].routes[0]",
            "policies[a].routes[1].endpoint",
            "policies[a].routes[2].endpoint",
            "policies[a].routes[3].endpoint",
            "policies[a].routes[4].method",
            "policies[a].name",
            "policy_selector.static.policy",
        ]
    );
    assert!(issues[0].message.contains("neither backend nor service"));
    assert!(Router::new(&[], None).is_err());
}

#[test]
fn no_fallback_is_an_error_not_a_panic() {
    let r = Router::new(
        &[policy(
            "p",
            vec![
                route(RouteType::Regex, "REPORT", "^/dav", "webdav"),
                prefix("/x", "x"),
            ],
        )],
        None,
    )
    .unwrap();
    let req = RouteRequest {
        method: "REPORT",
        path: "/foo",
        ..Default::default()
    };
    assert_eq!(
        r.route(&req),
        Err(RoutingError::NoRoute { policy: "p".into() })
    );
}

#[test]
fn fallback_prefers_method_bucket_and_finds_root_anywhere() {
    let r = Router::new(
        &[policy(
            "p",
            vec![
                prefix("/x", "x"),
                prefix("/", "generic-root"),
                route(RouteType::Prefix, "POST", "/", "post-root"),
            ],
        )],
        None,
    )
    .unwrap();
    assert_eq!(
        service_of(&r.route(&get("/nothing", None)).unwrap()),
        "generic-root"
    );
    let post = RouteRequest {
        method: "POST",
        path: "/nothing",
        ..Default::default()
    };
    let m = r.route(&post).unwrap();
    assert_eq!(
        (service_of(&m), m.route_index, m.endpoint),
        ("post-root", 2, "/")
    );
}

// ---- the default table -------------------------------------------------------------------

fn default_router() -> Router {
    Router::new(&default_policies(), None).unwrap()
}

fn route_default(method: &str, raw_path: &str, query: Option<&str>) -> (String, bool) {
    let router = default_router();
    let path = normalize_path(raw_path).unwrap();
    let m = router
        .route(&RouteRequest {
            method,
            path: &path,
            query,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(m.policy, "ocis");
    (
        service_of(&m)
            .trim_start_matches("com.owncloud.")
            .to_owned(),
        m.unprotected,
    )
}

#[test]
fn every_default_route_reaches_its_service() {
    let router = default_router();
    let defaults = &default_policies()[0];
    for (i, r) in defaults.routes.iter().enumerate() {
        // A request that this route (and not an earlier, more specific one) should take.
        let (method, path, query): (&str, String, Option<&str>) =
            match (r.kind, r.endpoint.as_str()) {
                (RouteType::Prefix, "/") => ("GET", "/unknown/page".into(), None),
                (RouteType::Prefix, e) => ("GET", format!("{e}zz"), None),
                (RouteType::Query, e) => {
                    let (p, q) = e.split_once('?').unwrap();
                    ("GET", format!("{p}x"), Some(q))
                }
                (RouteType::Regex, "(/remote.php)?/(web)?dav") => {
                    ("REPORT", "/remote.php/dav/files/x".into(), None)
                }
                (RouteType::Regex, e) => ("GET", e.replace("v[12]", "v2"), None),
            };
        // Prefixes that are extended by a later, longer prefix need a path that avoids it.
        let path = match r.endpoint.as_str() {
            "/status" => "/statuszz".to_owned(),
            "/webdav/" => "/webdav/zz".to_owned(),
            "/ocs/v2.php/apps/notifications/api/v1/notifications" => {
                "/ocs/v2.php/apps/notifications/api/v1/notifications/x".to_owned()
            }
            _ => path,
        };
        let m = router
            .route(&RouteRequest {
                method,
                path: &path,
                query,
                ..Default::default()
            })
            .unwrap();
        // `/status` (route 23) is a prefix of `/status.php` and shadows it (same target).
        let expected_index = if r.endpoint == "/status.php" {
            i - 1
        } else {
            i
        };
        assert_eq!(
            (m.route_index, service_of(&m), m.unprotected),
            (expected_index, r.service.as_str(), r.unprotected),
            "route {i} {} via {method} {path}",
            r.endpoint
        );
    }
}

#[test]
fn default_table_spot_checks() {
    assert_eq!(
        route_default("REPORT", "/remote.php/dav/files/x", None),
        ("web.webdav".into(), false)
    );
    assert_eq!(
        route_default("REPORT", "/dav/files/x", None),
        ("web.webdav".into(), false)
    );
    assert_eq!(
        route_default("PROPFIND", "/remote.php/dav/files/x", None),
        ("web.ocdav".into(), false)
    );
    // §11.2: an unmatched REPORT falls through to the prefix routes / the fallback.
    assert_eq!(
        route_default("REPORT", "/foo", None),
        ("web.web".into(), true)
    );
    assert_eq!(
        route_default("REPORT", "/graph/v1.0/me", None),
        ("web.graph".into(), false)
    );
    assert_eq!(
        route_default("GET", "/dav/files/x", Some("preview=1")),
        ("web.webdav".into(), false)
    );
    assert_eq!(
        route_default("GET", "/remote.php/dav/files/x", Some("a=b&preview=1")),
        ("web.webdav".into(), false)
    );
    assert_eq!(
        route_default("GET", "/dav/files/x", Some("preview=0")),
        ("web.ocdav".into(), false)
    );
    // §11.1: query text cannot select the unprotected regex route.
    assert_eq!(
        route_default("GET", "/graph/v1.0/me", Some("x=/ocs/v1.php/config")),
        ("web.graph".into(), false)
    );
    assert_eq!(
        route_default("GET", "/some/unknown/path", None),
        ("web.web".into(), true)
    );
    assert_eq!(
        route_default("GET", "/status.php", None),
        ("web.ocdav".into(), true)
    );
    assert_eq!(
        route_default("GET", "/ocs/v1.php/config", None),
        ("web.frontend".into(), true)
    );
    assert_eq!(
        route_default("GET", "/ocs/v1.php/cloud/user/signing-key", None),
        ("web.ocs".into(), false)
    );
    assert_eq!(
        route_default("GET", "/webdavx", None),
        ("web.ocdav".into(), false)
    );
    assert_eq!(
        route_default("GET", "/datafoo", None),
        ("web.frontend".into(), true)
    );
    assert_eq!(
        route_default("GET", "/app/list", None),
        ("web.frontend".into(), true)
    );
    assert_eq!(
        route_default("GET", "/app/open", None),
        ("web.frontend".into(), false)
    );
}

#[test]
fn bypass_attempts_do_not_reach_unprotected_routes() {
    // Normalised first, then routed: the protected target wins.
    assert_eq!(
        route_default("GET", "/status/../dav/files/x", None),
        ("web.ocdav".into(), false)
    );
    assert_eq!(
        route_default("GET", "/data/../graph/v1.0/me", None),
        ("web.graph".into(), false)
    );
    assert_eq!(
        route_default("GET", "/konnect/./../graph/v1.0/me", None),
        ("web.graph".into(), false)
    );
    assert_eq!(
        route_default("GET", "/./graph/v1.0/me", None),
        ("web.graph".into(), false)
    );
    assert_eq!(
        route_default("GET", "/st%61tus.php", None),
        ("web.ocdav".into(), true)
    );
    assert_eq!(
        route_default("GET", "/%67raph/v1.0/me", None),
        ("web.graph".into(), false)
    );
    // A dot segment with parameters is `..` to some backends and a name to others: refused.
    assert_eq!(
        normalize_path("/dav/..;/status"),
        Err(PathError::AmbiguousDotSegment)
    );
    assert_eq!(
        route_default("GET", "/status;/../dav/files/x", None),
        ("web.ocdav".into(), false)
    );
    // `//` is read as `/`, as the backends read it: this is graph, protected, not the web
    // service behind the unprotected `/`.
    assert_eq!(
        route_default("GET", "//graph/v1.0/me", None),
        ("web.graph".into(), false)
    );
    assert_eq!(
        route_default("GET", "/remote.php//dav/files/x", None),
        ("web.ocdav".into(), false)
    );
    // Text inside a protected path never selects the unprotected `/ocs/v[12].php/config`.
    assert_eq!(
        route_default("GET", "/dav/files/x/ocs/v1.php/config", None),
        ("web.ocdav".into(), false)
    );
    assert_eq!(
        route_default("GET", "/graph/v1.0/ocs/v2.php/config", None),
        ("web.graph".into(), false)
    );
    assert_eq!(
        route_default("GET", "/ocs/v2.php/config", None),
        ("web.frontend".into(), true)
    );
    // Encoded separators are refused before routing.
    for p in [
        "/.well-known/..%2fgraph/",
        "/konnect/%2e%2e/graph",
        "/status%2f..%2fdav",
        "/data%5c..%5cgraph",
    ] {
        assert_eq!(normalize_path(p), Err(PathError::EncodedSeparator), "{p}");
    }
    assert_eq!(
        normalize_path("/status/../../dav"),
        Err(PathError::EscapesRoot)
    );
}

#[test]
fn unprotected_routes_are_never_selected_by_query_text() {
    let r = Router::new(
        &[policy(
            "p",
            vec![
                prefix("/", "web"),
                RouteConfig {
                    unprotected: true,
                    ..route(RouteType::Regex, "", "/a/public", "open")
                },
                route(RouteType::Regex, "", "secret", "closed"),
            ],
        )],
        None,
    )
    .unwrap();
    let m = r.route(&get("/a", Some("x=/a/public"))).unwrap();
    assert_eq!((service_of(&m), m.unprotected), ("web", false));
    let m = r.route(&get("/a/public", Some("x=1"))).unwrap();
    assert_eq!((service_of(&m), m.unprotected), ("open", true));
    // …and only from the start of the path.
    let m = r.route(&get("/b/a/public", None)).unwrap();
    assert_eq!((service_of(&m), m.unprotected), ("web", false));
    // Protected regex routes still see the query (oCIS compatible).
    let m = r.route(&get("/a", Some("x=secret"))).unwrap();
    assert_eq!(service_of(&m), "closed");
}

#[test]
fn method_comparison_is_exact() {
    let r = Router::new(
        &[policy(
            "p",
            vec![
                prefix("/", "web"),
                route(RouteType::Prefix, "REPORT", "/dav", "webdav"),
                prefix("/dav", "ocdav"),
            ],
        )],
        None,
    )
    .unwrap();
    let req = |method| RouteRequest {
        method,
        path: "/dav/x",
        ..Default::default()
    };
    assert_eq!(service_of(&r.route(&req("REPORT")).unwrap()), "webdav");
    assert_eq!(service_of(&r.route(&req("report")).unwrap()), "ocdav");
}

// ---- selectors ----------------------------------------------------------------------------

fn named_policies(names: &[&str]) -> Vec<PolicyConfig> {
    names
        .iter()
        .map(|n| policy(n, vec![prefix("/", n)]))
        .collect()
}

fn selector_yaml(yaml: &str) -> PolicySelectorConfig {
    serde_yaml_ng::from_str(yaml).unwrap()
}

#[test]
fn load_selector() {
    // TestLoadSelector
    let policies = named_policies(&["reva", "a", "b"]);
    let all = selector_yaml(
        "static: {policy: reva}\nclaims: {default_policy: a, unauthenticated_policy: b}\nregex: {default_policy: a, unauthenticated_policy: b}",
    );
    let err = Router::new(&policies, Some(&all)).unwrap_err();
    assert!(
        err.to_string().contains("only one type of policy selector"),
        "{err}"
    );
    let err = Router::new(&policies, Some(&PolicySelectorConfig::default())).unwrap_err();
    assert!(err.to_string().contains("missing either"), "{err}");
    for yaml in [
        "static: {policy: reva}",
        "claims: {default_policy: a, unauthenticated_policy: b}",
        "regex: {default_policy: a, unauthenticated_policy: b}",
    ] {
        Router::new(&policies, Some(&selector_yaml(yaml))).unwrap();
    }
}

#[test]
fn selector_policy_names_must_exist() {
    let policies = named_policies(&["a"]);
    let err = Router::new(
        &policies,
        Some(&selector_yaml(
            "regex:\n  default_policy: a\n  unauthenticated_policy: x\n  matches_policies:\n    - {property: email, match: '(', policy: y}",
        )),
    )
    .unwrap_err();
    let RoutingError::InvalidConfig(issues) = err else {
        panic!()
    };
    let fields: Vec<&str> = issues.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "policy_selector.regex.unauthenticated_policy",
            "policy_selector.regex.matches_policies[0].property",
            "policy_selector.regex.matches_policies[0].match",
            "policy_selector.regex.matches_policies[0].policy",
        ]
    );
    let err = Router::new(
        &policies,
        Some(&selector_yaml("claims: {default_policy: a}")),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("policy_selector.claims.unauthenticated_policy"),
        "{err}"
    );
}

#[test]
fn static_selector() {
    // TestStaticSelector
    let policies = named_policies(&["ocis", "foo"]);
    for name in ["ocis", "foo"] {
        let r = Router::new(&policies, Some(&PolicySelectorConfig::static_policy(name))).unwrap();
        assert_eq!(r.select_policy(&get("/foo", None)).unwrap(), name);
        assert_eq!(r.route(&get("/foo", None)).unwrap().policy, name);
        assert_eq!(r.selector_cookie_name(), None);
    }
    // Without a selector, the first policy.
    let r = Router::new(&policies, None).unwrap();
    assert_eq!(r.select_policy(&get("/", None)).unwrap(), "ocis");
}

#[test]
fn claims_selector() {
    // TestClaimsSelector
    let policies = named_policies(&[
        "default",
        "unauthenticated",
        "ocis.routing.policy-value",
        "cookie",
    ]);
    let r = Router::new(
        &policies,
        Some(&selector_yaml(
            "claims: {default_policy: default, unauthenticated_policy: unauthenticated}",
        )),
    )
    .unwrap();
    assert_eq!(r.selector_cookie_name(), Some("owncloud-selector"));
    let select = |claims: Option<&serde_json::Value>, cookie: Option<&str>| {
        r.select_policy(&RouteRequest {
            method: "GET",
            path: "/",
            claims,
            cookie_header: cookie,
            ..Default::default()
        })
        .map(str::to_owned)
    };
    let empty_claim = json!({ "ocis.routing.policy": "" });
    let claim = json!({ "ocis.routing.policy": "ocis.routing.policy-value" });
    let nested = json!({ "ocis": { "routing": { "policy": "cookie" } } });
    assert_eq!(select(None, None).unwrap(), "unauthenticated");
    assert_eq!(select(Some(&empty_claim), None).unwrap(), "default");
    assert_eq!(
        select(Some(&claim), None).unwrap(),
        "ocis.routing.policy-value"
    );
    assert_eq!(
        select(None, Some("owncloud-selector=cookie")).unwrap(),
        "cookie"
    );
    assert_eq!(
        select(Some(&empty_claim), Some("a=b; owncloud-selector=cookie")).unwrap(),
        "cookie"
    );
    assert_eq!(
        select(Some(&claim), Some("owncloud-selector=cookie")).unwrap(),
        "ocis.routing.policy-value"
    );
    // The claim name is one literal key, not a path.
    assert_eq!(select(Some(&nested), None).unwrap(), "default");
    // An empty cookie counts as absent; an unknown policy is a request-time error.
    assert_eq!(
        select(None, Some("owncloud-selector=")).unwrap(),
        "unauthenticated"
    );
    assert_eq!(
        select(None, Some("owncloud-selector=nope")),
        Err(RoutingError::UnknownPolicy("nope".into()))
    );
    let long = format!("owncloud-selector={}", "x".repeat(500));
    let Err(RoutingError::UnknownPolicy(name)) = select(None, Some(&long)) else {
        panic!()
    };
    assert_eq!(name.len(), 64);
}

#[test]
fn regex_selector() {
    // TestRegexSelector
    let policies = named_policies(&["default", "unauthenticated", "ocis", "oc10"]);
    let sel = selector_yaml(
        r#"
regex:
  default_policy: default
  unauthenticated_policy: unauthenticated
  selector_cookie_name: sel
  matches_policies:
    - {priority: 40, property: username, match: ".+", policy: oc10}
    - {priority: 10, property: mail, match: "marie@example.org", policy: ocis}
    - {priority: 60, property: id, match: "f7fbf8c8-139b-4376-b307-cf0a8c2d0d9c", policy: oc10}
    - {priority: 20, property: mail, match: "[^@]+@example.org", policy: oc10}
    - {priority: 50, property: id, match: "4c510ada-c86b-4815-8820-42cdf82c3d51", policy: ocis}
    - {priority: 30, property: username, match: "(einstein|feynman)", policy: ocis}
"#,
    );
    let r = Router::new(&policies, Some(&sel)).unwrap();
    assert_eq!(r.selector_cookie_name(), Some("sel"));
    let select = |user: Option<UserProperties>, cookie: Option<&str>| {
        r.select_policy(&RouteRequest {
            method: "GET",
            path: "/",
            user: user.as_ref(),
            cookie_header: cookie,
            ..Default::default()
        })
        .unwrap()
        .to_owned()
    };
    let user = |id: &str, username: &str, mail: &str| {
        Some(UserProperties {
            id: id.into(),
            username: username.into(),
            mail: mail.into(),
        })
    };
    assert_eq!(select(None, None), "unauthenticated");
    assert_eq!(select(user("", "", ""), None), "default");
    assert_eq!(select(user("", "", "marie@example.org"), None), "ocis");
    assert_eq!(select(user("", "", "einstein@example.org"), None), "oc10");
    assert_eq!(select(user("", "einstein", ""), None), "ocis");
    assert_eq!(select(user("", "feynman", ""), None), "ocis");
    assert_eq!(select(user("", "marie", ""), None), "oc10");
    assert_eq!(
        select(user("4c510ada-c86b-4815-8820-42cdf82c3d51", "", ""), None),
        "ocis"
    );
    assert_eq!(
        select(user("f7fbf8c8-139b-4376-b307-cf0a8c2d0d9c", "", ""), None),
        "oc10"
    );
    // The cookie wins over everything.
    assert_eq!(select(user("", "einstein", ""), Some("sel=oc10")), "oc10");
    assert_eq!(select(None, Some("sel=ocis")), "ocis");
    assert_eq!(
        select(None, Some("owncloud-selector=ocis")),
        "unauthenticated"
    );
}

#[test]
fn router_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    assert_send_sync(&default_router());
}
