//! The event payloads, shaped like reva's Go structs in `pkg/events` so that oCIS consumers
//! decode them with their own types.
//!
//! Go's `encoding/json` names untagged struct fields by their Go name (`Executant`, `UserID`,
//! `GroupID`, `ID`, …) and writes nil pointers as `null`; the CS3 protobuf messages inside them
//! carry snake_case JSON tags with `omitempty` (`idp`, `opaque_id`, `type`; `seconds`, `nanos`).
//! reva uses two timestamp types: `*types.Timestamp` (an object) for user and group events and
//! `time.Time` (an RFC 3339 string) for space-share events; both are reproduced.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::time::{format_rfc3339_nano, parse_rfc3339};
pub use crate::token::{RevaUserId, UserType};

/// CS3 `types.Timestamp`: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct CsTimestamp {
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub seconds: u64,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub nanos: u32,
}

impl CsTimestamp {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }
}

impl From<SystemTime> for CsTimestamp {
    fn from(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Self {
            seconds: d.as_secs(),
            nanos: d.subsec_nanos(),
        }
    }
}

/// Go `time.Time` as `encoding/json` writes it: RFC 3339 with up to nine fractional digits
/// (trailing zeros dropped). Always written in UTC (`Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoTime(pub SystemTime);

impl GoTime {
    pub fn now() -> Self {
        Self(SystemTime::now())
    }
}

impl Serialize for GoTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_rfc3339_nano(self.0))
    }
}

impl<'de> Deserialize<'de> for GoTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_rfc3339(&s)
            .map(GoTime)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid RFC 3339 time {s:?}")))
    }
}

/// CS3 `group.GroupId`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct GroupId {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub idp: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub opaque_id: String,
}

/// CS3 `provider.StorageSpaceId` (`<storage id>$<space id>` for oCIS spaces).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct StorageSpaceId {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub opaque_id: String,
}

/// `events.UserSignedIn`: a user started a new session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSignedIn {
    #[serde(rename = "Executant")]
    pub executant: Option<RevaUserId>,
    #[serde(rename = "Timestamp")]
    pub timestamp: Option<CsTimestamp>,
}

/// `events.BackchannelLogout`: the identity provider ended a session (spec §7.3). `SessionId` is
/// the OIDC `sid` (empty when the ended session had none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackchannelLogout {
    #[serde(rename = "Executant")]
    pub executant: Option<RevaUserId>,
    #[serde(rename = "SessionId")]
    pub session_id: String,
    #[serde(rename = "Timestamp")]
    pub timestamp: Option<CsTimestamp>,
}

/// `events.UserCreated`: an account was provisioned. `UserID` is the new user's opaque id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreated {
    #[serde(rename = "Executant")]
    pub executant: Option<RevaUserId>,
    #[serde(rename = "UserID")]
    pub user_id: String,
    #[serde(rename = "Timestamp")]
    pub timestamp: Option<CsTimestamp>,
}

/// `events.GroupCreated`. `GroupID` is the group's opaque id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCreated {
    #[serde(rename = "Executant")]
    pub executant: Option<RevaUserId>,
    #[serde(rename = "GroupID")]
    pub group_id: String,
    #[serde(rename = "Timestamp")]
    pub timestamp: Option<CsTimestamp>,
}

/// `events.GroupMemberAdded` / `events.GroupMemberRemoved` share this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembership {
    #[serde(rename = "Executant")]
    pub executant: Option<RevaUserId>,
    #[serde(rename = "GroupID")]
    pub group_id: String,
    #[serde(rename = "UserID")]
    pub user_id: String,
    #[serde(rename = "Timestamp")]
    pub timestamp: Option<CsTimestamp>,
}

