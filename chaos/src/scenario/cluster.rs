//! The cluster every scenario runs against, all real processes on loopback: a 3-node NATS
//! JetStream cluster (`sync_interval: always`, as the repository's configurations run it), the
//! test OpenID provider, a recording upstream, three gateway nodes with every shared store on
//! NATS (three replicas, the production operation timeouts), and HAProxy in front of them with
//! active `/readyz` checks and retries, as `compose/haproxy.cfg` configures it.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_tests::client::{bearer, get_with};
use gatehouse_tests::haproxy::{Backend, HaProxy};
use gatehouse_tests::idp::{Idp, TokenOptions};
use gatehouse_tests::nats::{NatsCluster, NatsOptions};
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::relay::Relay;
use gatehouse_tests::upstream::Upstream;

/// The secret nodes sign `x-access-token` with.
pub const JWT_SECRET: &str = "chaos-secret";
/// The user of the cached sessions, the signed URLs and the uploads.
pub const USER: &str = "einstein";
pub const PASSWORD: &str = "relativity";
/// How long a freshly started cluster may take until the load balancer has every node UP, and
/// until every node answers a warm-up request (generous: the test command runs two such
/// clusters side by side on 2 cores).
const START_WITHIN: Duration = Duration::from_secs(30);
const WARM_UP_WITHIN: Duration = Duration::from_secs(20);

pub struct Cluster {
    pub nats: NatsCluster,
    /// With [`NatsPaths::Relayed`], the relay in front of each NATS server.
    pub relays: Vec<Relay>,
    pub idp: Idp,
    pub upstream: Upstream,
    pub nodes: Vec<GatehouseNode>,
    pub lb: Arc<HaProxy>,
}

/// How the gateway nodes reach NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsPaths {
    /// Directly; node [`CUT_NODE`] through its own address [`CUT_NODE_NATS_ADDR`], so that a
    /// partition can cut that node alone.
    Direct,
    /// Every node through one latency relay per NATS server ([`Cluster::relays`]).
    Relayed,
}

/// The node a partition cuts off, and the only address by which it reaches NATS.
pub const CUT_NODE: usize = 1;
pub const CUT_NODE_NATS_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 77, 2);

fn node_yaml(servers: &[String], upstream: &str, issuer: &str) -> String {
    let addresses = servers
        .iter()
        .map(|a| format!("\"nats://{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let store = format!("{{store: nats-js-kv, addresses: [{addresses}], replicas: 3}}");
    format!(
        "policies:
  - name: ocis
    routes:
      - endpoint: /
        backend: {upstream}
oidc:
  issuer: {issuer}
  user_info_cache: {store}
state_store: {store}
events: {{endpoint: \"{events}\", stream_replicas: 3}}
pre_signed_url:
  serve_signing_keys: true
  signing_keys: {store}
auto_provision_accounts: true
token_manager: {{jwt_secret: {JWT_SECRET}}}
",
        events = servers.join(","),
    )
}

impl Cluster {
    pub async fn start(paths: NatsPaths) -> Result<Cluster, String> {
        let nats = NatsCluster::start_with(
            3,
            NatsOptions {
                sync_always: true,
                any_loopback_address: true,
                ..NatsOptions::default()
            },
        );
        let idp = Idp::start();
        let upstream = Upstream::start("backend").await;
        let mut relays = Vec::new();
        if paths == NatsPaths::Relayed {
            for i in 0..nats.len() {
                let target = format!("127.0.0.1:{}", nats.client_port(i))
                    .parse()
                    .unwrap();
                relays.push(Relay::start(target).await);
            }
        }
        let mut nodes = Vec::new();
        for i in 0..3 {
            let servers: Vec<String> = (0..nats.len())
                .map(|j| match paths {
                    NatsPaths::Relayed => relays[j].addr.to_string(),
                    NatsPaths::Direct if i == CUT_NODE => {
                        format!("{CUT_NODE_NATS_ADDR}:{}", nats.client_port(j))
                    }
                    NatsPaths::Direct => format!("127.0.0.1:{}", nats.client_port(j)),
                })
                .collect();
            let yaml = node_yaml(&servers, &upstream.url(), &idp.issuer());
            nodes.push(
                GatehouseNode::start_with(NodeOptions::new(&yaml).env("PROXY_LOG_LEVEL", "warn"))
                    .await,
            );
        }
        let backends: Vec<Backend> = nodes
            .iter()
            .map(|n| Backend {
                http: n.http,
                debug: n.debug,
            })
            .collect();
        let lb = Arc::new(HaProxy::balance(&backends).await);
        let cluster = Cluster {
            nats,
            relays,
            idp,
            upstream,
            nodes,
            lb,
        };
        cluster.wait_pool(&["UP", "UP", "UP"], START_WITHIN).await?;
        Ok(cluster)
    }

    /// The load balancer's server name of node `i`.
    pub fn server(i: usize) -> String {
        format!("gw{i}")
    }

    /// Waits until HAProxy reports node `i` with state `want[i]` for every `i`.
    pub async fn wait_pool(&self, want: &[&str], within: Duration) -> Result<(), String> {
        let names: Vec<String> = (0..want.len()).map(Self::server).collect();
        let pairs: Vec<(&str, &str)> = names
            .iter()
            .map(String::as_str)
            .zip(want.iter().copied())
            .collect();
        if self.lb.wait_states(&pairs, within).await {
            Ok(())
        } else {
            Err(format!(
                "load balancer did not reach {pairs:?} within {within:?}: {:?}",
                self.lb.server_states().await
            ))
        }
    }

    /// A fresh JWT of `user` from the provider, not yet seen by any node.
    pub async fn fresh_token(&self, user: &str) -> Result<String, String> {
        let t = self.idp.user_token(user, TokenOptions::jwt()).await;
        if !t.is_success() {
            return Err(format!(
                "the provider refused a token for {user}: {:?}",
                t.error()
            ));
        }
        Ok(t.access_token().to_owned())
    }

    /// A token every node has validated once (so its claims are cached cluster-wide).
    pub async fn warm_token(&self) -> Result<String, String> {
        let token = self.fresh_token(USER).await?;
        let auth = bearer(&token);
        for n in &self.nodes {
            // Right after start-up a node may still answer "not now" (503/504 with Retry-After)
            // while JetStream settles its leaders; anything else, or lasting, is a failure.
            let deadline = tokio::time::Instant::now() + WARM_UP_WITHIN;
            loop {
                let r = get_with(&n.url("/warm"), &[("authorization", &auth)]).await;
                if r.status == 200 {
                    break;
                }
                let not_now =
                    matches!(r.status.as_u16(), 503 | 504) && r.header("retry-after").is_some();
                if !not_now || tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "warm-up request answered {}: {}\n{}",
                        r.status,
                        r.text(),
                        n.logs()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(token)
    }

    /// The user's signed-URL key (created on first request; the same on every node).
    pub async fn signing_key(&self, token: &str) -> Result<String, String> {
        let r = get_with(
            &self
                .lb
                .url("/ocs/v1.php/cloud/user/signing-key?format=json"),
            &[("authorization", &bearer(token))],
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("signing-key answer {} is not JSON ({e})", r.status))?;
        v["ocs"]["data"]["signing-key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no signing key in {v}"))
    }
}
