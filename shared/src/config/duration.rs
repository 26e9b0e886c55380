//! Go-style durations (`10s`, `1h30m`, `500ms`). STUB.
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GoDuration(#[serde(with = "unimplemented_serde")] pub Duration);

mod unimplemented_serde {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(_d: &Duration, _s: S) -> Result<S::Ok, S::Error> {
        unimplemented!()
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(_d: D) -> Result<Duration, D::Error> {
        unimplemented!()
    }
}
