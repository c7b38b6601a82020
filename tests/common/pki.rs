//! Certificates and tokens for the API tests.

/// A CA, a server certificate (for `flow-agent.test` and, as Hubble names
/// nodes, `*.default.hubble-grpc.cilium.io`), client certificates of the
/// access policy in `access.yaml`, and a client certificate with a known name
/// from a rogue CA.
pub struct Pki {
    pub directory: tempfile::TempDir,
}

impl Pki {
    /// A file of the PKI: `ca.pem`, `server.pem`, `team-acme.key`, ...
    pub fn path(&self, name: &str) -> String {
        self.directory
            .path()
            .join(name)
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// Makes them in a temporary directory.
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let directory = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| {
            std::fs::write(directory.path().join(name), text).unwrap();
        };
        let authority = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let ca = authority("flow-agent test CA");
        let rogue = authority("rogue CA");
        write("ca.pem", ca.pem());
        write("rogue-ca.pem", rogue.pem());
        let leaf = |file: &str,
                    common_name: &str,
                    names: Vec<String>,
                    purpose: ExtendedKeyUsagePurpose,
                    issuer: &CertifiedIssuer<'_, KeyPair>| {
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.extended_key_usages = vec![purpose];
            let key = KeyPair::generate().unwrap();
            let certificate = params.signed_by(&key, issuer).unwrap();
            write(&format!("{file}.pem"), certificate.pem());
            write(&format!("{file}.key"), key.serialize_pem());
        };
        leaf(
            "server",
            "flow-agent",
            vec![
                "flow-agent.test".into(),
                "*.default.hubble-grpc.cilium.io".into(),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
        );
        for name in ["team-acme", "team-globex", "platform", "stranger"] {
            leaf(
                name,
                name,
                Vec::new(),
                ExtendedKeyUsagePurpose::ClientAuth,
                &ca,
            );
        }
        // A client certificate with a known name, from the wrong CA.
        leaf(
            "rogue",
            "team-acme",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            &rogue,
        );
        write(
            "access.yaml",
            "clients:\n- {name: team-acme, tenant: acme}\n- {name: team-globex, tenant: globex}\n- {name: platform, admin: true}\n".into(),
        );
        Self { directory }
    }
}

/// A token as the access policy stores it.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
