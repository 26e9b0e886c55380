//! Reading values out of OIDC claims by configured names.
//!
//! Several settings name a claim (`PROXY_USER_OIDC_CLAIM`, the role claim, the groups claim, the
//! claim-managed-spaces claim). oCIS lets such a name be a dotted path into nested objects, with
//! `\.` standing for a literal dot, and first tries the whole name as a top-level key so that
//! IdPs that put dots into flat claim names keep working. This module implements that lookup
//! once, parsed at start-up ([`ClaimPath`]), so the request path only walks borrowed JSON.
//!
//! Differences from oCIS, on purpose:
//! - A walk through a non-object stops with "not found"; oCIS silently stays on the current level,
//!   so `a.b` could resolve to a top-level `b`.
//! - [`GroupsClaim`] never turns an absent or malformed groups claim into "remove every group".

use std::fmt;

use serde_json::Value;
use thiserror::Error;

/// A claim name parsed into path segments.
///
/// The name is split at every `.` that is not directly preceded by a backslash; `\.` becomes a
/// literal `.` inside a segment. Any other backslash is kept as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    raw: String,
    /// The whole name with `\.` unescaped: tried as a top-level key before walking.
    literal: String,
    segments: Vec<String>,
}

impl ClaimPath {
    /// Parses a configured claim name. Never fails: an empty name is one empty segment and
    /// matches only an empty top-level key.
    pub fn parse(name: &str) -> Self {
        let mut segments = Vec::new();
        let mut current = String::new();
        let mut chars = name.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&'.') => {
                    chars.next();
                    current.push('.');
                }
                '.' => segments.push(std::mem::take(&mut current)),
                c => current.push(c),
            }
        }
        segments.push(current);
        ClaimPath {
            raw: name.to_owned(),
            literal: name.replace("\\.", "."),
            segments,
        }
    }

    /// The name as configured (escapes included), for log lines and error messages.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The path segments after unescaping.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Finds the claim: a top-level key equal to the whole unescaped name wins; otherwise the
    /// segments are walked through nested objects. `null` counts as absent.
    pub fn lookup<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        self.literal_value(claims)
            .or_else(|| self.walk(claims))
            .filter(|v| !v.is_null())
    }

    fn literal_value<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        claims.as_object()?.get(&self.literal)
    }

    fn walk<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        self.segments
            .iter()
            .try_fold(claims, |current, segment| current.as_object()?.get(segment))
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Why a claim could not be read as strings. None of these can be retried: the claims of a token
/// do not change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClaimError {
    #[error("claim {claim:?} is missing")]
    Missing { claim: String },
    #[error("claim {claim:?} is neither a string nor a list of strings")]
    NotStringOrList { claim: String },
    #[error("claim {claim:?} has a non-string element at index {index}")]
    NonStringElement { claim: String, index: usize },
}

/// A non-empty string claim. Like oCIS, a top-level key equal to the whole name is used when it
/// holds a non-empty string; otherwise the dotted path is walked. Empty strings count as absent.
pub fn string_claim<'a>(claims: &'a Value, path: &ClaimPath) -> Option<&'a str> {
    let non_empty = |v: &'a Value| v.as_str().filter(|s| !s.is_empty());
    path.literal_value(claims)
        .and_then(non_empty)
        .or_else(|| path.walk(claims).and_then(non_empty))
}

