//! The journal kept in etcd (cargo feature `etcd`): the same rows and hash
//! chain as the SQLite file, under `P/runs/<id>/`, so that another machine
//! can take a run over.
//!
//! ```text
//! P/runs/<id>/format             "<application_id> <schema_version>" (the kind's)
//! P/runs/<id>/run                {"row": [...], "hash": "<hex>"}
//! P/runs/<id>/head               {"seq": N, "hash": "<hex>"}
//! P/runs/<id>/journal/<seq>      {"at_ms": T, "row": [...], "hash": "<hex>"}  seq zero-padded to 20 digits
//! P/runs/<id>/lock               the runner's lease (lease.rs)
//! ```
//!
//! A row is the kind's cells as JSON (`null`, a number, a string; a blob as
//! `{"blob": "<hex>"}`, a real as `{"real": x}`), hashed by the kind's own
//! functions exactly as in SQLite. Every write is one transaction that
//! compares the run's fencing token (the lock key's `create_revision`,
//! [`Fence`]); an append also requires that `journal/<seq>` does not exist
//! and that `head` is the one it chained on, and writes the event and the
//! new head together. So two writers can never both append, and a runner
//! whose lease ended can append nothing. Reads take every key of the run at
//! one revision and check the chain with [`verify_chain`], the SQLite
//! journal's check: the same damage is named the same way.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp};
use ferry_store::EtcdStore;
use parking_lot::Mutex;
use rusqlite::types::Value;
use serde_json::{json, Value as Json};

use crate::error::{Error, ErrorKind};
use crate::kind::{now_ms, verify_chain, Kind, Record, Row, StoredEvent};
use crate::lease::{read_holder, run_base, Fence, Holder};

/// Keys read per page.
const PAGE: i64 = 1000;

/// The head a writer chains its next event on.
#[derive(Clone)]
struct Head {
    seq: i64,
    hash: Vec<u8>,
    /// The head key's `mod_revision` (0: no run yet).
    revision: i64,
}

/// Every key of a run read at one revision.
#[derive(Default)]
struct Read {
    format: Option<String>,
    run: Option<Json>,
    head: Option<(Json, i64)>,
    /// (seq from the key, value)
    events: Vec<(Result<i64, String>, Json)>,
}

/// One run's journal in etcd.
pub(crate) struct EtcdJournal<K: Kind> {
    store: Arc<EtcdStore>,
    base: String,
    path: PathBuf,
    /// None: a read-only handle.
    fence: Option<Fence>,
    head: Mutex<Option<Head>>,
    kind: PhantomData<fn() -> K>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn row_json(row: &[Value]) -> Json {
    Json::Array(
        row.iter()
            .map(|v| match v {
                Value::Null => Json::Null,
                Value::Integer(i) => json!(i),
                Value::Real(f) => json!({ "real": f }),
                Value::Text(t) => json!(t),
                Value::Blob(b) => json!({ "blob": hex(b) }),
            })
            .collect(),
    )
}

/// A row back from JSON; a cell of no known shape is an error (the caller
/// names the key).
fn json_row(v: &Json) -> Result<Row, String> {
    let cells = v.as_array().ok_or("row is not a list")?;
    cells
        .iter()
        .map(|c| match c {
            Json::Null => Ok(Value::Null),
            Json::String(s) => Ok(Value::Text(s.clone())),
            Json::Number(n) => n
                .as_i64()
                .map(Value::Integer)
                .ok_or("a cell is not an integer".into()),
            Json::Object(o) => match (o.get("real"), o.get("blob")) {
                (Some(r), None) => r.as_f64().map(Value::Real).ok_or("bad real cell".into()),
                (None, Some(Json::String(b))) => {
                    unhex(b).map(Value::Blob).ok_or("bad blob cell".into())
                }
                _ => Err("unknown cell".into()),
            },
            _ => Err("unknown cell".to_string()),
        })
        .collect()
}

fn hash_of(v: &Json) -> Vec<u8> {
    v.get("hash")
        .and_then(Json::as_str)
        .and_then(unhex)
        .unwrap_or_default()
}

fn seq_key(base: &str, seq: i64) -> String {
    format!("{base}/journal/{seq:020}")
}

impl<K: Kind> EtcdJournal<K> {
    fn new(
        store: Arc<EtcdStore>,
        run: &str,
        fence: Option<Fence>,
    ) -> Result<EtcdJournal<K>, Error> {
        let base = run_base(&store, run)?;
        Ok(EtcdJournal {
            path: PathBuf::from(format!("etcd:{base}")),
            store,
            base,
            fence,
            head: Mutex::new(None),
            kind: PhantomData,
        })
    }

