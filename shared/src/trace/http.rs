//! The OpenTelemetry HTTP semantic conventions as Gatehouse applies them: span names, the set of
//! known methods, redaction of secrets in query strings, and the CLIENT span of every HTTP call
//! the gateway makes itself (identity provider, share service, LibreGraph, upstreams).

use std::borrow::Cow;

use http::{Method, StatusCode, Uri};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanBuilder, SpanKind};
use opentelemetry_semantic_conventions::attribute as semconv;

use super::Span;

/// The method as the conventions name it: the RFC 9110/5789 methods and the WebDAV methods
/// Gatehouse routes (the same set its metrics keep) are known; anything else is `_OTHER`, with
/// the original in `http.request.method_original`.
pub fn method_name(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        "PROPFIND" => "PROPFIND",
        "PROPPATCH" => "PROPPATCH",
        "MKCOL" => "MKCOL",
        "COPY" => "COPY",
        "MOVE" => "MOVE",
        "LOCK" => "LOCK",
        "UNLOCK" => "UNLOCK",
        "REPORT" => "REPORT",
        "SEARCH" => "SEARCH",
        _ => "_OTHER",
    }
}

/// `http.request.method` (and `http.request.method_original` for an unknown method).
pub fn method_attributes(method: &Method) -> Vec<KeyValue> {
    let name = method_name(method);
    let mut out = vec![KeyValue::new(semconv::HTTP_REQUEST_METHOD, name)];
    if name == "_OTHER" {
        out.push(KeyValue::new(
            semconv::HTTP_REQUEST_METHOD_ORIGINAL,
            method.as_str().to_owned(),
        ));
    }
    out
}

/// `{method} {route}`, or `{method}` while the route is not known: never the raw path, whose
/// cardinality is unbounded.
pub fn span_name(method: &Method, route: Option<&str>) -> Cow<'static, str> {
    let method = method_name(method);
    match route {
        Some(route) if !route.is_empty() => Cow::Owned(format!("{method} {route}")),
        _ => Cow::Borrowed(method),
    }
}

/// Query parameters whose values are credentials: signed-URL signatures, share tokens and
/// signatures, OAuth tokens, passwords, and the cloud-storage signatures the conventions name.
const SECRET_PARAMETERS: &[&str] = &[
    "oc-signature",
    "signature",
    "sig",
    "public-token",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "password",
    "awsaccesskeyid",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
];

/// The value that replaces a secret.
pub const REDACTED: &str = "REDACTED";

/// `query` with the value of every credential-carrying parameter replaced by `REDACTED` (names
/// compared case-insensitively, before percent-decoding, as a backend would see them).
pub fn redact_query(query: &str) -> Cow<'_, str> {
    let secret = |pair: &str| {
        let name = pair.split('=').next().unwrap_or("");
        SECRET_PARAMETERS
            .iter()
            .any(|s| name.eq_ignore_ascii_case(s))
    };
    if !query.split('&').any(secret) {
        return Cow::Borrowed(query);
    }
    let parts: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret(pair) => Cow::Owned(format!("{name}={REDACTED}")),
            _ => Cow::Borrowed(pair),
        })
        .collect();
    Cow::Owned(parts.join("&"))
}

/// `uri` as `url.full`, its query redacted.
pub fn full_url(uri: &Uri) -> String {
    let mut out = String::with_capacity(64);
    if let Some(scheme) = uri.scheme_str() {
        out.push_str(scheme);
        out.push_str("://");
    }
    if let Some(authority) = uri.authority() {
        out.push_str(authority.host());
        if let Some(port) = authority.port_u16() {
            out.push(':');
            out.push_str(&port.to_string());
        }
    }
    out.push_str(uri.path());
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(&redact_query(q));
    }
    out
}

/// The port a URI talks to: explicit, or the scheme's default.
pub fn port_of(uri: &Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })
}

