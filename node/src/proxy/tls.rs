//! TLS towards `https` upstreams (spec §3.16): the client configuration the proxy's connector
//! uses, and the connector itself.
//!
//! Trust: the operating system's certificate store, plus the PEM file named by
//! `backend_https_cacert` for installations whose services carry certificates from a private CA.
//! `insecure_backends` turns certificate verification off (self-signed service certificates in
//! development); handshake signatures are still checked, so a peer must at least hold the key of
//! the certificate it presents. TLS 1.2 and 1.3 only, ring as the provider, the upstream host as
//! SNI, and ALPN `http/1.1`: upstream traffic stays on HTTP/1.1, where upgrades and streaming
//! behave the same as on plain connections.
//!
//! `upstream.connect_timeout` bounds the whole connection set-up (name resolution, TCP connect and
//! TLS handshake), so an upstream that accepts TCP but never finishes the handshake fails with a
//! 502 after that time instead of holding the request until the response-header timeout.

use std::fs;
use std::future::Future;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use gatehouse_shared::tls::AcceptAnyCertificate;
use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tower::Service;

/// Why a TLS client configuration could not be built. Not retryable: the configuration or the
/// file has to change. `setting` names the configuration key of the CA file.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("{setting}: cannot read {path}: {source}")]
    ReadCa {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{setting}: {path} is not a usable PEM CA certificate file: {reason}")]
    InvalidCa {
        setting: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS client configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Builds the client configuration for `https` upstreams.
///
/// `ca_file` is added to the system's trust roots; it is read and checked even when `insecure`
/// is set, so a broken file is reported whatever the verification mode.
pub fn client_config(
    insecure: bool,
    ca_file: Option<&Path>,
) -> Result<Arc<ClientConfig>, UpstreamTlsError> {
    client_config_for("backend_https_cacert", insecure, ca_file, &[b"http/1.1"])
}

/// [`client_config`] for another peer (the trace collector): `setting` names its CA-file key in
/// errors, `alpn` the protocols offered (`h2` for gRPC).
pub fn client_config_for(
    setting: &'static str,
    insecure: bool,
    ca_file: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, UpstreamTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = system_roots().clone();
    if let Some(path) = ca_file {
        let added = add_ca_file(setting, &mut roots, path)?;
        tracing::info!(file = %path.display(), certificates = added, "{setting} added to the trust roots");
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth()
    } else {
        if roots.is_empty() {
            tracing::info!(
                "no trusted CA certificates (empty system store, no backend_https_cacert): https upstreams will fail verification"
            );
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The operating system's trust store, read once per process.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!(error = %error, "reading the system certificate store");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system trust roots for https upstreams");
        roots
    })
}

fn add_ca_file(
    setting: &'static str,
    roots: &mut RootCertStore,
    path: &Path,
) -> Result<usize, UpstreamTlsError> {
    let invalid = |reason: String| UpstreamTlsError::InvalidCa {
        setting,
        path: path.to_owned(),
        reason,
    };
    let pem = fs::read(path).map_err(|source| UpstreamTlsError::ReadCa {
        setting,
        path: path.to_owned(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE block found".to_owned()));
    }
    let count = certs.len();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| invalid(format!("certificate {}: {e}", i + 1)))?;
    }
    Ok(count)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connection a [`Connector`] produces: plain TCP for `http`, TLS over TCP for `https`.
pub type UpstreamStream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// The pooled client's connector: TCP (with `TCP_NODELAY`), TLS for `https` URIs, and one
/// deadline over the whole set-up.
#[derive(Clone)]
pub struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Option<Duration>,
}

impl Connector {
    pub fn new(tls: Arc<ClientConfig>, connect_timeout: Option<Duration>) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(connect_timeout);
        http.set_nodelay(true);
        http.enforce_http(false);
        Self {
            inner: HttpsConnector::from((http, tls)),
            timeout: connect_timeout,
        }
    }
}

/// The connection set-up did not finish within `upstream.connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("connecting (name resolution, TCP connect, TLS handshake) took longer than {0:?}")]
pub struct ConnectTimeout(pub Duration);

impl Service<Uri> for Connector {
    type Response = UpstreamStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let timeout = self.timeout;
        Box::pin(async move {
            match timeout {
                Some(t) => tokio::time::timeout(t, connecting)
                    .await
                    .map_err(|_| Box::new(ConnectTimeout(t)) as BoxError)?,
                None => connecting.await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    fn self_signed() -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap()
    }

    #[test]
    fn a_pem_certificate_is_added_to_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        let ck = self_signed();
        let two = format!("{}{}", ck.cert.pem(), self_signed().cert.pem());
        let path = write(dir.path(), "ca.pem", two.as_bytes());
        let mut roots = RootCertStore::empty();
        assert_eq!(
            add_ca_file("backend_https_cacert", &mut roots, &path).unwrap(),
            2
        );
        assert_eq!(roots.len(), 2);
        let config = client_config(false, Some(&path)).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn bad_ca_files_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let ck = self_signed();
        let key_only = write(
            dir.path(),
            "key.pem",
            ck.signing_key.serialize_pem().as_bytes(),
        );
        let garbage = write(
            dir.path(),
            "garbage.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let missing = dir.path().join("missing.pem");
        for (path, want) in [
            (&key_only, "no CERTIFICATE block"),
            (&garbage, "certificate 1"),
            (&missing, "cannot read"),
        ] {
            for insecure in [false, true] {
                let err = client_config(insecure, Some(path)).unwrap_err().to_string();
                assert!(err.starts_with("backend_https_cacert: "), "{err}");
                assert!(err.contains(want), "{err}");
                assert!(err.contains(&path.display().to_string()), "{err}");
            }
        }
    }
}
