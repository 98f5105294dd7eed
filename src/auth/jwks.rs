//! A JWKS URL (`--auth-jwks https://...`), fetched on the control thread's tokio runtime,
//! never on a worker: once at start, again every `--auth-jwks-max-age`, after a SIGHUP, and
//! when a token names an unknown `kid` — that last at most once per
//! `--auth-jwks-refresh-interval`, however many such tokens arrive (they set one flag; see
//! `Refetch` in `verify.rs`). A failed fetch keeps the keys held, is logged and counted, and
//! is tried again with backoff.
//!
//! One GET per fetch through hyper's HTTP/1.1 client connection, over rustls (ring) with the
//! system's roots for https; at most [`FETCH_TIMEOUT`] for all of it and [`MAX_BODY`] bytes
//! of body. Redirects are not followed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::keys;
use super::verify::{log_skipped, Auth};
use crate::stop::{stopped, Stopping};

/// The longest a fetch may take, connect to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS body read; real ones are a few KiB.
pub const MAX_BODY: usize = 1 << 20;
/// The first retry after a failed fetch; each further failure doubles it, up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// A JWKS URL, checked when the configuration is read.
#[derive(Debug, Clone)]
pub struct JwksUrl {
    uri: http::Uri,
    https: bool,
    /// Host as it is connected to (an IPv6 literal without its brackets).
    host: String,
    port: u16,
    /// For logs: scheme, authority and path; the query is left out, as it may carry a key.
    shown: String,
}

