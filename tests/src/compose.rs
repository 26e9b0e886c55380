//! The compose cluster of `compose/docker-compose.test.yml` under a real Docker engine, driven
//! with Debian's `docker-compose` (v1). The images are built here on every start from what the
//! test run just built or installed (the gateway binary, nats-server, Node.js with the test IdP
//! and the demo backend), on the local Debian base `local/debian:bookworm-slim` that
//! `tests/run-all.sh` makes with debootstrap, because no registry can be reached on the test
//! machines. Layers that did not change are reused, so a rebuild costs seconds.
//!
//! The project has a fixed name and the cluster fixed loopback ports (the compose file's), so one
//! cluster runs at a time; a start first removes what a killed earlier run may have left, and
//! dropping the cluster removes it (containers and volumes), also when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub const PROJECT: &str = "gatehouse-e2e";
pub const BASE_IMAGE: &str = "local/debian:bookworm-slim";
/// Where the compose file puts things (loopback, host networking).
pub const LB: &str = "127.0.0.1:19200";
pub const LB_STATS: &str = "127.0.0.1:19204";
pub const IDP: &str = "127.0.0.1:19130";
/// The issuer the gateways are configured with (the IdP by its service name).
pub const ISSUER: &str = "http://idp:19130";
/// `(service, http address, debug address)` of the gateway nodes.
pub const NODES: [(&str, &str, &str); 3] = [
    ("gatehouse-1", "127.0.0.1:19201", "127.0.0.1:19211"),
    ("gatehouse-2", "127.0.0.1:19202", "127.0.0.1:19212"),
    ("gatehouse-3", "127.0.0.1:19203", "127.0.0.1:19213"),
];
/// The secret the gateways sign `x-access-token` with and the demo backend checks.
pub const JWT_SECRET: &str = "change-me-to-a-long-random-secret";

const INSTALL_HINT: &str = "tests/run-all.sh installs docker.io, docker-compose and debootstrap, \
starts dockerd and makes the base image";

pub struct ComposeCluster {
    file: PathBuf,
    env: Vec<(String, String)>,
    _stage: tempfile::TempDir,
}

fn compose_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .join("compose")
}

fn run(what: &str, cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e} ({INSTALL_HINT})"))
}

fn check(what: &str, cmd: &mut Command) -> String {
    let out = run(what, cmd);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "copy {} to {}",
        from.display(),
        to.display()
    );
}

/// Builds `tag` from `dockerfile` with `context` (host networking, so a build can reach Debian's
/// mirror for apt).
fn build(tag: &str, dockerfile: &Path, context: &Path, extra: &[&str]) {
    let mut cmd = Command::new("docker");
    cmd.args(["build", "--quiet", "--network", "host", "-t", tag, "-f"])
        .arg(dockerfile)
        .args(extra)
        .arg(context);
    check(&format!("docker build {tag}"), &mut cmd);
}

