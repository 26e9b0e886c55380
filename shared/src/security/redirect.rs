//! The HTTPS redirect (spec §3.6, newest oCIS): a request that a proxy in front reports as plain
//! HTTP (`X-Forwarded-Proto` exactly `http` or `HTTP`) is sent to the same path and query on the
//! configured public URL's host — never on the request's own `Host`, which the client controls
//! and would make the gateway an open redirector. Without a public URL nothing is redirected.

/// The redirect target host, taken from the public URL once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsRedirect {
    host: Option<String>,
}

impl HttpsRedirect {
    /// `trusted_url` is the public URL (`OCIS_URL`); empty, scheme-less or host-less disables
    /// redirects.
    pub fn new(trusted_url: &str) -> Self {
        let host = trusted_url
            .parse::<http::Uri>()
            .ok()
            .filter(|uri| uri.scheme().is_some())
            .and_then(|uri| uri.authority().cloned())
            .map(|authority| {
                let authority = authority.as_str();
                authority
                    .rsplit_once('@')
                    .map_or(authority, |(_, host)| host)
                    .trim()
                    .to_owned()
            })
            .filter(|host| !host.is_empty());
        HttpsRedirect { host }
    }

    /// The `Location` for a 308 answer, or `None` when the request passes on.
    pub fn location(
        &self,
        forwarded_proto: Option<&str>,
        path: &str,
        query: Option<&str>,
    ) -> Option<String> {
        if !matches!(forwarded_proto, Some("http" | "HTTP")) {
            return None;
        }
        let host = self.host.as_deref()?;
        let query = query.filter(|q| !q.is_empty());
        let mut out =
            String::with_capacity(8 + host.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        out.push_str("https://");
        out.push_str(host);
        out.push_str(path);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

/// One-shot form of [`HttpsRedirect::location`].
pub fn https_redirect(
    trusted_url: &str,
    forwarded_proto: Option<&str>,
    path: &str,
    query: Option<&str>,
) -> Option<String> {
    HttpsRedirect::new(trusted_url).location(forwarded_proto, path, query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_trusted_host() {
        // TestHTTPSRedirect_UsesTrustedHost (the request Host is not an input at all)
        assert_eq!(
            https_redirect(
                "https://trusted.ocis.local",
                Some("http"),
                "/foo",
                Some("bar=1")
            )
            .as_deref(),
            Some("https://trusted.ocis.local/foo?bar=1")
        );
    }

    #[test]
    fn only_exact_http_proto_redirects() {
        let r = HttpsRedirect::new("https://cloud.example.com:9200/ignored/path");
        assert_eq!(
            r.location(Some("HTTP"), "/a", None).as_deref(),
            Some("https://cloud.example.com:9200/a")
        );
        for proto in [
            None,
            Some("https"),
            Some("Http"),
            Some(" http"),
            Some("http, https"),
            Some(""),
        ] {
            assert_eq!(r.location(proto, "/a", None), None, "{proto:?}");
        }
        assert_eq!(
            r.location(Some("http"), "/a", Some("")).as_deref(),
            Some("https://cloud.example.com:9200/a")
        );
    }

    #[test]
    fn no_trusted_host_means_no_redirect() {
        for url in ["", "cloud.example.com", "/path", "https://", "not a url"] {
            assert_eq!(
                https_redirect(url, Some("http"), "/a", None),
                None,
                "{url:?}"
            );
        }
        assert_eq!(
            https_redirect("https://user@cloud.example.com", Some("http"), "/a", None).as_deref(),
            Some("https://cloud.example.com/a")
        );
    }
}
