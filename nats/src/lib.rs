//! NATS adapters for Gatehouse.
//!
//! - [`NatsKvStore`]: the shared state store on a JetStream KV bucket, in the go-micro
//!   `nats-js-kv` wire format so that Gatehouse nodes and oCIS Go services can share buckets.
//!   Wrap it in [`gatehouse_shared::store::NearCache`] on the request path.
//! - [`registry::ServiceRegistry`]: the oCIS go-micro service registry, mirrored in memory from a
//!   KV watch so that resolving a service never waits for the network.
//! - [`EventPublisher`]: the oCIS event bus producer (JetStream `main-queue`), fed through a
//!   bounded queue so that raising an event never waits for the network.

mod connect;
mod events;
mod kv;
pub mod registry;
mod security;

pub use connect::{ConnectError, ConnectionStats};
pub use events::{
    DEFAULT_ACK_TIMEOUT, DEFAULT_CAPACITY, EventPublisher, EventPublisherError,
    EventPublisherOptions, StreamSetup,
};
pub use kv::{NatsKvOptions, NatsKvStore};
pub use registry::ServiceRegistry;
