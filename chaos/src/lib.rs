//! The fault-injection scenarios of `gatehouse-chaos chaos <scenario>` and the `fair` benchmark,
//! as a library so that the test command can run each of them briefly (`chaos/tests/`). The
//! older benchmarks stay in the binary (`main.rs`).

pub mod fair;
pub mod scenario;
