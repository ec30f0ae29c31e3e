//! The run's lease in etcd (cargo feature `etcd`): one runner at a time acts
//! on a run, and one that lost its lease can change nothing.
//!
//! `P/runs/<id>/lock` holds who took the run and when (`{"holder", "since_ms",
//! "ttl_s"}`), put under an etcd lease of `ttl` that a thread keeps alive
//! (every third of the TTL). It is created only if absent; the revision that
//! created it is the run's **fencing token**. Every write the runner makes
//! afterwards (each journal append: `etcd.rs`) is a transaction that compares
//! the lock key's `create_revision` with that token. If the runner stops
//! keeping the lease alive (a crash, SIGSTOP, a GC pause, a VM frozen, a
//! partition) for longer than the TTL, etcd deletes the key with the lease;
//! the next runner creates it again at a newer revision, and from then on
//! every transaction of the old runner fails its compare: it can append
//! nothing, whatever its clock says and however long it was paused.
//!
//! Besides that hard rule, [`Fence::check`] tells a runner locally that its
//! lease may have ended (no keep-alive answered within the TTL), so it stops
//! before calling anything that is not guarded by etcd.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use ferry_store::EtcdStore;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::kind::now_ms;

/// The keys of one run under the store's prefix: `P/runs/<id>`.
pub(crate) fn run_base(store: &EtcdStore, run: &str) -> Result<String, Error> {
    let bad = |why| Error {
        path: format!("etcd:runs/{run}").into(),
        kind: ErrorKind::BadRunId {
            id: run.to_string(),
            why,
        },
    };
    if run.is_empty() || run.len() > 128 {
        return Err(bad("must be 1 to 128 characters"));
    }
    if !run
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("only letters, digits, '.', '_' and '-' are allowed"));
    }
    if run.bytes().all(|b| b == b'.') {
        return Err(bad("'.' and '..' are not run ids"));
    }
    Ok(store.key(&format!("runs/{run}")))
}

/// The value of `P/runs/<id>/lock`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Holder {
    /// Who holds it: `<host> pid <pid>` or what the runner said.
    pub holder: String,
    /// When it was taken, ms since the Unix epoch (the holder's clock).
    pub since_ms: u64,
    /// The lease's TTL in seconds.
    pub ttl_s: i64,
}

impl Holder {
    fn since(&self) -> String {
        let ago = now_ms().saturating_sub(self.since_ms) / 1000;
        format!("{ago} s ago ({} ms since the epoch)", self.since_ms)
    }
}

/// What a runner holds while its lease lasts.
struct State {
    /// etcd answered that the lease is gone, or the keeper gave up.
    lost: AtomicBool,
    /// Until when the lease is known to live (the last keep-alive sent that
    /// etcd answered, plus the TTL it granted).
    valid_until: Mutex<Instant>,
    /// The keeper sends no more keep-alives (a test standing in for a paused
    /// process, or the lease released).
    paused: AtomicBool,
    stop: Mutex<bool>,
    wake: Condvar,
    /// The lease id, 0 once revoked.
    lease: AtomicI64,
}

/// What every guarded write compares: the lock key and the revision that
/// created it (the fencing token), and the lease's local deadline.
#[derive(Clone)]
pub struct Fence {
    pub(crate) key: String,
    token: i64,
    holder: String,
    state: Arc<State>,
}

impl Fence {
    /// The fencing token: the revision that created the lock key.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// The etcd compare every guarded transaction carries.
    pub(crate) fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.token)
    }

    /// Errs when the lease may have ended (no keep-alive answered within its
    /// TTL, or etcd said it is gone): act on nothing more that etcd does not
    /// guard. The authority is the compare in etcd; this is the early stop.
    pub fn check(&self, path: &std::path::Path) -> Result<(), Error> {
        let lost = self.state.lost.load(Ordering::SeqCst)
            || Instant::now() >= *self.state.valid_until.lock();
        if lost {
            return Err(Error {
                path: path.to_path_buf(),
                kind: ErrorKind::LostLease {
                    holder: "nobody known yet (this runner's lease ended)".into(),
                },
            });
        }
        Ok(())
    }

    /// Who this runner is, as written in the lock.
    pub fn holder(&self) -> &str {
        &self.holder
    }
}

/// The lock of one run, held under a lease a thread keeps alive. Dropping it
/// revokes the lease (the key goes at once, the next runner need not wait).
pub struct RunLease {
    store: Arc<EtcdStore>,
    run: String,
    fence: Fence,
    ttl: Duration,
    keeper: Option<std::thread::JoinHandle<()>>,
}

