//! How the tracing configuration becomes one exporter plan.
//!
//! Three vocabularies meet here: oCIS (`tracing.type/endpoint/collector`, where the default type is
//! Jaeger and the endpoint a `host:port`), the standard OpenTelemetry variables (URLs, protocols,
//! samplers) and the Gatehouse additions (TLS, trust, queue). The environment overlay has already
//! applied their precedence (docs/configuration.md, "Tracing"); this module turns the result into
//! a [`Plan`], or into problems that name the setting, and says what it changed on the way
//! ([`Plan::warnings`]), so that nothing is decided silently.

use std::time::Duration;

use http::Uri;

use crate::config::{ConfigProblem, Tracing};

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Protocol::Grpc => 4317,
            Protocol::HttpProtobuf => 4318,
        }
    }
}

/// How new traces are sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Follow the decision of a (trusted) caller's context when there is one.
    pub parent_based: bool,
    /// Share of traces without a parent that are sampled.
    pub ratio: f64,
}

/// Whose incoming trace context is continued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Peers in `http.trusted_proxies` (the default).
    TrustedProxies,
    Always,
    Never,
}

/// Everything the node needs to export traces.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub protocol: Protocol,
    /// `http(s)://host:port` for gRPC, the full URL of the traces path for HTTP.
    pub url: String,
    /// Extra trust roots for an `https` URL.
    pub ca_file: Option<String>,
    /// Skip certificate verification of an `https` URL.
    pub insecure: bool,
    pub headers: Vec<(String, String)>,
    pub service: String,
    pub resource: Vec<(String, String)>,
    pub sampling: Sampling,
    pub trust: Trust,
    pub export_timeout: Duration,
    pub queue_size: usize,
    /// What was decided on the operator's behalf, to be logged at start-up.
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("https://")
    }
}

/// Resource attributes Gatehouse sets itself; a configured value for them is ignored.
const RESERVED_RESOURCE_KEYS: &[&str] = &["service.name", "service.instance.id", "service.version"];

/// The trust mode alone (needed whether or not tracing is enabled: untrusted callers' context
/// headers are removed either way).
pub fn trust(tracing: &Tracing) -> Result<Trust, ConfigProblem> {
    match tracing.trust_incoming.as_str() {
        "" | "trusted_proxies" => Ok(Trust::TrustedProxies),
        "always" => Ok(Trust::Always),
        "never" => Ok(Trust::Never),
        other => Err(ConfigProblem::new(
            "tracing.trust_incoming",
            format!("{other:?} is not one of trusted_proxies, always, never"),
        )),
    }
}

