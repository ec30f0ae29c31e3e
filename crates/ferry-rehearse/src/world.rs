//! The rehearsal's world: three network namespaces (the two datacenters and
//! the internet), the links between them, the sites' files, one `ferry
//! agent` per filer on each side, two shop servers and two routers per DC,
//! and `migrate.toml` as the orchestrator (in the destination DC) sees it.
//!
//! Addresses (private, and only inside the namespaces):
//!
//! ```text
//!   par 10.213.1.1 ==== wan (netem: latency, rate) ==== 10.213.1.2 gra
//!   par 10.213.3.2 ---- inet 10.213.3.1   inet 10.213.2.1 ---- 10.213.2.2 gra
//! ```
//!
//! Every server binds 0.0.0.0 inside its namespace on a fixed port (a fresh
//! namespace has every port free): routers 8081/8082 (traffic),
//! 8091/8092 (the other DC's routers, trusted: `--control etcd`) and
//! 9101/9102 (admin), agents 7701.. (one per filer).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_demo::app::{AppConfig, AppServer};
use ferry_demo::topology::{self, Router, RouterAddrs, Site, DESTINATION, SOURCE, TOKEN};

use crate::netns::{Applied, End, Link, Namespace, Netem};

/// Namespace names start with this (then the pid, then the role).
pub const PREFIX: &str = "ferry";
/// The agents' pre-shared key (inside the namespaces only).
const AGENT_KEY: &str = "ferry-rehearse-agent-key";

pub const PAR_WAN: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 1);
pub const GRA_WAN: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 2);
const INET_GRA: Ipv4Addr = Ipv4Addr::new(10, 213, 2, 1);
pub const GRA_PUBLIC: Ipv4Addr = Ipv4Addr::new(10, 213, 2, 2);
const INET_PAR: Ipv4Addr = Ipv4Addr::new(10, 213, 3, 1);
pub const PAR_PUBLIC: Ipv4Addr = Ipv4Addr::new(10, 213, 3, 2);
/// Where the latency relays listen (on lo) when the kernel has no netem:
/// in gra for the services of par, in par for those of gra.
const RELAY_GRA: Ipv4Addr = Ipv4Addr::new(10, 213, 4, 1);
const RELAY_PAR: Ipv4Addr = Ipv4Addr::new(10, 213, 4, 2);
/// A relay listens on its service's port + this (servers bind 0.0.0.0).
const RELAY_OFFSET: u16 = 10_000;
const TRAFFIC_PORT: u16 = 8080;
/// The listener for the other DC's routers (`--control etcd`).
const PEER_PORT: u16 = 8090;
const ADMIN_PORT: u16 = 9100;
pub const AGENT_PORT: u16 = 7700;

/// The three namespaces, their runtimes and the link that is measured.
/// Dropping it stops the runtimes (their tasks and children), then deletes
/// the namespaces (killing anything still inside).
pub struct Net {
    pub par: Namespace,
    pub gra: Namespace,
    pub inet: Namespace,
    /// The measured link (cut and restored by the partition scenarios).
    pub wan: Link,
    /// What the shaping of the wan could apply on this kernel.
    pub applied: Applied,
    /// Latency added by [`crate::delay`] relays when the kernel has no
    /// netem (zero otherwise).
    pub relay_delay: Duration,
    /// The source DC's services as the destination reaches them (the wan
    /// address, or a relay's that adds the latency), and the reverse.
    par_from_gra: Ipv4Addr,
    gra_from_par: Ipv4Addr,
    /// Added to a port to reach it through its relay (0 without relays).
    relay_offset: u16,
    runtimes: Runtimes,
}

/// Tokio runtimes whose threads live in a namespace; shut down without
/// waiting on drop (dropping a runtime inside another one would panic).
struct Runtimes(Vec<Option<tokio::runtime::Runtime>>);

impl Drop for Runtimes {
    fn drop(&mut self) {
        for rt in self.0.iter_mut().filter_map(Option::take) {
            rt.shutdown_background();
        }
    }
}

/// Which namespace's runtime.
#[derive(Clone, Copy)]
pub enum Place {
    Par,
    Gra,
    Inet,
}

