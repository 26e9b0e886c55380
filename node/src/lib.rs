//! The Gatehouse node: one stateless gateway process. `main.rs` is only the command line; everything
//! it runs lives in these modules.
//!
//! - [`server`] accepts connections (TCP/TLS, HTTP/1.1 and HTTP/2), enforces client limits, drains.
//! - [`pipeline`] builds the request pipeline in one place, in the order it runs.
//! - [`layers`] holds one tower layer per concern of that pipeline.
//! - [`proxy`] forwards a routed request to its upstream and streams the answer back.
//! - [`upstream`] turns a route target (backend URL or service name) into a base URL.
//! - [`error`] is the single place where a failure becomes an HTTP response.
//! - [`state`] opens the store shared with peer nodes (memory, noop, NATS JetStream KV, Redis
//!   Sentinel); [`redis`] is the Redis adapter.
//! - [`telemetry`] logging and metrics; [`debug`] the debug server; [`health`] liveness/readiness state.
//! - [`authn`] authenticators (OIDC bearer tokens: discovery, JWKS, userinfo, claims cache);
//!   [`guard`] blocks addresses, users and shares after too many failures, cluster-wide.
//! - [`accounts`] claims → account: directory backends (LibreGraph, builtin), provisioning, group sync, roles.
//! - [`identity`] builds the authenticators and account services once per node and publishes identity events.
//! - [`context`] the per-connection and per-request facts the layers share.

pub mod accounts;
pub mod allocator;
pub mod authn;
pub mod context;
pub mod deadline;
pub mod debug;
pub mod endpoints;
pub mod error;
pub mod guard;
pub mod health;
pub mod identity;
pub mod layers;
pub mod peer_counts;
pub mod pipeline;
pub mod proxy;
pub mod rate_limit;
pub mod reconnect;
pub mod redis;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod upstream;
