//! The cluster configuration in `nats/conf/` as nats-server reads it: each member with TLS, the
//! gateway's account and its permissions (`nats-server -t`, which loads the certificates and the
//! included files), and refused without the password it takes from the environment.

use std::path::Path;
use std::process::Command;

use gatehouse_tests::nats::nats_server_binary;
use gatehouse_tests::pki::Pki;

fn check(conf: &Path, cwd: &Path, password: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(nats_server_binary());
    cmd.args(["-t", "-c"])
        .arg(conf)
        .current_dir(cwd)
        .env_remove("GATEHOUSE_NATS_PASSWORD");
    if let Some(p) = password {
        cmd.env("GATEHOUSE_NATS_PASSWORD", p);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_member_serves_tls_to_the_gateway_account_only() {
    let conf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let work = tempfile::tempdir().unwrap();
    let made = tempfile::tempdir().unwrap();
    Pki::create_for(made.path(), "conf", &["n1", "n2", "n3"])
        .install_for_compose(&work.path().join("certs"));
    for member in ["n1", "n2", "n3"] {
        let conf = conf_dir.join(format!("{member}.conf"));
        let text = std::fs::read_to_string(&conf).unwrap();
        assert!(
            text.contains("include \"clients.conf\""),
            "{member}: {text}"
        );
        let (ok, out) = check(&conf, work.path(), Some("a-password"));
        assert!(ok, "{member}: {out}");
        let (ok, out) = check(&conf, work.path(), None);
        assert!(
            !ok && out.contains("GATEHOUSE_NATS_PASSWORD"),
            "{member} without a password: {out}"
        );
    }
    // Without the certificates the configuration is refused too: TLS is not optional.
    let empty = tempfile::tempdir().unwrap();
    let (ok, out) = check(&conf_dir.join("n1.conf"), empty.path(), Some("a-password"));
    assert!(!ok, "{out}");
}