/// The strings of a claim that is either one string or an array of strings, borrowed from the
/// claims without copying. Built only by [`string_list_claim`], which has checked every element.
#[derive(Debug, Clone, Copy)]
pub enum StringList<'a> {
    One(&'a str),
    Many(&'a [Value]),
}

impl<'a> StringList<'a> {
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        let (one, many) = match *self {
            StringList::One(s) => (Some(s), &[][..]),
            StringList::Many(values) => (None, values),
        };
        one.into_iter().chain(many.iter().filter_map(Value::as_str))
    }

    pub fn len(&self) -> usize {
        match self {
            StringList::One(_) => 1,
            StringList::Many(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.iter().any(|s| s == needle)
    }
}

/// Reads a claim holding one string or an array of strings (the role claim). A missing claim, a
/// value of another type, or an array with a non-string element is an error; an empty array is
/// an empty list (the caller decides what that means).
pub fn string_list_claim<'a>(
    claims: &'a Value,
    path: &ClaimPath,
) -> Result<StringList<'a>, ClaimError> {
    match path.lookup(claims) {
        None => Err(ClaimError::Missing {
            claim: path.raw.clone(),
        }),
        Some(Value::String(s)) => Ok(StringList::One(s)),
        Some(Value::Array(values)) => match values.iter().position(|v| !v.is_string()) {
            Some(index) => Err(ClaimError::NonStringElement {
                claim: path.raw.clone(),
                index,
            }),
            None => Ok(StringList::Many(values)),
        },
        Some(_) => Err(ClaimError::NotStringOrList {
            claim: path.raw.clone(),
        }),
    }
}

/// What group sync should do for a user, decided from the groups claim.
///
/// Only a claim that is present says anything about memberships: an absent or `null` claim (or
/// one of an unusable type) means [`GroupsClaim::DoNotSync`], so a token without the claim never
/// removes the user from their groups. An empty array is an explicit "member of no groups".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupsClaim<'a> {
    DoNotSync,
    /// The desired group names: sorted, without duplicates and without empty names.
    Sync(Vec<&'a str>),
}

