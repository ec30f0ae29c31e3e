//! Writes: plain puts and deletes in as few transactions as the limits
//! allow, and the epoch-judged site writes (each chunk read, judged by the
//! epoch rule and written in one transaction that compares what was read).

use std::sync::atomic::Ordering;

use etcd_client::{Compare, CompareOp, DeleteOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use ferry_model::{ChangeVerdict, Epoch, SiteRecord};

use super::client::partial;
use super::{Applied, Inner};
use crate::StoreError;

/// Attempts of one chunk of [`EtcdStore::apply_sites`] when another writer keeps
/// changing the same keys between our read and our write.
const APPLY_ATTEMPTS: u32 = 16;

/// One planned write of [`Inner::apply_sites`]: the records of one chunk after
/// judging, and the mod revisions they were judged against.
struct Judged {
    /// `(key, mod_revision seen (0: absent))` of every host of the chunk.
    pub(super) seen: Vec<(String, i64)>,
    /// `(key, value)` to write.
    pub(super) puts: Vec<(String, String)>,
    pub(super) unchanged: usize,
    pub(super) revision: i64,
}

impl Inner {
    /// Puts (`Some(value)`) and deletes (`None`) in as few transactions as the
    /// limits allow, in order. Nothing is judged.
    pub(super) async fn write_chunked(
        &self,
        op: &'static str,
        ops: Vec<(String, Option<String>)>,
    ) -> Result<(), StoreError> {
        let chunks = self.chunks(&ops, |(k, v)| k.len() + v.as_ref().map_or(0, String::len));
        let total = ops.len();
        let mut written = 0;
        for chunk in chunks {
            let txn_ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => TxnOp::put(k.as_str(), v.as_str(), None),
                    None => TxnOp::delete(k.as_str(), None::<DeleteOptions>),
                })
                .collect();
            if let Err(e) = self.txn(op, Txn::new().and_then(txn_ops)).await {
                return Err(partial(written, total, e));
            }
            written += chunk.len();
        }
        Ok(())
    }

    /// Cuts `items` into runs that fit one transaction each.
    pub(super) fn chunks<'a, T>(&self, items: &'a [T], size: impl Fn(&T) -> usize) -> Vec<&'a [T]> {
        let max_ops = self.cfg.max_txn_ops.max(1);
        let mut out = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, item) in items.iter().enumerate() {
            let n = size(item);
            if i > start && (i - start >= max_ops || bytes + n > self.cfg.max_txn_bytes) {
                out.push(&items[start..i]);
                (start, bytes) = (i, 0);
            }
            bytes += n;
        }
        if start < items.len() {
            out.push(&items[start..]);
        }
        out
    }

    pub(super) async fn apply_sites(
        &self,
        records: Vec<(SiteRecord, String)>,
    ) -> Result<Applied, StoreError> {
        // All records of a host in one chunk, in their order: the chunks are cut
        // over hosts, each carrying its records.
        let mut by_host: Vec<(String, Vec<(SiteRecord, String)>)> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = Default::default();
        for (record, value) in records {
            let key = self.keys.site(record.host.as_str());
            let i = *index.entry(key.clone()).or_insert_with(|| {
                by_host.push((key, Vec::new()));
                by_host.len() - 1
            });
            by_host[i].1.push((record, value));
        }
        let chunks = self.chunks(&by_host, |(k, rs)| {
            k.len() + rs.last().map_or(0, |(_, v)| v.len())
        });
        let mut applied = Applied {
            revision: 0,
            changed: 0,
            unchanged: 0,
        };
        if chunks.len() > 1 {
            // Judge the whole batch before writing any of it.
            for chunk in &chunks {
                self.judge(chunk).await?;
            }
        }
        let total: usize = by_host.len();
        let mut written = 0;
        for chunk in &chunks {
            let done = match self.apply_chunk(chunk).await {
                Ok(done) => done,
                Err(e) => return Err(partial(written, total, e)),
            };
            written += chunk.len();
            applied.revision = applied.revision.max(done.revision);
            applied.changed += done.puts.len();
            applied.unchanged += done.unchanged;
        }
        Ok(applied)
    }

    /// Judges one chunk and writes it in one transaction guarded by the revisions
    /// it was judged at; judges again when another writer got there first.
    async fn apply_chunk(
        &self,
        chunk: &[(String, Vec<(SiteRecord, String)>)],
    ) -> Result<Judged, StoreError> {
        for _ in 0..APPLY_ATTEMPTS {
            let judged = self.judge(chunk).await?;
            if judged.puts.is_empty() {
                return Ok(judged);
            }
            let compares: Vec<Compare> = judged
                .seen
                .iter()
                .map(|(k, rev)| Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev))
                .collect();
            let puts: Vec<TxnOp> = judged
                .puts
                .iter()
                .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                .collect();
            let resp = self
                .txn("write sites", Txn::new().when(compares).and_then(puts))
                .await?;
            if resp.succeeded() {
                let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                return Ok(Judged { revision, ..judged });
            }
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        Err(StoreError::Contended {
            op: "write sites",
            attempts: APPLY_ATTEMPTS,
        })
    }

    /// Reads the chunk's keys at one revision (one transaction of gets) and
    /// applies the epoch rule record by record.
    async fn judge(
        &self,
        chunk: &[(String, Vec<(SiteRecord, String)>)],
    ) -> Result<Judged, StoreError> {
        let gets: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, _)| TxnOp::get(k.as_str(), None))
            .collect();
        let resp = self
            .txn("read sites to judge", Txn::new().and_then(gets))
            .await?;
        let header_revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let stored = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let mut judged = Judged {
            seen: Vec::with_capacity(chunk.len()),
            puts: Vec::new(),
            unchanged: 0,
            revision: header_revision,
        };
        for ((key, records), kv) in chunk.iter().zip(stored) {
            let mut current = kv.as_ref().map(|kv| self.decode_site(kv)).transpose()?;
            judged
                .seen
                .push((key.clone(), kv.as_ref().map_or(0, KeyValue::mod_revision)));
            let mut put = None;
            for (record, value) in records {
                let verdict = current
                    .as_ref()
                    .map_or(ChangeVerdict::Apply, |c| c.judge(record));
                match verdict {
                    ChangeVerdict::Apply => {
                        current = Some(record.clone());
                        put = Some(value);
                    }
                    ChangeVerdict::NoOp => judged.unchanged += 1,
                    ChangeVerdict::Stale => {
                        return Err(StoreError::Stale {
                            host: record.host.clone(),
                            stored: current.map_or(Epoch(0), |c| c.epoch),
                            incoming: record.epoch,
                        })
                    }
                }
            }
            if let Some(value) = put {
                judged.puts.push((key.clone(), value.clone()));
            }
        }
        // Nothing to write: what a writer then waits for (its watch applying
        // the records as stored) is their newest revision. The read's own
        // revision may be a registration's, which no router's watch applies
        // (they move no site): waiting for it lasted until the next site
        // change or the deadline.
        if let Some(newest) = judged.seen.iter().map(|(_, rev)| *rev).max() {
            if newest > 0 {
                judged.revision = newest;
            }
        }
        Ok(judged)
    }
}
