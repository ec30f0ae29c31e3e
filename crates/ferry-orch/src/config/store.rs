//! `[store]`: where the journal is kept. `sqlite` (the default) takes no
//! key; `etcd` takes the routers' connection keys (endpoints, prefix, user
//! and password_file, ca_file, cert_file and key_file), checked by the code
//! that checks a router's `[store]` (ferry-conf's `etcd`: same rules, same
//! messages), and the run's own: run, lease_ttl, request_timeout,
//! shared_records.

use std::ops::Range;
use std::time::Duration;

use ferry_conf::etcd::{EtcdKeys, Naming};

use super::check::Cx;
use super::raw::{RawStore, S};
use super::{EtcdSettings, StoreSettings};
use crate::error::{OrchError, Result};

impl Cx<'_> {
    /// `[store]`: `backend = "sqlite"` (the default, nothing else allowed) or
    /// `"etcd"` with its connection keys, run id and lease.
    pub(super) fn store(&self, raw: Option<&RawStore>) -> Result<StoreSettings> {
        let Some(st) = raw else {
            return Ok(StoreSettings::Sqlite);
        };
        match st.backend.get_ref().as_str() {
            "sqlite" => match etcd_keys(st).into_iter().flatten().next() {
                Some((key, span)) => Err(self.err(
                    span,
                    format!("store {key}: only with backend = \"etcd\" (the SQLite journal is --journal)"),
                )),
                None => Ok(StoreSettings::Sqlite),
            },
            "etcd" if !cfg!(feature = "etcd") => Err(self.err(
                st.backend.span(),
                "store backend \"etcd\": this ferry was built without etcd support (cargo feature `etcd`)",
            )),
            "etcd" => Ok(StoreSettings::Etcd(Box::new(self.etcd(st)?))),
            other => Err(self.err(
                st.backend.span(),
                format!("store backend {other:?}: expected \"sqlite\" or \"etcd\""),
            )),
        }
    }

    fn etcd(&self, st: &RawStore) -> Result<EtcdSettings> {
        let access = EtcdKeys {
            naming: Naming::Table("store"),
            endpoints: st.endpoints.as_ref(),
            prefix: st.prefix.as_ref(),
            missing_at: st.backend.span(),
            user: st.user.as_ref(),
            password_file: st.password_file.as_ref(),
            ca_file: st.ca_file.as_ref(),
            cert_file: st.cert_file.as_ref(),
            key_file: st.key_file.as_ref(),
        }
        .check(self.base())
        .map_err(|e| OrchError::from(self.source().locate(e)))?;
        let Some(run) = &st.run else {
            return Err(self.err(
                st.backend.span(),
                "store backend \"etcd\" needs run = \"ID\" (the journal goes under PREFIX/runs/ID/)",
            ));
        };
        let id = run.get_ref();
        let ok = !id.is_empty()
            && id.len() <= 128
            && !id.bytes().all(|b| b == b'.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(self.err(
                run.span(),
                format!("store run {id:?}: 1 to 128 letters, digits, '.', '_' or '-'"),
            ));
        }
        let lease_ttl = self.duration(&st.lease_ttl, Duration::from_secs(10), "store lease_ttl")?;
        if lease_ttl < Duration::from_secs(1) || lease_ttl > Duration::from_secs(3600) {
            let span = st
                .lease_ttl
                .as_ref()
                .map_or(st.backend.span(), |s| s.span());
            return Err(self.err(span, "store lease_ttl: between 1s and 1h"));
        }
        Ok(EtcdSettings {
            endpoints: access.endpoints,
            prefix: access.prefix,
            auth: access.auth,
            tls: access.tls,
            run: id.clone(),
            lease_ttl,
            request_timeout: self.duration(
                &st.request_timeout,
                Duration::from_secs(5),
                "store request_timeout",
            )?,
            shared_records: st.shared_records.as_ref().is_some_and(|s| *s.get_ref()),
        })
    }
}

/// The keys only etcd takes, with their spans (those present).
fn etcd_keys(st: &RawStore) -> [Option<(&'static str, Range<usize>)>; 11] {
    let at = |key, v: Option<&S<String>>| v.map(|v| (key, v.span()));
    [
        st.endpoints.as_ref().map(|e| ("endpoints", e.span())),
        at("prefix", st.prefix.as_ref()),
        at("user", st.user.as_ref()),
        at("password_file", st.password_file.as_ref()),
        at("ca_file", st.ca_file.as_ref()),
        at("cert_file", st.cert_file.as_ref()),
        at("key_file", st.key_file.as_ref()),
        at("run", st.run.as_ref()),
        at("lease_ttl", st.lease_ttl.as_ref()),
        at("request_timeout", st.request_timeout.as_ref()),
        st.shared_records
            .as_ref()
            .map(|e| ("shared_records", e.span())),
    ]
}
