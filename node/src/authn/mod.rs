//! Authenticators: the parts of the pipeline that turn request credentials into an identity.
//!
//! They live in the node, not in `gatehouse-shared`, because each one has to talk to something
//! (the identity provider, the state store) and decide how long to wait, when to retry and what
//! to remember between requests. The decisions about the credentials themselves — is this token
//! signed, is it expired, which claims does it carry — are pure and live in `gatehouse_shared`
//! (for OIDC: `gatehouse_shared::oidc`), where they are tested without a network.
//!
//! - [`oidc`] bearer tokens from an OpenID Connect provider (spec §4.1).
//! - [`signed_url`] pre-signed URLs signed with a per-user key from the shared store (spec §4.3).
//! - [`public_share`] public-share tokens checked by a share service (spec §4.4).
//! - [`basic`] HTTP Basic against the builtin accounts, for development (spec §4.2).
//! - [`app_token`] app tokens as Basic credentials, for clients without OpenID Connect.

pub mod app_token;
pub mod basic;
pub mod oidc;
pub mod public_share;
pub mod signed_url;
