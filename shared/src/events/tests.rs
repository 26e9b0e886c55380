use std::collections::HashSet;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::token::{RevaUserId, UserType};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const ID: &str = "9f1c5a3e-2b7d-4e8a-9c1f-0d2e3b4a5c6d";

fn at(secs: u64, nanos: u32) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

fn user(opaque: &str, t: UserType) -> RevaUserId {
    RevaUserId {
        idp: "https://idp.example".into(),
        opaque_id: opaque.into(),
        user_type: t,
    }
}

// Payloads below were base64-encoded with coreutils `base64`, independently of this crate.

#[test]
fn user_signed_in_vector() {
    let event = Event::UserSignedIn(UserSignedIn {
        executant: Some(user(
            "4c510ada-c86b-4815-8820-42cdf82c3d51",
            UserType::PRIMARY,
        )),
        timestamp: Some(CsTimestamp {
            seconds: 1_714_557_600,
            nanos: 500,
        }),
    });
    let enc = encode_with(&event, ID, at(1_714_557_600, 500_000_000), TP, "web-1").unwrap();
    let expected = concat!(
        r#"{"Timestamp":"2024-05-01T10:00:00.5Z","#,
        r#""Metadata":{"eventid":"9f1c5a3e-2b7d-4e8a-9c1f-0d2e3b4a5c6d","eventtype":"events.UserSignedIn","#,
        r#""extrainfo":"{}","initiatorid":"web-1","#,
        r#""traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},"#,
        r#""ID":"9f1c5a3e-2b7d-4e8a-9c1f-0d2e3b4a5c6d","Topic":"main-queue","#,
        r#""Payload":"eyJFeGVjdXRhbnQiOnsiaWRwIjoiaHR0cHM6Ly9pZHAuZXhhbXBsZSIsIm9wYXF1ZV9pZCI6IjRjNTEwYWRhLWM4NmItNDgxNS04ODIwLTQyY2RmODJjM2Q1MSIsInR5cGUiOjF9LCJUaW1lc3RhbXAiOnsic2Vjb25kcyI6MTcxNDU1NzYwMCwibmFub3MiOjUwMH19"}"#
    );
    assert_eq!(String::from_utf8(enc.bytes.clone()).unwrap(), expected);
    assert_eq!(enc.id, ID);
    assert_eq!(enc.event_type, "events.UserSignedIn");

    let back = decode(&enc.bytes).unwrap();
    assert_eq!(back.event().unwrap(), event);
    assert_eq!(back.traceparent(), TP);
    assert_eq!(back.initiator_id(), "web-1");
    assert_eq!(back.event_id(), ID);
    assert_eq!(back.topic, MAIN_QUEUE);
}

#[test]
fn user_created_without_executant_vector() {
    let event = Event::UserCreated(UserCreated {
        executant: None,
        user_id: "u1".into(),
        timestamp: Some(CsTimestamp {
            seconds: 1_714_557_600,
            nanos: 0,
        }),
    });
    assert_eq!(
        String::from_utf8(event.payload_json().unwrap()).unwrap(),
        r#"{"Executant":null,"UserID":"u1","Timestamp":{"seconds":1714557600}}"#
    );
    let enc = encode_with(&event, ID, at(1_714_557_600, 0), TP, "").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&enc.bytes).unwrap();
    assert_eq!(
        v["Payload"],
        "eyJFeGVjdXRhbnQiOm51bGwsIlVzZXJJRCI6InUxIiwiVGltZXN0YW1wIjp7InNlY29uZHMiOjE3MTQ1NTc2MDB9fQ=="
    );
    assert_eq!(v["Timestamp"], "2024-05-01T10:00:00Z");
    // reva always sends the key, empty when there is no initiator.
    assert_eq!(v["Metadata"]["initiatorid"], "");
}

