//! Logs that no client can turn into a full disk or a stalled router
//! (issue 15, rows 8 and 9; seed 000's error logger that filled a disk).
//!
//! - A tunnel whose database is down, hammered by one client: before, one
//!   line per connection (26,759 lines in 5 s); now at most `--log-rate`
//!   lines a second from that statement and a "suppressed N" summary, in a
//!   `--log-file` that rotates at its cap, on a small tmpfs that is then
//!   filled: the router keeps answering, the log stays within its cap, lost
//!   lines are counted in /metrics.
//! - The access log into a stdout nobody reads, with 60 KB request heads:
//!   before, the router grew from 39 MB to 544 MB; now the queue is bounded in
//!   bytes and its fields cut.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http1::read_response;
use crate::report;
use crate::support::procs::FERRY;
use crate::support::{free_port, metric, router_config, workdir, Admin, Backend};
use crate::tmpfs::Tmpfs;

/// A `ferry proxy` started with extra global flags and a chosen stdout;
/// killed (by pid) when dropped.
struct Router {
    child: Child,
    listener: SocketAddr,
    admin: SocketAddr,
}

impl Router {
    fn start(dir: &Path, config: &str, flags: &[&str], stdout: Stdio) -> Router {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, config).unwrap();
        let ready = dir.join("ready.json");
        let child = Command::new(FERRY)
            .args(flags)
            .args(["proxy", "--config"])
            .arg(&path)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("starting ferry proxy");
        let mut router = Router {
            child,
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let end = Instant::now() + Duration::from_secs(30);
        let info: serde_json::Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break serde_json::from_str(&text).unwrap();
            }
            if let Ok(Some(status)) = router.child.try_wait() {
                panic!(
                    "ferry proxy exited ({status}):\n{}",
                    std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < end, "ferry proxy not ready in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        router.listener = info["listeners"][0].as_str().unwrap().parse().unwrap();
        router.admin = info["admin"].as_str().unwrap().parse().unwrap();
        router
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn files_bytes(dir: &Path, prefix: &str) -> (usize, u64) {
    let mut n = 0;
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            n += 1;
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    (n, total)
}

/// Opens and closes `n` connections to `addr` (each makes the tunnel dial a
/// dead database and log the failure), for at most `limit`.
fn hammer(addr: SocketAddr, n: usize, limit: Duration) -> usize {
    let end = Instant::now() + limit;
    let mut done = 0;
    while done < n && Instant::now() < end {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 16];
            // The router closes it once the dial fails.
            let _ = s.read(&mut buf);
        }
        done += 1;
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tunnel_cannot_flood_the_log_nor_a_full_disk_stop_the_router() {
    let dir = workdir();
    let disk = Tmpfs::mount(&dir.path().join("small-disk"), "4m");
    let backend = Backend::start("app1");
    // Nothing listens on the database's port: every tunnel connection fails.
    let dead_db = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tunnel = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let access = disk.path().join("access.log");
    let config = router_config("dc1", &format!("access_log = \"{}\"", access.display()))
        + &crate::support::pool("web", &[("app1", backend.addr)])
        + &crate::support::site("www.a.test", "pool:web", "")
        + &format!(
            "\n[[tunnels]]\nname = \"db\"\nlisten = \"{tunnel}\"\nupstream = \"{dead_db}\"\n"
        );
    let log = disk.path().join("ferry.log");
    let log_flag = log.to_string_lossy().into_owned();
    let router = Router::start(
        dir.path(),
        &config,
        &[
            "--log-file",
            &log_flag,
            "--log-max-size",
            "64K",
            "--log-keep",
            "2",
            "--log-rate",
            "20",
        ],
        Stdio::null(),
    );
    let admin = Admin::new(router.admin);
    let client = crate::support::client::http1();

    // Phase 1: room on the disk. 3,000 failing connections in at most 20 s.
    let started = Instant::now();
    let tried = tokio::task::spawn_blocking(move || hammer(tunnel, 3_000, Duration::from_secs(20)))
        .await
        .unwrap();
    let secs = started.elapsed().as_secs() as usize + 2;
    let reply = crate::support::client::get(&client, router.listener, "www.a.test", "/").await;
    assert_eq!(
        reply.map(|r| r.status).ok(),
        Some(200),
        "normal request during the flood"
    );
    // Wait for the reporter's summary (written each second when lines were held back).
    let mut summary = false;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(disk.path().join("ferry.log.1")).unwrap_or_default();
        if text.contains("suppressed") {
            summary = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        summary,
        "no 'suppressed N similar log lines' line after {tried} failures"
    );
    let (files, bytes) = files_bytes(disk.path(), "ferry.log");
    assert!(files <= 3, "{files} log files: rotation keeps 2 old ones");
    assert!(
        bytes <= 3 * 64 * 1024 + 16 * 1024,
        "log files take {bytes} bytes"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let all = text
        + &std::fs::read_to_string(disk.path().join("ferry.log.1")).unwrap_or_default()
        + &std::fs::read_to_string(disk.path().join("ferry.log.2")).unwrap_or_default();
    let per_conn = all
        .lines()
        .filter(|l| l.contains("tunnel") && !l.contains("suppressed"))
        .count();
    assert!(
        per_conn <= 20 * secs * 3,
        "{per_conn} tunnel lines for {tried} failed connections in {secs} s"
    );
    let m = admin.metrics().await;
    let suppressed = metric(&m, "ferry_log_lines_suppressed_total").unwrap_or(0.0);
    assert!(suppressed > 0.0, "suppressed lines are counted in /metrics");

    // Phase 2: the disk is full. The router goes on answering; lost lines are counted.
    disk.fill();
    let tried2 = tokio::task::spawn_blocking(move || hammer(tunnel, 500, Duration::from_secs(10)))
        .await
        .unwrap();
    let mut ok = 0;
    for _ in 0..50 {
        if let Ok(r) =
            crate::support::client::get(&client, router.listener, "www.a.test", "/").await
        {
            ok += usize::from(r.status == 200);
        }
    }
    assert_eq!(ok, 50, "every normal request answered with the disk full");
    let m = admin.metrics().await;
    let lost = metric(&m, "ferry_log_lines_dropped_total").unwrap_or(0.0)
        + metric(&m, "ferry_access_log_dropped_total").unwrap_or(0.0);
    assert!(lost > 0.0, "lines lost to the full disk are counted:\n{m}");
    let rss = report::rss_kib(router.pid());
    report::row(
        "tunnel to a dead database, 1 client, then log disk full",
        &format!(
            "{} connections: {per_conn} log lines, {suppressed} suppressed; disk full: {lost} lines lost, router answered",
            tried + tried2
        ),
        rss,
        ok == 50,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_log_nobody_reads_holds_a_bounded_queue() {
    let dir = workdir();
    let backend = Backend::start("app1");
    let config = router_config("dc1", "access_log = \"stdout\"")
        + &crate::support::pool("web", &[("app1", backend.addr)])
        + &crate::support::site("www.a.test", "pool:web", "");
    // stdout is a pipe nobody reads: once its 64 KiB are full, the access
    // log's writer blocks for good.
    let router = Router::start(dir.path(), &config, &[], Stdio::piped());
    let before = report::rss_kib(router.pid());
    let addr = router.listener;
    // 8,000 requests with 60 KB heads (a long path and User-Agent), on 4
    // keep-alive connections.
    let sent = tokio::task::spawn_blocking(move || {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let path = format!("/{}", "p".repeat(30_000));
                    let ua = "u".repeat(30_000);
                    let req = format!(
                        "GET {path} HTTP/1.1\r\nHost: www.a.test\r\nUser-Agent: {ua}\r\n\r\n"
                    );
                    let mut conn: Option<(TcpStream, std::io::BufReader<TcpStream>)> = None;
                    let mut n = 0;
                    for _ in 0..2_000 {
                        // A router that refuses heads this large may close the
                        // connection after its answer: open another.
                        let (s, reader) = match conn.as_mut() {
                            Some(c) => c,
                            None => {
                                let s = TcpStream::connect(addr).unwrap();
                                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                                let r = std::io::BufReader::new(s.try_clone().unwrap());
                                conn.insert((s, r))
                            }
                        };
                        if std::io::Write::write_all(s, req.as_bytes()).is_err() {
                            conn = None;
                            continue;
                        }
                        match read_response(reader) {
                            Ok(answer) => {
                                n += 1;
                                if answer.close {
                                    conn = None;
                                }
                            }
                            Err(_) => conn = None,
                        }
                    }
                    n
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or(0))
            .sum::<usize>()
    })
    .await
    .unwrap();
    let after = report::rss_kib(router.pid());
    let admin = Admin::new(router.admin);
    let m = admin.metrics().await;
    let dropped = metric(&m, "ferry_access_log_dropped_total").unwrap_or(0.0);
    let reply = crate::support::client::get(
        &crate::support::client::http1(),
        router.listener,
        "www.a.test",
        "/",
    )
    .await;
    let served = reply.map(|r| r.status == 200).unwrap_or(false);
    report::row(
        "access log into a stdout nobody reads, 8,000 requests with 60 KB heads",
        &format!(
            "{sent} answered, {dropped} log lines dropped, RSS {} -> {} MB",
            before / 1024,
            after / 1024
        ),
        after,
        served,
    );
    assert_eq!(
        sent, 8_000,
        "every request answered while the log is stalled"
    );
    assert!(
        dropped > 0.0,
        "lines that do not fit are dropped and counted"
    );
    assert!(
        after < before + 64 * 1024,
        "the router grew from {before} KiB to {after} KiB"
    );
    assert!(served);
}
