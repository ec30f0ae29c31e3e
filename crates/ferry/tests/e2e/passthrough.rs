//! SNI passthrough (`[[passthrough]]`): TLS is routed by the ClientHello's
//! server name without being terminated. A real nginx serves TLS with its own
//! certificate (made here with openssl) and logs the client address it got by
//! PROXY v2; real clients (curl, openssl s_client) see nginx's certificate.
//! Also: a hop through a second router, frozen sites held then released,
//! maintenance with and without a terminator, and clients that send a split
//! ClientHello, garbage, no SNI, too much, or nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::client::{client_hello, connect};
use crate::support::procs::nginx_prefix;
use crate::support::{
    free_port, metric, router_config, site, workdir, Admin, Deadline, Ferry, Nginx,
};

const HOST: &str = "tls.test";
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));
const LIMIT: Duration = Duration::from_secs(15);

/// A real nginx serving TLS on a `listen ... ssl proxy_protocol` port with a
/// self-signed certificate of its own for `tls.test`. It answers every request
/// with `STATUS` and `NAME SNI PROXY-CLIENT`, and logs
/// `PROXY-CLIENT SNI URI` per request.
struct TlsNginx {
    nginx: Nginx,
    /// The certificate, which clients trust as their only CA: a handshake
    /// that verifies proves they talked to this nginx.
    cert: PathBuf,
}

