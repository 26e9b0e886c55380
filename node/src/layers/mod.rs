//! One tower layer per pipeline concern. The pipeline (`crate::pipeline`) composes them.
//! request_id, access_log, metrics: observability helper; security, redirect, route: proxy helper.

pub mod access_log;
pub mod metrics;
pub mod request_id;
