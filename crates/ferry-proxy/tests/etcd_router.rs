//! The router with `[store] backend = "etcd"` on a real 3-member etcd (Debian's
//! `etcd-server`): it starts from what etcd holds, follows writes by other
//! clients through its watch (an older epoch never overwrites), takes a fresh
//! snapshot after a compaction while its watch was cut, registers under a
//! lease that expires after `kill -9`, and restarts from its local copy while
//! etcd is down (settled sites serve, a frozen one stays held).
//!
//! Each test starts its own members, a backend and the router on free loopback
//! ports in a temporary directory, and kills what it started by process id.
//! Readiness is polled (the router's admin API, etcd's keys) with generous
//! deadlines that only catch hangs.
#![cfg(feature = "etcd")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_model::{Epoch, Hostname, Placement, SiteRecord, SiteState};
use ferry_proxy::Proxy;
use ferry_store::{EtcdConfig, EtcdStore, Store};

/// Bound on anything the tests wait for (a hang, not a timing check).
const DEADLINE: Duration = Duration::from_secs(60);
const PREFIX: &str = "/ferry-test";

// ---------------------------------------------------------------- etcd

struct Member {
    client_port: u16,
    child: Option<Child>,
}

/// Three etcd members, killed when dropped.
struct Cluster {
    _dir: tempfile::TempDir,
    members: Vec<Member>,
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
        let mut members = Vec::new();
        for i in 0..3 {
            let client = format!("http://127.0.0.1:{}", ports[2 * i]);
            let peer = format!("http://127.0.0.1:{}", ports[2 * i + 1]);
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
            let child = Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-token", "ferry-router-test"])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--max-txn-ops", "1024"])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot run etcd ({e}); install Debian's etcd-server"))?;
            members.push(Member {
                client_port: ports[2 * i],
                child: Some(child),
            });
        }
        let cluster = Cluster { _dir: dir, members };
        let deadline = Instant::now() + DEADLINE;
        for m in &cluster.members {
            while !health(m.client_port) {
                if Instant::now() > deadline {
                    return Err("members not healthy in time".into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(cluster)
    }

    fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    fn client(&self) -> EtcdStore {
        let mut cfg = EtcdConfig::new(self.endpoints(), PREFIX);
        cfg.max_txn_ops = 1024;
        EtcdStore::connect(cfg).expect("connect to etcd")
    }

    /// SIGKILL to every member.
    fn stop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
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

// ------------------------------------------------- a TCP relay we can cut

/// Relays connections to the members; `cut` closes every relayed connection
/// and refuses new ones until `resume`: the router's watch breaks while the
/// rest of the world keeps writing to etcd.
struct Relay {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(to: Vec<u16>) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, o) = (down.clone(), open.clone());
        std::thread::spawn(move || {
            let mut next = 0;
            for conn in l.incoming() {
                let Ok(client) = conn else { continue };
                if d.load(Ordering::SeqCst) {
                    continue;
                }
                next += 1;
                let Ok(server) = TcpStream::connect(("127.0.0.1", to[next % to.len()])) else {
                    continue;
                };
                let mut list = o.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Relay { addr, down, open }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn resume(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

// ------------------------------------------------------------ the router

/// A backend answering every request with 200 "ok".
fn backend() -> SocketAddr {
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
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    addr
}

fn router_config(dir: &Path, name: &str, endpoints: &[String], backend: SocketAddr) -> PathBuf {
    let path = router_config_without_copy(dir, name, endpoints, backend);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("local_copy = \"copy.db\"\n");
    std::fs::write(&path, text).unwrap();
    path
}

fn router_config_without_copy(
    dir: &Path,
    name: &str,
    endpoints: &[String],
    backend: SocketAddr,
) -> PathBuf {
    let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
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
address = "{backend}"

[store]
backend = "etcd"
endpoints = [{}]
prefix = "{PREFIX}"
lease_ttl = "2s"
request_timeout = "2s"
"#,
        list.join(", ")
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A router running in this process on a runtime of its own.
struct Router {
    proxy: Arc<Proxy>,
    rt: tokio::runtime::Runtime,
}

impl Router {
    fn start(config: &Path) -> Router {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cfg = ferry_config::load(config).expect("config");
        let proxy = rt
            .block_on(Proxy::start(cfg, Some(config.to_path_buf())))
            .expect("router start");
        Router { proxy, rt }
    }

    fn admin(&self) -> SocketAddr {
        self.proxy.admin_addr().unwrap()
    }

    fn traffic(&self) -> SocketAddr {
        self.proxy.listen_addrs()[0]
    }

    fn stop(self) {
        let proxy = self.proxy;
        self.rt.block_on(proxy.shutdown(Duration::from_secs(1)));
        self.rt.shutdown_timeout(Duration::from_secs(5));
    }
}

/// One HTTP/1.1 request; (status, body).
fn http(addr: SocketAddr, method: &str, host: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
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

/// The router's record of `host` (admin API), `None` when it has none.
fn site(admin: SocketAddr, host: &str) -> Option<(String, String, u64)> {
    let (status, body) = http(admin, "GET", "admin", &format!("/v1/sites/{host}"), "");
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    Some((
        v["placement"].as_str().unwrap().to_string(),
        v["state"].as_str().unwrap().to_string(),
        v["epoch"].as_u64().unwrap(),
    ))
}

fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, body) = http(admin, "GET", "admin", "/metrics", "");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rec(host: &str, placement: &str, state: SiteState, epoch: u64) -> SiteRecord {
    SiteRecord {
        host: Hostname::parse(host).unwrap(),
        placement: Placement::parse(placement).unwrap(),
        state,
        epoch: Epoch(epoch),
    }
}

fn expect(admin: SocketAddr, host: &str, placement: &str, state: &str, epoch: u64) {
    until(&format!("{host} at epoch {epoch}"), || {
        site(admin, host) == Some((placement.into(), state.into(), epoch))
    });
}

// ----------------------------------------------------------------- tests

/// Sites written before the start are served; another client's write is
/// applied through the watch; an older epoch written behind the epoch rule's
/// back is skipped; an admin write goes to etcd (judged there) and is
/// applied before the answer; the registration carries the applied revision.
#[test]
fn router_follows_etcd() {
    let cluster = Cluster::start();
    let etcd = cluster.client();
    etcd.apply_sites(&[
        rec("a.example.com", "pool:web", SiteState::Active, 1),
        rec("f.example.com", "pool:web", SiteState::Frozen, 4),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let router = Router::start(&router_config(
        dir.path(),
        "r1",
        &cluster.endpoints(),
        backend(),
    ));
    let admin = router.admin();
    assert_eq!(
        site(admin, "a.example.com"),
        Some(("pool:web".into(), "active".into(), 1))
    );
    let (status, body) = http(router.traffic(), "GET", "a.example.com", "/", "");
    assert_eq!((status, body.as_str()), (200, "ok"));

    // Another client's write.
    etcd.apply_sites(&[rec("a.example.com", "pool:web", SiteState::Maintenance, 2)])
        .unwrap();
    expect(admin, "a.example.com", "pool:web", "maintenance", 2);

    // An older epoch put without the rule (a plain put) never overwrites.
    etcd.put_sites(&[rec("a.example.com", "pool:web", SiteState::Active, 1)])
        .unwrap();
    etcd.apply_sites(&[rec("marker.example.com", "pool:web", SiteState::Active, 1)])
        .unwrap();
    until("the marker", || site(admin, "marker.example.com").is_some());
    assert_eq!(
        site(admin, "a.example.com"),
        Some(("pool:web".into(), "maintenance".into(), 2))
    );
    assert!(metric(admin, "ferry_store_stale_skipped_total") >= 1.0);

    // An admin write: in etcd and applied by the router when it answers.
    let (status, body) = http(
        admin,
        "PUT",
        "admin",
        "/v1/sites/b.example.com",
        r#"{"placement":"pool:web","state":"active","epoch":3}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        etcd.site(&Hostname::parse("b.example.com").unwrap())
            .unwrap(),
        Some(rec("b.example.com", "pool:web", SiteState::Active, 3))
    );
    let revision = etcd.revision().unwrap();
    assert!(metric(admin, "ferry_store_applied_revision") as i64 >= revision - 1);
    // An admin write that etcd judges stale (etcd holds epoch 5 the router
    // has not seen yet, or has: either way) changes nothing.
    etcd.apply_sites(&[rec("c.example.com", "pool:web", SiteState::Active, 5)])
        .unwrap();
    let (status, _) = http(
        admin,
        "PUT",
        "admin",
        "/v1/sites/c.example.com",
        r#"{"placement":"pool:web","state":"frozen","epoch":4}"#,
    );
    assert_eq!(status, 409);
    assert_eq!(
        etcd.site(&Hostname::parse("c.example.com").unwrap())
            .unwrap(),
        Some(rec("c.example.com", "pool:web", SiteState::Active, 5))
    );

    // Registration: the applied revision and the frozen epoch's in-flight count.
    until("the registration", || {
        etcd.registration("r1").unwrap().is_some_and(|v| {
            let v: serde_json::Value = serde_json::from_str(&v).unwrap();
            v["revision"].as_i64().unwrap() >= revision && v["frozen"]["4"] == 0
        })
    });
    router.stop();
}

/// The watch is cut; meanwhile another client changes, removes and adds
/// sites and etcd is compacted past the router's revision. When the link
/// comes back the router takes a fresh snapshot and ends with etcd's table.
/// A watch on which nothing happens is kept: etcd cuts a client that pings
/// more often than its `--grpc-keepalive-min-time` (5 s) while it has nothing
/// to send, and each cut cost a fresh snapshot of the whole table (with the
/// client's former 2 s pings, routers re-read everything every few seconds
/// of quiet). Watched for 20 s of quiet; a write then still arrives.
#[test]
fn an_idle_watch_is_kept() {
    let cluster = Cluster::start();
    let etcd = cluster.client();
    etcd.apply_sites(&[rec("a.example.com", "pool:web", SiteState::Active, 1)])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = router_config(dir.path(), "r1", &cluster.endpoints(), backend());
    // A long lease: its keep-alive answers (etcd sending data) would
    // otherwise forgive the pings on their connection.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("lease_ttl = \"2s\"", "lease_ttl = \"60s\""),
    )
    .unwrap();
    let router = Router::start(&config);
    let admin = router.admin();
    expect(admin, "a.example.com", "pool:web", "active", 1);
    // Observing that nothing happens takes time by nature; nothing waits
    // on a signal here.
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(metric(admin, "ferry_store_resnapshots_total"), 0.0);
    etcd.apply_sites(&[rec("a.example.com", "pool:web", SiteState::Maintenance, 2)])
        .unwrap();
    expect(admin, "a.example.com", "pool:web", "maintenance", 2);
    assert_eq!(metric(admin, "ferry_store_resnapshots_total"), 0.0);
    router.stop();
}

#[test]
fn compaction_while_the_watch_is_cut_means_a_fresh_snapshot() {
    let cluster = Cluster::start();
    let etcd = cluster.client();
    etcd.apply_sites(&[
        rec("a.example.com", "pool:web", SiteState::Active, 1),
        rec("b.example.com", "pool:web", SiteState::Active, 1),
    ])
    .unwrap();
    let relay = Relay::start(cluster.members.iter().map(|m| m.client_port).collect());
    let dir = tempfile::tempdir().unwrap();
    let router = Router::start(&router_config(
        dir.path(),
        "r1",
        &[relay.endpoint()],
        backend(),
    ));
    let admin = router.admin();
    expect(admin, "b.example.com", "pool:web", "active", 1);
    // The watch runs (a write by another client arrives through it).
    etcd.apply_sites(&[rec("w.example.com", "pool:web", SiteState::Active, 1)])
        .unwrap();
    expect(admin, "w.example.com", "pool:web", "active", 1);

    relay.cut();
    etcd.apply_sites(&[
        rec("a.example.com", "pool:web", SiteState::Frozen, 2),
        rec("c.example.com", "pool:web", SiteState::Active, 1),
    ])
    .unwrap();
    etcd.remove_sites(&[Hostname::parse("b.example.com").unwrap()])
        .unwrap();
    etcd.compact(etcd.revision().unwrap()).unwrap();
    until("the router to notice the cut", || {
        metric(admin, "ferry_store_resnapshots_total") >= 1.0
    });
    relay.resume();

    expect(admin, "a.example.com", "pool:web", "frozen", 2);
    expect(admin, "c.example.com", "pool:web", "active", 1);
    until("b removed", || site(admin, "b.example.com").is_none());
    // And the watch runs again afterwards.
    etcd.apply_sites(&[rec("d.example.com", "pool:web", SiteState::Active, 1)])
        .unwrap();
    expect(admin, "d.example.com", "pool:web", "active", 1);
    router.stop();
}

/// Started from `router_process_registers_under_a_lease`: a router in a
/// process of its own (so it can be killed with SIGKILL). Does nothing when
/// run by itself.
#[test]
#[ignore = "run as a child process by router_process_registers_under_a_lease"]
fn router_child() {
    let Ok(config) = std::env::var("FERRY_TEST_ROUTER_CONFIG") else {
        return;
    };
    let router = Router::start(Path::new(&config));
    let ready = std::env::var("FERRY_TEST_ROUTER_READY").unwrap();
    std::fs::write(&ready, router.admin().to_string()).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// The registration appears under a lease and disappears once the lease
/// expires after the router's process is killed with SIGKILL (no revoke).
#[test]
fn registration_expires_after_kill_9() {
    let cluster = Cluster::start();
    let etcd = cluster.client();
    let dir = tempfile::tempdir().unwrap();
    let config = router_config(dir.path(), "r9", &cluster.endpoints(), backend());
    let ready = dir.path().join("ready");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["router_child", "--exact", "--ignored", "--nocapture"])
        .env("FERRY_TEST_ROUTER_CONFIG", &config)
        .env("FERRY_TEST_ROUTER_READY", &ready)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        until("the child router", || ready.exists());
        until("the registration", || {
            etcd.registration("r9").unwrap().is_some()
        });
        let _ = child.kill();
        let _ = child.wait();
        let gone = Instant::now();
        until("the registration to expire", || {
            etcd.registration("r9").unwrap().is_none()
        });
        gone.elapsed()
    }));
    let _ = child.kill();
    let _ = child.wait();
    let after = killed.unwrap_or_else(|p| std::panic::resume_unwind(p));
    // Not before the lease could have expired (2 s TTL, last keep-alive at
    // most a third of it before the kill).
    assert!(after >= Duration::from_millis(500), "gone after {after:?}");
}

/// The router restarts while every etcd member is down: from its local copy,
/// a settled site serves and a frozen one stays held (503 after hold_max,
/// 10 s by default).
#[test]
fn restart_with_etcd_down_serves_settled_sites_from_the_copy() {
    let mut cluster = Cluster::start();
    let etcd = cluster.client();
    etcd.apply_sites(&[
        rec("a.example.com", "pool:web", SiteState::Active, 1),
        rec("f.example.com", "pool:web", SiteState::Frozen, 2),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = router_config(dir.path(), "r1", &cluster.endpoints(), backend());
    let router = Router::start(&config);
    let revision = etcd.revision().unwrap();
    let copy_revision = dir.path().join("copy.db.revision");
    until("the copy's revision", || {
        std::fs::read_to_string(&copy_revision)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .is_some_and(|r| r >= revision)
    });
    router.stop();
    drop(etcd);
    cluster.stop();

    let router = Router::start(&config);
    let admin = router.admin();
    assert_eq!(metric(admin, "ferry_store_from_copy"), 1.0);
    let (status, body) = http(router.traffic(), "GET", "a.example.com", "/", "");
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _) = http(router.traffic(), "GET", "f.example.com", "/", "");
    assert_eq!(status, 503, "a frozen site must not serve from the copy");
    assert_eq!(
        site(admin, "f.example.com"),
        Some(("pool:web".into(), "frozen".into(), 2))
    );
    // Writes need etcd: refused, nothing changes.
    let (status, _) = http(
        admin,
        "PUT",
        "admin",
        "/v1/sites/a.example.com",
        r#"{"placement":"pool:web","state":"active","epoch":9}"#,
    );
    assert!(status >= 500, "{status}");
    assert_eq!(
        site(admin, "a.example.com"),
        Some(("pool:web".into(), "active".into(), 1))
    );
    router.stop();
}
