//! The identity events a node publishes on the bus (`main-queue`, spec §5.6): `UserSignedIn` for
//! a new session, `BackchannelLogout` for a session the identity provider ended, the directory changes the builtin backend makes, and claim-managed space
//! membership changes.
//!
//! Publishing never waits for NATS: events go into the publisher's bounded queue. Every event
//! carries the `traceparent` of the request that caused it and the client's `Initiator-ID` (oCIS
//! web sends one so that it can ignore its own events); the account layer makes both available to
//! the account backends' callbacks through a task-local, so the backends need not know about
//! requests.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use gatehouse_shared::events::envelope::new_traceparent;
use gatehouse_shared::events::{Event, EventSink, OutgoingEvent};
use gatehouse_shared::store::Store;
use gatehouse_shared::token::{RevaUserId, UserType};

use crate::accounts::{Account, AccountEvents, Group};

/// What events caused by the current request carry.
#[derive(Debug, Clone)]
pub struct EventContext {
    pub traceparent: String,
    pub initiator_id: Option<String>,
}

tokio::task_local! {
    /// The context of the request being resolved.
    pub static EVENT_CONTEXT: EventContext;
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

    fn publish(&self, event: Event) {
        let context = EVENT_CONTEXT.try_with(Clone::clone).ok();
        let traceparent = context
            .as_ref()
            .map_or_else(new_traceparent, |c| c.traceparent.clone());
        let mut out = OutgoingEvent::new(event).with_traceparent(traceparent);
        if let Some(id) = context.and_then(|c| c.initiator_id) {
            out = out.with_initiator(id);
        }
        let kind = out.event.type_name();
        if let Err(e) = self.sink.publish(out) {
            tracing::warn!(event = kind, error = %e, "event not published");
        }
    }

    pub fn signed_in(&self, user_id: &str) {
        self.publish(Event::user_signed_in(self.user(user_id)));
    }

    /// `events.BackchannelLogout` for the session `session_id` (the OIDC `sid`, empty when
    /// unknown) of the user `user_id`.
    pub fn backchannel_logout(&self, user_id: &str, session_id: &str) {
        self.publish(Event::backchannel_logout(self.user(user_id), session_id));
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
                None => self.publish(Event::space_shared(me.clone(), me.clone(), space)),
                Some(old) if old != role => {
                    self.publish(Event::space_share_updated(me.clone(), me.clone(), space))
                }
                Some(_) => {}
            }
        }
        for space in previous.keys().filter(|s| !desired.contains_key(*s)) {
            self.publish(Event::space_unshared(me.clone(), me.clone(), space));
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
        self.publish(Event::user_created(
            Some(self.user(&user.id)),
            user.id.clone(),
        ));
    }

    fn group_created(&self, group: &Group) {
        self.publish(Event::group_created(None, group.id.clone()));
    }

    fn member_added(&self, group: &Group, user_id: &str) {
        self.publish(Event::group_member_added(None, group.id.clone(), user_id));
    }

    fn member_removed(&self, group: &Group, user_id: &str) {
        self.publish(Event::group_member_removed(None, group.id.clone(), user_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_shared::events::RecordingSink;
    use gatehouse_shared::store::MemoryStore;

    fn memberships(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(s, r)| ((*s).to_owned(), (*r).to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn space_membership_changes_are_published_once() {
        let sink = Arc::new(RecordingSink::new());
        let events = IdentityEvents::new(sink.clone(), "https://idp");
        let store = MemoryStore::new();

        let first = memberships(&[("a", "viewer"), ("b", "manager")]);
        events.space_memberships(&store, "u1", &first).await;
        assert_eq!(
            sink.take()
                .iter()
                .map(|e| e.event.type_name())
                .collect::<Vec<_>>(),
            ["events.SpaceShared", "events.SpaceShared"]
        );

        // The same memberships again: nothing to say.
        events.space_memberships(&store, "u1", &first).await;
        assert!(sink.take().is_empty());

        let second = memberships(&[("a", "editor"), ("c", "viewer")]);
        let context = EventContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            initiator_id: Some("web-tab-1".to_owned()),
        };
        EVENT_CONTEXT
            .scope(context, events.space_memberships(&store, "u1", &second))
            .await;
        let published = sink.take();
        let mut types: Vec<_> = published.iter().map(|e| e.event.type_name()).collect();
        types.sort_unstable();
        assert_eq!(
            types,
            [
                "events.SpaceShareUpdated",
                "events.SpaceShared",
                "events.SpaceUnshared"
            ]
        );
        assert!(published.iter().all(|e| e.traceparent.as_deref()
            == Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")));
        assert!(
            published
                .iter()
                .all(|e| e.initiator_id.as_deref() == Some("web-tab-1"))
        );
    }

    #[test]
    fn events_outside_a_request_get_a_fresh_traceparent() {
        let sink = Arc::new(RecordingSink::new());
        let events = IdentityEvents::new(sink.clone(), "https://idp");
        events.signed_in("u1");
        let published = sink.take();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].event.type_name(), "events.UserSignedIn");
        assert_eq!(published[0].initiator_id, None);
        let tp = published[0].traceparent.clone().unwrap();
        assert!(
            gatehouse_shared::events::envelope::is_valid_traceparent(&tp),
            "{tp}"
        );
    }
}