/// `events.SpaceShared`: a user (or group) became a member of a space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceShared {
    #[serde(rename = "Executant")]
    pub executant: Option<RevaUserId>,
    #[serde(rename = "GranteeUserID")]
    pub grantee_user_id: Option<RevaUserId>,
    #[serde(rename = "GranteeGroupID")]
    pub grantee_group_id: Option<GroupId>,
    #[serde(rename = "Creator")]
    pub creator: Option<RevaUserId>,
    #[serde(rename = "ID")]
    pub id: Option<StorageSpaceId>,
    #[serde(rename = "Timestamp")]
    pub timestamp: GoTime,
}

/// `events.SpaceUnshared` / `events.SpaceShareUpdated` share this shape: a membership was
/// removed, or its role changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceShareChange {
    #[serde(rename = "Executant")]
    pub executant: Option<RevaUserId>,
    #[serde(rename = "GranteeUserID")]
    pub grantee_user_id: Option<RevaUserId>,
    #[serde(rename = "GranteeGroupID")]
    pub grantee_group_id: Option<GroupId>,
    #[serde(rename = "ID")]
    pub id: Option<StorageSpaceId>,
    #[serde(rename = "Timestamp")]
    pub timestamp: GoTime,
}

/// Every event Gatehouse publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    UserSignedIn(UserSignedIn),
    UserCreated(UserCreated),
    GroupCreated(GroupCreated),
    GroupMemberAdded(GroupMembership),
    GroupMemberRemoved(GroupMembership),
    SpaceShared(SpaceShared),
    SpaceUnshared(SpaceShareChange),
    SpaceShareUpdated(SpaceShareChange),
    BackchannelLogout(BackchannelLogout),
}

/// The `eventtype` metadata values: Go's `reflect.TypeOf(ev).String()` of the reva structs.
pub const EVENT_TYPES: [&str; 9] = [
    "events.UserSignedIn",
    "events.UserCreated",
    "events.GroupCreated",
    "events.GroupMemberAdded",
    "events.GroupMemberRemoved",
    "events.SpaceShared",
    "events.SpaceUnshared",
    "events.SpaceShareUpdated",
    "events.BackchannelLogout",
];

impl Event {
    /// `events.UserSignedIn` stamped now.
    pub fn user_signed_in(executant: RevaUserId) -> Self {
        Event::UserSignedIn(UserSignedIn {
            executant: Some(executant),
            timestamp: Some(CsTimestamp::now()),
        })
    }

    /// `events.BackchannelLogout` stamped now, for the session `session_id` of `executant`.
    pub fn backchannel_logout(executant: RevaUserId, session_id: impl Into<String>) -> Self {
        Event::BackchannelLogout(BackchannelLogout {
            executant: Some(executant),
            session_id: session_id.into(),
            timestamp: Some(CsTimestamp::now()),
        })
    }

    /// `events.UserCreated` stamped now; `executant` is whoever caused the provisioning.
    pub fn user_created(executant: Option<RevaUserId>, user_id: impl Into<String>) -> Self {
        Event::UserCreated(UserCreated {
            executant,
            user_id: user_id.into(),
            timestamp: Some(CsTimestamp::now()),
        })
    }

    pub fn group_created(executant: Option<RevaUserId>, group_id: impl Into<String>) -> Self {
        Event::GroupCreated(GroupCreated {
            executant,
            group_id: group_id.into(),
            timestamp: Some(CsTimestamp::now()),
        })
    }

    pub fn group_member_added(
        executant: Option<RevaUserId>,
        group_id: impl Into<String>,
        user_id: impl Into<String>,
    ) -> Self {
        Event::GroupMemberAdded(GroupMembership::now(executant, group_id, user_id))
    }

    pub fn group_member_removed(
        executant: Option<RevaUserId>,
        group_id: impl Into<String>,
        user_id: impl Into<String>,
    ) -> Self {
        Event::GroupMemberRemoved(GroupMembership::now(executant, group_id, user_id))
    }

    /// A claim-managed membership of `user` in `space` was created.
    pub fn space_shared(executant: RevaUserId, user: RevaUserId, space: &str) -> Self {
        Event::SpaceShared(SpaceShared {
            creator: Some(executant.clone()),
            executant: Some(executant),
            grantee_user_id: Some(user),
            grantee_group_id: None,
            id: Some(StorageSpaceId {
                opaque_id: space.to_owned(),
            }),
            timestamp: GoTime::now(),
        })
    }

