//! The `graph` account backend against the LibreGraph fixture over real HTTP: lookups, provisioning
//! (once across nodes), group sync, and the service account's `x-access-token`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gatehouse_node::accounts::backend::LookupKind;
use gatehouse_node::accounts::{
    AccountError, AccountResolver, AccountSettings, BackendKind, NoEvents, Resolved,
};
use gatehouse_shared::auth::claims::ClaimPath;
use gatehouse_shared::auth::roles::{BuiltinRole, RoleDecision};
use gatehouse_shared::config::Config;
use gatehouse_shared::store::{ManualClock, MemoryStore, Store};
use gatehouse_shared::token::{DEFAULT_LEEWAY, TokenError, UserType, verify};
use gatehouse_tests::graph::GraphFixture;
use serde_json::{Map, Value, json};

const SECRET: &str = "graph-test-secret";
const SERVICE_ACCOUNT: &str = "c05389b2-d94c-4d01-a9b5-a2f97952cc14";
const KEEP: RoleDecision = RoleDecision::KeepExistingOrDefault {
    default: BuiltinRole::User,
};

fn settings(url: &str, auto_provision: bool) -> AccountSettings {
    let config = Config {
        auto_provision_accounts: auto_provision,
        ..Config::default()
    };
    let mut s = AccountSettings::from_config(&config);
    s.backend = BackendKind::Graph;
    s.graph_url = url.to_owned();
    s.graph_timeout = Duration::from_secs(5);
    s.service_account_id = SERVICE_ACCOUNT.into();
    s.jwt_secret = SECRET.into();
    s
}

fn claims(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("claims must be an object"),
    }
}

fn marie(groups: Value) -> Map<String, Value> {
    claims(json!({
        "iss": "https://idp.example.com",
        "sub": "sub-marie",
        "preferred_username": "marie",
        "name": "Marie Curie",
        "email": "marie@example.org",
        "groups": groups,
    }))
}

async fn resolver(settings: AccountSettings, store: Arc<dyn Store>) -> AccountResolver {
    AccountResolver::new(settings, store, Arc::new(NoEvents))
        .await
        .unwrap()
}

fn manual_store() -> (Arc<MemoryStore>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    (Arc::new(MemoryStore::with_clock(clock.clone())), clock)
}

#[tokio::test]
async fn users_are_found_by_username_mail_and_id() {
    let graph = GraphFixture::start().await;
    let id = graph.add_user("einstein", "Albert Einstein", "einstein@example.org");
    let group = graph.add_group("physics-lovers");
    graph.add_member(&group, &id);

    let cases = [
        (
            "preferred_username",
            "username",
            json!({"preferred_username": "einstein"}),
        ),
        ("email", "mail", json!({"email": "einstein@example.org"})),
        ("li.un", "username", json!({"li": {"un": "einstein"}})),
        (r"li\.un", "username", json!({"li.un": "einstein"})),
        ("li.un", "username", json!({"li.un": "einstein"})),
        ("sub", "userid", json!({ "sub": id })),
    ];
    for (oidc_claim, cs3_claim, c) in cases {
        let mut s = settings(&graph.url(), false);
        s.user_claim = ClaimPath::parse(oidc_claim);
        s.lookup = LookupKind::parse(cs3_claim).unwrap();
        let node = resolver(s, Arc::new(MemoryStore::new())).await;
        let Resolved { account, created } = node.resolve(&claims(c.clone()), KEEP).await.unwrap();
        assert!(!created);
        assert_eq!(account.id, id, "claims {c}");
        assert_eq!(account.username, "einstein");
        assert_eq!(account.mail, "einstein@example.org");
        assert_eq!(account.group_names, ["physics-lovers"]);
        assert_eq!(account.groups, std::slice::from_ref(&group));
        assert_eq!(account.role_id, BuiltinRole::User.id());
    }

    let by_name = graph
        .calls()
        .into_iter()
        .find(|c| c.path == "/graph/v1.0/users/einstein")
        .unwrap();
    assert_eq!(by_name.method, "GET");
    assert_eq!(
        by_name.query.get("$expand").map(String::as_str),
        Some("memberOf")
    );
    let by_mail = graph
        .calls()
        .into_iter()
        .find(|c| c.path == "/graph/v1.0/users")
        .unwrap();
    assert_eq!(
        by_mail.query.get("$filter").map(String::as_str),
        Some("mail eq 'einstein@example.org'")
    );
    assert_eq!(graph.count("GET", &format!("/users/{id}")), 1);
    assert_eq!(graph.count("POST", "/"), 0);
}

