//! Identity logic that needs no network: reading claims by dotted paths, the cache key of a
//! bearer token, role assignment from claims, and claim-managed space memberships.

pub mod claims;
pub mod roles;
pub mod spaces;
pub mod token_hash;
