//! `ferry exec` and `ferry update` as an operator runs them: three real
//! `ferry agent`s (sync volumes + exec servers), three real nginx serving
//! each server's application files, a `ferry proxy` router with the three
//! in one pool, and a real Varnish in front of the router. The fake
//! upgrade rewrites the page the instances serve.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[allow(dead_code)]
#[path = "e2e/support/procs.rs"]
mod procs;

use procs::{free_port, nginx_prefix, signal, Ferry, Nginx, FERRY};

const TOKEN: &str = "fleet-test-caller-token-0123";
const SYNC_KEY: &str = "fleet-test-sync-key-0123456";
const ADMIN_TOKEN: &str = "fleet-test-admin-token-0123";
const HOST: &str = "shop.test";
/// Longest wait for anything to get ready: only there to catch hangs.
const LIMIT: Duration = Duration::from_secs(60);

fn wait_port(addr: SocketAddr, what: &str, diag: impl Fn() -> String) {
    let end = Instant::now() + LIMIT;
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < end,
            "{what} not listening on {addr}:\n{}",
            diag()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (by pid) and reaped when dropped.
struct Guard {
    child: Child,
    /// Ask for a graceful stop first (varnishd's manager stops its child).
    term_first: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.term_first {
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Agent {
    _guard: Guard,
    exec: SocketAddr,
    sync: SocketAddr,
    audit: PathBuf,
    app: PathBuf,
}

fn start_agent(dir: &Path, name: &str, bin: &Path) -> Agent {
    let home = dir.join(name);
    let app = home.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("index.html"), "shop v1\n").unwrap();
    std::fs::create_dir_all(app.join("static")).unwrap();
    std::fs::write(app.join("static/app.css"), "body{}\n").unwrap();
    let (exec_port, sync_port) = (free_port(), free_port());
    std::fs::write(
        home.join("agent.toml"),
        format!(
            "listen = \"127.0.0.1:{sync_port}\"\nkey = \"{SYNC_KEY}\"\n[volumes.app]\npath = \"{}\"\n",
            app.display()
        ),
    )
    .unwrap();
    std::fs::write(
        home.join("exec.toml"),
        format!(
            r#"listen = "127.0.0.1:{exec_port}"
audit_log = "audit.jsonl"
[callers.ops]
token = "{TOKEN}"
[callers.other]
token = "another-caller-token-456789"
[[allow]]
argv = ["pwd"]
cwd = "{app}"
[[allow]]
argv = ["echo", "..."]
[[allow]]
argv = ["false"]
[[allow]]
argv = ["sh", "{bin}/*", "..."]
cwd = "{app}"
callers = ["ops"]
"#,
            app = app.display(),
            bin = bin.display()
        ),
    )
    .unwrap();
    let stderr = home.join("agent.stderr");
    let child = Command::new(FERRY)
        .arg("agent")
        .arg("--config")
        .arg(home.join("agent.toml"))
        .arg("--exec-config")
        .arg(home.join("exec.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .expect("starting ferry agent");
    let guard = Guard {
        child,
        term_first: false,
    };
    let exec = SocketAddr::from(([127, 0, 0, 1], exec_port));
    let sync = SocketAddr::from(([127, 0, 0, 1], sync_port));
    let diag = || std::fs::read_to_string(&stderr).unwrap_or_default();
    wait_port(exec, "agent exec server", diag);
    wait_port(sync, "agent sync server", diag);
    Agent {
        _guard: guard,
        exec,
        sync,
        audit: home.join("audit.jsonl"),
        app,
    }
}

fn audit(agent: &Agent) -> Vec<Value> {
    std::fs::read_to_string(&agent.audit)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect()
}

/// nginx serving `root` (a server's application files).
fn start_nginx(name: &str, root: &Path) -> (Nginx, SocketAddr) {
    let port = free_port();
    let http = format!(
        r#"access_log off;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        index index.html;
        add_header X-Server {name} always;
    }}"#,
        root = root.display()
    );
    let nginx = Nginx::run(name, port, nginx_prefix(name), &http);
    let addr = nginx.addr();
    (nginx, addr)
}

/// varnishd in front of `backend`: PURGE removes one URL, BAN every URL
/// matching the request's path as a regex.
fn start_varnish(dir: &Path, backend: SocketAddr) -> (Guard, SocketAddr) {
    let work = dir.join("varnish");
    std::fs::create_dir_all(&work).unwrap();
    let vcl = format!(
        r#"vcl 4.1;
backend default {{ .host = "{}"; .port = "{}"; }}
sub vcl_recv {{
    if (req.method == "PURGE") {{ return (purge); }}
    if (req.method == "BAN") {{
        ban("req.url ~ " + req.url);
        return (synth(200, "Banned"));
    }}
}}
"#,
        backend.ip(),
        backend.port()
    );
    std::fs::write(work.join("shop.vcl"), vcl).unwrap();
    let port = free_port();
    let log = work.join("varnishd.log");
    let child = Command::new("varnishd")
        .args(["-F", "-j", "none", "-T", "none", "-s", "malloc,32m"])
        .arg("-a")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-f")
        .arg(work.join("shop.vcl"))
        .arg("-n")
        .arg(work.join("state"))
        .stdin(Stdio::null())
        .stdout(File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting varnishd (apt-get install varnish)");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let g = Guard {
        child,
        term_first: true,
    };
    wait_port(addr, "varnish", || {
        std::fs::read_to_string(&log).unwrap_or_default()
    });
    (g, addr)
}

/// The whole shop: three servers (agent + nginx), a router, a Varnish.
struct Shop {
    dir: tempfile::TempDir,
    bin: PathBuf,
    agents: Vec<Agent>,
    nginx: Vec<(Nginx, SocketAddr)>,
    router: Ferry,
    varnish: (Guard, SocketAddr),
    fleet: PathBuf,
}

const NAMES: [&str; 3] = ["s1", "s2", "s3"];

impl Shop {
    fn start() -> Shop {
        let dir = tempfile::Builder::new()
            .prefix("ferry-fleet-")
            .tempdir()
            .unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let agents: Vec<Agent> = NAMES
            .iter()
            .map(|n| start_agent(dir.path(), n, &bin))
            .collect();
        let nginx: Vec<_> = NAMES
            .iter()
            .zip(&agents)
            .map(|(n, a)| start_nginx(n, &a.app))
            .collect();
        let mut conf = format!(
            "[router]\nname = \"r1\"\nretry_after = 7\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"shop\"\n"
        );
        for (n, (_, addr)) in NAMES.iter().zip(&nginx) {
            conf.push_str(&format!(
                "\n[[pool.server]]\nname = \"{n}\"\naddress = \"{addr}\"\n"
            ));
        }
        conf.push_str(&format!(
            "\n[[site]]\nhost = \"{HOST}\"\nplacement = \"pool:shop\"\n"
        ));
        let rdir = dir.path().join("router");
        std::fs::create_dir_all(&rdir).unwrap();
        let router = Ferry::start(&rdir, &conf);
        let varnish = start_varnish(dir.path(), router.addr());
        let mut fleet = format!("token = \"{TOKEN}\"\nsync_key = \"{SYNC_KEY}\"\n");
        for (n, a) in NAMES.iter().zip(&agents) {
            fleet.push_str(&format!(
                "\n[servers.{n}]\nexec = \"{}\"\nfiles = \"ferry://{}/app\"\n",
                a.exec, a.sync
            ));
        }
        let fleet_path = dir.path().join("fleet.toml");
        std::fs::write(&fleet_path, fleet).unwrap();
        // The fake upgrade and its helpers, run by the agents in each
        // server's application directory.
        script(
            &bin,
            "upgrade.sh",
            "echo 'shop v2' > index.html\necho upgraded $(pwd)\n",
        );
        script(&bin, "fail.sh", "echo 'migration exploded' >&2\nexit 3\n");
        script(
            &bin,
            "probe.sh",
            &format!(
                "curl -s -o /dev/null -D \"$1\" -H 'Host: {HOST}' http://{}/\n",
                router.addr()
            ),
        );
        script(
            &bin,
            "slow.sh",
            "touch \"$1\"\nwhile [ ! -e \"$2\" ]; do sleep 0.05; done\necho released\n",
        );
        Shop {
            dir,
            bin,
            agents,
            nginx,
            router,
            varnish,
            fleet: fleet_path,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sh(&self, script: &str, args: &[&str]) -> String {
        let mut v = vec![
            "\"sh\"".to_string(),
            format!("\"{}\"", self.bin.join(script).display()),
        ];
        v.extend(args.iter().map(|a| format!("\"{a}\"")));
        format!("[{}]", v.join(", "))
    }

    /// A runbook with `steps` (TOML `[[steps]]` tables).
    fn runbook(&self, name: &str, steps: &str) -> PathBuf {
        let text = format!(
            r#"pool = "shop"
sites = ["{HOST}"]
drain_timeout = "20s"
[[routers]]
name = "r1"
admin = "http://{admin}"
token = "{ADMIN_TOKEN}"
{steps}
[purge]
varnish = ["{varnish}"]
method = "BAN"
paths = ["/"]
command = ["echo", "cache flushed"]
"#,
            admin = self.router.admin,
            varnish = self.varnish.1
        );
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn ferry(&self, args: &[&str]) -> Output {
        Command::new(FERRY)
            .args(args)
            .env_remove("FERRY_EXEC_TOKEN")
            .env_remove("FERRY_SYNC_KEY")
            .env("FERRY_FLEET", &self.fleet)
            .output()
            .unwrap()
    }

    /// `ferry update --level LEVEL --primary s1` with a runbook and journal.
    fn update(&self, level: &str, runbook: &Path, journal: &Path) -> Output {
        self.ferry(&[
            "update",
            "--level",
            level,
            "--primary",
            "s1",
            "--runbook",
            runbook.to_str().unwrap(),
            "--journal",
            journal.to_str().unwrap(),
        ])
    }

    /// `ferry update status --json` for a journal.
    fn update_status(&self, journal: &Path) -> Value {
        let st = self.ferry(&[
            "update",
            "status",
            "--journal",
            journal.to_str().unwrap(),
            "--json",
        ]);
        serde_json::from_slice(&st.stdout).unwrap_or_else(|_| panic!("{}", text(&st)))
    }

    async fn pools(&self) -> Vec<(String, String)> {
        let (s, v) = admin(self.router.admin, http::Method::GET, "/v1/pools", None).await;
        assert_eq!(s, 200, "{v}");
        v["pools"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

fn script(bin: &Path, name: &str, body: &str) {
    std::fs::write(bin.join(name), format!("set -e\n{body}")).unwrap();
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(
    c: &HttpClient,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, http::HeaderMap, String), String> {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

async fn admin(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A client requesting unique URLs the whole time, counting answers.
struct Loop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    /// 503 with Retry-After (maintenance).
    maintenance: Arc<AtomicU64>,
    failed: Arc<failures::Failures>,
    task: tokio::task::JoinHandle<()>,
}

mod failures {
    /// Failed requests, with the first few kept for the assertion message.
    #[derive(Default)]
    pub struct Failures(pub std::sync::Mutex<(u64, Vec<String>)>);
    impl Failures {
        pub fn add(&self, what: String) {
            let mut g = self.0.lock().unwrap();
            g.0 += 1;
            if g.1.len() < 10 {
                g.1.push(what);
            }
        }
        pub fn get(&self) -> (u64, Vec<String>) {
            self.0.lock().unwrap().clone()
        }
    }
}

impl Loop {
    fn start(addr: SocketAddr) -> Loop {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let maintenance = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(failures::Failures::default());
        let (s, o, m, f) = (
            stop.clone(),
            ok.clone(),
            maintenance.clone(),
            failed.clone(),
        );
        let task = tokio::spawn(async move {
            let c = client();
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                match get(&c, addr, &format!("/?n={n}")).await {
                    Ok((200, _, _)) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((503, h, _)) if h.contains_key("retry-after") => {
                        m.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((st, _, body)) => f.add(format!("request {n}: {st} {body}")),
                    Err(e) => f.add(format!("request {n}: {e}")),
                }
            }
        });
        Loop {
            stop,
            ok,
            maintenance,
            failed,
            task,
        }
    }

    async fn wait_ok(&self, n: u64) {
        let end = Instant::now() + LIMIT;
        while self.ok.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < end, "client loop made no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// (ok, maintenance answers, failures and the first few of them).
    async fn stop(self) -> (u64, u64, (u64, Vec<String>)) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.maintenance.load(Ordering::Relaxed),
            self.failed.get(),
        )
    }
}

async fn served(addr: SocketAddr) -> String {
    get(&client(), addr, "/").await.unwrap().2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_allowed_commands_everywhere_and_refuses_the_rest() {
    let shop = Shop::start();
    let f = shop.fleet.to_str().unwrap();

    // Output from the three agents arrives prefixed by server.
    let o = shop.ferry(&["exec", "--fleet", f, "--all", "--token", TOKEN, "--", "pwd"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for (n, a) in NAMES.iter().zip(&shop.agents) {
        let line = format!("{n} | {}", a.app.display());
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
        assert!(
            out.lines().any(|l| l.starts_with(n) && l.contains(" 0 ")),
            "no summary row for {n}:\n{out}"
        );
    }
    // Arguments travel as a vector: a shell metacharacter stays a character.
    let o = shop.ferry(&[
        "exec",
        "--fleet",
        f,
        "--servers",
        "s2",
        "--",
        "echo",
        "a;",
        "$(id)",
        "*",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("s2 | a; $(id) *"),
        "{}",
        text(&o)
    );

    // A command outside the allow-list is refused (exit 3) and logged.
    let o = shop.ferry(&["exec", "--fleet", f, "--all", "--", "cat", "/etc/hostname"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("not in this agent's allow-list"), "{all}");
    for a in &shop.agents {
        let refused: Vec<Value> = audit(a)
            .into_iter()
            .filter(|e| e["event"] == "refused")
            .collect();
        assert_eq!(refused.len(), 1, "{:?}", audit(a));
        assert_eq!(
            refused[0]["argv"],
            serde_json::json!(["cat", "/etc/hostname"])
        );
        assert_eq!(refused[0]["caller"], "ops");
        assert!(refused[0]["time"].as_str().unwrap().ends_with('Z'));
    }
    // An entry reserved to another caller is refused to this one.
    std::fs::write(shop.bin.join("hello.sh"), "echo hello\n").unwrap();
    let hello = shop.bin.join("hello.sh");
    let o = shop.ferry(&[
        "exec",
        "--fleet",
        f,
        "--servers",
        "s1",
        "--token",
        "another-caller-token-456789",
        "--",
        "sh",
        hello.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("not for caller \"other\""),
        "{}",
        text(&o)
    );

    // An unauthenticated caller is refused, counted, and logged within the
    // agent's batch interval (10 s by default).
    let o = shop.ferry(&[
        "exec",
        "--fleet",
        f,
        "--all",
        "--token",
        "wrong-token-0123456789",
        "--",
        "pwd",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("401"), "{}", text(&o));
    let end = Instant::now() + LIMIT;
    while !audit(&shop.agents[0])
        .iter()
        .any(|e| e["event"] == "unauthenticated" && e["count"] == 1)
    {
        assert!(Instant::now() < end, "no unauthenticated record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A failing command: exit 1, the table says where.
    let o = shop.ferry(&[
        "exec",
        "--fleet",
        f,
        "--servers",
        "s2,s3",
        "--parallel",
        "1",
        "--",
        "false",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("s3 ") && l.contains(" 1 ")),
        "{out}"
    );
    let ends: Vec<Value> = audit(&shop.agents[2])
        .into_iter()
        .filter(|e| e["event"] == "end")
        .collect();
    assert_eq!(ends.last().unwrap()["exit"], 1);
    assert_eq!(ends.last().unwrap()["argv"], serde_json::json!(["false"]));

    // Bad usage: an unknown server.
    let o = shop.ferry(&["exec", "--fleet", f, "--servers", "s9", "--", "pwd"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("unknown server \"s9\""), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level2_update_reaches_every_server_purges_varnish_and_fails_no_request() {
    let shop = Shop::start();
    let varnish = shop.varnish.1;
    // The old page is in Varnish's cache.
    let c = client();
    assert_eq!(get(&c, varnish, "/").await.unwrap().2, "shop v1\n");
    let (_, h, body) = get(&c, varnish, "/").await.unwrap();
    assert_eq!(body, "shop v1\n");
    let xv = h["x-varnish"].to_str().unwrap().to_string();
    assert_eq!(
        xv.split(' ').count(),
        2,
        "the second request should be a cache hit: {xv}"
    );

    let steps = format!(
        "[[steps]]\nname = \"setup:upgrade\"\nargv = {}\n[steps.check]\nurl = \"http://{}/\"\ncontains = \"v2\"\n",
        shop.sh("upgrade.sh", &[]),
        shop.nginx[0].1
    );
    let rb = shop.runbook("level2.toml", &steps);
    let journal = shop.path("l2.journal");
    let traffic = Loop::start(varnish);
    traffic.wait_ok(20).await;
    let o = shop.update("2", &rb, &journal);
    traffic
        .wait_ok(traffic.ok.load(Ordering::Relaxed) + 20)
        .await;
    let (ok, _, (failed, examples)) = traffic.stop().await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("s1 | upgraded"), "{out}");
    assert!(out.contains("cache flushed"), "{out}");
    assert_eq!(failed, 0, "failed requests during the update: {examples:?}");
    assert!(ok > 40, "only {ok} requests went through");

    for (_, addr) in &shop.nginx {
        assert_eq!(served(*addr).await, "shop v2\n", "instance {addr}");
    }
    assert_eq!(
        get(&c, varnish, "/").await.unwrap().2,
        "shop v2\n",
        "Varnish still serves the old page"
    );
    for (name, state) in shop.pools().await {
        assert_eq!(state, "ready", "{name}");
    }
    let v = shop.update_status(&journal);
    assert_eq!(v["state"], "done", "{v:#}");
    let names: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "record",
            "drain-primary",
            "step:setup:upgrade",
            "primary-only",
            "sync:s2",
            "sync:s3",
            "purge",
            "spread",
            "restore"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level3_puts_sites_in_maintenance_during_database_steps_only() {
    let shop = Shop::start();
    let maint = shop.path("during-db.headers");
    let plain = shop.path("during-static.headers");
    let steps = format!(
        "[[steps]]\nname = \"migrate\"\nargv = {}\ndatabase = true\n[[steps]]\nname = \"static\"\nargv = {}\n[[steps]]\nname = \"deploy\"\nargv = {}\n",
        shop.sh("probe.sh", &[maint.to_str().unwrap()]),
        shop.sh("probe.sh", &[plain.to_str().unwrap()]),
        shop.sh("upgrade.sh", &[]),
    );
    let rb = shop.runbook("level3.toml", &steps);
    let journal = shop.path("l3.journal");
    let traffic = Loop::start(shop.router.addr());
    traffic.wait_ok(20).await;
    let o = shop.update("3", &rb, &journal);
    traffic
        .wait_ok(traffic.ok.load(Ordering::Relaxed) + 20)
        .await;
    let (_, _, (failed, examples)) = traffic.stop().await;
    assert!(o.status.success(), "{}", text(&o));
    // Every answer that was not a 200 was the maintenance 503 + Retry-After.
    assert_eq!(failed, 0, "{examples:?}");
    let during_db = std::fs::read_to_string(&maint)
        .unwrap()
        .to_ascii_lowercase();
    assert!(during_db.starts_with("http/1.1 503"), "{during_db}");
    assert!(during_db.contains("retry-after: 7"), "{during_db}");
    let during_static = std::fs::read_to_string(&plain)
        .unwrap()
        .to_ascii_lowercase();
    assert!(during_static.starts_with("http/1.1 200"), "{during_static}");
    let (status, _, body) = get(&client(), shop.router.addr(), "/").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "shop v2\n"));
    let (_, site) = admin(
        shop.router.admin,
        http::Method::GET,
        &format!("/v1/sites/{HOST}"),
        None,
    )
    .await;
    assert_eq!(site["state"], "active", "{site}");
    assert_eq!(
        site["epoch"], 2,
        "maintenance with epoch 1, back to active with 2: {site}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_leaves_traffic_as_it_was() {
    let shop = Shop::start();
    // Before the run, s3 is out of rotation: it must stay so.
    let (s, v) = admin(
        shop.router.admin,
        http::Method::PUT,
        "/v1/pools/shop/servers/s3",
        Some(serde_json::json!({"state": "drain"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let before = shop.pools().await;
    let steps = format!(
        "[[steps]]\nname = \"setup:upgrade\"\nargv = {}\n[[steps]]\nname = \"setup:di:compile\"\nargv = {}\n",
        shop.sh("upgrade.sh", &[]),
        shop.sh("fail.sh", &[]),
    );
    let rb = shop.runbook("failing.toml", &steps);
    let journal = shop.path("fail.journal");
    let traffic = Loop::start(shop.varnish.1);
    traffic.wait_ok(20).await;
    let o = shop.update("2", &rb, &journal);
    let (_, _, (failed, examples)) = traffic.stop().await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let all = text(&o);
    assert!(
        all.contains("step:setup:di:compile") && all.contains("exit 3"),
        "{all}"
    );
    assert!(
        all.contains("migration exploded"),
        "the step's stderr is shown: {all}"
    );
    assert_eq!(shop.pools().await, before, "traffic not restored");
    assert_eq!(failed, 0, "{examples:?}");
    // Nothing was synced: s2 still has the old files.
    assert_eq!(served(shop.nginx[1].1).await, "shop v1\n");
    let v = shop.update_status(&journal);
    assert_eq!(v["state"], "failed (traffic restored)", "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_update_is_finished_by_resume() {
    let shop = Shop::start();
    let started = shop.path("slow.started");
    let release = shop.path("slow.release");
    let steps = format!(
        "[[steps]]\nname = \"setup:upgrade\"\nargv = {}\n[[steps]]\nname = \"static-content:deploy\"\nargv = {}\n",
        shop.sh("slow.sh", &[started.to_str().unwrap(), release.to_str().unwrap()]),
        shop.sh("upgrade.sh", &[]),
    );
    let rb = shop.runbook("slow.toml", &steps);
    let journal = shop.path("kill.journal");
    let mut update = Command::new(FERRY)
        .args(["update", "--level", "2", "--primary", "s1", "--runbook"])
        .arg(&rb)
        .arg("--journal")
        .arg(&journal)
        .env("FERRY_FLEET", &shop.fleet)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + LIMIT;
    while !started.exists() {
        assert!(Instant::now() < end, "the slow step never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(update.id(), "KILL");
    update.wait().unwrap();
    let st = shop.ferry(&["update", "status", "--journal", journal.to_str().unwrap()]);
    let s = String::from_utf8_lossy(&st.stdout);
    assert!(s.contains("interrupted"), "{}", text(&st));
    assert!(
        s.lines()
            .any(|l| l.contains("running") && l.contains("step:setup:upgrade")),
        "{s}"
    );
    // The agent saw its caller go and stopped the command.
    let end = Instant::now() + LIMIT;
    while !audit(&shop.agents[0])
        .iter()
        .any(|e| e["event"] == "end" && e["caller_gone"] == true)
    {
        assert!(
            Instant::now() < end,
            "the agent did not stop the orphaned step: {:?}",
            audit(&shop.agents[0])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // s1 is still drained: the run is not finished.
    assert!(shop
        .pools()
        .await
        .contains(&("s1".to_string(), "drain".to_string())));

    std::fs::write(&release, "").unwrap();
    let o = shop.ferry(&["update", "resume", "--journal", journal.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("step:setup:upgrade (again"),
        "{}",
        text(&o)
    );
    for (_, addr) in &shop.nginx {
        assert_eq!(served(*addr).await, "shop v2\n");
    }
    for (name, state) in shop.pools().await {
        assert_eq!(state, "ready", "{name}");
    }
    let v = shop.update_status(&journal);
    assert_eq!(v["state"], "done", "{v:#}");
    // A second resume of a finished run changes nothing.
    let o = shop.ferry(&["update", "resume", "--journal", journal.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level1_syncs_the_files_from_the_primary() {
    let shop = Shop::start();
    let p = &shop.agents[0].app;
    std::fs::write(p.join("index.html"), "shop v1.1\n").unwrap();
    std::fs::write(p.join("static/new.css"), "p{}\n").unwrap();
    std::fs::write(shop.agents[2].app.join("stale.txt"), "old\n").unwrap();
    let rb = shop.runbook("level1.toml", "");
    let journal = shop.path("l1.journal");
    let o = shop.update("1", &rb, &journal);
    assert!(o.status.success(), "{}", text(&o));
    for a in &shop.agents[1..] {
        assert_eq!(
            std::fs::read_to_string(a.app.join("index.html")).unwrap(),
            "shop v1.1\n"
        );
        assert_eq!(
            std::fs::read_to_string(a.app.join("static/new.css")).unwrap(),
            "p{}\n"
        );
        assert!(!a.app.join("stale.txt").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extra_server_joins_a_pool_and_leaves_drained() {
    let shop = Shop::start();
    let extra_root = shop.path("s4-app");
    std::fs::create_dir_all(&extra_root).unwrap();
    std::fs::write(extra_root.join("index.html"), "shop v1\n").unwrap();
    let (_nginx4, addr4) = start_nginx("s4", &extra_root);
    // A configured server that is ready cannot be removed.
    let (s, v) = admin(
        shop.router.admin,
        http::Method::DELETE,
        "/v1/pools/shop/servers/s2",
        None,
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("drain it first"),
        "{v}"
    );
    // Bad input is refused, naming the field.
    let (s, v) = admin(
        shop.router.admin,
        http::Method::POST,
        "/v1/pools/shop/servers",
        Some(serde_json::json!({"name": "s4", "address": "not-an-address"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");

    let traffic = Loop::start(shop.router.addr());
    traffic.wait_ok(20).await;
    let stderr = shop.path("agent-s4.stderr");
    let agent = Command::new(FERRY)
        .args([
            "agent",
            "--join",
            "shop",
            "--join-name",
            "s4",
            "--join-tier",
            "0",
        ])
        .arg("--join-address")
        .arg(addr4.to_string())
        .arg("--router")
        .arg(format!("http://{}", shop.router.admin))
        .env("FERRY_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Guard {
        child: agent,
        term_first: false,
    };
    let end = Instant::now() + LIMIT;
    while !shop
        .pools()
        .await
        .iter()
        .any(|(n, st)| n == "s4" && st == "ready")
    {
        assert!(
            Instant::now() < end,
            "s4 never joined: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The router sends it traffic.
    let c = client();
    let end = Instant::now() + LIMIT;
    loop {
        let (_, h, _) = get(&c, shop.router.addr(), "/").await.unwrap();
        if h.get("x-server").is_some_and(|v| v == "s4") {
            break;
        }
        assert!(Instant::now() < end, "no request reached s4");
    }
    // Stopping the agent drains s4, then removes it; nobody sees a failure.
    signal(agent.child.id(), "TERM");
    let status = agent.child.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    traffic
        .wait_ok(traffic.ok.load(Ordering::Relaxed) + 20)
        .await;
    let (_, _, (failed, examples)) = traffic.stop().await;
    assert_eq!(failed, 0, "{examples:?}");
    let names: Vec<String> = shop.pools().await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["s1", "s2", "s3"]);
    assert!(std::fs::read_to_string(&stderr)
        .unwrap()
        .contains("left the pool"));
}

/// `ferry update --control etcd`: the journal and the update's lease live in
/// etcd (3 members). The runner is killed (SIGKILL) inside a step; another
/// runner is refused (exit 3, naming the holder) while the dead one's lease
/// lives, then takes the update over from the journal in etcd and finishes
/// it; `status` reads it from etcd.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_update_in_etcd_is_taken_over_by_another_runner() {
    let shop = Shop::start();
    let etcd_dir = tempfile::tempdir().unwrap();
    let cluster =
        tokio::task::block_in_place(|| ferry_demo::etcd::Cluster::start(etcd_dir.path())).unwrap();
    let endpoints = cluster.endpoints().join(",");
    let control = |ttl: &'static str| -> Vec<String> {
        [
            "--control",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--etcd-prefix",
            "/upd",
        ]
        .into_iter()
        .map(String::from)
        .chain([
            "--run".into(),
            "update-1".into(),
            "--lease-ttl".into(),
            ttl.into(),
        ])
        .collect()
    };
    let started = shop.path("slow.started");
    let release = shop.path("slow.release");
    let steps = format!(
        "[[steps]]\nname = \"setup:upgrade\"\nargv = {}\n[[steps]]\nname = \"static-content:deploy\"\nargv = {}\n",
        shop.sh("slow.sh", &[started.to_str().unwrap(), release.to_str().unwrap()]),
        shop.sh("upgrade.sh", &[]),
    );
    let rb = shop.runbook("slow.toml", &steps);
    let mut update = Command::new(FERRY)
        .args(["update", "--level", "2", "--primary", "s1", "--runbook"])
        .arg(&rb)
        .args(control("8s"))
        .env("FERRY_FLEET", &shop.fleet)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + LIMIT;
    while !started.exists() {
        assert!(Instant::now() < end, "the slow step never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(update.id(), "KILL");
    update.wait().unwrap();

    let resume: Vec<String> = ["update", "resume"]
        .into_iter()
        .map(String::from)
        .chain(control("10s"))
        .collect();
    let args: Vec<&str> = resume.iter().map(String::as_str).collect();
    let refused = shop.ferry(&args);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(text(&refused).contains("is held by"), "{}", text(&refused));
    let status: Vec<String> = ["update", "status"]
        .into_iter()
        .map(String::from)
        .chain(control("10s"))
        .collect();
    let st = shop.ferry(&status.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("unfinished"),
        "{}",
        text(&st)
    );

    std::fs::write(&release, "").unwrap();
    // The dead runner's lease expires within its TTL (8 s): then a resume
    // takes the update over.
    let end = Instant::now() + LIMIT;
    let o = loop {
        let o = shop.ferry(&args);
        if o.status.code() != Some(3) {
            break o;
        }
        assert!(
            Instant::now() < end,
            "the dead runner's lease never expired: {}",
            text(&o)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("step:setup:upgrade (again"),
        "{}",
        text(&o)
    );
    for (_, addr) in &shop.nginx {
        assert_eq!(served(*addr).await, "shop v2\n");
    }
    let mut json = status.clone();
    json.push("--json".into());
    let st = shop.ferry(&json.iter().map(String::as_str).collect::<Vec<_>>());
    let v: Value = serde_json::from_slice(&st.stdout).unwrap_or_else(|_| panic!("{}", text(&st)));
    assert_eq!(v["state"], "done", "{v:#}");
}

/// A runner paused (SIGSTOP) inside a step past its lease, while another took
/// the update over and finished it, changes nothing when it wakes: its next
/// journal write is refused and it exits 4, naming the new holder.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_update_runner_that_lost_its_lease_stops_with_exit_4() {
    let shop = Shop::start();
    let etcd_dir = tempfile::tempdir().unwrap();
    let cluster =
        tokio::task::block_in_place(|| ferry_demo::etcd::Cluster::start(etcd_dir.path())).unwrap();
    let endpoints = cluster.endpoints().join(",");
    let control: Vec<String> = [
        "--control",
        "etcd",
        "--etcd-endpoints",
        &endpoints,
        "--run",
        "update-2",
        "--lease-ttl",
        "2s",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let started = shop.path("slow.started");
    let release = shop.path("slow.release");
    let steps = format!(
        "[[steps]]\nname = \"setup:upgrade\"\nargv = {}\n[[steps]]\nname = \"static-content:deploy\"\nargv = {}\n",
        shop.sh("slow.sh", &[started.to_str().unwrap(), release.to_str().unwrap()]),
        shop.sh("upgrade.sh", &[]),
    );
    let rb = shop.runbook("slow.toml", &steps);
    let first = Command::new(FERRY)
        .args(["update", "--level", "2", "--primary", "s1", "--runbook"])
        .arg(&rb)
        .args(&control)
        .env("FERRY_FLEET", &shop.fleet)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + LIMIT;
    while !started.exists() {
        assert!(Instant::now() < end, "the slow step never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(first.id(), "STOP");
    std::fs::write(&release, "").unwrap();
    let resume: Vec<String> = ["update".to_string(), "resume".to_string()]
        .into_iter()
        .chain(control.iter().cloned())
        .collect();
    let args: Vec<&str> = resume.iter().map(String::as_str).collect();
    let end = Instant::now() + LIMIT;
    let second = loop {
        let o = shop.ferry(&args);
        if o.status.code() != Some(3) {
            break o;
        }
        assert!(
            Instant::now() < end,
            "the paused runner's lease never expired: {}",
            text(&o)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(second.status.success(), "{}", text(&second));

    signal(first.id(), "CONT");
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lost the update's lease"),
        "{}",
        text(&out)
    );
    let mut status: Vec<String> = vec!["update".into(), "status".into()];
    status.extend(control.iter().cloned());
    status.push("--json".into());
    let st = shop.ferry(&status.iter().map(String::as_str).collect::<Vec<_>>());
    let v: Value = serde_json::from_slice(&st.stdout).unwrap_or_else(|_| panic!("{}", text(&st)));
    assert_eq!(v["state"], "done", "{v:#}");
    for (name, state) in shop.pools().await {
        assert_eq!(state, "ready", "{name}: the woken runner changed nothing");
    }
}
