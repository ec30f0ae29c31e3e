//! A real etcd cluster for tests (Debian's `etcd-server`, installed by
//! scripts/test.sh): members on free loopback ports in a temporary
//! directory, killed by their process when the cluster is dropped. Shared by
//! ferry-journal's and ferry-orch's etcd tests (`#[path]`).

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
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A cluster of etcd members, killed when dropped.
pub struct Cluster {
    _dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl Cluster {
    /// Starts `n` members and waits until every one is healthy; on a port
    /// taken meanwhile by another process, the cluster starts again on new ones.
    pub fn start(n: usize) -> Cluster {
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
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster { _dir: dir, members };
        for m in &mut c.members {
            let log = std::fs::File::create(&m.log).map_err(|e| e.to_string())?;
            let peer = format!("http://127.0.0.1:{}", m.peer_port);
            let client = format!("http://127.0.0.1:{}", m.client_port);
            let child = Command::new("etcd")
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
            if health(m.client_port) {
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
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
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
