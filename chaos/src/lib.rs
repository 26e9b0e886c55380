//! The fault-injection scenarios of `gatehouse-chaos chaos <scenario>`, as a library so that the
//! test command can run each of them briefly and assert its target (`chaos/tests/scenarios.rs`).
//! The benchmarks stay in the binary (`main.rs`).

pub mod scenario;
