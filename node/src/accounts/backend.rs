//! The operations the account resolver needs from a user directory, so that provisioning, group
//! sync and the provisioning leases are written once for both the LibreGraph and the built-in
//! directory.

use async_trait::async_trait;

use super::{AccountError, Group};

/// Which user attribute a lookup compares (`user_cs3_claim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LookupKind {
    Username,
    Mail,
    UserId,
}

impl LookupKind {
    /// `username`, `mail` or `userid`, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            LookupKind::Username => "username",
            LookupKind::Mail => "mail",
            LookupKind::UserId => "userid",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "username" => Some(LookupKind::Username),
            "mail" => Some(LookupKind::Mail),
            "userid" => Some(LookupKind::UserId),
            _ => None,
        }
    }

    /// Usernames and mail addresses compare without case (as LDAP does); ids exactly.
    pub fn normalise(self, value: &str) -> String {
        match self {
            LookupKind::UserId => value.to_owned(),
            LookupKind::Username | LookupKind::Mail => value.to_lowercase(),
        }
    }
}

/// A user as a directory holds it, with the groups the user is a member of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub mail: String,
    pub groups: Vec<Group>,
    /// `false` when the directory says the account must not sign in.
    pub enabled: bool,
}

/// The identity a provisioned user came from (LibreGraph `identities`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub issuer_assigned_id: String,
}

/// A user to create, built from the auto-provisioning claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub username: String,
    pub display_name: String,
    /// Empty: no mail.
    pub mail: String,
    pub identity: Option<Identity>,
    /// A fixed id (seed files); `None`: the directory chooses one.
    pub id: Option<String>,
}

/// Why a user or group could not be created.
#[derive(Debug)]
pub enum CreateError {
    /// Another writer created one with this name first (LibreGraph `nameAlreadyExists`): re-read it.
    AlreadyExists,
    Other(AccountError),
}

impl From<AccountError> for CreateError {
    fn from(e: AccountError) -> Self {
        CreateError::Other(e)
    }
}

/// A user directory. Every method is one logical operation on the directory; none of them caches.
#[async_trait]
pub trait Directory: Send + Sync {
    /// The user whose `kind` attribute equals `value`, with their groups; `None` when there is none.
    async fn find_user(
        &self,
        kind: LookupKind,
        value: &str,
    ) -> Result<Option<DirectoryUser>, AccountError>;
    async fn create_user(&self, user: &NewUser) -> Result<DirectoryUser, CreateError>;
    /// Sets the fields that are `Some`.
    async fn update_user(
        &self,
        id: &str,
        display_name: Option<&str>,
        mail: Option<&str>,
    ) -> Result<(), AccountError>;
    /// The group with this name (or id); `None` when there is none.
    async fn find_group(&self, name: &str) -> Result<Option<Group>, AccountError>;
    /// Creates a group; `id` fixed by a seed file or chosen by the directory.
    async fn create_group(&self, name: &str, id: Option<&str>) -> Result<Group, CreateError>;
    /// Makes the user a member; already being one is success.
    async fn add_member(&self, group: &Group, user_id: &str) -> Result<(), AccountError>;
    /// Ends a membership; not being a member is success.
    async fn remove_member(&self, group: &Group, user_id: &str) -> Result<(), AccountError>;

    /// The user with this user name when `password` is theirs. `Ok(None)` for an unknown user,
    /// a user without a password and a wrong password alike; [`AccountError::Disabled`] when the
    /// password is right but the account must not sign in. Costs one slow hash verification
    /// (also for unknown users, so timing does not tell which names exist).
    ///
    /// Directories that keep no passwords answer [`AccountError::Backend`], not retryable.
    async fn check_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<DirectoryUser>, AccountError> {
        let _ = (username, password);
        Err(passwords_unsupported())
    }

    /// Gives the user this password unless they already have one (seed files: seeding never
    /// changes what exists). Returns whether it set the password.
    async fn set_initial_password(
        &self,
        user_id: &str,
        password: &str,
    ) -> Result<bool, AccountError> {
        let _ = (user_id, password);
        Err(passwords_unsupported())
    }
}

/// The answer of a directory that keeps no passwords (LibreGraph checks none for us).
pub fn passwords_unsupported() -> AccountError {
    AccountError::Backend {
        reason: "this account backend does not check passwords".into(),
        retryable: false,
    }
}
