//! EventPublisher against real nats-server processes: delivery, order and envelope; a total
//! cluster outage; de-duplication of a re-send after a lost acknowledgement; the queue bound.
//! Every test starts its own servers.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use gatehouse_nats::{EventPublisher, EventPublisherOptions, StreamSetup};
use gatehouse_shared::events::{
    DecodedEnvelope, Event, EventSink, MAIN_QUEUE, OutgoingEvent, PublishError, decode,
    is_valid_traceparent,
};
use gatehouse_shared::token::{RevaUserId, UserType};
use gatehouse_tests::nats::NatsCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "gatehouse_nats=debug,async_nats=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

fn opts(servers: Vec<String>, replicas: usize) -> EventPublisherOptions {
    EventPublisherOptions {
        servers,
        stream: StreamSetup::Ensure {
            name: MAIN_QUEUE.to_owned(),
            replicas,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::ZERO,
        },
        ..Default::default()
    }
}

fn user(id: &str) -> RevaUserId {
    RevaUserId {
        idp: "https://idp.example".into(),
        opaque_id: id.into(),
        user_type: UserType::PRIMARY,
    }
}

/// A sign-in of user `id`, traced with `TP`.
fn sign_in(id: &str) -> OutgoingEvent {
    OutgoingEvent::new(Event::user_signed_in(user(id)))
        .with_traceparent(TP)
        .with_initiator("test")
}

