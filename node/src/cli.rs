//! The command line: `gatehouse [--config FILE] <server|health|version|config check|config dump>`.
//!
//! Configuration problems are operator errors, not crashes: they are printed one per line to
//! stderr and the process exits with status 1, without a panic or a backtrace.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gatehouse_node::debug::{self, DebugState};
use gatehouse_node::health::Health;
use gatehouse_node::telemetry::scrape::EventCounts;
use gatehouse_node::telemetry::traces::{self, NodeResource, TraceGuard};
use gatehouse_node::telemetry::{self, Metrics, logging};
use tokio_util::sync::CancellationToken;

use gatehouse_node::server::{self, ServerDeps};
use gatehouse_node::upstream::{LateRegistry, ServiceNodes};
use gatehouse_shared::config::{Config, ConfigSource, Loaded, PreSignedUrl, StoreConfig, load};
use gatehouse_shared::routing::{Router, effective_policies};
use gatehouse_shared::security::Csp;

use gatehouse_nats::{EventPublisher, EventPublisherOptions, ServiceRegistry};
use gatehouse_node::identity::{Identity, IdentityStores};
use gatehouse_shared::events::{EventSink, NoopSink};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const COMMIT: Option<&str> = option_env!("GATEHOUSE_GIT_COMMIT");
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Lower bound of the user-info bucket's max-age (see `serve`).
const USERINFO_BUCKET_MIN_AGE: Duration = Duration::from_secs(24 * 3600);
/// Time queued events get to reach NATS when the node stops.
const EVENT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Time queued spans get to reach the collector when the node stops.
const SPAN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "A clustered, oCIS-compatible API gateway"
)]
pub struct Cli {
    /// Configuration file (oCIS `proxy.yaml` schema); environment variables override it.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "PROXY_CONFIG_FILE",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM/SIGINT, then drain and exit.
    Server {
        /// Development mode: Basic auth on, the oCIS demo users (einstein/relativity,
        /// marie/radioactivity, admin/admin, …) created in the builtin account backend, and the
        /// signing-key endpoint served by the gateway.
        #[arg(long)]
        dev: bool,
    },
    /// Ask the debug server of a running node whether it is healthy (exit 0 if so).
    Health,
    /// Print the version and the git commit of the build.
    Version,
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate the configuration, including routes and the CSP file.
    Check,
    /// Print the effective configuration as YAML, secrets masked.
    Dump,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("{}", version_line());
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Check) => config_check(cli.config),
        Command::Config(ConfigCommand::Dump) => match load_config(cli.config) {
            Ok(loaded) => {
                print!(
                    "{}",
                    loaded.config.with_effective_policies().masked().to_yaml()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Server { dev } => {
            let Ok(loaded) = load_config(cli.config) else {
                return ExitCode::FAILURE;
            };
            let mut config = loaded.config;
            if dev && let Err(message) = development_mode(&mut config) {
                eprintln!("gatehouse: --dev: {message}");
                return ExitCode::FAILURE;
            }
            with_runtime(serve(config))
        }
        Command::Health => {
            let Ok(loaded) = load_config(cli.config) else {
                return ExitCode::FAILURE;
            };
            with_runtime(health(loaded.config))
        }
    }
}

/// Signed URLs, the signing-key endpoint and step-up inheritance all use the signing-key store.
fn needs_signing_keys(config: &Config) -> bool {
    config.pre_signed_url.enabled || config.pre_signed_url.serve_signing_keys || config.mfa.enabled
}

/// The signing-key store to open. Left at its defaults (oCIS: NATS on the default address), it
/// follows the node's state store: the same NATS servers and credentials when the state lives on
/// NATS, or memory (with a warning) when the node has no NATS at all — the embedded defaults — so
/// that configuring NATS once is enough and a development node starts without one.
fn signing_key_store_config(config: &Config) -> StoreConfig {
    let cfg = &config.pre_signed_url.signing_keys;
    if *cfg != PreSignedUrl::default().signing_keys {
        return cfg.clone();
    }
    let state = &config.state_store;
    if state.store == "memory" {
        tracing::warn!(
            "pre_signed_url.signing_keys is left at its defaults and this node keeps its state in \
             memory: signing keys are kept in memory too, per node"
        );
        return StoreConfig {
            store: "memory".into(),
            ..cfg.clone()
        };
    }
    StoreConfig {
        store: state.store.clone(),
        addresses: state.addresses.clone(),
        username: state.username.clone(),
        password: state.password.clone(),
        replicas: state.replicas,
        op_timeout: state.op_timeout,
        ..cfg.clone()
    }
}

/// Settings that must never reach production, said at start-up whatever the log level.
fn development_warnings(config: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if config.enable_basic_auth {
        out.push("Basic auth is enabled (PROXY_ENABLE_BASIC_AUTH): for development only");
    }
    if config.builtin_accounts.demo_users {
        out.push(
            "the oCIS demo users exist with their published passwords (builtin_accounts.demo_users): \
             for development only",
        );
    }
    out
}

/// `--dev`: what a newcomer needs for an authenticated request without an IdP.
fn development_mode(config: &mut Config) -> Result<(), String> {
    if config.account_backend != "builtin" {
        return Err(format!(
            "account_backend: the demo users need the builtin backend, not {}",
            config.account_backend
        ));
    }
    config.enable_basic_auth = true;
    config.builtin_accounts.demo_users = true;
    // The one endpoint the gateway answers itself for a user: something to ask without oCIS.
    config.pre_signed_url.serve_signing_keys = true;
    Ok(())
}

fn version_line() -> String {
    match COMMIT {
        Some(commit) => format!("gatehouse {VERSION} (commit {commit})"),
        None => format!("gatehouse {VERSION}"),
    }
}

fn with_runtime(fut: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(fut),
        Err(err) => {
            eprintln!("gatehouse: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

fn source_name(file: Option<&PathBuf>) -> String {
    match file {
        Some(path) => format!("{} and the environment", path.display()),
        None => "the environment and embedded defaults".into(),
    }
}

/// Loads the configuration; on failure prints every problem and returns the exit code.
fn load_config(file: Option<PathBuf>) -> Result<Loaded, ExitCode> {
    let source = ConfigSource::from_process(file.clone());
    load(&source).map_err(|errors| {
        eprintln!(
            "gatehouse: invalid configuration (from {}):",
            source_name(file.as_ref())
        );
        for line in errors.to_string().lines() {
            eprintln!("  {line}");
        }
        ExitCode::FAILURE
    })
}

/// Problems `load` cannot see: route patterns, the policy selector and the CSP file.
fn deep_check(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let policies = effective_policies(&config.policies, &config.additional_policies);
    if let Err(err) = Router::new(&policies, config.policy_selector.as_ref()) {
        problems.extend(err.to_string().lines().map(str::to_owned));
    }
    let csp_file = Some(config.csp_config_file_location.as_str())
        .filter(|p| !p.is_empty())
        .map(Path::new);
    if let Err(err) = Csp::load(csp_file, &|name| std::env::var(name).ok()) {
        problems.extend(
            err.to_string()
                .lines()
                .map(|l| format!("csp_config_file_location: {l}")),
        );
    }
    let ca_file = Some(config.backend_https_cacert.as_str())
        .filter(|p| !p.is_empty())
        .map(Path::new);
    if let Err(err) = gatehouse_node::proxy::tls::client_config(config.insecure_backends, ca_file) {
        problems.push(err.to_string());
    }
    problems.extend(gatehouse_node::identity::config_problems(config));
    problems
}

fn config_check(file: Option<PathBuf>) -> ExitCode {
    let Ok(loaded) = load_config(file) else {
        return ExitCode::FAILURE;
    };
    let problems = deep_check(&loaded.config);
    if !problems.is_empty() {
        eprintln!(
            "gatehouse: invalid configuration (from {}):",
            source_name(loaded.file.as_ref())
        );
        for p in problems {
            eprintln!("  {p}");
        }
        return ExitCode::FAILURE;
    }
    match &loaded.file {
        Some(path) => println!("configuration OK ({})", path.display()),
        None => println!("configuration OK (embedded defaults)"),
    }
    ExitCode::SUCCESS
}

async fn health(config: Config) -> ExitCode {
    if config.debug.addr.is_empty() {
        eprintln!("gatehouse health: debug.addr is empty, there is no debug server to ask");
        return ExitCode::FAILURE;
    }
    let addr = debug::probe_address(&config.debug.addr);
    match debug::fetch(&addr, "/healthz", None, HEALTH_TIMEOUT).await {
        Ok(resp) if resp.status().is_success() && resp.body().as_ref() == b"OK" => {
            println!("OK");
            ExitCode::SUCCESS
        }
        Ok(resp) => {
            let body = String::from_utf8_lossy(resp.body());
            eprintln!(
                "gatehouse health: unhealthy ({}): {}",
                resp.status(),
                body.trim()
            );
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("gatehouse health: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Starts trace export when `tracing.enabled`; what it decided on the operator's behalf is said
/// on stderr and in the log (the default log level would hide a warning).
fn start_tracing(
    config: &Config,
    node_id: &str,
    metrics: &Arc<Metrics>,
) -> Result<Option<TraceGuard>, String> {
    let host = telemetry::host_name();
    let node = NodeResource {
        node_id,
        version: VERSION,
        host_name: &host,
    };
    // The counters are shared handles: the export task feeds the node's registry.
    let observer = Arc::new(metrics.trace().clone());
    let guard = traces::start(&config.tracing, &node, observer).map_err(|e| e.to_string())?;
    if let Some(guard) = &guard {
        let plan = guard.plan();
        for warning in &plan.warnings {
            eprintln!("gatehouse: WARNING: {warning}");
            tracing::warn!("{warning}");
        }
        tracing::info!(
            collector = %plan.url,
            protocol = plan.protocol.as_str(),
            ratio = plan.sampling.ratio,
            parent_based = plan.sampling.parent_based,
            "exporting traces"
        );
    }
    Ok(guard)
}

/// The oCIS service registry mirror, when `service_registry.enabled`; readiness then depends on
/// its NATS connection.
async fn connect_registry(
    config: &Config,
    health: &Health,
    metrics: &Metrics,
) -> Result<Option<Arc<dyn ServiceNodes>>, String> {
    let settings = &config.service_registry;
    if !settings.enabled {
        return Ok(None);
    }
    let slot = Arc::new(LateRegistry::default());
    let security = settings.nats_security();
    match ServiceRegistry::connect_with(settings.addresses.clone(), &settings.bucket, &security)
        .await
    {
        Ok(registry) => slot.install(registry),
        Err(err) if err.is_retryable() => {
            tracing::warn!(error = %err, "cannot reach the service registry; the node starts unready and keeps trying");
            tokio::spawn(Arc::clone(&slot).keep_connecting(
                settings.addresses.clone(),
                settings.bucket.clone(),
                security,
            ));
        }
        Err(err) => {
            return Err(format!(
                "service_registry: cannot connect to {}: {err}",
                settings.addresses.join(",")
            ));
        }
    }
    // Ready only once the mirror holds the current registry: before that, every service route
    // would answer 502. Losing NATS afterwards leaves the mirror serving: degraded, still ready.
    let probe = Arc::clone(&slot);
    health.require("service registry (NATS)", move || {
        probe.get().is_some_and(|r| r.is_loaded())
    });
    let probe = Arc::clone(&slot);
    health.observe("service registry (NATS)", move || {
        probe.get().is_some_and(|r| r.is_connected())
    });
    let probe = Arc::downgrade(&slot);
    metrics.scrape().nats("registry", move || {
        probe
            .upgrade()
            .and_then(|s| s.get().map(|r| r.connection()))
            .unwrap_or_default()
    });
    Ok(Some(slot))
}

async fn serve(config: Config) -> ExitCode {
    let node_id = telemetry::node_id(&config.node_id);
    let _log_guard = match logging::init(&config.log, &node_id) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("gatehouse: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Fails only if a provider is already installed, which is what we want anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // On stderr as well as in the log: the default log level (error) would hide the warning.
    for warning in development_warnings(&config) {
        eprintln!("gatehouse: WARNING: {warning}");
    }

    let metrics = Metrics::new(VERSION);
    metrics.node_started(&node_id, VERSION);
    let traces = match start_tracing(&config, &node_id, &metrics) {
        Ok(traces) => traces,
        Err(message) => {
            eprintln!("gatehouse: {message}");
            return ExitCode::FAILURE;
        }
    };
    let health = Health::new();
    metrics.scrape().health(Arc::clone(&health));
    let shutdown = CancellationToken::new();

    // First, before the stores and the debug server: see `server::listen`.
    let listener = match server::listen(&config.http).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(error = %err, "start-up failed");
            eprintln!("gatehouse: {err}");
            return ExitCode::FAILURE;
        }
    };

    let state_store = match gatehouse_node::state::open(
        "state store",
        "state_store",
        "state",
        &config.state_store,
        &metrics,
        &health,
    )
    .await
    {
        Ok(store) => store,
        Err(err) => {
            eprintln!(
                "gatehouse: state_store: cannot open the {} store at {}: {err}",
                config.state_store.store,
                config.state_store.addresses.join(",")
            );
            return ExitCode::FAILURE;
        }
    };

    let debug_task = if config.debug.addr.is_empty() {
        tracing::info!("debug.addr is empty: debug server disabled");
        None
    } else {
        let listener = match tokio::net::TcpListener::bind(&config.debug.addr).await {
            Ok(l) => l,
            Err(err) => {
                eprintln!(
                    "gatehouse: debug.addr: cannot listen on {:?}: {err}",
                    config.debug.addr
                );
                return ExitCode::FAILURE;
            }
        };
        let config_json = match serde_json::to_string(&config.with_effective_policies().masked()) {
            Ok(json) => json,
            Err(err) => {
                eprintln!("gatehouse: cannot serialise the configuration: {err}");
                return ExitCode::FAILURE;
            }
        };
        let state = DebugState {
            state: Some(Arc::clone(&state_store)),
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&health),
            config_json: Arc::from(config_json),
            token: config.debug.token.clone(),
            version: VERSION.into(),
            http_addr: config.http.addr.clone(),
        };
        tracing::info!(addr = %config.debug.addr, "debug server listening");
        Some(tokio::spawn(debug::serve(
            listener,
            state,
            shutdown.clone(),
        )))
    };

    // The user-info bucket outlives the oCIS cache TTL: every entry carries its own expiry (the
    // token's), so the bucket's max-age only bounds what servers without per-key TTL keep.
    // A zero TTL is a bucket without max-age, as for every oCIS store.
    let mut userinfo_cfg = config.oidc.user_info_cache.clone();
    if !userinfo_cfg.ttl.is_zero() {
        userinfo_cfg.ttl.0 = userinfo_cfg.ttl.0.max(USERINFO_BUCKET_MIN_AGE);
    }
    let userinfo_store = match gatehouse_node::state::open(
        "user-info cache",
        "oidc.user_info_cache",
        "userinfo",
        &userinfo_cfg,
        &metrics,
        &health,
    )
    .await
    {
        Ok(store) => store,
        Err(err) => {
            eprintln!(
                "gatehouse: oidc.user_info_cache: cannot open the {} store at {}: {err}",
                userinfo_cfg.store,
                userinfo_cfg.addresses.join(",")
            );
            shutdown.cancel();
            return ExitCode::FAILURE;
        }
    };
    let signing_keys = if needs_signing_keys(&config) {
        let cfg = signing_key_store_config(&config);
        match gatehouse_node::state::open(
            "signing keys",
            "pre_signed_url.signing_keys",
            "signing-keys",
            &cfg,
            &metrics,
            &health,
        )
        .await
        {
            Ok(store) => Some(store),
            Err(err) => {
                eprintln!(
                    "gatehouse: pre_signed_url.signing_keys: cannot open the {} store at {}: {err}",
                    cfg.store,
                    cfg.addresses.join(",")
                );
                shutdown.cancel();
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let publisher = match EventPublisherOptions::from_config(&config.events) {
        None => None,
        Some(opts) => match EventPublisher::start(opts) {
            Ok(p) => {
                let p = Arc::new(p);
                let probe = Arc::downgrade(&p);
                metrics.scrape().nats("events", move || {
                    probe.upgrade().map(|p| p.connection()).unwrap_or_default()
                });
                let probe = Arc::downgrade(&p);
                metrics.scrape().events(move || match probe.upgrade() {
                    Some(p) => EventCounts {
                        queued: p.pending(),
                        published: p.published(),
                        retried: p.retried(),
                        dropped: p.dropped(),
                        duplicates: p.duplicates(),
                    },
                    None => EventCounts::default(),
                });
                Some(p)
            }
            Err(err) => {
                eprintln!("gatehouse: events.endpoint: {err}");
                shutdown.cancel();
                return ExitCode::FAILURE;
            }
        },
    };
    let sink: Arc<dyn EventSink> = match &publisher {
        Some(p) => p.clone(),
        None => Arc::new(NoopSink),
    };
    let identity = match Identity::build(
        &config,
        IdentityStores {
            userinfo: userinfo_store,
            state: Arc::clone(&state_store),
            signing_keys,
        },
        sink,
        metrics.clone(),
    )
    .await
    {
        Ok(identity) => identity,
        Err(err) => {
            eprintln!("gatehouse: {err}");
            shutdown.cancel();
            return ExitCode::FAILURE;
        }
    };
    identity.spawn_background(shutdown.clone());

    let registry = match connect_registry(&config, &health, &metrics).await {
        Ok(registry) => registry,
        Err(message) => {
            eprintln!("gatehouse: {message}");
            shutdown.cancel();
            return ExitCode::FAILURE;
        }
    };
    let deps = ServerDeps {
        metrics,
        health: Arc::clone(&health),
        registry,
        // The server drains on its own signal handling; the debug server outlives the drain so
        // that `/readyz` reports it.
        shutdown: CancellationToken::new(),
        identity,
        listener: Some(listener),
    };
    let result = server::run(Arc::new(config), deps).await;
    if let Some(p) = &publisher {
        let deadline = tokio::time::Instant::now() + EVENT_FLUSH_TIMEOUT;
        if !p.flush(deadline).await {
            tracing::warn!(
                pending = p.pending(),
                "events still queued at exit were not published"
            );
        }
    }
    // After the events: their PRODUCER spans end when the bus acknowledges them.
    if let Some(traces) = traces {
        let deadline = tokio::time::Instant::now() + SPAN_FLUSH_TIMEOUT;
        if !traces.shutdown(deadline).await {
            tracing::warn!("spans still queued at exit were not exported");
        }
    }
    shutdown.cancel();
    if let Some(task) = debug_task {
        let _ = task.await;
    }
    match result {
        Ok(()) => {
            tracing::info!("shut down");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "start-up failed");
            eprintln!("gatehouse: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signing_key_store_follows_the_state_store_unless_configured() {
        let mut c = Config::default();
        assert_eq!(signing_key_store_config(&c).store, "memory");

        c.state_store.store = "nats-js-kv".into();
        c.state_store.addresses = vec!["n1:4222".into(), "n2:4222".into()];
        c.state_store.replicas = 3;
        let keys = signing_key_store_config(&c);
        assert_eq!(keys.store, "nats-js-kv");
        assert_eq!(keys.addresses, c.state_store.addresses);
        assert_eq!(keys.replicas, 3);
        assert_eq!(
            (keys.database.as_str(), keys.table.as_str()),
            ("proxy", "signing-keys")
        );

        c.pre_signed_url.signing_keys.addresses = vec!["elsewhere:4222".into()];
        assert_eq!(signing_key_store_config(&c).addresses, ["elsewhere:4222"]);
    }

    #[test]
    fn development_mode_turns_on_basic_auth_and_demo_users() {
        let mut c = Config::default();
        development_mode(&mut c).unwrap();
        assert!(c.enable_basic_auth && c.builtin_accounts.demo_users);
        assert!(c.pre_signed_url.serve_signing_keys);
        assert_eq!(development_warnings(&c).len(), 2);
        assert!(development_warnings(&Config::default()).is_empty());
        let mut graph = Config {
            account_backend: "graph".into(),
            ..Config::default()
        };
        assert!(
            development_mode(&mut graph)
                .unwrap_err()
                .contains("account_backend")
        );
    }

    #[test]
    fn dev_is_a_server_flag() {
        let cli = Cli::try_parse_from(["gatehouse", "server", "--dev"]).unwrap();
        assert!(matches!(cli.command, Command::Server { dev: true }));
        let cli = Cli::try_parse_from(["gatehouse", "server"]).unwrap();
        assert!(matches!(cli.command, Command::Server { dev: false }));
    }
}
