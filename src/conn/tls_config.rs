//! The server's TLS configuration: the certificate chain and key read from PEM files into a
//! rustls `ServerConfig`, at start-up and again on SIGHUP. Runs off the workers (the main
//! thread); workers get the result through their queues.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// The certificate and key files, kept to be read again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: String },
    #[error("{0}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)")]
    NoCertificate(PathBuf),
    #[error("{0}: no private key in it (expected a PEM PKCS#8, RSA or EC private key)")]
    NoKey(PathBuf),
    #[error("the certificate and key cannot be used together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads the certificate chain and key and builds the server's TLS configuration: TLS 1.3
/// and 1.2, ALPN `http/1.1`, no client certificates.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let read = |path: &Path| {
        let mut pem = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut pem))
            .map_err(|e| TlsConfigError::Read {
                path: path.to_owned(),
                err: e.to_string(),
            })?;
        Ok::<_, TlsConfigError>(pem)
    };
    let cert_pem = read(&files.cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsConfigError::Read {
            path: files.cert.clone(),
            err: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate(files.cert.clone()));
    }
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| TlsConfigError::NoKey(files.key.clone()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        // Fails if the key does not belong to the certificate.
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
