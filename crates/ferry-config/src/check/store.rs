//! `[store]`: the backend of the router's control state. `sqlite` is the file
//! `[router] store` names (one or the other); `etcd` is the shared store the
//! router loads and watches (docs/control-plane.md), accepted only by a build
//! with etcd support.

use std::path::PathBuf;
use std::time::Duration;

use ferry_conf::SecretKeys;

use super::{Cx, Result};
use crate::raw::{RawStore, S};
use crate::{EtcdSettings, EtcdTls};

/// The lease a router registers under: a dead router's key is gone this long
/// after its last keep-alive.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
const LEASE_TTL: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(2)..=Duration::from_secs(3600);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ENDPOINTS: usize = 64;

impl Cx<'_> {
    /// Checks `[store]`; `router_store` is `[router] store`, which a SQLite
    /// `[store]` may replace. Returns the SQLite path and the etcd settings
    /// (at most one of them set).
    pub(super) fn store(
        &self,
        raw: Option<&RawStore>,
        router_store: Option<(&S<String>, PathBuf)>,
    ) -> Result<(Option<PathBuf>, Option<EtcdSettings>)> {
        let Some(s) = raw else {
            return Ok((router_store.map(|(_, p)| p), None));
        };
        let backend = s.backend.get_ref().as_str();
        let only = |key: &str, span: Option<std::ops::Range<usize>>| match span {
            Some(span) => Err(self.error(
                span,
                format!("store: {key} is an etcd setting, not one of backend = {backend:?}"),
            )),
            None => Ok(()),
        };
        match backend {
            "sqlite" => {
                let etcd_keys = [
                    ("endpoints", s.endpoints.as_ref().map(S::span)),
                    ("prefix", s.prefix.as_ref().map(S::span)),
                    ("user", s.user.as_ref().map(S::span)),
                    ("password_file", s.password_file.as_ref().map(S::span)),
                    ("ca_file", s.ca_file.as_ref().map(S::span)),
                    ("cert_file", s.cert_file.as_ref().map(S::span)),
                    ("key_file", s.key_file.as_ref().map(S::span)),
                    ("lease_ttl", s.lease_ttl.as_ref().map(S::span)),
                    ("request_timeout", s.request_timeout.as_ref().map(S::span)),
                    ("local_copy", s.local_copy.as_ref().map(S::span)),
                ];
                for (key, span) in etcd_keys {
                    only(key, span)?;
                }
                match (&s.path, router_store) {
                    (Some(p), Some((r, _))) => Err(self.error(
                        p.span(),
                        format!(
                            "store: path and [router] store (line {}) both name the SQLite file, keep one",
                            self.line_of(&r.span())
                        ),
                    )),
                    (Some(p), None) => Ok((Some(self.path("store: path", p)?), None)),
                    (None, Some((_, path))) => Ok((Some(path), None)),
                    (None, None) => Err(self.error(
                        s.backend.span(),
                        "store: backend = \"sqlite\" needs path (the SQLite file)",
                    )),
                }
            }
            "etcd" if !crate::ETCD_SUPPORTED => Err(self.error(
                s.backend.span(),
                "store: backend = \"etcd\": this ferry binary was built without etcd support \
                 (build it with the cargo feature `etcd`)",
            )),
            "etcd" => {
                if let Some(p) = &s.path {
                    return Err(self.error(
                        p.span(),
                        "store: path is for backend = \"sqlite\"; etcd's SQLite copy is local_copy",
                    ));
                }
                if let Some((r, _)) = router_store {
                    return Err(self.error(
                        r.span(),
                        "store: [router] store names a SQLite file while [store] backend = \"etcd\"; \
                         the etcd backend's SQLite copy is [store] local_copy",
                    ));
                }
                Ok((None, Some(self.etcd(s)?)))
            }
            other => Err(self.error(
                s.backend.span(),
                format!("store: backend {other:?} is not \"sqlite\" or \"etcd\""),
            )),
        }
    }

    fn path(&self, what: &str, p: &S<String>) -> Result<PathBuf> {
        if p.get_ref().is_empty() {
            return Err(self.error(p.span(), format!("{what} is an empty path")));
        }
        Ok(self.resolve(p.get_ref()))
    }

    fn etcd(&self, s: &RawStore) -> Result<EtcdSettings> {
        let endpoints =
            match &s.endpoints {
                None => return Err(self.error(
                    s.backend.span(),
                    "store: backend = \"etcd\" needs endpoints (e.g. [\"http://10.0.0.1:2379\"])",
                )),
                Some(list) if list.get_ref().is_empty() => {
                    return Err(self.error(list.span(), "store: endpoints is empty"))
                }
                Some(list) if list.get_ref().len() > MAX_ENDPOINTS => {
                    return Err(self.error(
                        list.span(),
                        format!("store: more than {MAX_ENDPOINTS} endpoints"),
                    ))
                }
                Some(list) => list.get_ref(),
            };
        let tls_wanted = s.ca_file.is_some();
        let mut out = Vec::new();
        for e in endpoints {
            out.push(self.endpoint(e, tls_wanted)?);
        }
        let prefix = match &s.prefix {
            None => "/ferry".to_string(),
            Some(p) => {
                let v = p.get_ref();
                let plain = v.bytes().all(|b| b.is_ascii_graphic());
                if !v.starts_with('/') || v.trim_end_matches('/').is_empty() || !plain {
                    return Err(self.error(
                        p.span(),
                        format!(
                            "store: prefix {v:?} must start with '/', name something below it \
                             and hold no spaces or control characters (e.g. \"/ferry\")"
                        ),
                    ));
                }
                v.trim_end_matches('/').to_string()
            }
        };
        let password = self.secret(SecretKeys {
            owner: "store",
            key: "password",
            inline: None,
            file: s.password_file.as_ref(),
            min_chars: 0,
        })?;
        let auth = match (&s.user, password) {
            (None, None) => None,
            (Some(u), Some(p)) if !u.get_ref().is_empty() => Some((u.get_ref().clone(), p)),
            (Some(u), Some(_)) => {
                return Err(self.error(u.span(), "store: user is empty"));
            }
            (Some(u), None) => {
                return Err(self.error(
                    u.span(),
                    "store: user without password_file (a file readable by its owner only)",
                ))
            }
            (None, Some(_)) => {
                let span = s.password_file.as_ref().map(S::span).unwrap_or(0..0);
                return Err(self.error(span, "store: password_file without user"));
            }
        };
        let tls = self.etcd_tls(s)?;
        let lease_ttl =
            self.duration("store: lease_ttl", s.lease_ttl.as_ref(), DEFAULT_LEASE_TTL)?;
        if let Some(v) = &s.lease_ttl {
            if !LEASE_TTL.contains(&lease_ttl) {
                return Err(self.error(
                    v.span(),
                    format!(
                        "store: lease_ttl {} is out of range 2s..=1h (a whole number of seconds)",
                        v.get_ref()
                    ),
                ));
            }
            if lease_ttl.subsec_nanos() != 0 {
                return Err(self.error(
                    v.span(),
                    "store: lease_ttl must be a whole number of seconds (etcd leases count seconds)",
                ));
            }
        }
        let request_timeout = self.positive_duration(
            "store: request_timeout",
            s.request_timeout.as_ref(),
            DEFAULT_REQUEST_TIMEOUT,
        )?;
        let local_copy = match &s.local_copy {
            Some(p) => Some(self.path("store: local_copy", p)?),
            None => None,
        };
        Ok(EtcdSettings {
            endpoints: out,
            prefix,
            auth,
            tls,
            lease_ttl,
            request_timeout,
            local_copy,
        })
    }

    /// `http://HOST:PORT` or `https://HOST:PORT` (the latter needs `ca_file`,
    /// and `ca_file` needs the latter: one scheme for the whole cluster).
    fn endpoint(&self, e: &S<String>, tls: bool) -> Result<String> {
        let v = e.get_ref();
        let (scheme, rest) = match v.split_once("://") {
            Some((s @ ("http" | "https"), rest)) => (s, rest),
            _ => {
                return Err(self.error(
                    e.span(),
                    format!("store: endpoint {v:?} is not http://HOST:PORT or https://HOST:PORT"),
                ))
            }
        };
        if let Err(why) = super::check_host_port(rest) {
            return Err(self.error(e.span(), format!("store: endpoint {v:?} {why}")));
        }
        match (scheme, tls) {
            ("https", false) => Err(self.error(
                e.span(),
                format!("store: endpoint {v:?} is https: set ca_file (the members' CA)"),
            )),
            ("http", true) => Err(self.error(
                e.span(),
                format!("store: endpoint {v:?} is plain http while ca_file is set: use https://"),
            )),
            _ => Ok(v.clone()),
        }
    }

    fn etcd_tls(&self, s: &RawStore) -> Result<Option<EtcdTls>> {
        // Pairs first, so a missing half is named before any file is read.
        match (&s.cert_file, &s.key_file) {
            (Some(c), None) => {
                return Err(self.error(c.span(), "store: cert_file without key_file"))
            }
            (None, Some(k)) => {
                return Err(self.error(k.span(), "store: key_file without cert_file"))
            }
            _ => {}
        }
        let key = self.secret(SecretKeys {
            owner: "store",
            key: "key",
            inline: None,
            file: s.key_file.as_ref(),
            min_chars: 0,
        })?;
        let cert = match &s.cert_file {
            Some(c) => Some(self.read_named_file("store: cert_file", c)?),
            None => None,
        };
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((c, k)),
            (Some(_), None) => {
                let span = s.cert_file.as_ref().map(S::span).unwrap_or(0..0);
                return Err(self.error(span, "store: cert_file without key_file"));
            }
            (None, Some(_)) => {
                let span = s.key_file.as_ref().map(S::span).unwrap_or(0..0);
                return Err(self.error(span, "store: key_file without cert_file"));
            }
        };
        match &s.ca_file {
            Some(ca) => Ok(Some(EtcdTls {
                ca: self.read_named_file("store: ca_file", ca)?,
                identity,
            })),
            None if identity.is_some() => {
                let span = s.cert_file.as_ref().map(S::span).unwrap_or(0..0);
                Err(self.error(
                    span,
                    "store: cert_file and key_file need ca_file (the members' CA)",
                ))
            }
            None => Ok(None),
        }
    }
}
