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
            let (client, peer) = (
                format!("http://127.0.0.1:{client_port}"),
                format!("http://127.0.0.1:{peer_port}"),
            );
            let flags = MemberFlags {
                name: &name,
                data_dir: &dir.join(&name),
                listen_client: client.clone(),
                advertise_client: client,
                listen_peer: peer.clone(),
                advertise_peer: peer,
                initial_cluster: &initial,
                token: "ferry-demo",
                state: "new",
                // Fast elections on loopback; the routers' and runner's
                // leases (seconds) are well above an election.
                timing_ms: (50, 500),
            };
            let child = flags.spawn(Command::new("etcd"), &log)?;
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
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        wait_healthy(&self.name, &self.log, Some(&mut self.child), || {
            Ok(healthy(addr))
        })
    }
}

/// The flags of one member of a small cluster started for a run.
pub struct MemberFlags<'a> {
    pub name: &'a str,
    pub data_dir: &'a Path,
    pub listen_client: String,
    pub advertise_client: String,
    pub listen_peer: String,
    pub advertise_peer: String,
    /// `--initial-cluster`: `name=peer-url,...`.
    pub initial_cluster: &'a str,
    pub token: &'a str,
    /// `new`, or `existing` for a member started again on its data.
    pub state: &'a str,
    /// Heartbeat interval and election timeout, in ms.
    pub timing_ms: (u32, u32),
}

impl MemberFlags<'_> {
    /// Spawns `etcd` (`cmd`: a plain command, or one that enters a
    /// namespace) with these flags, its output appended to `log`.
    pub fn spawn(&self, mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
        let out = File::options().create(true).append(true).open(log)?;
        let (heartbeat, election) = (self.timing_ms.0.to_string(), self.timing_ms.1.to_string());
        cmd.args(["--name", self.name])
            .arg("--data-dir")
            .arg(self.data_dir)
            .args(["--listen-client-urls", &self.listen_client])
            .args(["--advertise-client-urls", &self.advertise_client])
            .args(["--listen-peer-urls", &self.listen_peer])
            .args(["--initial-advertise-peer-urls", &self.advertise_peer])
            .args(["--initial-cluster", self.initial_cluster])
            .args(["--initial-cluster-token", self.token])
            .args(["--initial-cluster-state", self.state])
            .args(["--heartbeat-interval", &heartbeat])
            .args(["--election-timeout", &election])
            .args(["--max-txn-ops", "4096"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context(
                "--control etcd runs the etcd server, which is not installed here \
                 (Debian: apt-get install etcd-server)",
            )
    }
}

/// Waits until `probe` says member `name` is healthy; fails if its
/// `child` exits first or after 30 s, pointing at its `log`.
pub fn wait_healthy(
    name: &str,
    log: &Path,
    mut child: Option<&mut Child>,
    mut probe: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let end = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(c) = child.as_mut() {
            if let Some(status) = c.try_wait()? {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("etcd member {name} exited ({status}):\n{text}");
            }
        }
        if probe()? {
            return Ok(());
        }
        if Instant::now() > end {
            bail!(
                "etcd member {name} not healthy after {START_TIMEOUT:?}; its log: {}",
                log.display()
            );
        }
        // etcd writes no readiness file; /health is its signal.
        std::thread::sleep(Duration::from_millis(50));
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

/// etcd's `/health` at `addr` says `"health":"true"` once the member has a
/// leader.
pub fn healthy(addr: SocketAddr) -> bool {
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
    pub listen: SocketAddr,
    pub peers: SocketAddr,
    /// The admin API (port 0: any; the ready file says which).
    pub admin: SocketAddr,
    /// Its datacenter's pool and shop servers.
    pub pool: &'a str,
    pub servers: &'a [(String, SocketAddr)],
    /// The other datacenter: its name, a router's peers' listener there,
    /// and the pool it holds.
    pub remote: (&'a str, SocketAddr, &'a str),
    /// The sites it writes to etcd at its start (the first router only:
    /// the others load them from etcd).
    pub seeds: &'a [Site],
}

/// The config of a router whose sites live in etcd.
pub fn router_config(r: &EtcdRouter<'_>, endpoints_toml: &str) -> String {
    let (remote, remote_addr, remote_pool) = r.remote;
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
# What it applied, to start from while etcd is out of reach.
local_copy = "local-copy.db"

[admin]
listen = "{admin}"
token = "{TOKEN}"

[[listener]]
listen = "{listen}"

# For the other datacenter's routers only: a request they sent on before
# they froze a site goes through here, as part of their drain.
[[listener]]
listen = "{peers}"
trusted = true

# The other datacenter: pool:{remote_pool} is forwarded there.
[[remote]]
name = "{remote}"
address = "{remote_addr}"
pools = ["{remote_pool}"]

[[pool]]
name = "{pool}"
"#,
        name = r.name,
        listen = r.listen,
        peers = r.peers,
        admin = r.admin,
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
