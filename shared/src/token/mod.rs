//! The reva-format `x-access-token` the gateway hands to backends (spec §6.4).
//!
//! oCIS backends learn who the caller is from this HS256 JWT signed with the shared
//! `OCIS_JWT_SECRET`, not from the IdP token. Gatehouse mints it itself instead of asking a reva
//! gateway, so this module holds the claim shapes ([`RevaUser`], [`RevaClaims`]), the signer
//! ([`Minter`]), the strict verifier ([`verify`]) and a [`MintCache`] that keeps the hot path from
//! signing on every request.

mod cache;
mod jwt;
mod user;

pub use cache::{MintCache, truncate_to_seconds};
pub use jwt::{
    DEFAULT_LEEWAY, DEFAULT_LIFETIME, MAX_LIFETIME, Minter, REVA_AUDIENCE, RevaClaims, verify,
    verify_at,
};
pub use user::{
    JSON_DECODER, OWNER_SCOPE_KEY, Opaque, OpaqueEntry, PLAIN_DECODER,
    PUBLIC_SHARE_ROLE_OPAQUE_KEY, PUBLIC_SHARE_SCOPE_PREFIX, PublicShareRole, ROLES_OPAQUE_KEY,
    ResourceId, RevaUser, RevaUserId, Scope, ScopeRole, ScopedPublicShare, Scopes, UserType,
    owner_scope, public_share_scope,
};

use std::time::Duration;

/// Why a token could not be minted or was not accepted. None of these is cured by retrying the
/// same operation: they come from configuration or from the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the JWT secret is empty")]
    EmptySecret,
    #[error("token lifetime {0:?} is not between one second and a year")]
    InvalidLifetime(Duration),
    #[error("invalid mint cache settings: {0}")]
    InvalidCacheConfig(String),
    #[error("cannot encode token contents: {0}")]
    Encoding(String),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm is not HS256")]
    Algorithm,
    #[error("token signature does not match")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token audience does not include \"reva\"")]
    Audience,
}

impl TokenError {
    /// Always `false`: a failed mint or verification gives the same answer when repeated.
    pub fn is_retryable(&self) -> bool {
        false
    }

    /// Whether the fault lies with the presented token (answer 401) rather than with the
    /// gateway's own configuration or data (answer 500).
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            Self::Malformed(_) | Self::Algorithm | Self::Signature | Self::Expired | Self::Audience
        )
    }
}
