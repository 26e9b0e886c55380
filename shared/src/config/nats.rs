//! How one NATS connection is encrypted and authenticated.
//!
//! Five sections open NATS connections (`state_store`, `oidc.user_info_cache`,
//! `pre_signed_url.signing_keys`, `service_registry`, `events`) and each spells the same fields
//! out, as oCIS does per store. This module reads them into one [`NatsSecurity`] that the NATS
//! adapters apply, and checks them once for all five, so a mistake is reported with the key of
//! the section it was made in.

use std::path::PathBuf;

use super::error::ConfigProblem;
use super::schema::{Events, ServiceRegistry, StoreConfig};

/// The security of one NATS client, with the configuration section it came from so that
/// connection errors can name the setting to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSecurity {
    /// Dotted key of the section, e.g. `state_store`.
    pub section: String,
    /// `None`: plaintext, unless the server demands TLS (then the system roots verify it).
    pub tls: Option<NatsTls>,
    pub auth: NatsAuth,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTls {
    /// PEM file of the CA that signs the servers' certificates; the system roots when `None`.
    pub root_ca: Option<PathBuf>,
    /// Certificate and key (PEM) presented to servers that verify clients.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
    /// Accept any server certificate. Ignored when `root_ca` is set, as in oCIS.
    pub insecure: bool,
}

#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    UserPassword { user: String, password: String },
    Token(String),
    NKeySeed(String),
    CredentialsFile(PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword { user, .. } => write!(f, "UserPassword({user:?}, ***)"),
            NatsAuth::Token(_) => f.write_str("Token(***)"),
            NatsAuth::NKeySeed(_) => f.write_str("NKeySeed(***)"),
            NatsAuth::CredentialsFile(path) => write!(f, "CredentialsFile({path:?})"),
        }
    }
}

impl NatsSecurity {
    /// No TLS, no credentials: the development default.
    pub fn plain(section: &str) -> Self {
        NatsSecurity {
            section: section.to_owned(),
            tls: None,
            auth: NatsAuth::None,
        }
    }

    /// The settings that hold the credentials in use, for messages: `state_store.username and
    /// state_store.password`, or `state_store.token`, …
    pub fn credential_settings(&self) -> String {
        let s = &self.section;
        match self.auth {
            NatsAuth::None => format!(
                "none configured ({s}.username and {s}.password, {s}.token, {s}.nkey_seed or \
                 {s}.credentials_file)"
            ),
            NatsAuth::UserPassword { .. } => format!("{s}.username and {s}.password"),
            NatsAuth::Token(_) => format!("{s}.token"),
            NatsAuth::NKeySeed(_) => format!("{s}.nkey_seed"),
            NatsAuth::CredentialsFile(_) => format!("{s}.credentials_file"),
        }
    }
}

/// The fields a section spells out, borrowed.
struct Fields<'a> {
    section: &'a str,
    addresses: Vec<&'a str>,
    enable_tls: bool,
    tls_insecure: bool,
    root_ca: &'a str,
    certificate: &'a str,
    key: &'a str,
    username: &'a str,
    password: &'a str,
    token: &'a str,
    nkey_seed: &'a str,
    credentials_file: &'a str,
}

impl Fields<'_> {
    /// TLS is on when asked for, or when an address says `tls://`.
    fn tls_on(&self) -> bool {
        self.enable_tls || self.addresses.iter().any(|a| a.starts_with("tls://"))
    }

    fn security(&self) -> NatsSecurity {
        let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        let tls = self.tls_on().then(|| NatsTls {
            root_ca: path(self.root_ca),
            client_certificate: path(self.certificate).zip(path(self.key)),
            insecure: self.tls_insecure,
        });
        let auth = if !self.username.is_empty() {
            NatsAuth::UserPassword {
                user: self.username.to_owned(),
                password: self.password.to_owned(),
            }
        } else if !self.token.is_empty() {
            NatsAuth::Token(self.token.to_owned())
        } else if !self.nkey_seed.is_empty() {
            NatsAuth::NKeySeed(self.nkey_seed.to_owned())
        } else if !self.credentials_file.is_empty() {
            NatsAuth::CredentialsFile(PathBuf::from(self.credentials_file))
        } else {
            NatsAuth::None
        };
        NatsSecurity {
            section: self.section.to_owned(),
            tls,
            auth,
        }
    }

    fn check(&self, problems: &mut Vec<ConfigProblem>) {
        let s = self.section;
        let mut add = |key: &str, message: String| {
            problems.push(ConfigProblem::new(format!("{s}.{key}"), message));
        };
        let methods: Vec<&str> = [
            ("username", self.username),
            ("token", self.token),
            ("nkey_seed", self.nkey_seed),
            ("credentials_file", self.credentials_file),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| *k)
        .collect();
        if methods.len() > 1 {
            add(
                methods[1],
                format!(
                    "set together with {s}.{}: choose one way to authenticate",
                    methods[0]
                ),
            );
        }
        if self.username.is_empty() && !self.password.is_empty() {
            add("password", format!("is set but {s}.username is empty"));
        }
        if !self.nkey_seed.is_empty() && !self.nkey_seed.starts_with('S') {
            add(
                "nkey_seed",
                "is not an NKey seed (a seed starts with `S`, e.g. `SU…` for a user); \
                 the public key (`U…`) belongs in the server's configuration"
                    .to_owned(),
            );
        }
        match (self.certificate.is_empty(), self.key.is_empty()) {
            (false, true) => add(
                "tls_key",
                format!("is empty but {s}.tls_certificate is set"),
            ),
            (true, false) => add(
                "tls_certificate",
                format!("is empty but {s}.tls_key is set"),
            ),
            _ => {}
        }
        if !self.tls_on() {
            for (key, value) in [
                ("tls_root_ca_certificate", self.root_ca),
                ("tls_certificate", self.certificate),
                ("tls_key", self.key),
            ] {
                if !value.is_empty() {
                    add(
                        key,
                        format!(
                            "is set but TLS is off: set {s}.enable_tls (or use tls:// addresses) \
                             so that the connection is encrypted"
                        ),
                    );
                }
            }
        }
    }
}

