//! The OpenID Provider configuration document (`/.well-known/openid-configuration`).
//!
//! Only the fields the gateway uses are read. The `issuer` it announces must equal the configured
//! issuer byte for byte (no trailing-slash or case normalisation), as in oCIS: a mismatch means
//! the gateway is pointed at the wrong provider, and tokens it issues would carry an `iss` the
//! gateway does not expect.

use serde::{Deserialize, Deserializer, Serialize};

/// The discovery URL of `issuer`: the issuer without trailing slashes, then
/// `/.well-known/openid-configuration`.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub jwks_uri: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub userinfo_endpoint: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// AD FS announces the issuer of its access tokens separately from the OpenID issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_issuer: Option<String>,
}

/// Why a discovery document is unusable. Never retryable: the provider or the configuration has
/// to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery document is not valid JSON: {0}")]
    Json(String),
    #[error("discovery issuer {discovered:?} does not equal the configured issuer {configured:?}")]
    IssuerMismatch {
        configured: String,
        discovered: String,
    },
}

impl Discovery {
    /// Parses a discovery document and checks its issuer against `configured_issuer`.
    pub fn parse(body: &[u8], configured_issuer: &str) -> Result<Self, DiscoveryError> {
        let doc: Discovery =
            serde_json::from_slice(body).map_err(|e| DiscoveryError::Json(e.to_string()))?;
        doc.validate(configured_issuer)?;
        Ok(doc)
    }

    pub fn validate(&self, configured_issuer: &str) -> Result<(), DiscoveryError> {
        if self.issuer != configured_issuer {
            return Err(DiscoveryError::IssuerMismatch {
                configured: configured_issuer.to_owned(),
                discovered: self.issuer.clone(),
            });
        }
        Ok(())
    }

    /// The issuers an access token may name: the AD FS `access_token_issuer` when the document
    /// has a non-empty one, otherwise the configured issuer.
    pub fn access_token_issuers(&self, configured_issuer: &str) -> Vec<String> {
        match self.access_token_issuer.as_deref() {
            Some(iss) if !iss.is_empty() => vec![iss.to_owned()],
            _ => vec![configured_issuer.to_owned()],
        }
    }

    /// The announced ID-token algorithms the gateway can verify (RS/PS/ES 256/384/512), in the
    /// provider's order. Used for logout tokens.
    pub fn signing_algs(&self) -> Vec<String> {
        const USABLE: [&str; 9] = [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
        ];
        self.id_token_signing_alg_values_supported
            .iter()
            .filter(|a| USABLE.contains(&a.as_str()))
            .cloned()
            .collect()
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{
        "issuer": "https://idp.example.com",
        "jwks_uri": "https://idp.example.com/jwks",
        "userinfo_endpoint": "https://idp.example.com/me",
        "id_token_signing_alg_values_supported": ["RS256", "HS256", "none", "ES384", "EdDSA"],
        "token_endpoint": "https://idp.example.com/token"
    }"#;

    #[test]
    fn url_strips_trailing_slashes() {
        for issuer in [
            "https://idp.example.com",
            "https://idp.example.com/",
            "https://idp.example.com//",
        ] {
            assert_eq!(
                discovery_url(issuer),
                "https://idp.example.com/.well-known/openid-configuration"
            );
        }
        assert_eq!(
            discovery_url("https://h/realms/x/"),
            "https://h/realms/x/.well-known/openid-configuration"
        );
    }

    #[test]
    fn parses_the_used_fields_and_keeps_only_usable_algorithms() {
        let d = Discovery::parse(DOC.as_bytes(), "https://idp.example.com").unwrap();
        assert_eq!(d.jwks_uri, "https://idp.example.com/jwks");
        assert_eq!(d.userinfo_endpoint, "https://idp.example.com/me");
        assert_eq!(d.signing_algs(), vec!["RS256", "ES384"]);
        assert_eq!(
            d.access_token_issuers("https://idp.example.com"),
            vec!["https://idp.example.com"]
        );
    }

    #[test]
    fn issuer_is_compared_byte_for_byte() {
        for configured in [
            "https://idp.example.com/",
            "https://IDP.example.com",
            "http://idp.example.com",
            "https://idp.example.com ",
        ] {
            let err = Discovery::parse(DOC.as_bytes(), configured).unwrap_err();
            assert!(
                matches!(err, DiscoveryError::IssuerMismatch { .. }),
                "{configured}: {err}"
            );
        }
    }

    #[test]
    fn ad_fs_access_token_issuer_replaces_the_configured_one() {
        let doc = r#"{"issuer":"https://adfs.example.com/adfs","access_token_issuer":"http://adfs.example.com/adfs/services/trust","jwks_uri":"x","userinfo_endpoint":null,"id_token_signing_alg_values_supported":null}"#;
        let d = Discovery::parse(doc.as_bytes(), "https://adfs.example.com/adfs").unwrap();
        assert_eq!(
            d.access_token_issuers("https://adfs.example.com/adfs"),
            vec!["http://adfs.example.com/adfs/services/trust"]
        );
        assert_eq!(d.userinfo_endpoint, "");
        let empty = r#"{"issuer":"i","access_token_issuer":""}"#;
        let d = Discovery::parse(empty.as_bytes(), "i").unwrap();
        assert_eq!(d.access_token_issuers("i"), vec!["i"]);
    }

    #[test]
    fn garbage_is_a_json_error() {
        for body in [&b"not json"[..], b"[]", b"{}", b"{\"issuer\": 3}"] {
            assert!(matches!(
                Discovery::parse(body, "i"),
                Err(DiscoveryError::Json(_))
            ));
        }
    }
}
