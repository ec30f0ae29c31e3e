//! The demo's world on disk and in processes: the sites and their files on the
//! source filers, the inventory and plan, the two routers (`ferry proxy`
//! children) and `migrate.toml`.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// The admin token both routers and `migrate.toml` use. Loopback only.
pub const TOKEN: &str = "demo-admin-token";
pub const SOURCE: &str = "par";
pub const DESTINATION: &str = "gra";
pub const PAR_ROUTER: &str = "par-1";
pub const GRA_ROUTER: &str = "gra-1";
/// Asset files per site besides index.html and orders.log.
const ASSETS: usize = 20;

/// One demo site: a hosting directory `/<host>` on one filer.
#[derive(Clone, Debug)]
pub struct Site {
    pub host: String,
    pub filer: String,
    /// Relative paths the load generator may GET (besides `/`).
    pub assets: Vec<String>,
}

impl Site {
    /// The site's directory under a DC's root (`WORK/<dc>`).
    pub fn dir(&self, dc_root: &Path) -> PathBuf {
        dc_root.join(&self.filer).join(&self.host)
    }
}

pub fn filer_name(i: u32) -> String {
    format!("filer-{}", i + 1)
}

/// Writes every site's files under `WORK/par/<filer>/<host>`: an index.html
/// naming the site (the load generator checks it got the right site), small
/// assets whose bytes differ per site, and an empty orders.log.
pub fn generate_sites(par_root: &Path, sites: u32, filers: u32) -> anyhow::Result<Vec<Site>> {
    let width = sites.to_string().len().max(3);
    let mut out = Vec::with_capacity(sites as usize);
    for i in 0..sites {
        let host = format!("site-{:0width$}.demo.test", i + 1);
        // Sites are dealt round robin so every filer (unit) gets its share.
        let filer = filer_name(i % filers);
        let site = Site {
            host,
            filer,
            assets: (0..ASSETS)
                .map(|a| {
                    format!(
                        "assets/file-{:02}.{}",
                        a + 1,
                        ["css", "js", "txt", "svg"][a % 4]
                    )
                })
                .collect(),
        };
        let dir = site.dir(par_root);
        std::fs::create_dir_all(dir.join("assets"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("index.html"),
            format!(
                "<!doctype html><title>{h}</title><h1>{h}</h1><p>Demo shop number {n}.</p>\n",
                h = site.host,
                n = i + 1
            ),
        )?;
        for (a, rel) in site.assets.iter().enumerate() {
            // 2-5 KiB of text that depends on the site and the file.
            let len = 2048 + (i as usize * 131 + a * 977) % 3072;
            let mut body = String::with_capacity(len + 64);
            let mut line = 0;
            while body.len() < len {
                let _ = writeln!(body, "{} {rel} line {line}", site.host);
                line += 1;
            }
            std::fs::write(dir.join(rel), body)?;
        }
        File::create(dir.join("orders.log"))?;
        out.push(site);
    }
    Ok(out)
}

/// The inventory (CSV, one file per entity): one DC, one cluster, one IP, the
/// filers, one hosting per site with directory `/<host>`, no databases.
pub fn write_inventory(
    dir: &Path,
    sites: &[Site],
    filers: u32,
    par_root: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("datacenters.csv"), format!("name\n{SOURCE}\n"))?;
    std::fs::write(
        dir.join("clusters.csv"),
        format!("name,datacenter\npar-c1,{SOURCE}\n"),
    )?;
    // A documentation address (RFC 5737): the inventory needs one, nobody dials it.
    std::fs::write(dir.join("ips.csv"), "address,cluster\n192.0.2.10,par-c1\n")?;
    let mut f = String::from("name,cluster\n");
    for i in 0..filers {
        let _ = writeln!(f, "{},par-c1", filer_name(i));
    }
    std::fs::write(dir.join("filers.csv"), f)?;
    let mut hostings = String::from("name,filer,directory,files,bytes\n");
    let mut rows = String::from("hostname,hosting,ip\n");
    for s in sites {
        let (files, bytes) = tree_size(&s.dir(par_root))?;
        let hosting = s.host.trim_end_matches(".demo.test");
        let _ = writeln!(
            hostings,
            "{hosting},{},/{},{files},{bytes}",
            s.filer, s.host
        );
        let _ = writeln!(rows, "{},{hosting},192.0.2.10", s.host);
    }
    std::fs::write(dir.join("hostings.csv"), hostings)?;
    std::fs::write(dir.join("sites.csv"), rows)?;
    Ok(())
}

