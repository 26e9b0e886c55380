//! The resolver over the builtin backend on a `MemoryStore`; several resolvers sharing one store
//! stand for several nodes sharing the NATS bucket.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use gatehouse_shared::store::{ManualClock, MemoryStore};
use gatehouse_shared::token::{DEFAULT_LEEWAY, Minter, verify};
use serde_json::json;

use super::*;

const USER: &str = "d7beeea8-8ff4-406b-8fb6-ab2dd81e6b11";
const ADMIN: &str = "71881883-1768-46bd-a24d-a356a2afdf7f";
const KEEP: RoleDecision = RoleDecision::KeepExistingOrDefault {
    default: BuiltinRole::User,
};

fn assign(role: BuiltinRole) -> RoleDecision {
    RoleDecision::Assign {
        role,
        mapping_index: 0,
    }
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

impl Recorder {
    fn all(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.all().iter().filter(|e| e.starts_with(prefix)).count()
    }

    fn clear(&self) {
        self.events.lock().unwrap().clear();
    }
}

impl AccountEvents for Recorder {
    fn user_created(&self, user: &Account) {
        self.events
            .lock()
            .unwrap()
            .push(format!("UserCreated {}", user.username));
    }
    fn group_created(&self, group: &Group) {
        self.events
            .lock()
            .unwrap()
            .push(format!("GroupCreated {}", group.name));
    }
    fn member_added(&self, group: &Group, _user_id: &str) {
        self.events
            .lock()
            .unwrap()
            .push(format!("GroupMemberAdded {}", group.name));
    }
    fn member_removed(&self, group: &Group, _user_id: &str) {
        self.events
            .lock()
            .unwrap()
            .push(format!("GroupMemberRemoved {}", group.name));
    }
}

/// Counts directory calls, to show the hot path makes none.
struct Counting {
    inner: BuiltinDirectory,
    calls: AtomicUsize,
}

#[async_trait]
impl Directory for Counting {
    async fn find_user(
        &self,
        kind: LookupKind,
        value: &str,
    ) -> Result<Option<DirectoryUser>, AccountError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.find_user(kind, value).await
    }
    async fn create_user(&self, user: &NewUser) -> Result<DirectoryUser, CreateError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.create_user(user).await
    }
    async fn update_user(
        &self,
        id: &str,
        display_name: Option<&str>,
        mail: Option<&str>,
    ) -> Result<(), AccountError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.update_user(id, display_name, mail).await
    }
    async fn find_group(&self, name: &str) -> Result<Option<Group>, AccountError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.find_group(name).await
    }
    async fn create_group(&self, name: &str, id: Option<&str>) -> Result<Group, CreateError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.create_group(name, id).await
    }
    async fn add_member(&self, group: &Group, user_id: &str) -> Result<(), AccountError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.add_member(group, user_id).await
    }
    async fn remove_member(&self, group: &Group, user_id: &str) -> Result<(), AccountError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.remove_member(group, user_id).await
    }
}

fn settings(auto_provision: bool) -> AccountSettings {
    let config = Config {
        auto_provision_accounts: auto_provision,
        ..Config::default()
    };
    AccountSettings::from_config(&config)
}

fn claims(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("claims must be an object"),
    }
}

fn marie(groups: Value) -> Map<String, Value> {
    let mut c = claims(json!({
        "iss": "https://idp.example.com",
        "sub": "sub-marie",
        "preferred_username": "marie",
        "name": "Marie Curie",
        "email": "marie@example.org",
    }));
    if !groups.is_null() {
        c.insert("groups".into(), groups);
    }
    c
}

struct Node {
    resolver: AccountResolver,
}

struct Cluster {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    events: Arc<Recorder>,
}

