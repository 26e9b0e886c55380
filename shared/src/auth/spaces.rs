//! Claim-managed space memberships (`claim_space_management`).
//!
//! An IdP can state which project spaces a user belongs to, and with which role, as a list of
//! strings in one claim (for example `spaceid=<id>:role=member`). A configured regular
//! expression with exactly two capture groups (space id, OIDC role) extracts the pair from each
//! entry, and an optional `oidcRole:ocisRole` mapping translates the role. [`SpaceClaimMapper`]
//! checks that configuration at start-up and turns a user's claims into the desired memberships;
//! applying them to the spaces is the caller's business.
//!
//! Difference from oCIS: a missing or non-array claim is an error ([`SpaceClaimError`]) that the
//! caller logs and then leaves memberships alone. oCIS treats it as an empty list and removes the
//! user from every project space they are a direct member of.

use std::fmt;
use std::str::FromStr;

use regex::Regex;
use serde_json::Value;
use thiserror::Error;

use super::claims::ClaimPath;

/// The space roles a claim can grant, ordered by permission: when one space appears several
/// times the greatest role wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpaceRole {
    Viewer,
    Editor,
    Manager,
}

impl SpaceRole {
    pub fn as_str(self) -> &'static str {
        match self {
            SpaceRole::Viewer => "viewer",
            SpaceRole::Editor => "editor",
            SpaceRole::Manager => "manager",
        }
    }
}

impl FromStr for SpaceRole {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(SpaceRole::Viewer),
            "editor" => Ok(SpaceRole::Editor),
            "manager" => Ok(SpaceRole::Manager),
            _ => Err(()),
        }
    }
}

impl fmt::Display for SpaceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `claim_space_management` configuration that cannot work; stops start-up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpaceConfigError {
    #[error("claim_space_management.claim is empty")]
    EmptyClaim,
    #[error("claim_space_management.regexp is not a valid regular expression: {0}")]
    InvalidRegexp(String),
    #[error(
        "claim_space_management.regexp needs exactly two capture groups (space id, role), has {0}"
    )]
    CaptureGroups(usize),
    #[error(
        "claim_space_management.mapping[{index}]: {item:?} is not of the form oidcRole:ocisRole"
    )]
    MalformedMapping { index: usize, item: String },
    #[error(
        "claim_space_management.mapping[{index}]: {role:?} is not one of viewer, editor, manager"
    )]
    UnknownRole { index: usize, role: String },
    #[error("claim_space_management.mapping[{index}]: {from:?} is mapped more than once")]
    DuplicateMapping { index: usize, from: String },
}

/// The claim gives no usable list. The caller logs this and leaves the user's memberships as
/// they are (it does not mean "member of no space"). Not retryable: the claims will not change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpaceClaimError {
    #[error("claim {claim:?} for claim-managed spaces is missing")]
    ClaimMissing { claim: String },
    #[error("claim {claim:?} for claim-managed spaces is not an array")]
    NotAnArray { claim: String },
}

/// Extracts desired space memberships from claims; built once at start-up.
#[derive(Debug)]
pub struct SpaceClaimMapper {
    claim: ClaimPath,
    regex: Regex,
    /// (OIDC role, space role); empty means the claim carries space role names directly.
    mapping: Vec<(String, SpaceRole)>,
}

impl SpaceClaimMapper {
    /// `claim` is a claim name (dotted paths as in [`ClaimPath`]); `regexp` must compile and have
    /// exactly two capture groups; `mapping` items are `oidcRole:ocisRole` (surrounding
    /// whitespace ignored), each OIDC role at most once, each target a [`SpaceRole`].
    pub fn new<S: AsRef<str>>(
        claim: &str,
        regexp: &str,
        mapping: &[S],
    ) -> Result<Self, SpaceConfigError> {
        if claim.is_empty() {
            return Err(SpaceConfigError::EmptyClaim);
        }
        let regex =
            Regex::new(regexp).map_err(|e| SpaceConfigError::InvalidRegexp(e.to_string()))?;
        let groups = regex.captures_len() - 1;
        if groups != 2 {
            return Err(SpaceConfigError::CaptureGroups(groups));
        }
        let mut parsed: Vec<(String, SpaceRole)> = Vec::with_capacity(mapping.len());
        for (index, item) in mapping.iter().enumerate() {
            let item = item.as_ref().trim();
            let (from, to) = item
                .split_once(':')
                .filter(|(from, to)| !from.is_empty() && !to.is_empty())
                .ok_or_else(|| SpaceConfigError::MalformedMapping {
                    index,
                    item: item.to_owned(),
                })?;
            let role = to
                .parse::<SpaceRole>()
                .map_err(|()| SpaceConfigError::UnknownRole {
                    index,
                    role: to.to_owned(),
                })?;
            if parsed.iter().any(|(f, _)| f == from) {
                return Err(SpaceConfigError::DuplicateMapping {
                    index,
                    from: from.to_owned(),
                });
            }
            parsed.push((from.to_owned(), role));
        }
        Ok(SpaceClaimMapper {
            claim: ClaimPath::parse(claim),
            regex,
            mapping: parsed,
        })
    }

