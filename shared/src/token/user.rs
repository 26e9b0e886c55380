//! The CS3 user and scope as they appear inside a reva `x-access-token`.
//!
//! reva serialises its protobuf-generated Go structs with `encoding/json`, so the claim uses the
//! protobuf field names in snake_case, enums as integers, `bytes` as standard base64 and omits
//! zero values (`omitempty`). These types reproduce that shape so oCIS services can decode a token
//! Gatehouse minted and vice versa.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::TokenError;

/// Opaque key under which oCIS stores the user's role ids (a JSON array of strings).
pub const ROLES_OPAQUE_KEY: &str = "roles";

/// The `decoder` value of an opaque entry whose value is JSON.
pub const JSON_DECODER: &str = "json";

/// CS3 `UserType` (an integer on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserType(pub i32);

impl UserType {
    pub const INVALID: Self = Self(0);
    pub const PRIMARY: Self = Self(1);
    pub const SECONDARY: Self = Self(2);
    pub const SERVICE: Self = Self(3);
    pub const APPLICATION: Self = Self(4);
    pub const GUEST: Self = Self(5);
    pub const FEDERATED: Self = Self(6);
    pub const LIGHTWEIGHT: Self = Self(7);
    pub const SPACE_OWNER: Self = Self(8);

    fn is_invalid(&self) -> bool {
        *self == Self::INVALID
    }
}

/// CS3 `UserId`: the IdP, the opaque (stable) id and the user type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct RevaUserId {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub idp: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub opaque_id: String,
    #[serde(rename = "type", default, skip_serializing_if = "UserType::is_invalid")]
    pub user_type: UserType,
}

/// CS3 `OpaqueEntry`: a decoder name and raw bytes (standard base64 in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct OpaqueEntry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub decoder: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "base64_bytes")]
    pub value: Vec<u8>,
}

impl OpaqueEntry {
    /// An entry holding `value` encoded as JSON, as reva's `AppendJSONToOpaque` writes it.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, TokenError> {
        let value = serde_json::to_vec(value).map_err(|e| TokenError::Encoding(e.to_string()))?;
        Ok(Self {
            decoder: JSON_DECODER.to_owned(),
            value,
        })
    }
}

/// CS3 `Opaque`: a map of named entries. A `BTreeMap` keeps serialisation deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Opaque {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub map: BTreeMap<String, OpaqueEntry>,
}

/// CS3 `User`, the `user` claim of an `x-access-token`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct RevaUser {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RevaUserId>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mail: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub mail_verified: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque: Option<Opaque>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid_number: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid_number: i64,
}

impl RevaUser {
    /// The IdP of the user: the `iss` of tokens minted for them.
    pub fn idp(&self) -> &str {
        self.id.as_ref().map_or("", |id| id.idp.as_str())
    }

    /// Store the role ids in the opaque `roles` entry (JSON array), replacing earlier ones.
    pub fn set_roles(&mut self, roles: &[String]) -> Result<(), TokenError> {
        let entry = OpaqueEntry::json(roles)?;
        self.opaque
            .get_or_insert_with(Opaque::default)
            .map
            .insert(ROLES_OPAQUE_KEY.to_owned(), entry);
        Ok(())
    }

    /// The role ids from the opaque `roles` entry; empty when there is none.
    pub fn roles(&self) -> Result<Vec<String>, TokenError> {
        let Some(entry) = self
            .opaque
            .as_ref()
            .and_then(|o| o.map.get(ROLES_OPAQUE_KEY))
        else {
            return Ok(Vec::new());
        };
        if entry.decoder != JSON_DECODER {
            return Err(TokenError::Encoding(format!(
                "opaque roles use decoder {:?}, expected \"json\"",
                entry.decoder
            )));
        }
        serde_json::from_slice(&entry.value)
            .map_err(|e| TokenError::Encoding(format!("opaque roles: {e}")))
    }
}

/// CS3 auth `Role` of a scope (an integer on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ScopeRole(pub i32);

impl ScopeRole {
    pub const INVALID: Self = Self(0);
    pub const OWNER: Self = Self(1);
    pub const LEGACY: Self = Self(2);
    pub const VIEWER: Self = Self(3);
    pub const EDITOR: Self = Self(4);
    pub const FILE_EDITOR: Self = Self(5);
    pub const COOWNER: Self = Self(6);
    pub const UPLOADER: Self = Self(7);

    fn is_invalid(&self) -> bool {
        *self == Self::INVALID
    }
}

/// CS3 auth `Scope`: what the token may touch, and with which role.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<OpaqueEntry>,
    #[serde(default, skip_serializing_if = "ScopeRole::is_invalid")]
    pub role: ScopeRole,
}

