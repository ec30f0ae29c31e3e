//! `ferry rehearse --control etcd`: the control plane on etcd, split across
//! the datacenters the way a provider with two sites runs it: two members
//! in the destination (m0, m1), one in the source (m2). Either DC alone
//! without m0 and m1 has no quorum; the source alone never has one.
//!
//! Members bind 0.0.0.0 in their namespace on fixed ports (m0 2379/2380,
//! m1 2381/2382, m2 2383/2384) and advertise their DC's wan address, so
//! one endpoint list serves routers and orchestrators in either DC. The
//! wan's latency relays (a kernel without netem) do not carry etcd: its
//! traffic crosses the link without the added delay, and a cut of the
//! link cuts it like everything else.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;

use crate::world::{Net, GRA_WAN, PAR_WAN};

/// Where each member lives: (name, in the source DC, client port).
const MEMBERS: [(&str, bool, u16); 3] =
    [("m0", false, 2379), ("m1", false, 2381), ("m2", true, 2383)];

/// The three members; killed and reaped when dropped.
pub struct Members {
    dir: PathBuf,
    members: Vec<Member>,
}

struct Member {
    name: &'static str,
    at_source: bool,
    client: SocketAddr,
    peer: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Members {
    /// Starts the three members under `dir` and waits until each has a leader.
    pub fn start(net: &Net, dir: &Path) -> anyhow::Result<Members> {
        std::fs::create_dir_all(dir)?;
        let members = MEMBERS
            .iter()
            .map(|&(name, at_source, port)| {
                let ip = if at_source { PAR_WAN } else { GRA_WAN };
                Member {
                    name,
                    at_source,
                    client: SocketAddr::from((ip, port)),
                    peer: SocketAddr::from((ip, port + 1)),
                    log: dir.join(format!("{name}.log")),
                    child: None,
                }
            })
            .collect();
        let mut m = Members {
            dir: dir.to_path_buf(),
            members,
        };
        for i in 0..m.members.len() {
            m.spawn(net, i, "new")?;
        }
        for i in 0..m.members.len() {
            m.wait_healthy(net, i)?;
        }
        Ok(m)
    }

    /// `http://IP:PORT` of every member, as both DCs reach them.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }

    pub fn endpoints_toml(&self) -> String {
        format!("{:?}", self.endpoints())
    }

    /// SIGKILL member `i` (its data stays for [`Members::restart`]).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed member again on its data directory. Returns once it
    /// runs; [`Members::wait_healthy`] says when it has a leader again.
    pub fn restart(&mut self, net: &Net, i: usize) -> anyhow::Result<()> {
        if self.members[i].child.is_none() {
            self.spawn(net, i, "existing")?;
        }
        Ok(())
    }

    fn spawn(&mut self, net: &Net, i: usize, state: &str) -> anyhow::Result<()> {
        let initial = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let ns = if m.at_source { &net.par } else { &net.gra };
        let any = |port: u16| format!("http://{}", SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
        let child = ferry_demo::etcd::MemberFlags {
            name: m.name,
            data_dir: &self.dir.join(m.name),
            listen_client: any(m.client.port()),
            advertise_client: format!("http://{}", m.client),
            listen_peer: any(m.peer.port()),
            advertise_peer: format!("http://{}", m.peer),
            initial_cluster: &initial,
            token: "ferry-rehearse",
            state,
            // Elections as a WAN deployment tunes them for a few ms of
            // round trip; the routers' (4 s) and runner's (5 s) leases are
            // well above an election.
            timing_ms: (100, 1000),
        }
        .spawn(ns.command("etcd"), &m.log)?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until member `i` answers healthy (it sees a leader), from
    /// inside its namespace.
    pub fn wait_healthy(&mut self, net: &Net, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        let ns = if m.at_source { &net.par } else { &net.gra };
        let addr = m.client;
        ferry_demo::etcd::wait_healthy(m.name, &m.log, m.child.as_mut(), || {
            Ok(ns.run(|| ferry_demo::etcd::healthy(addr))?)
        })
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