impl Cluster {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        Cluster {
            store: Arc::new(MemoryStore::with_clock(clock.clone())),
            clock,
            events: Arc::new(Recorder::default()),
        }
    }

    fn state(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn node(&self, settings: AccountSettings) -> Node {
        let resolver = AccountResolver::new(settings, self.state(), self.events.clone())
            .await
            .unwrap();
        Node { resolver }
    }

    fn counting_node(&self, settings: AccountSettings) -> (Node, Arc<Counting>) {
        let directory = Arc::new(Counting {
            inner: BuiltinDirectory::new(self.state(), self.events.clone()),
            calls: AtomicUsize::new(0),
        });
        let resolver = AccountResolver::with_directory(settings, self.state(), directory.clone());
        (Node { resolver }, directory)
    }

    fn directory(&self) -> BuiltinDirectory {
        BuiltinDirectory::new(self.state(), Arc::new(NoEvents))
    }

    async fn user(&self, username: &str) -> Option<DirectoryUser> {
        self.directory()
            .find_user(LookupKind::Username, username)
            .await
            .unwrap()
    }

    async fn group_names(&self, username: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .user(username)
            .await
            .map(|u| u.groups.into_iter().map(|g| g.name).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    async fn text(&self, key: &str) -> Option<String> {
        self.store
            .get(key)
            .await
            .unwrap()
            .map(|e| String::from_utf8(e.value.to_vec()).unwrap())
    }

    async fn count_keys(&self, prefix: &str, candidates: &[String]) -> usize {
        let mut n = 0;
        for c in candidates {
            if self
                .store
                .get(&format!("{prefix}{c}"))
                .await
                .unwrap()
                .is_some()
            {
                n += 1;
            }
        }
        n
    }
}

async fn resolve(node: &Node, claims: &Map<String, Value>, role: RoleDecision) -> Resolved {
    node.resolver.resolve(claims, role).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_logins_on_several_nodes_create_one_user() {
    let cluster = Cluster::new();
    let mut nodes = Vec::new();
    for _ in 0..5 {
        nodes.push(Arc::new(cluster.node(settings(true)).await));
    }
    let claims = Arc::new(marie(json!(["physics"])));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let node = nodes[i % nodes.len()].clone();
        let claims = claims.clone();
        tasks.push(tokio::spawn(async move {
            node.resolver.resolve(&claims, KEEP).await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().expect("every concurrent login succeeds"));
    }
    let id = &results[0].account.id;
    assert!(results.iter().all(|r| &r.account.id == id));
    assert_eq!(results.iter().filter(|r| r.created).count(), 1);
    assert_eq!(cluster.events.count("UserCreated"), 1);
    assert_eq!(cluster.events.count("GroupCreated physics"), 1);
    assert_eq!(cluster.events.count("GroupMemberAdded physics"), 1);
    assert_eq!(cluster.group_names("marie").await, ["physics"]);
    assert_eq!(cluster.text(&role_key(id)).await.as_deref(), Some(USER));
    // Another login now sees the groups from the first sync.
    let again = resolve(&nodes[1], &claims, KEEP).await;
    assert_eq!(again.account.group_names, ["physics"]);
}

#[tokio::test]
async fn a_new_user_is_created_from_the_claims() {
    let cluster = Cluster::new();
    let node = cluster.node(settings(true)).await;
    let resolved = resolve(&node, &marie(json!(["b", "a"])), KEEP).await;
    assert!(resolved.created);
    let account = &resolved.account;
    assert_eq!(account.username, "marie");
    assert_eq!(account.display_name, "Marie Curie");
    assert_eq!(account.mail, "marie@example.org");
    assert_eq!(account.role_id, USER);
    let mut names = account.group_names.clone();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(account.groups.len(), 2);

    let record: builtin::UserRecord = serde_json::from_slice(
        &cluster
            .store
            .get(&builtin::user_key(&account.id))
            .await
            .unwrap()
            .unwrap()
            .value,
    )
    .unwrap();
    assert_eq!(record.issuer.as_deref(), Some("https://idp.example.com"));
    assert_eq!(record.issuer_assigned_id.as_deref(), Some("sub-marie"));
    assert_eq!(
        cluster
            .text(&builtin::user_by_mail_key("Marie@Example.org"))
            .await
            .as_deref(),
        Some(account.id.as_str())
    );

    let second = resolve(&node, &marie(json!(["b", "a"])), KEEP).await;
    assert!(!second.created);
    assert_eq!(&second.account, account);
}

#[tokio::test]
async fn a_cached_login_makes_no_directory_call() {
    let cluster = Cluster::new();
    let (node, directory) = cluster.counting_node(settings(true));
    let claims = marie(json!(["physics"]));
    resolve(&node, &claims, KEEP).await;
    assert!(directory.calls.load(Ordering::SeqCst) > 0);
    directory.calls.store(0, Ordering::SeqCst);
    for _ in 0..3 {
        resolve(&node, &claims, KEEP).await;
    }
    assert_eq!(directory.calls.load(Ordering::SeqCst), 0);

    // Once the cache entry expires, the directory is asked again.
    cluster.clock.advance(Duration::from_secs(61));
    resolve(&node, &claims, KEEP).await;
    assert!(directory.calls.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn groups_are_synced_at_most_once_per_interval_across_nodes() {
    let cluster = Cluster::new();
    let a = cluster.node(settings(true)).await;
    let b = cluster.node(settings(true)).await;
    resolve(&a, &marie(json!(["alpha"])), KEEP).await;
    assert_eq!(cluster.group_names("marie").await, ["alpha"]);

    // Within five minutes neither node syncs again, even past the account cache's lifetime.
    cluster.clock.advance(Duration::from_secs(120));
    let on_b = resolve(&b, &marie(json!(["beta"])), KEEP).await;
    assert_eq!(on_b.account.group_names, ["alpha"]);
    assert_eq!(cluster.group_names("marie").await, ["alpha"]);
    assert_eq!(cluster.events.count("GroupCreated beta"), 0);

    cluster.clock.advance(Duration::from_secs(181));
    let later = resolve(&b, &marie(json!(["beta"])), KEEP).await;
    assert_eq!(later.account.group_names, ["beta"]);
    assert_eq!(cluster.group_names("marie").await, ["beta"]);
    assert_eq!(cluster.events.count("GroupMemberRemoved alpha"), 1);
    assert_eq!(cluster.events.count("GroupMemberAdded beta"), 1);
    // And the other node's view follows at once (its cache entry was dropped).
    let on_a = resolve(&a, &marie(json!(["beta"])), KEEP).await;
    assert_eq!(on_a.account.group_names, ["beta"]);
}

#[tokio::test]
async fn a_failed_sync_removes_its_marker() {
    let cluster = Cluster::new();
    let node = cluster.node(settings(true)).await;
    let first = resolve(&node, &marie(json!([])), KEEP).await;
    let id = first.account.id.clone();
    assert!(cluster.text(&group_sync_key(&id)).await.is_some());

    cluster.clock.advance(Duration::from_secs(301));
    // A group name that is taken by a record that cannot be read: the sync fails.
    cluster
        .store
        .put(
            &builtin::group_by_name_key("broken"),
            Bytes::from_static(b"g-broken"),
            None,
        )
        .await
        .unwrap();
    cluster
        .store
        .put(
            &builtin::group_key("g-broken"),
            Bytes::from_static(b"not json"),
            None,
        )
        .await
        .unwrap();
    let err = node
        .resolver
        .resolve(&marie(json!(["broken"])), KEEP)
        .await
        .unwrap_err();
    assert!(matches!(err, AccountError::Backend { .. }), "{err:?}");
    assert!(cluster.text(&group_sync_key(&id)).await.is_none());
}

#[tokio::test]
async fn absent_or_null_groups_claim_does_not_sync_but_empty_list_does() {
    let cluster = Cluster::new();
    let node = cluster.node(settings(true)).await;
    let id = resolve(&node, &marie(json!(["a", "b"])), KEEP)
        .await
        .account
        .id;
    for claims in [marie(Value::Null), {
        let mut c = marie(Value::Null);
        c.insert("groups".into(), Value::Null);
        c
    }] {
        cluster.clock.advance(Duration::from_secs(301));
        let r = resolve(&node, &claims, KEEP).await;
        assert_eq!(r.account.groups.len(), 2);
        assert_eq!(cluster.group_names("marie").await, ["a", "b"]);
        assert!(
            cluster.text(&group_sync_key(&id)).await.is_none(),
            "no marker without a groups claim"
        );
    }
    cluster.clock.advance(Duration::from_secs(301));
    let r = resolve(&node, &marie(json!([])), KEEP).await;
    assert!(r.account.groups.is_empty());
    assert!(cluster.group_names("marie").await.is_empty());
    assert_eq!(cluster.events.count("GroupMemberRemoved"), 2);
}

#[tokio::test]
async fn display_name_and_mail_follow_the_claims_together() {
    let cluster = Cluster::new();
    let node = cluster.node(settings(true)).await;
    let first = resolve(&node, &marie(Value::Null), KEEP).await;
    let mut changed = marie(Value::Null);
    changed.insert("name".into(), json!("Marie Skłodowska-Curie"));
    changed.insert("email".into(), json!("msc@example.org"));
    let second = resolve(&node, &changed, KEEP).await;
    assert_eq!(second.account.id, first.account.id);
    assert_eq!(second.account.display_name, "Marie Skłodowska-Curie");
    assert_eq!(second.account.mail, "msc@example.org");
    let stored = cluster.user("marie").await.unwrap();
    assert_eq!(
        (stored.display_name.as_str(), stored.mail.as_str()),
        ("Marie Skłodowska-Curie", "msc@example.org")
    );
    // The mail index moved with the mail.
    assert!(
        cluster
            .text(&builtin::user_by_mail_key("marie@example.org"))
            .await
            .is_none()
    );
    assert_eq!(
        cluster
            .text(&builtin::user_by_mail_key("msc@example.org"))
            .await,
        Some(first.account.id.clone())
    );
    // An absent mail claim leaves the mail alone.
    changed.remove("email");
    let third = resolve(&node, &changed, KEEP).await;
    assert_eq!(third.account.mail, "msc@example.org");
}

#[tokio::test]
async fn default_driver_keeps_the_stored_role_or_gives_user() {
    let cluster = Cluster::new();
    let node = cluster.node(settings(true)).await;
    let id = resolve(&node, &marie(Value::Null), KEEP).await.account.id;
    assert_eq!(cluster.text(&role_key(&id)).await.as_deref(), Some(USER));

    cluster
        .store
        .put(&role_key(&id), Bytes::from_static(ADMIN.as_bytes()), None)
        .await
        .unwrap();
    cluster.clock.advance(Duration::from_secs(61));
    let again = resolve(&node, &marie(Value::Null), KEEP).await;
    assert_eq!(again.account.role_id, ADMIN);
    assert_eq!(cluster.text(&role_key(&id)).await.as_deref(), Some(ADMIN));
}

#[tokio::test]
async fn oidc_driver_assigns_the_decided_role_and_writes_only_changes() {
    let cluster = Cluster::new();
    let node = cluster.node(settings(true)).await;
    let first = resolve(&node, &marie(Value::Null), assign(BuiltinRole::Admin)).await;
    assert_eq!(first.account.role_id, ADMIN);
    let key = role_key(&first.account.id);
    let revision = cluster.store.get(&key).await.unwrap().unwrap().revision;

    cluster.clock.advance(Duration::from_secs(61));
    resolve(&node, &marie(Value::Null), assign(BuiltinRole::Admin)).await;
    assert_eq!(
        cluster.store.get(&key).await.unwrap().unwrap().revision,
        revision,
        "an unchanged role is not rewritten"
    );

    // A changed decision is applied even while the account is cached.
    let changed = resolve(&node, &marie(Value::Null), assign(BuiltinRole::SpaceAdmin)).await;
    assert_eq!(changed.account.role_id, BuiltinRole::SpaceAdmin.id());
    assert_eq!(
        cluster.text(&key).await.as_deref(),
        Some(BuiltinRole::SpaceAdmin.id())
    );
}

const SEED: &str = r#"
groups:
  - name: physics-lovers
    id: 262982c1-2362-4afa-bfdf-8cbfef64a06e
users:
  - username: einstein
    display_name: Albert Einstein
    mail: einstein@example.org
    groups: [physics-lovers, sailing-lovers]
    role: admin
    id: 4c510ada-c86b-4815-8820-42cdf82c3d51
  - username: moss
    display_name: Maurice Moss
    role: user-light
  - username: li.un
    display_name: Dotted
"#;

fn seeded_settings(dir: &tempfile::TempDir) -> AccountSettings {
    let path = dir.path().join("seed.yaml");
    std::fs::write(&path, SEED).unwrap();
    let mut s = settings(false);
    s.seed_file = Some(path);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn seeding_is_idempotent_across_nodes_starting_together() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Arc::new(Cluster::new());
    let mut starts = Vec::new();
    for _ in 0..4 {
        let cluster = cluster.clone();
        let settings = seeded_settings(&dir);
        starts.push(tokio::spawn(async move {
            AccountResolver::new(settings, cluster.state(), cluster.events.clone())
                .await
                .map(|_| ())
        }));
    }
    for s in starts {
        s.await.unwrap().unwrap();
    }
    assert_eq!(cluster.events.count("UserCreated"), 3);
    assert_eq!(cluster.events.count("GroupCreated physics-lovers"), 1);
    assert_eq!(cluster.events.count("GroupCreated sailing-lovers"), 1);
    assert_eq!(cluster.events.count("GroupMemberAdded"), 2);

    let einstein = cluster.user("einstein").await.unwrap();
    assert_eq!(einstein.id, "4c510ada-c86b-4815-8820-42cdf82c3d51");
    assert_eq!(
        cluster.group_names("einstein").await,
        ["physics-lovers", "sailing-lovers"]
    );
    assert!(
        einstein
            .groups
            .iter()
            .any(|g| g.id == "262982c1-2362-4afa-bfdf-8cbfef64a06e")
    );
    assert_eq!(
        cluster.text(&role_key(&einstein.id)).await.as_deref(),
        Some(ADMIN)
    );
    let moss = cluster.user("moss").await.unwrap();
    assert_eq!(
        cluster.text(&role_key(&moss.id)).await.as_deref(),
        Some(BuiltinRole::UserLight.id())
    );

    // A restart later creates nothing and keeps roles changed since.
    cluster
        .store
        .put(
            &role_key(&moss.id),
            Bytes::from_static(USER.as_bytes()),
            None,
        )
        .await
        .unwrap();
    cluster.events.clear();
    cluster.node(seeded_settings(&dir)).await;
    assert!(
        cluster.events.all().is_empty(),
        "{:?}",
        cluster.events.all()
    );
    assert_eq!(
        cluster.text(&role_key(&moss.id)).await.as_deref(),
        Some(USER)
    );
    let ids: Vec<String> = vec![einstein.id.clone(), moss.id.clone()];
    assert_eq!(cluster.count_keys("user:", &ids).await, 2);
}

#[tokio::test]
async fn a_bad_seed_file_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.yaml");
    std::fs::write(
        &path,
        "users:\n  - username: x\n    display_name: X\n    role: boss\n",
    )
    .unwrap();
    let mut s = settings(false);
    s.seed_file = Some(path);
    let err = AccountResolver::new(s, Arc::new(MemoryStore::new()), Arc::new(NoEvents))
        .await
        .err()
        .unwrap();
    assert!(matches!(
        err,
        AccountSetupError::Seed(SeedError::Parse { .. })
    ));
    assert!(err.to_string().contains("boss"));
    assert!(!err.is_retryable());

    let mut s = settings(false);
    s.seed_file = Some(dir.path().join("missing.yaml"));
    let err = AccountResolver::new(s, Arc::new(MemoryStore::new()), Arc::new(NoEvents))
        .await
        .err()
        .unwrap();
    assert!(matches!(
        err,
        AccountSetupError::Seed(SeedError::Read { .. })
    ));
}

#[tokio::test]
async fn missing_claims_are_named() {
    let cluster = Cluster::new();
    let node = cluster.node(settings(true)).await;
    let err = node
        .resolver
        .resolve(&claims(json!({"email": "x@y"})), KEEP)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AccountError::ClaimMissing {
            claim: "preferred_username".into()
        }
    );
    assert!(!err.is_retryable());
    let err = node
        .resolver
        .resolve(&claims(json!({"preferred_username": "nameless"})), KEEP)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AccountError::ClaimMissing {
            claim: "name".into()
        }
    );
    assert!(cluster.user("nameless").await.is_none());
}

#[tokio::test]
async fn unknown_user_without_auto_provisioning_is_not_found() {
    let cluster = Cluster::new();
    let node = cluster.node(settings(false)).await;
    let err = node
        .resolver
        .resolve(&marie(Value::Null), KEEP)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AccountError::NotFound {
            claim: "username",
            value: "marie".into()
        }
    );
    assert!(!err.is_retryable());
    assert!(cluster.user("marie").await.is_none());
}

/// spec §9.3: the user claim and the CS3 claim combinations of `account_resolver_test.go`.
#[tokio::test]
async fn account_resolver_claim_cases() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new();
    cluster.node(seeded_settings(&dir)).await;

    let case = |oidc_claim: &str, cs3_claim: &str| {
        let mut s = settings(false);
        s.user_claim = ClaimPath::parse(oidc_claim);
        s.lookup = LookupKind::parse(cs3_claim).unwrap();
        s
    };
    let cases = [
        (
            case("email", "mail"),
            json!({"iss": "x", "email": "einstein@example.org"}),
            "einstein",
        ),
        (
            case("preferred_username", "username"),
            json!({"preferred_username": "einstein"}),
            "einstein",
        ),
        (
            case("li.un", "username"),
            json!({"li": {"un": "einstein"}}),
            "einstein",
        ),
        (
            case(r"li\.un", "username"),
            json!({"li.un": "moss"}),
            "moss",
        ),
        (case("li.un", "username"), json!({"li.un": "moss"}), "moss"),
        (
            case("preferred_username", "userid"),
            json!({"preferred_username": "4c510ada-c86b-4815-8820-42cdf82c3d51"}),
            "einstein",
        ),
    ];
    for (settings, c, expected) in cases {
        let node = cluster.node(settings).await;
        let resolved = node.resolver.resolve(&claims(c.clone()), KEEP).await;
        assert_eq!(
            resolved.map(|r| r.account.username).ok().as_deref(),
            Some(expected),
            "claims {c}"
        );
    }

    let node = cluster.node(case("email", "mail")).await;
    let err = node
        .resolver
        .resolve(&claims(json!({"email": "nobody@example.org"})), KEEP)
        .await
        .unwrap_err();
    assert!(matches!(err, AccountError::NotFound { claim: "mail", .. }));
    let err = node
        .resolver
        .resolve(&claims(json!({"iss": "x"})), KEEP)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AccountError::ClaimMissing {
            claim: "email".into()
        }
    );
}

