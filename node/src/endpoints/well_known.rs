//! The `/.well-known/openid-configuration` passthrough (spec §7.2).
