//! Who must acknowledge a freeze on the etcd control plane, with real
//! processes: 3 etcd members (Debian's `etcd-server`), routers run as `ferry
//! proxy` children, the orchestrator's freeze wait (`ferry_orch::fleet`, the
//! function the freeze step runs), `ferry ctl routers` and `curl`.
//!
//! - A router killed with SIGKILL blocks a freeze (its lease expires, it is
//!   still "seen") until it restarts and acknowledges, or an operator retires
//!   it; a retired router that starts again is no longer retired; a router
//!   that joins is counted by the next freeze.
//! - A router cut from etcd loses its lease: a frozen site stays held (503
//!   after hold_max), a settled one serves; once etcd is back it registers
//!   again after a fresh snapshot.
//!
//! Each test starts its own members, backend and routers on free loopback
//! ports in a temporary directory and kills what it started by process id.
#![cfg(feature = "etcd")]

#[path = "../../ferry-journal/tests/etcd_cluster/mod.rs"]
mod etcd_cluster;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_cluster::Cluster;
use ferry_model::{Epoch, Hostname, Placement, SiteRecord, SiteState};
use ferry_orch::acks::{Acks, Registration, Waiting};
use ferry_store::{EtcdConfig, EtcdStore};

/// Bound on anything the tests wait for (a hang, not a timing check).
const DEADLINE: Duration = Duration::from_secs(60);
const PREFIX: &str = "/ferry-fleet";

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn client(endpoints: Vec<String>) -> EtcdStore {
    EtcdStore::connect(EtcdConfig::new(endpoints, PREFIX)).expect("connect to etcd")
}

fn rec(host: &str, state: SiteState, epoch: u64) -> SiteRecord {
    SiteRecord {
        host: Hostname::parse(host).unwrap(),
        placement: Placement::parse("pool:web").unwrap(),
        state,
        epoch: Epoch(epoch),
    }
}

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

/// A `ferry proxy` child process on etcd, killed (SIGKILL) when dropped.
struct RouterProc {
    child: Child,
    admin: SocketAddr,
    traffic: SocketAddr,
}

impl RouterProc {
    /// Writes NAME.toml in `dir` (new ports each time) and starts the router.
    fn start(dir: &Path, name: &str, endpoints: &[String], backend: SocketAddr) -> RouterProc {
        let (admin, traffic) = (free_port(), free_port());
        let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
        let text = format!(
            r#"[router]
name = "{name}"
hold_max = "1s"

[[listener]]
listen = "127.0.0.1:{traffic}"

[admin]
listen = "127.0.0.1:{admin}"
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
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("proxy")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run ferry proxy");
        let r = RouterProc {
            child,
            admin: ([127, 0, 0, 1], admin).into(),
            traffic: ([127, 0, 0, 1], traffic).into(),
        };
        until(&format!("router {name}'s admin API"), || {
            curl(&["-o", "/dev/null", &format!("http://{}/healthz", r.admin)]).0 == 200
        });
        r
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// GET / of `host` through the router: (status, body).
    fn get(&self, host: &str) -> (u16, String) {
        curl(&[
            "-H",
            &format!("Host: {host}"),
            &format!("http://{}/", self.traffic),
        ])
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, body) = curl(&[&format!("http://{}/metrics", self.admin)]);
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `curl -s ARGS`: (HTTP status, body); status 0 when there was no answer.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `ferry ctl --json routers ARGS --etcd-endpoints ...`: (exit code, stdout, stderr).
fn ctl(endpoints: &[String], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["ctl", "--json", "routers"])
        .args(args)
        .args([
            "--etcd-endpoints",
            &endpoints.join(","),
            "--etcd-prefix",
            PREFIX,
        ])
        .output()
        .expect("run ferry ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A freeze wait running on its own runtime, as the freeze step runs it:
/// its verdicts as it goes, and its answer.
struct FreezeWait {
    verdicts: Arc<Mutex<Vec<Acks>>>,
    done: std::thread::JoinHandle<Result<Vec<String>, (String, String)>>,
}

impl FreezeWait {
    /// Freezes `host` at `epoch` in etcd (what a router's admin API writes
    /// for the orchestrator), then waits for the fleet's acknowledgements.
    fn start(etcd: &Arc<EtcdStore>, host: &str, epoch: u64) -> FreezeWait {
        etcd.apply_sites(&[rec(host, SiteState::Frozen, epoch)])
            .expect("write the freeze");
        let verdicts: Arc<Mutex<Vec<Acks>>> = Arc::default();
        let (etcd, v) = (Arc::clone(etcd), Arc::clone(&verdicts));
        let sites = vec![host.to_string()];
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let revision = ferry_orch::fleet::freeze_revision(&etcd, &sites)
                    .await
                    .unwrap();
                ferry_orch::fleet::wait_freeze_acks(
                    &etcd,
                    epoch,
                    revision,
                    Instant::now() + DEADLINE,
                    Duration::from_millis(100),
                    move |a| v.lock().unwrap().push(a.clone()),
                )
                .await
            })
        });
        FreezeWait { verdicts, done }
    }

