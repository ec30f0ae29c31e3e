//! `[store]`: the backend of the router's control state. `sqlite` is the file
//! `[router] store` names (one or the other); `etcd` is the shared store the
//! router loads and watches (docs/control-plane.md), accepted only by a build
//! with etcd support.

use std::path::PathBuf;
use std::time::Duration;

use ferry_conf::etcd::{EtcdKeys, Naming};

use super::{Cx, Result};
use crate::raw::{RawStore, S};
use crate::EtcdSettings;

/// The lease a router registers under: a dead router's key is gone this long
/// after its last keep-alive.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
const LEASE_TTL: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(2)..=Duration::from_secs(3600);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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
        // Endpoints, prefix, user and password, TLS: the orchestrator's `[store]`
        // names the same keys, checked by the same code.
        let access = EtcdKeys {
            naming: Naming::Table("store"),
            endpoints: s.endpoints.as_ref(),
            prefix: s.prefix.as_ref(),
            missing_at: s.backend.span(),
            user: s.user.as_ref(),
            password_file: s.password_file.as_ref(),
            ca_file: s.ca_file.as_ref(),
            cert_file: s.cert_file.as_ref(),
            key_file: s.key_file.as_ref(),
        }
        .check(self.base)
        .map_err(|e| self.src.locate(e))?;
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
            endpoints: access.endpoints,
            prefix: access.prefix,
            auth: access.auth.map(|a| (a.user, a.password)),
            tls: access.tls,
            lease_ttl,
            request_timeout,
            local_copy,
        })
    }
}