impl Net {
    /// Creates the namespaces and links; `netem` shapes the wan both ways.
    /// Without netem in the kernel, relays add the latency on the ports
    /// that cross the wan (`filers` agents, the routers, and `more` ports
    /// of the source: its database servers).
    pub async fn create(netem: &Netem, filers: u32, more: &[u16]) -> anyhow::Result<Net> {
        let mut net = tokio::task::block_in_place(|| Net::namespaces(netem))?;
        let missing = netem.delay.saturating_sub(net.applied.delay);
        if missing.is_zero() {
            return Ok(net);
        }
        net.ip_on_lo(&net.gra, RELAY_GRA)?;
        net.ip_on_lo(&net.par, RELAY_PAR)?;
        let mut par_ports: Vec<u16> = (1..=filers).map(|f| AGENT_PORT + f as u16).collect();
        par_ports.extend(more);
        par_ports.extend([
            TRAFFIC_PORT + 1,
            TRAFFIC_PORT + 2,
            PEER_PORT + 1,
            PEER_PORT + 2,
            ADMIN_PORT + 1,
            ADMIN_PORT + 2,
        ]);
        for port in par_ports {
            let (at, to) = ((RELAY_GRA, port + RELAY_OFFSET), (PAR_WAN, port));
            net.handle(Place::Gra)
                .spawn(async move {
                    let l = tokio::net::TcpListener::bind(at).await?;
                    tokio::spawn(crate::delay::relay(l, to.into(), missing));
                    Ok::<_, std::io::Error>(())
                })
                .await??;
        }
        for port in [
            TRAFFIC_PORT + 1,
            TRAFFIC_PORT + 2,
            PEER_PORT + 1,
            PEER_PORT + 2,
        ] {
            let (at, to) = ((RELAY_PAR, port + RELAY_OFFSET), (GRA_WAN, port));
            net.handle(Place::Par)
                .spawn(async move {
                    let l = tokio::net::TcpListener::bind(at).await?;
                    tokio::spawn(crate::delay::relay(l, to.into(), missing));
                    Ok::<_, std::io::Error>(())
                })
                .await??;
        }
        net.relay_delay = missing;
        net.par_from_gra = RELAY_GRA;
        net.gra_from_par = RELAY_PAR;
        net.relay_offset = RELAY_OFFSET;
        Ok(net)
    }

    /// A port of the source DC as the destination reaches it.
    pub fn par_seen_from_gra(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.par_from_gra, port + self.relay_offset))
    }

    /// A port of the destination DC as the source reaches it.
    pub fn gra_seen_from_par(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.gra_from_par, port + self.relay_offset))
    }

    fn ip_on_lo(&self, ns: &Namespace, ip: Ipv4Addr) -> anyhow::Result<()> {
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
        Ok(())
    }

    fn namespaces(netem: &Netem) -> anyhow::Result<Net> {
        let par = Namespace::create(PREFIX, "par")?;
        let gra = Namespace::create(PREFIX, "gra")?;
        let inet = Namespace::create(PREFIX, "inet")?;
        let end = |ns, dev, addr| End {
            ns,
            dev,
            addr,
            prefix_len: 24,
        };
        let wan = Link::veth(end(&par, "wan", PAR_WAN), end(&gra, "wan", GRA_WAN))?;
        let applied = wan.shape(netem)?;
        Link::veth(
            end(&inet, "to-gra", INET_GRA),
            end(&gra, "public", GRA_PUBLIC),
        )?;
        Link::veth(
            end(&inet, "to-par", INET_PAR),
            end(&par, "public", PAR_PUBLIC),
        )?;
        let runtimes = Runtimes(vec![
            Some(par.runtime(2)?),
            Some(gra.runtime(2)?),
            Some(inet.runtime(2)?),
        ]);
        Ok(Net {
            par,
            gra,
            inet,
            wan,
            applied,
            relay_delay: Duration::ZERO,
            par_from_gra: PAR_WAN,
            gra_from_par: GRA_WAN,
            relay_offset: 0,
            runtimes,
        })
    }

    /// A handle to spawn on the runtime living in `place`.
    pub fn handle(&self, place: Place) -> tokio::runtime::Handle {
        let i = match place {
            Place::Par => 0,
            Place::Gra => 1,
            Place::Inet => 2,
        };
        match &self.runtimes.0[i] {
            Some(rt) => rt.handle().clone(),
            // Only Drop takes them.
            None => unreachable!("runtimes live as long as the Net"),
        }
    }

    /// The wan's round trip as a request sees it: the fastest of five
    /// small HTTP exchanges (each on a new connection) from the destination
    /// with a router at the source (it answers an unknown host at once).
    pub fn wan_rtt(&self) -> Option<Duration> {
        use std::io::{Read, Write};
        let to = self.par_seen_from_gra(TRAFFIC_PORT + 1);
        let once = || -> std::io::Result<Duration> {
            let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            c.set_nodelay(true)?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            let t0 = Instant::now();
            c.write_all(b"HEAD / HTTP/1.1\r\nHost: rtt.invalid\r\nConnection: close\r\n\r\n")?;
            let mut b = [0u8; 1];
            c.read_exact(&mut b)?;
            Ok(t0.elapsed())
        };
        self.gra
            .run(|| (0..5).filter_map(|_| once().ok()).min())
            .ok()
            .flatten()
    }

    pub fn names(&self) -> Vec<String> {
        [&self.par, &self.gra, &self.inet]
            .iter()
            .map(|n| n.name().to_string())
            .collect()
    }
}