/// The `scope` claim: scope name → scope.
pub type Scopes = BTreeMap<String, Scope>;

/// Name of the owner scope in the `scope` map.
pub const OWNER_SCOPE_KEY: &str = "user";

/// The owner scope reva attaches to a user's own token (`AddOwnerScope`): role owner on the
/// reference `{"path":"/"}`, i.e. everything the user may access.
pub fn owner_scope() -> Scopes {
    let resource = OpaqueEntry {
        decoder: JSON_DECODER.to_owned(),
        value: br#"{"path":"/"}"#.to_vec(),
    };
    let mut scopes = Scopes::new();
    scopes.insert(
        OWNER_SCOPE_KEY.to_owned(),
        Scope {
            resource: Some(resource),
            role: ScopeRole::OWNER,
        },
    );
    scopes
}

/// Prefix of the scope key reva gives a public-share token: `publicshare:<share id>`.
pub const PUBLIC_SHARE_SCOPE_PREFIX: &str = "publicshare:";

/// Opaque key under which reva names the role of a public-share guest (`plain` decoder).
pub const PUBLIC_SHARE_ROLE_OPAQUE_KEY: &str = "public-share-role";

/// The `decoder` value of an opaque entry whose value is a plain string.
pub const PLAIN_DECODER: &str = "plain";

/// What a public link lets its guests do. reva derives it from the share's permissions: upload
/// without download is `uploader`, upload with download `editor`, anything else `viewer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublicShareRole {
    Viewer,
    Editor,
    Uploader,
}

impl PublicShareRole {
    /// The name reva writes into the `public-share-role` opaque entry.
    pub fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Editor => "editor",
            Self::Uploader => "uploader",
        }
    }

    /// The CS3 scope role of the share scope.
    pub fn scope_role(self) -> ScopeRole {
        match self {
            Self::Viewer => ScopeRole::VIEWER,
            Self::Editor => ScopeRole::EDITOR,
            Self::Uploader => ScopeRole::UPLOADER,
        }
    }
}

/// CS3 `storage.provider.ResourceId`, as protobuf's JSON mapping (`protojson`, lowerCamelCase
/// names, empty fields omitted) writes it inside a scope resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceId {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub storage_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub opaque_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub space_id: String,
}

/// The part of a CS3 `PublicShare` reva puts into the share scope: only the token and the shared
/// resource, so the scope does not leak the share's other properties.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopedPublicShare {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<ResourceId>,
}

/// The scope reva attaches to a public-share token (`AddPublicShareScope`): key
/// `publicshare:<share id>`, the token and resource as a JSON resource, and the guest's role.
/// Backends then allow only requests that touch the shared resource.
pub fn public_share_scope(
    share_id: &str,
    share: &ScopedPublicShare,
    role: PublicShareRole,
) -> Result<Scopes, TokenError> {
    let mut scopes = Scopes::new();
    scopes.insert(
        format!("{PUBLIC_SHARE_SCOPE_PREFIX}{share_id}"),
        Scope {
            resource: Some(OpaqueEntry::json(share)?),
            role: role.scope_role(),
        },
    );
    Ok(scopes)
}

impl RevaUser {
    /// Replace the opaque map by the single `public-share-role` entry reva sets on the owner of
    /// a public share when it authenticates a guest.
    pub fn set_public_share_role(&mut self, role: PublicShareRole) {
        let mut map = BTreeMap::new();
        map.insert(
            PUBLIC_SHARE_ROLE_OPAQUE_KEY.to_owned(),
            OpaqueEntry {
                decoder: PLAIN_DECODER.to_owned(),
                value: role.name().as_bytes().to_vec(),
            },
        );
        self.opaque = Some(Opaque { map });
    }