#[tokio::test]
async fn an_unknown_user_is_not_found_without_auto_provisioning() {
    let graph = GraphFixture::start().await;
    let node = resolver(settings(&graph.url(), false), Arc::new(MemoryStore::new())).await;
    let err = node.resolve(&marie(Value::Null), KEEP).await.unwrap_err();
    assert_eq!(
        err,
        AccountError::NotFound {
            claim: "username",
            value: "marie".into()
        }
    );
    assert_eq!(graph.count("POST", "/users"), 0);
}

#[tokio::test]
async fn a_disabled_user_is_refused() {
    let graph = GraphFixture::start().await;
    let id = graph.add_user("marie", "Marie Curie", "");
    graph.disable_user(&id);
    let node = resolver(settings(&graph.url(), true), Arc::new(MemoryStore::new())).await;
    let err = node.resolve(&marie(Value::Null), KEEP).await.unwrap_err();
    assert!(matches!(err, AccountError::Disabled { .. }), "{err:?}");
}

#[tokio::test]
async fn every_call_carries_a_verifiable_service_account_token() {
    let graph = GraphFixture::start().await;
    let node = resolver(settings(&graph.url(), true), Arc::new(MemoryStore::new())).await;
    node.resolve(&marie(json!(["physics"])), KEEP)
        .await
        .unwrap();
    let calls = graph.calls();
    assert!(calls.len() >= 4, "{calls:?}");
    let token = calls[0].token.clone().expect("x-access-token");
    assert!(
        calls.iter().all(|c| c.token.as_deref() == Some(&token)),
        "one token, reused"
    );
    let claims = verify(SECRET.as_bytes(), &token, DEFAULT_LEEWAY).unwrap();
    let id = claims.user.id.unwrap();
    assert_eq!(id.opaque_id, SERVICE_ACCOUNT);
    assert_eq!(id.user_type, UserType::SERVICE);
    assert_eq!(
        verify(b"another secret", &token, DEFAULT_LEEWAY),
        Err(TokenError::Signature)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_logins_on_several_nodes_post_the_user_once() {
    let graph = GraphFixture::start().await;
    graph.set_delay(Duration::from_millis(30));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut nodes = Vec::new();
    for _ in 0..4 {
        nodes.push(Arc::new(
            resolver(settings(&graph.url(), true), store.clone()).await,
        ));
    }
    let mut tasks = Vec::new();
    for i in 0..40 {
        let node = nodes[i % nodes.len()].clone();
        tasks.push(tokio::spawn(async move {
            node.resolve(&marie(json!(["physics"])), KEEP).await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().expect("every concurrent login succeeds"));
    }
    assert_eq!(graph.count("POST", "/users"), 1);
    assert_eq!(
        graph.count("POST", "/groups"),
        2,
        "one group, one membership"
    );
    assert_eq!(graph.users().len(), 1);
    let id = graph.users()[0].id.clone();
    assert!(results.iter().all(|r| r.account.id == id));
    assert_eq!(results.iter().filter(|r| r.created).count(), 1);
    assert_eq!(graph.group_names_of(&id), ["physics"]);

    let post = graph
        .calls()
        .into_iter()
        .find(|c| c.method == "POST" && c.path == "/graph/v1.0/users")
        .unwrap();
    assert_eq!(
        post.body,
        json!({
            "displayName": "Marie Curie",
            "onPremisesSamAccountName": "marie",
            "mail": "marie@example.org",
            "identities": [{"issuer": "https://idp.example.com", "issuerAssignedId": "sub-marie"}]
        })
    );
}

/// Two nodes that share no state store (or a Gatehouse node and an oCIS proxy) both create the
/// user; LibreGraph's `nameAlreadyExists` makes the loser re-read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_already_exists_is_answered_by_reading_the_user() {
    let graph = GraphFixture::start().await;
    graph.set_delay(Duration::from_millis(300));
    let a = resolver(settings(&graph.url(), true), Arc::new(MemoryStore::new())).await;
    let b = resolver(settings(&graph.url(), true), Arc::new(MemoryStore::new())).await;
    let claims = marie(Value::Null);
    let (ra, rb) = tokio::join!(a.resolve(&claims, KEEP), b.resolve(&claims, KEEP));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(graph.users().len(), 1);
    assert_eq!(ra.account.id, rb.account.id);
    assert_eq!(graph.count("POST", "/users"), 2, "both nodes tried");
    assert_eq!([ra.created, rb.created].iter().filter(|c| **c).count(), 1);
}

#[tokio::test]
async fn groups_are_created_joined_and_left() {
    let graph = GraphFixture::start().await;
    let physics = graph.add_group("physics");
    let (store, clock) = manual_store();
    let node = resolver(settings(&graph.url(), true), store).await;

    let first = node
        .resolve(&marie(json!(["physics", "chemistry"])), KEEP)
        .await
        .unwrap();
    let id = first.account.id.clone();
    let mut names = first.account.group_names.clone();
    names.sort();
    assert_eq!(names, ["chemistry", "physics"]);
    assert_eq!(graph.group_names_of(&id), ["chemistry", "physics"]);
    assert_eq!(
        graph.count("POST", "/groups"),
        3,
        "create chemistry, join both"
    );
    let joins: Vec<Value> = graph
        .calls()
        .into_iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/members/$ref"))
        .map(|c| c.body)
        .collect();
    assert_eq!(joins.len(), 2);
    let reference = format!("{}/v1.0/users/{id}", graph.url());
    assert!(joins.iter().all(|b| b["@odata.id"] == json!(reference)));
    assert!(
        graph.calls().iter().any(|c| c.method == "POST"
            && c.path == format!("/graph/v1.0/groups/{physics}/members/$ref"))
    );

    // Within the interval nothing is synced; afterwards the user leaves chemistry.
    graph.clear_calls();
    clock.advance(Duration::from_secs(90));
    node.resolve(&marie(json!(["physics"])), KEEP)
        .await
        .unwrap();
    assert_eq!(graph.count("DELETE", "/groups"), 0);
    clock.advance(Duration::from_secs(240));
    let later = node
        .resolve(&marie(json!(["physics"])), KEEP)
        .await
        .unwrap();
    assert_eq!(later.account.group_names, ["physics"]);
    assert_eq!(graph.group_names_of(&id), ["physics"]);
    let chemistry = graph
        .groups()
        .into_iter()
        .find(|g| g.name == "chemistry")
        .unwrap();
    assert_eq!(
        graph.count(
            "DELETE",
            &format!("/groups/{}/members/{id}/$ref", chemistry.id)
        ),
        1
    );
    assert_eq!(graph.count("POST", "/groups"), 0);
}

#[tokio::test]
async fn changed_claims_patch_name_and_mail_at_once() {
    let graph = GraphFixture::start().await;
    let id = graph.add_user("marie", "Marie", "old@example.org");
    let node = resolver(settings(&graph.url(), true), Arc::new(MemoryStore::new())).await;
    let resolved = node.resolve(&marie(Value::Null), KEEP).await.unwrap();
    assert_eq!(resolved.account.display_name, "Marie Curie");
    assert_eq!(resolved.account.mail, "marie@example.org");
    let patches: Vec<_> = graph
        .calls()
        .into_iter()
        .filter(|c| c.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].path, format!("/graph/v1.0/users/{id}"));
    assert_eq!(
        patches[0].body,
        json!({"displayName": "Marie Curie", "mail": "marie@example.org"})
    );
}

#[tokio::test]
async fn an_unreachable_graph_is_a_retryable_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let node = resolver(
        settings(&format!("http://127.0.0.1:{port}/graph"), true),
        Arc::new(MemoryStore::new()),
    )
    .await;
    let err = node.resolve(&marie(Value::Null), KEEP).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}
