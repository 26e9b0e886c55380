//! Configuration: the oCIS `proxy.yaml` schema, the `PROXY_*`/`OCIS_*` environment overlay with oCIS
//! precedence, defaults, validation and the generated reference (docs/configuration.md). STUB.
mod duration;
mod schema;

pub use duration::GoDuration;
pub use schema::*;
