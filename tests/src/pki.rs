//! A throw-away certificate authority for TLS tests: a CA, a server certificate for the
//! loopback names and a client certificate, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// PEM files of one authority and the certificates it issued.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// Creates the files in `dir`; `name` tells two authorities apart in their subjects. The
    /// server certificate names the loopback host.
    pub fn create(dir: &Path, name: &str) -> Pki {
        Self::create_for(dir, name, &["localhost", "127.0.0.1"])
    }

    /// [`Pki::create`] with a server certificate for `server_names` (host names or addresses).
    pub fn create_for(dir: &Path, name: &str, server_names: &[&str]) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |sans: Vec<String>, purposes: Vec<ExtendedKeyUsagePurpose>, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = purposes;
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) = leaf(
            server_names.iter().map(|n| (*n).to_owned()).collect(),
            // Cluster routes present the server certificate as a client too.
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            "nats",
        );
        let (client_pem, client_key_pem) =
            leaf(vec![], vec![ExtendedKeyUsagePurpose::ClientAuth], "gateway");
        let write = |file: &str, text: &str| {
            let path = dir.join(format!("{name}-{file}"));
            std::fs::write(&path, text).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server-key.pem", &server_key_pem),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client-key.pem", &client_key_pem),
        }
    }

    /// The CA and server files under the names compose/nats.conf expects (`ca.pem`,
    /// `server.pem`, `server-key.pem`), readable by the containers' users.
    pub fn install_for_compose(&self, dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        for (from, to) in [
            (&self.ca, "ca.pem"),
            (&self.server_cert, "server.pem"),
            (&self.server_key, "server-key.pem"),
        ] {
            let target = dir.join(to);
            std::fs::copy(from, &target).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A nats-server `tls` block with this server certificate; `verify` demands client
    /// certificates signed by this authority.
    pub fn nats_tls_block(&self, verify: bool) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: {verify}\n  timeout: 2\n}}\n",
            self.server_cert.display().to_string(),
            self.server_key.display().to_string(),
            self.ca.display().to_string(),
        )
    }
}