#[test]
fn space_shared_vector() {
    let svc = user("svc", UserType::SERVICE);
    let event = Event::SpaceShared(SpaceShared {
        executant: Some(svc.clone()),
        grantee_user_id: Some(user("u1", UserType::PRIMARY)),
        grantee_group_id: None,
        creator: Some(svc),
        id: Some(StorageSpaceId {
            opaque_id: "storage-users-1$space-1".into(),
        }),
        timestamp: GoTime(at(1_714_557_600, 500_000_000)),
    });
    let enc = encode_with(&event, ID, at(1_714_557_600, 0), TP, "").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&enc.bytes).unwrap();
    assert_eq!(
        v["Payload"],
        "eyJFeGVjdXRhbnQiOnsiaWRwIjoiaHR0cHM6Ly9pZHAuZXhhbXBsZSIsIm9wYXF1ZV9pZCI6InN2YyIsInR5cGUiOjN9LCJHcmFudGVlVXNlcklEIjp7ImlkcCI6Imh0dHBzOi8vaWRwLmV4YW1wbGUiLCJvcGFxdWVfaWQiOiJ1MSIsInR5cGUiOjF9LCJHcmFudGVlR3JvdXBJRCI6bnVsbCwiQ3JlYXRvciI6eyJpZHAiOiJodHRwczovL2lkcC5leGFtcGxlIiwib3BhcXVlX2lkIjoic3ZjIiwidHlwZSI6M30sIklEIjp7Im9wYXF1ZV9pZCI6InN0b3JhZ2UtdXNlcnMtMSRzcGFjZS0xIn0sIlRpbWVzdGFtcCI6IjIwMjQtMDUtMDFUMTA6MDA6MDAuNVoifQ=="
    );
    assert_eq!(v["Metadata"]["eventtype"], "events.SpaceShared");
    assert_eq!(decode(&enc.bytes).unwrap().event().unwrap(), event);
}

#[test]
fn backchannel_logout_vector() {
    let event = Event::BackchannelLogout(BackchannelLogout {
        executant: Some(user("u1", UserType::PRIMARY)),
        session_id: "a-session".into(),
        timestamp: Some(CsTimestamp {
            seconds: 1_714_557_600,
            nanos: 0,
        }),
    });
    let payload = event.payload_json().unwrap();
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        r#"{"Executant":{"idp":"https://idp.example","opaque_id":"u1","type":1},"SessionId":"a-session","Timestamp":{"seconds":1714557600}}"#
    );
    let enc = encode_with(&event, ID, at(1_714_557_600, 0), TP, "").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&enc.bytes).unwrap();
    assert_eq!(v["Metadata"]["eventtype"], "events.BackchannelLogout");
    // base64 of the payload above, encoded with coreutils `base64`.
    assert_eq!(
        v["Payload"],
        "eyJFeGVjdXRhbnQiOnsiaWRwIjoiaHR0cHM6Ly9pZHAuZXhhbXBsZSIsIm9wYXF1ZV9pZCI6InUxIiwidHlwZSI6MX0sIlNlc3Npb25JZCI6ImEtc2Vzc2lvbiIsIlRpbWVzdGFtcCI6eyJzZWNvbmRzIjoxNzE0NTU3NjAwfX0="
    );
    assert_eq!(decode(&enc.bytes).unwrap().event().unwrap(), event);
}

#[test]
fn every_event_type_round_trips_with_its_go_type_name() {
    let exec = Some(user("admin", UserType::PRIMARY));
    let svc = user("svc", UserType::SERVICE);
    let u = user("u1", UserType::PRIMARY);
    let events = [
        Event::user_signed_in(u.clone()),
        Event::user_created(exec.clone(), "u1"),
        Event::group_created(exec.clone(), "g1"),
        Event::group_member_added(exec.clone(), "g1", "u1"),
        Event::group_member_removed(exec, "g1", "u1"),
        Event::space_shared(svc.clone(), u.clone(), "s$1"),
        Event::space_unshared(svc.clone(), u.clone(), "s$1"),
        Event::space_share_updated(svc, u.clone(), "s$1"),
        Event::backchannel_logout(u, "sid-1"),
    ];
    let names: Vec<&str> = events.iter().map(Event::type_name).collect();
    assert_eq!(names, EVENT_TYPES);
    for event in &events {
        let enc = encode(event, Some(TP), None).unwrap();
        let back = decode(&enc.bytes).unwrap();
        assert_eq!(back.event_type(), event.type_name());
        assert_eq!(&back.event().unwrap(), event);
    }
    // Field names consumers rely on.
    let added: serde_json::Value =
        serde_json::from_slice(&events[3].payload_json().unwrap()).unwrap();
    assert_eq!(added["GroupID"], "g1");
    assert_eq!(added["UserID"], "u1");
    assert_eq!(added["Executant"]["opaque_id"], "admin");
    let unshared: serde_json::Value =
        serde_json::from_slice(&events[6].payload_json().unwrap()).unwrap();
    assert_eq!(unshared["GranteeUserID"]["opaque_id"], "u1");
    assert_eq!(unshared["ID"]["opaque_id"], "s$1");
    assert!(unshared["Timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(
        unshared.get("Creator").is_none(),
        "only SpaceShared has a Creator"
    );
}

#[test]
fn decodes_an_envelope_as_go_writes_it() {
    // Local-time timestamp with offset, other key order, HTML-escaped characters, no extrainfo.
    let go = br#"{"ID":"e1","Topic":"main-queue","Timestamp":"2024-05-01T12:00:00.123+02:00",
        "Metadata":{"eventtype":"events.GroupCreated","eventid":"e1","traceparent":"","initiatorid":"\u003cweb\u003e"},
        "Payload":"eyJFeGVjdXRhbnQiOm51bGwsIkdyb3VwSUQiOiJnMSIsIlRpbWVzdGFtcCI6bnVsbH0="}"#;
    let env = decode(go).unwrap();
    assert_eq!(env.initiator_id(), "<web>");
    assert_eq!(
        env.event().unwrap(),
        Event::GroupCreated(GroupCreated {
            executant: None,
            group_id: "g1".into(),
            timestamp: None,
        })
    );
}

