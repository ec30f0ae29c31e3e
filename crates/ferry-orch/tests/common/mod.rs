//! A two-datacenter world on loopback for runbook tests: two real routers
//! (`ferry_proxy::Proxy`, in process) that forward to each other, one demo
//! backend per DC, and local directories as filers.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_orch::router::{Http, RouterClient, SiteReport};
use ferry_orch::{MigrateConfig, Options, Orchestrator, RunInputs};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub const TOKEN: &str = "test-token";

/// A backend answering `site HOST PATH` for every request (the same in both
/// DCs, so fingerprints match); `/slow` answers after 3 s.
pub async fn backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    if req.uri().path() == "/slow" {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    let body = format!("site {host} {}", req.uri().path());
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TCP relay in front of a router's admin API that a test can cut: while
/// down, open connections are dropped and new ones closed at once, which
/// is what the orchestrator sees of a router that died.
pub struct Relay {
    pub addr: SocketAddr,
    down: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (d, c) = (down.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = l.accept().await else {
                    return;
                };
                if d.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().unwrap().push(h.abort_handle());
            }
        });
        Relay { addr, down, conns }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        if down {
            for h in self.conns.lock().unwrap().drain(..) {
                h.abort();
            }
        }
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub par: Arc<ferry_proxy::Proxy>,
    pub gra: Arc<ferry_proxy::Proxy>,
    pub par_traffic: u16,
    pub gra_traffic: u16,
    /// The orchestrator reaches par's admin API through this relay.
    pub par_admin: Relay,
    pub config: PathBuf,
    pub plan: PathBuf,
    pub journal: PathBuf,
    pub sites: Vec<String>,
}

fn router_toml(
    name: &str,
    listen: u16,
    pool: &str,
    backend: SocketAddr,
    remote: &str,
    remote_port: u16,
    sites: &[String],
) -> String {
    let mut c = format!(
        r#"[router]
name = "{name}"
hold_max = "20s"
retry_after = 1

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[[listener]]
listen = "127.0.0.1:{listen}"

[[remote]]
name = "{remote}"
address = "127.0.0.1:{remote_port}"

[[pool]]
name = "{pool}"
[[pool.server]]
name = "{pool}-1"
address = "{backend}"
"#
    );
    for s in sites {
        c.push_str(&format!(
            "\n[[site]]\nhost = \"{s}\"\nplacement = \"pool:{pool}\"\n"
        ));
    }
    c
}

