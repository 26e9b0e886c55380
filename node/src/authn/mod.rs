//! Authenticators: the parts of the pipeline that turn request credentials into an identity.
//!
//! They live in the node, not in `gatehouse-shared`, because each one has to talk to something
//! (the identity provider, the state store) and decide how long to wait, when to retry and what
//! to remember between requests. The decisions about the credentials themselves — is this token
//! signed, is it expired, which claims does it carry — are pure and live in `gatehouse_shared`
//! (for OIDC: `gatehouse_shared::oidc`), where they are tested without a network.
//!
//! - [`oidc`] bearer tokens from an OpenID Connect provider (spec §4.1).

pub mod oidc;