    /// The desired memberships as (space id, role), borrowed from the claims, sorted by space
    /// id, one per space (the greatest role when a space appears more than once). Entries that
    /// are not strings, do not match the regular expression, have an empty space id, or whose
    /// role is not mapped (or, without a mapping, not a space role name) are skipped silently:
    /// claims often carry unrelated data.
    pub fn memberships<'a>(
        &self,
        claims: &'a Value,
    ) -> Result<Vec<(&'a str, SpaceRole)>, SpaceClaimError> {
        let entries = match self.claim.lookup(claims) {
            None => {
                return Err(SpaceClaimError::ClaimMissing {
                    claim: self.claim.as_str().to_owned(),
                });
            }
            Some(Value::Array(entries)) => entries,
            Some(_) => {
                return Err(SpaceClaimError::NotAnArray {
                    claim: self.claim.as_str().to_owned(),
                });
            }
        };
        let mut locations = self.regex.capture_locations();
        let mut out = Vec::new();
        for entry in entries.iter().filter_map(Value::as_str) {
            if self.regex.captures_read(&mut locations, entry).is_none() {
                continue;
            }
            let group = |i| locations.get(i).map(|(start, end)| &entry[start..end]);
            let (Some(space), Some(raw_role)) = (group(1), group(2)) else {
                continue;
            };
            if space.is_empty() {
                continue;
            }
            if let Some(role) = self.role(raw_role) {
                out.push((space, role));
            }
        }
        out.sort_unstable_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
        out.dedup_by(|later, kept| later.0 == kept.0);
        Ok(out)
    }

    fn role(&self, raw: &str) -> Option<SpaceRole> {
        if self.mapping.is_empty() {
            return raw.parse().ok();
        }
        self.mapping
            .iter()
            .find(|(from, _)| from == raw)
            .map(|(_, role)| *role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NO_MAPPING: &[&str] = &[];

    fn vault() -> SpaceClaimMapper {
        SpaceClaimMapper::new(
            "spaces",
            "spaceid=([a-zA-Z0-9-]+),roleid=(.*)",
            &["overseer:manager", "worker:editor", "ghoul:viewer"],
        )
        .unwrap()
    }

    fn one(mapper: &SpaceClaimMapper, entry: &str) -> Vec<(String, SpaceRole)> {
        let claims = json!({ "spaces": [entry] });
        mapper
            .memberships(&claims)
            .unwrap()
            .into_iter()
            .map(|(s, r)| (s.to_owned(), r))
            .collect()
    }

    #[test]
    fn map_claims_raw_roles() {
        let mapper = SpaceClaimMapper::new(
            "spaces",
            "some-string:moreinfo:([a-zA-Z0-9-]+):and-the-role-is-(.*)",
            NO_MAPPING,
        )
        .unwrap();
        assert_eq!(
            one(
                &mapper,
                "some-string:moreinfo:here-is-my-uuid:and-the-role-is-viewer"
            ),
            [("here-is-my-uuid".to_owned(), SpaceRole::Viewer)]
        );
        assert!(
            one(
                &mapper,
                "some-other-string:moreinfo:here-is-my-uuid:and-the-role-is-viewer"
            )
            .is_empty()
        );
        assert!(
            one(
                &mapper,
                "some-string:moreinfo:here-is-my-uuid:and-the-role-is-here"
            )
            .is_empty(),
            "a raw role that is not a space role is ignored"
        );
    }

    #[test]
    fn map_claims_with_mapping() {
        let m = vault();
        let r = |e: &str| one(&m, e).first().map(|(s, r)| (s.clone(), *r));
        let v = |r| Some(("vault36".to_owned(), r));
        assert_eq!(r("spaceid=vault36,roleid=overseer"), v(SpaceRole::Manager));
        assert_eq!(r("spaceid=vault36,roleid=worker"), v(SpaceRole::Editor));
        assert_eq!(r("spaceid=vault36,roleid=ghoul"), v(SpaceRole::Viewer));
        assert_eq!(r("spaceid=vault36,roleid=radroach"), None);
        assert_eq!(r("differentid=vault36,roleid=overseer"), None);
        assert_eq!(
            r("spaceid=vault36,roleid=manager"),
            None,
            "only mapped roles"
        );
    }

    #[test]
    fn seed_example() {
        let m = SpaceClaimMapper::new(
            "ocis-spaces",
            "spaceid=([a-zA-Z0-9-]+):role=(.*)",
            &["member:editor", " spectator:viewer"],
        )
        .unwrap();
        let claims = json!({"ocis-spaces": [
            "spaceid=b622d44a-1747-4eda-8905-89f3605d5849:role=member",
            "spaceid=129cb9b6-c579-41b5-9316-93c6543484e5:role=spectator",
        ]});
        assert_eq!(
            m.memberships(&claims).unwrap(),
            [
                ("129cb9b6-c579-41b5-9316-93c6543484e5", SpaceRole::Viewer),
                ("b622d44a-1747-4eda-8905-89f3605d5849", SpaceRole::Editor),
            ]
        );
    }

    #[test]
    fn highest_permission_wins_and_output_is_sorted() {
        let claims = json!({"spaces": [
            "spaceid=b,roleid=ghoul",
            "spaceid=a,roleid=worker",
            "spaceid=b,roleid=overseer",
            "spaceid=b,roleid=worker",
            "spaceid=a,roleid=ghoul",
            42,
            "noise",
            "spaceid=,roleid=overseer",
        ]});
        assert_eq!(
            vault().memberships(&claims).unwrap(),
            [("a", SpaceRole::Editor), ("b", SpaceRole::Manager)]
        );
    }

    #[test]
    fn missing_or_non_array_claim_is_an_error_not_an_empty_list() {
        let m = vault();
        assert_eq!(
            m.memberships(&json!({"other": []})),
            Err(SpaceClaimError::ClaimMissing {
                claim: "spaces".into()
            })
        );
        assert_eq!(
            m.memberships(&json!({"spaces": null})),
            Err(SpaceClaimError::ClaimMissing {
                claim: "spaces".into()
            })
        );
        assert_eq!(
            m.memberships(&json!({"spaces": "spaceid=a,roleid=worker"})),
            Err(SpaceClaimError::NotAnArray {
                claim: "spaces".into()
            })
        );
        assert_eq!(m.memberships(&json!({"spaces": []})), Ok(vec![]));
    }

    #[test]
    fn nested_claim_path() {
        let m = SpaceClaimMapper::new("ext.spaces", "(.+)/(.+)", NO_MAPPING).unwrap();
        let claims = json!({"ext": {"spaces": ["s1/manager"]}});
        assert_eq!(
            m.memberships(&claims).unwrap(),
            [("s1", SpaceRole::Manager)]
        );
    }

    #[test]
    fn optional_group_that_did_not_participate_is_skipped() {
        let m = SpaceClaimMapper::new("s", "^(x)?:(viewer)$", NO_MAPPING).unwrap();
        assert_eq!(
            m.memberships(&json!({"s": [":viewer", "x:viewer"]}))
                .unwrap(),
            [("x", SpaceRole::Viewer)]
        );
    }

    #[test]
    fn startup_errors() {
        let new = |claim: &str, re: &str, mapping: &[&str]| {
            SpaceClaimMapper::new(claim, re, mapping).unwrap_err()
        };
        assert_eq!(new("", "(a)(b)", &[]), SpaceConfigError::EmptyClaim);
        assert!(matches!(
            new("c", "(a", &[]),
            SpaceConfigError::InvalidRegexp(_)
        ));
        assert_eq!(new("c", "(a)", &[]), SpaceConfigError::CaptureGroups(1));
        assert_eq!(
            new("c", "(a)(b)(c)", &[]),
            SpaceConfigError::CaptureGroups(3)
        );
        assert_eq!(
            new("c", "(a)(b)", &["x:viewer", "broken"]),
            SpaceConfigError::MalformedMapping {
                index: 1,
                item: "broken".into()
            }
        );
        assert_eq!(
            new("c", "(a)(b)", &["x:owner"]),
            SpaceConfigError::UnknownRole {
                index: 0,
                role: "owner".into()
            }
        );
        assert_eq!(
            new("c", "(a)(b)", &["x:viewer", "x:editor"]),
            SpaceConfigError::DuplicateMapping {
                index: 1,
                from: "x".into()
            }
        );
        assert!(SpaceClaimMapper::new("c", "(?P<space>a)(?P<role>b)", NO_MAPPING).is_ok());
    }

    #[test]
    fn role_order() {
        assert!(SpaceRole::Viewer < SpaceRole::Editor && SpaceRole::Editor < SpaceRole::Manager);
        assert_eq!("manager".parse(), Ok(SpaceRole::Manager));
        assert_eq!("Manager".parse::<SpaceRole>(), Err(()));
    }
}
