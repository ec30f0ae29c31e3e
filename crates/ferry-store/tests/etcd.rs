//! Tests of `EtcdStore` against a real 3-member etcd cluster (Debian's
//! `etcd-server`, installed by scripts/test.sh): the shared conformance suite,
//! then what only etcd has to prove (snapshots at one revision while writes
//! happen, the epoch rule inside the transaction with two writers racing,
//! chunked batches, a member killed, quorum lost). Each test starts its own
//! members on free loopback ports in a temporary directory and kills them (by
//! their process) when it ends, even when it fails.
//!
//! The measurement of space and load time is an ignored test:
//! `cargo test -p ferry-store --features etcd --test etcd -- --ignored --nocapture`
//! (`FERRY_BENCH_SITES` sets the number of sites, 100,000 by default).

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use ferry_model::{Epoch, Hostname, Placement, ServerState, SiteRecord, SiteState};
use ferry_store::{
    conformance, Change, EtcdConfig, EtcdStore, Store, StoreError, WatchError, LAYOUT_VERSION,
};

/// Operations per transaction the test members allow (`--max-txn-ops`), above
/// the conformance suite's 200-record batches.
const MEMBER_MAX_TXN_OPS: usize = 1024;

/// How long a member gets to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(60);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// A cluster of etcd members, killed when dropped.
struct Cluster {
    /// Holds the members' data directories and logs until the cluster is dropped.
    _dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
}

impl Cluster {
    /// Starts `n` members and waits until every one reports healthy. Ports are
    /// picked free, but another process may take one before etcd binds it: the
    /// whole cluster is then started again on new ports.
    fn start(n: usize) -> Cluster {
        let mut last = String::new();
        for _ in 0..3 {
            match Cluster::try_start(n) {
                Ok(c) => return c,
                Err(e) => last = e,
            }
        }
        panic!("could not start an etcd cluster of {n}: {last}");
    }

