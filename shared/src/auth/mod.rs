//! Identity logic that needs no network: reading claims by dotted paths, the cache key of a
//! bearer token, role assignment from claims, claim-managed space memberships, step-up checks
//! and the 401 answer; the bookkeeping of failed authentications across the cluster.

pub mod app_token;
pub mod brute_force;
pub mod challenge;
pub mod claims;
pub mod mfa;
pub mod password;
pub mod query;
pub mod roles;
pub mod signed_url;
pub mod spaces;
pub mod token_hash;
