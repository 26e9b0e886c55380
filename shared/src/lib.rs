//! Pure logic of the Gatehouse gateway. Nothing here opens a socket: configuration, routing,
//! security headers and the state-store abstraction (with its in-process implementations) live
//! here so that they can be unit-tested without a network.

pub mod auth;
pub mod config;
pub mod events;
pub mod http1;
pub mod oidc;
pub mod rate_limit;
pub mod routing;
pub mod security;
pub mod store;
pub mod tls;
pub mod token;
pub mod trace;
