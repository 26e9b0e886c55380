//! Placeholder; the store helper provides the NATS cluster harness.
