//! Requests the gateway answers itself instead of forwarding (oCIS "static routes", spec §7):
//! they sit at the end of the pipeline, behind routing, authentication and account resolution,
//! exactly where the reverse proxy would otherwise take the request.
//!
//! - [`logout`] `POST /backchannel_logout` (spec §7.3).
//! - [`well_known`] `GET /.well-known/openid-configuration` passed through from the IdP (spec §7.2).
//! - [`signing_key`] `GET /ocs/v{1,2}.php/cloud/user/signing-key` (spec §4.3), when configured.
//! - [`app_tokens`] `/auth-app/tokens` (the oCIS `auth-app` API), with `auth_middleware.allow_app_auth`.

pub mod app_tokens;
pub mod logout;
pub mod signing_key;
pub mod well_known;
