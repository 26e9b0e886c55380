//! The seed file of the `builtin` backend (`builtin_accounts.seed_file`): the users and groups a
//! fresh cluster starts with.
//!
//! Seeding only creates what is missing — users, groups, memberships and roles — and never
//! changes or removes anything, so every node can run it at start-up, several nodes starting
//! together included: creation goes through the store's compare-and-set, and a node that loses a
//! race simply finds the winner's record.
//!
//! A user may have a `password`, in clear text: the seed file is a development aid. It is hashed
//! (Argon2id) when the seed is applied at start-up and only the hash is stored; like everything
//! else, it is set only on a user who has none, so changing it in the file later changes nothing.
//! Passwords are only used by HTTP Basic authentication (`enable_basic_auth`).
//!
//! [`demo_users`] is a built-in seed with the oCIS demo users (`builtin_accounts.demo_users`).
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
//!     password: relativity                        # optional; hashed at start-up
//! ```

use std::path::{Path, PathBuf};

use gatehouse_shared::auth::roles::BuiltinRole;
use serde::Deserialize;

use super::backend::{CreateError, Directory, DirectoryUser, LookupKind, NewUser};
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
    #[serde(default)]
    pub password: Option<SeedPassword>,
}

/// A clear-text seed password; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SeedPassword(pub String);

