//! One tower layer per pipeline concern; `crate::pipeline` composes them in the order they run.

pub mod access_log;
pub mod account;
pub mod authenticate;
pub mod endpoints;
pub mod metrics;
pub mod redirect;
pub mod request_id;
pub mod route;
pub mod security;
pub mod trace;