/// The CLIENT span of an HTTP call to `uri`, a child of the current span (see [`Span::child`]).
/// `peer` names the service called (`service.peer.name`): `idp`, `share-service`, `graph`, or the
/// route's service for upstream calls. `target`, when given, completes the name
/// (`GET userinfo`); it must be of low cardinality.
pub fn client_span(method: &Method, uri: &Uri, peer: &str, target: Option<&str>) -> Span {
    Span::child_with(|| {
        let mut attributes = method_attributes(method);
        if let Some(host) = uri.host() {
            attributes.push(KeyValue::new(semconv::SERVER_ADDRESS, host.to_owned()));
        }
        if let Some(port) = port_of(uri) {
            attributes.push(KeyValue::new(semconv::SERVER_PORT, i64::from(port)));
        }
        attributes.push(KeyValue::new(semconv::URL_FULL, full_url(uri)));
        attributes.push(KeyValue::new(semconv::SERVICE_PEER_NAME, peer.to_owned()));
        let name: Cow<'static, str> = match target {
            Some(t) => Cow::Owned(format!("{} {t}", method_name(method))),
            None => Cow::Borrowed(method_name(method)),
        };
        SpanBuilder::from_name(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
    })
}

/// Records the answer of a client call: `http.response.status_code`, and ERROR for 4xx and 5xx
/// (a client span fails on both).
pub fn record_client_status(span: &Span, status: StatusCode) {
    span.set(
        semconv::HTTP_RESPONSE_STATUS_CODE,
        i64::from(status.as_u16()),
    );
    if status.is_client_error() || status.is_server_error() {
        span.fail(status.as_str().to_owned(), format!("answered {status}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webdav_methods_are_known_and_others_collapse() {
        assert_eq!(method_name(&Method::GET), "GET");
        assert_eq!(
            method_name(&Method::from_bytes(b"PROPFIND").unwrap()),
            "PROPFIND"
        );
        let odd = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_name(&odd), "_OTHER");
        let attrs = method_attributes(&odd);
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[1].value.as_str(), "BREW");
        assert_eq!(
            method_name(&Method::from_bytes(b"get").unwrap()),
            "_OTHER",
            "methods are case-sensitive"
        );
    }

    #[test]
    fn span_names_use_the_route_never_the_path() {
        assert_eq!(span_name(&Method::GET, None), "GET");
        assert_eq!(
            span_name(&Method::PUT, Some("/remote.php/")),
            "PUT /remote.php/"
        );
        assert_eq!(span_name(&Method::GET, Some("")), "GET");
    }

    #[test]
    fn secrets_in_queries_are_redacted() {
        assert_eq!(redact_query("a=1&b=2"), "a=1&b=2");
        assert!(matches!(redact_query("a=1"), Cow::Borrowed(_)));
        assert_eq!(
            redact_query("OC-Credential=alice&OC-Signature=abc123&OC-Verb=GET"),
            "OC-Credential=alice&OC-Signature=REDACTED&OC-Verb=GET"
        );
        assert_eq!(
            redact_query("public-token=tok&signature=s&expiration=x&PASSWORD=p"),
            "public-token=REDACTED&signature=REDACTED&expiration=x&PASSWORD=REDACTED"
        );
        assert_eq!(redact_query("token"), "token", "a bare name has no value");
        assert_eq!(redact_query("tokens=1"), "tokens=1");
    }

    #[test]
    fn full_urls_keep_scheme_host_port_path_and_redact_queries() {
        let uri: Uri = "https://idp.example:8443/userinfo?access_token=t&x=1"
            .parse()
            .unwrap();
        assert_eq!(
            full_url(&uri),
            "https://idp.example:8443/userinfo?access_token=REDACTED&x=1"
        );
        let plain: Uri = "http://10.0.0.1/graph/v1.0/me".parse().unwrap();
        assert_eq!(full_url(&plain), "http://10.0.0.1/graph/v1.0/me");
        assert_eq!(port_of(&plain), Some(80));
        assert_eq!(port_of(&uri), Some(8443));
    }
}