fn tree_size(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        if meta.is_dir() {
            let (f, b) = tree_size(&e.path())?;
            files += f;
            bytes += b;
        } else {
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}

/// `ferry plan` as a child (the real CLI, as an operator runs it); with only
/// the `filer` constraint each filer becomes one unit.
pub fn run_plan(exe: &Path, inventory: &Path, plan: &Path, log: &Path) -> anyhow::Result<()> {
    let out = Command::new(exe)
        .arg("plan")
        .arg("--inventory")
        .arg(inventory)
        .args(["--constraints", "filer", "--json", "--out"])
        .arg(plan)
        .stdin(Stdio::null())
        .output()
        .context("running ferry plan")?;
    std::fs::write(log, [&out.stdout[..], &out.stderr[..]].concat())?;
    if !out.status.success() || !plan.is_file() {
        bail!(
            "ferry plan failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A loopback port that was free a moment ago, and not handed out before
/// by this process. Both routers must know each other's traffic address
/// before either starts, so these are chosen up front; the kernel may give
/// a port it just gave back to the next `bind(0)`, and one port chosen for
/// two routers made them one listening group (a router's `SO_REUSEPORT`
/// sockets) until routers refused to join another's group.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no loopback port that was not handed out already in 100 tries")
}

/// One router's config: its pool of two demo app servers, the other DC as a
/// remote, and every site on `placement`. Everything on loopback.
pub fn router_config(
    name: &str,
    listen: u16,
    pool: &str,
    servers: &[(String, SocketAddr)],
    remote: (&str, u16),
    sites: &[Site],
    placement: &str,
) -> String {
    let lo = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    router_config_at(
        name,
        RouterAddrs {
            listen: lo(listen),
            admin: lo(0),
            remote: (remote.0, lo(remote.1)),
        },
        pool,
        servers,
        sites,
        placement,
    )
}

/// Where a router listens and how it reaches the other DC.
pub struct RouterAddrs<'a> {
    /// The traffic listener.
    pub listen: SocketAddr,
    /// The admin API (port 0: any; the ready file says which).
    pub admin: SocketAddr,
    /// The other DC: its name and a router's traffic address there.
    pub remote: (&'a str, SocketAddr),
}

/// [`router_config`] with every address given (`ferry rehearse` puts the
/// routers in network namespaces).
pub fn router_config_at(
    name: &str,
    addrs: RouterAddrs<'_>,
    pool: &str,
    servers: &[(String, SocketAddr)],
    sites: &[Site],
    placement: &str,
) -> String {
    let RouterAddrs {
        listen,
        admin,
        remote,
    } = addrs;
    let mut c = format!(
        r#"[router]
name = "{name}"
# Frozen sites hold requests this long at most; a freeze lasts well under it.
hold_max = "30s"
retry_after = 1

[admin]
listen = "{admin}"
token = "{TOKEN}"

[[listener]]
listen = "{listen}"

[[remote]]
name = "{}"
address = "{}"

[[pool]]
name = "{pool}"
"#,
        remote.0, remote.1
    );
    for (server, addr) in servers {
        let _ = write!(
            c,
            "\n[[pool.server]]\nname = \"{server}\"\naddress = \"{addr}\"\n"
        );
    }
    for s in sites {
        let _ = write!(
            c,
            "\n[[site]]\nhost = \"{}\"\nplacement = \"{placement}\"\n",
            s.host
        );
    }
    c
}

/// A `ferry proxy` child. Dropping it kills it (by pid, through the Child
/// handle) and reaps it, so no exit path of the demo leaves a router behind.
pub struct Router {
    pub name: String,
    child: Child,
    pub pid: u32,
    pub traffic: SocketAddr,
    pub admin: SocketAddr,
    pub stderr: PathBuf,
}

impl Router {
    pub fn start(exe: &Path, dir: &Path, name: &str, config: &str) -> anyhow::Result<Router> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("proxy.toml");
        std::fs::write(&conf, config)?;
        let ready = dir.join("ready.json");
        let stderr = dir.join("stderr.log");
        let child = Command::new(exe)
            .args(["--log-level", "warn", "proxy", "--grace", "1s", "--config"])
            .arg(&conf)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("starting router {name}"))?;
        let pid = child.id();
        let mut r = Router {
            name: name.to_string(),
            child,
            pid,
            traffic: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
        };
        let end = Instant::now() + Duration::from_secs(30);
        let info: serde_json::Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break serde_json::from_str(&text).context("router ready file")?;
            }
            if let Some(status) = r.child.try_wait()? {
                bail!(
                    "router {name} exited ({status}) before it was ready:\n{}",
                    r.log()
                );
            }
            if Instant::now() > end {
                bail!("router {name} not ready after 30s:\n{}", r.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let addr = |v: &serde_json::Value| -> anyhow::Result<SocketAddr> {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("router {name}: bad address {v} in its ready file"))
        };
        r.traffic = addr(&info["listeners"][0])?;
        r.admin = addr(&info["admin"])?;
        Ok(r)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGSTOP/SIGCONT: a router that stops answering without dying.
    /// A SIGSTOP returns once every thread of the router has stopped: kill(2)
    /// only queues the stop, and a router whose threads are waiting for a
    /// busy CPU can still answer a request after kill returned (the demo's
    /// stop-router fault saw the router take the very freeze it was stopped
    /// to miss).
    pub fn signal(&self, sig: rustix::process::Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| anyhow!("bad pid {}", self.pid))?;
        rustix::process::kill_process(pid, sig)
            .with_context(|| format!("signalling router {} (pid {})", self.name, self.pid))?;
        if sig == rustix::process::Signal::STOP {
            wait_stopped(self.pid)
                .with_context(|| format!("router {} (pid {}) did not stop", self.name, self.pid))?;
        }
        Ok(())
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        // SIGKILL works on a stopped process too; then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `migrate.toml` (docs/migrate-config.md) for the two routers and the filers.
pub fn migrate_config(work: &Path, routers: &[&Router], filers: u32) -> String {
    let mut c = format!(
        r#"source = "{SOURCE}"
destination = "{DESTINATION}"

[datacenters.{SOURCE}]
pool = "par-web"
[datacenters.{DESTINATION}]
pool = "gra-web"
"#
    );
    for r in routers {
        let dc = if r.name.starts_with(SOURCE) {
            SOURCE
        } else {
            DESTINATION
        };
        let _ = write!(
            c,
            r#"
[[routers]]
name = "{}"
datacenter = "{dc}"
admin = "http://{}"
traffic = "http://{}"
token = "{TOKEN}"
"#,
            r.name, r.admin, r.traffic
        );
    }
    for i in 0..filers {
        let f = filer_name(i);
        let _ = write!(
            c,
            "\n[filers.{f}]\nsource = {:?}\ndestination = {:?}\n",
            work.join(SOURCE).join(&f).display().to_string(),
            work.join(DESTINATION).join(&f).display().to_string()
        );
    }
    let _ = write!(
        c,
        r#"
[copy]
mode = "file"
max_passes = 10
checksum = false

# Short on purpose: the demo shows many freezes in a minute.
[freeze]
max_freeze = "2s"
drain_timeout = "5s"
retry_after = "1s"
max_attempts = 5

[check]
via = "{GRA_ROUTER}"
path = "/"
timeout = "5s"
"#
    );
    c
}

/// Waits (bounded) until every thread of `pid` is in the stopped state ('T'
/// in /proc/PID/task/TID/stat).
fn wait_stopped(pid: u32) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if all_threads_stopped(pid)? {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(anyhow!("threads still running 10 s after SIGSTOP"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn all_threads_stopped(pid: u32) -> anyhow::Result<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).context("listing its threads")?;
    for task in tasks {
        let stat = std::fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        match state {
            Some("T") | Some("t") | None => {}
            Some(_) => return Ok(false),
        }
    }
    Ok(true)
}