impl TlsNginx {
    fn start(name: &str, status: u16) -> TlsNginx {
        let dir = nginx_prefix(&format!("tls-{name}"));
        let d = dir.path().display().to_string();
        let out = Command::new("openssl")
            .args(["req", "-x509", "-nodes", "-days", "2"])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-subj", &format!("/CN={name}-nginx")])
            .args([
                "-addext",
                &format!("subjectAltName=DNS:{HOST},DNS:loop.test"),
            ])
            .args([
                "-keyout",
                &format!("{d}/key.pem"),
                "-out",
                &format!("{d}/cert.pem"),
            ])
            .output()
            .expect("running openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let http = format!(
            r#"log_format pp '$proxy_protocol_addr $ssl_server_name $request_uri';
    access_log {d}/access.log pp;
    server {{
        listen 127.0.0.1:{port} ssl proxy_protocol;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location / {{
            add_header X-Backend {name} always;
            return {status} "{name} $ssl_server_name $proxy_protocol_addr\n";
        }}
    }}"#
        );
        let cert = dir.path().join("cert.pem");
        TlsNginx {
            nginx: Nginx::run(name, port, dir, &http),
            cert,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.nginx.addr()
    }

    fn cert(&self) -> &str {
        self.cert.to_str().expect("temporary paths are UTF-8")
    }

    /// The log once it has a line containing `uri` (nginx writes it after
    /// the response went out, so a client can be faster than the log).
    fn log_line(&self, uri: &str) -> String {
        let end = Instant::now() + LIMIT;
        loop {
            let log = self.nginx.requests();
            if let Some(l) = log.iter().find(|l| l.ends_with(uri)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < end,
                "nginx {} logged no {uri}: {log:?}",
                self.nginx.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A `[[pool]]` with one server: its HTTP address is never used here, the
/// passthrough listener dials its IP at `backend_port`.
fn tls_pool(name: &str) -> String {
    format!("\n[[pool]]\nname = \"{name}\"\n\n[[pool.server]]\nname = \"{name}1\"\naddress = \"127.0.0.1:1\"\n")
}

/// A `[[passthrough]]` listener on a free port with `extra` lines.
fn passthrough(extra: &str) -> String {
    format!("\n[[passthrough]]\nlisten = \"127.0.0.1:0\"\n{extra}\n")
}

/// `curl https://HOST/PATH` through `via`, trusting only `cert`, from 127.0.0.7.
fn curl_args(via: SocketAddr, host: &str, path: &str, cert: &str) -> Vec<String> {
    [
        "-sS",
        "-i",
        "--max-time",
        "15",
        "--interface",
        "127.0.0.7",
        "--cacert",
        cert,
        "--resolve",
        &format!("{host}:{}:{}", via.port(), via.ip()),
        &format!("https://{host}:{}{path}", via.port()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn run(program: &str, args: &[String]) -> Output {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(LIMIT + Duration::from_secs(5), child)
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} hung"))
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// Status and body of a successful curl run.
fn answer(out: &Output) -> (u16, String) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

fn passthrough_count(metrics: &str, result: &str) -> f64 {
    metric(
        metrics,
        &format!("ferry_passthrough_connections_total{{result=\"{result}\"}}"),
    )
    .unwrap_or_else(|| panic!("no passthrough series for {result}:\n{metrics}"))
}

/// Waits until the router counted `n` connections with `result`.
async fn wait_count(admin: &Admin, result: &str, n: f64) {
    let deadline = Deadline::new(format!("{n} passthrough connections {result}"), LIMIT);
    while passthrough_count(&admin.metrics().await, result) < n {
        deadline.tick().await;
    }
}

/// How the router ended a raw connection.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// End of file: the router closed with a FIN.
    Closed { bytes: usize },
    /// Reset by the router.
    Reset,
    /// Still open after the wait.
    Open,
}

/// Writes `bytes` (if any; a write the router refused is fine) and reads
/// until the router ends the connection or `wait` passes.
async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Ending {
    let mut s = connect(addr, Some(CLIENT)).await;
    if !bytes.is_empty() {
        let _ = s.write_all(bytes).await;
    }
    read_end(&mut s, wait).await
}

async fn read_end(s: &mut TcpStream, wait: Duration) -> Ending {
    let mut total = 0;
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Ok(Ok(0)) => return Ending::Closed { bytes: total },
            Ok(Ok(n)) => total += n,
            Ok(Err(_)) => return Ending::Reset,
            Err(_) => return Ending::Open,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_nginx_certificate_and_nginx_sees_the_client() {
    let dir = workdir();
    let web = TlsNginx::start("web", 200);
    let config = router_config("dc1", "")
        + &tls_pool("web")
        + &passthrough(&format!(
            "backend_port = {}\nsend_proxy = true",
            web.nginx.port
        ))
        + &site(HOST, "pool:web", "");
    let ferry = Ferry::start(dir.path(), &config);
    let via = ferry.passthrough[0];

    let out = run("curl", &curl_args(via, HOST, "/first", web.cert())).await;
    assert_eq!(answer(&out), (200, "web tls.test 127.0.0.7\n".to_string()));
    // nginx got the client's address from the router's PROXY v2 header.
    assert_eq!(web.log_line("/first"), "127.0.0.7 tls.test /first");

    let out = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &via.to_string(),
            "-servername",
            HOST,
            "-CAfile",
            web.cert(),
            "-verify_return_error",
        ]
        .map(String::from),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("CN=web-nginx") || text.contains("CN = web-nginx"),
        "{text}"
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");

    let admin = Admin::new(ferry.admin);
    wait_count(&admin, "local", 2.0).await;
    let m = admin.metrics().await;
    assert_eq!(metric(&m, "ferry_passthrough_open_connections"), Some(0.0));
    // A passthrough connection is not an HTTP request.
    assert_eq!(
        metric(&m, "ferry_requests_total{class=\"2xx\",state=\"active\"}"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_through_a_remote_router_keeps_the_client_address() {
    let (dir_a, dir_b) = (workdir(), workdir());
    let web = TlsNginx::start("b-web", 200);
    // B's passthrough port must be known to A before B starts.
    let b_port = free_port();
    let config_a = router_config("dc-a", "")
        + &format!(
            "\n[[remote]]\nname = \"dc-b\"\naddress = \"127.0.0.1:{}\"\npassthrough = \"127.0.0.1:{b_port}\"\n",
            free_port()
        )
        + &passthrough("backend_port = 443")
        + &site(HOST, "remote:dc-b", "")
        + &site("loop.test", "remote:dc-b", "");
    let a = Ferry::start(dir_a.path(), &config_a);
    let config_b = router_config("dc-b", "")
        + &format!(
            "\n[[remote]]\nname = \"dc-a\"\naddress = \"{}\"\n",
            a.addr()
        )
        + &tls_pool("web")
        + &format!(
            "\n[[passthrough]]\nlisten = \"127.0.0.1:{b_port}\"\nproxy_protocol = true\ntrusted_networks = [\"127.0.0.1\"]\nbackend_port = {}\nsend_proxy = true\n",
            web.nginx.port
        )
        + &site(HOST, "pool:web", "")
        + &site("loop.test", "remote:dc-a", "");
    let b = Ferry::start(dir_b.path(), &config_b);

    let out = run(
        "curl",
        &curl_args(a.passthrough[0], HOST, "/hop", web.cert()),
    )
    .await;
    assert_eq!(
        answer(&out),
        (200, "b-web tls.test 127.0.0.7\n".to_string()),
        "B's nginx sees the client A saw"
    );
    assert_eq!(web.log_line("/hop"), "127.0.0.7 tls.test /hop");
    let (admin_a, admin_b) = (Admin::new(a.admin), Admin::new(b.admin));
    wait_count(&admin_a, "remote", 1.0).await;
    wait_count(&admin_b, "local", 1.0).await;

    // Placed remote on both routers: B refuses to send it back.
    let out = run(
        "curl",
        &curl_args(a.passthrough[0], "loop.test", "/loop", web.cert()),
    )
    .await;
    assert!(!out.status.success(), "a looping connection must fail");
    wait_count(&admin_b, "loop", 1.0).await;
    assert_eq!(passthrough_count(&admin_a.metrics().await, "remote"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_site_holds_new_connections_until_unfrozen() {
    let dir = workdir();
    let web = TlsNginx::start("web", 200);
    let config = router_config("dc1", "hold_max = \"60s\"")
        + &tls_pool("web")
        + &passthrough(&format!(
            "backend_port = {}\nsend_proxy = true",
            web.nginx.port
        ))
        + &passthrough(&format!(
            "backend_port = {}\nsend_proxy = true\nhold_max = \"300ms\"",
            web.nginx.port
        ))
        + &site(HOST, "pool:web", "epoch = 1");
    let ferry = Ferry::start(dir.path(), &config);
    let admin = Admin::new(ferry.admin);
    admin.set_site(HOST, "pool:web", "frozen", 2).await;

    let held = tokio::process::Command::new("curl")
        .args(curl_args(ferry.passthrough[0], HOST, "/held", web.cert()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting curl");
    let deadline = Deadline::new("the connection held", LIMIT);
    while admin.site(HOST).await["held"] != 1 {
        deadline.tick().await;
    }

    // The second listener holds for 300ms only: that client is turned away.
    let out = run(
        "curl",
        &curl_args(ferry.passthrough[1], HOST, "/late", web.cert()),
    )
    .await;
    assert!(!out.status.success(), "held past hold_max must fail");
    let m = admin.metrics().await;
    assert_eq!(passthrough_count(&m, "hold_timeout"), 1.0);
    assert_eq!(metric(&m, "ferry_passthrough_held_total"), Some(2.0));

    // A held client that hangs up is no longer held.
    let mut quitter = connect(ferry.passthrough[0], Some(CLIENT)).await;
    quitter
        .write_all(&client_hello(Some(HOST)))
        .await
        .expect("write");
    let deadline = Deadline::new("two connections held", LIMIT);
    while admin.site(HOST).await["held"] != 2 {
        deadline.tick().await;
    }
    drop(quitter);
    let deadline = Deadline::new("the quitter no longer held", LIMIT);
    while admin.site(HOST).await["held"] != 1 {
        deadline.tick().await;
    }
    assert_eq!(
        passthrough_count(&admin.metrics().await, "client_closed"),
        1.0
    );

    // The first is still waiting, nothing reached nginx, and it is released
    // by the unfreeze, as the orchestrator sends it.
    assert_eq!(admin.site(HOST).await["held"], 1);
    let log = web.nginx.requests();
    assert!(log.is_empty(), "{log:?}");
    admin.set_site(HOST, "pool:web", "active", 3).await;
    let out = tokio::time::timeout(LIMIT, held.wait_with_output())
        .await
        .expect("the held curl finished")
        .expect("curl output");
    assert_eq!(answer(&out), (200, "web tls.test 127.0.0.7\n".to_string()));
    let s = admin.site(HOST).await;
    assert_eq!(
        (s["held"].as_u64(), s["in_flight"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(passthrough_count(&admin.metrics().await, "local"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_goes_to_the_terminator_or_is_closed_cleanly() {
    let dir = workdir();
    let web = TlsNginx::start("web", 200);
    let maint = TlsNginx::start("maint", 503);
    let config = router_config("dc1", "operator_networks = [\"127.0.0.9\"]")
        + &tls_pool("web")
        + &passthrough(&format!(
            "backend_port = {}\nsend_proxy = true\nmaintenance_terminator = \"{}\"",
            web.nginx.port,
            maint.addr()
        ))
        + &passthrough(&format!(
            "backend_port = {}\nsend_proxy = true",
            web.nginx.port
        ))
        + &site(HOST, "pool:web", "state = \"maintenance\"");
    let ferry = Ferry::start(dir.path(), &config);
    let admin = Admin::new(ferry.admin);

    let out = run(
        "curl",
        &curl_args(ferry.passthrough[0], HOST, "/m", maint.cert()),
    )
    .await;
    assert_eq!(
        answer(&out),
        (503, "maint tls.test 127.0.0.7\n".to_string())
    );
    assert_eq!(maint.log_line("/m"), "127.0.0.7 tls.test /m");

    // Without a terminator: a FIN after the ClientHello, not a reset.
    let ending = exchange(ferry.passthrough[1], &client_hello(Some(HOST)), LIMIT).await;
    assert_eq!(ending, Ending::Closed { bytes: 0 });
    let m = admin.metrics().await;
    assert_eq!(passthrough_count(&m, "maintenance_terminator"), 1.0);
    assert_eq!(passthrough_count(&m, "maintenance_closed"), 1.0);
    assert_eq!(passthrough_count(&m, "local"), 0.0);

    // Operators reach the site itself.
    let args: Vec<String> = curl_args(ferry.passthrough[1], HOST, "/op", web.cert())
        .into_iter()
        .map(|a| {
            if a == "127.0.0.7" {
                "127.0.0.9".into()
            } else {
                a
            }
        })
        .collect();
    let out = run("curl", &args).await;
    assert_eq!(answer(&out), (200, "web tls.test 127.0.0.9\n".to_string()));
    assert_eq!(passthrough_count(&admin.metrics().await, "local"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_a_passthrough_listener_and_changes_its_settings() {
    let dir = workdir();
    let web = TlsNginx::start("web", 200);
    let (first, second) = (free_port(), free_port());
    let listener = |port: u16, send_proxy: bool| {
        format!(
            "\n[[passthrough]]\nlisten = \"127.0.0.1:{port}\"\nbackend_port = {}\nsend_proxy = {send_proxy}\n",
            web.nginx.port
        )
    };
    let base = router_config("dc1", "") + &tls_pool("web") + &site(HOST, "pool:web", "");
    let ferry = Ferry::start(dir.path(), &(base.clone() + &listener(first, true)));
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let out = run("curl", &curl_args(at(first), HOST, "/before", web.cert())).await;
    assert_eq!(answer(&out).0, 200);

    // Same port kept, another added; then the first removed.
    std::fs::write(
        &ferry.config,
        base.clone() + &listener(first, true) + &listener(second, true),
    )
    .expect("writing the config");
    ferry.sighup();
    let deadline = Deadline::new("the new passthrough listener", LIMIT);
    while TcpStream::connect(at(second)).await.is_err() {
        deadline.tick().await;
    }
    let out = run("curl", &curl_args(at(second), HOST, "/added", web.cert())).await;
    assert_eq!(answer(&out).0, 200);

    // Without send_proxy, nginx (which wants a PROXY header) refuses the bytes.
    std::fs::write(&ferry.config, base + &listener(second, false)).expect("writing the config");
    ferry.sighup();
    let deadline = Deadline::new("the removed passthrough listener to close", LIMIT);
    while TcpStream::connect(at(first)).await.is_ok() {
        deadline.tick().await;
    }
    let out = run(
        "curl",
        &curl_args(at(second), HOST, "/no-proxy", web.cert()),
    )
    .await;
    assert!(
        !out.status.success(),
        "nginx must refuse TLS without its PROXY header"
    );
}

/// Accepts one connection and relays it to `target`, writing the client's
/// first bytes (its ClientHello) in 16-byte pieces a few milliseconds apart,
/// so they reach the router as many TCP segments. Returns the address and
/// how many pieces were sent.
async fn dribbling_relay(target: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding relay");
    let addr = listener.local_addr().expect("relay address");
    let task = tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.expect("relay accept");
        let mut up = TcpStream::connect(target).await.expect("relay connect");
        up.set_nodelay(true).expect("nodelay");
        let mut first = vec![0u8; 16 * 1024];
        let n = client.read(&mut first).await.expect("relay read");
        let mut pieces = 0;
        for piece in first[..n].chunks(16) {
            up.write_all(piece).await.expect("relay write");
            pieces += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        pieces
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_hello_works_and_bad_clients_are_closed_and_counted() {
    let dir = workdir();
    let web = TlsNginx::start("web", 200);
    let config = router_config("dc1", "")
        + &tls_pool("web")
        + &passthrough(&format!(
            "backend_port = {}\nsend_proxy = true\nclient_hello_timeout = \"1s\"\nmax_client_hello = 4096",
            web.nginx.port
        ))
        + &site(HOST, "pool:web", "");
    let ferry = Ferry::start(dir.path(), &config);
    let via = ferry.passthrough[0];
    let admin = Admin::new(ferry.admin);

    // A real curl whose ClientHello arrives in 16-byte segments.
    let (relay, pieces) = dribbling_relay(via).await;
    let mut args = curl_args(relay, HOST, "/split", web.cert());
    args.retain(|a| a != "--interface" && a != "127.0.0.7");
    let out = run("curl", &args).await;
    assert_eq!(answer(&out), (200, "web tls.test 127.0.0.1\n".to_string()));
    let pieces = pieces.await.expect("relay task");
    assert!(pieces > 10, "the ClientHello went in {pieces} pieces");

    // Garbage (an HTTP request on the TLS port).
    let ending = exchange(via, b"GET / HTTP/1.1\r\nHost: tls.test\r\n\r\n", LIMIT).await;
    assert_ne!(ending, Ending::Open);
    // A real client that sends no server name.
    let out = run(
        "openssl",
        &["s_client", "-connect", &via.to_string(), "-noservername"].map(String::from),
    )
    .await;
    assert!(!out.status.success(), "no SNI must fail");
    // A ClientHello announcing 1 MiB, over the 4 KiB bound.
    let mut huge = vec![22, 3, 1, 0x40, 0x00, 1, 0x10, 0x00, 0x00];
    huge.extend_from_slice(&[0u8; 3000]);
    assert_ne!(exchange(via, &huge, LIMIT).await, Ending::Open);
    // Half a ClientHello, then the client gives up.
    let hello = client_hello(Some(HOST));
    let mut s = connect(via, Some(CLIENT)).await;
    s.write_all(&hello[..hello.len() / 2]).await.expect("write");
    s.shutdown().await.expect("half-close");
    assert_ne!(read_end(&mut s, LIMIT).await, Ending::Open);
    // A client that sends nothing is closed after client_hello_timeout.
    let t0 = Instant::now();
    let ending = exchange(via, &[], LIMIT).await;
    assert_eq!(ending, Ending::Closed { bytes: 0 });
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );

    let m = admin.metrics().await;
    let counts: Vec<(&str, f64)> = [
        "local",
        "invalid",
        "no_sni",
        "too_large",
        "client_closed",
        "timeout",
    ]
    .iter()
    .map(|r| (*r, passthrough_count(&m, r)))
    .collect();
    assert_eq!(
        counts,
        [
            ("local", 1.0),
            ("invalid", 1.0),
            ("no_sni", 1.0),
            ("too_large", 1.0),
            ("client_closed", 1.0),
            ("timeout", 1.0)
        ]
    );
    // The router is still serving.
    let out = run("curl", &curl_args(via, HOST, "/after", web.cert())).await;
    assert_eq!(answer(&out).0, 200);
}
