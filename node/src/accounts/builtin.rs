//! The `builtin` account backend: users and groups kept in the cluster's state store.
//!
//! It exists so that a Gatehouse cluster can run without an oCIS graph service (tests, small
//! installations, the chaos benchmarks) while every node still sees the same directory: on a
//! NATS store the records live in the shared bucket, and each node's near-cache answers reads.
//!
//! Layout (all values JSON unless noted):
//! - `user:<id>` — [`UserRecord`]: id, username, display name, mail, identity, an optional
//!   password hash (Argon2id PHC string, `gatehouse_shared::auth::password`; never a clear
//!   password), and the **ids of the groups the user is a member of**. Memberships live only
//!   here: the resolver needs a user's groups on every cache miss, and nothing needs a group's
//!   member list.
//! - `user-by-name:<lower-case username>` and `user-by-mail:<lower-case mail>` — the user id
//!   (plain text).
//! - `group:<id>` — [`GroupRecord`]: id and name.
//! - `group-by-name:<lower-case name>` — the group id (plain text).
//!
//! Uniqueness comes from the store's compare-and-set: a user (group) exists once its
//! `user-by-name:` (`group-by-name:`) index entry has been *created*; the record is written first
//! and removed again when the index entry was taken by another writer, so the index never points
//! at a missing record. Record changes (memberships, names) are compare-and-set on the record's
//! revision and retried, so concurrent writers on different nodes do not lose each other's updates.
//!
//! Passwords exist for HTTP Basic authentication during development (seed files and the oCIS
//! demo users set them). Verifying one costs tens of milliseconds of CPU, so it runs on the
//! blocking pool; callers bound how many run at once.
//!
//! Only this backend reports `UserCreated`, `GroupCreated`, `GroupMemberAdded` and
//! `GroupMemberRemoved` through [`AccountEvents`]; with oCIS, the graph service emits them itself.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use gatehouse_shared::auth::password;
use gatehouse_shared::store::{Entry, Store, StoreError};
use serde::{Deserialize, Serialize};

use super::backend::{CreateError, Directory, DirectoryUser, LookupKind, NewUser};
use super::{Account, AccountError, AccountEvents, Group};

/// Attempts of one compare-and-set change before giving up (each loses only to another writer).
const CAS_ATTEMPTS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub mail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_assigned_id: Option<String>,
    /// Ids of the groups the user is a member of.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Argon2id PHC string; `None`: the user cannot sign in with a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: String,
    pub name: String,
}

pub fn user_key(id: &str) -> String {
    format!("user:{id}")
}

pub fn user_by_name_key(username: &str) -> String {
    format!("user-by-name:{}", username.to_lowercase())
}

pub fn user_by_mail_key(mail: &str) -> String {
    format!("user-by-mail:{}", mail.to_lowercase())
}

pub fn group_key(id: &str) -> String {
    format!("group:{id}")
}

pub fn group_by_name_key(name: &str) -> String {
    format!("group-by-name:{}", name.to_lowercase())
}

pub struct BuiltinDirectory {
    store: Arc<dyn Store>,
    events: Arc<dyn AccountEvents>,
}

fn store_error(op: &str, e: StoreError) -> AccountError {
    AccountError::Backend {
        reason: format!("builtin accounts: {op}: {e}"),
        retryable: e.is_retryable(),
    }
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> AccountError {
    AccountError::Backend {
        reason: format!("builtin accounts: record {key:?} is unreadable: {e}"),
        retryable: false,
    }
}

/// Runs a password hash or verification on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AccountError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AccountError::Backend {
            reason: format!("builtin accounts: password hashing task failed: {e}"),
            retryable: true,
        })
}

/// A hash of a password nobody knows, verified against when a user is unknown or has no
/// password, so that such checks cost as much as a wrong password.
fn decoy_hash() -> Option<&'static str> {
    static DECOY: OnceLock<Option<String>> = OnceLock::new();
    DECOY
        .get_or_init(|| password::hash(&uuid::Uuid::new_v4().to_string()).ok())
        .as_deref()
}

