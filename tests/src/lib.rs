//! End-to-end test harness: real processes on loopback, each owned by the test that starts it.

pub mod nats;
pub mod procs;