impl JwksUrl {
    /// An `http://` or `https://` URL with a host and no credentials in it. The error does
    /// not quote the URL.
    pub fn parse(text: &str) -> Result<JwksUrl, String> {
        let uri: http::Uri = text.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the URL must start with http:// or https://".into()),
        };
        let authority = uri.authority().ok_or("the URL has no host")?;
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err("the URL has no host".into());
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let shown = format!(
            "{}://{}{}",
            if https { "https" } else { "http" },
            authority,
            uri.path()
        );
        Ok(JwksUrl {
            host: host.to_owned(),
            port,
            https,
            shown,
            uri,
        })
    }

    /// The URL without its query, for logs.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Plain http to a host that is not loopback: anyone on the path can hand corecast keys.
    pub fn insecure(&self) -> bool {
        !self.https
            && self.host != "localhost"
            && !self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// Keeps the keys of `auth`'s JWKS URL fresh until stopped (the control thread's task).
pub async fn run(auth: Arc<Auth>, mut stopping: Stopping) {
    let Some(url) = auth.jwks_url().cloned() else {
        return;
    };
    if url.insecure() {
        log::warn!(
            "--auth-jwks {}: plain http to another host; anyone on the way can hand corecast \
             keys (use https)",
            url.shown()
        );
    }
    let interval = auth.settings().jwks_refresh_interval;
    let max_age = auth.settings().jwks_max_age;
    let mut last: Option<Instant> = None;
    let mut due = Instant::now();
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            _ = stopped(&mut stopping) => return,
            _ = tokio::time::sleep_until(due) => {}
            _ = auth.refetch.notify.notified() => {
                // An unknown kid (or SIGHUP) asks: no sooner than the interval after the
                // last fetch, unless SIGHUP asked.
                let forced = auth.refetch.forced.swap(false, std::sync::atomic::Ordering::Relaxed);
                if let (false, Some(last)) = (forced, last) {
                    let at = (last + interval).min(due);
                    loop {
                        tokio::select! {
                            _ = stopped(&mut stopping) => return,
                            _ = tokio::time::sleep_until(at) => break,
                            // A SIGHUP meanwhile fetches at once; another unknown kid only
                            // asks for the fetch that already waits (and leaves no permit
                            // behind to cause a second one).
                            _ = auth.refetch.notify.notified() => {
                                if auth
                                    .refetch
                                    .forced
                                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                                {
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        // From here, a token with an unknown kid asks again (for the fetch after this one).
        auth.refetch
            .wanted
            .store(false, std::sync::atomic::Ordering::Relaxed);
        auth.refetch
            .forced
            .store(false, std::sync::atomic::Ordering::Relaxed);
        last = Some(Instant::now());
        let stats = auth.stats();
        let outcome = match fetch(&url).await {
            Ok(body) => keys::jwks(url.shown(), &body)
                .and_then(|got| {
                    let n = got.keys.len();
                    let changed = auth.install_fetched(got.keys)?;
                    Ok((n, changed, got.skipped))
                })
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("{}: {e}", url.shown())),
        };
        match outcome {
            Ok((n, changed, skipped)) => {
                stats
                    .jwks_fetches_ok
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                failures = 0;
                due = Instant::now() + max_age;
                if changed {
                    log::info!("--auth-jwks {}: {n} key(s) in use", url.shown());
                }
                log_skipped(url.shown(), &skipped);
            }
            Err(e) => {
                stats
                    .jwks_fetches_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                failures = failures.saturating_add(1);
                let wait = backoff(failures);
                due = Instant::now() + wait;
                log::warn!(
                    "JWKS fetch failed, keeping the keys held ({} of them), next try in \
                     {wait:?}: {e}",
                    auth.key_count()
                );
            }
        }
    }
}

/// The wait after `failures` failed fetches in a row.
fn backoff(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

/// The body of a GET of `url`, if it answers 200 within [`FETCH_TIMEOUT`] with at most
/// [`MAX_BODY`] bytes.
pub async fn fetch(url: &JwksUrl) -> Result<Bytes, String> {
    tokio::time::timeout(FETCH_TIMEOUT, get(url))
        .await
        .map_err(|_| format!("no complete answer within {FETCH_TIMEOUT:?}"))?
}

async fn get(url: &JwksUrl) -> Result<Bytes, String> {
    let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let path = url.uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = url.uri.authority().map_or("", |a| a.as_str());
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(
            http::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .header(
            http::header::USER_AGENT,
            concat!("corecast/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    if !url.https {
        return exchange(tcp, request).await;
    }
    let config = tokio::task::spawn_blocking(client_config)
        .await
        .map_err(|e| format!("loading the trusted roots: {e}"))??;
    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
        .map_err(|e| format!("not a TLS server name: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    exchange(tls, request).await
}

/// One request and its response's body over `io`.
async fn exchange<S>(io: S, request: http::Request<Empty<Bytes>>) -> Result<Bytes, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let body = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        if status != http::StatusCode::OK {
            return Err(format!("HTTP status {status} (redirects are not followed)"));
        }
        Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!("the body is larger than {MAX_BODY} bytes")
                } else {
                    format!("reading the body: {e}")
                }
            })
    };
    tokio::pin!(conn, body);
    // The connection may end (the server closed it) before the body's last bytes were
    // taken from it: then the body still completes on its own.
    let mut conn_done = false;
    loop {
        tokio::select! {
            r = &mut body => return r,
            c = &mut conn, if !conn_done => {
                c.map_err(|e| format!("HTTP: {e}"))?;
                conn_done = true;
            }
        }
    }
}

/// TLS for https: the system's trusted roots (rustls-native-certs reads SSL_CERT_FILE and
/// SSL_CERT_DIR when set), TLS 1.2 and 1.3, read again for every fetch so that a root store
/// update needs no restart.
fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no trusted root certificates found ({} error(s) reading them)",
            found.errors.len()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_shown_without_their_query() {
        let u = JwksUrl::parse("https://issuer.example/.well-known/jwks.json?key=s3cret").unwrap();
        assert_eq!(u.shown(), "https://issuer.example/.well-known/jwks.json");
        assert_eq!(
            (u.host.as_str(), u.port, u.https),
            ("issuer.example", 443, true)
        );
        assert!(!u.insecure());
        let u = JwksUrl::parse("http://[::1]:8080/jwks").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        assert!(!u.insecure(), "loopback");
        assert!(JwksUrl::parse("http://keys.example/jwks")
            .unwrap()
            .insecure());
        for bad in [
            "https://user:pw@issuer.example/jwks",
            "ftp://issuer.example/jwks",
            "https:///jwks",
            "/etc/jwks.json",
        ] {
            let e = JwksUrl::parse(bad).unwrap_err();
            assert!(!e.contains("pw@"), "{e}");
        }
    }

    #[test]
    fn retries_back_off_to_a_bound() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(40), RETRY_MAX);
    }
}
