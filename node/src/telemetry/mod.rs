//! STUB (owned by the observability helper).
