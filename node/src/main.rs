//! STUB (owned by the observability helper): the `gatehouse` command line.
fn main() {}
