//! Helpers shared by the node's socket tests.
// Each test binary includes this module and uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;

use gatehouse_node::health::Health;
use gatehouse_node::identity::Identity;
use gatehouse_node::pipeline::{self, PipelineParts};
use gatehouse_node::server::Server;
use gatehouse_node::telemetry::Metrics;
use gatehouse_shared::config::Config;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Serves the whole pipeline for `config` and `identity` on `config.http` until the guard is
/// dropped.
pub async fn serve(config: &Config, identity: Identity) -> (SocketAddr, DropGuard) {
    let parts = PipelineParts::from_config(config, None, Metrics::new("test"), identity).unwrap();
    let trusted = parts.trusted.clone();
    let server = Server::bind(&config.http, trusted, Health::new())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.serve(move || pipeline::build(parts.clone()), shutdown.clone()));
    (addr, shutdown.drop_guard())
}

/// Once the connection is upgraded, echoes every byte back until the peer closes it: what a test
/// upstream does to prove the proxy bridges upgraded connections in both directions.
pub fn spawn_upgraded_echo(on: OnUpgrade) {
    tokio::spawn(async move {
        let mut io = TokioIo::new(on.await.unwrap());
        let mut buf = [0u8; 64];
        loop {
            let n = io.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            io.write_all(&buf[..n]).await.unwrap();
        }
    });
}