/// The fields of a section: the three section types spell them with the same names.
macro_rules! fields {
    ($section:expr, $c:expr, $addresses:expr) => {
        Fields {
            section: $section,
            addresses: $addresses,
            enable_tls: $c.enable_tls,
            tls_insecure: $c.tls_insecure,
            root_ca: &$c.tls_root_ca_certificate,
            certificate: &$c.tls_certificate,
            key: &$c.tls_key,
            username: &$c.username,
            password: &$c.password,
            token: &$c.token,
            nkey_seed: &$c.nkey_seed,
            credentials_file: &$c.credentials_file,
        }
    };
}

fn store_fields<'a>(section: &'a str, c: &'a StoreConfig) -> Fields<'a> {
    fields!(section, c, c.addresses.iter().map(String::as_str).collect())
}

fn events_fields(c: &Events) -> Fields<'_> {
    fields!("events", c, c.endpoint.split(',').map(str::trim).collect())
}

fn registry_fields(c: &ServiceRegistry) -> Fields<'_> {
    fields!(
        "service_registry",
        c,
        c.addresses.iter().map(String::as_str).collect()
    )
}

impl StoreConfig {
    /// The security of this store's NATS connection; `section` is its key, e.g. `state_store`.
    pub fn nats_security(&self, section: &str) -> NatsSecurity {
        store_fields(section, self).security()
    }
}

impl Events {
    pub fn nats_security(&self) -> NatsSecurity {
        events_fields(self).security()
    }
}

impl ServiceRegistry {
    pub fn nats_security(&self) -> NatsSecurity {
        registry_fields(self).security()
    }
}

pub(crate) fn check_store(section: &str, c: &StoreConfig, problems: &mut Vec<ConfigProblem>) {
    store_fields(section, c).check(problems);
}

pub(crate) fn check_events(c: &Events, problems: &mut Vec<ConfigProblem>) {
    events_fields(c).check(problems);
}

pub(crate) fn check_registry(c: &ServiceRegistry, problems: &mut Vec<ConfigProblem>) {
    registry_fields(c).check(problems);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(c: &StoreConfig) -> Vec<String> {
        let mut p = Vec::new();
        check_store("state_store", c, &mut p);
        p.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn plaintext_without_credentials_by_default() {
        let c = StoreConfig::default();
        assert!(problems(&c).is_empty());
        let s = c.nats_security("state_store");
        assert_eq!(s.tls, None);
        assert_eq!(s.auth, NatsAuth::None);
    }

    #[test]
    fn tls_from_the_switch_or_a_tls_address() {
        let c = StoreConfig {
            enable_tls: true,
            tls_root_ca_certificate: "/ca.pem".into(),
            tls_certificate: "/c.pem".into(),
            tls_key: "/k.pem".into(),
            ..StoreConfig::default()
        };
        assert!(problems(&c).is_empty());
        let tls = c.nats_security("state_store").tls.unwrap();
        assert_eq!(tls.root_ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(
            tls.client_certificate,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        let c = StoreConfig {
            addresses: vec!["tls://nats:4222".into()],
            ..StoreConfig::default()
        };
        assert!(c.nats_security("state_store").tls.is_some());
    }

    #[test]
    fn tls_material_without_tls_is_refused_naming_the_switch() {
        let c = StoreConfig {
            tls_root_ca_certificate: "/ca.pem".into(),
            ..StoreConfig::default()
        };
        let p = problems(&c);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("state_store.tls_root_ca_certificate"),
            "{p:?}"
        );
        assert!(p[0].contains("state_store.enable_tls"), "{p:?}");
    }

    #[test]
    fn one_way_to_authenticate() {
        let c = StoreConfig {
            username: "u".into(),
            password: "p".into(),
            token: "t".into(),
            ..StoreConfig::default()
        };
        let p = problems(&c);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("state_store.token"), "{p:?}");
        assert!(p[0].contains("state_store.username"), "{p:?}");
        let c = StoreConfig {
            password: "p".into(),
            ..StoreConfig::default()
        };
        assert!(problems(&c)[0].contains("state_store.password"));
        let c = StoreConfig {
            nkey_seed: "UABC".into(),
            ..StoreConfig::default()
        };
        assert!(problems(&c)[0].contains("state_store.nkey_seed"));
        let c = StoreConfig {
            enable_tls: true,
            tls_certificate: "/c.pem".into(),
            ..StoreConfig::default()
        };
        assert!(problems(&c)[0].contains("state_store.tls_key"));
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let c = StoreConfig {
            username: "gateway".into(),
            password: "hunter2".into(),
            ..StoreConfig::default()
        };
        let text = format!("{:?}", c.nats_security("state_store"));
        assert!(
            text.contains("gateway") && !text.contains("hunter2"),
            "{text}"
        );
        let c = StoreConfig {
            nkey_seed: "SUAM-seed".into(),
            ..StoreConfig::default()
        };
        assert!(!format!("{:?}", c.nats_security("s")).contains("SUAM"));
    }
}
