//! TLS for the tests: a throw-away CA and server certificate (`pki.rs`) in a directory of
//! their own, and rustls clients that trust only that CA.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use corecast::conn::TlsFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::WebSocket;

use super::WATCHDOG;

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;
pub type WssClient = WebSocket<TlsStream>;

pub use super::pki::Pki;

/// The server's and the clients' side of a test PKI.
impl Pki {
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.path("chain.pem"),
            key: self.path("key.pem"),
        }
    }

    /// A client configuration that trusts this CA alone, TLS 1.3 and 1.2.
    pub fn client(&self) -> Arc<ClientConfig> {
        client_config(
            &self.ca_pem,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        )
    }

    /// The same, offering TLS 1.2 only.
    pub fn client_tls12(&self) -> Arc<ClientConfig> {
        client_config(&self.ca_pem, &[&rustls::version::TLS12])
    }
}

fn client_config(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A TLS session to `addr` for `localhost`, handshake not yet run (it runs on first use).
pub fn tls_stream(addr: SocketAddr, cfg: Arc<ClientConfig>) -> TlsStream {
    let tcp = TcpStream::connect(addr).expect("tcp connect");
    tcp.set_read_timeout(Some(WATCHDOG)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    StreamOwned::new(ClientConnection::new(cfg, name).unwrap(), tcp)
}

/// A WebSocket over TLS, or the error that stopped the TLS or WebSocket handshake.
pub fn try_connect_wss(
    addr: SocketAddr,
    path: &str,
    cfg: Arc<ClientConfig>,
) -> Result<WssClient, tungstenite::Error> {
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, resp) =
        tungstenite::client(url.as_str(), tls_stream(addr, cfg)).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => {
                tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
            }
        })?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

pub fn connect_wss(addr: SocketAddr, path: &str, cfg: Arc<ClientConfig>) -> WssClient {
    try_connect_wss(addr, path, cfg).expect("wss handshake")
}

/// The TLS version a client's session negotiated.
pub fn version(ws: &WssClient) -> Option<rustls::ProtocolVersion> {
    ws.get_ref().conn.protocol_version()
}
