//! Certificates for mutual-TLS tests, made fresh per test with rcgen and written to a
//! temporary folder: one CA that signs every service and the client, and a second CA
//! whose client certificate a server must refuse. Never a key from the repository.

use std::path::{Path, PathBuf};

use flowplane_grpc::config::{ClientArgs, ServeArgs};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tonic::transport::ServerTlsConfig;

/// A certificate and its key on disk.
pub struct Leaf {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    name: &'static str,
}

impl Ca {
    fn new(dir: &Path, name: &'static str) -> Self {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed ca");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write ca");
        Self { cert, key, name }
    }

    /// A leaf for `common_name` (also a DNS name in it, its identity for
    /// `--tls-client-roles`), 127.0.0.1 and localhost, usable by a server and by a client.
    fn leaf(&self, dir: &Path, common_name: &str) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(vec![
            common_name.to_string(),
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed leaf");
        let stem = format!("{}-{common_name}", self.name);
        let leaf = Leaf {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("write leaf");
        std::fs::write(&leaf.key, key.serialize_pem()).expect("write key");
        leaf
    }
}

/// One test's certificates; the folder goes when this is dropped.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    /// The CA every server trusts for clients and every client trusts for servers.
    pub ca_pem: PathBuf,
    /// A client certificate from another CA, for the "refused" cells.
    pub stranger: Leaf,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// A fresh CA and a stranger's client certificate from a second CA.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new(dir.path(), "flowplane-ca");
        let other = Ca::new(dir.path(), "other-ca");
        let stranger = other.leaf(dir.path(), "stranger");
        Self {
            ca_pem: dir.path().join("flowplane-ca.pem"),
            ca,
            stranger,
            dir,
        }
    }

    /// A certificate from the right CA named `common_name`.
    pub fn leaf(&self, common_name: &str) -> Leaf {
        self.ca.leaf(self.dir.path(), common_name)
    }

    /// What a server gets from `--tls-cert/--tls-key/--tls-client-ca`, through the
    /// same code: `leaf` as identity, clients must present a certificate from the CA.
    pub fn server(&self, leaf: &Leaf) -> ServerTlsConfig {
        let serve = ServeArgs {
            tls_cert: Some(leaf.cert.clone()),
            tls_key: Some(leaf.key.clone()),
            tls_client_ca: Some(self.ca_pem.clone()),
            ..ServeArgs::default()
        };
        serve
            .server_tls()
            .expect("test certificates are readable")
            .expect("tls configured")
    }

    /// Client settings that trust the CA and present `leaf`, if any.
    pub fn client(&self, leaf: Option<&Leaf>) -> ClientArgs {
        ClientArgs {
            tls_ca: Some(self.ca_pem.clone()),
            tls_client_cert: leaf.map(|l| l.cert.clone()),
            tls_client_key: leaf.map(|l| l.key.clone()),
            ..ClientArgs::default()
        }
    }
}
