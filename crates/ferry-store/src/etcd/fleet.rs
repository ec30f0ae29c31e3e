//! The routers of a prefix, as the orchestrator and `ferry ctl routers` see
//! them (docs/control-plane.md, "Who must acknowledge a freeze"):
//!
//! ```text
//! P/routers/<name>          registration, under the router's lease
//! P/fleet/seen/<name>       {"first_ms": T}: the router registered once (no lease)
//! P/fleet/retired/<name>    {"at_ms": T, "by": "..."}: an operator retired it
//! ```
//!
//! A seen router stays seen until it is retired: one that is gone (killed,
//! partitioned, its lease expired) may still serve from its old table, so a
//! freeze waits for it. The values are opaque here; the orchestrator reads them.

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};

use super::keys::unescape;
use super::EtcdStore;
use crate::StoreError;

/// Every router of the prefix, read at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    /// The revision the three ranges were read at.
    pub revision: i64,
    /// `P/routers/<name>`: name and registration value, by name.
    pub registered: Vec<(String, String)>,
    /// `P/fleet/seen/<name>`: name and value, by name.
    pub seen: Vec<(String, String)>,
    /// `P/fleet/retired/<name>`: name and value, by name.
    pub retired: Vec<(String, String)>,
}

impl EtcdStore {
    /// Registrations, seen and retired routers, in one transaction (one revision).
    pub fn fleet(&self) -> Result<Fleet, StoreError> {
        let ranges = [
            format!("{}/routers/", self.inner.keys.prefix),
            format!("{}/fleet/seen/", self.inner.keys.prefix),
            format!("{}/fleet/retired/", self.inner.keys.prefix),
        ];
        self.run(move |inner| async move {
            let gets: Vec<TxnOp> = ranges
                .iter()
                .map(|p| TxnOp::get(p.as_str(), Some(GetOptions::new().with_prefix())))
                .collect();
            let resp = inner
                .txn("read the routers", Txn::new().and_then(gets))
                .await?;
            let mut lists: Vec<Vec<(String, String)>> = Vec::with_capacity(3);
            for (r, prefix) in resp.op_responses().into_iter().zip(&ranges) {
                let TxnOpResponse::Get(g) = r else {
                    return Err(super::client::corrupt(
                        "the routers' keys",
                        "etcd answered a range read with something else",
                    ));
                };
                let mut list = Vec::with_capacity(g.kvs().len());
                for kv in g.kvs() {
                    let key = String::from_utf8_lossy(kv.key());
                    let name = unescape(key.strip_prefix(prefix.as_str()).unwrap_or(&key));
                    list.push((name, String::from_utf8_lossy(kv.value()).into_owned()));
                }
                list.sort();
                lists.push(list);
            }
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            let retired = lists.pop().unwrap_or_default();
            let seen = lists.pop().unwrap_or_default();
            let registered = lists.pop().unwrap_or_default();
            Ok(Fleet {
                revision,
                registered,
                seen,
                retired,
            })
        })
    }

    /// Records `name` as seen (`value` is kept from the first time: a key
    /// already there is left as it is) and removes its retirement, in one
    /// transaction. Answers whether a retirement was removed (the router is
    /// back). A router calls it before each new registration; the
    /// orchestrator for every registration it reads.
    pub fn note_seen(&self, name: &str, value: &str) -> Result<bool, StoreError> {
        let seen = self.inner.keys.fleet_seen(name);
        let retired = self.inner.keys.fleet_retired(name);
        let value = value.to_string();
        self.run(move |inner| async move {
            let put = Txn::new()
                .when([Compare::create_revision(seen.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(seen.as_str(), value.as_str(), None)]);
            inner.txn("record a router as seen", put).await?;
            let resp = inner
                .call("clear a router's retirement", |mut c| {
                    let key = retired.clone();
                    async move { c.delete(key, None::<DeleteOptions>).await }
                })
                .await?;
            Ok(resp.deleted() > 0)
        })
    }

    /// Writes `P/fleet/retired/<name>` = `value` (overwrites an older one).
    pub fn retire_router(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let key = self.inner.keys.fleet_retired(name);
        let value = value.to_string();
        self.run(move |inner| async move {
            inner
                .call("retire a router", |mut c| {
                    let (key, value) = (key.clone(), value.clone());
                    async move { c.put(key, value, None).await }
                })
                .await
                .map(drop)
        })
    }
}

/// Site reads per transaction (etcd's default `--max-txn-ops` is 128).
const SITES_PER_TXN: usize = 128;

impl EtcdStore {
    /// The newest revision at which one of `hosts`' records was written (0:
    /// none is in etcd). A router whose applied revision reached it holds
    /// every one of those records as etcd does now. The cluster's revision
    /// would not do: registrations move it too, and a router applies no
    /// revision that touched no site, so it would never reach it.
    pub fn sites_revision(&self, hosts: &[String]) -> Result<i64, StoreError> {
        let keys: Vec<String> = hosts.iter().map(|h| self.inner.keys.site(h)).collect();
        self.run(move |inner| async move {
            let mut newest = 0;
            for chunk in keys.chunks(SITES_PER_TXN) {
                let gets: Vec<TxnOp> = chunk
                    .iter()
                    .map(|k| TxnOp::get(k.as_str(), Some(GetOptions::new().with_keys_only())))
                    .collect();
                let resp = inner
                    .txn("read the sites' revisions", Txn::new().and_then(gets))
                    .await?;
                for r in resp.op_responses() {
                    if let TxnOpResponse::Get(g) = r {
                        newest = g
                            .kvs()
                            .iter()
                            .map(|kv| kv.mod_revision())
                            .fold(newest, i64::max);
                    }
                }
            }
            Ok(newest)
        })
    }
}
