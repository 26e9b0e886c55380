//! Reader for the oCIS go-micro service registry (`nats-js-kv` registry, spec §1.3).
//!
//! oCIS services register themselves in the KV bucket `service-registry`, table
//! `service-registry`: key `<name>@<server id>@<version>` (older versions: `<name>`), value the
//! go-micro envelope around the JSON `registry.Service` (`name`, `nodes[].address`,
//! `nodes[].metadata.protocol` / `use_tls`). Routing needs a service's nodes on every request, so
//! the whole registry is mirrored in memory from a watch and [`ServiceRegistry::nodes`] never
//! touches the network.
//!
//! Entries older than the bucket's max-age are ignored: the server drops them without telling
//! watchers, so the mirror enforces the registry TTL itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use gatehouse_shared::config::NatsSecurity;
use gatehouse_shared::store::{StoreError, decode_key, decode_value};
use serde::Deserialize;

use crate::connect;

/// go-micro's registry table name.
pub const REGISTRY_TABLE: &str = "service-registry";
/// oCIS's registry bucket name.
pub const REGISTRY_BUCKET: &str = "service-registry";

/// How often a missing registry bucket is looked up again.
const BUCKET_POLL: Duration = Duration::from_secs(1);

pub struct ServiceRegistry {
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
}

struct Shared {
    client: async_nats::Client,
    state: RwLock<Mirror>,
    loaded: AtomicBool,
}

#[derive(Default)]
struct Mirror {
    /// service name → registry key → registration.
    by_service: HashMap<String, HashMap<String, Registration>>,
    /// registry key → service name, to apply deletions.
    service_of: HashMap<String, String>,
    /// Bucket max-age; zero for none.
    max_age: Duration,
}

struct Registration {
    urls: Vec<String>,
    stored_at: SystemTime,
}

#[derive(Deserialize)]
struct Service {
    name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct Node {
    #[serde(default)]
    address: String,
    #[serde(default, deserialize_with = "null_as_default")]
    metadata: HashMap<String, String>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The base URL of a node the way the oCIS proxy builds it: scheme `https` if metadata
/// `use_tls` is `"true"`, else metadata `protocol` (default `http`); host = `address`.
fn node_url(node: &Node) -> Option<String> {
    if node.address.is_empty() {
        return None;
    }
    let scheme = if node.metadata.get("use_tls").is_some_and(|v| v == "true") {
        "https"
    } else {
        node.metadata
            .get("protocol")
            .map(String::as_str)
            .filter(|p| !p.is_empty())
            .unwrap_or("http")
    };
    Some(format!("{scheme}://{}", node.address))
}

impl Mirror {
    fn remove(&mut self, key: &str) {
        if let Some(name) = self.service_of.remove(key)
            && let Some(regs) = self.by_service.get_mut(&name)
        {
            regs.remove(key);
            if regs.is_empty() {
                self.by_service.remove(&name);
            }
        }
    }

    fn apply(&mut self, entry: &kv::Entry) {
        let Some(key) = decode_key(REGISTRY_TABLE, &entry.key) else {
            return;
        };
        self.remove(&key);
        if entry.operation != kv::Operation::Put {
            return;
        }
        let service = decode_value(&entry.value).and_then(|(data, _)| {
            serde_json::from_slice::<Service>(&data)
                .map_err(|e| StoreError::Invalid(format!("registry service JSON: {e}")))
        });
        let service = match service {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(key, error = %e, "ignoring undecodable registry entry");
                return;
            }
        };
        let urls = service.nodes.iter().filter_map(node_url).collect();
        self.service_of.insert(key.clone(), service.name.clone());
        self.by_service.entry(service.name).or_default().insert(
            key,
            Registration {
                urls,
                stored_at: connect::stored_at(entry),
            },
        );
    }
}

impl ServiceRegistry {
    /// Connects to NATS and starts mirroring `bucket` (normally [`REGISTRY_BUCKET`]). Returns once
    /// connected; the bucket may not exist yet (it is created by the first oCIS service), in
    /// which case the mirror starts when it appears.
    pub async fn connect(
        servers: Vec<String>,
        bucket: &str,
    ) -> Result<ServiceRegistry, StoreError> {
        Self::connect_with(servers, bucket, &NatsSecurity::plain("service_registry")).await
    }