/// The user id an event is about (to check order and completeness).
fn subject_of(env: &DecodedEnvelope) -> String {
    match env.event().unwrap() {
        Event::UserSignedIn(e) => e.executant.unwrap().opaque_id,
        Event::BackchannelLogout(e) => e.executant.unwrap().opaque_id,
        Event::UserCreated(e) => e.user_id,
        Event::GroupMemberAdded(e) | Event::GroupMemberRemoved(e) => e.user_id,
        Event::GroupCreated(e) => e.group_id,
        Event::SpaceShared(e) => e.grantee_user_id.unwrap().opaque_id,
        Event::SpaceUnshared(e) | Event::SpaceShareUpdated(e) => {
            e.grantee_user_id.unwrap().opaque_id
        }
    }
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn flush(p: &EventPublisher, timeout: Duration) {
    let ok = p.flush(tokio::time::Instant::now() + timeout).await;
    assert!(
        ok,
        "not flushed within {timeout:?}: pending {}, published {}, retried {}",
        p.pending(),
        p.published(),
        p.retried()
    );
}

/// Every message in the `main-queue` stream, in stream order, with its `Nats-Msg-Id`.
async fn read_stream(urls: Vec<String>) -> Vec<(DecodedEnvelope, String)> {
    let client = async_nats::connect(urls).await.unwrap();
    let js = jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match try_read_stream(&js).await {
            Ok(all) => return all,
            Err(e) => assert!(Instant::now() < deadline, "reading the stream: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn try_read_stream(
    js: &jetstream::Context,
) -> Result<Vec<(DecodedEnvelope, String)>, async_nats::Error> {
    let mut stream = js.get_stream(MAIN_QUEUE).await?;
    let state = stream.info().await?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        let m = stream.get_raw_message(seq).await?;
        assert_eq!(m.subject.as_str(), MAIN_QUEUE);
        let msg_id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.push((decode(&m.payload).unwrap(), msg_id));
    }
    Ok(out)
}

/// Checks every stored event carries a complete envelope, and that ids are unique.
fn check_envelopes(stored: &[(DecodedEnvelope, String)]) {
    let mut ids = HashSet::new();
    for (env, msg_id) in stored {
        assert_eq!(env.topic, MAIN_QUEUE);
        assert_eq!(env.id, env.event_id());
        assert_eq!(msg_id, env.event_id(), "de-duplication id is the event id");
        assert!(is_valid_traceparent(env.traceparent()), "{env:?}");
        assert!(!env.timestamp.is_empty());
        assert!(ids.insert(env.event_id().to_owned()), "duplicate {env:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_every_event_in_order_with_the_envelope() {
    init_logs();
    let cluster = NatsCluster::start(3);
    let publisher = Arc::new(EventPublisher::start(opts(cluster.client_urls(), 3)).unwrap());

    // The types Gatehouse raises, from this runtime.
    let svc = user("svc");
    let mixed = [
        OutgoingEvent::new(Event::user_created(Some(svc.clone()), "m-0")),
        OutgoingEvent::new(Event::group_created(Some(svc.clone()), "m-1")),
        OutgoingEvent::new(Event::group_member_added(Some(svc.clone()), "g", "m-2")),
        OutgoingEvent::new(Event::group_member_removed(Some(svc.clone()), "g", "m-3")),
        OutgoingEvent::new(Event::space_shared(svc.clone(), user("m-4"), "s$1")),
        OutgoingEvent::new(Event::space_share_updated(svc.clone(), user("m-5"), "s$1")),
        OutgoingEvent::new(Event::space_unshared(svc, user("m-6"), "s$1")),
        sign_in("m-7"),
    ];
    for e in mixed.iter().cloned() {
        publisher.publish(e).unwrap();
    }
    flush(&publisher, Duration::from_secs(30)).await;

    // Then four current-thread runtimes at once, as the node's workers do.
    const THREADS: usize = 4;
    const PER_THREAD: usize = 50;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let p = publisher.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for i in 0..PER_THREAD {
                        p.publish(sign_in(&format!("t{t}-{i:03}"))).unwrap();
                        if i % 10 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    flush(&publisher, Duration::from_secs(30)).await;
    let total = mixed.len() + THREADS * PER_THREAD;
    assert_eq!(publisher.published(), total as u64);
    assert_eq!(publisher.dropped(), 0);
    assert!(publisher.is_connected());

    let stored = read_stream(cluster.client_urls()).await;
    assert_eq!(stored.len(), total);
    check_envelopes(&stored);
    for (i, (env, _)) in stored.iter().take(mixed.len()).enumerate() {
        assert_eq!(env.event_type(), mixed[i].event.type_name());
        assert_eq!(subject_of(env), format!("m-{i}"));
        assert_eq!(env.event().unwrap(), mixed[i].event);
    }
    assert_eq!(stored[7].0.traceparent(), TP);
    assert_eq!(stored[7].0.initiator_id(), "test");
    // Each runtime's events keep their order.
    for t in 0..THREADS {
        let prefix = format!("t{t}-");
        let seen: Vec<String> = stored
            .iter()
            .map(|(e, _)| subject_of(e))
            .filter(|s| s.starts_with(&prefix))
            .collect();
        let expected: Vec<String> = (0..PER_THREAD).map(|i| format!("t{t}-{i:03}")).collect();
        assert_eq!(seen, expected);
    }
    assert!(
        stored[mixed.len()..]
            .iter()
            .all(|(e, _)| e.traceparent() == TP)
    );

    // The stream the publisher created is the one consumers expect.
    let client = async_nats::connect(cluster.client_urls()).await.unwrap();
    let mut stream = jetstream::new(client).get_stream(MAIN_QUEUE).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.subjects, [MAIN_QUEUE]);
    assert_eq!(config.duplicate_window, Duration::from_secs(120));
    assert_eq!(config.num_replicas, 3);
    assert_eq!(config.storage, jetstream::stream::StorageType::File);
}

/// All three servers go away; events raised meanwhile wait in the queue (publish never blocks)
/// and are delivered exactly once when the cluster is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_outage_loses_and_duplicates_nothing() {
    init_logs();
    let mut cluster = NatsCluster::start(3);
    let publisher = EventPublisher::start(opts(cluster.client_urls(), 3)).unwrap();
    for i in 0..20 {
        publisher.publish(sign_in(&format!("u{i:03}"))).unwrap();
    }
    flush(&publisher, Duration::from_secs(30)).await;

    tokio::task::block_in_place(|| {
        for i in 0..cluster.len() {
            cluster.stop(i);
        }
    });
    eventually("the client to notice", Duration::from_secs(10), || async {
        !publisher.is_connected()
    })
    .await;

    let started = Instant::now();
    for i in 20..220 {
        publisher.publish(sign_in(&format!("u{i:03}"))).unwrap();
        assert_eq!(publisher.pending(), i - 19);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "200 publishes took {took:?}");
    assert_eq!(publisher.pending(), 200);
    assert_eq!(publisher.published(), 20);
    assert!(!publisher.is_connected());

    tokio::task::block_in_place(|| cluster.restart_all());
    flush(&publisher, Duration::from_secs(60)).await;
    assert_eq!(publisher.pending(), 0);
    assert_eq!(publisher.published(), 220);

    let stored = read_stream(cluster.client_urls()).await;
    check_envelopes(&stored);
    let seen: Vec<String> = stored.iter().map(|(e, _)| subject_of(e)).collect();
    let expected: Vec<String> = (0..220).map(|i| format!("u{i:03}")).collect();
    assert_eq!(seen, expected, "every event exactly once, in order");
}

/// `start` neither fails nor waits when no server is up; what was queued is delivered once one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_nats_is_down() {
    init_logs();
    let mut cluster = NatsCluster::start(1);
    tokio::task::block_in_place(|| cluster.stop(0));
    let started = Instant::now();
    let publisher = EventPublisher::start(opts(cluster.client_urls(), 1)).unwrap();
    for i in 0..5 {
        publisher.publish(sign_in(&format!("u{i}"))).unwrap();
    }
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(publisher.pending(), 5);
    assert!(!publisher.is_connected());
    assert!(
        !publisher
            .flush(tokio::time::Instant::now() + Duration::from_millis(300))
            .await,
        "nothing can be delivered yet"
    );

    tokio::task::block_in_place(|| cluster.restart(0));
    flush(&publisher, Duration::from_secs(30)).await;
    let stored = read_stream(cluster.client_urls()).await;
    check_envelopes(&stored);
    let seen: Vec<String> = stored.iter().map(|(e, _)| subject_of(e)).collect();
    assert_eq!(seen, ["u0", "u1", "u2", "u3", "u4"]);
}

/// A TCP relay between the publisher and the server that can hold back everything the server
/// sends, so acknowledgements arrive only after the publisher has given up on them.
struct Relay {
    port: u16,
    hold: Arc<AtomicBool>,
}

impl Relay {
    async fn start(upstream: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(AtomicBool::new(false));
        let h = hold.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        while h.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Relay { port, hold }
    }
}

/// An acknowledgement that comes too late makes the publisher send the event again; the stream
/// keeps one copy because both attempts carry the same `Nats-Msg-Id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_an_ack_timeout_is_not_duplicated() {
    init_logs();
    let cluster = NatsCluster::start(1);
    let upstream: u16 = cluster
        .client_url(0)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let relay = Relay::start(upstream).await;
    let publisher = EventPublisher::start(EventPublisherOptions {
        ack_timeout: Duration::from_millis(300),
        ..opts(vec![format!("nats://127.0.0.1:{}", relay.port)], 1)
    })
    .unwrap();
    publisher.publish(sign_in("warm-up")).unwrap();
    flush(&publisher, Duration::from_secs(30)).await;
    assert_eq!(publisher.retried(), 0);

    relay.hold.store(true, Ordering::SeqCst);
    for i in 0..5 {
        publisher.publish(sign_in(&format!("u{i}"))).unwrap();
    }
    // The first event's attempt timed out and it was sent again (both reached the server).
    eventually("two re-sends", Duration::from_secs(10), || async {
        publisher.retried() >= 2
    })
    .await;
    assert_eq!(publisher.published(), 1);
    relay.hold.store(false, Ordering::SeqCst);

    flush(&publisher, Duration::from_secs(30)).await;
    assert_eq!(publisher.published(), 6);
    assert!(
        publisher.duplicates() >= 1,
        "the server recognised a re-send"
    );
    let stored = read_stream(cluster.client_urls()).await;
    check_envelopes(&stored);
    let seen: Vec<String> = stored.iter().map(|(e, _)| subject_of(e)).collect();
    assert_eq!(seen, ["warm-up", "u0", "u1", "u2", "u3", "u4"]);
}

/// A full queue refuses further events with a typed error and counts them; nothing panics.
#[tokio::test]
async fn a_full_queue_refuses_and_counts() {
    init_logs();
    let port = gatehouse_tests::process::free_ports(1)[0];
    let publisher = EventPublisher::start(EventPublisherOptions {
        capacity: 3,
        ..opts(vec![format!("nats://127.0.0.1:{port}")], 1)
    })
    .unwrap();
    for i in 0..3 {
        publisher.publish(sign_in(&format!("u{i}"))).unwrap();
    }
    for i in 3..6 {
        assert_eq!(
            publisher.publish(sign_in(&format!("u{i}"))),
            Err(PublishError::QueueFull { capacity: 3 })
        );
    }
    assert_eq!(publisher.dropped(), 3);
    assert_eq!(publisher.pending(), 3);
    assert_eq!(publisher.published(), 0);
    assert!(!publisher.is_connected());
}
