//! TLS termination for `ferry proxy`: which certificate answers which name.
//!
//! - [`CertStore`]: the certificates of a directory of PEM files (chain and
//!   key in `NAME.pem`, or the key beside it in `NAME.key`), indexed at start
//!   by the DNS names of each certificate (exact names and `*.` wildcards) plus
//!   an optional default. Keys are parsed only when a handshake needs them and
//!   kept in a bounded LRU cache, so a router for millions of sites holds the
//!   names of every certificate but the parsed keys of the busy ones only.
//!   [`CertStore::put`] and [`CertStore::remove`] add, replace and remove a
//!   certificate at run time; a pair whose key does not match its certificate
//!   is refused and nothing changes. It is the rustls certificate resolver.
//! - [`server_config`]: the rustls server settings every listener shares:
//!   TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, session tickets and a session
//!   cache shared by all connections of the process.
//! - [`CertPair`]: a parsed and checked chain + key (what the admin API hands in).
//!
//! No tokio here: the store is plain data behind locks, used from the
//! handshake (which rustls drives synchronously) and from the admin API.

#![forbid(unsafe_code)]

mod index;
mod names;
mod pair;
mod store;
mod validity;

use std::path::PathBuf;
use std::sync::Arc;

pub use index::Expiry;
pub use names::check_cert_name;
pub use pair::CertPair;
pub use store::{CertInfo, CertStore, StoreOptions, StoreStats};

/// ALPN protocol ids, in the server's order of preference.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why a certificate could not be indexed, loaded, added or removed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate directory {}: {source}", path.display())]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate {name} ({}): {source}", path.display())]
    ReadFile {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate {name}: {problem}")]
    Invalid { name: String, problem: String },
    #[error("certificate name {name:?}: {problem}")]
    BadName { name: String, problem: &'static str },
    #[error("default certificate {name:?}: no {name}.pem in {}", dir.display())]
    NoDefault { name: String, dir: PathBuf },
    #[error("no certificate named {name:?}")]
    NotFound { name: String },
    #[error("certificate {name} is the default certificate: name another default first")]
    IsDefault { name: String },
    #[error("certificate {name}: cannot write {}: {source}", path.display())]
    Write {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS settings: {0}")]
    Settings(rustls::Error),
}

/// The rustls server settings shared by every TLS listener of the process.
///
/// `session_cache` bounds the TLS 1.2 session-id cache (0: none); with
/// `tickets`, TLS 1.3 (and 1.2 clients that ask) resume with stateless
/// tickets from one ticketer, so any connection of this process can resume
/// any other's session. Without either, every handshake is a full one.
pub fn server_config(
    store: Arc<CertStore>,
    session_cache: usize,
    tickets: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = store.provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Settings)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    config.session_storage = if session_cache == 0 {
        Arc::new(rustls::server::NoServerSessionStorage {})
    } else {
        rustls::server::ServerSessionMemoryCache::new(session_cache)
    };
    if tickets {
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Settings)?;
        // TLS 1.3 tickets sent after the handshake: one is enough for a
        // browser that reconnects, and each costs an encryption per handshake.
        config.send_tls13_tickets = 1;
    } else {
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod testutil;