#[tokio::test]
async fn a_disabled_user_is_refused() {
    let cluster = Cluster::new();
    let node = cluster.node(settings(true)).await;
    let id = resolve(&node, &marie(Value::Null), KEEP).await.account.id;
    let key = builtin::user_key(&id);
    let mut record: builtin::UserRecord =
        serde_json::from_slice(&cluster.store.get(&key).await.unwrap().unwrap().value).unwrap();
    record.disabled = true;
    cluster
        .store
        .put(
            &key,
            Bytes::from(serde_json::to_vec(&record).unwrap()),
            None,
        )
        .await
        .unwrap();
    cluster.clock.advance(Duration::from_secs(61));
    let err = node
        .resolver
        .resolve(&marie(Value::Null), KEEP)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AccountError::Disabled {
            user: "marie".into()
        }
    );
}

#[test]
fn reva_user_carries_group_names_and_the_role() {
    let account = Account {
        id: "u1".into(),
        username: "marie".into(),
        display_name: "Marie Curie".into(),
        mail: "marie@example.org".into(),
        groups: vec!["g1".into()],
        group_names: vec!["physics".into()],
        role_id: ADMIN.into(),
    };
    let user = reva_user(&account, "https://idp");
    let id = user.id.clone().unwrap();
    assert_eq!(
        (id.idp.as_str(), id.opaque_id.as_str(), id.user_type),
        ("https://idp", "u1", UserType::PRIMARY)
    );
    assert_eq!(user.groups, ["physics"]);
    assert_eq!(user.roles().unwrap(), [ADMIN]);
    let minter = Minter::new(b"secret", Duration::from_secs(60)).unwrap();
    let token = minter.mint(&user).unwrap();
    assert_eq!(
        verify(b"secret", &token, DEFAULT_LEEWAY).unwrap().user,
        user
    );
}