    fn try_start(n: usize) -> Result<Cluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // Hold every listener until all ports are picked, so none repeats.
        let listeners: Vec<TcpListener> = (0..2 * n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            _dir: dir,
            members,
            initial_cluster,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster.clone();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("member log file");
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let client = m.endpoint();
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", "ferry-test"])
            .args(["--initial-cluster-state", "new"])
            // Fast elections: a killed leader is replaced in about a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--max-txn-ops", &MEMBER_MAX_TXN_OPS.to_string()])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("member log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run etcd ({e}); install Debian's etcd-server (scripts/test.sh does)")
            });
        m.child = Some(child);
    }

    /// Polls the member's `/health` until it answers `"health":"true"`.
    fn wait_healthy(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = match self.members[i].child.as_mut() {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                return Err(format!(
                    "member {} exited ({status}) before it was healthy: {}",
                    self.members[i].name,
                    self.log_tail(i)
                ));
            }
            if health(self.members[i].client_port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "member {} not healthy after {START_TIMEOUT:?}: {}",
                    self.members[i].name,
                    self.log_tail(i)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// SIGKILL to the member's process (the one this test started).
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again on its data directory and ports.
    fn restart(&mut self, i: usize) {
        self.spawn(i);
    }

    /// The index of the member that is the leader now.
    fn leader(&self) -> usize {
        let rt = runtime();
        rt.block_on(async {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                let Ok(mut c) = etcd_client::Client::connect([m.endpoint()], None).await else {
                    continue;
                };
                if let Ok(s) = c.status().await {
                    if s.header().map(|h| h.member_id()) == Some(s.leader()) {
                        return i;
                    }
                }
            }
            panic!("no member says it is the leader");
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// `GET /health` on a member, by hand: true when it has a leader and no alarm.
fn health(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn config(cluster: &Cluster, prefix: &str) -> EtcdConfig {
    let mut cfg = EtcdConfig::new(cluster.endpoints(), prefix);
    cfg.max_txn_ops = MEMBER_MAX_TXN_OPS;
    cfg
}

fn host(name: &str) -> Hostname {
    Hostname::parse(name).unwrap()
}

fn record(name: &str, placement: &str, state: SiteState, epoch: u64) -> SiteRecord {
    SiteRecord {
        host: host(name),
        placement: Placement::parse(placement).unwrap(),
        state,
        epoch: Epoch(epoch),
    }
}

/// `count` sites `s{i}.example.com`, all with `placement` at `epoch`.
fn batch(count: usize, placement: &str, epoch: u64) -> Vec<SiteRecord> {
    (0..count)
        .map(|i| {
            record(
                &format!("s{i:06}.example.com"),
                placement,
                SiteState::Active,
                epoch,
            )
        })
        .collect()
}

#[test]
fn conformance_suite_on_three_members() {
    let cluster = Cluster::start(3);
    let n = Cell::new(0);
    // Each check gets a fresh prefix: an empty store on the same cluster.
    conformance::run_all(&|| {
        n.set(n.get() + 1);
        Box::new(
            EtcdStore::connect(config(&cluster, &format!("/conformance/{}", n.get()))).unwrap(),
        )
    });
}

#[test]
fn etcd_specific_behaviour() {
    let cluster = Cluster::start(3);
    snapshot_is_one_revision_while_writes_happen(&cluster);
    snapshot_pages_cover_irregular_keys(&cluster);
    stale_epoch_is_refused_inside_the_transaction(&cluster);
    racing_writers_one_wins_the_other_is_stale(&cluster);
    large_batches_are_cut_into_transactions(&cluster);
    layout_version_is_checked(&cluster);
    usable_from_inside_a_tokio_runtime(&cluster);
    watch_delivers_each_revision_and_reports_compaction(&cluster);
    leases_carry_registrations(&cluster);
    revisions_to_wait_for_are_the_sites_own(&cluster);
}

/// What a writer waits for (`Applied::revision`) and what a freeze is judged
/// against (`sites_revision`) are the revisions of the site records, never
/// a later registration's: a router's watch applies no revision that touched
/// no site, so waiting for one would last until the next site change.
fn revisions_to_wait_for_are_the_sites_own(cluster: &Cluster) {
    let store = EtcdStore::connect(config(cluster, "/own-revision")).unwrap();
    let frozen = record("a.example.com", "pool:web", SiteState::Frozen, 2);
    let written = store.apply_sites(std::slice::from_ref(&frozen)).unwrap();
    assert_eq!(written.changed, 1);
    let lease = store.grant_lease(Duration::from_secs(5)).unwrap();
    store
        .put_registration("r1", "{\"revision\":1}", &lease)
        .unwrap();
    store
        .put_registration("r2", "{\"revision\":2}", &lease)
        .unwrap();
    assert!(
        store.revision().unwrap() > written.revision,
        "registrations moved the cluster"
    );
    let replay = store.apply_sites(&[frozen]).unwrap();
    assert_eq!((replay.changed, replay.unchanged), (0, 1));
    assert_eq!(
        replay.revision, written.revision,
        "the record's own revision"
    );
    let hosts = vec![
        "a.example.com".to_string(),
        "nowhere.example.com".to_string(),
    ];
    assert_eq!(store.sites_revision(&hosts).unwrap(), written.revision);
    assert_eq!(store.sites_revision(&hosts[1..]).unwrap(), 0, "not in etcd");
}

/// A watch from a snapshot's revision + 1 hands out one batch per
/// transaction (sites written and removed, server states), skips keys of no
/// interest (registrations), and a start revision already compacted is
/// `WatchError::Compacted`, not a silent gap.
fn watch_delivers_each_revision_and_reports_compaction(cluster: &Cluster) {
    let store = EtcdStore::connect(config(cluster, "/watch")).unwrap();
    store
        .put_sites(&[record("a.example.com", "pool:web", SiteState::Active, 1)])
        .unwrap();
    let snap = store.snapshot().unwrap();
    let mut watch = store.watch_from(snap.revision + 1).unwrap();
    let applied = store
        .apply_sites(&[
            record("a.example.com", "pool:web", SiteState::Frozen, 2),
            record("b.example.com", "pool:web", SiteState::Active, 1),
        ])
        .unwrap();
    let lease = store.grant_lease(Duration::from_secs(5)).unwrap();
    store.put_registration("r1", "{}", &lease).unwrap();
    store.remove_sites(&[host("b.example.com")]).unwrap();
    store
        .put_server_state("web", "a/1", ServerState::Drain)
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 3 && Instant::now() < deadline {
        if let Some(b) = watch.next(Duration::from_millis(200)).unwrap() {
            got.push(b);
        }
    }
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].revision, applied.revision);
    assert_eq!(
        got[0].changes,
        vec![
            Change::Site(record("a.example.com", "pool:web", SiteState::Frozen, 2)),
            Change::Site(record("b.example.com", "pool:web", SiteState::Active, 1)),
        ]
    );
    // The registration made no batch: the next one is the removal.
    assert_eq!(
        got[1].changes,
        vec![Change::SiteRemoved(host("b.example.com"))]
    );
    assert_eq!(
        got[2].changes,
        vec![Change::ServerState {
            pool: "web".into(),
            server: "a/1".into(),
            state: ServerState::Drain
        }]
    );
    assert!(got[0].revision < got[1].revision && got[1].revision < got[2].revision);
    drop(watch);

    let now = store.revision().unwrap();
    store.compact(now).unwrap();
    let mut late = store.watch_from(snap.revision + 1).unwrap();
    let err = match late.next(Duration::from_secs(10)) {
        Ok(Some(b)) => panic!("a compacted start revision delivered {b:?}"),
        Ok(None) => panic!("no answer from a watch on a compacted revision"),
        Err(e) => e,
    };
    assert!(
        matches!(err, WatchError::Compacted { compacted, .. } if compacted == now),
        "{err}"
    );
}

/// A registration lives under its lease: kept while the lease is kept alive
/// (past its TTL), gone at once when the lease is dropped (revoked).
fn leases_carry_registrations(cluster: &Cluster) {
    let store = EtcdStore::connect(config(cluster, "/lease")).unwrap();
    let lease = store.grant_lease(Duration::from_secs(2)).unwrap();
    store
        .put_registration("r2", "{\"revision\":7}", &lease)
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        store.registration("r2").unwrap().as_deref(),
        Some("{\"revision\":7}")
    );
    assert!(!lease.is_lost());
    drop(lease);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.registration("r2").unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "registration still there after its lease was revoked"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The router calls the store from its own tokio workers: opening, using and
/// dropping a store there must neither panic (nested `block_on`, a runtime
/// dropped inside another) nor deadlock a current-thread runtime.
fn usable_from_inside_a_tokio_runtime(cluster: &Cluster) {
    let cfg = config(cluster, "/inside");
    runtime().block_on(async move {
        let store = EtcdStore::connect(cfg).unwrap();
        let a = record("a.example.com", "pool:web", SiteState::Active, 1);
        store.put_sites(std::slice::from_ref(&a)).unwrap();
        let task = tokio::spawn(async move {
            let seen = store.sites().unwrap();
            drop(store);
            seen
        });
        assert_eq!(task.await.unwrap(), vec![a]);
    });
}

/// A snapshot read in pages of 50 while a writer rewrites all 1,000 sites in
/// one transaction after another sees exactly one batch, and reading again at
/// the revision it reports gives the same records.
fn snapshot_is_one_revision_while_writes_happen(cluster: &Cluster) {
    const SITES: usize = 1000;
    let writer = EtcdStore::connect(config(cluster, "/snap")).unwrap();
    let mut cfg = config(cluster, "/snap");
    cfg.page_size = 50;
    let reader = EtcdStore::connect(cfg).unwrap();
    writer.put_sites(&batch(SITES, "pool:web", 1)).unwrap();
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(1);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut epoch = 1;
            while !stop.load(Ordering::Acquire) {
                epoch += 1;
                writer.put_sites(&batch(SITES, "pool:web", epoch)).unwrap();
                written.store(epoch, Ordering::Release);
            }
        });
        let (mut overlapped, mut reads) = (0, 0);
        while overlapped < 5 && reads < 200 {
            let before = written.load(Ordering::Acquire);
            let snap = reader.snapshot().unwrap();
            let after = written.load(Ordering::Acquire);
            reads += 1;
            assert_eq!(snap.sites.len(), SITES, "a snapshot lost or added sites");
            let epoch = snap.sites[0].epoch;
            assert!(
                snap.sites.iter().all(|r| r.epoch == epoch),
                "a snapshot at revision {} mixed two batches",
                snap.revision
            );
            assert!(snap.revision > 0);
            if after > before {
                // A batch was written while this snapshot's 20 pages were read.
                overlapped += 1;
                assert_eq!(
                    reader.snapshot_at(snap.revision).unwrap(),
                    snap,
                    "reading again at the reported revision"
                );
            }
        }
        stop.store(true, Ordering::Release);
        assert!(
            overlapped >= 5,
            "only {overlapped} of {reads} snapshots overlapped a write"
        );
    });
}