    /// [`Self::connect`] with TLS and credentials.
    pub async fn connect_with(
        servers: Vec<String>,
        bucket: &str,
        security: &NatsSecurity,
    ) -> Result<ServiceRegistry, StoreError> {
        let (client, _) = connect::client(&servers, "gatehouse-registry", security).await?;
        let shared = Arc::new(Shared {
            client,
            state: RwLock::new(Mirror::default()),
            loaded: AtomicBool::new(false),
        });
        let task = tokio::spawn(run(shared.clone(), bucket.to_owned())).abort_handle();
        Ok(ServiceRegistry { shared, task })
    }

    /// Base URLs (`http://host:port`) of every live node of `service`; no network call.
    pub fn nodes(&self, service: &str) -> Vec<String> {
        let mirror = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
        let Some(regs) = mirror.by_service.get(service) else {
            return Vec::new();
        };
        let now = SystemTime::now();
        let mut urls: Vec<String> = regs
            .values()
            .filter(|r| mirror.max_age.is_zero() || r.stored_at + mirror.max_age > now)
            .flat_map(|r| r.urls.iter().cloned())
            .collect();
        urls.sort();
        urls.dedup();
        urls
    }

    /// Names of the services currently registered.
    pub fn services(&self) -> Vec<String> {
        let mirror = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = mirror.by_service.keys().cloned().collect();
        names.sort();
        names
    }

    /// Connection state and reconnects (metrics).
    pub fn connection(&self) -> crate::ConnectionStats {
        crate::ConnectionStats::of(&self.shared.client)
    }

    pub fn is_connected(&self) -> bool {
        self.shared.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Whether the mirror has caught up with the bucket once (or found that it does not exist yet,
    /// which means nothing is registered).
    pub fn is_loaded(&self) -> bool {
        self.shared.loaded.load(Ordering::Acquire)
    }
}

impl Drop for ServiceRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(shared: Arc<Shared>, bucket: String) {
    let js = jetstream::new(shared.client.clone());
    let kv = loop {
        match connect::lookup_bucket(&js, &bucket).await {
            Ok(Some(kv)) => break kv,
            Ok(None) => {
                // No bucket means no service has registered yet: an empty registry is known.
                shared.loaded.store(true, Ordering::Release);
                tracing::debug!(bucket, "registry bucket does not exist yet");
            }
            Err(e) => tracing::warn!(bucket, error = %e, "registry bucket lookup failed"),
        }
        tokio::time::sleep(BUCKET_POLL).await;
    };
    let info = kv.stream.cached_info();
    shared
        .state
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .max_age = info.config.max_age;
    if info.state.messages == 0 {
        shared.loaded.store(true, Ordering::Release);
    }
    // History is one message per key, so replaying the stream from its start is the current
    // registry followed by live changes.
    let mut next = 1;
    loop {
        match kv.watch_all_from_revision(next).await {
            Ok(mut watch) => {
                while let Some(item) = watch.next().await {
                    match item {
                        Ok(entry) => {
                            next = next.max(entry.revision + 1);
                            shared
                                .state
                                .write()
                                .unwrap_or_else(|e| e.into_inner())
                                .apply(&entry);
                            if entry.delta == 0 {
                                shared.loaded.store(true, Ordering::Release);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "registry watch failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "registry watch could not start"),
        }
        tokio::time::sleep(BUCKET_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(address: &str, meta: &[(&str, &str)]) -> Node {
        Node {
            address: address.to_owned(),
            metadata: meta
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn node_urls_follow_the_proxy_rules() {
        assert_eq!(
            node_url(&node("10.0.0.1:9140", &[("protocol", "http")])).as_deref(),
            Some("http://10.0.0.1:9140")
        );
        assert_eq!(
            node_url(&node(
                "10.0.0.1:9200",
                &[("protocol", "http"), ("use_tls", "true")]
            ))
            .as_deref(),
            Some("https://10.0.0.1:9200")
        );
        assert_eq!(node_url(&node("h:1", &[])).as_deref(), Some("http://h:1"));
        assert_eq!(node_url(&node("", &[])), None);
    }

    #[test]
    fn service_json_as_go_writes_it() {
        let s: Service = serde_json::from_str(
            r#"{"name":"com.owncloud.web.web","version":"","metadata":null,"endpoints":null,
                "nodes":[{"id":"com.owncloud.web.web-1","address":"127.0.0.1:9100","metadata":{"protocol":"http"}}]}"#,
        )
        .unwrap();
        assert_eq!(s.name, "com.owncloud.web.web");
        assert_eq!(
            node_url(&s.nodes[0]).as_deref(),
            Some("http://127.0.0.1:9100")
        );
        let s: Service = serde_json::from_str(r#"{"name":"x","nodes":null}"#).unwrap();
        assert!(s.nodes.is_empty());
    }
}