#[test]
fn settings_from_config() {
    let config = Config {
        account_backend: "cs3".into(),
        user_cs3_claim: "mail".into(),
        ..Config::default()
    };
    let s = AccountSettings::from_config(&config);
    assert_eq!(s.backend, BackendKind::Graph);
    assert_eq!(s.lookup, LookupKind::Mail);
    assert_eq!(s.seed_file, None);
    assert_eq!(
        AccountSettings::from_config(&Config::default()).backend,
        BackendKind::Builtin
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_left_by_a_crashed_node_delays_provisioning_only_until_the_wait_ends() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store
        .create(
            "provision:marie",
            Bytes::from_static(b"crashed-node"),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let events = Arc::new(Recorder::default());
    let resolver = AccountResolver::new(settings(true), store, events.clone())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let resolved = resolver.resolve(&marie(Value::Null), KEEP).await.unwrap();
    let waited = started.elapsed();
    assert!(resolved.created);
    assert!(waited >= Duration::from_secs(5), "{waited:?}");
    assert!(waited < Duration::from_secs(6), "{waited:?}");
    assert_eq!(events.count("UserCreated"), 1);
}

#[tokio::test]
async fn lookup_finds_existing_users_only_and_caches_them() {
    let cluster = Cluster::new();
    let (node, directory) = cluster.counting_node(settings(true));
    assert_eq!(
        node.resolver
            .lookup(LookupKind::Username, "marie")
            .await
            .unwrap_err(),
        AccountError::NotFound {
            claim: "username",
            value: "marie".into()
        },
        "lookup never provisions"
    );
    let created = resolve(
        &node,
        &marie(json!(["physics"])),
        assign(BuiltinRole::Admin),
    )
    .await
    .account;
    let found = node
        .resolver
        .lookup(LookupKind::Username, "Marie")
        .await
        .unwrap();
    assert_eq!(found.id, created.id);
    assert_eq!(found.role_id, ADMIN, "the stored role, not the default");
    assert_eq!(found.group_names, ["physics"]);
    directory.calls.store(0, Ordering::SeqCst);
    node.resolver
        .lookup(LookupKind::Username, "marie")
        .await
        .unwrap();
    assert_eq!(
        directory.calls.load(Ordering::SeqCst),
        0,
        "answered from the cache"
    );
}
