//! Configuration: the oCIS `proxy.yaml` schema, the `PROXY_*`/`OCIS_*` environment overlay with
//! oCIS precedence, defaults, validation, masking for dumps and the generated reference
//! (docs/configuration.md).
//!
//! Entry point: [`load`] with a [`ConfigSource`] (usually [`ConfigSource::from_process`]);
//! [`load_text`] does the same for a file already in memory.
mod docs;
mod dump;
mod duration;
mod env;
mod error;
mod load;
mod nats;
mod schema;
mod secrets;
mod subst;
mod validate;

#[cfg(test)]
mod tests;

pub use docs::reference_markdown;
pub use dump::MASK;
pub use duration::{DurationError, GoDuration};
pub use env::{SECTIONS, Section, Setter, Setting, parse_go_bool, settings, split_list};
pub use error::{ConfigErrors, ConfigProblem};
pub use load::{
    CONFIG_FILE_ENV, ConfigSource, Loaded, base_data_path, config_file_candidates, load, load_text,
    parse_yaml,
};
pub use nats::{NatsAuth, NatsSecurity, NatsTls};
pub use schema::*;
pub use secrets::FILE_PREFIX;