impl std::fmt::Debug for SeedPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
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
            if user.password.as_ref().is_some_and(|p| p.0.is_empty()) {
                return Err(format!(
                    "users[{i}]: password must not be empty (leave it out for no password)"
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

/// The demo groups of oCIS's idm service (`services/idm/ldif/demousers.ldif.tmpl`): name, id.
const DEMO_GROUPS: &[(&str, &str)] = &[
    ("users", "509a9dcd-bb37-4f4f-a01a-19dca27d9cfa"),
    ("sailing-lovers", "6040aa17-9c64-4fef-9bd0-77234d71bad0"),
    ("violin-haters", "dd58e5ec-842e-498b-8800-61f2ec6f911f"),
    ("radium-lovers", "7b87fd49-286e-4a5f-bafd-c535d5dd997a"),
    ("polonium-lovers", "cedc21aa-4072-4614-8676-fa9165f598ff"),
    ("quantum-lovers", "a1726108-01f8-4c30-88df-2b1a9d1cba1a"),
    ("philosophy-haters", "167cbee2-0518-455a-bfb2-031fe0621e5d"),
    ("physics-lovers", "262982c1-2362-4afa-bfdf-8cbfef64a06e"),
];

struct DemoUser {
    username: &'static str,
    password: &'static str,
    display_name: &'static str,
    id: &'static str,
    role: BuiltinRole,
    groups: &'static [&'static str],
}

/// The oCIS demo users: ids, names, mails and memberships as the idm service's demo LDIF
/// creates them, passwords as documented (and matching that LDIF's hashes), roles as the
/// settings service assigns them by default. `admin` is oCIS's initial admin user with the id it
/// had before `ocis init` generated one.
const DEMO_USERS: &[DemoUser] = &[
    DemoUser {
        username: "admin",
        password: "admin",
        display_name: "Admin",
        id: "ddc2004c-0977-11eb-9d3f-a793888cd0f8",
        role: BuiltinRole::Admin,
        groups: &["users"],
    },
    DemoUser {
        username: "einstein",
        password: "relativity",
        display_name: "Albert Einstein",
        id: "4c510ada-c86b-4815-8820-42cdf82c3d51",
        role: BuiltinRole::User,
        groups: &["users", "sailing-lovers", "violin-haters", "physics-lovers"],
    },
    DemoUser {
        username: "marie",
        password: "radioactivity",
        display_name: "Marie Skłodowska Curie",
        id: "f7fbf8c8-139b-4376-b307-cf0a8c2d0d9c",
        role: BuiltinRole::User,
        groups: &[
            "users",
            "radium-lovers",
            "polonium-lovers",
            "physics-lovers",
        ],
    },
    DemoUser {
        username: "richard",
        password: "superfluidity",
        display_name: "Richard Phillips Feynman",
        id: "932b4540-8d16-481e-8ef4-588e4b6b151c",
        role: BuiltinRole::User,
        groups: &[
            "users",
            "quantum-lovers",
            "philosophy-haters",
            "physics-lovers",
        ],
    },
    DemoUser {
        username: "moss",
        password: "vista",
        display_name: "Maurice Moss",
        id: "058bff95-6708-4fe5-91e4-9ea3d377588b",
        role: BuiltinRole::Admin,
        groups: &["users"],
    },
    DemoUser {
        username: "katherine",
        password: "gemini",
        display_name: "Katherine Johnson",
        id: "534bb038-6f9d-4093-946f-133be61fa4e7",
        role: BuiltinRole::SpaceAdmin,
        groups: &[],
    },
];

/// The seed of `builtin_accounts.demo_users`: the oCIS demo users and groups, with passwords.
pub fn demo_users() -> SeedFile {
    SeedFile {
        groups: DEMO_GROUPS
            .iter()
            .map(|(name, id)| SeedGroup {
                name: (*name).to_owned(),
                id: Some((*id).to_owned()),
            })
            .collect(),
        users: DEMO_USERS
            .iter()
            .map(|u| SeedUser {
                username: u.username.to_owned(),
                display_name: u.display_name.to_owned(),
                mail: format!("{}@example.org", u.username),
                groups: u.groups.iter().map(|g| (*g).to_owned()).collect(),
                role: Some(u.role.name().to_owned()),
                id: Some(u.id.to_owned()),
                password: Some(SeedPassword(u.password.to_owned())),
            })
            .collect(),
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
        // Another node may have won the id but not yet written the name index: the
        // record under the seed id, if it carries this name, is the group.
        Err(CreateError::AlreadyExists) => {
            if let Some(group) = directory.find_group(name).await? {
                return Ok(group);
            }
            match id {
                Some(id) => directory.find_group(id).await?.filter(|g| g.name == name),
                None => None,
            }
            .ok_or_else(|| AccountError::Backend {
                reason: format!("group {name:?} exists but cannot be read"),
                retryable: true,
            })
        }
        Err(CreateError::Other(e)) => Err(e),
    }
}

/// The user a lost creation race left behind: found by name, or (while the winner has
/// not yet written the name index) under the seed id with the seed's username.
async fn taken_by_seed(
    directory: &dyn Directory,
    user: &SeedUser,
) -> Result<Option<DirectoryUser>, AccountError> {
    if let Some(found) = directory
        .find_user(LookupKind::Username, &user.username)
        .await?
    {
        return Ok(Some(found));
    }
    let Some(id) = &user.id else { return Ok(None) };
    Ok(directory
        .find_user(LookupKind::UserId, id)
        .await?
        .filter(|found| found.username == user.username))
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
                    Err(CreateError::AlreadyExists) => taken_by_seed(directory, user)
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
        if let Some(password) = &user.password {
            directory
                .set_initial_password(&found.id, &password.0)
                .await?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use gatehouse_shared::auth::password;
    use gatehouse_shared::config::Config;
    use gatehouse_shared::store::{MemoryStore, Store};

    use super::*;
    use crate::accounts::builtin::{
        BuiltinDirectory, GroupRecord, UserRecord, group_key, user_by_name_key, user_key,
    };
    use crate::accounts::{
        Account, AccountEvents, AccountResolver, AccountSettings, NoEvents, role_key,
    };

    #[derive(Default)]
    struct Created {
        users: AtomicUsize,
        groups: AtomicUsize,
        members: AtomicUsize,
    }

    impl AccountEvents for Created {
        fn user_created(&self, _: &Account) {
            self.users.fetch_add(1, Ordering::SeqCst);
        }
        fn group_created(&self, _: &Group) {
            self.groups.fetch_add(1, Ordering::SeqCst);
        }
        fn member_added(&self, _: &Group, _: &str) {
            self.members.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn record(store: &dyn Store, username: &str) -> UserRecord {
        let id = store
            .get(&user_by_name_key(username))
            .await
            .unwrap()
            .unwrap()
            .value;
        let id = String::from_utf8(id.to_vec()).unwrap();
        let entry = store.get(&user_key(&id)).await.unwrap().unwrap();
        serde_json::from_slice(&entry.value).unwrap()
    }

    const SEED: &str = "
users:
  - username: alice
    display_name: Alice
    password: wonderland
  - username: bob
    display_name: Bob
";

    #[tokio::test]
    async fn seed_passwords_are_stored_as_hashes_and_never_replaced() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let directory = BuiltinDirectory::new(store.clone(), Arc::new(NoEvents));
        let seed = SeedFile::parse(SEED).unwrap();
        apply(&directory, &seed).await.unwrap();

        let alice = record(store.as_ref(), "alice").await;
        let phc = alice.password_hash.clone().unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(password::verify("wonderland", &phc));
        let raw = store
            .get(&user_key(&alice.id))
            .await
            .unwrap()
            .unwrap()
            .value;
        assert!(!String::from_utf8_lossy(&raw).contains("wonderland"));
        assert_eq!(record(store.as_ref(), "bob").await.password_hash, None);

        let changed = SeedFile::parse(&SEED.replace("wonderland", "looking-glass")).unwrap();
        apply(&directory, &changed).await.unwrap();
        assert_eq!(
            record(store.as_ref(), "alice").await.password_hash,
            Some(phc)
        );

        let found = directory
            .check_password("ALICE", "wonderland")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.username, "alice");
        for (user, pass) in [
            ("alice", "looking-glass"),
            ("alice", ""),
            ("bob", ""),
            ("nobody", "wonderland"),
        ] {
            assert_eq!(
                directory.check_password(user, pass).await.unwrap(),
                None,
                "{user}"
            );
        }
    }

    #[test]
    fn seed_passwords_must_not_be_empty_and_are_not_shown() {
        let err =
            SeedFile::parse("users: [{username: a, display_name: A, password: \"\"}]").unwrap_err();
        assert!(err.contains("password must not be empty"), "{err}");
        let seed = SeedFile::parse(SEED).unwrap();
        let shown = format!("{seed:?}");
        assert!(!shown.contains("wonderland"), "{shown}");
    }

    fn demo_settings() -> AccountSettings {
        let mut s = AccountSettings::from_config(&Config::default());
        s.demo_users = true;
        s
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_users_are_seeded_once_with_their_roles_and_passwords() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let events = Arc::new(Created::default());
        let starts: Vec<_> = (0..2)
            .map(|_| {
                let (store, events) = (store.clone(), events.clone());
                tokio::spawn(
                    async move { AccountResolver::new(demo_settings(), store, events).await },
                )
            })
            .collect();
        let mut resolvers = Vec::new();
        for start in starts {
            resolvers.push(start.await.unwrap().unwrap());
        }
        assert_eq!(events.users.load(Ordering::SeqCst), 6);
        assert_eq!(events.groups.load(Ordering::SeqCst), 8);
        assert_eq!(events.members.load(Ordering::SeqCst), 1 + 4 + 4 + 4 + 1);

        let want = [
            ("admin", "admin", BuiltinRole::Admin),
            ("einstein", "relativity", BuiltinRole::User),
            ("marie", "radioactivity", BuiltinRole::User),
            ("richard", "superfluidity", BuiltinRole::User),
            ("moss", "vista", BuiltinRole::Admin),
            ("katherine", "gemini", BuiltinRole::SpaceAdmin),
        ];
        let directory = resolvers[1].directory();
        for (username, pass, role) in want {
            let account = resolvers[0]
                .lookup(LookupKind::Username, username)
                .await
                .unwrap();
            assert_eq!(account.role_id, role.id(), "{username}");
            assert_eq!(account.mail, format!("{username}@example.org"));
            let user = directory.check_password(username, pass).await.unwrap();
            assert_eq!(user.map(|u| u.id), Some(account.id), "{username}");
        }
        let einstein = resolvers[1]
            .lookup(LookupKind::Username, "einstein")
            .await
            .unwrap();
        assert_eq!(einstein.id, "4c510ada-c86b-4815-8820-42cdf82c3d51");
        assert_eq!(einstein.display_name, "Albert Einstein");
        let mut groups = einstein.group_names.clone();
        groups.sort();
        assert_eq!(
            groups,
            ["physics-lovers", "sailing-lovers", "users", "violin-haters"]
        );
        assert!(
            einstein
                .groups
                .contains(&"262982c1-2362-4afa-bfdf-8cbfef64a06e".to_owned())
        );

        // A restart creates nothing and keeps a role and a password changed since.
        let moss = record(store.as_ref(), "moss").await;
        store
            .put(
                &role_key(&moss.id),
                BuiltinRole::User.id().as_bytes().to_vec().into(),
                None,
            )
            .await
            .unwrap();
        AccountResolver::new(demo_settings(), store.clone(), events.clone())
            .await
            .unwrap();
        assert_eq!(events.users.load(Ordering::SeqCst), 6);
        assert_eq!(events.groups.load(Ordering::SeqCst), 8);
        assert_eq!(events.members.load(Ordering::SeqCst), 14);
        assert_eq!(record(store.as_ref(), "moss").await, moss);
        let role = store.get(&role_key(&moss.id)).await.unwrap().unwrap().value;
        assert_eq!(&role[..], BuiltinRole::User.id().as_bytes());
    }

    /// The state a seeding node sees while another node is between writing a record and
    /// writing its name index.
    #[tokio::test]
    async fn a_record_whose_name_index_is_not_written_yet_counts_as_the_seeded_one() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let directory = BuiltinDirectory::new(store.clone(), Arc::new(NoEvents));
        let (group_id, user_id) = ("6040aa17-9c64-4fef-9bd0-77234d71bad0", "u-1");
        let group = GroupRecord {
            id: group_id.to_owned(),
            name: "physics-lovers".to_owned(),
        };
        store
            .create(
                &group_key(group_id),
                serde_json::to_vec(&group).unwrap().into(),
                None,
            )
            .await
            .unwrap();
        let found = ensure_group(&directory, "physics-lovers", Some(group_id))
            .await
            .unwrap();
        assert_eq!(found.id, group_id);
        let err = ensure_group(&directory, "other-name", Some(group_id))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot be read"), "{err}");

        let user = UserRecord {
            id: user_id.to_owned(),
            username: "einstein".to_owned(),
            display_name: "Albert Einstein".to_owned(),
            mail: String::new(),
            issuer: None,
            issuer_assigned_id: None,
            groups: Vec::new(),
            disabled: false,
            password_hash: None,
        };
        store
            .create(
                &user_key(user_id),
                serde_json::to_vec(&user).unwrap().into(),
                None,
            )
            .await
            .unwrap();
        let seed = SeedFile::parse(&format!(
            "users: [{{username: einstein, display_name: Albert Einstein, id: {user_id}}}]"
        ))
        .unwrap();
        let roles = apply(&directory, &seed).await.unwrap();
        assert_eq!(roles[0].0, user_id);
    }

    #[tokio::test]
    async fn no_demo_users_unless_asked() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let settings = AccountSettings::from_config(&Config::default());
        assert!(!settings.demo_users);
        let resolver = AccountResolver::new(settings, store, Arc::new(NoEvents))
            .await
            .unwrap();
        assert!(
            resolver
                .lookup(LookupKind::Username, "einstein")
                .await
                .is_err()
        );
    }
}
