//! TLS and credentials of every NATS connection, and what their failures mean.
//!
//! Each client (state store, user-info cache, signing keys, service registry, events) is set up
//! from a [`NatsSecurity`] read from its configuration section. Certificate and key files are
//! read here, before any connection, so that a missing or malformed file stops start-up with the
//! setting's name rather than surfacing later as a handshake error. Connection failures that no
//! retry can fix — refused credentials, a certificate that does not verify, a server without TLS
//! when TLS is required — become [`StoreError::Misconfigured`] naming the settings to look at; the rest
//! stay retryable.
//!
//! TLS required means TLS or nothing: `require_tls` makes the client upgrade every connection
//! after the server's greeting, whatever the server announces, so a plaintext server fails the
//! handshake instead of carrying the session.

use std::path::Path;

use async_nats::rustls::pki_types::pem::PemObject;
use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use gatehouse_shared::config::{NatsAuth, NatsSecurity};
use gatehouse_shared::store::StoreError;
use gatehouse_shared::tls::AcceptAnyCertificate;

/// A client certificate chain and its key, as read from their files.
type ClientCertificate = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Reads every file `sec` names (certificates, key, credentials); returns the client
/// certificate, for [`apply`].
pub(crate) fn check_files(sec: &NatsSecurity) -> Result<Option<ClientCertificate>, StoreError> {
    let s = &sec.section;
    let mut client_cert = None;
    if let Some(tls) = &sec.tls {
        if let Some(ca) = &tls.root_ca {
            read_certificates(ca, &format!("{s}.tls_root_ca_certificate"))?;
        }
        if let Some((cert, key)) = &tls.client_certificate {
            client_cert = Some((
                read_certificates(cert, &format!("{s}.tls_certificate"))?,
                read_key(key, &format!("{s}.tls_key"))?,
            ));
        }
    }
    if let NatsAuth::CredentialsFile(path) = &sec.auth {
        let text = std::fs::read_to_string(path).map_err(|e| {
            StoreError::Misconfigured(format!(
                "{s}.credentials_file: cannot read {}: {e}",
                path.display()
            ))
        })?;
        if !text.contains("-----BEGIN NATS USER JWT-----") {
            return Err(StoreError::Misconfigured(format!(
                "{s}.credentials_file: {} is not a NATS credentials file (no user JWT)",
                path.display()
            )));
        }
    }
    Ok(client_cert)
}

/// Applies `sec` to `opts`.
pub(crate) async fn apply(
    mut opts: async_nats::ConnectOptions,
    sec: &NatsSecurity,
) -> Result<async_nats::ConnectOptions, StoreError> {
    let s = &sec.section;
    let client_cert = check_files(sec)?;
    if let Some(tls) = &sec.tls {
        opts = opts.require_tls(true);
        // A root CA wins over `tls_insecure`, as in oCIS.
        if tls.root_ca.is_none() && tls.insecure {
            tracing::warn!(
                section = %s,
                "{s}.tls_insecure: the NATS servers' certificates are not verified; anyone on the \
                 path can read and change what this node stores"
            );
            opts = opts.tls_client_config(insecure_client_config(client_cert)?);
        } else {
            if let Some(ca) = &tls.root_ca {
                opts = opts.add_root_certificates(ca.clone());
            }
            if let Some((cert, key)) = &tls.client_certificate {
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
        }
    }
    opts = match &sec.auth {
        NatsAuth::None => opts,
        NatsAuth::UserPassword { user, password } => {
            opts.user_and_password(user.clone(), password.clone())
        }
        NatsAuth::Token(token) => opts.token(token.clone()),
        NatsAuth::NKeySeed(seed) => opts.nkey(seed.clone()),
        NatsAuth::CredentialsFile(path) => opts.credentials_file(path).await.map_err(|e| {
            StoreError::Misconfigured(format!(
                "{s}.credentials_file: cannot use {}: {e}",
                path.display()
            ))
        })?,
    };
    Ok(opts)
}

fn read_certificates(
    path: &Path,
    setting: &str,
) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            StoreError::Misconfigured(format!("{setting}: cannot read {}: {e}", path.display()))
        })?;
    if certs.is_empty() {
        return Err(StoreError::Misconfigured(format!(
            "{setting}: {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path, setting: &str) -> Result<PrivateKeyDer<'static>, StoreError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        StoreError::Misconfigured(format!(
            "{setting}: cannot read a private key from {}: {e}",
            path.display()
        ))
    })
}

