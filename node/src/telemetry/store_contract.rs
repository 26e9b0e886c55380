//! TODO(merge): stand-in for `gatehouse_shared::store::{StoreObserver, Outcome}`, which the store
//! helper implements in parallel. At merge, delete this file and re-export the shared types from
//! `telemetry::mod` instead; the signatures here are copied from the agreed contract.

use std::time::Duration;

/// How one store operation ended, as far as metrics care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    LocalHit,
    RemoteHit,
    Miss,
    Ok,
    Conflict,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::LocalHit => "local_hit",
            Outcome::RemoteHit => "remote_hit",
            Outcome::Miss => "miss",
            Outcome::Ok => "ok",
            Outcome::Conflict => "conflict",
            Outcome::Error => "error",
        }
    }
}

/// Receives one call per store operation; implementations must be cheap and must not block.
pub trait StoreObserver: Send + Sync {
    fn observe(&self, store: &'static str, op: &'static str, outcome: Outcome, elapsed: Duration);
}
