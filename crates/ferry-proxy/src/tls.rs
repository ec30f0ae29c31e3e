//! TLS on traffic listeners (`tls = true`): the handshake, bounded in time,
//! and the ALPN result that tells hyper which protocol to speak. The
//! certificates (which one for which SNI name, the key cache, run-time
//! changes) are `ferry_tls::CertStore`'s business.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_config::TlsSettings;
use ferry_tls::{CertStore, StoreOptions};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::stats::TlsCounters;
use crate::ProxyError;

/// The TLS side of the router: one per config, swapped whole by a reload.
pub(crate) struct TlsState {
    pub store: Arc<CertStore>,
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    /// `session_cache` and `tickets` this state was built with.
    resumption: (usize, bool),
}

impl TlsState {
    /// Indexes the certificate directory. `previous` is the state a reload
    /// replaces: its session ticket keys and session cache are kept, so clients
    /// resume their sessions across the reload.
    pub fn open(s: &TlsSettings, previous: Option<&TlsState>) -> Result<TlsState, ProxyError> {
        let store = Arc::new(CertStore::open(&StoreOptions {
            dir: s.cert_dir.clone(),
            default_cert: s.default_cert.clone(),
            key_cache: s.key_cache,
        })?);
        let mut config = ferry_tls::server_config(Arc::clone(&store), s.session_cache, s.tickets)?;
        // Only when resumption is configured the same way: a reload that
        // turns tickets or the cache off must take effect.
        if let Some(prev) = previous.filter(|p| p.resumption == (s.session_cache, s.tickets)) {
            // Arc::make_mut clones nothing here: `config` has no other owner yet.
            let c = Arc::make_mut(&mut config);
            c.ticketer = Arc::clone(&prev.config.ticketer);
            c.session_storage = Arc::clone(&prev.config.session_storage);
        }
        Ok(TlsState {
            store,
            config,
            handshake_timeout: s.handshake_timeout,
            resumption: (s.session_cache, s.tickets),
        })
    }
}

/// What ALPN settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    H2,
    /// `http/1.1`, or a client that offered no ALPN at all.
    Http1,
}

/// The window of `ferry_tls_certificates_expiring`: two weeks leave time to
/// renew by hand when automation failed.
const EXPIRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);

/// Renders the certificate store's gauges and counters.
pub(crate) fn render_store(store: &CertStore, out: &mut String) {
    use std::fmt::Write;
    let s = store.stats();
    // Expiry: counts and the earliest date, never one series per certificate
    // (a router may hold millions).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let e = store.expiry(now, EXPIRY_WINDOW.as_secs());
    let _ = writeln!(out, "# HELP ferry_tls_certificates_expired Certificates whose notAfter has passed (handshakes with them fail at clients).\n# TYPE ferry_tls_certificates_expired gauge\nferry_tls_certificates_expired {}", e.expired);
    let _ = writeln!(out, "# HELP ferry_tls_certificates_expiring Certificates that expire within 14 days.\n# TYPE ferry_tls_certificates_expiring gauge\nferry_tls_certificates_expiring {}", e.expiring);
    if let Some(t) = e.earliest {
        let _ = writeln!(out, "# HELP ferry_tls_certificate_earliest_expiry_timestamp_seconds The earliest notAfter of all certificates.\n# TYPE ferry_tls_certificate_earliest_expiry_timestamp_seconds gauge\nferry_tls_certificate_earliest_expiry_timestamp_seconds {t}");
    }
    let gauges = [
        (
            "ferry_tls_certificates",
            "Certificates indexed.",
            s.certificates as u64,
        ),
        (
            "ferry_tls_cached_keys",
            "Parsed private keys in the key cache.",
            s.cached_keys as u64,
        ),
        (
            "ferry_tls_key_cache_capacity",
            "Most parsed keys the cache keeps.",
            s.key_cache_capacity as u64,
        ),
        (
            "ferry_tls_index_bytes",
            "Approximate heap bytes of the certificate name index.",
            s.index_bytes as u64,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let counters = [
        (
            "ferry_tls_key_cache_hits_total",
            "Handshakes whose key was in the cache.",
            s.cache_hits,
        ),
        (
            "ferry_tls_key_loads_total",
            "Keys read and parsed from their file.",
            s.key_loads,
        ),
        (
            "ferry_tls_key_load_failures_total",
            "Keys that could not be loaded (handshake failed).",
            s.key_load_failures,
        ),
        (
            "ferry_tls_no_certificate_total",
            "Handshakes for a name no certificate answers, with no default.",
            s.no_certificate,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
}

/// The handshake in two parts: the ClientHello first; then, when the key
/// for its server name is not parsed yet, the key file is read and parsed
/// on the blocking pool (a cold key means a disk read, and on one runtime
/// thread that would stall every other connection); then the rest, whose
/// certificate resolver finds the key cached.
async fn accept<S>(tls: &TlsState, stream: S) -> std::io::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let sni = start.client_hello().server_name().map(str::to_owned);
    if !tls.store.is_cached(sni.as_deref()) {
        let store = Arc::clone(&tls.store);
        // A failed load is counted by the store; the handshake then fails
        // in the resolver as it would have.
        let _ = tokio::task::spawn_blocking(move || store.key_for(sni.as_deref())).await;
    }
    start.into_stream(Arc::clone(&tls.config)).await
}

/// Runs the server side of the handshake, for at most the configured time.
/// `None`: the client failed or took too long (counted, logged at debug).
pub(crate) async fn handshake<S>(
    tls: &TlsState,
    stream: S,
    peer: std::net::SocketAddr,
    counters: &TlsCounters,
) -> Option<(TlsStream<S>, Alpn)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(tls.handshake_timeout, accept(tls, stream)).await {
        Ok(Ok(s)) => {
            counters.ok.fetch_add(1, Ordering::Relaxed);
            let (_, conn) = s.get_ref();
            let alpn = if conn.alpn_protocol() == Some(ferry_tls::ALPN_H2) {
                counters.alpn_h2.fetch_add(1, Ordering::Relaxed);
                Alpn::H2
            } else {
                Alpn::Http1
            };
            if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
                counters.tls13.fetch_add(1, Ordering::Relaxed);
            }
            if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                counters.resumed.fetch_add(1, Ordering::Relaxed);
            }
            Some((s, alpn))
        }
        Ok(Err(e)) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            counters.timeout.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(?peer, "TLS handshake timed out");
            None
        }
    }
}