/// The sites' files: the demo's (an index, 20 small assets, an orders.log
/// per site) and, on a few sites per filer, large media files. Returns the
/// sites and, per large file, (site index, path, bytes).
pub fn write_sites(
    work: &Path,
    sites: u32,
    filers: u32,
    large_bytes: u64,
) -> anyhow::Result<(Vec<Site>, Vec<LargeFile>)> {
    let par_root = work.join(SOURCE);
    let list = topology::generate_sites(&par_root, sites, filers)?;
    let mut large = Vec::new();
    // Two large files on each of the first two sites of every filer.
    let per_filer = 2.min(sites / filers.max(1)).max(1) as usize;
    for (i, site) in list.iter().enumerate() {
        if i / filers as usize >= per_filer {
            break;
        }
        let dir = site.dir(&par_root).join("media");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for n in 1..=2 {
            let rel = format!("media/video-{n}.bin");
            let bytes = large_bytes / n;
            std::fs::write(
                site.dir(&par_root).join(&rel),
                pattern(i as u64 * 7 + n, bytes),
            )?;
            large.push(LargeFile {
                site: i,
                path: rel,
                bytes,
            });
        }
    }
    for f in 0..filers {
        std::fs::create_dir_all(work.join(DESTINATION).join(topology::filer_name(f)))?;
    }
    Ok((list, large))
}

/// A large file a download client fetches.
#[derive(Clone, Debug)]
pub struct LargeFile {
    pub site: usize,
    pub path: String,
    pub bytes: u64,
}

/// Bytes that do not compress (xorshift), so the link carries them all.
fn pattern(seed: u64, len: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len as usize + 8);
    while (v.len() as u64) < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len as usize);
    v
}