fn to_json<T: Serialize>(value: &T) -> Bytes {
    // Records are plain strings and vectors of strings: serialising them cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

impl BuiltinDirectory {
    pub fn new(store: Arc<dyn Store>, events: Arc<dyn AccountEvents>) -> Self {
        Self { store, events }
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, AccountError> {
        self.store
            .get(key)
            .await
            .map_err(|e| store_error("read", e))
    }

    async fn get_text(&self, key: &str) -> Result<Option<String>, AccountError> {
        Ok(self
            .get(key)
            .await?
            .map(|e| String::from_utf8_lossy(&e.value).into_owned()))
    }

    async fn user_record(&self, id: &str) -> Result<Option<(UserRecord, u64)>, AccountError> {
        let key = user_key(id);
        match self.get(&key).await? {
            None => Ok(None),
            Some(entry) => serde_json::from_slice(&entry.value)
                .map(|r| Some((r, entry.revision)))
                .map_err(|e| corrupt(&key, e)),
        }
    }

    async fn group_record(&self, id: &str) -> Result<Option<Group>, AccountError> {
        let key = group_key(id);
        match self.get(&key).await? {
            None => Ok(None),
            Some(entry) => serde_json::from_slice::<GroupRecord>(&entry.value)
                .map(|r| {
                    Some(Group {
                        id: r.id,
                        name: r.name,
                    })
                })
                .map_err(|e| corrupt(&key, e)),
        }
    }

    async fn to_directory_user(&self, record: UserRecord) -> Result<DirectoryUser, AccountError> {
        let mut groups = Vec::with_capacity(record.groups.len());
        for id in &record.groups {
            // A membership of a group whose record is gone is ignored.
            if let Some(group) = self.group_record(id).await? {
                groups.push(group);
            }
        }
        Ok(DirectoryUser {
            id: record.id,
            username: record.username,
            display_name: record.display_name,
            mail: record.mail,
            groups,
            enabled: !record.disabled,
        })
    }

    /// Applies `change` to the user's record with compare-and-set, retrying on conflicts.
    /// `change` returns whether it changed anything; nothing is written otherwise.
    async fn modify_user(
        &self,
        id: &str,
        mut change: impl FnMut(&mut UserRecord) -> bool,
    ) -> Result<Option<UserRecord>, AccountError> {
        let key = user_key(id);
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut record, revision)) = self.user_record(id).await? else {
                return Err(AccountError::Backend {
                    reason: format!("builtin accounts: user {id:?} does not exist"),
                    retryable: false,
                });
            };
            let before = record.clone();
            if !change(&mut record) {
                return Ok(None);
            }
            match self
                .store
                .update(&key, to_json(&record), None, revision)
                .await
            {
                Ok(_) => {
                    if before.mail != record.mail {
                        self.move_mail_index(id, &before.mail, &record.mail).await?;
                    }
                    return Ok(Some(record));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error("update user", e)),
            }
        }
        Err(AccountError::Backend {
            reason: format!("builtin accounts: user {id:?} kept changing under us"),
            retryable: true,
        })
    }

    async fn move_mail_index(&self, id: &str, old: &str, new: &str) -> Result<(), AccountError> {
        if !old.is_empty() {
            let old_key = user_by_mail_key(old);
            if self.get_text(&old_key).await?.as_deref() == Some(id) {
                self.store
                    .delete(&old_key)
                    .await
                    .map_err(|e| store_error("delete mail index", e))?;
            }
        }
        if !new.is_empty() {
            self.store
                .put(&user_by_mail_key(new), Bytes::from(id.to_owned()), None)
                .await
                .map_err(|e| store_error("write mail index", e))?;
        }
        Ok(())
    }

    /// Removes a record written by a creation that lost the race for its name; the winner's
    /// record is untouched because the loser's id is its own.
    async fn undo(&self, key: &str) {
        if let Err(e) = self.store.delete(key).await {
            tracing::warn!(key, error = %e, "builtin accounts: cannot remove an orphaned record");
        }
    }
}

#[async_trait]
impl Directory for BuiltinDirectory {
    async fn find_user(
        &self,
        kind: LookupKind,
        value: &str,
    ) -> Result<Option<DirectoryUser>, AccountError> {
        let id = match kind {
            LookupKind::UserId => Some(value.to_owned()),
            LookupKind::Username => self.get_text(&user_by_name_key(value)).await?,
            LookupKind::Mail => self.get_text(&user_by_mail_key(value)).await?,
        };
        let Some(id) = id else { return Ok(None) };
        match self.user_record(&id).await? {
            Some((record, _)) => Ok(Some(self.to_directory_user(record).await?)),
            None => Ok(None),
        }
    }