#[test]
fn malformed_envelopes_are_errors() {
    assert!(matches!(decode(b"not json"), Err(CodecError::Malformed(_))));
    assert!(matches!(
        decode(br#"{"ID":"1","Topic":"t","Timestamp":"x","Payload":"***"}"#),
        Err(CodecError::Malformed(_))
    ));
    let unknown = decode(
        br#"{"ID":"1","Topic":"t","Timestamp":"x","Metadata":{"eventtype":"events.FileUploaded"},"Payload":"e30="}"#,
    )
    .unwrap();
    assert_eq!(
        unknown.event(),
        Err(CodecError::UnknownType("events.FileUploaded".into()))
    );
    let bad_payload = decode(
        br#"{"ID":"1","Topic":"t","Timestamp":"x","Metadata":{"eventtype":"events.SpaceShared"},"Payload":"e30="}"#,
    )
    .unwrap();
    assert!(matches!(bad_payload.event(), Err(CodecError::Malformed(_))));
}

#[test]
fn every_event_gets_a_traceparent_and_a_unique_id() {
    let event = Event::user_signed_in(user("u1", UserType::PRIMARY));
    let mut ids = HashSet::new();
    for tp in [None, Some("garbage"), Some(TP)] {
        let enc = encode(&event, tp, Some("init")).unwrap();
        let env = decode(&enc.bytes).unwrap();
        assert!(is_valid_traceparent(env.traceparent()), "{tp:?}");
        if tp == Some(TP) {
            assert_eq!(env.traceparent(), TP);
        }
        assert_eq!(env.event_id(), enc.id);
        assert_eq!(env.id, enc.id);
        assert!(uuid::Uuid::parse_str(&enc.id).is_ok());
        assert!(ids.insert(enc.id));
    }
}

#[test]
fn traceparent_validation() {
    assert!(is_valid_traceparent(TP));
    assert!(is_valid_traceparent(&new_traceparent()));
    assert_ne!(new_traceparent(), new_traceparent());
    assert!(is_valid_traceparent(
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
    ));
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    ] {
        assert!(!is_valid_traceparent(bad), "{bad:?}");
    }
}

#[test]
fn sinks() {
    let rec = RecordingSink::new();
    let e = OutgoingEvent::new(Event::group_created(None, "g1"))
        .with_traceparent(TP)
        .with_initiator("i");
    rec.publish(e.clone()).unwrap();
    rec.publish(OutgoingEvent::new(Event::user_created(None, "u1")))
        .unwrap();
    assert_eq!(rec.types(), ["events.GroupCreated", "events.UserCreated"]);
    assert_eq!(rec.events()[0], e);
    assert_eq!(rec.take().len(), 2);
    assert!(rec.events().is_empty());
    assert_eq!(NoopSink.publish(e), Ok(()));
    assert!(PublishError::QueueFull { capacity: 1 }.is_transient());
    assert!(!PublishError::Closed.is_transient());
}
