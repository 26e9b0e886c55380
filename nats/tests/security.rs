//! Every NATS client of a node against a real nats-server with TLS and users: the documented
//! least-privilege user can do everything a gateway does; wrong credentials, an untrusted
//! certificate or a plaintext server stop start-up with an error that names the setting; a user
//! without a permission gets an error that says so, at once.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use gatehouse_nats::{
    EventPublisher, EventPublisherOptions, NatsKvOptions, NatsKvStore, ServiceRegistry,
};
use gatehouse_shared::config::{NatsAuth, NatsSecurity, NatsTls};
use gatehouse_shared::events::{Event, EventSink, MAIN_QUEUE, OutgoingEvent};
use gatehouse_shared::store::{Store, StoreError};
use gatehouse_tests::nats::{NatsCluster, NatsOptions};
use gatehouse_tests::pki::Pki;
use gatehouse_tests::wait_until;

const PERMISSIONS: &str = include_str!("../conf/gateway-permissions.conf");

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "gatehouse_nats=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A single JetStream server with TLS (`verify`: client certificates required) and users: the
/// gateway with the documented permissions, `limited` who may not write `gatehouse-state`,
/// an NKey user with the gateway's permissions, and `admin` for the fixtures.
fn secured_server(pki: &Pki, verify: bool, nkey_public: &str) -> NatsCluster {
    let users = format!(
        "authorization {{\n  users: [\n\
         {{ user: gatehouse, password: \"gw-pass\", permissions: {{\n{PERMISSIONS}\n}} }}\n\
         {{ nkey: {nkey_public}, permissions: {{\n{PERMISSIONS}\n}} }}\n\
         {{ user: limited, password: \"lim-pass\", permissions: {{ publish: {{ allow: [\"$JS.API.>\", \"$JS.FC.>\"], deny: [\"$KV.gatehouse-state.>\"] }}, subscribe: {{ allow: [\"_INBOX.>\"] }} }} }}\n\
         {{ user: admin, password: \"admin-pass\" }}\n  ]\n}}\n"
    );
    NatsCluster::start_with(
        1,
        NatsOptions {
            extra_config: format!("{}{users}", pki.nats_tls_block(verify)),
            ..NatsOptions::default()
        },
    )
}

fn tls(pki: &Pki) -> Option<NatsTls> {
    Some(NatsTls {
        root_ca: Some(pki.ca.clone()),
        client_certificate: None,
        insecure: false,
    })
}

fn user(name: &str, password: &str) -> NatsAuth {
    NatsAuth::UserPassword {
        user: name.into(),
        password: password.into(),
    }
}

fn store_options(nats: &NatsCluster, bucket: &str, security: NatsSecurity) -> NatsKvOptions {
    NatsKvOptions {
        servers: nats.client_urls(),
        bucket: bucket.into(),
        op_timeout: Duration::from_secs(2),
        security,
        ..NatsKvOptions::default()
    }
}

fn security(tls: Option<NatsTls>, auth: NatsAuth) -> NatsSecurity {
    NatsSecurity {
        section: "state_store".into(),
        tls,
        auth,
    }
}

async fn admin(nats: &NatsCluster, ca: &Path) -> jetstream::Context {
    let client =
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-pass".into())
            .require_tls(true)
            .add_root_certificates(ca.to_owned())
            .connect(nats.client_urls())
            .await
            .unwrap();
    jetstream::new(client)
}