    /// A claim-managed membership of `user` in `space` was removed.
    pub fn space_unshared(executant: RevaUserId, user: RevaUserId, space: &str) -> Self {
        Event::SpaceUnshared(SpaceShareChange::now(executant, user, space))
    }

    /// The role of a claim-managed membership of `user` in `space` changed.
    pub fn space_share_updated(executant: RevaUserId, user: RevaUserId, space: &str) -> Self {
        Event::SpaceShareUpdated(SpaceShareChange::now(executant, user, space))
    }

    /// The `eventtype` metadata value, e.g. `events.UserSignedIn`.
    pub fn type_name(&self) -> &'static str {
        EVENT_TYPES[self.index()]
    }

    fn index(&self) -> usize {
        match self {
            Event::UserSignedIn(_) => 0,
            Event::UserCreated(_) => 1,
            Event::GroupCreated(_) => 2,
            Event::GroupMemberAdded(_) => 3,
            Event::GroupMemberRemoved(_) => 4,
            Event::SpaceShared(_) => 5,
            Event::SpaceUnshared(_) => 6,
            Event::SpaceShareUpdated(_) => 7,
            Event::BackchannelLogout(_) => 8,
        }
    }

    /// The payload JSON (what goes, base64-encoded, into the envelope's `Payload`).
    pub fn payload_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Event::UserSignedIn(e) => serde_json::to_vec(e),
            Event::UserCreated(e) => serde_json::to_vec(e),
            Event::GroupCreated(e) => serde_json::to_vec(e),
            Event::GroupMemberAdded(e) | Event::GroupMemberRemoved(e) => serde_json::to_vec(e),
            Event::SpaceShared(e) => serde_json::to_vec(e),
            Event::SpaceUnshared(e) | Event::SpaceShareUpdated(e) => serde_json::to_vec(e),
            Event::BackchannelLogout(e) => serde_json::to_vec(e),
        }
    }

    /// Decodes a payload of the given `eventtype`; `None` for a type Gatehouse does not know.
    pub fn from_payload(
        event_type: &str,
        payload: &[u8],
    ) -> Option<Result<Event, serde_json::Error>> {
        let p = payload;
        Some(match event_type {
            "events.UserSignedIn" => serde_json::from_slice(p).map(Event::UserSignedIn),
            "events.UserCreated" => serde_json::from_slice(p).map(Event::UserCreated),
            "events.GroupCreated" => serde_json::from_slice(p).map(Event::GroupCreated),
            "events.GroupMemberAdded" => serde_json::from_slice(p).map(Event::GroupMemberAdded),
            "events.GroupMemberRemoved" => serde_json::from_slice(p).map(Event::GroupMemberRemoved),
            "events.SpaceShared" => serde_json::from_slice(p).map(Event::SpaceShared),
            "events.SpaceUnshared" => serde_json::from_slice(p).map(Event::SpaceUnshared),
            "events.SpaceShareUpdated" => serde_json::from_slice(p).map(Event::SpaceShareUpdated),
            "events.BackchannelLogout" => serde_json::from_slice(p).map(Event::BackchannelLogout),
            _ => return None,
        })
    }
}

impl GroupMembership {
    fn now(
        executant: Option<RevaUserId>,
        group_id: impl Into<String>,
        user_id: impl Into<String>,
    ) -> Self {
        Self {
            executant,
            group_id: group_id.into(),
            user_id: user_id.into(),
            timestamp: Some(CsTimestamp::now()),
        }
    }
}

impl SpaceShareChange {
    fn now(executant: RevaUserId, user: RevaUserId, space: &str) -> Self {
        Self {
            executant: Some(executant),
            grantee_user_id: Some(user),
            grantee_group_id: None,
            id: Some(StorageSpaceId {
                opaque_id: space.to_owned(),
            }),
            timestamp: GoTime::now(),
        }
    }
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}
