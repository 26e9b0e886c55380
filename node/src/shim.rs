//! TODO(merge): stand-ins for contracts other helpers implement in parallel, with the agreed
//! signatures, so the command line compiles and its tests run before the merge. At merge, delete
//! this file and the `mod shim;` line, and point the `use shim::…` lines of `cli.rs` at the real
//! items (`gatehouse_shared::config`, `gatehouse_shared::routing`, `gatehouse_shared::security`,
//! `gatehouse_node::server`). Nothing here is meant to survive.

pub mod config {
    use std::fmt;
    use std::path::PathBuf;

    pub use gatehouse_shared::config::Config;

    pub struct ConfigSource {
        file: Option<PathBuf>,
    }

    impl ConfigSource {
        pub fn from_process(file: Option<PathBuf>) -> Self {
            Self { file }
        }
    }

    pub struct Loaded {
        pub config: Config,
        pub file: Option<PathBuf>,
    }

    pub struct ConfigProblem {
        pub key: String,
        pub message: String,
    }

    pub struct ConfigErrors(pub Vec<ConfigProblem>);

    impl fmt::Display for ConfigErrors {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            for p in &self.0 {
                writeln!(f, "{}: {}", p.key, p.message)?;
            }
            Ok(())
        }
    }

    /// File only, no environment overlay, no defaults beyond `Default`.
    pub fn load(src: &ConfigSource) -> Result<Loaded, ConfigErrors> {
        let problem = |key: &str, message: String| {
            ConfigErrors(vec![ConfigProblem {
                key: key.into(),
                message,
            }])
        };
        let Some(path) = &src.file else {
            return Ok(Loaded {
                config: Config::default(),
                file: None,
            });
        };
        let text = std::fs::read_to_string(path).map_err(|e| problem("(file)", e.to_string()))?;
        let config =
            serde_yaml_ng::from_str(&text).map_err(|e| problem("(yaml)", e.to_string()))?;
        Ok(Loaded {
            config,
            file: Some(path.clone()),
        })
    }

    /// Inherent `masked`/`to_yaml` on `Config` will shadow these after the merge.
    pub trait ConfigExt {
        fn masked(&self) -> Config;
        fn to_yaml(&self) -> String;
    }

    impl ConfigExt for Config {
        fn masked(&self) -> Config {
            let mut c = self.clone();
            for secret in [
                &mut c.debug.token,
                &mut c.machine_auth_api_key,
                &mut c.service_account.service_account_secret,
            ] {
                if !secret.is_empty() {
                    *secret = "***".into();
                }
            }
            c
        }

        /// The stub `GoDuration` cannot be serialised yet.
        fn to_yaml(&self) -> String {
            "# configuration dump is not available before the config merge\n".into()
        }
    }

    /// After the merge: `serde_json::to_string(&config.masked())`.
    pub fn masked_json(_config: &Config) -> Result<String, String> {
        Ok(r#"{"note":"configuration JSON is not available before the config merge"}"#.into())
    }
}

pub mod routing {
    use std::fmt;

    use gatehouse_shared::routing::{PolicyConfig, PolicySelectorConfig};

    pub struct Router;
    pub struct RouterError;

    impl fmt::Display for RouterError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("router stand-in")
        }
    }

    impl Router {
        pub fn new(
            _policies: &[PolicyConfig],
            _selector: Option<&PolicySelectorConfig>,
        ) -> Result<Router, RouterError> {
            Ok(Router)
        }
    }

    pub fn effective_policies(
        policies: &[PolicyConfig],
        additional: &[PolicyConfig],
    ) -> Vec<PolicyConfig> {
        if policies.is_empty() {
            additional.to_vec()
        } else {
            policies.to_vec()
        }
    }
}

pub mod security {
    use std::fmt;
    use std::path::Path;

    pub struct Csp;
    pub struct CspError;

    impl fmt::Display for CspError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("csp stand-in")
        }
    }

    impl Csp {
        pub fn load(
            _file: Option<&Path>,
            _env: &dyn Fn(&str) -> Option<String>,
        ) -> Result<Csp, CspError> {
            Ok(Csp)
        }
    }
}

/// Stand-in for `gatehouse_nats::ServiceRegistry`.
pub mod nats {
    pub struct ServiceRegistry;

    impl ServiceRegistry {
        pub async fn connect(
            _servers: Vec<String>,
            _bucket: &str,
        ) -> Result<ServiceRegistry, String> {
            Err("the NATS service registry is not available before the store merge".into())
        }

        pub fn is_connected(&self) -> bool {
            false
        }
    }

    impl super::server::ServiceNodes for ServiceRegistry {
        fn nodes(&self, _service: &str) -> Vec<String> {
            Vec::new()
        }
    }
}

pub mod server {
    use std::sync::Arc;

    use gatehouse_node::health::Health;
    use gatehouse_node::telemetry::Metrics;
    use gatehouse_shared::config::Config;

    use tokio_util::sync::CancellationToken;

    /// Stand-in for `gatehouse_node::upstream::ServiceNodes`.
    #[expect(dead_code, reason = "only the real server calls it")]
    pub trait ServiceNodes: Send + Sync {
        fn nodes(&self, service: &str) -> Vec<String>;
    }

    /// The proxy branch's `ServerDeps`, plus the `metrics` field its TODO(merge) announces.
    pub struct ServerDeps {
        pub metrics: Arc<Metrics>,
        pub health: Arc<Health>,
        pub registry: Option<Arc<dyn ServiceNodes>>,
        pub shutdown: CancellationToken,
    }

    #[derive(Debug, thiserror::Error)]
    pub enum StartupError {
        #[error("http.addr: cannot listen on {addr:?}: {source}")]
        Bind {
            addr: String,
            source: std::io::Error,
        },
    }

    /// Binds `http.addr` (accepting and closing connections, so `/healthz` has something to
    /// probe), then waits for SIGTERM/SIGINT or `shutdown` and reports draining.
    pub async fn run(config: Arc<Config>, deps: ServerDeps) -> Result<(), StartupError> {
        let ServerDeps {
            metrics,
            health,
            registry,
            shutdown,
        } = deps;
        drop((metrics, registry));
        let listener = tokio::net::TcpListener::bind(&config.http.addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.http.addr.clone(),
                source,
            })?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| StartupError::Bind {
                addr: config.http.addr.clone(),
                source,
            })?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                () = shutdown.cancelled() => break,
                _ = tokio::signal::ctrl_c() => break,
                accepted = listener.accept() => drop(accepted),
            }
        }
        health.start_draining();
        Ok(())
    }
}
