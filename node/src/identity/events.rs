//! The identity events a node publishes on the bus (`main-queue`, spec §5.6): `UserSignedIn` for
//! a new session, the directory changes the builtin backend makes, and claim-managed space
//! membership changes.
//!
//! Publishing never waits for NATS: events go into the publisher's bounded queue. Every event
//! carries the `traceparent` of the request that caused it; the account layer makes it available
//! to the account backends' callbacks through a task-local, so the backends need not know about
//! tracing.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use gatehouse_shared::events::envelope::new_traceparent;
use gatehouse_shared::events::{Event, EventSink, OutgoingEvent};
use gatehouse_shared::store::Store;
use gatehouse_shared::token::{RevaUserId, UserType};

use crate::accounts::{Account, AccountEvents, Group};

tokio::task_local! {
    /// The `traceparent` of the request being resolved.
    pub static TRACEPARENT: String;
}

/// Publishes identity events; cheap to clone.
#[derive(Clone)]
pub struct IdentityEvents {
    sink: Arc<dyn EventSink>,
    /// The IdP of the users named in events.
    idp: String,
}

/// Key of a user's last published claim-managed memberships in the state store.
fn spaces_key(user_id: &str) -> String {
    format!("spaces:{user_id}")
}

impl IdentityEvents {
    pub fn new(sink: Arc<dyn EventSink>, idp: &str) -> Self {
        Self {
            sink,
            idp: idp.to_owned(),
        }
    }

    fn user(&self, id: &str) -> RevaUserId {
        RevaUserId {
            idp: self.idp.clone(),
            opaque_id: id.to_owned(),
            user_type: UserType::PRIMARY,
        }
    }

    fn publish(&self, event: Event, initiator: Option<&str>) {
        let traceparent = TRACEPARENT
            .try_with(Clone::clone)
            .unwrap_or_else(|_| new_traceparent());
        let mut out = OutgoingEvent::new(event).with_traceparent(traceparent);
        if let Some(id) = initiator {
            out = out.with_initiator(id);
        }
        let kind = out.event.type_name();
        if let Err(e) = self.sink.publish(out) {
            tracing::warn!(event = kind, error = %e, "event not published");
        }
    }

    pub fn signed_in(&self, user_id: &str) {
        self.publish(Event::user_signed_in(self.user(user_id)), Some(user_id));
    }

    /// Publishes how `desired` differs from what was last published for the user, then records
    /// `desired`. A store failure skips the comparison for this session (logged).
    pub async fn space_memberships(
        &self,
        state: &dyn Store,
        user_id: &str,
        desired: &BTreeMap<String, String>,
    ) {
        let key = spaces_key(user_id);
        let previous: BTreeMap<String, String> = match state.get(&key).await {
            Ok(Some(entry)) => serde_json::from_slice(&entry.value).unwrap_or_default(),
            Ok(None) => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(user = %user_id, error = %e, "claim-managed spaces: previous memberships unreadable");
                return;
            }
        };
        if &previous == desired {
            return;
        }
        let me = self.user(user_id);
        for (space, role) in desired {
            match previous.get(space) {
                None => self.publish(
                    Event::space_shared(me.clone(), me.clone(), space),
                    Some(user_id),
                ),
                Some(old) if old != role => self.publish(
                    Event::space_share_updated(me.clone(), me.clone(), space),
                    Some(user_id),
                ),
                Some(_) => {}
            }
        }
        for space in previous.keys().filter(|s| !desired.contains_key(*s)) {
            self.publish(
                Event::space_unshared(me.clone(), me.clone(), space),
                Some(user_id),
            );
        }
        match serde_json::to_vec(desired) {
            Ok(json) => {
                if let Err(e) = state.put(&key, Bytes::from(json), None).await {
                    tracing::warn!(user = %user_id, error = %e, "claim-managed spaces: memberships not recorded");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "claim-managed spaces: cannot encode memberships")
            }
        }
    }
}

impl AccountEvents for IdentityEvents {
    fn user_created(&self, user: &Account) {
        self.publish(
            Event::user_created(Some(self.user(&user.id)), user.id.clone()),
            Some(&user.id),
        );
    }

    fn group_created(&self, group: &Group) {
        self.publish(Event::group_created(None, group.id.clone()), None);
    }

    fn member_added(&self, group: &Group, user_id: &str) {
        self.publish(
            Event::group_member_added(None, group.id.clone(), user_id),
            Some(user_id),
        );
    }

    fn member_removed(&self, group: &Group, user_id: &str) {
        self.publish(
            Event::group_member_removed(None, group.id.clone(), user_id),
            Some(user_id),
        );
    }
}
