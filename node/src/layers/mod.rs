//! One tower layer per pipeline concern. The pipeline (`crate::pipeline`) composes them.
//! request_id, access_log, metrics: observability helper; security, redirect, route: proxy helper.

pub mod redirect;
pub mod route;
pub mod security;