    fn err(&self, kind: ErrorKind) -> Error {
        Error {
            path: self.path.clone(),
            kind,
        }
    }

    fn damaged(&self, m: impl Into<String>) -> Error {
        self.err(ErrorKind::Damaged(m.into()))
    }

    fn etcd(&self) -> impl Fn(ferry_store::StoreError) -> Error + '_ {
        |e| self.err(ErrorKind::Etcd(e.to_string()))
    }

    fn writer_fence(&self) -> Result<&Fence, Error> {
        let f = self
            .fence
            .as_ref()
            .ok_or_else(|| self.err(ErrorKind::Etcd("a read-only handle cannot write".into())))?;
        // No local check of the lease here: the compare in etcd decides, and
        // names who holds the run now.
        Ok(f)
    }

    fn format_value() -> String {
        format!("{} {}", K::APPLICATION_ID, K::SCHEMA_VERSION)
    }

    /// Runs a guarded transaction; on a failed compare answers who holds
    /// the lock now (LostLease) unless the lock is still ours (then `other`).
    fn guarded(
        &self,
        op: &'static str,
        compares: Vec<Compare>,
        puts: Vec<TxnOp>,
        other: impl FnOnce() -> ErrorKind,
    ) -> Result<i64, Error> {
        let fence = self.writer_fence()?;
        let mut when = vec![fence.compare()];
        when.extend(compares);
        let txn = Txn::new()
            .when(when)
            .and_then(puts)
            .or_else([TxnOp::get(fence.key.clone(), None)]);
        let resp = self
            .store
            .call(op, move |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .map_err(self.etcd())?;
        if resp.succeeded() {
            return Ok(resp.header().map_or(0, |h| h.revision()));
        }
        let now = resp.op_responses().into_iter().find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => {
                Some(g.kvs().first().map(KeyValue::create_revision))
            }
            _ => None,
        });
        if now.flatten() == Some(fence.token()) {
            return Err(self.err(other()));
        }
        let holder =
            read_holder(&resp).map_or("nobody yet (its lease ended)".to_string(), |h| h.holder);
        tracing::error!(journal = %self.path.display(), holder, "lost the lease to {holder}");
        Err(self.err(ErrorKind::LostLease { holder }))
    }

    /// A new journal for the run (refused if one is there), with `run`'s row
    /// when given; guarded by the fence.
    pub(crate) fn create(
        store: Arc<EtcdStore>,
        run_id: &str,
        fence: Fence,
        run: Option<&K::Run>,
    ) -> Result<EtcdJournal<K>, Error> {
        let j = EtcdJournal::<K>::new(store, run_id, Some(fence))?;
        let format_key = format!("{}/format", j.base);
        let mut puts = vec![TxnOp::put(
            format_key.clone(),
            EtcdJournal::<K>::format_value(),
            None,
        )];
        let mut head = None;
        if let Some(run) = run {
            let (ops, h) = j.run_ops(run)?;
            puts.extend(ops);
            head = Some(h);
        }
        let rev = j.guarded(
            "create the run's journal",
            vec![Compare::version(format_key, CompareOp::Equal, 0)],
            puts,
            || ErrorKind::Exists,
        )?;
        *j.head.lock() = head.map(|h| Head { revision: rev, ..h });
        Ok(j)
    }

    /// The run row's puts and the head they set.
    fn run_ops(&self, run: &K::Run) -> Result<(Vec<TxnOp>, Head), Error> {
        let row = K::run_row(run).map_err(|m| self.err(ErrorKind::Row(format!("run row: {m}"))))?;
        let hash = K::run_hash(&row);
        let run_v = json!({ "row": row_json(&row), "hash": hex(&hash) });
        let head_v = json!({ "seq": 0, "hash": hex(&hash) });
        Ok((
            vec![
                TxnOp::put(format!("{}/run", self.base), run_v.to_string(), None),
                TxnOp::put(format!("{}/head", self.base), head_v.to_string(), None),
            ],
            Head {
                seq: 0,
                hash: hash.to_vec(),
                revision: 0,
            },
        ))
    }

    /// Opens the run's journal for writing under `fence`, after checking it whole.
    pub(crate) fn open(
        store: Arc<EtcdStore>,
        run_id: &str,
        fence: Fence,
    ) -> Result<EtcdJournal<K>, Error> {
        let j = EtcdJournal::<K>::new(store, run_id, Some(fence))?;
        j.verify()?;
        Ok(j)
    }

    /// Opens the run's journal for reading only, after checking it whole.
    pub(crate) fn open_read_only(
        store: Arc<EtcdStore>,
        run_id: &str,
    ) -> Result<EtcdJournal<K>, Error> {
        let j = EtcdJournal::<K>::new(store, run_id, None)?;
        j.verify()?;
        Ok(j)
    }

    /// Every key of the run at one revision, in pages.
    fn read(&self) -> Result<Read, Error> {
        let start = format!("{}/", self.base);
        let end = format!("{}0", self.base);
        let mut out = Read::default();
        let mut from = start.clone();
        let mut revision = 0i64;
        loop {
            let (f, e, r) = (from.clone(), end.clone(), revision);
            let resp = self
                .store
                .call("read the run's journal", move |mut c| {
                    let (f, e) = (f.clone(), e.clone());
                    async move {
                        let mut o = GetOptions::new().with_range(e).with_limit(PAGE);
                        if r > 0 {
                            o = o.with_revision(r);
                        }
                        c.get(f, Some(o)).await
                    }
                })
                .map_err(self.etcd())?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                let key = kv
                    .key_str()
                    .map_err(|_| self.damaged("a key is not UTF-8"))?;
                let name = &key[start.len()..];
                let value = || -> Result<Json, Error> {
                    serde_json::from_slice(kv.value())
                        .map_err(|e| self.damaged(format!("{name}: not JSON: {e}")))
                };
                match name {
                    "format" => out.format = Some(String::from_utf8_lossy(kv.value()).into_owned()),
                    "run" => out.run = Some(value()?),
                    "head" => out.head = Some((value()?, kv.mod_revision())),
                    "lock" => {}
                    n => match n.strip_prefix("journal/") {
                        Some(seq) => out.events.push((
                            seq.parse::<i64>()
                                .map_err(|_| format!("key journal/{seq} is not a sequence number")),
                            value()?,
                        )),
                        None => return Err(self.damaged(format!("unknown key {name}"))),
                    },
                }
            }
            match resp.kvs().last() {
                Some(kv) if resp.more() => {
                    let mut k = kv.key().to_vec();
                    k.push(0);
                    from = String::from_utf8(k).map_err(|_| self.damaged("a key is not UTF-8"))?;
                }
                _ => return Ok(out),
            }
        }
    }

    /// Checks the kind and the chain of what was read; sets the head a
    /// writer chains on.
    fn check(&self, r: &Read) -> Result<(), Error> {
        let Some(format) = &r.format else {
            return Err(self.err(ErrorKind::Missing));
        };
        let mut parts = format.split(' ');
        let (app, version) = (
            parts.next().and_then(|a| a.parse::<i64>().ok()),
            parts.next().and_then(|v| v.parse::<i64>().ok()),
        );
        if app != Some(K::APPLICATION_ID) {
            return Err(self.err(ErrorKind::NotOurs {
                what: K::WHAT,
                detail: format!(
                    "format {format:?}, expected application id {}",
                    K::APPLICATION_ID
                ),
            }));
        }
        let version = version.unwrap_or(-1);
        if version != K::SCHEMA_VERSION {
            return Err(self.err(ErrorKind::Version {
                found: version,
                expected: K::SCHEMA_VERSION,
            }));
        }
        let run = match &r.run {
            None => None,
            Some(v) => Some((
                json_row(&v["row"]).map_err(|m| self.damaged(format!("run: {m}")))?,
                hash_of(v),
            )),
        };
        let mut events = Vec::with_capacity(r.events.len());
        for (seq, v) in &r.events {
            let seq = seq.clone().map_err(|m| self.damaged(m))?;
            events.push(StoredEvent {
                seq,
                at_ms: v["at_ms"].as_i64().map_or(Value::Null, Value::Integer),
                row: json_row(&v["row"]).map_err(|m| self.damaged(format!("event {seq}: {m}")))?,
                hash: hash_of(v),
            });
        }
        let head = r
            .head
            .as_ref()
            .map(|(v, rev)| (v["seq"].as_i64().unwrap_or(-1), hash_of(v), *rev));
        let had_run = run.is_some();
        verify_chain::<K>(run, events, || {
            head.clone()
                .map(|(s, h, _)| (s, h))
                .ok_or_else(|| "head row: missing".to_string())
        })
        .map_err(|m| self.damaged(m))?;
        *self.head.lock() = match (had_run, head) {
            (true, Some((seq, hash, revision))) => Some(Head {
                seq,
                hash,
                revision,
            }),
            _ => None,
        };
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn is_writer(&self) -> bool {
        self.fence.is_some()
    }

    /// Errs when this writer's lease may have ended (see [`Fence::check`]).
    pub(crate) fn check_fence(&self) -> Result<(), Error> {
        let Some(f) = &self.fence else {
            return Ok(());
        };
        if f.check(&self.path).is_ok() {
            return Ok(());
        }
        // Name who holds the run now, when etcd can say.
        let key = f.key.clone();
        let holder = self
            .store
            .call("read the run's lock", move |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .ok()
            .and_then(|r| {
                r.kvs()
                    .first()
                    .filter(|kv| kv.create_revision() != f.token())
                    .and_then(|kv| serde_json::from_slice::<Holder>(kv.value()).ok())
            })
            .map_or("nobody yet (this runner's lease ended)".to_string(), |h| {
                h.holder
            });
        tracing::error!(journal = %self.path.display(), holder, "lost the lease to {holder}");
        Err(self.err(ErrorKind::LostLease { holder }))
    }

    /// Someone holds the run's lease now.
    pub(crate) fn running(&self) -> bool {
        if self.is_writer() {
            return true;
        }
        let key = format!("{}/lock", self.base);
        self.store
            .call("read the run's lock", move |mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .is_ok_and(|r| r.count() > 0)
    }

    pub(crate) fn start_run(&self, run: &K::Run) -> Result<(), Error> {
        let (ops, head) = self.run_ops(run)?;
        let rev = self.guarded(
            "record the run",
            vec![Compare::version(
                format!("{}/run", self.base),
                CompareOp::Equal,
                0,
            )],
            ops,
            || ErrorKind::RunExists,
        )?;
        *self.head.lock() = Some(Head {
            revision: rev,
            ..head
        });
        Ok(())
    }

    pub(crate) fn run(&self) -> Result<Option<K::Run>, Error> {
        let r = self.read()?;
        let Some(v) = r.run else { return Ok(None) };
        let row = json_row(&v["row"]).map_err(|m| self.damaged(format!("run: {m}")))?;
        K::run_from_row(&row)
            .map(Some)
            .map_err(|m| self.err(ErrorKind::Row(format!("run row: {m}"))))
    }

    pub(crate) fn verify(&self) -> Result<(), Error> {
        let r = self.read()?;
        self.check(&r)
    }

    pub(crate) fn append(&self, event: K::Event) -> Result<Record<K::Event>, Error> {
        let mut cached = self.head.lock();
        let head = cached.clone().ok_or_else(|| self.err(ErrorKind::NoRun))?;
        let seq = head.seq + 1;
        let at_ms = now_ms();
        let row = K::event_row(&event);
        let hash = K::event_hash(&head.hash, seq as u64, at_ms, &row);
        let key = seq_key(&self.base, seq);
        let head_key = format!("{}/head", self.base);
        let value = json!({ "at_ms": at_ms, "row": row_json(&row), "hash": hex(&hash) });
        let head_v = json!({ "seq": seq, "hash": hex(&hash) });
        let rev = self.guarded(
            "append to the run's journal",
            vec![
                Compare::version(key.clone(), CompareOp::Equal, 0),
                Compare::mod_revision(head_key.clone(), CompareOp::Equal, head.revision),
            ],
            vec![
                TxnOp::put(key, value.to_string(), None),
                TxnOp::put(head_key, head_v.to_string(), None),
            ],
            || {
                ErrorKind::Damaged(format!(
                    "event {seq} or the head was written by another writer under this runner's lease"
                ))
            },
        )?;
        *cached = Some(Head {
            seq,
            hash: hash.to_vec(),
            revision: rev,
        });
        Ok(Record {
            seq: seq as u64,
            at_ms,
            event,
        })
    }

    /// The events decoded, optionally only those whose `column` holds `value`.
    fn decoded(&self, filter: Option<(usize, &str)>) -> Result<Vec<Record<K::Event>>, Error> {
        let r = self.read()?;
        let mut out = Vec::with_capacity(r.events.len());
        for (seq, v) in r.events {
            let seq = seq.map_err(|m| self.damaged(m))?;
            let what = |m: String| self.err(ErrorKind::Row(format!("event {seq}: {m}")));
            let row = json_row(&v["row"]).map_err(what)?;
            if let Some((i, want)) = filter {
                if !matches!(row.get(i), Some(Value::Text(t)) if t == want) {
                    continue;
                }
            }
            let at_ms = v["at_ms"]
                .as_u64()
                .ok_or_else(|| what("bad at_ms".into()))?;
            out.push(Record {
                seq: seq as u64,
                at_ms,
                event: K::event_from_row(&row).map_err(what)?,
            });
        }
        Ok(out)
    }

    pub(crate) fn events(&self) -> Result<Vec<Record<K::Event>>, Error> {
        self.decoded(None)
    }

    pub(crate) fn events_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Vec<Record<K::Event>>, Error> {
        let Some(i) = K::EVENT_COLUMNS.iter().position(|c| *c == column) else {
            return Err(self.err(ErrorKind::Row(format!("no event column {column:?}"))));
        };
        self.decoded(Some((i, value)))
    }
}
