//! Role assignment from OIDC claims (`role_assignment` in the configuration).
//!
//! Every user carries exactly one role id to the backends. With the `default` driver the role is
//! whatever the user already has, or `user` for a user who has none yet. With the `oidc` driver
//! the role follows a claim of the token: each configured mapping names a role and a
//! `claim_value` that is an exact string or a regular expression matched against a whole claim
//! value, and the first mapping in configuration order that matches any of the user's values
//! wins. [`RoleMapper`] checks the mappings once at start-up and decides per login without
//! network access; storing the decision is the caller's business.
//!
//! Differences from oCIS: oCIS matches `claim_value` only by equality (the regex semantics come
//! from the documentation, which we follow), and a user matching no mapping gets a 500 there;
//! here it is a [`RoleError`], which the node answers with 403. An unknown role name in a
//! mapping is a start-up error instead of a failed login.

use std::fmt;
use std::str::FromStr;

use regex::Regex;
use serde_json::Value;
use thiserror::Error;

use super::claims::{ClaimError, ClaimPath, string_list_claim};

/// The roles oCIS ships with (settings service defaults). Role names in mappings must be one of
/// these; `guest` is accepted as an alias of `user-light` because the documentation uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinRole {
    Admin,
    SpaceAdmin,
    User,
    UserLight,
}

/// Built-in role name → role id, the ids the backends expect in the `roles` opaque entry.
pub const BUILTIN_ROLES: [(&str, &str); 4] = [
    ("admin", "71881883-1768-46bd-a24d-a356a2afdf7f"),
    ("spaceadmin", "2aadd357-682c-406b-8874-293091995fdd"),
    ("user", "d7beeea8-8ff4-406b-8fb6-ab2dd81e6b11"),
    ("user-light", "38071a68-456a-4553-846a-fa67bf5596cc"),
];

/// The default `role_assignment.oidc_role_mapper.role_mapping`: (role name, claim value).
pub const DEFAULT_ROLE_MAPPING: [(&str, &str); 4] = [
    ("admin", "ocisAdmin"),
    ("spaceadmin", "ocisSpaceAdmin"),
    ("user", "ocisUser"),
    ("user-light", "ocisGuest"),
];

/// The default `role_assignment.oidc_role_mapper.role_claim`.
pub const DEFAULT_ROLE_CLAIM: &str = "roles";

impl BuiltinRole {
    pub const ALL: [BuiltinRole; 4] = [
        BuiltinRole::Admin,
        BuiltinRole::SpaceAdmin,
        BuiltinRole::User,
        BuiltinRole::UserLight,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The canonical name (`user-light`, never the `guest` alias).
    pub fn name(self) -> &'static str {
        BUILTIN_ROLES[self.index()].0
    }

    pub fn id(self) -> &'static str {
        BUILTIN_ROLES[self.index()].1
    }

    /// Looks a role up by name; `guest` means `user-light`.
    pub fn from_name(name: &str) -> Option<Self> {
        if name == "guest" {
            return Some(BuiltinRole::UserLight);
        }
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.id() == id)
    }
}