/// Resolves an enabled tracing configuration; every problem found is returned at once.
pub fn resolve(t: &Tracing) -> Result<Plan, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut problem = |key: &str, message: String| problems.push(ConfigProblem::new(key, message));

    let jaeger = match t.kind.as_str() {
        "" | "jaeger" => true,
        "otlp" => false,
        other => {
            problem(
                "tracing.type",
                format!("{other:?} is not a tracing type (expected otlp or jaeger)"),
            );
            false
        }
    };
    let only_collector = jaeger && t.endpoint.is_empty() && !t.collector.is_empty();
    let protocol = match t.protocol.as_str() {
        "" if only_collector => Protocol::HttpProtobuf,
        "" | "grpc" => Protocol::Grpc,
        "http/protobuf" => Protocol::HttpProtobuf,
        "http/json" => {
            problem(
                "tracing.protocol",
                "http/json is not supported; use grpc or http/protobuf".to_owned(),
            );
            Protocol::Grpc
        }
        other => {
            problem(
                "tracing.protocol",
                format!("{other:?} is not one of grpc, http/protobuf"),
            );
            Protocol::Grpc
        }
    };

    let url = if jaeger {
        let (source, given) = if !t.endpoint.is_empty() {
            ("tracing.endpoint", t.endpoint.as_str())
        } else {
            ("tracing.collector", t.collector.as_str())
        };
        let url = if given.is_empty() {
            Ok(default_url(protocol))
        } else {
            jaeger_to_otlp(given, protocol).map_err(|m| (source, m))
        };
        if let Ok(url) = &url {
            warnings.push(format!(
                "tracing.type is {:?} (Jaeger): Gatehouse has no Jaeger agent or Thrift exporter and sends \
                 OTLP ({}) to {url} instead, which Jaeger accepts natively; set tracing.type: otlp to choose \
                 the endpoint yourself",
                if t.kind.is_empty() { "" } else { "jaeger" },
                protocol.as_str()
            ));
        }
        url
    } else if t.endpoint.is_empty() {
        Ok(default_url(protocol))
    } else {
        otlp_url(&t.endpoint, protocol).map_err(|m| ("tracing.endpoint", m))
    };
    let url = match url {
        Ok(u) => u,
        Err((key, message)) => {
            problem(key, message);
            String::new()
        }
    };

    let https = url.starts_with("https://");
    let ca_file = (!t.ca_file.is_empty()).then(|| t.ca_file.clone());
    if ca_file.is_some() && !https && !url.is_empty() {
        warnings.push(format!(
            "tracing.ca_file is set but the endpoint {url} is not https: the file is not used"
        ));
    }
    if t.insecure && https {
        warnings.push(format!(
            "tracing.insecure: the certificate of {url} is not verified (development only)"
        ));
    }

    let mut headers = Vec::new();
    for (name, value) in &t.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problem(
                "tracing.headers",
                format!("{name:?} is not a valid header name"),
            );
        } else if http::HeaderValue::from_str(value).is_err() {
            problem(
                "tracing.headers",
                format!("the value of {name:?} is not a valid header value"),
            );
        } else {
            headers.push((name.to_ascii_lowercase(), value.clone()));
        }
    }

    let mut resource = Vec::new();
    for (key, value) in &t.resource_attributes {
        if RESERVED_RESOURCE_KEYS.contains(&key.as_str()) {
            warnings.push(format!(
                "tracing.resource_attributes: {key} is set by Gatehouse; the configured value is ignored"
            ));
        } else {
            resource.push((key.clone(), value.clone()));
        }
    }

    let sampling = match sampling(&t.sampler, t.sample_ratio) {
        Ok(s) => s,
        Err((key, message)) => {
            problem(key, message);
            Sampling {
                parent_based: true,
                ratio: 1.0,
            }
        }
    };
    let trust = match trust(t) {
        Ok(trust) => trust,
        Err(p) => {
            problems.push(p);
            Trust::TrustedProxies
        }
    };
    if t.export_timeout.is_zero() {
        problems.push(ConfigProblem::new(
            "tracing.export_timeout",
            "must be positive",
        ));
    }
    if t.queue_size == 0 {
        problems.push(ConfigProblem::new("tracing.queue_size", "must be positive"));
    }
    let service = if t.service.is_empty() {
        "proxy".to_owned()
    } else {
        t.service.clone()
    };

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Plan {
        protocol,
        url,
        ca_file: ca_file.filter(|_| https),
        insecure: t.insecure,
        headers,
        service,
        resource,
        sampling,
        trust,
        export_timeout: t.export_timeout.0,
        queue_size: t.queue_size,
        warnings,
    })
}

fn default_url(protocol: Protocol) -> String {
    match protocol {
        Protocol::Grpc => "http://localhost:4317".to_owned(),
        Protocol::HttpProtobuf => "http://localhost:4318/v1/traces".to_owned(),
    }
}

