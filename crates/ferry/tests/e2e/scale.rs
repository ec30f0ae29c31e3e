//! A TV campaign (issue 22): a pool of 2 nginx behind the router with a scale
//! policy, a load that ramps up then down. The policy's add command starts a
//! new nginx with an empty document root and `ferry agent --join` with files
//! first (joined drained, full sync + verification from the primary's
//! agent, then ready, then following the primary); its remove command
//! stops them. The pool grows to its
//! max under the peak and back to its min after, no request fails, a joined
//! server never serves before its files are verified, and every decision is
//! in the router's log and metrics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::procs::FERRY;
use crate::support::{
    client, free_port, metric, pool, router_config, site, workdir, Admin, Deadline, Ferry, TOKEN,
};

/// The load generator never runs longer than this.
const MAX_LOAD: Duration = Duration::from_secs(150);
/// Workers at the peak and in the quiet after it.
const PEAK: usize = 24;
const QUIET: usize = 1;
/// Files of the site: the page the load asks for, and enough others that
/// the copy is a real tree.
const SITE_FILES: usize = 200;
/// At nginx's `limit_rate 4k` (the first second's share goes at once),
/// about two seconds per request: the requests in flight follow the clients.
const PAGE_BYTES: usize = 12_000;

fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// An nginx serving `root` (the site's files) slowly enough (`limit_rate`)
/// that the requests in flight follow the number of clients.
fn nginx_conf(prefix: &Path, root: &Path, name: &str, port: u16) -> String {
    let d = prefix.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type text/html;
    log_format e2e '$status $request_uri $body_bytes_sent';
    access_log {d}/access.log e2e;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        limit_rate 4k;
        add_header X-Backend {name} always;
    }}
}}
"#,
        root = root.display()
    )
}

/// A started process, killed and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nginx(prefix: &Path, root: &Path, name: &str, port: u16) -> Proc {
    std::fs::create_dir_all(prefix).unwrap();
    std::fs::write(
        prefix.join("nginx.conf"),
        nginx_conf(prefix, root, name, port),
    )
    .unwrap();
    let child = Command::new(nginx_binary())
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .arg("-e")
        .arg(prefix.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nginx");
    wait_port(port, &format!("nginx {name}"));
    Proc(child)
}

fn wait_port(port: u16, what: &str) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} not listening on {port}");
}

/// The site's files: `page.html` and others in a few directories.
fn write_site(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("page.html"), page()).unwrap();
    for i in 0..SITE_FILES {
        let dir = root.join(format!("media/{}", i % 10));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("p{i}.jpg")), vec![i as u8; 1000 + i * 37]).unwrap();
    }
}

fn page() -> Vec<u8> {
    let mut p = b"<!doctype html><title>campaign</title>".to_vec();
    p.resize(PAGE_BYTES, b'x');
    p
}

/// Files under `root` (regular files, recursively).
fn count_files(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p)
            } else {
                1
            }
        })
        .sum()
}