async fn connect_err(opts: NatsKvOptions) -> String {
    match NatsKvStore::connect(opts).await {
        Ok(_) => panic!("connected"),
        Err(e @ StoreError::Misconfigured(_)) => e.to_string(),
        Err(e) => panic!("a retryable error for a mistake no retry fixes: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_the_documented_permissions_does_everything_it_needs() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path(), "main");
    let nkey = nkeys::KeyPair::new_user();
    let nats = secured_server(&pki, false, &nkey.public_key());
    let js = admin(&nats, &pki.ca).await;
    // Fixtures the oCIS services would write: a signing key and a registration.
    let proxy = js
        .create_key_value(kv::Config {
            bucket: "proxy".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let signing_key = gatehouse_shared::store::encode_key("signing-keys", "einstein");
    proxy
        .put(
            &signing_key,
            Bytes::from_static(
                br#"{"key":"signing-keys/einstein","data":"c2VjcmV0","metadata":null}"#,
            ),
        )
        .await
        .unwrap();
    let registry_bucket = js
        .create_key_value(kv::Config {
            bucket: "service-registry".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let service = base64_json(
        r#"{"name":"com.owncloud.web.web","nodes":[{"id":"w1","address":"127.0.0.1:9100","metadata":{"protocol":"http"}}]}"#,
    );
    registry_bucket
        .put(
            gatehouse_shared::store::encode_key(
                "service-registry",
                "com.owncloud.web.web@w1@1.0.0",
            ),
            Bytes::from(format!(
                r#"{{"key":"com.owncloud.web.web@w1@1.0.0","data":"{service}","metadata":null}}"#
            )),
        )
        .await
        .unwrap();

    // The gateway's own buckets, created by the gateway, written by one client and seen by another.
    for (bucket, auth) in [
        ("gatehouse-state", user("gatehouse", "gw-pass")),
        ("cache-userinfo", NatsAuth::NKeySeed(nkey.seed().unwrap())),
    ] {
        let a = NatsKvStore::connect(store_options(
            &nats,
            bucket,
            security(tls(&pki), auth.clone()),
        ))
        .await
        .unwrap_or_else(|e| panic!("{bucket}: {e}"));
        let b = NatsKvStore::connect(store_options(&nats, bucket, security(tls(&pki), auth)))
            .await
            .unwrap();
        let mut feed = b.changes();
        a.put("k", Bytes::from_static(b"v1"), None).await.unwrap();
        assert_eq!(value(a.get("k").await.unwrap()), Some(b"v1".to_vec()));
        tokio::time::timeout(Duration::from_secs(5), feed.recv())
            .await
            .expect("the change reaches the other client")
            .unwrap();
        assert_eq!(value(b.get("k").await.unwrap()), Some(b"v1".to_vec()));
        assert!(matches!(
            a.create("k", Bytes::from_static(b"v2"), None).await,
            Err(StoreError::Conflict { .. })
        ));
        a.delete("k").await.unwrap();
        assert_eq!(value(b.get("k").await.unwrap()), None);
    }

    // Read-only buckets.
    let keys = NatsKvStore::connect(NatsKvOptions {
        table: "signing-keys".into(),
        ..store_options(
            &nats,
            "proxy",
            security(tls(&pki), user("gatehouse", "gw-pass")),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        value(keys.get("einstein").await.unwrap()),
        Some(b"secret".to_vec())
    );
    let registry = ServiceRegistry::connect_with(
        nats.client_urls(),
        "service-registry",
        &NatsSecurity {
            section: "service_registry".into(),
            ..security(tls(&pki), user("gatehouse", "gw-pass"))
        },
    )
    .await
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            registry.nodes("com.owncloud.web.web") == ["http://127.0.0.1:9100"]
        })
        .await,
        "the registration within 5 s"
    );

    // Events: the stream is created and an event lands in it.
    let events = EventPublisher::start(EventPublisherOptions {
        servers: nats.client_urls(),
        security: NatsSecurity {
            section: "events".into(),
            ..security(tls(&pki), user("gatehouse", "gw-pass"))
        },
        ..EventPublisherOptions::default()
    })
    .unwrap();
    events
        .publish(OutgoingEvent::new(Event::user_created(None, "u-1")))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            events.published() == 1
        })
        .await,
        "the event is acknowledged within 10 s"
    );
    let mut stream = js.get_stream(MAIN_QUEUE).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let log = nats.log(0);
    assert!(
        !log.to_ascii_lowercase().contains("permissions violation"),
        "the documented permissions were not enough:\n{log}"
    );
}

fn value(e: Option<gatehouse_shared::store::Entry>) -> Option<Vec<u8>> {
    e.map(|e| e.value.to_vec())
}

fn base64_json(json: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_no_retry_fixes_stop_start_up_naming_the_setting() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path(), "main");
    let stranger = Pki::create(dir.path(), "stranger");
    let nats = secured_server(&pki, false, &nkeys::KeyPair::new_user().public_key());
    let bucket = "gatehouse-state";

    let wrong = connect_err(store_options(
        &nats,
        bucket,
        security(tls(&pki), user("gatehouse", "nope")),
    ))
    .await;
    assert!(
        wrong.contains("state_store.username and state_store.password"),
        "{wrong}"
    );
    let missing = connect_err(store_options(
        &nats,
        bucket,
        security(tls(&pki), NatsAuth::None),
    ))
    .await;
    assert!(missing.contains("none configured"), "{missing}");

    let untrusted = connect_err(store_options(
        &nats,
        bucket,
        security(tls(&stranger), user("gatehouse", "gw-pass")),
    ))
    .await;
    assert!(
        untrusted.contains("state_store.tls_root_ca_certificate"),
        "{untrusted}"
    );
    let no_tls = connect_err(store_options(
        &nats,
        bucket,
        security(None, user("gatehouse", "gw-pass")),
    ))
    .await;
    assert!(no_tls.contains("state_store.enable_tls"), "{no_tls}");

    let unreadable = connect_err(store_options(
        &nats,
        bucket,
        security(
            Some(NatsTls {
                root_ca: Some(dir.path().join("missing.pem")),
                client_certificate: None,
                insecure: false,
            }),
            user("gatehouse", "gw-pass"),
        ),
    ))
    .await;
    assert!(
        unreadable.contains("state_store.tls_root_ca_certificate: cannot read"),
        "{unreadable}"
    );

    // TLS required against a server without TLS: no plaintext session.
    let plain = NatsCluster::start(1);
    let downgrade = connect_err(store_options(
        &plain,
        bucket,
        security(tls(&pki), NatsAuth::None),
    ))
    .await;
    assert!(downgrade.contains("TLS handshake"), "{downgrade}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_is_reported_as_such_without_waiting() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path(), "main");
    let nats = secured_server(&pki, false, &nkeys::KeyPair::new_user().public_key());
    // The admin creates the bucket; `limited` may read it but not write it.
    let gateway = NatsKvStore::connect(store_options(
        &nats,
        "gatehouse-state",
        security(tls(&pki), user("gatehouse", "gw-pass")),
    ))
    .await
    .unwrap();
    gateway
        .put("k", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    let limited = NatsKvStore::connect(store_options(
        &nats,
        "gatehouse-state",
        security(tls(&pki), user("limited", "lim-pass")),
    ))
    .await
    .unwrap();
    assert_eq!(value(limited.get("k").await.unwrap()), Some(b"v".to_vec()));
    let started = Instant::now();
    let err = limited
        .put("k", Bytes::from_static(b"w"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("lacks a permission") && m.to_ascii_lowercase().contains("permissions violation")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the refusal took {:?} (op_timeout is 2 s)",
        started.elapsed()
    );
    // NATS answered: the store is not suspected of being down, reads go on.
    assert_eq!(value(limited.get("k").await.unwrap()), Some(b"v".to_vec()));

    // A bucket the gateway may not create stops start-up at once, saying why.
    let started = Instant::now();
    let refused = connect_err(store_options(
        &nats,
        "someone-elses",
        security(tls(&pki), user("gatehouse", "gw-pass")),
    ))
    .await;
    assert!(
        refused.contains("NATS refused to open or create the bucket someone-elses")
            && refused.contains("KV_someone-elses"),
        "{refused}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_tokens() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path(), "main");
    let nats = secured_server(&pki, true, &nkeys::KeyPair::new_user().public_key());
    let without_cert = connect_err(store_options(
        &nats,
        "gatehouse-state",
        security(tls(&pki), user("gatehouse", "gw-pass")),
    ))
    .await;
    assert!(without_cert.contains("TLS handshake"), "{without_cert}");
    let with_cert = Some(NatsTls {
        root_ca: Some(pki.ca.clone()),
        client_certificate: Some((pki.client_cert.clone(), pki.client_key.clone())),
        insecure: false,
    });
    let store = NatsKvStore::connect(store_options(
        &nats,
        "gatehouse-state",
        security(with_cert.clone(), user("gatehouse", "gw-pass")),
    ))
    .await
    .unwrap();
    store
        .put("k", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    // Insecure: any certificate is accepted, the client certificate is still presented.
    let insecure = NatsKvStore::connect(store_options(
        &nats,
        "gatehouse-state",
        security(
            Some(NatsTls {
                root_ca: None,
                insecure: true,
                ..with_cert.clone().unwrap()
            }),
            user("gatehouse", "gw-pass"),
        ),
    ))
    .await
    .unwrap();
    assert_eq!(value(insecure.get("k").await.unwrap()), Some(b"v".to_vec()));

    let token_server = NatsCluster::start_with(
        1,
        NatsOptions {
            extra_config: format!(
                "{}authorization {{ token: \"s3cr3t-token\" }}\n",
                pki.nats_tls_block(false)
            ),
            ..NatsOptions::default()
        },
    );
    let ok = NatsKvStore::connect(store_options(
        &token_server,
        "gatehouse-state",
        security(tls(&pki), NatsAuth::Token("s3cr3t-token".into())),
    ))
    .await
    .unwrap();
    ok.put("k", Bytes::from_static(b"v"), None).await.unwrap();
    let wrong = connect_err(store_options(
        &token_server,
        "gatehouse-state",
        security(tls(&pki), NatsAuth::Token("guess".into())),
    ))
    .await;
    assert!(wrong.contains("state_store.token"), "{wrong}");
}

/// A NATS JWT (`ed25519-nkey`) with `claims` about `subject`, signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "jti": format!("{name}-{now}"),
        "iat": now,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let payload = b64.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let signature = b64.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{signature}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_file_authenticates_in_operator_mode() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path(), "main");
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "op",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
    });
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "gatehouse",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        "gateway",
        serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    // JetStream needs a system account in operator mode.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let nats = NatsCluster::start_with(
        1,
        NatsOptions {
            extra_config: format!(
                "{}operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
                 resolver_preload: {{\n  {}: {account_jwt}\n  {sys}: {system_jwt}\n}}\n",
                pki.nats_tls_block(false),
                account.public_key(),
                sys = system.public_key(),
            ),
            ..NatsOptions::default()
        },
    );
    let creds = dir.path().join("gateway.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    let store = NatsKvStore::connect(store_options(
        &nats,
        "gatehouse-state",
        security(tls(&pki), NatsAuth::CredentialsFile(creds.clone())),
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", nats.log(0)));
    store
        .put("k", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    assert_eq!(value(store.get("k").await.unwrap()), Some(b"v".to_vec()));

    // A user the account did not sign is refused, naming the setting.
    let stranger = nkeys::KeyPair::new_user();
    let forged = nats_jwt(
        &nkeys::KeyPair::new_account(),
        &stranger.public_key(),
        "stranger",
        serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    let forged_creds = dir.path().join("stranger.creds");
    std::fs::write(
        &forged_creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{forged}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            stranger.seed().unwrap()
        ),
    )
    .unwrap();
    let refused = connect_err(store_options(
        &nats,
        "gatehouse-state",
        security(tls(&pki), NatsAuth::CredentialsFile(forged_creds)),
    ))
    .await;
    assert!(
        refused.contains("state_store.credentials_file"),
        "{refused}"
    );
    // Not a credentials file at all: refused before connecting.
    let junk = dir.path().join("junk.creds");
    std::fs::write(&junk, "hello").unwrap();
    let err = connect_err(store_options(
        &nats,
        "gatehouse-state",
        security(tls(&pki), NatsAuth::CredentialsFile(junk)),
    ))
    .await;
    assert!(err.contains("is not a NATS credentials file"), "{err}");
}