/// Pages cut into parts by guessed keys (`split_points`) still read every site
/// exactly once, in order, whatever the names look like.
fn snapshot_pages_cover_irregular_keys(cluster: &Cluster) {
    let mut names = Vec::new();
    for i in 0..3000u64 {
        // A cheap scramble: lengths, letters, digits and labels vary.
        let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
        names.push(match i % 6 {
            0 => format!("{x:x}.example.com"),
            1 => format!("www.{x}.shop"),
            2 => format!("*.c{}.example.org", x % 977),
            3 => format!("a{i}.b.example"),
            4 => format!("xn--{x:x}-kva.example"),
            _ => format!("{}{}.z", "s".repeat((x % 40) as usize + 1), i),
        });
    }
    let mut records: Vec<SiteRecord> = names
        .iter()
        .map(|n| record(n, "pool:web", SiteState::Active, 1))
        .collect();
    records.sort_by(|a, b| a.host.cmp(&b.host));
    records.dedup_by(|a, b| a.host == b.host);
    let writer = EtcdStore::connect(config(cluster, "/irregular")).unwrap();
    for chunk in records.chunks(500) {
        writer.put_sites(chunk).unwrap();
    }
    for page in [1, 7, 64, 1000] {
        let mut cfg = config(cluster, "/irregular");
        cfg.page_size = page;
        let snap = EtcdStore::connect(cfg).unwrap().snapshot().unwrap();
        assert!(
            snap.sites == records,
            "pages of {page}: {} sites read, {} written",
            snap.sites.len(),
            records.len()
        );
    }
}