impl ComposeCluster {
    /// Builds the images and starts every service; traces go to `otlp` (`host:port`, gRPC).
    /// Returns once `docker-compose up -d` has returned (containers created and started).
    pub fn start(otlp: &str) -> ComposeCluster {
        check(
            "docker version (is dockerd running?)",
            Command::new("docker").arg("version"),
        );
        let base = run(
            "docker image inspect",
            Command::new("docker").args(["image", "inspect", BASE_IMAGE]),
        );
        assert!(
            base.status.success(),
            "the base image {BASE_IMAGE} is missing: {INSTALL_HINT}"
        );
        let compose = compose_dir();
        let stage = tempfile::tempdir().expect("tempdir");
        let dir = |name: &str| {
            let d = stage.path().join(name);
            std::fs::create_dir_all(&d).expect("stage dir");
            d
        };

        let gh = dir("gatehouse");
        std::fs::copy(crate::node::gatehouse_bin(), gh.join("gatehouse")).expect("copy gatehouse");
        build(
            "gatehouse-test/gatehouse",
            &compose.join("Dockerfile"),
            &gh,
            &[
                "--target",
                "prebuilt",
                "--build-arg",
                &format!("BASE={BASE_IMAGE}"),
            ],
        );
        let nats = dir("nats");
        std::fs::copy(crate::nats::nats_server_binary(), nats.join("nats-server"))
            .expect("copy nats-server");
        build(
            "gatehouse-test/nats",
            &compose.join("test/Dockerfile.nats"),
            &nats,
            &[],
        );
        let node = dir("node");
        std::fs::copy(crate::idp::node_binary(), node.join("node")).expect("copy node");
        let idp_src = crate::idp::provider_dir();
        let idp = node.join("idp");
        std::fs::create_dir_all(&idp).expect("idp dir");
        for f in ["provider.mjs", "package.json", "node_modules"] {
            copy_tree(&idp_src.join(f), &idp);
        }
        copy_tree(&compose.join("demo-backend"), &node);
        build(
            "gatehouse-test/node",
            &compose.join("test/Dockerfile.node"),
            &node,
            &[],
        );
        let empty = dir("empty");
        build(
            "gatehouse-test/haproxy",
            &compose.join("test/Dockerfile.haproxy"),
            &empty,
            &[],
        );

        // compose/nats.conf serves TLS with these; the gateways trust the CA.
        let certs = dir("certs");
        let made = tempfile::tempdir().expect("tempdir");
        crate::pki::Pki::create_for(
            made.path(),
            "compose",
            &["nats-1", "nats-2", "nats-3", "localhost", "127.0.0.1"],
        )
        .install_for_compose(&certs);

        let cluster = ComposeCluster {
            file: compose.join("docker-compose.test.yml"),
            env: vec![
                ("GATEHOUSE_TEST_OTLP".into(), otlp.into()),
                ("GATEHOUSE_TEST_CERTS".into(), certs.display().to_string()),
            ],
            _stage: stage,
        };
        cluster.down();
        cluster.compose_ok(&["up", "-d"]);
        cluster
    }

    fn compose(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["--no-ansi", "-p", PROJECT, "-f"])
            .arg(&self.file)
            .args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run(&format!("docker-compose {}", args.join(" ")), &mut cmd)
    }

    fn compose_ok(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(
            out.status.success(),
            "docker-compose {} failed ({}):\n{}\n{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn down(&self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "10"]);
    }

    /// SIGKILL to one service's container (no drain, no goodbye).
    pub fn kill(&self, service: &str) {
        self.compose_ok(&["kill", "-s", "SIGKILL", service]);
    }

    /// Starts a stopped or killed service's container again.
    pub fn start_service(&self, service: &str) {
        self.compose_ok(&["start", service]);
    }

    /// The id of the service's container.
    pub fn container(&self, service: &str) -> String {
        self.compose_ok(&["ps", "-q", service]).trim().to_owned()
    }

    /// What the engine says of the container: `running`, `exited`, … and the health check's
    /// verdict (`healthy`, `starting`, `unhealthy`, or empty without a check).
    pub fn state(&self, service: &str) -> (String, String) {
        let id = self.container(service);
        let out = check(
            "docker inspect",
            Command::new("docker").args([
                "inspect",
                "-f",
                "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                &id,
            ]),
        );
        let mut words = out.split_whitespace();
        (
            words.next().unwrap_or_default().to_owned(),
            words.next().unwrap_or_default().to_owned(),
        )
    }

    /// Waits until the engine's health check calls every gateway node healthy.
    pub async fn wait_healthy(&self, services: &[&str], within: Duration) -> bool {
        crate::wait_until(within, || async {
            services.iter().all(|s| self.state(s).1 == "healthy")
        })
        .await
    }

    /// Every service's log, for failure messages.
    pub fn logs(&self) -> String {
        let out = self.compose(&["logs", "--no-color", "--tail", "40"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One service's whole log.
    pub fn service_logs(&self, service: &str) -> String {
        let out = self.compose(&["logs", "--no-color", service]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// SIGKILL to a container, straight through the engine (`docker-compose` takes a second to
/// start, too long for a fault meant to land at a known moment).
pub fn kill_container(container: &str) {
    check(
        "docker kill",
        Command::new("docker").args(["kill", "-s", "KILL", container]),
    );
}

/// `docker inspect -f <format>` of a container.
pub fn inspect(container: &str, format: &str) -> String {
    check(
        "docker inspect",
        Command::new("docker").args(["inspect", "-f", format, container]),
    )
    .trim()
    .to_owned()
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        self.down();
    }
}
