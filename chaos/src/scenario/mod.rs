//! Chaos scenarios: a real cluster on loopback ([`cluster`]), a steady mixed load through the
//! load balancer ([`load`]), one fault injected at a known time, and a report ([`report`], with a
//! PNG from [`plot`]) whose figures each scenario checks against its target. The test command runs
//! every scenario briefly (`chaos/tests/scenarios.rs`); `gatehouse-chaos chaos <scenario> --full`
//! runs the long version whose tables and plots `docs/chaos.md` publishes.
//!
//! Scenario 5 (all of NATS crashed right after a burst of acknowledged writes) needs no load and
//! runs apart, in [`durability`].
//!
//! A fault that cannot be injected is an error, never a skipped scenario.

pub mod cluster;
pub mod durability;
pub mod events;
pub mod load;
pub mod plot;
pub mod report;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::{CUT_NODE, CUT_NODE_NATS_ADDR, Cluster, NatsPaths, USER};
use gatehouse_tests::client::{bearer, get_with};
use gatehouse_tests::idp::{TokenOptions, password_token_at};
use gatehouse_tests::partition::Partition;
use load::{Kind, Load, Material, Mix, Outcome, Record, TokenQueue};
use plot::{Marker, Plot};
use report::{Report, Window};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// 1: SIGKILL one gateway node under load, restart it.
    NodeKill,
    /// 2: SIGTERM, drain and restart every gateway node, one after the other.
    RollingRestart,
    /// 3: SIGKILL the NATS server leading the most streams, restart it.
    NatsLeaderKill,
    /// 4: every NATS server down for the fault's duration.
    NatsDown,
    /// 6: the IdP stopped, then answering 503 and 429, then slow.
    IdpOutage,
    /// 7: one gateway node cut off from every NATS server (iptables drops its packets) while
    /// the others keep them.
    NodeCutOff,
    /// 8: 200 ms more round trip between every gateway node and NATS.
    SlowNats,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::NodeKill,
        Scenario::RollingRestart,
        Scenario::NatsLeaderKill,
        Scenario::NatsDown,
        Scenario::IdpOutage,
        Scenario::NodeCutOff,
        Scenario::SlowNats,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::NodeKill => "node-kill",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::NatsLeaderKill => "nats-leader-kill",
            Scenario::NatsDown => "nats-down",
            Scenario::IdpOutage => "idp-outage",
            Scenario::NodeCutOff => "node-cut-off",
            Scenario::SlowNats => "slow-nats",
        }
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// How long and how hard a run is.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seconds of load before the fault.
    pub before: f64,
    /// Seconds the fault lasts (scenarios that undo the fault as soon as the cluster has
    /// noticed it use it as an upper bound).
    pub fault: f64,
    /// Seconds of load after the fault is undone.
    pub after: f64,
    pub mix: Mix,
    /// Where the table, the JSON and the PNG go (none: not written).
    pub out_dir: Option<PathBuf>,
}

impl Settings {
    /// The test command's runs: about 15 s each.
    pub fn short() -> Settings {
        Settings {
            before: 3.0,
            fault: 4.0,
            after: 4.0,
            mix: Mix {
                cached: 40.0,
                login: 4.0,
                signed: 10.0,
                upload: 6.0,
            },
            out_dir: None,
        }
    }

