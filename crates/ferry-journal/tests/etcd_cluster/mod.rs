//! A real etcd cluster for tests (Debian's `etcd-server`, installed by
//! scripts/test.sh): members on free loopback ports in a temporary
//! directory, killed by their process when the cluster is dropped. Shared by
//! ferry-journal's, ferry-orch's and ferry's etcd tests (`#[path]`). With
//! [`Tls`] the members serve clients over https only (their health is then
//! read on a plain metrics listener).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a member gets to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(60);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plain-http `/health` (and `/metrics`) beside an https client port.
    metrics_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A cluster of etcd members, killed when dropped.
pub struct Cluster {
    _dir: tempfile::TempDir,
    members: Vec<Member>,
    tls: bool,
}

/// PEM files of the members' TLS: the CA clients must trust, the members'
/// certificate and key (for 127.0.0.1), and whether a client must present
/// a certificate signed by the CA.
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert_auth: bool,
}

impl Cluster {
    /// Starts `n` members and waits until every one is healthy; on a port
    /// taken meanwhile by another process, the cluster starts again on new ones.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, None)
    }

    /// The same, clients served over https only with `tls`.
    pub fn start_with(n: usize, tls: Option<&Tls>) -> Cluster {
        let mut last = String::new();
        for _ in 0..3 {
            match Cluster::try_start(n, tls) {
                Ok(c) => return c,
                Err(e) => last = e,
            }
        }
        panic!("could not start an etcd cluster of {n}: {last}");
    }

    fn try_start(n: usize, tls: Option<&Tls>) -> Result<Cluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let listeners: Vec<TcpListener> = (0..3 * n)
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
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                metrics_port: ports[3 * i + 2],
                data_dir: dir.path().join(format!("m{i}")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            _dir: dir,
            members,
            tls: tls.is_some(),
        };
        let scheme = if c.tls { "https" } else { "http" };
        for m in &mut c.members {
            let log = std::fs::File::create(&m.log).map_err(|e| e.to_string())?;
            let peer = format!("http://127.0.0.1:{}", m.peer_port);
            let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
            let mut cmd = Command::new("etcd");
            if let Some(t) = tls {
                cmd.arg("--cert-file").arg(&t.cert);
                cmd.arg("--key-file").arg(&t.key);
                cmd.arg("--trusted-ca-file").arg(&t.ca);
                cmd.arg(format!("--client-cert-auth={}", t.client_cert_auth));
            }
            let metrics = format!("http://127.0.0.1:{}", m.metrics_port);
            let child = cmd
                .args(["--name", &m.name])
                .arg("--data-dir")
                .arg(&m.data_dir)
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-token", "ferry-test"])
                .args(["--initial-cluster-state", "new"])
                // Fast elections, and leases of 1 s allowed (etcd's shortest
                // TTL is 1.5 election timeouts).
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--max-txn-ops", "1024"])
                .args(["--listen-metrics-urls", &metrics])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run etcd ({e}); install Debian's etcd-server (scripts/test.sh does)")
                });
            m.child = Some(child);
        }
        for i in 0..n {
            c.wait_healthy(i)?;
        }
        Ok(c)
    }

    fn wait_healthy(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let m = &mut self.members[i];
            if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                return Err(format!("member {} exited ({status}): {log}", m.name));
            }
            if health(m.metrics_port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "member {} not healthy after {START_TIMEOUT:?}",
                    m.name
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| {
                let scheme = if self.tls { "https" } else { "http" };
                format!("{scheme}://127.0.0.1:{}", m.client_port)
            })
            .collect()
    }
}

impl Cluster {
    /// Turns etcd authentication on (a cluster without TLS): `root`, which
    /// etcd requires first, and `user`, both with `password` and the root
    /// role. From then on every client must log in.
    pub fn enable_auth(&self, user: &str, password: &str) {
        let cfg = ferry_store::EtcdConfig::new(self.endpoints(), "/auth-setup");
        let store = ferry_store::EtcdStore::connect(cfg).expect("connect to set up auth");
        for name in ["root", user] {
            let (name, pw) = (name.to_string(), password.to_string());
            store
                .call("add a user", move |mut c| {
                    let (name, pw) = (name.clone(), pw.clone());
                    async move {
                        c.user_add(name.clone(), pw, None).await?;
                        c.user_grant_role(name, "root").await
                    }
                })
                .expect("add a user");
        }
        store
            .call("enable auth", |mut c| async move { c.auth_enable().await })
            .expect("enable auth");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `GET /health` by hand: true when the member has a leader and no alarm.
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