/// Parses `given` as a URL or, without a scheme, as `host:port` (plain text, as oCIS dials it).
fn parse(given: &str) -> Result<Uri, String> {
    let with_scheme = if given.contains("://") {
        given.to_owned()
    } else {
        format!("http://{given}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| format!("{given:?} is not a host:port or URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{given:?}: the scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{given:?} names no host"));
    }
    Ok(uri)
}

fn otlp_url(given: &str, protocol: Protocol) -> Result<String, String> {
    let uri = parse(given)?;
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = host_of(&uri);
    let port = uri.port_u16().unwrap_or(match scheme {
        "https" => 443,
        _ => 80,
    });
    let path = uri.path();
    match protocol {
        Protocol::Grpc => {
            if path != "/" && !path.is_empty() {
                return Err(format!("{given:?}: a gRPC endpoint has no path"));
            }
            Ok(format!("{scheme}://{host}:{port}"))
        }
        Protocol::HttpProtobuf => {
            let path = if path.is_empty() || path == "/" {
                "/v1/traces"
            } else {
                path
            };
            Ok(format!("{scheme}://{host}:{port}{path}"))
        }
    }
}

/// A Jaeger agent `host:port` or collector URL → OTLP on the same host (Jaeger ≥ 1.35 listens
/// on 4317 and 4318).
fn jaeger_to_otlp(given: &str, protocol: Protocol) -> Result<String, String> {
    let uri = parse(given)?;
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = host_of(&uri);
    let port = protocol.default_port();
    Ok(match protocol {
        Protocol::Grpc => format!("{scheme}://{host}:{port}"),
        Protocol::HttpProtobuf => format!("{scheme}://{host}:{port}/v1/traces"),
    })
}

/// The host as it goes back into a URL (IPv6 literals keep their brackets).
fn host_of(uri: &Uri) -> String {
    let host = uri.host().unwrap_or_default();
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn sampling(name: &str, ratio: f64) -> Result<Sampling, (&'static str, String)> {
    let check_ratio = || {
        if ratio.is_finite() && (0.0..=1.0).contains(&ratio) {
            Ok(ratio)
        } else {
            Err((
                "tracing.sample_ratio",
                format!("{ratio} is not between 0 and 1"),
            ))
        }
    };
    let (parent_based, ratio) = match name {
        "" | "parentbased_traceidratio" => (true, check_ratio()?),
        "traceidratio" => (false, check_ratio()?),
        "parentbased_always_on" => (true, 1.0),
        "parentbased_always_off" => (true, 0.0),
        "always_on" => (false, 1.0),
        "always_off" => (false, 0.0),
        other => {
            return Err((
                "tracing.sampler",
                format!(
                    "{other:?} is not one of parentbased_traceidratio, parentbased_always_on, \
                     parentbased_always_off, traceidratio, always_on, always_off"
                ),
            ));
        }
    };
    Ok(Sampling {
        parent_based,
        ratio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> Tracing {
        Tracing {
            enabled: true,
            kind: "otlp".into(),
            ..Tracing::default()
        }
    }

    fn keys(problems: &[ConfigProblem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn otlp_host_port_is_plain_grpc_as_in_ocis() {
        let plan = resolve(&Tracing {
            endpoint: "jaeger:4317".into(),
            ..on()
        })
        .unwrap();
        assert_eq!(plan.protocol, Protocol::Grpc);
        assert_eq!(plan.url, "http://jaeger:4317");
        assert!(!plan.is_tls());
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        assert_eq!(plan.service, "proxy");
        assert_eq!(
            plan.sampling,
            Sampling {
                parent_based: true,
                ratio: 1.0
            }
        );
        assert_eq!(plan.trust, Trust::TrustedProxies);
    }

    #[test]
    fn urls_choose_tls_and_http_gets_the_traces_path() {
        let plan = resolve(&Tracing {
            endpoint: "https://otel.example.com".into(),
            ..on()
        })
        .unwrap();
        assert_eq!(plan.url, "https://otel.example.com:443");
        assert!(plan.is_tls());
        let plan = resolve(&Tracing {
            endpoint: "http://collector:4318".into(),
            protocol: "http/protobuf".into(),
            ..on()
        })
        .unwrap();
        assert_eq!(plan.url, "http://collector:4318/v1/traces");
        let plan = resolve(&Tracing {
            endpoint: "https://collector/custom/traces".into(),
            protocol: "http/protobuf".into(),
            ..on()
        })
        .unwrap();
        assert_eq!(plan.url, "https://collector:443/custom/traces");
        let plan = resolve(&Tracing {
            endpoint: "[::1]:4317".into(),
            ..on()
        })
        .unwrap();
        assert_eq!(plan.url, "http://[::1]:4317");
    }

    #[test]
    fn empty_endpoint_means_the_opentelemetry_defaults() {
        assert_eq!(resolve(&on()).unwrap().url, "http://localhost:4317");
        let plan = resolve(&Tracing {
            protocol: "http/protobuf".into(),
            ..on()
        })
        .unwrap();
        assert_eq!(plan.url, "http://localhost:4318/v1/traces");
    }

    #[test]
    fn jaeger_becomes_otlp_to_the_jaeger_host_with_a_warning() {
        let agent = resolve(&Tracing {
            kind: String::new(),
            endpoint: "jaeger-agent:6831".into(),
            ..on()
        })
        .unwrap();
        assert_eq!(agent.protocol, Protocol::Grpc);
        assert_eq!(agent.url, "http://jaeger-agent:4317");
        assert_eq!(agent.warnings.len(), 1);
        assert!(agent.warnings[0].contains("OTLP"), "{:?}", agent.warnings);

        let collector = resolve(&Tracing {
            kind: "jaeger".into(),
            collector: "http://jaeger-collector:14268/api/traces".into(),
            ..on()
        })
        .unwrap();
        assert_eq!(collector.protocol, Protocol::HttpProtobuf);
        assert_eq!(collector.url, "http://jaeger-collector:4318/v1/traces");

        let grpc_wanted = resolve(&Tracing {
            kind: "jaeger".into(),
            collector: "https://jaeger:14268/api/traces".into(),
            protocol: "grpc".into(),
            ..on()
        })
        .unwrap();
        assert_eq!(grpc_wanted.url, "https://jaeger:4317");
    }

    #[test]
    fn problems_name_the_setting() {
        let err = resolve(&Tracing {
            kind: "zipkin".into(),
            protocol: "http/json".into(),
            sampler: "sometimes".into(),
            trust_incoming: "friends".into(),
            export_timeout: crate::config::GoDuration::secs(0),
            queue_size: 0,
            headers: [("bad name".to_owned(), "v".to_owned())].into(),
            ..on()
        })
        .unwrap_err();
        assert_eq!(
            keys(&err),
            [
                "tracing.type",
                "tracing.protocol",
                "tracing.headers",
                "tracing.sampler",
                "tracing.trust_incoming",
                "tracing.export_timeout",
                "tracing.queue_size"
            ]
        );
        let err = resolve(&Tracing {
            endpoint: "ftp://x:1".into(),
            ..on()
        })
        .unwrap_err();
        assert_eq!(keys(&err), ["tracing.endpoint"]);
        let err = resolve(&Tracing {
            endpoint: "http://x:4317/v1/traces".into(),
            ..on()
        })
        .unwrap_err();
        assert!(err[0].message.contains("no path"), "{err:?}");
        let err = resolve(&Tracing {
            sample_ratio: 1.5,
            ..on()
        })
        .unwrap_err();
        assert_eq!(keys(&err), ["tracing.sample_ratio"]);
    }

    #[test]
    fn samplers_follow_the_opentelemetry_names() {
        let s = |name: &str, ratio: f64| sampling(name, ratio).unwrap();
        assert_eq!(
            s("traceidratio", 0.25),
            Sampling {
                parent_based: false,
                ratio: 0.25
            }
        );
        assert_eq!(s("parentbased_always_off", 0.9).ratio, 0.0);
        assert_eq!(
            s("always_on", 7.0).ratio,
            1.0,
            "the argument is ignored where it means nothing"
        );
        assert!(!s("always_off", 0.5).parent_based);
    }

    #[test]
    fn headers_resource_and_tls_settings() {
        let plan = resolve(&Tracing {
            endpoint: "https://otel:4317".into(),
            headers: [("Authorization".to_owned(), "Bearer t".to_owned())].into(),
            resource_attributes: [
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("service.name".to_owned(), "other".to_owned()),
            ]
            .into(),
            ca_file: "/etc/ca.pem".into(),
            insecure: true,
            ..on()
        })
        .unwrap();
        assert_eq!(
            plan.headers,
            [("authorization".to_owned(), "Bearer t".to_owned())]
        );
        assert_eq!(
            plan.resource,
            [("deployment.environment".to_owned(), "prod".to_owned())]
        );
        assert_eq!(plan.ca_file.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);

        let plain = resolve(&Tracing {
            endpoint: "otel:4317".into(),
            ca_file: "/etc/ca.pem".into(),
            ..on()
        })
        .unwrap();
        assert_eq!(plain.ca_file, None);
        assert!(plain.warnings[0].contains("not https"));
    }
}