/// A child process killed (and reaped) when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `ferry agent` per filer in each DC, serving the filer's copy as
/// volume `<filer>` on port 7700 + n.
pub fn start_agents(exe: &Path, net: &Net, work: &Path, filers: u32) -> anyhow::Result<Vec<Proc>> {
    let mut procs = Vec::new();
    for (dc, ns) in [(SOURCE, &net.par), (DESTINATION, &net.gra)] {
        for f in 0..filers {
            let filer = topology::filer_name(f);
            let dir = work.join("agents").join(dc).join(&filer);
            std::fs::create_dir_all(&dir)?;
            let conf = dir.join("agent.toml");
            std::fs::write(
                &conf,
                format!(
                    "listen = \"0.0.0.0:{}\"\nkey = \"{AGENT_KEY}\"\nmax_connections = 64\n\n[volumes.{filer}]\npath = {:?}\n",
                    AGENT_PORT + 1 + f as u16,
                    work.join(dc).join(&filer).display().to_string()
                ),
            )?;
            let log = dir.join("stderr.log");
            let child = ns
                .command(exe)
                .args(["--log-level", "warn", "agent", "--config"])
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .with_context(|| format!("starting the agent of {filer} in {dc}"))?;
            procs.push(Proc {
                name: format!("{dc}/{filer}"),
                child,
                log,
            });
        }
    }
    // Ready when its port accepts, from inside its namespace.
    for (i, p) in procs.iter_mut().enumerate() {
        let ns = if i < filers as usize {
            &net.par
        } else {
            &net.gra
        };
        let port = AGENT_PORT + 1 + (i as u32 % filers) as u16;
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let up = ns.run(|| {
                std::net::TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_secs(1),
                )
                .is_ok()
            })?;
            if up {
                break;
            }
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "agent {} exited ({status}) before it listened: {}",
                    p.name,
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                );
            }
            if Instant::now() > end {
                bail!("agent {} not listening after 30s", p.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(procs)
}

/// Every shop server's name and address (127.0.0.1 inside its DC).
pub type Pool = Vec<(String, SocketAddr)>;

/// Two shop servers per DC (the demo's app), on that DC's runtime, each
/// serving its DC's copy of the filers.
/// With `db` (host -> database), each also writes the sites' orders to
/// its DC's database server.
pub async fn start_shops(
    net: &Net,
    work: &Path,
    sites: &[Site],
    db: Option<&std::collections::HashMap<String, ferry_demo::app_db::SiteDb>>,
) -> anyhow::Result<(Vec<AppServer>, Pool, Pool)> {
    let mut apps = Vec::new();
    let mut pools = (Pool::new(), Pool::new());
    for (dc, place) in [(SOURCE, Place::Par), (DESTINATION, Place::Gra)] {
        let root = work.join(dc);
        for n in 1..=2 {
            let name = format!("{dc}-web-{n}");
            let config = Arc::new(AppConfig {
                dc: dc.to_string(),
                name: name.clone(),
                sites: sites
                    .iter()
                    .map(|s| (s.host.clone(), s.dir(&root)))
                    .collect(),
                db: db.map(|d| ferry_demo::app_db::AppDb::new("127.0.0.1".into(), d.clone())),
            });
            let app = net.handle(place).spawn(AppServer::start(config)).await??;
            let pool = if dc == SOURCE {
                &mut pools.0
            } else {
                &mut pools.1
            };
            pool.push((name, app.addr));
            apps.push(app);
        }
    }
    Ok((apps, pools.0, pools.1))
}

/// A router and where the others reach it.
pub struct RouterAt {
    pub router: Router,
    pub name: String,
    pub dc: &'static str,
    /// Its port number n (1 or 2): traffic 8080 + n, admin 9100 + n.
    pub n: u16,
    /// In front of its etcd endpoints and its admin listener, when it is
    /// the one a `router-cut` scenario cuts off ([`gate_router`]).
    pub gate: Option<crate::delay::Gate>,
}

impl RouterAt {
    /// Its traffic address as the internet sees it.
    pub fn public(&self) -> SocketAddr {
        let ip = if self.dc == SOURCE {
            PAR_PUBLIC
        } else {
            GRA_PUBLIC
        };
        SocketAddr::from((ip, TRAFFIC_PORT + self.n))
    }

    /// As the orchestrator (in the destination DC) sees it: (admin, traffic).
    fn seen_from_gra(&self, net: &Net) -> (SocketAddr, SocketAddr) {
        let (admin, traffic) = (ADMIN_PORT + self.n, TRAFFIC_PORT + self.n);
        if self.dc == SOURCE {
            (net.par_seen_from_gra(admin), net.par_seen_from_gra(traffic))
        } else {
            let lo = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            (lo(admin), lo(traffic))
        }
    }
}

/// Two routers per DC: par-n serves the sites from its pool; gra-n, where
/// the public IP points, forwards them over the wan to par-n until the flip.
/// With `etcd` (the members' endpoints as TOML), every router keeps the
/// sites in etcd, one record per site (`pool:par-web`, resolved by each
/// router: its own pool or the other DC's routers); par-1 writes them there
/// at its start, the others load them.
/// `gate_par_1`: par-1 reaches etcd, and is reached on its admin
/// listener, through a [`crate::delay::Gate`] (`router-cut` scenarios).
pub fn start_routers(
    exe: &Path,
    net: &Net,
    work: &Path,
    sites: &[Site],
    pools: (&Pool, &Pool),
    etcd: Option<&str>,
    gate_par_1: bool,
) -> anyhow::Result<Vec<RouterAt>> {
    let mut out = Vec::new();
    for (dc, pool) in [(SOURCE, pools.0), (DESTINATION, pools.1)] {
        for n in 1..=2u16 {
            let gated = gate_par_1 && dc == SOURCE && n == 1;
            let gate = gated.then(crate::delay::Gate::new);
            let conf = match (etcd, &gate) {
                (None, _) => static_router_config(net, &format!("{dc}-{n}"), dc, n, pool, sites),
                (Some(endpoints), gate) => {
                    let seeds = if dc == SOURCE && n == 1 { sites } else { &[] };
                    let (endpoints, admin) = match gate {
                        Some(g) => gate_router(net, g, n, endpoints)?,
                        None => (endpoints.to_string(), any(ADMIN_PORT + n)),
                    };
                    let r = RouterSpec {
                        n,
                        pool,
                        seeds,
                        admin,
                    };
                    etcd_router_config(net, &format!("{dc}-{n}"), dc, &r, &endpoints)
                }
            };
            let mut r = start_router(exe, net, work, dc, n, &conf)?;
            r.gate = gate;
            out.push(r);
        }
    }
    Ok(out)
}

/// Where a gated router's gates listen: its ports + this, on lo in its
/// namespace (etcd's 2379.. and admin 9100 + n are taken).
const GATE_OFFSET: u16 = 20_000;

/// Puts `gate` in front of source router n: its etcd endpoints become
/// gates on lo in par, one per member; its admin listener moves to lo
/// (port + [`GATE_OFFSET`]) and the gate takes its usual port, so the
/// orchestrator and the other routers reach it as before. Its traffic and
/// peer listeners stay direct: its clients still reach it. Returns its
/// endpoints (TOML) and its admin listener.
fn gate_router(
    net: &Net,
    gate: &crate::delay::Gate,
    n: u16,
    endpoints: &str,
) -> anyhow::Result<(String, SocketAddr)> {
    // `["http://IP:PORT", ...]`: a TOML array of strings is JSON too.
    let members: Vec<String> = serde_json::from_str(endpoints)?;
    let lo = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut gated = Vec::new();
    let mut gates = Vec::new();
    for m in &members {
        let to: SocketAddr = m
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("etcd endpoint {m:?}: not http://IP:PORT"))?;
        let at = lo(to.port() + GATE_OFFSET);
        gated.push(format!("http://{at}"));
        gates.push((at, to));
    }
    let admin = lo(ADMIN_PORT + n + GATE_OFFSET);
    gates.push((any(ADMIN_PORT + n), admin));
    for (at, to) in gates {
        // Bound here, in par (the namespace a socket is made in is its own).
        let l = net.par.run(|| {
            let l = std::net::TcpListener::bind(at)?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })??;
        let gate = gate.clone();
        net.handle(Place::Par).spawn(async move {
            // Fails only outside a runtime: this task runs in par's.
            if let Ok(l) = tokio::net::TcpListener::from_std(l) {
                gate.serve(l, to).await;
            }
        });
    }
    Ok((format!("{gated:?}"), admin))
}

