//! TLS client set-up for `wss://` targets, done once on the main thread: which certificates
//! are trusted, which name is verified, and what a connection negotiated.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};

/// The one ALPN protocol offered: the upgrade is an HTTP/1.1 request, and corecast's TLS
/// listener selects `http/1.1`.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Whose word a `wss://` run takes for the server's identity.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// The machine's CA store, through rustls-native-certs: `SSL_CERT_FILE` / `SSL_CERT_DIR`
    /// when set, else the system bundle (`/etc/ssl/certs` on Debian).
    Machine,
    /// Only the CA (or self-signed) certificates in this PEM file (`--ca`).
    CaFile(&'a Path),
    /// Nobody's: any certificate is accepted (`--insecure`); see [`DangerousAcceptAnyServerCert`].
    AnyCertificate,
}

/// What every TLS connection of a run shares. Cloning is cheap (the config is behind an Arc).
#[derive(Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
    /// Sent as SNI (unless it is an IP address) and checked against the certificate.
    name: ServerName<'static>,
}

impl Client {
    /// Builds the client side for `name` (a DNS name or an IP address) trusting `trust`.
    /// Errors are worded for the command line.
    pub fn new(trust: Trust<'_>, name: &str) -> Result<Client, String> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| format!("{name:?} is not a DNS name or IP address: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            // TLS 1.3 and 1.2, as corecast offers.
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let mut config = match trust {
            Trust::Machine => builder
                .with_root_certificates(machine_roots()?)
                .with_no_client_auth(),
            Trust::CaFile(path) => builder
                .with_root_certificates(roots_from_file(path)?)
                .with_no_client_auth(),
            Trust::AnyCertificate => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(DangerousAcceptAnyServerCert {
                    algorithms: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        // Each connection stands for a different client, so each makes a full handshake; a
        // shared session cache would let connection 2..N resume and hide the handshake cost.
        config.resumption = Resumption::disabled();
        Ok(Client {
            config: Arc::new(config),
            name,
        })
    }

    /// A new client session; its ClientHello is queued, ready for the first write.
    pub fn session(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(self.config.clone(), self.name.clone())
    }
}

fn machine_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = match found.errors.first() {
            Some(e) => format!(" ({e})"),
            None => String::new(),
        };
        return Err(format!(
            "no usable CA certificate in the machine's store{why}; give the server's CA with \
             --ca FILE (or --insecure to skip verification)"
        ));
    }
    Ok(roots)
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("--ca {shown}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("--ca {shown}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("--ca {shown}: unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("--ca {shown}: no PEM certificate in the file"));
    }
    Ok(roots)
}

/// DANGEROUS, for `--insecure` only: accepts whatever certificate the server presents, for
/// whatever name, so the run is open to anyone on the path pretending to be the server. It
/// still checks the handshake signatures against the presented certificate, so the session
/// is encrypted with whoever holds that certificate's key; it just never asks who that is.
#[derive(Debug)]
pub struct DangerousAcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for DangerousAcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a finished handshake settled on, as rustls names it (`TLSv1_3`,
/// `TLS13_AES_256_GCM_SHA384`, `http/1.1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub version: String,
    pub cipher_suite: String,
    pub alpn: Option<String>,
}

impl Negotiated {
    pub fn of(session: &ClientConnection) -> Negotiated {
        let named = |s: Option<&str>, fallback: String| s.map_or(fallback, str::to_string);
        let version = session
            .protocol_version()
            .map_or("none".to_string(), |v| named(v.as_str(), format!("{v:?}")));
        let cipher_suite = session
            .negotiated_cipher_suite()
            .map_or("none".to_string(), |s| {
                let s = s.suite();
                named(s.as_str(), format!("{s:?}"))
            });
        Negotiated {
            version,
            cipher_suite,
            alpn: session
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_files_are_checked_up_front() {
        assert!(Client::new(Trust::AnyCertificate, "127.0.0.1").is_ok());
        assert!(Client::new(Trust::AnyCertificate, "localhost").is_ok());
        let e = Client::new(Trust::AnyCertificate, "not a name")
            .err()
            .unwrap();
        assert!(e.contains("not a DNS name"), "{e}");
        let missing = Path::new("/nonexistent/ca.pem");
        let e = Client::new(Trust::CaFile(missing), "localhost")
            .err()
            .unwrap();
        assert!(e.starts_with("--ca /nonexistent/ca.pem:"), "{e}");
        let empty =
            std::env::temp_dir().join(format!("corecast-load-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let e = Client::new(Trust::CaFile(&empty), "localhost")
            .err()
            .unwrap();
        let _ = std::fs::remove_file(&empty);
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
