//! A throw-away CA and a server certificate it signed (for `localhost` and 127.0.0.1), made
//! with rcgen at test time so that no key is ever checked in, as PEM files in a directory of
//! their own. Shared by the server's tests and the load generator's (tools/loadgen/tests
//! include this file by path).

#![allow(dead_code)]

use std::path::PathBuf;

/// `ca.pem`, `chain.pem` (the server's certificate, then the CA's: the chain a server
/// presents) and `key.pem` in a directory that is removed on drop.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
}

impl Pki {
    /// `name` keeps the directories of tests running in parallel apart.
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("corecast-pki-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Pki {
            dir,
            ca_pem: String::new(),
        }
        .reissue()
    }

    /// A new CA and certificate over the same paths (what an operator does before SIGHUP).
    pub fn reissue(mut self) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "corecast test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "corecast test server");
        let cert = leaf.signed_by(&key, &issuer).unwrap();

        self.ca_pem = ca_cert.pem();
        std::fs::write(self.dir.join("ca.pem"), &self.ca_pem).unwrap();
        std::fs::write(self.dir.join("chain.pem"), cert.pem() + &self.ca_pem).unwrap();
        std::fs::write(self.dir.join("key.pem"), key.serialize_pem()).unwrap();
        self
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `path` as a string, for command lines.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
