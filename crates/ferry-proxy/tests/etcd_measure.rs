//! The control plane's measurements of issue 17 (`bench/control-plane/run.sh`,
//! docs/control-plane.md, "Measurements (router)"), on a real 3-member etcd
//! (Debian's `etcd-server`) and routers in child processes of their own (this
//! test binary run again as `router_child`), as a fleet would run them:
//!
//! 1. **space**: N sites written (plain puts, batches of 1,000), etcd compacted
//!    and every member defragmented; `dbSize` and `dbSizeInUse` per site, and
//!    the keys' and values' own bytes per site;
//! 2. **load**: each router's start on the N sites (snapshot plus table),
//!    one router after the other;
//! 3. **idle**: nothing written for a while; the watches the routers lost
//!    meanwhile (each one costs a fresh snapshot of every site);
//! 4. **write to applied**: another client's write of one site to etcd until
//!    every router answers with it (each router's admin API polled on a
//!    kept-alive connection), p50/p99 over the writes;
//! 5. **flip**: a unit of U sites (frozen at the source first) flipped the way
//!    `ferry migrate`'s flip writes it: admin batches of 50,000 changes, to the
//!    destination's routers first, then the others; timed until every router
//!    answered (each answers once its own watch has applied the write), and
//!    every router's time to hold the unit's last site; then every router is
//!    checked to serve the new placement.
//!
//! Sizes come from the environment: `FERRY_BENCH_SITES` (100,000),
//! `FERRY_BENCH_ROUTERS` (4), `FERRY_BENCH_WRITES` (200), `FERRY_BENCH_UNIT`
//! (100,000, at most the sites), `FERRY_BENCH_POLL_US` (poll interval, 1,000),
//! `FERRY_BENCH_IDLE_S` (30), `FERRY_BENCH_LEASE_TTL` (the routers' lease, 10s).
//! Each measure prints one line for people and one `{"measure": ...}` JSON line.
//!
//! `cargo test --release -p ferry-proxy --features etcd --test etcd_measure -- --ignored --nocapture`
//!
//! Nothing here asserts on time; deadlines only catch hangs. Everything started
//! (members, routers, backends) is stopped by process id when the test ends.
#![cfg(feature = "etcd")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_admin_api::sites::{HostList, QueriedSite, QueryAnswer, SiteBatch, SiteChange};
use ferry_model::{Epoch, Hostname, Placement, SiteRecord, SiteState};
use ferry_proxy::Proxy;
use ferry_store::{EtcdConfig, EtcdStore, Store};
use serde_json::json;

/// Bound on anything the measurements wait for (a hang, not a timing check).
const DEADLINE: Duration = Duration::from_secs(600);
const PREFIX: &str = "/ferry-bench";
/// Site changes per admin batch of the orchestrator's flip (ferry-orch's
/// `router::APPLY_CHUNK`).
const APPLY_CHUNK: usize = 50_000;
/// Hosts per query when checking a router holds the flipped unit.
const QUERY_CHUNK: usize = 5_000;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: not a whole number")),
        Err(_) => default,
    }
}

fn host(i: usize) -> String {
    format!("site{i:07}.example-hosting.com")
}

fn rec(host: &str, placement: &str, state: SiteState, epoch: u64) -> SiteRecord {
    SiteRecord {
        host: Hostname::parse(host).unwrap(),
        placement: Placement::parse(placement).unwrap(),
        state,
        epoch: Epoch(epoch),
    }
}

// ---------------------------------------------------------------- etcd

/// Three etcd members on loopback, killed when dropped.
struct Cluster {
    _dir: tempfile::TempDir,
    ports: Vec<u16>,
    children: Vec<Child>,
}

impl Cluster {
    fn start() -> Cluster {
        let mut last = String::new();
        for _ in 0..3 {
            match Cluster::try_start() {
                Ok(c) => return c,
                Err(e) => last = e,
            }
        }
        panic!("cannot start etcd: {last}");
    }