impl<'a> GroupsClaim<'a> {
    /// Reads the groups claim. Array elements that are not strings, and empty strings, are
    /// ignored (as oCIS ignores non-strings); a single string is a list of one group; any other
    /// type is treated as absent.
    pub fn from_claims(claims: &'a Value, path: &ClaimPath) -> Self {
        let mut groups: Vec<&'a str> = match path.lookup(claims) {
            Some(Value::Array(values)) => values.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => vec![s.as_str()],
            _ => return GroupsClaim::DoNotSync,
        };
        groups.retain(|g| !g.is_empty());
        groups.sort_unstable();
        groups.dedup();
        GroupsClaim::Sync(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn segments(name: &str) -> Vec<String> {
        ClaimPath::parse(name).segments().to_vec()
    }

    #[test]
    fn split_with_escaping() {
        assert_eq!(segments("roles"), ["roles"]);
        assert_eq!(segments("my.roles"), ["my", "roles"]);
        assert_eq!(segments(r"my\.roles"), ["my.roles"]);
        assert_eq!(segments(r"my\.other.roles"), ["my.other", "roles"]);
        assert_eq!(segments(r"my.other\.roles"), ["my", "other.roles"]);
    }

    #[test]
    fn other_backslashes_are_kept() {
        assert_eq!(segments(r"a\b.c"), [r"a\b", "c"]);
        assert_eq!(segments(r"a\"), [r"a\"]);
        assert_eq!(ClaimPath::parse(r"my\.roles").to_string(), r"my\.roles");
    }

    #[test]
    fn user_claim_nested_escaped_and_literal() {
        let nested = json!({"li": {"un": "foo"}});
        let literal = json!({"li.un": "foo"});
        assert_eq!(
            string_claim(&nested, &ClaimPath::parse("li.un")),
            Some("foo")
        );
        assert_eq!(
            string_claim(&literal, &ClaimPath::parse(r"li\.un")),
            Some("foo")
        );
        assert_eq!(
            string_claim(&literal, &ClaimPath::parse("li.un")),
            Some("foo")
        );
        assert_eq!(string_claim(&nested, &ClaimPath::parse(r"li\.un")), None);
    }

    #[test]
    fn literal_key_wins_over_nested() {
        let both = json!({"li.un": "flat", "li": {"un": "nested"}});
        assert_eq!(
            string_claim(&both, &ClaimPath::parse("li.un")),
            Some("flat")
        );
        let empty_flat = json!({"li.un": "", "li": {"un": "nested"}});
        assert_eq!(
            string_claim(&empty_flat, &ClaimPath::parse("li.un")),
            Some("nested")
        );
    }

    #[test]
    fn string_claim_missing_empty_or_wrong_type() {
        let path = ClaimPath::parse("email");
        assert_eq!(string_claim(&json!({"iss": "x"}), &path), None);
        assert_eq!(string_claim(&json!({"email": ""}), &path), None);
        assert_eq!(string_claim(&json!({"email": 5}), &path), None);
        assert_eq!(string_claim(&json!("email"), &path), None);
        assert_eq!(string_claim(&json!({"email": "a@b"}), &path), Some("a@b"));
    }

    #[test]
    fn walk_does_not_skip_non_objects() {
        let claims = json!({"a": "string", "b": "top"});
        assert_eq!(ClaimPath::parse("a.b").lookup(&claims), None);
    }

    fn list(claims: &Value, name: &str) -> Result<Vec<String>, ClaimError> {
        string_list_claim(claims, &ClaimPath::parse(name))
            .map(|l| l.iter().map(str::to_owned).collect())
    }

    #[test]
    fn role_claim_extraction() {
        assert_eq!(
            list(&json!({"roles": ["a", "b"]}), "roles").unwrap(),
            ["a", "b"]
        );
        assert_eq!(list(&json!({"roles": "a"}), "roles").unwrap(), ["a"]);
        let nested = json!({"sub": {"roles": ["a", "b"]}});
        assert_eq!(list(&nested, "sub.roles").unwrap(), ["a", "b"]);
        let nested_one = json!({"sub": {"roles": "a"}});
        assert_eq!(list(&nested_one, "sub.roles").unwrap(), ["a"]);
        let literal = json!({"sub.roles": ["a", "b"]});
        assert_eq!(list(&literal, r"sub\.roles").unwrap(), ["a", "b"]);
        assert_eq!(
            list(&json!({"sub": {}}), "sub.roles"),
            Err(ClaimError::Missing {
                claim: "sub.roles".into()
            })
        );
    }

    #[test]
    fn role_claim_bad_shapes() {
        assert_eq!(
            list(&json!({"roles": ["a", 1]}), "roles"),
            Err(ClaimError::NonStringElement {
                claim: "roles".into(),
                index: 1
            })
        );
        assert_eq!(
            list(&json!({"roles": {"a": 1}}), "roles"),
            Err(ClaimError::NotStringOrList {
                claim: "roles".into()
            })
        );
        assert!(matches!(
            list(&json!({"roles": null}), "roles"),
            Err(ClaimError::Missing { .. })
        ));
        let claims = json!({"roles": []});
        let empty = string_list_claim(&claims, &ClaimPath::parse("roles")).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn string_list_helpers() {
        let claims = json!({"roles": ["a", "b"], "one": "x"});
        let many = string_list_claim(&claims, &ClaimPath::parse("roles")).unwrap();
        assert_eq!(many.len(), 2);
        assert!(many.contains("b") && !many.contains("x"));
        let one = string_list_claim(&claims, &ClaimPath::parse("one")).unwrap();
        assert_eq!((one.len(), one.contains("x")), (1, true));
    }

    #[test]
    fn groups_claim_present() {
        let path = ClaimPath::parse("groups");
        for absent in [json!({}), json!({"groups": null}), json!({"other": ["x"]})] {
            assert_eq!(
                GroupsClaim::from_claims(&absent, &path),
                GroupsClaim::DoNotSync
            );
        }
        assert_eq!(
            GroupsClaim::from_claims(&json!({"groups": 7}), &path),
            GroupsClaim::DoNotSync
        );
        assert_eq!(
            GroupsClaim::from_claims(&json!({"groups": []}), &path),
            GroupsClaim::Sync(vec![])
        );
        assert_eq!(
            GroupsClaim::from_claims(&json!({"groups": ["admins"]}), &path),
            GroupsClaim::Sync(vec!["admins"])
        );
    }

    #[test]
    fn groups_claim_cleans_the_list() {
        let path = ClaimPath::parse("groups");
        let claims = json!({"groups": ["b", 3, "a", "", "b", {"x": 1}]});
        assert_eq!(
            GroupsClaim::from_claims(&claims, &path),
            GroupsClaim::Sync(vec!["a", "b"])
        );
        assert_eq!(
            GroupsClaim::from_claims(&json!({"groups": "solo"}), &path),
            GroupsClaim::Sync(vec!["solo"])
        );
    }
}