    /// The role from the `public-share-role` opaque entry, if the token speaks for a share guest.
    pub fn public_share_role(&self) -> Option<PublicShareRole> {
        let entry = self
            .opaque
            .as_ref()?
            .map
            .get(PUBLIC_SHARE_ROLE_OPAQUE_KEY)?;
        match entry.value.as_slice() {
            b"viewer" => Some(PublicShareRole::Viewer),
            b"editor" => Some(PublicShareRole::Editor),
            b"uploader" => Some(PublicShareRole::Uploader),
            _ => None,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// `[]byte` as Go's `encoding/json` writes it: standard base64 with padding.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn einstein() -> RevaUser {
        let mut user = RevaUser {
            id: Some(RevaUserId {
                idp: "https://idp.example.com".into(),
                opaque_id: "4c510ada-c86b-4815-8820-42cdf82c3d51".into(),
                user_type: UserType::PRIMARY,
            }),
            username: "einstein".into(),
            mail: "einstein@example.org".into(),
            display_name: "Albert Einstein".into(),
            groups: vec!["physics-lovers".into(), "sailing-lovers".into()],
            ..RevaUser::default()
        };
        user.set_roles(&["d7beeea8-8ff4-406b-8fb6-ab2dd81e6b11".into()])
            .unwrap();
        user
    }

    #[test]
    fn user_json_uses_cs3_field_names_and_go_encodings() {
        let value = serde_json::to_value(einstein()).unwrap();
        assert_eq!(
            value,
            json!({
                "id": {
                    "idp": "https://idp.example.com",
                    "opaque_id": "4c510ada-c86b-4815-8820-42cdf82c3d51",
                    "type": 1
                },
                "username": "einstein",
                "mail": "einstein@example.org",
                "display_name": "Albert Einstein",
                "groups": ["physics-lovers", "sailing-lovers"],
                "opaque": {"map": {"roles": {
                    "decoder": "json",
                    // base64 of ["d7beeea8-8ff4-406b-8fb6-ab2dd81e6b11"]
                    "value": "WyJkN2JlZWVhOC04ZmY0LTQwNmItOGZiNi1hYjJkZDgxZTZiMTEiXQ=="
                }}}
            })
        );
    }

    #[test]
    fn roles_round_trip_through_opaque() {
        let user = einstein();
        assert_eq!(
            user.roles().unwrap(),
            vec!["d7beeea8-8ff4-406b-8fb6-ab2dd81e6b11".to_owned()]
        );
        assert!(RevaUser::default().roles().unwrap().is_empty());
    }

    #[test]
    fn roles_with_foreign_decoder_are_an_error() {
        let mut user = einstein();
        let entry = user
            .opaque
            .as_mut()
            .unwrap()
            .map
            .get_mut(ROLES_OPAQUE_KEY)
            .unwrap();
        entry.decoder = "plain".into();
        assert!(matches!(user.roles(), Err(TokenError::Encoding(_))));
    }

    #[test]
    fn decodes_a_go_produced_user_with_unknown_fields_and_null_bytes() {
        let go = json!({
            "id": {"idp": "https://idp", "opaque_id": "u1", "type": 8},
            "username": "space-owner",
            "mail_verified": true,
            "uid_number": 1000,
            "opaque": {"map": {"x": {"decoder": "plain", "value": null}}},
            "future_field": 42
        });
        let user: RevaUser = serde_json::from_value(go).unwrap();
        assert_eq!(user.id.as_ref().unwrap().user_type, UserType::SPACE_OWNER);
        assert!(user.mail_verified);
        assert_eq!(user.uid_number, 1000);
        assert_eq!(user.idp(), "https://idp");
    }

    #[test]
    fn owner_scope_has_reva_shape() {
        assert_eq!(
            serde_json::to_value(owner_scope()).unwrap(),
            // base64 of {"path":"/"}
            json!({"user": {"resource": {"decoder": "json", "value": "eyJwYXRoIjoiLyJ9"}, "role": 1}})
        );
    }

    #[test]
    fn public_share_scope_has_reva_shape() {
        let share = ScopedPublicShare {
            token: "sharetoken".into(),
            resource_id: Some(ResourceId {
                storage_id: "st".into(),
                opaque_id: "op".into(),
                space_id: String::new(),
            }),
        };
        let scopes = public_share_scope("s-1", &share, PublicShareRole::Editor).unwrap();
        let value = serde_json::to_value(&scopes).unwrap();
        let scope = &value["publicshare:s-1"];
        assert_eq!(scope["role"], json!(4));
        assert_eq!(scope["resource"]["decoder"], json!("json"));
        let entry = &scopes["publicshare:s-1"];
        let resource: serde_json::Value =
            serde_json::from_slice(&entry.resource.as_ref().unwrap().value).unwrap();
        assert_eq!(
            resource,
            json!({"token": "sharetoken", "resourceId": {"storageId": "st", "opaqueId": "op"}})
        );
        assert_eq!(PublicShareRole::Viewer.scope_role(), ScopeRole::VIEWER);
        assert_eq!(PublicShareRole::Uploader.scope_role(), ScopeRole(7));
    }

    #[test]
    fn public_share_role_replaces_the_opaque_map() {
        let mut user = einstein();
        assert_eq!(user.public_share_role(), None);
        user.set_public_share_role(PublicShareRole::Uploader);
        assert_eq!(user.public_share_role(), Some(PublicShareRole::Uploader));
        assert!(user.roles().unwrap().is_empty());
        let value = serde_json::to_value(&user).unwrap();
        // base64 of "uploader"
        assert_eq!(
            value["opaque"],
            json!({"map": {"public-share-role": {"decoder": "plain", "value": "dXBsb2FkZXI="}}})
        );
    }
}