/// Router `<dc>-<n>` with `conf`, in its DC's namespace; returns once ready.
pub fn start_router(
    exe: &Path,
    net: &Net,
    work: &Path,
    dc: &'static str,
    n: u16,
    conf: &str,
) -> anyhow::Result<RouterAt> {
    let ns = if dc == SOURCE { &net.par } else { &net.gra };
    let name = format!("{dc}-{n}");
    let dir = work.join("routers").join(&name);
    let router = ns.run(|| Router::start(exe, &dir, &name, conf))??;
    Ok(RouterAt {
        router,
        name,
        dc,
        n,
        gate: None,
    })
}

/// A router of the destination that joins later (`gra-<n>`, n > 2): its
/// sites from etcd, its remote the source's first router.
pub fn join_router(
    exe: &Path,
    net: &Net,
    work: &Path,
    n: u16,
    pool: &Pool,
    endpoints: &str,
) -> anyhow::Result<RouterAt> {
    let conf = ferry_demo::etcd::router_config(
        &ferry_demo::etcd::EtcdRouter {
            name: &format!("{DESTINATION}-{n}"),
            listen: any(TRAFFIC_PORT + n),
            peers: any(PEER_PORT + n),
            admin: any(ADMIN_PORT + n),
            pool: &format!("{DESTINATION}-web"),
            servers: pool,
            remote: (SOURCE, net.par_seen_from_gra(PEER_PORT + 1), "par-web"),
            seeds: &[],
        },
        endpoints,
    );
    start_router(exe, net, work, DESTINATION, n, &conf)
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

/// A router whose sites are in its config, pushed to by the orchestrator.
fn static_router_config(
    net: &Net,
    name: &str,
    dc: &str,
    n: u16,
    pool: &Pool,
    sites: &[Site],
) -> String {
    let (remote, remote_addr, placement) = if dc == SOURCE {
        (
            DESTINATION,
            net.gra_seen_from_par(TRAFFIC_PORT + n),
            "pool:par-web".to_string(),
        )
    } else {
        (
            SOURCE,
            net.par_seen_from_gra(TRAFFIC_PORT + n),
            format!("remote:{SOURCE}"),
        )
    };
    topology::router_config_at(
        name,
        RouterAddrs {
            listen: any(TRAFFIC_PORT + n),
            admin: any(ADMIN_PORT + n),
            remote: (remote, remote_addr),
        },
        &format!("{dc}-web"),
        pool,
        sites,
        &placement,
    )
}

/// Router n of a DC: its shop servers, the sites it writes to etcd at its
/// start, its admin listener.
struct RouterSpec<'a> {
    n: u16,
    pool: &'a Pool,
    seeds: &'a [Site],
    admin: SocketAddr,
}

