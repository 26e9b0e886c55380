//! Helpers shared by the node's socket tests.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