/// The epoch rule of ferry-model, applied by `apply_sites` against etcd's
/// record: newer applies, the same content is a no-op, older or same-epoch
/// different content is refused and writes nothing of its batch.
fn stale_epoch_is_refused_inside_the_transaction(cluster: &Cluster) {
    let store = EtcdStore::connect(config(cluster, "/judge")).unwrap();
    let a5 = record("a.example.com", "pool:web", SiteState::Active, 5);
    let b1 = record("b.example.com", "pool:web", SiteState::Active, 1);
    let applied = store.apply_sites(&[a5.clone(), b1.clone()]).unwrap();
    assert_eq!((applied.changed, applied.unchanged), (2, 0));
    // Replaying the same batch changes nothing.
    let replay = store.apply_sites(&[a5.clone(), b1.clone()]).unwrap();
    assert_eq!((replay.changed, replay.unchanged), (0, 2));
    // One stale record refuses the whole batch, even the good one before it.
    let b2 = record("b.example.com", "remote:dc2", SiteState::Frozen, 2);
    let a4 = record("a.example.com", "remote:dc2", SiteState::Active, 4);
    let err = store.apply_sites(&[b2.clone(), a4]).unwrap_err();
    assert!(
        matches!(&err, StoreError::Stale { host, stored: Epoch(5), incoming: Epoch(4) } if host.as_str() == "a.example.com"),
        "{err}"
    );
    let a5_other = record("a.example.com", "pool:other", SiteState::Active, 5);
    assert!(matches!(
        store.apply_sites(&[a5_other]),
        Err(StoreError::Stale { .. })
    ));
    assert_eq!(store.sites().unwrap(), vec![a5.clone(), b1]);
    // Records of one host in one batch are judged in order.
    let a6 = record("a.example.com", "pool:web", SiteState::Frozen, 6);
    let a7 = record("a.example.com", "remote:dc2", SiteState::Active, 7);
    store.apply_sites(&[b2, a6, a7.clone()]).unwrap();
    assert_eq!(store.site(&a7.host).unwrap(), Some(a7));
}

/// Two routers' stores write the same sites at the same new epoch with other
/// placements at the same moment: exactly one batch lands, whole, the other is
/// refused as stale, and at least some refusals came from the transaction's
/// compare (both had judged their batch newer than what they read).
fn racing_writers_one_wins_the_other_is_stale(cluster: &Cluster) {
    const SITES: usize = 20;
    let a = EtcdStore::connect(config(cluster, "/race")).unwrap();
    let b = EtcdStore::connect(config(cluster, "/race")).unwrap();
    a.apply_sites(&batch(SITES, "pool:start", 1)).unwrap();
    let barrier = Barrier::new(2);
    let mut rounds = 0;
    while a.conflicts() + b.conflicts() < 3 && rounds < 300 {
        rounds += 1;
        let epoch = rounds + 1;
        let (ra, rb) = std::thread::scope(|scope| {
            let ta = scope.spawn(|| {
                barrier.wait();
                a.apply_sites(&batch(SITES, "pool:a", epoch))
            });
            let tb = scope.spawn(|| {
                barrier.wait();
                b.apply_sites(&batch(SITES, "pool:b", epoch))
            });
            (ta.join().unwrap(), tb.join().unwrap())
        });
        let winner = match (&ra, &rb) {
            (Ok(_), Err(StoreError::Stale { .. })) => "pool:a",
            (Err(StoreError::Stale { .. }), Ok(_)) => "pool:b",
            other => panic!("round {rounds}: expected one winner and one stale, got {other:?}"),
        };
        let stored = a.sites().unwrap();
        assert!(
            stored == batch(SITES, winner, epoch),
            "round {rounds}: the store does not hold exactly the winner's batch"
        );
    }
    assert!(
        a.conflicts() + b.conflicts() >= 1,
        "in {rounds} rounds no transaction compare ever refused a racing write"
    );
    eprintln!(
        "racing writers: {rounds} rounds, {} refused by the transaction's compare",
        a.conflicts() + b.conflicts()
    );
}

