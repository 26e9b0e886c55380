//! Security response headers and the Content-Security-Policy (spec §6.2). STUB.
