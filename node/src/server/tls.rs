//! TLS for the client listener. Like oCIS, when the configured certificate and key files do not
//! exist a self-signed pair is generated and written there (directories created), so a fresh
//! installation starts with TLS on; operators replace the files with a real certificate.

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "only one of the TLS files exists ({present}); refusing to overwrite it with a generated pair, remove it or provide {missing}"
    )]
    HalfPresent { present: PathBuf, missing: PathBuf },
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    #[error("writing generated TLS file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Installs ring as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Loads (or first generates) the certificate and key and builds an acceptor offering h2 and
/// http/1.1 via ALPN.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    install_crypto_provider();
    match (cert.exists(), key.exists()) {
        (true, true) => {}
        (false, false) => generate(cert, key)?,
        (true, false) => {
            return Err(TlsError::HalfPresent {
                present: cert.to_owned(),
                missing: key.to_owned(),
            });
        }
        (false, true) => {
            return Err(TlsError::HalfPresent {
                present: key.to_owned(),
                missing: cert.to_owned(),
            });
        }
    }
    let certs = load_certs(cert)?;
    let key_der = load_key(key)?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            path: path.to_owned(),
            reason: "no PEM certificate found".to_owned(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut BufReader::new(pem.as_slice()))
        .map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Invalid {
            path: path.to_owned(),
            reason: "no PEM private key found".to_owned(),
        })
}

fn generate(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = gethostname::gethostname().into_string()
        && !host.is_empty()
        && host != "localhost"
    {
        names.push(host);
    }
    let pair =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_file(cert, pair.cert.pem().as_bytes(), false)?;
    write_file(key, pair.signing_key.serialize_pem().as_bytes(), true)?;
    tracing::warn!(cert = %cert.display(), key = %key.display(), "generated a self-signed TLS certificate; replace it for production");
    Ok(())
}

fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(data).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_then_reuses_files() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("a/b/server.crt");
        let key = dir.path().join("a/b/server.key");
        acceptor(&cert, &key).unwrap();
        let first = fs::read(&cert).unwrap();
        assert!(String::from_utf8_lossy(&first).contains("BEGIN CERTIFICATE"));
        acceptor(&cert, &key).unwrap();
        assert_eq!(
            fs::read(&cert).unwrap(),
            first,
            "existing pair must be reused"
        );
    }

    #[test]
    fn half_present_and_garbage_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.crt");
        let key = dir.path().join("c.key");
        fs::write(&cert, "not pem").unwrap();
        assert!(matches!(
            acceptor(&cert, &key),
            Err(TlsError::HalfPresent { .. })
        ));
        fs::write(&key, "not pem").unwrap();
        let err = acceptor(&cert, &key).err().unwrap();
        assert!(matches!(err, TlsError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("c.crt"));
    }
}