/// With etcd's default of 128 operations per transaction, a 300-record batch is
/// three transactions (three revisions); a stale record anywhere in it is
/// found before any chunk is written.
fn large_batches_are_cut_into_transactions(cluster: &Cluster) {
    let mut cfg = config(cluster, "/chunks");
    cfg.max_txn_ops = 128;
    let store = EtcdStore::connect(cfg).unwrap();
    store.put_sites(&batch(300, "pool:web", 1)).unwrap();
    let before = store.snapshot().unwrap();
    assert_eq!(before.sites, batch(300, "pool:web", 1));
    let applied = store.apply_sites(&batch(300, "pool:web", 2)).unwrap();
    assert_eq!(applied.changed, 300);
    assert_eq!(
        applied.revision - before.revision,
        3,
        "300 records at 128 per transaction are three transactions"
    );
    let mut stale = batch(300, "pool:other", 3);
    stale[299].epoch = Epoch(1);
    assert!(matches!(
        store.apply_sites(&stale),
        Err(StoreError::Stale { host, .. }) if host.as_str() == "s000299.example.com"
    ));
    assert_eq!(store.sites().unwrap(), batch(300, "pool:web", 2));
    let hosts: Vec<Hostname> = batch(300, "pool:web", 1)
        .into_iter()
        .map(|r| r.host)
        .collect();
    store.remove_sites(&hosts).unwrap();
    assert_eq!(store.sites().unwrap(), vec![]);
}

/// A prefix laid out by a newer Ferry is refused; a corrupt record is named.
fn layout_version_is_checked(cluster: &Cluster) {
    let store = EtcdStore::connect(config(cluster, "/layout")).unwrap();
    drop(store);
    let rt = runtime();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect(cluster.endpoints(), None)
            .await
            .unwrap();
        let found = c.get("/layout/schema", None).await.unwrap();
        assert_eq!(
            found.kvs()[0].value(),
            LAYOUT_VERSION.to_string().as_bytes()
        );
        c.put("/newer/schema", "2", None).await.unwrap();
        c.put("/corrupt/sites/a.example.com", "7 q pool:web", None)
            .await
            .unwrap();
    });
    let err = EtcdStore::connect(config(cluster, "/newer"))
        .err()
        .expect("a newer layout must be refused");
    assert!(
        matches!(
            err,
            StoreError::NewerLayout {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
    let store = EtcdStore::connect(config(cluster, "/corrupt")).unwrap();
    let err = store.sites().unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { what, .. } if what.contains("a.example.com")),
        "{err}"
    );
}

