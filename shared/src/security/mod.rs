//! Browser-facing protections applied to every response: the Content-Security-Policy and the
//! other security headers (spec §6.2), and the redirect of plain-HTTP requests to the public
//! HTTPS URL (spec §3.6). Everything is computed once at start-up; per request only pre-built
//! header values are copied.

mod csp;
mod headers;
mod redirect;

pub use csp::{Csp, CspError, DEFAULT_CSP_YAML, substitute_env};
pub use headers::{HSTS_VALUE, SecurityHeaders};
pub use redirect::{HttpsRedirect, https_redirect};