    /// The published runs (`--full`): the 30 s NATS outage, a heavier mix.
    pub fn full() -> Settings {
        Settings {
            before: 10.0,
            fault: 30.0,
            after: 20.0,
            mix: Mix {
                cached: 150.0,
                login: 5.0,
                signed: 30.0,
                upload: 15.0,
            },
            out_dir: None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Target {
    pub name: String,
    pub met: bool,
    pub measured: String,
}

/// What a run found: the report and each target checked against it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunOutcome {
    pub report: Report,
    pub targets: Vec<Target>,
    /// Load-balancer pool over time: `(seconds, servers UP)`.
    pub pool: Vec<(f64, usize)>,
}

impl RunOutcome {
    pub fn all_met(&self) -> bool {
        self.targets.iter().all(|t| t.met)
    }

    /// The table followed by the targets, as printed and published.
    pub fn text(&self) -> String {
        format!(
            "## {}\n\n{}\n{}",
            self.report.scenario,
            self.report.table(),
            checklist(&self.targets)
        )
    }
}

/// The targets as a Markdown checklist, with what was measured.
pub fn checklist(targets: &[Target]) -> String {
    targets
        .iter()
        .map(|t| {
            format!(
                "- [{}] {}: {}\n",
                if t.met { "x" } else { " " },
                t.name,
                t.measured
            )
        })
        .collect()
}

/// Observations of the fault injection the targets need besides the records.
#[derive(Default)]
struct Observed {
    /// IdP user-info requests while the IdP was up but failing or slow, and the new-login
    /// requests sent meanwhile.
    idp_userinfo_while_failing: Option<(u64, usize)>,
    /// Seconds from the end of the fault until the faulty node itself served a new login.
    recovered_after: Option<f64>,
    /// The events stream after a NATS fault, once the nodes had published what they queued.
    events: Option<events::EventCount>,
}

pub async fn run(scenario: Scenario, settings: &Settings) -> Result<RunOutcome, String> {
    let paths = if scenario == Scenario::SlowNats {
        NatsPaths::Relayed
    } else {
        NatsPaths::Direct
    };
    let mut cluster = Cluster::start(paths).await?;
    let cached = cluster.warm_token().await?;
    let signing_key = cluster.signing_key(&cached).await?;
    // Restarting what a fault killed can outlast the fault; the load goes on until `after`
    // seconds past the fault's end, within this limit.
    let limit = settings.before + 2.0 * settings.fault + settings.after + 30.0;
    let buffer = settings.mix.token_buffer(settings.fault);
    let login_tokens: TokenQueue = Arc::default();
    let token_url = cluster.idp.token_url();
    for _ in 0..buffer {
        let token = mint(&token_url)
            .await
            .ok_or("the provider issued no token before the load")?;
        login_tokens.lock().unwrap().push_back(token);
    }
    let refill = refill_tokens(login_tokens.clone(), token_url, buffer);
    let material = Material {
        base: cluster.lb.url(""),
        host: cluster.lb.addr.to_string(),
        cached_token: cached,
        login_tokens,
        user: USER.to_owned(),
        signing_key,
    };
    let pool = Arc::new(Mutex::new(Vec::new()));
    let load = Load::start(material, settings.mix, Duration::from_secs_f64(limit));
    let sampler = {
        let (lb, pool, started) = (cluster.lb.clone(), pool.clone(), load.started());
        tokio::spawn(async move {
            loop {
                let up = lb
                    .server_states()
                    .await
                    .iter()
                    .filter(|(_, s)| s.starts_with("UP"))
                    .count();
                pool.lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), up));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    load.until(settings.before).await;
    let mut markers = Vec::new();
    let start = load.now();
    let injected = inject(scenario, &mut cluster, &load, settings, &mut markers).await;
    let end = load.now();
    load.stop_at(end + settings.after);
    load.until(end + settings.after).await;
    let total = load.now();
    let skipped = load.skipped_logins();
    let records = load.finish().await;
    sampler.abort();
    refill.abort();
    if skipped > 0 {
        return Err(format!(
            "{skipped} new logins were not sent: the generator ran out of fresh tokens"
        ));
    }
    let mut observed = injected?;
    if matches!(scenario, Scenario::NatsDown | Scenario::NatsLeaderKill) {
        observed.events = Some(
            events::count_after_drain(&cluster.nodes, &cluster.nats, Duration::from_secs(30))
                .await?,
        );
    }
    let window = Window { start, end };
    let report = Report::new(scenario.name(), &records, window, &markers, total);
    let pool = std::mem::take(&mut *pool.lock().unwrap());
    let targets = targets(scenario, &report, &records, &pool, &observed);
    let outcome = RunOutcome {
        report,
        targets,
        pool,
    };
    if let Some(dir) = &settings.out_dir {
        write_outputs(dir, &outcome, &records, &markers)?;
        // The nodes' JSON logs, to find out afterwards why a request took what it took.
        for (i, node) in cluster.nodes.iter().enumerate() {
            let file = dir.join(format!("{}.gw{i}.log", scenario.name()));
            std::fs::write(&file, node.logs())
                .map_err(|e| format!("writing {}: {e}", file.display()))?;
        }
    }
    Ok(outcome)
}

/// Keeps `queue` at `buffer` fresh tokens, minting one at a time; a provider that is down or
/// hangs only pauses it.
fn refill_tokens(
    queue: TokenQueue,
    token_url: String,
    buffer: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if queue.lock().unwrap().len() >= buffer {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            match mint(&token_url).await {
                Some(token) => queue.lock().unwrap().push_back(token),
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
}

/// A fresh token of [`USER`], or none when the provider does not issue one within 2 s (the
/// attempt is its own task, so a provider that hangs or answers garbage costs only the wait).
async fn mint(token_url: &str) -> Option<String> {
    let url = token_url.to_owned();
    let attempt = tokio::spawn(async move {
        password_token_at(&url, USER, cluster::PASSWORD, TokenOptions::jwt()).await
    });
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(t)) if t.is_success() => Some(t.access_token().to_owned()),
        _ => None,
    }
}

fn mark(markers: &mut Vec<Marker>, load: &Load, label: impl Into<String>) {
    markers.push(Marker {
        at: load.now(),
        label: label.into(),
    });
}

async fn inject(
    scenario: Scenario,
    c: &mut Cluster,
    load: &Load,
    s: &Settings,
    markers: &mut Vec<Marker>,
) -> Result<Observed, String> {
    let started = load.now();
    let mut observed = Observed::default();
    match scenario {
        Scenario::NodeKill => {
            c.nodes[1].kill();
            mark(markers, load, "gw1 SIGKILL");
            c.wait_pool(&["UP", "DOWN", "UP"], Duration::from_secs(5))
                .await?;
            mark(markers, load, "gw1 out of pool");
            load.until(started + s.fault / 2.0).await;
            c.nodes[1].restart().await;
            mark(markers, load, "gw1 restarted");
            c.wait_pool(&["UP", "UP", "UP"], Duration::from_secs(10))
                .await?;
            mark(markers, load, "gw1 back in pool");
        }
        Scenario::RollingRestart => {
            let n = c.nodes.len();
            for i in 0..n {
                load.until(started + s.fault * i as f64 / n as f64).await;
                c.nodes[i].sigterm();
                mark(markers, load, format!("gw{i} SIGTERM"));
                let mut out = ["UP"; 3];
                out[i] = "DOWN";
                c.wait_pool(&out, Duration::from_secs(5)).await?;
                if c.nodes[i].wait_exit(Duration::from_secs(35)).is_none() {
                    return Err(format!("gw{i} did not exit within 35 s of SIGTERM"));
                }
                c.nodes[i].restart().await;
                c.wait_pool(&["UP"; 3], Duration::from_secs(10)).await?;
                mark(markers, load, format!("gw{i} back"));
            }
        }
        Scenario::NatsLeaderKill => {
            let leader = tokio::task::block_in_place(|| c.nats.busiest_stream_leader())
                .ok_or("no NATS server reports a stream leader")?;
            c.nats.kill(leader);
            mark(
                markers,
                load,
                format!("NATS n{} (leader) SIGKILL", leader + 1),
            );
            load.until(started + s.fault).await;
            tokio::task::block_in_place(|| c.nats.restart(leader));
            mark(markers, load, format!("n{} restarted", leader + 1));
        }
        Scenario::NatsDown => {
            for i in 0..c.nats.len() {
                c.nats.kill(i);
            }
            mark(markers, load, "all NATS SIGKILL");
            load.until(started + s.fault).await;
            tokio::task::block_in_place(|| c.nats.restart_all());
            mark(markers, load, "NATS back");
        }
        Scenario::IdpOutage => {
            let third = s.fault / 3.0;
            c.idp.pause();
            mark(markers, load, "IdP hangs (SIGSTOP)");
            load.until(started + third).await;
            c.idp.resume();
            c.idp.reset_stats().await;
            c.idp.fail("/me", 503, Some(5), None).await;
            mark(markers, load, "IdP answers 503");
            let failing_from = load.now();
            load.until(started + 1.5 * third).await;
            c.idp.fail("/me", 429, Some(5), None).await;
            mark(markers, load, "IdP answers 429");
            load.until(started + 2.0 * third).await;
            c.idp.delay("/me", IDP_SLOW, None).await;
            mark(
                markers,
                load,
                format!("IdP slow ({} s)", IDP_SLOW.as_secs()),
            );
            load.until(started + s.fault).await;
            let userinfo = c.idp.count("/me").await;
            let failing_to = load.now();
            c.idp.clear_failures().await;
            mark(markers, load, "IdP healthy");
            let logins = (s.mix.login * (failing_to - failing_from)).ceil() as usize;
            observed.idp_userinfo_while_failing = Some((userinfo, logins));
        }
        Scenario::NodeCutOff => {
            let partition = Partition::cut(CUT_NODE_NATS_ADDR)?;
            mark(markers, load, format!("gw{CUT_NODE} cut off from NATS"));
            load.until(started + s.fault).await;
            drop(partition);
            mark(markers, load, "partition lifted");
            // The node itself (not the balancer, which would retry elsewhere) serves a new
            // login again once its connections have recovered.
            let node = c.nodes[CUT_NODE].url("/probe");
            let lifted = load.now();
            loop {
                let token = c.fresh_token(USER).await?;
                let r = get_with(&node, &[("authorization", &bearer(&token))]).await;
                if r.status == 200 {
                    break;
                }
                if load.now() - lifted > 30.0 {
                    return Err(format!(
                        "gw{CUT_NODE} still answers new logins with {} 30 s after the partition",
                        r.status
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            mark(markers, load, format!("gw{CUT_NODE} serves new logins"));
            observed.recovered_after = Some(load.now() - lifted);
        }
        Scenario::SlowNats => {
            for relay in &c.relays {
                relay.set_delay(Duration::from_millis(100));
            }
            mark(markers, load, "NATS +200 ms round trip");
            load.until(started + s.fault).await;
            for relay in &c.relays {
                relay.set_delay(Duration::ZERO);
            }
            mark(markers, load, "NATS fast again");
        }
    }
    Ok(observed)
}

fn target(name: &str, met: bool, measured: String) -> Target {
    Target {
        name: name.to_owned(),
        met,
        measured,
    }
}

/// "No request of `kinds` failed".
fn none_failed(name: &str, report: &Report, kinds: &[Kind]) -> Target {
    let failed: usize = kinds
        .iter()
        .filter_map(|k| report.kind(*k))
        .map(|k| k.failed_total())
        .sum();
    target(name, failed == 0, format!("{failed} failed"))
}

/// "At least `need` nodes stayed UP" over the samples taken from `from` on, before `to`.
fn pool_held(name: &str, pool: &[(f64, usize)], (from, to): (f64, f64), need: usize) -> Target {
    let least = pool
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, n)| *n)
        .min()
        .unwrap_or(0);
    target(
        name,
        least >= need,
        format!("at least {least} of 3 nodes UP"),
    )
}

const SESSION_KINDS: [Kind; 3] = [Kind::Cached, Kind::Signed, Kind::Upload];

/// The nodes' deadline for an IdP call (`oidc.request_timeout`: they run with the default).
const IDP_DEADLINE: Duration = Duration::from_secs(3);
/// How late the slow IdP answers user info: beyond the nodes' deadline.
const IDP_SLOW: Duration = Duration::from_secs(5);

fn targets(
    scenario: Scenario,
    report: &Report,
    records: &[Record],
    pool: &[(f64, usize)],
    observed: &Observed,
) -> Vec<Target> {
    let w = report.window;
    let mut t = Vec::new();
    match scenario {
        Scenario::NodeKill | Scenario::RollingRestart => {
            t.push(none_failed(
                "0 failed requests of any kind",
                report,
                &Kind::ALL,
            ));
            t.push(pool_held(
                "the pool never empties",
                pool,
                (0.0, f64::INFINITY),
                2,
            ));
        }
        Scenario::NatsLeaderKill => {
            t.push(none_failed(
                "0 failed requests with cached sessions",
                report,
                &SESSION_KINDS,
            ));
            let recovery = report.kind(Kind::Login).map_or(0.0, |k| k.recovery_s);
            t.push(target(
                "new logins work again within 10 s",
                recovery <= 10.0,
                format!("last failed login ended {recovery:.2} s after the kill"),
            ));
            push_event_targets(&mut t, report, observed);
        }
        Scenario::NatsDown => {
            for k in SESSION_KINDS {
                if let Some(s) = report.kind(k) {
                    let rate = s.succeeded as f64 / s.sent.max(1) as f64;
                    t.push(target(
                        &format!("{}: ≥ 99.9 % succeed", k.name()),
                        rate >= 0.999,
                        format!("{:.2} % of {}", rate * 100.0, s.sent),
                    ));
                }
            }
            // Whatever NATS adds on top of what a request cost before the fault.
            let base = SESSION_KINDS
                .iter()
                .filter_map(|k| report.kind(*k))
                .map(|s| s.before.max_ms)
                .fold(0.0, f64::max);
            let during = SESSION_KINDS
                .iter()
                .filter_map(|k| report.kind(*k))
                .map(|s| s.during.max_ms)
                .fold(0.0, f64::max);
            t.push(target(
                "no cached-session request delayed by NATS more than 100 ms",
                during <= base + 100.0,
                format!("longest {during:.1} ms during the outage, {base:.1} ms before"),
            ));
            if let Some(l) = report.kind(Kind::Login) {
                // The phase is a request's start: logins in flight at the kill count as before.
                // What a login costs without a fault is its p99 before it.
                let base = l.before.p99_ms;
                let longest = l.before.max_ms.max(l.during.max_ms);
                t.push(target(
                    "no new login delayed by NATS more than 100 ms",
                    longest <= base + 100.0,
                    format!(
                        "longest {longest:.1} ms before and during the outage, p99 {base:.1} ms before"
                    ),
                ));
            }
            push_login_targets(&mut t, records, w);
            push_event_targets(&mut t, report, observed);
            t.push(pool_held(
                "readiness keeps every node in the pool during the shared outage",
                pool,
                (w.start, w.end),
                3,
            ));
        }
        Scenario::IdpOutage => {
            t.push(none_failed(
                "cached sessions unaffected",
                report,
                &SESSION_KINDS,
            ));
            push_login_targets(&mut t, records, w);
            if let Some(l) = report.kind(Kind::Login) {
                let deadline = IDP_DEADLINE.as_secs_f64() * 1000.0;
                t.push(target(
                    "no new login waits for a hung or slow IdP beyond the IdP deadline (3 s)",
                    longest(l) <= deadline + 1000.0,
                    format!("longest {:.1} ms", longest(l)),
                ));
            }
            if let Some((calls, logins)) = observed.idp_userinfo_while_failing {
                t.push(target(
                    "no retry storm: at most one IdP request per token per node while failing",
                    calls as usize <= 3 * logins.max(1),
                    format!("{calls} user-info requests for {logins} new tokens"),
                ));
            }
        }
        Scenario::NodeCutOff => {
            t.push(none_failed(
                "0 failed requests of any kind (what the cut-off node cannot serve, a peer does)",
                report,
                &Kind::ALL,
            ));
            t.push(pool_held(
                "the cut-off node stays in the pool, serving what needs no shared state",
                pool,
                (0.0, f64::INFINITY),
                3,
            ));
            let recovered = observed.recovered_after.unwrap_or(f64::INFINITY);
            t.push(target(
                "the node serves new logins again within 10 s of the partition's end",
                recovered <= 10.0,
                format!("{recovered:.2} s"),
            ));
        }
        Scenario::SlowNats => {
            t.push(none_failed(
                "0 failed requests with cached sessions",
                report,
                &SESSION_KINDS,
            ));
            for k in SESSION_KINDS {
                if let Some(s) = report.kind(k) {
                    t.push(target(
                        &format!("{}: latency does not move (p99 within 20 ms)", k.name()),
                        s.during.p99_ms <= s.before.p99_ms + 20.0,
                        format!(
                            "p99 {:.1} ms before, {:.1} ms during",
                            s.before.p99_ms, s.during.p99_ms
                        ),
                    ));
                }
            }
        }
    }
    t
}

/// Every successful new login's `UserSignedIn` reached the stream, none twice (the warm-up
/// login before the load may add one per node).
fn push_event_targets(t: &mut Vec<Target>, report: &Report, observed: &Observed) {
    let Some(ev) = observed.events else { return };
    let logins = report.kind(Kind::Login).map_or(0, |k| k.succeeded);
    t.push(target(
        "no lost event: every successful new login's UserSignedIn is in the stream",
        ev.signed_in >= logins && ev.signed_in <= logins + 3,
        format!(
            "{} UserSignedIn for {logins} successful new logins; every queue empty {:.1} s after the load ended",
            ev.signed_in, ev.drained_after
        ),
    ));
    t.push(target(
        "no duplicated event",
        ev.duplicates == 0,
        format!("{} event ids seen twice", ev.duplicates),
    ));
}

fn longest(k: &report::KindSummary) -> f64 {
    k.before.max_ms.max(k.during.max_ms).max(k.after.max_ms)
}

/// New logins during a fault get a success or a clear 503 with `Retry-After` (504 when the IdP
/// did not answer in time), and work again by themselves within 10 s of the fault's end.
fn push_login_targets(t: &mut Vec<Target>, records: &[Record], w: Window) {
    let logins: Vec<&Record> = records.iter().filter(|r| r.kind == Kind::Login).collect();
    let unclear: Vec<String> = logins
        .iter()
        .filter(|r| w.phase(r.start) == report::Phase::During)
        .filter(|r| {
            !r.outcome.is_ok()
                && !matches!(
                    r.outcome,
                    Outcome::Status {
                        code: 503 | 504,
                        retry_after: true,
                    }
                )
        })
        .map(|r| r.outcome.label())
        .collect();
    t.push(target(
        "new logins during the fault: 2xx, or 503/504 + Retry-After",
        unclear.is_empty(),
        if unclear.is_empty() {
            "all".to_owned()
        } else {
            format!(
                "{} others: {:?}",
                unclear.len(),
                &unclear[..unclear.len().min(5)]
            )
        },
    ));
    let after_ok = logins
        .iter()
        .filter(|r| r.start >= w.end)
        .skip_while(|r| !r.outcome.is_ok())
        .all(|r| r.outcome.is_ok());
    let first_ok = logins
        .iter()
        .filter(|r| r.start >= w.end && r.outcome.is_ok())
        .map(|r| r.start - w.end)
        .next();
    t.push(target(
        "new logins recover by themselves within 10 s",
        after_ok && first_ok.is_some_and(|s| s <= 10.0),
        match first_ok {
            Some(s) => {
                format!("first success {s:.2} s after the fault ended, none failed after it")
            }
            None => "no login succeeded after the fault".to_owned(),
        },
    ));
}

fn write_outputs(
    dir: &std::path::Path,
    outcome: &RunOutcome,
    records: &[Record],
    markers: &[Marker],
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = &outcome.report.scenario;
    let write = |file: String, data: &[u8]| {
        std::fs::write(dir.join(&file), data).map_err(|e| format!("{file}: {e}"))
    };
    write(format!("{name}.md"), outcome.text().as_bytes())?;
    write(
        format!("{name}.json"),
        serde_json::to_vec_pretty(outcome)
            .map_err(|e| e.to_string())?
            .as_slice(),
    )?;
    write(
        format!("{name}.records.json"),
        serde_json::to_vec(records)
            .map_err(|e| e.to_string())?
            .as_slice(),
    )?;
    let bucket = 0.5;
    let samples = Report::samples(records, outcome.report.duration_s, bucket);
    let title = format!("{name}: requests through the load balancer");
    plot::write_png(
        &dir.join(format!("{name}.png")),
        &Plot {
            title: &title,
            bucket_secs: bucket,
            samples: &samples,
            fault: (outcome.report.window.start, outcome.report.window.end),
            markers,
        },
    )
}