/// The leader killed with SIGKILL: reads and writes go on through the two
/// others. A second member killed: every call fails within the request timeout
/// (plus a margin) with an error that says so, none hangs. One member back:
/// the same store works again.
#[test]
fn member_loss_then_quorum_loss() {
    const TIMEOUT: Duration = Duration::from_secs(3);
    // The margin covers the last backoff and a loaded test machine.
    const BOUND: Duration = Duration::from_secs(6);
    let mut cluster = Cluster::start(3);
    let mut cfg = config(&cluster, "/loss");
    cfg.request_timeout = TIMEOUT;
    let store = EtcdStore::connect(cfg).unwrap();
    // The same prefix with room for a re-election on a loaded machine: the
    // point of the first phase is that writes go on, not how fast.
    let mut cfg = config(&cluster, "/loss");
    cfg.request_timeout = Duration::from_secs(20);
    let patient = EtcdStore::connect(cfg).unwrap();
    store.apply_sites(&batch(100, "pool:web", 1)).unwrap();

    let leader = cluster.leader();
    cluster.kill(leader);
    let t = Instant::now();
    patient.apply_sites(&batch(100, "pool:web", 2)).unwrap();
    let write_after_kill = t.elapsed();
    assert_eq!(store.sites().unwrap(), batch(100, "pool:web", 2));
    store
        .put_server_state("web", "w1", ferry_model::ServerState::Drain)
        .unwrap();
    eprintln!("leader killed: first write done in {write_after_kill:?}");

    let second = (0..3).find(|&i| i != leader).unwrap();
    cluster.kill(second);
    type Call<'a> = &'a dyn Fn() -> Result<(), StoreError>;
    let checks: [(&str, Call); 4] = [
        ("apply_sites", &|| {
            store.apply_sites(&batch(100, "pool:web", 3)).map(drop)
        }),
        ("put_sites", &|| store.put_sites(&batch(10, "pool:web", 3))),
        ("sites", &|| store.sites().map(drop)),
        ("site", &|| {
            store.site(&host("s000001.example.com")).map(drop)
        }),
    ];
    for (name, call) in checks {
        let t = Instant::now();
        let result = call();
        let took = t.elapsed();
        let err = result.expect_err("quorum is lost: the call must fail");
        assert!(took < BOUND, "{name} took {took:?} to fail");
        assert!(
            matches!(err, StoreError::Unavailable { .. }),
            "{name}: expected Unavailable, got {err}"
        );
        eprintln!("quorum lost: {name} failed in {took:?}: {err}");
    }

    cluster.restart(second);
    cluster.wait_healthy(second).unwrap();
    let t = Instant::now();
    patient.apply_sites(&batch(100, "pool:web", 3)).unwrap();
    eprintln!("quorum back: first write done in {:?}", t.elapsed());
    assert_eq!(store.sites().unwrap(), batch(100, "pool:web", 3));
}

/// Space per site and load times; prints its numbers (see the file's header).
#[test]
#[ignore = "a measurement, run on demand"]
fn measure_space_and_load() {
    let sites: usize = std::env::var("FERRY_BENCH_SITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let cluster = Cluster::start(3);
    let rt = runtime();
    let member0 = cluster.members[0].endpoint();
    // Compacts everything and defragments every member; the size of member 0.
    let settle = || -> i64 {
        rt.block_on(async {
            let mut c = etcd_client::Client::connect(cluster.endpoints(), None)
                .await
                .unwrap();
            let rev = c.get("/", None).await.unwrap().header().unwrap().revision();
            let _ = c
                .compact(
                    rev,
                    Some(etcd_client::CompactionOptions::new().with_physical()),
                )
                .await;
            for m in &cluster.members {
                let mut one = etcd_client::Client::connect([m.endpoint()], None)
                    .await
                    .unwrap();
                one.defragment().await.unwrap();
            }
            let mut one = etcd_client::Client::connect([member0.clone()], None)
                .await
                .unwrap();
            one.status().await.unwrap().db_size()
        })
    };
    let empty = settle();
    let store = EtcdStore::connect(config(&cluster, "/ferry")).unwrap();
    let t = Instant::now();
    let records: Vec<SiteRecord> = (0..sites)
        .map(|i| {
            record(
                &format!("site{i:07}.example-hosting.com"),
                &format!("pool:web{}", i % 40),
                SiteState::Active,
                1,
            )
        })
        .collect();
    // About what decoding a snapshot's records costs on the client (the same
    // parsing of hosts and placements).
    println!("{sites} records built (names parsed) in {:?}", t.elapsed());
    let t = Instant::now();
    for chunk in records.chunks(1000) {
        store.put_sites(chunk).unwrap();
    }
    let write = t.elapsed();
    let loaded = settle();
    let per_site = (loaded - empty) as f64 / sites as f64;
    println!(
        "{sites} sites written in {write:?} (batches of 1000); db {empty} B empty, \
         {loaded} B loaded after compaction+defrag: {per_site:.0} B per site"
    );
    for page in [1_000, 10_000, 50_000] {
        let mut cfg = config(&cluster, "/ferry");
        cfg.page_size = page;
        let reader = EtcdStore::connect(cfg).unwrap();
        let t = Instant::now();
        let snap = reader.snapshot().unwrap();
        let took = t.elapsed();
        assert!(
            snap.sites == records,
            "the snapshot differs from what was written"
        );
        let per_3m = took.as_secs_f64() * 3_000_000.0 / sites as f64;
        println!(
            "snapshot of {sites} sites in pages of {page}: {took:?} \
             (linear extrapolation to 3M: {per_3m:.1} s)"
        );
    }
}
