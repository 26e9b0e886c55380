//! The seed file of the `builtin` backend (`builtin_accounts.seed_file`): the users and groups a
//! fresh cluster starts with.
//!
//! Seeding only creates what is missing — users, groups, memberships and roles — and never
//! changes or removes anything, so every node can run it at start-up, several nodes starting
//! together included: creation goes through the store's compare-and-set, and a node that loses a
//! race simply finds the winner's record.
//!
//! ```yaml
//! groups:
//!   - name: physics-lovers
//!     id: 262982c1-2362-4afa-bfdf-8cbfef64a06e   # optional
//! users:
//!   - username: einstein
//!     display_name: Albert Einstein
//!     mail: einstein@example.org                  # optional
//!     groups: [physics-lovers]                    # created when not listed above
//!     role: admin                                 # admin|spaceadmin|user|user-light; default user
//!     id: 4c510ada-c86b-4815-8820-42cdf82c3d51   # optional
//! ```

use std::path::{Path, PathBuf};

use gatehouse_shared::auth::roles::BuiltinRole;
use serde::Deserialize;

use super::backend::{CreateError, Directory, LookupKind, NewUser};
use super::{AccountError, Group};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    #[serde(default)]
    pub users: Vec<SeedUser>,
    #[serde(default)]
    pub groups: Vec<SeedGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedUser {
    pub username: String,
    pub display_name: String,
    #[serde(default)]
    pub mail: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedGroup {
    pub name: String,
    #[serde(default)]
    pub id: Option<String>,
}

/// Why the seed file cannot be used. Reading and parsing problems are configuration errors;
/// `Apply` carries the directory error (retryable when the store was unreachable).
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("builtin_accounts.seed_file: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("builtin_accounts.seed_file: {path} is not a valid seed file: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("builtin_accounts.seed_file: {0}")]
    Apply(#[from] AccountError),
}

impl SeedFile {
    pub fn load(path: &Path) -> Result<Self, SeedError> {
        let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| SeedError::Parse {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses and checks the file: names must be non-empty and roles known.
    pub fn parse(text: &str) -> Result<Self, String> {
        let seed: SeedFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        for (i, user) in seed.users.iter().enumerate() {
            if user.username.is_empty() || user.display_name.is_empty() {
                return Err(format!(
                    "users[{i}]: username and display_name must not be empty"
                ));
            }
            if let Some(role) = &user.role
                && BuiltinRole::from_name(role).is_none()
            {
                return Err(format!(
                    "users[{i}]: role {role:?} is not one of admin, spaceadmin, user, user-light"
                ));
            }
            if user.groups.iter().any(String::is_empty) {
                return Err(format!("users[{i}]: group names must not be empty"));
            }
        }
        if let Some(i) = seed.groups.iter().position(|g| g.name.is_empty()) {
            return Err(format!("groups[{i}]: name must not be empty"));
        }
        Ok(seed)
    }
}

/// The group named `name`, created (with `id` when given) if missing.
pub async fn ensure_group(
    directory: &dyn Directory,
    name: &str,
    id: Option<&str>,
) -> Result<Group, AccountError> {
    if let Some(group) = directory.find_group(name).await? {
        return Ok(group);
    }
    match directory.create_group(name, id).await {
        Ok(group) => Ok(group),
        Err(CreateError::AlreadyExists) => {
            directory
                .find_group(name)
                .await?
                .ok_or_else(|| AccountError::Backend {
                    reason: format!("group {name:?} exists but cannot be read"),
                    retryable: true,
                })
        }
        Err(CreateError::Other(e)) => Err(e),
    }
}

/// Creates what the seed describes and is missing. Returns (user id, role) pairs for the
/// caller to store roles for.
pub async fn apply(
    directory: &dyn Directory,
    seed: &SeedFile,
) -> Result<Vec<(String, BuiltinRole)>, AccountError> {
    for group in &seed.groups {
        ensure_group(directory, &group.name, group.id.as_deref()).await?;
    }
    let mut roles = Vec::with_capacity(seed.users.len());
    for user in &seed.users {
        let existing = directory
            .find_user(LookupKind::Username, &user.username)
            .await?;
        let found = match existing {
            Some(found) => found,
            None => {
                let new = NewUser {
                    username: user.username.clone(),
                    display_name: user.display_name.clone(),
                    mail: user.mail.clone(),
                    identity: None,
                    id: user.id.clone(),
                };
                match directory.create_user(&new).await {
                    Ok(created) => created,
                    Err(CreateError::AlreadyExists) => directory
                        .find_user(LookupKind::Username, &user.username)
                        .await?
                        .ok_or_else(|| AccountError::Backend {
                            reason: format!(
                                "seed user {:?}: its id or name is taken by another user",
                                user.username
                            ),
                            retryable: false,
                        })?,
                    Err(CreateError::Other(e)) => return Err(e),
                }
            }
        };
        for name in &user.groups {
            if found.groups.iter().any(|g| &g.name == name) {
                continue;
            }
            let group = ensure_group(directory, name, None).await?;
            directory.add_member(&group, &found.id).await?;
        }
        let role = user
            .role
            .as_deref()
            .and_then(BuiltinRole::from_name)
            .unwrap_or(BuiltinRole::User);
        roles.push((found.id, role));
    }
    Ok(roles)
}