/// A router that loads and watches the sites in etcd.
fn etcd_router_config(
    net: &Net,
    name: &str,
    dc: &str,
    r: &RouterSpec<'_>,
    endpoints: &str,
) -> String {
    let n = r.n;
    let remote = if dc == SOURCE {
        (DESTINATION, net.gra_seen_from_par(PEER_PORT + n), "gra-web")
    } else {
        (SOURCE, net.par_seen_from_gra(PEER_PORT + n), "par-web")
    };
    ferry_demo::etcd::router_config(
        &ferry_demo::etcd::EtcdRouter {
            name,
            listen: any(TRAFFIC_PORT + n),
            peers: any(PEER_PORT + n),
            admin: r.admin,
            pool: &format!("{dc}-web"),
            servers: r.pool,
            remote,
            seeds: r.seeds,
        },
        endpoints,
    )
}

/// How the night is run (`[freeze]` of migrate.toml).
pub struct FreezeSettings {
    pub max_freeze: Duration,
    pub drain_timeout: Duration,
}

/// A port of the source as the orchestrator reaches it: through its
/// latency relay, or (`etcd`: an orchestrator may run in either DC) at its
/// wan address.
pub fn source_port_for_orchestrator(net: &Net, etcd: bool, port: u16) -> SocketAddr {
    match etcd {
        false => net.par_seen_from_gra(port),
        true => SocketAddr::from((PAR_WAN, port)),
    }
}

/// `migrate.toml` as the orchestrator in the destination DC sees the world;
/// with `etcd` (the members' endpoints as TOML), as an orchestrator in
/// either DC does (every address a wan address, none through a latency
/// relay: a runner in the source takes a run over), with the journal, the
/// lease and one record per site in etcd; `databases`: the `[db_servers]`
/// and `[db]` sections.
pub fn migrate_config(
    net: &Net,
    routers: &[RouterAt],
    filers: u32,
    freeze: &FreezeSettings,
    etcd: Option<&str>,
    databases: Option<String>,
) -> String {
    let mut c = format!(
        "source = \"{SOURCE}\"\ndestination = \"{DESTINATION}\"\n\n[datacenters.{SOURCE}]\npool = \"{SOURCE}-web\"\n[datacenters.{DESTINATION}]\npool = \"{DESTINATION}-web\"\n"
    );
    let wan = |at_source: bool, port: u16| {
        SocketAddr::from((if at_source { PAR_WAN } else { GRA_WAN }, port))
    };
    for r in routers {
        let (admin, traffic) = match etcd {
            None => r.seen_from_gra(net),
            Some(_) => (
                wan(r.dc == SOURCE, ADMIN_PORT + r.n),
                wan(r.dc == SOURCE, TRAFFIC_PORT + r.n),
            ),
        };
        let _ = write!(
            c,
            "\n[[routers]]\nname = \"{}\"\ndatacenter = \"{}\"\nadmin = \"http://{admin}\"\ntraffic = \"http://{traffic}\"\ntoken = \"{TOKEN}\"\n",
            r.name, r.dc
        );
    }
    for f in 0..filers {
        let filer = topology::filer_name(f);
        let port = AGENT_PORT + 1 + f as u16;
        let (par, gra) = match etcd {
            None => (
                net.par_seen_from_gra(port),
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            ),
            Some(_) => (wan(true, port), wan(false, port)),
        };
        let _ = write!(
            c,
            "\n[filers.{filer}]\nsource = \"ferry://{par}/{filer}\"\ndestination = \"ferry://{gra}/{filer}\"\nkey = \"{AGENT_KEY}\"\n"
        );
    }
    if let Some(db) = databases {
        c.push_str(&db);
    }
    if let Some(endpoints) = etcd {
        c.push_str(&ferry_demo::etcd::migrate_store(endpoints));
    }
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    let _ = write!(
        c,
        r#"
[copy]
mode = "file"
max_passes = 10
checksum = false

[freeze]
max_freeze = "{}"
drain_timeout = "{}"
retry_after = "1s"
max_attempts = 5

[check]
via = "{DESTINATION}-1"
path = "/"
timeout = "5s"
"#,
        secs(freeze.max_freeze),
        secs(freeze.drain_timeout)
    );
    c
}