    async fn create_user(&self, user: &NewUser) -> Result<DirectoryUser, CreateError> {
        let id = user
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let record = UserRecord {
            id: id.clone(),
            username: user.username.clone(),
            display_name: user.display_name.clone(),
            mail: user.mail.clone(),
            issuer: user.identity.as_ref().map(|i| i.issuer.clone()),
            issuer_assigned_id: user.identity.as_ref().map(|i| i.issuer_assigned_id.clone()),
            groups: Vec::new(),
            disabled: false,
            password_hash: None,
        };
        let key = user_key(&id);
        match self.store.create(&key, to_json(&record), None).await {
            Ok(_) => {}
            // A seed id that is already taken: the user exists (under whatever name).
            Err(StoreError::Conflict { .. }) => return Err(CreateError::AlreadyExists),
            Err(e) => return Err(store_error("create user", e).into()),
        }
        match self
            .store
            .create(
                &user_by_name_key(&user.username),
                Bytes::from(id.clone()),
                None,
            )
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                self.undo(&key).await;
                return Err(CreateError::AlreadyExists);
            }
            Err(e) => {
                self.undo(&key).await;
                return Err(store_error("create user name index", e).into());
            }
        }
        self.move_mail_index(&id, "", &user.mail).await?;
        let created = self.to_directory_user(record).await?;
        self.events.user_created(&Account {
            id: created.id.clone(),
            username: created.username.clone(),
            display_name: created.display_name.clone(),
            mail: created.mail.clone(),
            groups: Vec::new(),
            group_names: Vec::new(),
            role_id: String::new(),
        });
        Ok(created)
    }

    async fn update_user(
        &self,
        id: &str,
        display_name: Option<&str>,
        mail: Option<&str>,
    ) -> Result<(), AccountError> {
        self.modify_user(id, |record| {
            let mut changed = false;
            if let Some(name) = display_name
                && record.display_name != name
            {
                record.display_name = name.to_owned();
                changed = true;
            }
            if let Some(mail) = mail
                && record.mail != mail
            {
                record.mail = mail.to_owned();
                changed = true;
            }
            changed
        })
        .await?;
        Ok(())
    }

    async fn find_group(&self, name: &str) -> Result<Option<Group>, AccountError> {
        match self.get_text(&group_by_name_key(name)).await? {
            Some(id) => self.group_record(&id).await,
            None => self.group_record(name).await,
        }
    }

    async fn create_group(&self, name: &str, id: Option<&str>) -> Result<Group, CreateError> {
        let id = id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let record = GroupRecord {
            id: id.clone(),
            name: name.to_owned(),
        };
        let key = group_key(&id);
        match self.store.create(&key, to_json(&record), None).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => return Err(CreateError::AlreadyExists),
            Err(e) => return Err(store_error("create group", e).into()),
        }
        match self
            .store
            .create(&group_by_name_key(name), Bytes::from(id.clone()), None)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                self.undo(&key).await;
                return Err(CreateError::AlreadyExists);
            }
            Err(e) => {
                self.undo(&key).await;
                return Err(store_error("create group name index", e).into());
            }
        }
        let group = Group {
            id,
            name: name.to_owned(),
        };
        self.events.group_created(&group);
        Ok(group)
    }

    async fn add_member(&self, group: &Group, user_id: &str) -> Result<(), AccountError> {
        let changed = self
            .modify_user(user_id, |record| {
                if record.groups.contains(&group.id) {
                    return false;
                }
                record.groups.push(group.id.clone());
                true
            })
            .await?;
        if changed.is_some() {
            self.events.member_added(group, user_id);
        }
        Ok(())
    }

    async fn remove_member(&self, group: &Group, user_id: &str) -> Result<(), AccountError> {
        let changed = self
            .modify_user(user_id, |record| {
                let before = record.groups.len();
                record.groups.retain(|g| g != &group.id);
                record.groups.len() != before
            })
            .await?;
        if changed.is_some() {
            self.events.member_removed(group, user_id);
        }
        Ok(())
    }

    async fn check_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<DirectoryUser>, AccountError> {
        let record = match self.get_text(&user_by_name_key(username)).await? {
            Some(id) => self.user_record(&id).await?.map(|(record, _)| record),
            None => None,
        };
        let stored = record.as_ref().and_then(|r| r.password_hash.clone());
        let password = password.to_owned();
        let matches = blocking(move || match stored {
            Some(phc) => password::verify(&password, &phc),
            None => {
                if let Some(decoy) = decoy_hash() {
                    password::verify(&password, decoy);
                }
                false
            }
        })
        .await?;
        let Some(record) = record.filter(|_| matches) else {
            return Ok(None);
        };
        if record.disabled {
            return Err(AccountError::Disabled {
                user: record.username,
            });
        }
        Ok(Some(self.to_directory_user(record).await?))
    }

    async fn set_initial_password(
        &self,
        user_id: &str,
        password: &str,
    ) -> Result<bool, AccountError> {
        match self.user_record(user_id).await? {
            Some((record, _)) if record.password_hash.is_some() => return Ok(false),
            _ => {}
        }
        let password = password.to_owned();
        let phc = blocking(move || password::hash(&password))
            .await?
            .map_err(|e| AccountError::Backend {
                reason: format!("builtin accounts: {e}"),
                retryable: false,
            })?;
        let changed = self
            .modify_user(user_id, |record| {
                if record.password_hash.is_some() {
                    return false;
                }
                record.password_hash = Some(phc.clone());
                true
            })
            .await?;
        Ok(changed.is_some())
    }
}
