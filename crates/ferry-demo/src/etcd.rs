//! `ferry demo --control etcd`: the same move with the control plane on a
//! 3-member etcd cluster (docs/control-plane.md): two routers per
//! datacenter load and watch the sites in etcd, register there, and the
//! orchestrator keeps its journal and lease there. One record per site
//! serves both datacenters: it names the pool the site lives in, and each
//! router resolves it (`[[remote]] pools`).
//!
//! The members are `etcd` children on free loopback ports under the demo's
//! work directory, killed and reaped when the [`Cluster`] is dropped.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::topology::{free_port, Site, TOKEN};

/// The key prefix of the demo's control plane.
pub const PREFIX: &str = "/ferry-demo";
/// The run id: the journal lives under `PREFIX/runs/demo/`.
pub const RUN: &str = "demo";
const MEMBERS: usize = 3;
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Three etcd members on loopback.
pub struct Cluster {
    members: Vec<Member>,
}

struct Member {
    name: String,
    client_port: u16,
    log: PathBuf,
    child: Child,
}

impl Cluster {
    /// Starts the members under `dir` and waits until each answers healthy.
    pub fn start(dir: &Path) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let ports: Vec<(u16, u16)> = (0..MEMBERS)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            members: Vec::new(),
        };
        for (i, &(client_port, peer_port)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let log = dir.join(format!("{name}.log"));
            let out = File::create(&log)?;
            let (client, peer) = (
                format!("http://127.0.0.1:{client_port}"),
                format!("http://127.0.0.1:{peer_port}"),
            );
            let child = Command::new("etcd")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.join(&name))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-token", "ferry-demo"])
                .args(["--initial-cluster-state", "new"])
                // Fast elections on loopback; the routers' and runner's leases
                // (seconds) are well above an election.
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--max-txn-ops", "4096"])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .context(
                    "--control etcd runs the etcd server, which is not installed here \
                     (Debian: apt-get install etcd-server)",
                )?;
            c.members.push(Member {
                name,
                client_port,
                log,
                child,
            });
        }
        for m in &mut c.members {
            m.wait_healthy()?;
        }
        Ok(c)
    }

    /// `http://127.0.0.1:PORT` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The endpoints as a TOML array.
    pub fn endpoints_toml(&self) -> String {
        format!("{:?}", self.endpoints())
    }
}

impl Member {
    fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let end = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                bail!("etcd member {} exited ({status}):\n{log}", self.name);
            }
            if healthy(self.client_port) {
                return Ok(());
            }
            if Instant::now() > end {
                bail!(
                    "etcd member {} not healthy after {START_TIMEOUT:?}; its log: {}",
                    self.name,
                    self.log.display()
                );
            }
            // etcd writes no readiness file; /health is its signal.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
    }
}

/// etcd's `/health` says `"health":"true"` once the member has a leader.
fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
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
    let _ = s.take(64 * 1024).read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

/// One router of a datacenter on etcd.
pub struct EtcdRouter<'a> {
    pub name: &'a str,
    /// The clients' listener, and the one other routers forward to
    /// (trusted: their `ferry-via` and client address are believed).
    pub listen: u16,
    pub peers: u16,
    /// Its datacenter's pool and shop servers.
    pub pool: &'a str,
    pub servers: &'a [(String, SocketAddr)],
    /// The other datacenter: its name, a router's peer port there, and the
    /// pool it holds.
    pub remote: (&'a str, u16, &'a str),
    /// The sites it writes to etcd at its start (the first router only:
    /// the others load them from etcd).
    pub seeds: &'a [Site],
}

/// The config of a router whose sites live in etcd.
pub fn router_config(r: &EtcdRouter<'_>, endpoints_toml: &str) -> String {
    let (remote, remote_port, remote_pool) = r.remote;
    let mut c = format!(
        r#"[router]
name = "{name}"
# Frozen sites hold requests this long at most; a freeze lasts well under it.
hold_max = "30s"
retry_after = 1

[store]
backend = "etcd"
endpoints = {endpoints_toml}
prefix = "{PREFIX}"
lease_ttl = "4s"

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[[listener]]
listen = "127.0.0.1:{listen}"

# For the other datacenter's routers only: a request they sent on before
# they froze a site goes through here, as part of their drain.
[[listener]]
listen = "127.0.0.1:{peers}"
trusted = true

# The other datacenter: pool:{remote_pool} is forwarded there.
[[remote]]
name = "{remote}"
address = "127.0.0.1:{remote_port}"
pools = ["{remote_pool}"]

[[pool]]
name = "{pool}"
"#,
        name = r.name,
        listen = r.listen,
        peers = r.peers,
        pool = r.pool,
    );
    for (server, addr) in r.servers {
        let _ = write!(
            c,
            "\n[[pool.server]]\nname = \"{server}\"\naddress = \"{addr}\"\n"
        );
    }
    for s in r.seeds {
        let _ = write!(
            c,
            "\n[[site]]\nhost = \"{}\"\nplacement = \"pool:{}\"\nepoch = 1\n",
            s.host, r.pool
        );
    }
    c
}

/// migrate.toml's `[store]`: the journal and lease in etcd, and one record
/// per site shared by every router.
pub fn migrate_store(endpoints_toml: &str) -> String {
    format!(
        r#"
[store]
backend = "etcd"
endpoints = {endpoints_toml}
prefix = "{PREFIX}"
run = "{RUN}"
lease_ttl = "5s"
shared_records = true
"#
    )
}

/// The flags `ferry migrate status` needs to read the run in etcd.
pub fn status_args(endpoints: &[String]) -> Vec<String> {
    vec![
        "--control".into(),
        "etcd".into(),
        "--etcd-endpoints".into(),
        endpoints.join(","),
        "--etcd-prefix".into(),
        PREFIX.into(),
        "--run".into(),
        RUN.into(),
    ]
}