/// The add command: a new nginx with an empty document root on the next
/// reserved port, and `ferry agent --join` with files first; both detached
/// (`setsid`) so they outlive the command. The remove command stops them.
fn write_scripts(dir: &Path, ports: &[u16], admin: SocketAddr, agent: SocketAddr) {
    std::fs::write(
        dir.join("ports"),
        ports.iter().map(|p| format!("{p}\n")).collect::<String>(),
    )
    .unwrap();
    let conf = nginx_conf(
        Path::new("@PREFIX@"),
        Path::new("@PREFIX@/root"),
        "@NAME@",
        0,
    )
    .replace("127.0.0.1:0", "127.0.0.1:@PORT@");
    std::fs::write(dir.join("nginx.conf.in"), conf).unwrap();
    let d = dir.display();
    let add = format!(
        r#"#!/bin/sh
set -eu
D={d}
n=$(( $(cat $D/added 2>/dev/null || echo 0) + 1 ))
echo $n > $D/added
port=$(sed -n "${{n}}p" $D/ports)
name=extra$n
P=$D/$name
mkdir -p $P/root
sed -e "s#@PREFIX@#$P#g" -e "s#@NAME@#$name#g" -e "s#@PORT@#$port#g" $D/nginx.conf.in > $P/nginx.conf
echo "add $name pool=$FERRY_POOL servers=$FERRY_SERVERS wanted=$FERRY_WANTED" >> $D/commands.log
setsid {nginx} -p $P -c $P/nginx.conf -e $P/error.log </dev/null >/dev/null 2>&1 &
echo $! > $P/nginx.pid
setsid {ferry} agent --join web --join-name $name --join-address 127.0.0.1:$port \
  --router http://{admin} --router-token {TOKEN} \
  --join-files-from ferry://{agent}/site --join-files-to $P/root --join-key-file $D/key --join-follow \
  </dev/null >$P/agent.log 2>&1 &
echo $! > $P/agent.pid
"#,
        nginx = nginx_binary(),
        ferry = FERRY,
    );
    let remove = format!(
        r#"#!/bin/sh
set -eu
D={d}
P=$D/$FERRY_SERVER
echo "remove $FERRY_SERVER pool=$FERRY_POOL address=$FERRY_ADDRESS" >> $D/commands.log
kill $(cat $P/agent.pid) 2>/dev/null || true
kill $(cat $P/nginx.pid) 2>/dev/null || true
"#
    );
    for (name, text) in [("add.sh", add), ("remove.sh", remove)] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Stops what the add command started and the remove command did not
/// (the test failed half way): by the pids they wrote, only those.
struct Extras(PathBuf);

impl Drop for Extras {
    fn drop(&mut self) {
        for n in 1..=8 {
            for f in ["agent.pid", "nginx.pid"] {
                let p = self.0.join(format!("extra{n}/{f}"));
                if let Some(pid) = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    let _ = Command::new("kill")
                        .arg("-KILL")
                        .arg(pid.to_string())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
}

/// The client side: `target` workers GET the page in a loop; every answer
/// is checked (200, the whole page, a backend named).
#[derive(Default)]
struct Load {
    target: AtomicUsize,
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
    by_backend: Mutex<std::collections::BTreeMap<String, u64>>,
    stop: std::sync::atomic::AtomicBool,
}

fn start_load(addr: SocketAddr, load: &Arc<Load>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..PEAK)
        .map(|w| {
            let load = Arc::clone(load);
            tokio::spawn(async move {
                let http = client::http1();
                let started = tokio::time::Instant::now();
                while !load.stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LOAD {
                    if w >= load.target.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    let r = client::get(&http, addr, "shop.test", "/page.html").await;
                    let bad = match r {
                        Ok(r) if r.status == 200 && r.body.len() == PAGE_BYTES => {
                            let b = r.backend().unwrap_or("?").to_string();
                            *load.by_backend.lock().unwrap().entry(b).or_default() += 1;
                            load.ok.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Ok(r) => {
                            format!("{} {} bytes from {:?}", r.status, r.body.len(), r.backend())
                        }
                        Err(e) => e,
                    };
                    load.failed.fetch_add(1, Ordering::Relaxed);
                    let mut f = load.failures.lock().unwrap();
                    if f.len() < 20 {
                        f.push(bad);
                    }
                }
            })
        })
        .collect()
}

/// The pool "web" as GET /v1/pools shows it.
async fn web(admin: &Admin) -> Value {
    let (status, v) = admin.get("/v1/pools").await;
    assert_eq!(status, 200, "{v}");
    v["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "web"))
        .cloned()
        .expect("pool web")
}

fn ready_servers(pool: &Value) -> Vec<String> {
    pool["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "ready")
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// Polls the pool until `done` says so (bounded); on every poll, a joined
/// server that is ready must have its whole tree (files first).
async fn watch_pool(
    admin: &Admin,
    dir: &Path,
    what: &str,
    limit: Duration,
    seen_max: &mut usize,
    done: impl Fn(usize) -> bool,
) {
    let deadline = Deadline::new(what, limit);
    loop {
        let p = web(admin).await;
        let ready = ready_servers(&p);
        *seen_max = (*seen_max).max(ready.len());
        for name in ready.iter().filter(|n| n.starts_with("extra")) {
            let files = count_files(&dir.join(name).join("root"));
            assert_eq!(
                files,
                SITE_FILES + 1,
                "{name} is ready with {files} files of {}",
                SITE_FILES + 1
            );
        }
        if done(ready.len()) {
            return;
        }
        if deadline.passed() {
            panic!("timed out waiting for {what}: {p}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_grows_the_pool_to_its_max_and_back_with_no_failed_request() {
    let dir = workdir();
    let d = dir.path();
    // The primary's files, served to joining servers by its agent.
    let primary_root = d.join("primary");
    let agent_port = free_port();
    let _agent = primary_agent(d, agent_port, true, "primary-agent.log");
    // The pool's own two servers, with the site's files.
    let (p1, p2) = (free_port(), free_port());
    let _web1 = start_nginx(&d.join("web1"), &primary_root, "web1", p1);
    let _web2 = start_nginx(&d.join("web2"), &primary_root, "web2", p2);
    let extra_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let _extras = Extras(d.to_path_buf());

    // The router: add when more than 3 requests in flight per server, remove
    // below 1, after 2 s; between 2 and 4 servers.
    let policy = format!(
        r#"
[pool.scale]
add_above = 3
remove_below = 1
hold = "2s"
cooldown = "2s"
min_servers = 2
max_servers = 4
add_command = ["{d}/add.sh"]
remove_command = ["{d}/remove.sh"]
command_timeout = "20s"
drain_timeout = "10s"
"#,
        d = d.display()
    );
    let a1: SocketAddr = ([127, 0, 0, 1], p1).into();
    let a2: SocketAddr = ([127, 0, 0, 1], p2).into();
    let config = router_config("dc1", "")
        + &pool("web", &[("web1", a1), ("web2", a2)])
        + &policy
        + &site("shop.test", "pool:web", "");
    let router = Ferry::start(d, &config);
    let admin = Admin::new(router.admin);
    write_scripts(
        d,
        &extra_ports,
        router.admin,
        ([127, 0, 0, 1], agent_port).into(),
    );

    let load = Arc::new(Load::default());
    let workers = start_load(router.addr(), &load);
    let mut seen_max = 0;
    // Before the peak: a trickle, the pool at its min.
    load.target.store(QUIET, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The peak: 24 clients on 2 servers is 12 in flight per server.
    for step in [6, 12, PEAK] {
        load.target.store(step, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    watch_pool(
        &admin,
        d,
        "the pool to grow to 4 ready servers",
        Duration::from_secs(60),
        &mut seen_max,
        |n| n == 4,
    )
    .await;
    // Still 6 per server with 4: the policy holds at its max.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_peak = web(&admin).await;
    assert_eq!(ready_servers(&at_peak).len(), 4, "{at_peak}");
    let decision = at_peak["scale"]["decision"].as_str().unwrap_or("");
    assert!(["at_max", "holding"].contains(&decision), "{at_peak}");
    // After the peak: back to a trickle, the pool shrinks to its min.
    for step in [12, 6, QUIET] {
        load.target.store(step, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    watch_pool(
        &admin,
        d,
        "the pool to shrink to 2 ready servers",
        Duration::from_secs(60),
        &mut seen_max,
        |n| n == 2,
    )
    .await;
    // Both removals ended (the last one's remove command included).
    let end = Deadline::new("the last remove action to end", Duration::from_secs(30));
    while web(&admin).await["scale"]["in_flight"] != Value::Null {
        end.tick().await;
    }
    load.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }

    // No request failed, the peak was served by the servers that joined.
    let failed = load.failed.load(Ordering::Relaxed);
    let ok = load.ok.load(Ordering::Relaxed);
    let by_backend = load.by_backend.lock().unwrap().clone();
    assert_eq!(
        failed,
        0,
        "failed requests: {:?}",
        load.failures.lock().unwrap()
    );
    assert_eq!(seen_max, 4);
    let pool_now = web(&admin).await;
    let names: Vec<&str> = pool_now["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web1", "web2"], "{pool_now}");
    for extra in ["extra1", "extra2"] {
        assert!(
            by_backend.get(extra).copied().unwrap_or(0) > 0,
            "{extra} served nothing: {by_backend:?}"
        );
        // Files first: nothing but whole pages (no 404 before the copy).
        let log = std::fs::read_to_string(d.join(extra).join("access.log")).unwrap_or_default();
        assert!(!log.is_empty());
        for line in log.lines() {
            assert!(
                line.starts_with("200 /page.html "),
                "{extra} answered {line:?}"
            );
        }
        let agent_log =
            std::fs::read_to_string(d.join(extra).join("agent.log")).unwrap_or_default();
        assert!(agent_log.contains("files verified"), "{agent_log}");
    }
    // The commands ran with their environment, removals newest first.
    let commands = std::fs::read_to_string(d.join("commands.log")).unwrap();
    let lines: Vec<&str> = commands.lines().collect();
    assert_eq!(lines.len(), 4, "{commands}");
    assert!(
        lines[0].starts_with("add extra1 pool=web servers=2 wanted=3"),
        "{commands}"
    );
    assert!(
        lines[1].starts_with("add extra2 pool=web servers=3 wanted=4"),
        "{commands}"
    );
    assert!(
        lines[2].starts_with("remove extra2 pool=web address=127.0.0.1:"),
        "{commands}"
    );
    assert!(
        lines[3].starts_with("remove extra1 pool=web address=127.0.0.1:"),
        "{commands}"
    );

    // Every decision in the metrics and in the log, with its numbers.
    let m = admin.metrics().await;
    let series =
        |a: &str| format!("ferry_scale_actions_total{{pool=\"web\",action=\"{a}\",result=\"ok\"}}");
    assert_eq!(metric(&m, &series("add")), Some(2.0), "{m}");
    assert_eq!(metric(&m, &series("remove")), Some(2.0), "{m}");
    // The gauges follow at the next decision (once a second).
    let gauges = Deadline::new("ferry_scale_servers to show 2", Duration::from_secs(10));
    while metric(&admin.metrics().await, "ferry_scale_servers{pool=\"web\"}") != Some(2.0) {
        gauges.tick().await;
    }
    assert!(metric(&m, "ferry_scale_signal{pool=\"web\"}").is_some());
    let log = router.stderr();
    let adds: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("scale decision: add a server"))
        .collect();
    let removes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("scale decision: remove a server"))
        .collect();
    assert_eq!((adds.len(), removes.len()), (2, 2), "{log}");
    for l in adds.iter().chain(&removes) {
        assert!(
            l.contains("signal=") && l.contains("servers=") && l.contains("wanted="),
            "{l}"
        );
    }
    eprintln!(
        "campaign: {ok} requests, 0 failed, by server {by_backend:?}\n{commands}\n{}",
        adds.iter()
            .chain(&removes)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Issue 22: a server that joined at run time used to be forgotten at the
/// next reload. It is kept, with its state, and serves on.
#[tokio::test]
async fn a_server_that_joined_at_run_time_is_kept_across_a_reload() {
    let dir = workdir();
    let a = crate::support::Nginx::start("a");
    let b = crate::support::Nginx::start("b");
    let config = router_config("dc1", "")
        + &pool("web", &[("a", a.addr())])
        + &site("shop.test", "pool:web", "");
    let router = Ferry::start(dir.path(), &config);
    let admin = Admin::new(router.admin);
    let (status, v) = admin
        .post(
            "/v1/pools/web/servers",
            &serde_json::json!({"name": "b", "address": b.addr().to_string(), "state": "drain"}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    for _ in 0..2 {
        let (status, v) = admin.post("/v1/reload", &Value::Null).await;
        assert_eq!(status, 200, "{v}");
        let p = web(&admin).await;
        let b_now = p["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "b")
            .cloned();
        let b_now = b_now.unwrap_or_else(|| panic!("b forgotten by the reload: {p}"));
        assert_eq!(b_now["state"], "drain", "{p}");
    }
    // It still serves once made ready.
    let (status, v) = admin
        .put(
            "/v1/pools/web/servers/b",
            &serde_json::json!({"state": "ready"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let http = client::http1();
    let mut from_b = 0;
    for _ in 0..10 {
        let r = client::get(&http, router.addr(), "shop.test", "/")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        from_b += usize::from(r.backend() == Some("b"));
    }
    assert!(from_b > 0, "b took no request after the reloads");
    assert!(router.stderr().contains("kept across the reload"));
}

/// A provider command that fails is retried after a doubling back-off,
/// never in a tight loop; one that hangs is killed at its timeout. Both
/// are counted and shown.
#[tokio::test]
async fn failing_and_hanging_commands_back_off_and_are_counted() {
    let dir = workdir();
    let d = dir.path();
    let a = crate::support::Nginx::start("a");
    let b = crate::support::Nginx::start("b");
    let script = |name: &str, body: &str| {
        let p = d.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.display().to_string()
    };
    let fails = script(
        "fails.sh",
        &format!(
            "date +%s.%N >> {}/attempts; echo no quota >&2; exit 7",
            d.display()
        ),
    );
    let hangs = script("hangs.sh", "exec sleep 30");
    // min_servers 2 with one server: an add is due at once, every time.
    let policy = |cmd: &str, timeout: &str| {
        format!(
            "\n[pool.scale]\nadd_above = 3\nremove_below = 1\nhold = \"1s\"\ncooldown = \"1s\"\nmin_servers = 2\nmax_servers = 3\nadd_command = [\"{cmd}\"]\nremove_command = [\"/bin/true\"]\ncommand_timeout = \"{timeout}\"\n"
        )
    };
    let config = router_config("dc1", "")
        + &pool("web", &[("a", a.addr())])
        + &policy(&fails, "10s")
        + &pool("slow", &[("b", b.addr())])
        + &policy(&hangs, "500ms")
        + &site("shop.test", "pool:web", "");
    let router = Ferry::start(d, &config);
    let admin = Admin::new(router.admin);
    // Watch for 9 s: attempts at about 1 s, then 2 s and 4 s later (at
    // most 4, whatever the timing); a tight loop would make hundreds.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let attempts = std::fs::read_to_string(d.join("attempts")).unwrap_or_default();
    let times: Vec<f64> = attempts.lines().filter_map(|l| l.parse().ok()).collect();
    assert!((2..=4).contains(&times.len()), "attempts: {attempts}");
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= 1.9,
            "retried after {:.2} s: {attempts}",
            w[1] - w[0]
        );
    }
    let m = admin.metrics().await;
    let failed = metric(
        &m,
        "ferry_scale_actions_total{pool=\"web\",action=\"add\",result=\"failed\"}",
    );
    assert_eq!(failed, Some(times.len() as f64), "{m}");
    let timeouts = metric(
        &m,
        "ferry_scale_actions_total{pool=\"slow\",action=\"add\",result=\"timeout\"}",
    );
    assert!(timeouts.is_some_and(|n| n >= 1.0), "{m}");
    let p = web(&admin).await;
    let s = &p["scale"];
    assert_eq!(s["failures"].as_u64(), Some(times.len() as u64), "{p}");
    assert_eq!(s["last_action"]["result"], "failed", "{p}");
    assert_eq!(s["last_action"]["detail"], "exit 7", "{p}");
    let log = router.stderr();
    assert!(log.contains("scale action failed"), "{log}");
    assert!(
        log.contains("no quota"),
        "the command's stderr is in the log: {log}"
    );
}

/// Files first: a joining server whose copy fails never takes a request;
/// it leaves the pool and its agent exits with the error.
#[tokio::test]
async fn a_server_whose_copy_fails_never_gets_traffic() {
    let dir = workdir();
    let d = dir.path();
    let a = crate::support::Nginx::start("a");
    let x = crate::support::Nginx::start("x");
    let config = router_config("dc1", "")
        + &pool("web", &[("a", a.addr())])
        + &site("shop.test", "pool:web", "");
    let router = Ferry::start(d, &config);
    let admin = Admin::new(router.admin);
    std::fs::write(d.join("key"), "campaign-sync-key-0123456789").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    // Nothing listens there: the copy cannot even start.
    let nowhere = free_port();
    let http = client::http1();
    let out = tokio::process::Command::new(FERRY)
        .args([
            "agent",
            "--join",
            "web",
            "--join-name",
            "x",
            "--join-address",
        ])
        .arg(x.addr().to_string())
        .arg("--router")
        .arg(format!("http://{}", router.admin))
        .args(["--router-token", TOKEN, "--join-files-from"])
        .arg(format!("ferry://127.0.0.1:{nowhere}/site"))
        .arg("--join-files-to")
        .arg(d.join("root"))
        .arg("--join-key-file")
        .arg(d.join("key"))
        .stdin(Stdio::null())
        .output();
    // Traffic all along the attempt.
    let traffic = async {
        let mut n = 0;
        for _ in 0..50 {
            let r = client::get(&http, router.addr(), "shop.test", "/")
                .await
                .unwrap();
            assert_eq!((r.status, r.backend()), (200, Some("a")));
            n += 1;
        }
        n
    };
    let (out, n) = tokio::join!(tokio::time::timeout(Duration::from_secs(60), out), traffic);
    let out = out.expect("the agent gave up within 60 s").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("files first"), "{stderr}");
    assert_eq!(n, 50);
    assert!(x.requests().is_empty(), "x served: {:?}", x.requests());
    let p = web(&admin).await;
    let names: Vec<&str> = p["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a"], "x is still in the pool: {p}");
}

/// Issue 22: joined servers persist in the router's store. A server that
/// joined (drained) is there again, drained, after a restart; one that left
/// is not.
#[tokio::test]
async fn joined_servers_are_restored_after_a_restart_and_left_ones_are_not() {
    let dir = workdir();
    let a = crate::support::Nginx::start("a");
    let b = crate::support::Nginx::start("b");
    let c = crate::support::Nginx::start("c");
    let config = router_config("dc1", "store = \"state.db\"")
        + &pool("web", &[("a", a.addr())])
        + &site("shop.test", "pool:web", "");
    let names = |p: &Value| -> Vec<(String, String)> {
        p["servers"]
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
    };
    let router = Ferry::start(dir.path(), &config);
    let admin = Admin::new(router.admin);
    for (name, addr, state) in [("b", b.addr(), "drain"), ("c", c.addr(), "ready")] {
        let (status, v) = admin
            .post(
                "/v1/pools/web/servers",
                &serde_json::json!({"name": name, "address": addr.to_string(), "state": state, "weight": 2}),
            )
            .await;
        assert_eq!(status, 201, "{v}");
    }
    // c leaves (drained, idle) before the restart.
    let (status, v) = admin
        .put(
            "/v1/pools/web/servers/c",
            &serde_json::json!({"state": "drain"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = admin
        .call(http::Method::DELETE, "/v1/pools/web/servers/c", "")
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(router.terminate().success());

    let router = Ferry::start(dir.path(), &config);
    let admin = Admin::new(router.admin);
    let p = web(&admin).await;
    assert_eq!(
        names(&p),
        [("a".into(), "ready".into()), ("b".into(), "drain".into())],
        "{p}"
    );
    let b_now = &p["servers"][1];
    assert_eq!(
        (b_now["address"].as_str(), b_now["weight"].as_u64()),
        (Some(b.addr().to_string().as_str()), Some(2))
    );
    // Made ready, it serves.
    let (status, v) = admin
        .put(
            "/v1/pools/web/servers/b",
            &serde_json::json!({"state": "ready"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let http = client::http1();
    let mut from_b = 0;
    for _ in 0..10 {
        let r = client::get(&http, router.addr(), "shop.test", "/")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        from_b += usize::from(r.backend() == Some("b"));
    }
    assert!(from_b > 0);
    assert!(router.stderr().contains("restored"));
}

/// A server whose every answer starts 700 ms after the request (the
/// upstream latency the router measures is the time to the response head).
async fn slow_head_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    let body = page();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Backend: slow\r\n\r\n",
                        body.len()
                    );
                    if c.write_all(head.as_bytes()).await.is_err()
                        || c.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// The `p95_latency` signal: answers that start 700 ms after the request put
/// the pool's 95th percentile (bucket bound 1000 ms) above `add_above`
/// (500 ms), and the policy adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_pool_is_grown_on_its_p95_latency() {
    let dir = workdir();
    let d = dir.path();
    let (slow, server) = slow_head_server().await;
    let add = d.join("add.sh");
    std::fs::write(
        &add,
        format!("#!/bin/sh\necho add >> {}/adds\n", d.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&add, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = router_config("dc1", "")
        + &pool("web", &[("slow", slow)])
        + &format!(
            "\n[pool.scale]\nsignal = \"p95_latency\"\nadd_above = 500\nremove_below = 50\nhold = \"1s\"\ncooldown = \"30s\"\nmin_servers = 1\nmax_servers = 2\nadd_command = [\"{}\"]\nremove_command = [\"/bin/true\"]\n",
            add.display()
        )
        + &site("shop.test", "pool:web", "");
    let router = Ferry::start(d, &config);
    let admin = Admin::new(router.admin);
    let load = Arc::new(Load::default());
    load.target.store(4, Ordering::Relaxed);
    let workers = start_load(router.addr(), &load);
    let added = Deadline::new("an add on p95 latency", Duration::from_secs(30));
    while std::fs::read_to_string(d.join("adds")).is_err() {
        added.tick().await;
    }
    load.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }
    let log = router.stderr();
    let decision = log
        .lines()
        .find(|l| l.contains("scale decision: add a server"))
        .unwrap_or_else(|| panic!("{log}"));
    // Answers after 700 ms fall in the (0.5 s, 1 s] bucket.
    assert!(decision.contains("signal=1000"), "{decision}");
    let p = web(&admin).await;
    assert_eq!(p["scale"]["signal"], "p95_latency", "{p}");
    assert_eq!(load.failed.load(Ordering::Relaxed), 0);
    server.abort();
}

/// The state of `name` in the pool `web`, if it is there.
async fn state_of(admin: &Admin, name: &str) -> Option<String> {
    let p = web(admin).await;
    p["servers"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["state"].as_str().map(str::to_string))
}

/// The primary's agent on `port`, serving `d/primary` (the site, written
/// if missing) read-only as volume `site`, watched (so joined servers can
/// follow it) or not; its key in `d/key`.
fn primary_agent(d: &Path, port: u16, watch: bool, log: &str) -> Proc {
    let root = d.join("primary");
    if !root.exists() {
        write_site(&root);
    }
    std::fs::write(d.join("key"), "campaign-sync-key-0123456789").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\nkey_file = \"{}\"\n[volumes.site]\npath = \"{}\"\nread_only = true\nwatch = {watch}\n",
            d.join("key").display(),
            root.display()
        ),
    )
    .unwrap();
    let p = Proc(
        Command::new(FERRY)
            .arg("agent")
            .arg("--config")
            .arg(d.join("agent.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join(log)).unwrap())
            .spawn()
            .expect("starting the primary's agent"),
    );
    wait_port(port, "the primary's agent");
    p
}

/// Issue 22, "while it serves, --follow keeps it in step": once the joined
/// server is ready, a file saved at the primary is served through the
/// router by the joined server within a bound (the delay is printed), and
/// a deletion follows too. A lost primary drains it after
/// `--join-stale-after`; the primary back, it is ready again; both are in
/// the agent's metrics. SIGTERM leaves the pool and stops the follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_server_follows_the_primary_and_serves_new_files_within_seconds() {
    let dir = workdir();
    let d = dir.path();
    let primary_root = d.join("primary");
    let agent_port = free_port();
    let primary = primary_agent(d, agent_port, true, "primary-agent.log");
    let a = crate::support::Nginx::start("a");
    let root = d.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let xp = free_port();
    let _x = start_nginx(&d.join("x"), &root, "x", xp);
    let config = router_config("dc1", "")
        + &pool("web", &[("a", a.addr())])
        + &site("shop.test", "pool:web", "");
    let router = Ferry::start(d, &config);
    let admin = Admin::new(router.admin);
    let metrics_port = free_port();
    let mut agent = Command::new(FERRY)
        .args(["agent", "--join", "web", "--join-name", "x"])
        .arg("--join-address")
        .arg(format!("127.0.0.1:{xp}"))
        .arg("--router")
        .arg(format!("http://{}", router.admin))
        .args(["--router-token", TOKEN, "--join-files-from"])
        .arg(format!("ferry://127.0.0.1:{agent_port}/site"))
        .arg("--join-files-to")
        .arg(&root)
        .arg("--join-key-file")
        .arg(d.join("key"))
        .args(["--join-follow", "--join-stale-after", "2s"])
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("x-agent.log")).unwrap())
        .spawn()
        .expect("starting the joining agent");
    let agent_log = || std::fs::read_to_string(d.join("x-agent.log")).unwrap_or_default();
    let wait_state = |want: &'static str, limit: Duration| {
        let admin = &admin;
        async move {
            let deadline = Deadline::new(format!("x {want}"), limit);
            while state_of(admin, "x").await.as_deref() != Some(want) {
                deadline.tick().await;
            }
        }
    };
    wait_state("ready", Duration::from_secs(30)).await;
    assert_eq!(count_files(&root), SITE_FILES + 1);
    // Only x takes traffic from here, so what is served is its copy.
    let (status, v) = admin
        .put(
            "/v1/pools/web/servers/a",
            &serde_json::json!({"state": "drain"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let http = client::http1();

    // A product image saved in the back office.
    let body = "a new product image";
    std::fs::write(primary_root.join("media/3/new.jpg"), body).unwrap();
    let saved = std::time::Instant::now();
    let deadline = Deadline::new("the new file served by x", Duration::from_secs(20));
    loop {
        let r = client::get(&http, router.addr(), "shop.test", "/media/3/new.jpg")
            .await
            .unwrap();
        if r.status == 200 {
            assert_eq!((r.backend(), r.body.as_str()), (Some("x"), body));
            break;
        }
        deadline.tick().await;
    }
    let delay = saved.elapsed();
    println!("follow delay: saved at the primary to served by the joined server in {delay:?}");
    // Deleted at the primary, gone at x.
    std::fs::remove_file(primary_root.join("media/3/new.jpg")).unwrap();
    let deadline = Deadline::new("the deletion at x", Duration::from_secs(20));
    loop {
        let r = client::get(&http, router.addr(), "shop.test", "/media/3/new.jpg")
            .await
            .unwrap();
        if r.status == 404 {
            break;
        }
        deadline.tick().await;
    }

    // The primary lost: x is drained after 2 s out of step...
    drop(primary);
    wait_state("drain", Duration::from_secs(20)).await;
    assert!(agent_log().contains("lost the primary"), "{}", agent_log());
    // ... and ready again once a pass (a full walk) catches it up,
    // with what changed meanwhile.
    std::fs::write(primary_root.join("while-away.txt"), "missed").unwrap();
    let _primary = primary_agent(d, agent_port, true, "primary-agent-2.log");
    wait_state("ready", Duration::from_secs(30)).await;
    assert_eq!(
        std::fs::read_to_string(root.join("while-away.txt")).unwrap(),
        "missed"
    );
    // Counted: one drain, the failures, back in step.
    let m = client::get(
        &http,
        ([127, 0, 0, 1], metrics_port).into(),
        "localhost",
        "/metrics",
    )
    .await
    .unwrap()
    .body;
    assert_eq!(
        metric(&m, "ferry_join_follow_drains_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "ferry_join_follow_in_step"), Some(1.0), "{m}");
    assert!(
        metric(&m, "ferry_join_follow_failures_total") >= Some(1.0),
        "{m}"
    );
    assert!(
        metric(&m, "ferry_join_follow_passes_total") >= Some(2.0),
        "{m}"
    );

    // SIGTERM: drained, left, follower stopped.
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(agent.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Deadline::new("the agent to exit", Duration::from_secs(30));
    let status = loop {
        if let Some(s) = agent.try_wait().unwrap() {
            break s;
        }
        deadline.tick().await;
    };
    let log = agent_log();
    assert!(status.success(), "{log}");
    assert!(log.contains("stopped following the primary"), "{log}");
    assert_eq!(state_of(&admin, "x").await, None);
    assert!(
        delay < Duration::from_secs(20),
        "the new file took {delay:?}"
    );
}

/// `--join-follow` from a primary whose volume is not watched is refused
/// before the server takes any traffic (not found by a drain later): the
/// server leaves the pool and its agent exits naming the cause.
#[tokio::test]
async fn a_primary_that_cannot_be_followed_is_refused_before_any_traffic() {
    let dir = workdir();
    let d = dir.path();
    let agent_port = free_port();
    let _primary = primary_agent(d, agent_port, false, "primary-agent.log");
    let a = crate::support::Nginx::start("a");
    let x = crate::support::Nginx::start("x");
    let config = router_config("dc1", "")
        + &pool("web", &[("a", a.addr())])
        + &site("shop.test", "pool:web", "");
    let router = Ferry::start(d, &config);
    let admin = Admin::new(router.admin);
    let out = tokio::process::Command::new(FERRY)
        .args(["agent", "--join", "web", "--join-name", "x"])
        .arg("--join-address")
        .arg(x.addr().to_string())
        .arg("--router")
        .arg(format!("http://{}", router.admin))
        .args(["--router-token", TOKEN, "--join-files-from"])
        .arg(format!("ferry://127.0.0.1:{agent_port}/site"))
        .arg("--join-files-to")
        .arg(d.join("root"))
        .arg("--join-key-file")
        .arg(d.join("key"))
        .arg("--join-follow")
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the agent gave up within 60 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot be followed"), "{stderr}");
    assert!(stderr.contains("watch = true"), "{stderr}");
    assert!(x.requests().is_empty(), "x served: {:?}", x.requests());
    assert_eq!(state_of(&admin, "x").await, None);
}
