//! Every chaos scenario, briefly (about 15 s of load each), against its target: a real 3-node
//! NATS cluster, three gateway nodes, HAProxy and the test OpenID provider on loopback. The
//! table and the plot of each run are written to a temporary directory and checked to exist; the
//! published, longer runs are `gatehouse-chaos chaos all --full` (docs/chaos.md).

use gatehouse_chaos::scenario::{Scenario, Settings, run};

async fn check(scenario: Scenario) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = Settings::short();
    settings.out_dir = Some(dir.path().to_owned());
    let outcome = run(scenario, &settings)
        .await
        .unwrap_or_else(|e| panic!("{}: the fault could not be injected: {e}", scenario.name()));
    let text = outcome.text();
    println!("{text}");
    for ext in ["md", "json", "png"] {
        let file = dir.path().join(format!("{}.{ext}", scenario.name()));
        assert!(file.exists(), "{} was not written", file.display());
    }
    let sent: usize = outcome.report.kinds.iter().map(|k| k.sent).sum();
    assert!(sent > 100, "the load ran: {sent} requests\n{text}");
    assert!(outcome.all_met(), "a target was missed:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_gateway_node_fails_no_request_and_rejoins() {
    check(Scenario::NodeKill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_node_fails_no_request() {
    check(Scenario::RollingRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nats_stream_leader_costs_cached_sessions_nothing() {
    check(Scenario::NatsLeaderKill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_down_keeps_cached_sessions_and_the_pool_and_recovers_by_itself() {
    check(Scenario::NatsDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idp_outage_leaves_cached_sessions_alone_and_causes_no_retry_storm() {
    check(Scenario::IdpOutage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_from_nats_costs_no_request_and_recovers() {
    check(Scenario::NodeCutOff).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_nats_does_not_move_cached_session_latency() {
    check(Scenario::SlowNats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_crash_of_every_nats_server() {
    let outcome = gatehouse_chaos::scenario::durability::run(300)
        .await
        .unwrap_or_else(|e| panic!("nats-crash could not run: {e}"));
    let text = outcome.text();
    println!("{text}");
    assert!(outcome.all_met(), "a target was missed:\n{text}");
}