    /// Waits until a verdict says `router` is awaited for `why`.
    fn until_waiting_for(&self, router: &str, why: impl Fn(&Waiting) -> bool) {
        until(&format!("the freeze to wait for {router}"), || {
            self.verdicts
                .lock()
                .unwrap()
                .iter()
                .any(|a| a.waiting.iter().any(|(n, w)| n == router && why(w)))
        });
    }

    fn finished(&self) -> bool {
        self.done.is_finished()
    }

    fn answer(self) -> Result<Vec<String>, (String, String)> {
        let deadline = Instant::now() + DEADLINE;
        while !self.done.is_finished() {
            assert!(Instant::now() < deadline, "the freeze wait hangs");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.done.join().expect("the freeze wait panicked")
    }
}

fn registration(etcd: &EtcdStore, name: &str) -> Option<Registration> {
    etcd.registration(name)
        .unwrap()
        .map(|v| Registration::parse(&v).unwrap())
}

/// A router killed while a freeze waits blocks it until it restarts and
/// acknowledges; killed again, the next freeze waits until an operator
/// retires it; a router that joins is counted by the next freeze; a retired
/// router that starts again is no longer retired.
#[test]
fn a_killed_router_blocks_the_freeze_until_it_returns_or_is_retired() {
    let cluster = Cluster::start(3);
    let endpoints = cluster.endpoints();
    let etcd = Arc::new(client(endpoints.clone()));
    etcd.apply_sites(&[
        rec("a.example", SiteState::Active, 1),
        rec("b.example", SiteState::Active, 1),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let be = backend();
    let r1 = RouterProc::start(dir.path(), "r1", &endpoints, be);
    let mut r2 = RouterProc::start(dir.path(), "r2", &endpoints, be);
    until("r1 and r2 registered and seen", || {
        let f = etcd.fleet().unwrap();
        f.registered.len() == 2 && f.seen.len() == 2
    });
    assert_eq!(r1.get("a.example"), (200, "ok".into()));

    // 1. r2 is killed; the freeze waits for it, r1 alone is not enough.
    r2.kill();
    let wait = FreezeWait::start(&etcd, "a.example", 2);
    wait.until_waiting_for("r2", |w| *w == Waiting::NotRegistered);
    let last = wait.verdicts.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.acknowledged, vec!["r1"], "{last:?}");
    // The verdict can only change when r2 registers again: give the wait
    // several polls to prove it does not end without it.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!wait.finished(), "the freeze completed without r2");
    // r2 comes back: it loads a snapshot holding the freeze and acknowledges.
    let mut r2 = RouterProc::start(dir.path(), "r2", &endpoints, be);
    let acked = wait.answer().expect("acknowledged once r2 is back");
    assert_eq!(acked, vec!["r1", "r2"]);
    assert_eq!(
        r2.get("a.example").0,
        503,
        "frozen at r2: held, then refused"
    );

    // 2. r2 killed again; the next freeze waits until the operator retires it.
    r2.kill();
    let wait = FreezeWait::start(&etcd, "b.example", 3);
    wait.until_waiting_for("r2", |w| *w == Waiting::NotRegistered);
    let (code, _, err) = ctl(&endpoints, &["retire", "r1"]);
    assert_eq!(code, 3, "a registered router is not retired: {err}");
    assert!(err.contains("r1 is registered"), "{err}");
    let (code, _, err) = ctl(&endpoints, &["retire", "nope"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no router nope was ever seen"), "{err}");
    assert!(!wait.finished(), "the freeze completed without r2");
    let (code, out, err) = ctl(&endpoints, &["retire", "r2", "--reason", "decommissioned"]);
    assert_eq!(code, 0, "{out}{err}");
    let acked = wait.answer().expect("acknowledged once r2 is retired");
    assert_eq!(acked, vec!["r1"]);
    let (code, out, _) = ctl(&endpoints, &["list"]);
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r2_row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "r2")
        .unwrap();
    assert_eq!(r2_row["retired"], true, "{out}");
    assert_eq!(r2_row["blocks_freezes"], false, "{out}");

    // 3. r3 joins during the migration: the next freeze counts it.
    let r3 = RouterProc::start(dir.path(), "r3", &endpoints, be);
    until("r3 registered", || registration(&etcd, "r3").is_some());
    let wait = FreezeWait::start(&etcd, "a.example", 4);
    let acked = wait.answer().expect("r1 and r3 acknowledge");
    assert_eq!(acked, vec!["r1", "r3"]);

    // 4. r2 starts again: no longer retired, awaited again.
    let _r2 = RouterProc::start(dir.path(), "r2", &endpoints, be);
    until("r2's retirement cleared", || {
        etcd.fleet().unwrap().retired.is_empty()
    });
    let wait = FreezeWait::start(&etcd, "b.example", 5);
    assert_eq!(wait.answer().unwrap(), vec!["r1", "r2", "r3"]);
    drop((r1, r3));
}

// ------------------------------------------------- a TCP relay we can cut

/// Relays connections to the members; `cut` closes every relayed connection
/// and refuses new ones until `resume`: the router is cut from etcd while
/// the rest of the world still reaches it.
struct Relay {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(to: Vec<String>) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, o) = (down.clone(), open.clone());
        let to: Vec<String> = to
            .iter()
            .map(|e| e.trim_start_matches("http://").to_string())
            .collect();
        std::thread::spawn(move || {
            let mut next = 0;
            for conn in l.incoming() {
                let Ok(client) = conn else { continue };
                if d.load(Ordering::SeqCst) {
                    continue;
                }
                next += 1;
                let Ok(server) = TcpStream::connect(&to[next % to.len()]) else {
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

/// A router cut from etcd past its lease's TTL: it counts the lease as lost
/// and says it is unregistered; its frozen site is not served (held, then
/// 503) while its settled site is; once etcd answers again it takes a fresh
/// snapshot (a change made meanwhile is applied) and registers again.
#[test]
fn a_router_that_loses_its_lease_holds_frozen_sites_and_serves_settled_ones() {
    let cluster = Cluster::start(3);
    let endpoints = cluster.endpoints();
    let etcd = client(endpoints.clone());
    etcd.apply_sites(&[
        rec("steady.example", SiteState::Active, 1),
        rec("moving.example", SiteState::Frozen, 2),
    ])
    .unwrap();
    let relay = Relay::start(endpoints.clone());
    let dir = tempfile::tempdir().unwrap();
    let via: Vec<String> = vec![format!("http://{}", relay.addr)];
    let r = RouterProc::start(dir.path(), "cut", &via, backend());
    until("registered", || {
        registration(&etcd, "cut").is_some() && r.metric("ferry_store_registered") == 1.0
    });
    let resnapshots = r.metric("ferry_store_resnapshots_total");

    relay.cut();
    until("the lease counted as lost", || {
        r.metric("ferry_store_leases_lost_total") >= 1.0
            && r.metric("ferry_store_registered") == 0.0
    });
    until("the registration gone from etcd", || {
        registration(&etcd, "cut").is_none()
    });
    assert_eq!(r.get("steady.example"), (200, "ok".into()));
    let (status, body) = r.get("moving.example");
    assert_eq!(status, 503, "a frozen site must not be served: {body}");

    // Meanwhile the unit is flipped and settled elsewhere: the router learns
    // it from a fresh snapshot once it reaches etcd again.
    etcd.apply_sites(&[rec("moving.example", SiteState::Active, 3)])
        .unwrap();
    let settled = etcd.revision().unwrap();
    assert_eq!(r.get("moving.example").0, 503, "still cut: still held");
    relay.resume();
    until("registered again after a fresh snapshot", || {
        r.metric("ferry_store_registered") == 1.0
            && registration(&etcd, "cut").is_some_and(|g| g.revision >= settled)
    });
    assert!(r.metric("ferry_store_resnapshots_total") > resnapshots);
    assert_eq!(r.get("moving.example"), (200, "ok".into()));
    assert_eq!(r.get("steady.example"), (200, "ok".into()));
}