/// Extra `[freeze]` lines etc. go in `extra` (appended to migrate.toml).
pub async fn world(extra: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let sites: Vec<String> = vec![
        "a.example".into(),
        "www.a.example".into(),
        "b.example".into(),
    ];
    let (pb, gb) = (backend().await, backend().await);
    let start = |text: String, name: &str| {
        let path = root.join(format!("{name}.toml"));
        std::fs::write(&path, &text).unwrap();
        ferry_config::parse(&text, &path).unwrap()
    };
    // Each router must know the other's port before it starts, so the ports
    // are picked free and then bound: another process may take one in
    // between (seen under a loaded test run). Then pick again.
    let mut attempt = 0;
    let (pt, gt, par, gra) = loop {
        attempt += 1;
        let (pt, gt) = (free_port(), free_port());
        // par serves the sites; gra does not know them yet (prepare adds them).
        let par_cfg = router_toml("par-1", pt, "par-web", pb, "gra", gt, &sites);
        let gra_cfg = router_toml("gra-1", gt, "gra-web", gb, "par", pt, &[]);
        let par = match ferry_proxy::Proxy::start(start(par_cfg, "par"), None).await {
            Ok(p) => p,
            Err(e) if attempt < 5 => {
                eprintln!("starting par-1 on a port taken meanwhile ({e}); again");
                continue;
            }
            Err(e) => panic!("starting par-1: {e}"),
        };
        match ferry_proxy::Proxy::start(start(gra_cfg, "gra"), None).await {
            Ok(gra) => break (pt, gt, par, gra),
            Err(e) if attempt < 5 => {
                eprintln!("starting gra-1 on a port taken meanwhile ({e}); again");
                par.shutdown(std::time::Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => panic!("starting gra-1: {e}"),
        }
    };
    // Filers: fs-1 holds two hostings.
    for (rel, body) in [
        ("par/fs-1/homes/a/index.html", "A site\n"),
        ("par/fs-1/homes/a/orders/1.txt", "order 1\n"),
        ("par/fs-1/homes/b/index.html", "B site\n"),
    ] {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let par_admin = Relay::start(par.admin_addr().unwrap()).await;
    let config = root.join("migrate.toml");
    std::fs::write(
        &config,
        format!(
            r#"source = "par"
destination = "gra"

[datacenters.par]
pool = "par-web"
[datacenters.gra]
pool = "gra-web"

[[routers]]
name = "par-1"
datacenter = "par"
admin = "http://{pa}"
traffic = "http://127.0.0.1:{pt}"
token = "{TOKEN}"

[[routers]]
name = "gra-1"
datacenter = "gra"
admin = "http://{ga}"
traffic = "http://127.0.0.1:{gt}"
token = "{TOKEN}"

[filers.fs-1]
source = "par/fs-1"
destination = "gra/fs-1"

[check]
via = "gra-1"
path = "/"
timeout = "2s"
{extra}
"#,
            pa = par_admin.addr,
            ga = gra.admin_addr().unwrap(),
        ),
    )
    .unwrap();
    let plan = root.join("plan.json");
    std::fs::write(&plan, plan_json(true)).unwrap();
    World {
        journal: root.join("journal.db"),
        dir,
        par,
        gra,
        par_traffic: pt,
        gra_traffic: gt,
        par_admin,
        config,
        plan,
        sites,
    }
}

/// Two units: U1 (hostings a and b on fs-1) scheduled, U2 (no sites) impossible.
pub fn plan_json(whole_filers: bool) -> String {
    let constraints = if whole_filers {
        r#"["filer","declared-db"]"#
    } else {
        r#"["declared-db"]"#
    };
    format!(
        r#"{{"format":"ferry-plan","version":1,"generator":"test",
"parameters":{{"constraints":{constraints}}},
"units":[
 {{"id":"U1","status":"scheduled","night":1,"lane":0,"order":0,"filers":["fs-1"],
   "hostings":[{{"name":"a","filer":"fs-1","directory":"/homes/a","sites":["a.example","www.a.example"]}},
               {{"name":"b","filer":"fs-1","directory":"/homes/b","sites":["b.example"]}}]}},
 {{"id":"U2","status":"impossible","reason":"freeze-exceeds-window","filers":["fs-9"],"hostings":[]}}
]}}"#
    )
}

impl World {
    pub fn cfg(&self) -> MigrateConfig {
        MigrateConfig::load(&self.config).unwrap()
    }

    pub fn client(&self, name: &str) -> RouterClient {
        let cfg = self.cfg();
        RouterClient::new(
            cfg.router(name).unwrap().clone(),
            Http::new(),
            Duration::from_secs(5),
        )
    }

    pub async fn records(&self, router: &str) -> Vec<SiteReport> {
        self.client(router).query(&self.sites).await.unwrap()
    }

    pub fn inputs(&self) -> RunInputs {
        RunInputs::load(&self.config, &self.plan, None).unwrap()
    }

    pub async fn start(&self, opts: Options) -> Orchestrator {
        Orchestrator::start(self.inputs(), &self.journal, opts).unwrap()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// GET through a router's traffic port.
    pub async fn get(&self, port: u16, host: &str) -> (u16, String) {
        let (s, b) = Http::new()
            .request(
                http::Method::GET,
                &format!("http://127.0.0.1:{port}/"),
                &[("host", host)],
                None,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        (s.as_u16(), String::from_utf8_lossy(&b).into_owned())
    }

    /// Asserts the unit moved: every router sends the sites to gra.
    pub async fn assert_moved(&self) {
        for s in self.records("gra-1").await {
            assert_eq!(
                (s.placement.as_str(), s.state.as_str()),
                ("pool:gra-web", "active"),
                "{s:?}"
            );
        }
        for s in self.records("par-1").await {
            assert_eq!(
                (s.placement.as_str(), s.state.as_str()),
                ("remote:gra", "active"),
                "{s:?}"
            );
        }
        assert_trees_equal(&self.path("par/fs-1"), &self.path("gra/fs-1"));
        let (st, body) = self.get(self.par_traffic, "a.example").await;
        assert_eq!((st, body.as_str()), (200, "site a.example /"));
    }
}

/// Same relative paths with the same bytes.
pub fn assert_trees_equal(a: &Path, b: &Path) {
    fn list(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.push((rel, Vec::new()));
                list(root, &p, out);
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let (mut x, mut y) = (Vec::new(), Vec::new());
    list(a, a, &mut x);
    list(b, b, &mut y);
    assert_eq!(x, y, "{} and {} differ", a.display(), b.display());
}
