//! STUB
pub struct NoopStore;
