//! `[[listener]]` and `[tls]`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use super::{Cx, Result};
use crate::raw::{RawListener, RawTls};
use crate::{ListenerSpec, TlsSettings};

/// Parsed keys kept by default: every busy site of a large router, a few MB.
const DEFAULT_TLS_KEY_CACHE: i64 = 10_000;
const DEFAULT_TLS_SESSION_CACHE: i64 = 100_000;
const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Cx<'_> {
    pub(super) fn listeners(&self, raw: Vec<RawListener>) -> Result<Vec<ListenerSpec>> {
        if raw.is_empty() {
            return Err(self.error(
                0..0,
                "no [[listener]]: at least one listen address is needed",
            ));
        }
        let mut seen: HashMap<SocketAddr, Range<usize>> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for l in raw {
            let listen = self.socket_addr("listener listen", &l.listen)?;
            if let Some(first) = seen.get(&listen) {
                return Err(self.error(
                    l.listen.span(),
                    format!(
                        "listener {listen} is defined twice (first at line {})",
                        self.line_of(first)
                    ),
                ));
            }
            seen.insert(listen, l.listen.span());
            let proxy_protocol = match l.proxy_protocol {
                // Requiring PROXY headers from untrusted peers would let any
                // client claim any source address.
                Some(p) if *p.get_ref() && !l.trusted => {
                    return Err(self.error(
                        p.span(),
                        format!("listener {listen}: proxy_protocol = true needs trusted = true"),
                    ))
                }
                Some(p) => p.into_inner(),
                None => false,
            };
            out.push(ListenerSpec {
                listen,
                trusted: l.trusted,
                proxy_protocol,
                tls: l.tls.as_ref().is_some_and(|t| *t.get_ref()),
                max_connections: self.connection_cap(
                    &format!("listener {listen}: max_connections"),
                    l.max_connections.as_ref(),
                )?,
            });
        }
        Ok(out)
    }

    /// `[tls]`, and every `tls = true` listener needs it.
    pub(super) fn tls(
        &self,
        raw: Option<&RawTls>,
        tls_listeners: &[Range<usize>],
    ) -> Result<Option<TlsSettings>> {
        let Some(t) = raw else {
            return match tls_listeners.first() {
                Some(span) => Err(self.error(
                    span.clone(),
                    "listener has tls = true but there is no [tls] section (cert_dir)",
                )),
                None => Ok(None),
            };
        };
        if t.cert_dir.get_ref().is_empty() {
            return Err(self.error(t.cert_dir.span(), "tls cert_dir is an empty path"));
        }
        let cert_dir = self.resolve(t.cert_dir.get_ref());
        if !cert_dir.is_dir() {
            return Err(self.error(
                t.cert_dir.span(),
                format!(
                    "tls cert_dir {:?}: {} is not a directory",
                    t.cert_dir.get_ref(),
                    cert_dir.display()
                ),
            ));
        }
        let default_cert = match &t.default_cert {
            Some(d) if d.get_ref().is_empty() => {
                return Err(self.error(
                    d.span(),
                    "tls default_cert is empty (leave it out for no default)",
                ))
            }
            Some(d) => {
                let file = cert_dir.join(format!("{}.pem", d.get_ref()));
                if d.get_ref().contains('/') || !file.is_file() {
                    return Err(self.error(
                        d.span(),
                        format!(
                            "tls default_cert {:?}: no {} (the name of a certificate file, without .pem)",
                            d.get_ref(),
                            file.display()
                        ),
                    ));
                }
                Some(d.get_ref().clone())
            }
            None => None,
        };
        Ok(Some(TlsSettings {
            cert_dir,
            default_cert,
            key_cache: self.ranged(
                "tls key_cache",
                t.key_cache.as_ref(),
                1..=100_000_000,
                DEFAULT_TLS_KEY_CACHE,
            )? as usize,
            session_cache: self.ranged(
                "tls session_cache",
                t.session_cache.as_ref(),
                0..=100_000_000,
                DEFAULT_TLS_SESSION_CACHE,
            )? as usize,
            tickets: t.tickets.unwrap_or(true),
            handshake_timeout: self.positive_duration(
                "tls handshake_timeout",
                t.handshake_timeout.as_ref(),
                DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            )?,
        }))
    }
}