impl fmt::Display for BuiltinRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `role_assignment.driver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoleDriver {
    #[default]
    Default,
    Oidc,
}

impl FromStr for RoleDriver {
    type Err = RoleConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(RoleDriver::Default),
            "oidc" => Ok(RoleDriver::Oidc),
            other => Err(RoleConfigError::UnknownDriver(other.to_owned())),
        }
    }
}

/// A role configuration that cannot work; reported at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RoleConfigError {
    #[error("role_assignment.driver {0:?} is not one of default, oidc")]
    UnknownDriver(String),
    #[error(
        "role_assignment.oidc_role_mapper.role_mapping[{index}]: role_name {role_name:?} is not one of admin, spaceadmin, user, user-light (guest)"
    )]
    UnknownRole { index: usize, role_name: String },
}

/// Why a user gets no role. Every variant is a refusal of this login that the node answers with
/// **403 Forbidden** (oCIS answers 500); retrying with the same token cannot help.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RoleError {
    #[error("role claim cannot be used: {0}")]
    Claim(#[from] ClaimError),
    #[error("no value of role claim {claim:?} matches a role mapping (values: {values:?})")]
    NoMatchingRole { claim: String, values: Vec<String> },
}

/// What to do with the user's role after a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleDecision {
    /// Driver `default`: keep the role the user has; a user without any gets `default`.
    KeepExistingOrDefault { default: BuiltinRole },
    /// Driver `oidc`: the user's one role is `role`, chosen by the mapping at `mapping_index`.
    Assign {
        role: BuiltinRole,
        mapping_index: usize,
    },
}

#[derive(Debug)]
enum Matcher {
    Exact(String),
    /// Anchored pattern; `source` is also accepted by equality.
    Pattern {
        source: String,
        regex: Regex,
    },
}

impl Matcher {
    fn new(claim_value: &str) -> (Self, Option<regex::Error>) {
        const SYNTAX: &[char] = &[
            '\\', '.', '+', '*', '?', '(', ')', '|', '[', ']', '{', '}', '^', '$',
        ];
        if !claim_value.contains(SYNTAX) {
            return (Matcher::Exact(claim_value.to_owned()), None);
        }
        match Regex::new(&format!("^(?:{claim_value})$")) {
            Ok(regex) => (
                Matcher::Pattern {
                    source: claim_value.to_owned(),
                    regex,
                },
                None,
            ),
            Err(e) => (Matcher::Exact(claim_value.to_owned()), Some(e)),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(s) => s == value,
            Matcher::Pattern { source, regex } => source == value || regex.is_match(value),
        }
    }
}

#[derive(Debug)]
struct Mapping {
    role: BuiltinRole,
    matcher: Matcher,
}

#[derive(Debug)]
enum Driver {
    Default,
    Oidc {
        claim: ClaimPath,
        mappings: Vec<Mapping>,
    },
}

/// Decides a user's role from their claims; built once at start-up.
#[derive(Debug)]
pub struct RoleMapper {
    driver: Driver,
    warnings: Vec<String>,
}

impl RoleMapper {
    /// `mappings` are (role name, claim value) pairs in configuration order. They are checked
    /// only for the `oidc` driver: an unknown role name is an error naming the mapping's index;
    /// a `claim_value` that is not a valid regular expression is kept as an exact string and
    /// reported in [`RoleMapper::warnings`].
    pub fn new<R, V>(
        driver: RoleDriver,
        role_claim: &str,
        mappings: &[(R, V)],
    ) -> Result<Self, RoleConfigError>
    where
        R: AsRef<str>,
        V: AsRef<str>,
    {
        let mut warnings = Vec::new();
        let driver = match driver {
            RoleDriver::Default => Driver::Default,
            RoleDriver::Oidc => {
                let mut compiled = Vec::with_capacity(mappings.len());
                for (index, (role_name, claim_value)) in mappings.iter().enumerate() {
                    let (role_name, claim_value) = (role_name.as_ref(), claim_value.as_ref());
                    let role = BuiltinRole::from_name(role_name).ok_or_else(|| {
                        RoleConfigError::UnknownRole {
                            index,
                            role_name: role_name.to_owned(),
                        }
                    })?;
                    let (matcher, error) = Matcher::new(claim_value);
                    if let Some(e) = error {
                        warnings.push(format!(
                            "role_assignment.oidc_role_mapper.role_mapping[{index}]: claim_value {claim_value:?} is not a valid regular expression, it only matches equal claim values: {e}"
                        ));
                    }
                    compiled.push(Mapping { role, matcher });
                }
                Driver::Oidc {
                    claim: ClaimPath::parse(role_claim),
                    mappings: compiled,
                }
            }
        };
        Ok(RoleMapper { driver, warnings })
    }

    /// Problems that did not stop start-up but should be logged once.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Decides the role for a user with these claims.
    pub fn assign(&self, claims: &Value) -> Result<RoleDecision, RoleError> {
        let (claim, mappings) = match &self.driver {
            Driver::Default => {
                return Ok(RoleDecision::KeepExistingOrDefault {
                    default: BuiltinRole::User,
                });
            }
            Driver::Oidc { claim, mappings } => (claim, mappings),
        };
        let values = string_list_claim(claims, claim)?;
        mappings
            .iter()
            .position(|m| values.iter().any(|v| m.matcher.matches(v)))
            .map(|mapping_index| RoleDecision::Assign {
                role: mappings[mapping_index].role,
                mapping_index,
            })
            .ok_or_else(|| RoleError::NoMatchingRole {
                claim: claim.as_str().to_owned(),
                values: values.iter().map(str::to_owned).collect(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn oidc(claim: &str, mappings: &[(&str, &str)]) -> RoleMapper {
        RoleMapper::new(RoleDriver::Oidc, claim, mappings).unwrap()
    }

    fn role(mapper: &RoleMapper, claims: Value) -> Option<BuiltinRole> {
        match mapper.assign(&claims) {
            Ok(RoleDecision::Assign { role, .. }) => Some(role),
            _ => None,
        }
    }

    #[test]
    fn builtin_table() {
        assert_eq!(
            BuiltinRole::Admin.id(),
            "71881883-1768-46bd-a24d-a356a2afdf7f"
        );
        assert_eq!(
            BuiltinRole::SpaceAdmin.id(),
            "2aadd357-682c-406b-8874-293091995fdd"
        );
        assert_eq!(
            BuiltinRole::User.id(),
            "d7beeea8-8ff4-406b-8fb6-ab2dd81e6b11"
        );
        assert_eq!(
            BuiltinRole::UserLight.id(),
            "38071a68-456a-4553-846a-fa67bf5596cc"
        );
        assert_eq!(
            BuiltinRole::from_name("guest"),
            Some(BuiltinRole::UserLight)
        );
        assert_eq!(BuiltinRole::UserLight.name(), "user-light");
        assert_eq!(BuiltinRole::from_name("Admin"), None);
        assert_eq!(
            BuiltinRole::from_id("2aadd357-682c-406b-8874-293091995fdd"),
            Some(BuiltinRole::SpaceAdmin)
        );
    }

    #[test]
    fn driver_names() {
        assert_eq!("default".parse(), Ok(RoleDriver::Default));
        assert_eq!("oidc".parse(), Ok(RoleDriver::Oidc));
        assert_eq!(
            "static".parse::<RoleDriver>(),
            Err(RoleConfigError::UnknownDriver("static".into()))
        );
    }

    #[test]
    fn default_driver_keeps_or_defaults_to_user() {
        let mapper = RoleMapper::new(RoleDriver::Default, "roles", &[("nonsense", "x")]).unwrap();
        assert_eq!(
            mapper.assign(&json!({})),
            Ok(RoleDecision::KeepExistingOrDefault {
                default: BuiltinRole::User
            })
        );
    }

    #[test]
    fn default_mapping() {
        let mapper = oidc(DEFAULT_ROLE_CLAIM, &DEFAULT_ROLE_MAPPING);
        assert_eq!(
            role(&mapper, json!({"roles": "ocisAdmin"})),
            Some(BuiltinRole::Admin)
        );
        assert_eq!(
            role(&mapper, json!({"roles": ["x", "ocisGuest"]})),
            Some(BuiltinRole::UserLight)
        );
        assert!(mapper.warnings().is_empty());
    }

    #[test]
    fn first_mapping_in_configuration_order_wins() {
        let mapper = oidc(
            "ocisRoles",
            &[
                ("admin", "myAdminRole"),
                ("spaceadmin", "mySpaceAdminRole"),
                ("user", "myUserRole"),
                ("guest", "myGuestRole"),
            ],
        );
        let claims = json!({"ocisRoles": ["myUserRole", "mySpaceAdminRole"]});
        assert_eq!(
            mapper.assign(&claims),
            Ok(RoleDecision::Assign {
                role: BuiltinRole::SpaceAdmin,
                mapping_index: 1
            })
        );
        let reversed = oidc(
            "ocisRoles",
            &[("user", "myUserRole"), ("spaceadmin", "mySpaceAdminRole")],
        );
        assert_eq!(role(&reversed, claims), Some(BuiltinRole::User));
    }

    #[test]
    fn seed_regex_examples() {
        let mapper = oidc(
            "ocisRoles",
            &[
                ("user", "ocisUser"),
                ("user-light", "ocis-user-.*"),
                ("guest", "ocis-guest-[a-zA-Z0-9]"),
            ],
        );
        let r = |v: &str| role(&mapper, json!({ "ocisRoles": v }));
        assert_eq!(r("ocisUser"), Some(BuiltinRole::User));
        assert_eq!(r("ocis-user-anything"), Some(BuiltinRole::UserLight));
        assert_eq!(r("ocis-user-"), Some(BuiltinRole::UserLight));
        assert_eq!(r("ocis-guest-a"), Some(BuiltinRole::UserLight));
        assert_eq!(
            r("ocis-guest-ab"),
            None,
            "the pattern is anchored at the end"
        );
        assert_eq!(
            r("x-ocis-user-1"),
            None,
            "the pattern is anchored at the start"
        );
        assert_eq!(r("ocisUser2"), None);
    }

    #[test]
    fn alternation_is_anchored_as_a_whole() {
        let mapper = oidc("roles", &[("admin", "a|b")]);
        assert_eq!(
            role(&mapper, json!({"roles": "b"})),
            Some(BuiltinRole::Admin)
        );
        assert_eq!(role(&mapper, json!({"roles": "ab"})), None);
        assert_eq!(role(&mapper, json!({"roles": "xb"})), None);
    }

    #[test]
    fn invalid_regex_matches_only_equal_values() {
        let mapper = oidc("roles", &[("admin", "ocis-[admin"), ("user", ".*")]);
        assert_eq!(mapper.warnings().len(), 1);
        assert!(mapper.warnings()[0].contains("role_mapping[0]"));
        assert_eq!(
            role(&mapper, json!({"roles": "ocis-[admin"})),
            Some(BuiltinRole::Admin)
        );
        assert_eq!(
            role(&mapper, json!({"roles": "ocis-a"})),
            Some(BuiltinRole::User)
        );
    }

    #[test]
    fn pattern_source_also_matches_literally() {
        let mapper = oidc("roles", &[("admin", "a+b")]);
        assert_eq!(
            role(&mapper, json!({"roles": "aab"})),
            Some(BuiltinRole::Admin)
        );
        assert_eq!(
            role(&mapper, json!({"roles": "a+b"})),
            Some(BuiltinRole::Admin)
        );
    }

    #[test]
    fn no_match_is_a_refusal_naming_the_values() {
        let mapper = oidc("roles", &DEFAULT_ROLE_MAPPING);
        assert_eq!(
            mapper.assign(&json!({"roles": ["nobody", "ocisadmin"]})),
            Err(RoleError::NoMatchingRole {
                claim: "roles".into(),
                values: vec!["nobody".into(), "ocisadmin".into()]
            })
        );
        assert!(matches!(
            mapper.assign(&json!({"roles": []})),
            Err(RoleError::NoMatchingRole { .. })
        ));
        assert!(matches!(
            mapper.assign(&json!({"sub": "x"})),
            Err(RoleError::Claim(ClaimError::Missing { .. }))
        ));
        assert!(matches!(
            mapper.assign(&json!({"roles": [1]})),
            Err(RoleError::Claim(ClaimError::NonStringElement { .. }))
        ));
    }

    #[test]
    fn nested_role_claim() {
        let mapper = oidc("realm_access.roles", &DEFAULT_ROLE_MAPPING);
        let claims = json!({"realm_access": {"roles": ["offline_access", "ocisUser"]}});
        assert_eq!(role(&mapper, claims), Some(BuiltinRole::User));
    }

    #[test]
    fn unknown_role_name_is_a_startup_error() {
        let err = RoleMapper::new(
            RoleDriver::Oidc,
            "roles",
            &[
                ("admin".to_owned(), "a".to_owned()),
                ("superuser".into(), "b".into()),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err,
            RoleConfigError::UnknownRole {
                index: 1,
                role_name: "superuser".into()
            }
        );
        assert!(err.to_string().contains("role_mapping[1]"));
    }
}
