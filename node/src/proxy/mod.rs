//! STUB (owned by the proxy helper).