    fn try_start() -> Result<Cluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let listeners: Vec<TcpListener> = (0..6)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let initial: Vec<String> = (0..3)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let initial = initial.join(",");
        let mut cluster = Cluster {
            _dir: dir,
            ports: Vec::new(),
            children: Vec::new(),
        };
        for i in 0..3 {
            let client = format!("http://127.0.0.1:{}", ports[2 * i]);
            let peer = format!("http://127.0.0.1:{}", ports[2 * i + 1]);
            let path = cluster._dir.path();
            let log = std::fs::File::create(path.join(format!("m{i}.log"))).unwrap();
            let child = Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(path.join(format!("m{i}")))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-token", "ferry-measure"])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--max-txn-ops", "1024"])
                // 3M sites rewritten in a flip stay under it before compaction.
                .args(["--quota-backend-bytes", &(8u64 << 30).to_string()])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot run etcd ({e}); install Debian's etcd-server"))?;
            cluster.children.push(child);
            cluster.ports.push(ports[2 * i]);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for &port in &cluster.ports {
            while !health(port) {
                if Instant::now() > deadline {
                    return Err("members not healthy in time".into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(cluster)
    }

    fn endpoints(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    fn client(&self) -> EtcdStore {
        let mut cfg = EtcdConfig::new(self.endpoints(), PREFIX);
        cfg.max_txn_ops = 1024;
        cfg.request_timeout = Duration::from_secs(120);
        EtcdStore::connect(cfg).expect("connect to etcd")
    }

    /// A client of member `i` alone (status and defragmentation are per member).
    fn member(&self, i: usize) -> EtcdStore {
        let mut cfg = EtcdConfig::new(vec![self.endpoints()[i].clone()], PREFIX);
        cfg.request_timeout = Duration::from_secs(300);
        EtcdStore::connect(cfg).expect("connect to an etcd member")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn health(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

/// `(dbSize, dbSizeInUse)` of one member, in bytes.
fn db_size(member: &EtcdStore) -> (i64, i64) {
    let s = member
        .call("status", |mut c| async move { c.status().await })
        .expect("member status");
    (s.db_size(), s.raft_used_db_size())
}

// ------------------------------------------------------------ backends

/// A backend answering every request with 200 and `body`.
fn backend(body: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

// ------------------------------------------------------------ routers

fn router_config(
    lease_ttl: &str,
    dir: &Path,
    name: &str,
    endpoints: &[String],
    backends: [SocketAddr; 2],
) -> PathBuf {
    let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let [web, dest] = backends;
    let text = format!(
        r#"
[router]
name = "{name}"

[[listener]]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"
insecure_no_auth = true

[[pool]]
name = "web"

[[pool.server]]
name = "a"
address = "{web}"

[[pool]]
name = "dest"

[[pool.server]]
name = "b"
address = "{dest}"

[store]
backend = "etcd"
endpoints = [{}]
prefix = "{PREFIX}"
lease_ttl = "{lease_ttl}"
request_timeout = "10s"
"#,
        list.join(", ")
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Run by `RouterProcess::start` in a child process: one router on a runtime
/// of its own; writes `admin traffic start_ms sites` to the ready file once
/// started, then serves until killed (or orphaned). Does nothing when run
/// by itself.
#[test]
#[ignore = "run as a child process by measure_control_plane"]
fn router_child() {
    let Ok(config) = std::env::var("FERRY_MEASURE_ROUTER_CONFIG") else {
        return;
    };
    let ready = PathBuf::from(std::env::var("FERRY_MEASURE_ROUTER_READY").unwrap());
    // What the router logs goes to its log file (the parent's stderr for it).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let cfg = ferry_config::load(Path::new(&config)).expect("config");
    let proxy: Arc<Proxy> = rt
        .block_on(Proxy::start(cfg, Some(PathBuf::from(&config))))
        .expect("router start");
    let took = started.elapsed();
    let line = format!(
        "{} {} {} {}",
        proxy.admin_addr().unwrap(),
        proxy.listen_addrs()[0],
        took.as_millis(),
        proxy.site_count()
    );
    let tmp = ready.with_extension("tmp");
    std::fs::write(&tmp, line).unwrap();
    std::fs::rename(&tmp, &ready).unwrap();
    // The parent kills it; an orphan (the parent died) stops by itself.
    while std::os::unix::process::parent_id() != 1 {
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A router in a child process, killed when dropped.
struct RouterProcess {
    child: Child,
    admin: SocketAddr,
    traffic: SocketAddr,
    start: Duration,
    sites: usize,
}

impl RouterProcess {
    fn start(dir: &Path, config: &Path, name: &str) -> RouterProcess {
        let ready = dir.join(format!("{name}.ready"));
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["router_child", "--exact", "--ignored", "--nocapture"])
            .env("FERRY_MEASURE_ROUTER_CONFIG", config)
            .env("FERRY_MEASURE_ROUTER_READY", &ready)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        while !ready.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("router {name} exited ({status}); see its log");
            }
            assert!(Instant::now() < deadline, "router {name} not ready in time");
            std::thread::sleep(Duration::from_millis(10));
        }
        let line = std::fs::read_to_string(&ready).unwrap();
        let f: Vec<&str> = line.split(' ').collect();
        RouterProcess {
            admin: f[0].parse().unwrap(),
            traffic: f[1].parse().unwrap(),
            start: Duration::from_millis(f[2].parse().unwrap()),
            sites: f[3].parse().unwrap(),
            child,
        }
    }

    /// Resident memory of the router's process (from /proc), in MiB.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------ HTTP

/// One HTTP/1.1 request on a new connection; (status, body).
fn http(addr: SocketAddr, method: &str, host: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// A kept-alive connection to a router's admin API for polling a site
/// without a new connection per poll.
struct Poller {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Poller {
    fn new(addr: SocketAddr) -> Poller {
        Poller { addr, conn: None }
    }

    /// The router's epoch of `host` (0 when it has none).
    fn epoch(&mut self, host: &str) -> u64 {
        for _ in 0..3 {
            if let Some(e) = self.try_epoch(host) {
                return e;
            }
            self.conn = None;
        }
        panic!("router admin {} does not answer", self.addr);
    }

    fn try_epoch(&mut self, host: &str) -> Option<u64> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
            s.set_nodelay(true).ok()?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut()?;
        write!(
            conn.get_mut(),
            "GET /v1/sites/{host} HTTP/1.1\r\nHost: admin\r\n\r\n"
        )
        .ok()?;
        let mut status = String::new();
        conn.read_line(&mut status).ok()?;
        let code: u16 = status.split(' ').nth(1)?.parse().ok()?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().ok()?;
                }
            }
        }
        let mut body = vec![0u8; length];
        conn.read_exact(&mut body).ok()?;
        if code == 404 {
            return Some(0);
        }
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        v["epoch"].as_u64()
    }

    /// Polls until the router holds `host` at `epoch`; the time since `from`.
    fn until(&mut self, host: &str, epoch: u64, from: Instant, every: Duration) -> Duration {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.epoch(host) >= epoch {
                return from.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{host} not at epoch {epoch} in time"
            );
            std::thread::sleep(every);
        }
    }
}

// ------------------------------------------------------------ reporting

/// A counter or gauge of a router's `/metrics`.
fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, body) = http(admin, "GET", "admin", "/metrics", "");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} at {admin}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn report(line: String, json: serde_json::Value) {
    println!("{line}");
    println!("{json}");
}

// ------------------------------------------------------------ the measures

/// Writes `n` sites (plain puts, batches of 1,000); compacts, defragments every
/// member and reports the space per site.
fn write_and_measure_space(cluster: &Cluster, etcd: &EtcdStore, n: usize) {
    let members: Vec<EtcdStore> = (0..3).map(|i| cluster.member(i)).collect();
    let empty: Vec<(i64, i64)> = members.iter().map(db_size).collect();
    let written = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..n {
        batch.push(rec(&host(i), "pool:web", SiteState::Active, 1));
        if batch.len() == 1000 || i + 1 == n {
            etcd.put_sites(&batch).unwrap();
            batch.clear();
        }
    }
    let written = written.elapsed();
    report(
        format!(
            "write: {n} sites in {:.1} s (plain puts, batches of 1,000)",
            written.as_secs_f64()
        ),
        json!({"measure": "write", "sites": n, "seconds": written.as_secs_f64()}),
    );
    let before: Vec<(i64, i64)> = members.iter().map(db_size).collect();
    let compacted = Instant::now();
    etcd.compact(etcd.revision().unwrap()).unwrap();
    for m in &members {
        m.call("defragment", |mut c| async move { c.defragment().await })
            .expect("defragment");
    }
    let compacted = compacted.elapsed();
    let after: Vec<(i64, i64)> = members.iter().map(db_size).collect();

    // The keys' and values' own bytes: the key from the store's layout, the
    // value as etcd holds it (read back for one site).
    let key0 = etcd.key(&format!("sites/{}", host(0)));
    let value0 = etcd
        .call("read a site", move |mut c| {
            let key = key0.clone();
            async move { c.get(key, None).await }
        })
        .unwrap();
    let value_len = value0.kvs()[0].value().len();
    let kv: usize = (0..n)
        .map(|i| etcd.key(&format!("sites/{}", host(i))).len() + value_len)
        .sum();
    let per = |(size, _): (i64, i64), (e, _): (i64, i64)| (size - e) as f64 / n as f64;
    let per_in_use = |(_, used): (i64, i64), (_, e): (i64, i64)| (used - e) as f64 / n as f64;
    let worst = (0..3)
        .map(|i| per(after[i], empty[i]))
        .fold(0.0_f64, f64::max);
    report(
        format!(
            "space: {n} sites, after compaction + defrag: dbSize {:.1} MB = {:.0} B/site \
             (largest of 3 members {:.0} B/site), dbSizeInUse {:.0} B/site; keys + values \
             {:.0} B/site; before compaction dbSize {:.0} B/site; compact + defrag 3 members {:.1} s",
            (after[0].0 - empty[0].0) as f64 / 1e6,
            per(after[0], empty[0]),
            worst,
            per_in_use(after[0], empty[0]),
            kv as f64 / n as f64,
            per(before[0], empty[0]),
            compacted.as_secs_f64(),
        ),
        json!({
            "measure": "space", "sites": n,
            "empty_db_size": empty[0].0,
            "db_size": after[0].0,
            "db_size_in_use": after[0].1,
            "bytes_per_site": per(after[0], empty[0]),
            "bytes_per_site_worst_member": worst,
            "in_use_bytes_per_site": per_in_use(after[0], empty[0]),
            "key_value_bytes_per_site": kv as f64 / n as f64,
            "before_compaction_bytes_per_site": per(before[0], empty[0]),
            "compact_defrag_seconds": compacted.as_secs_f64(),
        }),
    );
}

/// Starts the routers one after the other, each timed on its own.
fn start_routers(
    cluster: &Cluster,
    dir: &Path,
    count: usize,
    n: usize,
    lease_ttl: &str,
) -> Vec<RouterProcess> {
    let backends = [backend("web"), backend("dest")];
    let mut routers = Vec::new();
    for i in 0..count {
        let name = format!("r{i}");
        let config = router_config(lease_ttl, dir, &name, &cluster.endpoints(), backends);
        let r = RouterProcess::start(dir, &config, &name);
        assert_eq!(r.sites, n, "router {name} loaded {} sites of {n}", r.sites);
        routers.push(r);
    }
    let starts: Vec<f64> = routers.iter().map(|r| r.start.as_secs_f64()).collect();
    let rss: Vec<f64> = routers.iter().map(RouterProcess::rss_mib).collect();
    let shown: Vec<String> = starts.iter().map(|s| format!("{s:.2} s")).collect();
    report(
        format!(
            "load: {count} routers on {n} sites from etcd, one after the other: {} \
             (first {:.2} s, slowest {:.2} s); resident memory {:.0} MiB each",
            shown.join(", "),
            starts[0],
            starts.iter().cloned().fold(0.0, f64::max),
            rss.iter().sum::<f64>() / rss.len() as f64,
        ),
        json!({"measure": "load", "sites": n, "routers": count, "seconds": starts, "rss_mib": rss}),
    );
    routers
}

/// Fresh snapshots and lost leases per router.
fn resnapshots(routers: &[RouterProcess]) -> Vec<(f64, f64)> {
    routers
        .iter()
        .map(|r| {
            (
                metric(r.admin, "ferry_store_resnapshots_total"),
                metric(r.admin, "ferry_store_leases_lost_total"),
            )
        })
        .collect()
}

/// Nothing written for `idle`: a watch lost meanwhile (each costs a fresh
/// snapshot of every site) shows in the routers' counters.
fn idle_watches(routers: &[RouterProcess], idle: Duration, lease_ttl: &str) {
    let before = resnapshots(routers);
    std::thread::sleep(idle);
    let after = resnapshots(routers);
    let lost: Vec<f64> = before.iter().zip(&after).map(|(b, a)| a.0 - b.0).collect();
    report(
        format!(
            "idle: {} s without writes (lease_ttl {lease_ttl}): fresh snapshots per router \
             meanwhile {lost:?}; since start (fresh snapshots, leases lost) {after:?}",
            idle.as_secs()
        ),
        json!({"measure": "idle", "seconds": idle.as_secs(), "lease_ttl": lease_ttl,
               "resnapshots_while_idle": lost, "since_start": after}),
    );
}

/// Another client's writes of one site each, until every router answers with it.
fn write_to_applied(
    etcd: &EtcdStore,
    routers: &[RouterProcess],
    n: usize,
    unit: usize,
    writes: usize,
    every: Duration,
) {
    let mut pollers: Vec<Poller> = routers.iter().map(|r| Poller::new(r.admin)).collect();
    let mut all = Vec::with_capacity(writes);
    let mut each = Vec::with_capacity(writes * routers.len());
    // Sites outside the unit the flip moves, spread over the table.
    let spread = (n - unit).max(1);
    let mut slowest = (Duration::ZERO, 0, 0);
    let mut etcd_write = Vec::with_capacity(writes);
    for w in 0..writes {
        let h = host(unit + (w * (spread / writes).max(1)) % spread);
        // Newer than anything before, even when the table is too small for
        // every write to have a site of its own.
        let epoch = 2 + w as u64;
        let t = Instant::now();
        let times: Vec<Duration> = std::thread::scope(|s| {
            let tasks: Vec<_> = pollers
                .iter_mut()
                .map(|p| {
                    let h = h.as_str();
                    s.spawn(move || p.until(h, epoch, t, every))
                })
                .collect();
            etcd.apply_sites(&[rec(&h, "pool:dest", SiteState::Active, epoch)])
                .unwrap();
            etcd_write.push(t.elapsed());
            tasks.into_iter().map(|j| j.join().unwrap()).collect()
        });
        for (r, d) in times.iter().enumerate() {
            if *d > slowest.0 {
                slowest = (*d, w, r);
            }
        }
        all.push(*times.iter().max().unwrap());
        each.extend(times);
        std::thread::sleep(Duration::from_millis(10));
    }
    all.sort();
    each.sort();
    etcd_write.sort();
    // A slow outlier is explained by a lost lease or a fresh snapshot, if any.
    let counters = resnapshots(routers);
    report(
        format!(
            "write to applied at every one of {} routers, {writes} writes: p50 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms (at one router: p50 {:.1} ms, p99 {:.1} ms; polled every {} us); \
             the etcd write alone p50 {:.1} ms, p99 {:.1} ms; slowest: write {} at router r{}; \
             fresh snapshots / leases lost per router since start: {:?}",
            routers.len(),
            ms(percentile(&all, 0.5)),
            ms(percentile(&all, 0.99)),
            ms(*all.last().unwrap()),
            ms(percentile(&each, 0.5)),
            ms(percentile(&each, 0.99)),
            every.as_micros(),
            ms(percentile(&etcd_write, 0.5)),
            ms(percentile(&etcd_write, 0.99)),
            slowest.1,
            slowest.2,
            counters,
        ),
        json!({
            "measure": "write_to_applied", "routers": routers.len(), "writes": writes,
            "every_router_ms": {"p50": ms(percentile(&all, 0.5)), "p99": ms(percentile(&all, 0.99)), "max": ms(*all.last().unwrap())},
            "one_router_ms": {"p50": ms(percentile(&each, 0.5)), "p99": ms(percentile(&each, 0.99)), "max": ms(*each.last().unwrap())},
            "poll_us": every.as_micros() as u64,
            "etcd_write_ms": {"p50": ms(percentile(&etcd_write, 0.5)), "p99": ms(percentile(&etcd_write, 0.99))},
            "slowest": {"write": slowest.1, "router": slowest.2},
            "resnapshots_leases_lost": counters,
        }),
    );
}

/// `POST /v1/sites` of `changes` in batches of [`APPLY_CHUNK`], as the
/// orchestrator sends a flip to one router.
fn send_flip(admin: SocketAddr, changes: &[SiteChange]) {
    for chunk in changes.chunks(APPLY_CHUNK) {
        let body = serde_json::to_string(&SiteBatch {
            sites: chunk.to_vec(),
        })
        .unwrap();
        let (status, answer) = http(admin, "POST", "admin", "/v1/sites", &body);
        assert_eq!(status, 200, "flip batch at {admin}: {answer}");
    }
}

fn changes(hosts: &[String], placement: &str, state: SiteState, epoch: u64) -> Vec<SiteChange> {
    hosts
        .iter()
        .map(|h| SiteChange {
            host: Some(h.clone()),
            placement: placement.into(),
            state,
            epoch,
        })
        .collect()
}

/// What [`orchestrated`] timed, from the first batch sent.
struct Orchestrated {
    /// The destination's routers (the first half) answered every batch.
    first_half: Duration,
    /// Every router answered every batch.
    answered: Duration,
    /// Per router: when it held the last host at the new epoch.
    applied: Vec<Duration>,
}

/// Sends `changes` to the first half of the routers (the destination's) at
/// once, then to the others at once, each router polled for the last host
/// at `epoch` meanwhile.
fn orchestrated(
    routers: &[RouterProcess],
    changes: &[SiteChange],
    epoch: u64,
    every: Duration,
) -> Orchestrated {
    let last = changes.last().unwrap().host.clone().unwrap();
    let t = Instant::now();
    std::thread::scope(|s| {
        let polls: Vec<_> = routers
            .iter()
            .map(|r| {
                let last = last.as_str();
                s.spawn(move || Poller::new(r.admin).until(last, epoch, t, every))
            })
            .collect();
        let (dst, rest) = routers.split_at(routers.len().div_ceil(2));
        let mut first_half = Duration::ZERO;
        for (i, group) in [dst, rest].into_iter().enumerate() {
            std::thread::scope(|g| {
                for r in group {
                    g.spawn(move || send_flip(r.admin, changes));
                }
            });
            if i == 0 {
                first_half = t.elapsed();
            }
        }
        let answered = t.elapsed();
        let applied = polls.into_iter().map(|j| j.join().unwrap()).collect();
        Orchestrated {
            first_half,
            answered,
            applied,
        }
    })
}

/// A unit of `unit` sites frozen, then flipped to `pool:dest` the way the
/// orchestrator writes it; then every router must hold and serve it there.
fn flip(routers: &[RouterProcess], unit: usize, every: Duration) {
    let hosts: Vec<String> = (0..unit).map(host).collect();
    let frozen = orchestrated(
        routers,
        &changes(&hosts, "pool:web", SiteState::Frozen, 2),
        2,
        every,
    );
    let flipped = orchestrated(
        routers,
        &changes(&hosts, "pool:dest", SiteState::Active, 3),
        3,
        every,
    );
    // Every router holds every site of the unit at the destination ...
    for r in routers {
        for chunk in hosts.chunks(QUERY_CHUNK) {
            let body = serde_json::to_string(&HostList {
                hosts: chunk.to_vec(),
            })
            .unwrap();
            let (status, answer) = http(r.admin, "POST", "admin", "/v1/sites/query", &body);
            assert_eq!(status, 200, "{answer}");
            let answer: QueryAnswer = serde_json::from_str(&answer).unwrap();
            assert_eq!(answer.sites.len(), chunk.len());
            for q in answer.sites {
                match q {
                    QueriedSite::Present(s) => assert!(
                        s.placement == "pool:dest" && s.state == SiteState::Active && s.epoch == 3,
                        "router {} holds {} at {} {:?} epoch {}",
                        r.admin,
                        s.host,
                        s.placement,
                        s.state,
                        s.epoch
                    ),
                    QueriedSite::Absent(a) => panic!("router {} lost {}", r.admin, a.host),
                }
            }
        }
        // ... and serves it from there.
        for i in (0..unit).step_by((unit / 20).max(1)) {
            let (status, body) = http(r.traffic, "GET", &host(i), "/", "");
            assert_eq!(
                (status, body.as_str()),
                (200, "dest"),
                "{} at {}",
                host(i),
                r.traffic
            );
        }
    }
    let shown: Vec<String> = flipped
        .applied
        .iter()
        .map(|d| format!("{:.2} s", d.as_secs_f64()))
        .collect();
    let slowest = flipped.applied.iter().max().copied().unwrap_or_default();
    let secs = |d: &Duration| d.as_secs_f64();
    report(
        format!(
            "flip: {unit} sites to a new placement through {} routers' admin API (batches of \
             {APPLY_CHUNK}, the destination's half first): that half answered in {:.2} s, every \
             router in {:.2} s; each router held the unit's last site after {} (slowest {:.2} s); \
             the freeze before it: {:.2} s / {:.2} s; every router then served the unit from the \
             new placement",
            routers.len(),
            secs(&flipped.first_half),
            secs(&flipped.answered),
            shown.join(", "),
            secs(&slowest),
            secs(&frozen.first_half),
            secs(&frozen.answered),
        ),
        json!({
            "measure": "flip", "sites": unit, "routers": routers.len(),
            "first_half_answered_seconds": secs(&flipped.first_half),
            "answered_seconds": secs(&flipped.answered),
            "applied_seconds": flipped.applied.iter().map(secs).collect::<Vec<_>>(),
            "freeze_first_half_answered_seconds": secs(&frozen.first_half),
            "freeze_answered_seconds": secs(&frozen.answered),
        }),
    );
}

/// The same unit flipped back by one client writing etcd itself
/// (`apply_sites`, `ops_per_txn` records a transaction: a router's is etcd's
/// default, 128), until every router holds its last site: the etcd write alone,
/// without the admin path and the routers writing the same records at once.
fn direct_flip(
    cluster: &Cluster,
    routers: &[RouterProcess],
    unit: usize,
    ops_per_txn: usize,
    epoch: u64,
    every: Duration,
) {
    let mut cfg = EtcdConfig::new(cluster.endpoints(), PREFIX);
    cfg.max_txn_ops = ops_per_txn;
    cfg.request_timeout = Duration::from_secs(120);
    let etcd = EtcdStore::connect(cfg).expect("connect to etcd");
    let records: Vec<SiteRecord> = (0..unit)
        .map(|i| rec(&host(i), "pool:web", SiteState::Active, epoch))
        .collect();
    let last = host(unit - 1);
    let t = Instant::now();
    let (written, applied) = std::thread::scope(|s| {
        let polls: Vec<_> = routers
            .iter()
            .map(|r| {
                let last = last.as_str();
                s.spawn(move || Poller::new(r.admin).until(last, epoch, t, every))
            })
            .collect();
        etcd.apply_sites(&records).unwrap();
        let written = t.elapsed();
        let applied: Vec<Duration> = polls.into_iter().map(|j| j.join().unwrap()).collect();
        (written, applied)
    });
    let slowest = applied.iter().max().copied().unwrap_or_default();
    report(
        format!(
            "flip written to etcd by one client: {unit} sites, {ops_per_txn} a transaction: \
             written in {:.2} s, every one of {} routers held the last site after {:.2} s",
            written.as_secs_f64(),
            routers.len(),
            slowest.as_secs_f64(),
        ),
        json!({
            "measure": "flip_direct", "sites": unit, "ops_per_txn": ops_per_txn,
            "written_seconds": written.as_secs_f64(),
            "applied_seconds": applied.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
        }),
    );
}

/// The measurements of the module documentation.
#[test]
#[ignore = "a measurement; bench/control-plane/run.sh runs it"]
fn measure_control_plane() {
    let n = env_usize("FERRY_BENCH_SITES", 100_000);
    let count = env_usize("FERRY_BENCH_ROUTERS", 4);
    let writes = env_usize("FERRY_BENCH_WRITES", 200);
    let unit = env_usize("FERRY_BENCH_UNIT", 100_000).min(n);
    let every = Duration::from_micros(env_usize("FERRY_BENCH_POLL_US", 1000) as u64);
    let idle = Duration::from_secs(env_usize("FERRY_BENCH_IDLE_S", 30) as u64);
    let lease_ttl = std::env::var("FERRY_BENCH_LEASE_TTL").unwrap_or_else(|_| "10s".into());
    assert!(
        n >= 1 && count >= 1 && writes >= 1,
        "sites, routers and writes must be at least 1"
    );
    let cluster = Cluster::start();
    let etcd = cluster.client();
    write_and_measure_space(&cluster, &etcd, n);
    let dir = tempfile::tempdir().unwrap();
    let routers = start_routers(&cluster, dir.path(), count, n, &lease_ttl);
    if idle > Duration::ZERO {
        idle_watches(&routers, idle, &lease_ttl);
    }
    write_to_applied(&etcd, &routers, n, unit, writes, every);
    if unit > 0 {
        flip(&routers, unit, every);
        direct_flip(&cluster, &routers, unit, 128, 4, every);
        direct_flip(&cluster, &routers, unit, 1024, 5, every);
    }
    drop(routers);
}
