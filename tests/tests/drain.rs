//! Graceful drain: SIGTERM makes a node unready at once, lets in-flight requests finish, and exits 0;
//! behind a load balancer, draining a node under load fails no request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use gatehouse_tests::client::{self, get};
use gatehouse_tests::lb::Nginx;
use gatehouse_tests::node::GatehouseNode;
use gatehouse_tests::upstream::Upstream;
use http_body_util::BodyExt;

fn config(up: &Upstream) -> String {
    format!(
        "policies:\n  - name: ocis\n    routes:\n      - endpoint: /up\n        backend: {}\n        unprotected: true\n",
        up.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_and_the_node_exits_zero() {
    let up = Upstream::start("up").await;
    let mut node = GatehouseNode::start(&config(&up)).await;
    let url = node.url("/up/slow?gh_sleep_ms=1500");
    let slow = tokio::spawn(async move { get(&url).await });
    assert!(
        gatehouse_tests::wait_until(Duration::from_secs(5), || async { up.count() == 1 }).await
    );
    node.sigterm();
    let unready = gatehouse_tests::wait_until(Duration::from_secs(2), || async {
        let req = http::Request::get(node.debug_url("/readyz"))
            .body(client::empty())
            .unwrap();
        matches!(client::client().request(req).await, Ok(r) if r.status() == 503)
    })
    .await;
    assert!(
        unready,
        "readiness must turn unready as soon as draining starts"
    );
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200, "the in-flight request completed");
    let status = node
        .wait_exit(Duration::from_secs(20))
        .expect("node exited");
    assert!(
        status.success(),
        "exit status after drain: {status}\n{}",
        node.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_one_node_behind_the_load_balancer_fails_no_request() {
    let up = Upstream::start("up").await;
    let a = GatehouseNode::start(&config(&up)).await;
    let mut b = GatehouseNode::start(&config(&up)).await;
    let lb = Nginx::balance(&[a.http, b.http]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Arc::new(std::sync::Mutex::new(Vec::<String>::new())));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = lb.url(&format!("/up/load?w={w}&gh_sleep_ms=10"));
        workers.push(tokio::spawn(async move {
            let c = client::client();
            while !stop.load(Ordering::SeqCst) {
                let req = http::Request::get(&url).body(client::empty()).unwrap();
                match tokio::time::timeout(Duration::from_secs(10), c.request(req)).await {
                    Ok(Ok(resp)) if resp.status() == 200 => {
                        let _ = resp.into_body().collect().await;
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Ok(resp)) => failed
                        .lock()
                        .unwrap()
                        .push(format!("status {}", resp.status())),
                    Ok(Err(e)) => failed.lock().unwrap().push(format!("error {e:?}")),
                    Err(_) => failed.lock().unwrap().push("timeout".into()),
                }
            }
        }));
    }
    // Both nodes carry traffic before the drain starts.
    assert!(
        gatehouse_tests::wait_until(Duration::from_secs(10), || async {
            ok.load(Ordering::SeqCst) > 300
        })
        .await
    );
    b.sigterm();
    let status = b
        .wait_exit(Duration::from_secs(30))
        .expect("drained node exited");
    assert!(
        status.success(),
        "drained node exit status {status}\n{}",
        b.logs()
    );
    let after_exit = ok.load(Ordering::SeqCst);
    assert!(
        gatehouse_tests::wait_until(Duration::from_secs(10), || async {
            ok.load(Ordering::SeqCst) > after_exit + 200
        })
        .await,
        "traffic continues on the remaining node"
    );
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let failed = failed.lock().unwrap();
    eprintln!(
        "drain under load: {} ok, {} failed",
        ok.load(Ordering::SeqCst),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failed requests during drain: {:?}",
        &failed[..failed.len().min(10)]
    );
    drop(a);
}
