//! The one "accept any server certificate" verifier, for the explicit insecure switches
//! (`insecure_backends`, the NATS sections' `tls_insecure`). Any chain is accepted, but the
//! handshake signature must still be valid for the presented certificate's key, so a peer must
//! at least hold the key of the certificate it shows.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

#[derive(Debug)]
pub struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyCertificate {
    /// Checks handshake signatures with `algorithms` (the crypto provider's).
    pub fn new(algorithms: WebPkiSupportedAlgorithms) -> Self {
        AcceptAnyCertificate { algorithms }
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_chain_and_offers_the_provider_schemes() {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        let v = AcceptAnyCertificate::new(algorithms);
        let cert = CertificateDer::from(b"not even a certificate".to_vec());
        let name = ServerName::try_from("elsewhere.example").unwrap();
        assert!(
            v.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        assert_eq!(v.supported_verify_schemes(), algorithms.supported_schemes());
    }
}