/// What a failed connection means for the operator. Errors no retry can fix are `Invalid` and
/// name the settings involved.
pub(crate) fn connect_error(sec: &NatsSecurity, e: &async_nats::ConnectError) -> StoreError {
    use async_nats::ConnectErrorKind as K;
    let s = &sec.section;
    match e.kind() {
        K::AuthorizationViolation | K::Authentication => StoreError::Misconfigured(format!(
            "{s}: NATS refused the credentials ({}): {e}",
            sec.credential_settings()
        )),
        K::Tls => StoreError::Misconfigured(tls_failure(sec, e)),
        K::Io if is_tls_failure(e) => StoreError::Misconfigured(tls_failure(sec, e)),
        _ => StoreError::Unavailable(format!("connecting to NATS: {e}")),
    }
}

fn tls_failure(sec: &NatsSecurity, e: &async_nats::ConnectError) -> String {
    let s = &sec.section;
    match &sec.tls {
        Some(tls) => format!(
            "{s}: the TLS handshake with NATS failed ({e}): check that the servers offer TLS and \
             that {}",
            if tls.root_ca.is_some() {
                format!("{s}.tls_root_ca_certificate holds the CA that signed their certificates")
            } else {
                format!(
                    "the system roots trust their certificates, or set {s}.tls_root_ca_certificate"
                )
            }
        ),
        None => format!(
            "{s}: the NATS server requires TLS and its certificate did not verify ({e}): set \
             {s}.enable_tls and {s}.tls_root_ca_certificate"
        ),
    }
}

/// rustls reports handshake failures (an unknown issuer, a plaintext answer) as I/O errors of
/// kind `InvalidData`; a refused or reset connection is not one.
fn is_tls_failure(e: &async_nats::ConnectError) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            return true;
        }
        if err.downcast_ref::<async_nats::rustls::Error>().is_some() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Logs what a `-ERR` of the server means for the client of `section`; returns the server's text
/// when it is a permission violation (the server refused a publish or subscription, and the
/// request waits for an answer that will not come).
pub(crate) fn report_server_error<'a>(
    section: &str,
    err: &'a async_nats::ServerError,
) -> Option<&'a str> {
    match err {
        async_nats::ServerError::AuthorizationViolation => {
            tracing::error!(
                section,
                "NATS refused the credentials of {section}; it cannot work until they are fixed"
            );
            None
        }
        async_nats::ServerError::Other(text)
            if text.to_ascii_lowercase().contains("permissions violation") =>
        {
            tracing::warn!(
                section,
                error = %text,
                "NATS refused an operation: the NATS user of {section} lacks a permission \
                 (docs/operations.md lists the permissions a gateway needs)"
            );
            Some(text)
        }
        other => {
            tracing::warn!(section, error = %other, "NATS reported an error");
            None
        }
    }
}

/// A TLS client configuration that accepts any server certificate (`tls_insecure`).
fn insecure_client_config(
    client_cert: Option<ClientCertificate>,
) -> Result<async_nats::rustls::ClientConfig, StoreError> {
    use async_nats::rustls;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Misconfigured(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAnyCertificate::new(
            provider.signature_verification_algorithms,
        )));
    match client_cert {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| StoreError::Misconfigured(format!("client certificate: {e}"))),
        None => Ok(builder.with_no_client_auth()),
    }
}
