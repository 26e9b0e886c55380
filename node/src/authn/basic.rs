//! HTTP Basic authentication for development (spec §4.2).
