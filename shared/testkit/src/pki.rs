//! A throwaway PKI for TLS tests: [`TestPki::new`] writes, in a temp dir, a CA and two
//! certificates it signed — one for the server (`localhost` and `127.0.0.1`) and one for a
//! client (mutual TLS) — plus a second CA that signed neither (a client trusting it must refuse
//! the server). Every file is PEM; keys are ECDSA P-256 (rcgen's default).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The files of a test PKI (all under [`Self::dir`]).
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
    /// The CA that signed both certificates.
    pub ca_file: PathBuf,
    /// The server's certificate (`localhost`, `127.0.0.1`).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client's certificate (`fleet-client`), for servers that verify clients.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca_file: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a CA key")).expect("a CA")
}

fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, &names[0]);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, ca).expect("a signed certificate");
    (cert.pem(), key.serialize_pem())
}

impl TestPki {
    /// A fresh PKI in a temp dir of its own.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let write = |name: &str, text: &str| crate::write_file(dir.path(), name, text);
        let authority = ca("fleet test CA");
        let (server_cert, server_key) = leaf(
            &authority,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            &authority,
            &["fleet-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let other = ca("another CA");
        Self {
            ca_file: write("ca.pem", &authority.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            other_ca_file: write("other-ca.pem", &other.pem()),
            dir,
        }
    }

    /// The folder holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// nats-server's `tls` block for this PKI's server certificate; `verify` makes the server
    /// ask clients for a certificate signed by the CA (mutual TLS).
    pub fn server_tls_block(&self, verify: bool) -> String {
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify}\n  timeout: 5\n}}\n",
            self.server_cert.display(),
            self.server_key.display(),
            self.ca_file.display(),
        )
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
