//! A network partition of one path, made with iptables: every TCP packet to or from one
//! loopback address (a gateway node's only way to its NATS servers, `127.0.77.x`) is dropped, so
//! open connections stall and new ones time out, as when a cable or a security group cuts a node
//! off. Dropped, not refused: the node learns of it only from its own timeouts. The rules are
//! removed when the partition is dropped, also when a test panics.

use std::net::Ipv4Addr;
use std::process::Command;

pub struct Partition {
    addr: Ipv4Addr,
}

const INSTALL_HINT: &str = "iptables is needed to cut a path (`apt-get install iptables`) and root";

fn rules(addr: Ipv4Addr) -> [[String; 7]; 2] {
    let a = addr.to_string();
    [
        ["-d", &a, "-p", "tcp", "-j", "DROP", "-w"].map(str::to_owned),
        ["-s", &a, "-p", "tcp", "-j", "DROP", "-w"].map(str::to_owned),
    ]
}

fn iptables(op: &str, rule: &[String]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg(op)
        .arg("OUTPUT")
        .args(rule)
        .output()
        .map_err(|e| format!("cannot run iptables: {e} ({INSTALL_HINT})"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {op} OUTPUT {}: {} ({INSTALL_HINT})",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Partition {
    /// Cuts every TCP path to and from `addr` (a loopback address other than 127.0.0.1).
    pub fn cut(addr: Ipv4Addr) -> Result<Partition, String> {
        assert!(
            addr.is_loopback() && addr != Ipv4Addr::LOCALHOST,
            "only a dedicated loopback address may be cut"
        );
        for rule in rules(addr) {
            // Left over from a run that was killed: remove before adding.
            while iptables("-D", &rule).is_ok() {}
            iptables("-I", &rule)?;
        }
        Ok(Partition { addr })
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in rules(self.addr) {
            while iptables("-D", &rule).is_ok() {}
        }
    }
}