impl RunLease {
    /// Takes the run's lock for `holder` under a lease of `ttl` (whole
    /// seconds, at least 1; etcd may grant a longer one). Refused with
    /// [`ErrorKind::Held`] (who, since when) while another runner's lease lives.
    pub fn acquire(
        store: Arc<EtcdStore>,
        run: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<RunLease, Error> {
        let base = run_base(&store, run)?;
        let path = std::path::PathBuf::from(format!("etcd:{base}"));
        let fail = |kind| Error {
            path: path.clone(),
            kind,
        };
        let etcd = |e: ferry_store::StoreError| fail(ErrorKind::Etcd(e.to_string()));
        let ttl_s = ttl.as_secs().max(1) as i64;
        let sent = Instant::now();
        let grant = store
            .call("grant the run's lease", move |mut c| async move {
                c.lease_grant(ttl_s, None).await
            })
            .map_err(etcd)?;
        let (lease, granted) = (grant.id(), grant.ttl());
        let key = format!("{base}/lock");
        let value = serde_json::to_string(&Holder {
            holder: holder.to_string(),
            since_ms: now_ms(),
            ttl_s: granted,
        })
        .map_err(|e| fail(ErrorKind::Etcd(e.to_string())))?;
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = store
            .call("take the run's lock", move |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .map_err(etcd)?;
        if !resp.succeeded() {
            revoke(&store, lease);
            let held = read_holder(&resp);
            return Err(fail(ErrorKind::Held {
                run: run.to_string(),
                since: held
                    .as_ref()
                    .map_or("an unknown time".into(), Holder::since),
                ttl_s: held.as_ref().map_or(0, |h| h.ttl_s),
                holder: held.map_or("an unreadable holder".into(), |h| h.holder),
            }));
        }
        let token = resp.header().map_or(0, |h| h.revision());
        let state = Arc::new(State {
            lost: AtomicBool::new(false),
            valid_until: Mutex::new(sent + Duration::from_secs(granted.max(1) as u64)),
            paused: AtomicBool::new(false),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            lease: AtomicI64::new(lease),
        });
        let ttl = Duration::from_secs(granted.max(1) as u64);
        let keeper = {
            let (store, state) = (store.clone(), state.clone());
            let run = run.to_string();
            std::thread::Builder::new()
                .name("ferry-lease".into())
                .spawn(move || keep_alive(&store, &state, lease, ttl, &run))
                .map_err(|e| fail(ErrorKind::Etcd(format!("cannot start the keep-alive: {e}"))))?
        };
        tracing::info!(run, holder, token, ttl_s = granted, "took the run's lease");
        Ok(RunLease {
            store,
            run: run.to_string(),
            fence: Fence {
                key,
                token,
                holder: holder.to_string(),
                state,
            },
            ttl,
            keeper: Some(keeper),
        })
    }

    /// What guarded writes compare.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// The TTL etcd granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The run id.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// Stops sending keep-alives, as a paused process would: the lease ends
    /// after its TTL (tests of take-over; nothing else calls it).
    pub fn stop_keep_alive(&self) {
        self.fence.state.paused.store(true, Ordering::SeqCst);
    }
}

impl Drop for RunLease {
    fn drop(&mut self) {
        *self.fence.state.stop.lock() = true;
        self.fence.state.wake.notify_all();
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
        // Revoked at once so the next runner need not wait out the TTL; a
        // lease etcd already ended only makes the revoke err (logged).
        if !self.fence.state.lost.load(Ordering::SeqCst) {
            let lease = self.fence.state.lease.swap(0, Ordering::SeqCst);
            if lease != 0 {
                revoke(&self.store, lease);
            }
        }
    }
}

/// Revokes `lease` (its keys go with it); failures only logged: the lease
/// then ends at its TTL.
fn revoke(store: &EtcdStore, lease: i64) {
    if let Err(e) = store.call("revoke the run's lease", move |mut c| async move {
        c.lease_revoke(lease).await
    }) {
        tracing::warn!(error = %e, "cannot revoke the run's lease; it ends at its TTL");
    }
}

/// The holder read back by the `or_else` of a guarded transaction (a get
/// of the lock key); None when the key is gone or unreadable.
pub(crate) fn read_holder(resp: &etcd_client::TxnResponse) -> Option<Holder> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok()),
        _ => None,
    })
}

/// The keeper: a keep-alive every third of the TTL until stopped; a lease
/// etcd says is gone (TTL 0) marks the runner's lease lost for good.
fn keep_alive(store: &EtcdStore, state: &State, lease: i64, ttl: Duration, run: &str) {
    let every = ttl / 3;
    loop {
        {
            let mut stop = state.stop.lock();
            if !*stop {
                state.wake.wait_for(&mut stop, every);
            }
            if *stop {
                return;
            }
        }
        if state.paused.load(Ordering::SeqCst) {
            continue;
        }
        let sent = Instant::now();
        let answer = store.call("keep the run's lease alive", move |mut c| async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            Ok(stream.message().await?.map_or(0, |m| m.ttl()))
        });
        match answer {
            Ok(left) if left > 0 => {
                *state.valid_until.lock() = sent + Duration::from_secs(left as u64);
            }
            Ok(_) => {
                state.lost.store(true, Ordering::SeqCst);
                tracing::error!(run, "the run's lease expired: this runner lost it");
                return;
            }
            Err(e) => {
                tracing::warn!(run, error = %e, "keep-alive of the run's lease not answered; retrying");
            }
        }
    }
}
