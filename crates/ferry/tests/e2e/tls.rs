//! TLS termination: the certificate chosen by SNI (exact, wildcard, default),
//! checked by curl and `openssl s_client` against a CA the test creates;
//! TLS 1.2 and 1.3; HTTP/2 or HTTP/1.1 by ALPN; h2load over TLS;
//! `X-Forwarded-Proto`/`Forwarded: proto=https` at the backend; the
//! certificate API; a certificate replaced under load with every handshake
//! counted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::curl;
use crate::support::procs::nginx_prefix;
use crate::support::{
    free_port, metric, pool, router_config, site, workdir, Admin, Deadline, Ferry, Nginx,
};

/// Runs openssl with `args`; panics with its stderr if it fails.
fn openssl(args: &[&str], cwd: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throw-away certificate authority (ECDSA P-256) in its own directory.
struct TestCa {
    dir: tempfile::TempDir,
    serial: AtomicU64,
}

/// A leaf issued by the test CA, as PEM text.
struct Leaf {
    chain: String,
    key: String,
}

impl Leaf {
    fn bundle(&self) -> String {
        format!("{}{}", self.chain, self.key)
    }

    fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_slice(self.chain.as_bytes())
            .expect("leaf PEM")
            .to_vec()
    }
}

impl TestCa {
    fn new() -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("ferry-e2e-ca-")
            .tempdir()
            .expect("CA directory");
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Ferry e2e CA",
            ],
            dir.path(),
        );
        TestCa {
            dir,
            serial: AtomicU64::new(1),
        }
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate with common name `cn` for the DNS names `sans`.
    fn issue(&self, cn: &str, sans: &[&str]) -> Leaf {
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let d = self.dir.path();
        let ext = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName={}\n",
            sans.iter()
                .map(|s| format!("DNS:{s}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        std::fs::write(d.join(format!("leaf{n}.ext")), ext).expect("writing extensions");
        let (key, csr, crt, extf) = (
            format!("leaf{n}.key"),
            format!("leaf{n}.csr"),
            format!("leaf{n}.crt"),
            format!("leaf{n}.ext"),
        );
        let subj = format!("/CN={cn}");
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subj,
            ],
            d,
        );
        let serial = format!("{}", 1000 + n);
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &extf,
            ],
            d,
        );
        Leaf {
            chain: std::fs::read_to_string(d.join(&crt)).expect("reading leaf"),
            key: std::fs::read_to_string(d.join(&key)).expect("reading key"),
        }
    }

    /// A rustls client trusting only this CA; no session resumption, so
    /// every connection is a full handshake.
    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.ca_pem()).expect("CA PEM") {
            roots.add(c.expect("CA certificate")).expect("CA accepted");
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg.resumption = rustls::client::Resumption::disabled();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

/// Writes `leaf` as `dir/name.pem`.
fn install(dir: &Path, name: &str, leaf: &Leaf) {
    std::fs::write(dir.join(format!("{name}.pem")), leaf.bundle()).expect("writing certificate");
}

/// A router with a plain listener (first) and a TLS one (second) in front of
/// `backend`; certificates `www` (www.example.com), `star` (*.example.org) and
/// `default` (default.test, the default).
struct TlsRouter {
    ca: TestCa,
    ferry: Ferry,
    certs: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsRouter {
    fn start(backend: SocketAddr, extra_certs: &[(&str, &Leaf)]) -> TlsRouter {
        let dir = workdir();
        let ca = TestCa::new();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).expect("certs directory");
        install(&certs, "www", &ca.issue("www", &["www.example.com"]));
        install(&certs, "star", &ca.issue("star", &["*.example.org"]));
        install(&certs, "default", &ca.issue("default", &["default.test"]));
        for (name, leaf) in extra_certs {
            install(&certs, name, leaf);
        }
        let mut config = router_config("dc1", r#"default_site = "www.example.com""#);
        // Port 0 twice would be the same listener to the config check.
        config += &format!(
            "\n[[listener]]\nlisten = \"127.0.0.1:{}\"\ntls = true\n",
            free_port()
        );
        config += "\n[tls]\ncert_dir = \"certs\"\ndefault_cert = \"default\"\nkey_cache = 100\nhandshake_timeout = \"2s\"\n";
        config += &pool("web", &[("s1", backend)]);
        config += &site("www.example.com", "pool:web", "");
        config += &site("*.example.org", "pool:web", "");
        config += &site("shop.example.com", "pool:web", "");
        let ferry = Ferry::start(dir.path(), &config);
        TlsRouter {
            ca,
            ferry,
            certs,
            _dir: dir,
        }
    }

    fn tls_addr(&self) -> SocketAddr {
        self.ferry.listeners[1]
    }

    fn resolve(&self, host: &str) -> String {
        format!("{host}:{}:127.0.0.1", self.tls_addr().port())
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.tls_addr().port())
    }

    /// `openssl s_client` output for a handshake with `flags` (e.g.
    /// `-servername NAME`, `-tls1_2`).
    fn s_client(&self, flags: &[&str]) -> String {
        let connect = self.tls_addr().to_string();
        let ca = self.ca.ca_pem();
        let mut args = vec![
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            ca.to_str().expect("UTF-8 path"),
            "-alpn",
            "h2,http/1.1",
        ];
        args.extend_from_slice(flags);
        openssl(&args, Path::new("."))
    }
}

impl TlsRouter {
    /// `s_client` over HTTP/1.1 sending one `Connection: close` request and
    /// waiting for the router to close (`-ign_eof`).
    fn s_client_request(&self, flags: &[&str]) -> String {
        let connect = self.tls_addr().to_string();
        let ca = self.ca.ca_pem();
        // `timeout`: a router that never closes fails the test instead of hanging it.
        let mut child = Command::new("timeout")
            .args(["15", "openssl"])
            .args([
                "s_client", "-connect", &connect, "-alpn", "http/1.1", "-ign_eof", "-CAfile",
            ])
            .arg(ca)
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("running openssl s_client");
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = stdin
                .write_all(b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n");
        }
        let out = child.wait_with_output().expect("s_client output");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The subject CN `s_client` printed for the peer certificate.
fn subject_cn(out: &str) -> Option<&str> {
    out.lines()
        .find_map(|l| l.strip_prefix("subject=CN = "))
        .map(str::trim)
}

/// nginx answering with the forwarding headers it received:
/// `xfp=X-Forwarded-Proto fwd=Forwarded`.
fn echo_nginx() -> Nginx {
    let port = free_port();
    let http = format!(
        r#"access_log off;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            add_header X-Backend echo always;
            return 200 "xfp=$http_x_forwarded_proto fwd=$http_forwarded\n";
        }}
    }}"#
    );
    Nginx::run("echo", port, nginx_prefix("echo"), &http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_wildcard_and_default_and_alpn_picks_h2() {
    let echo = echo_nginx();
    let r = TlsRouter::start(echo.addr(), &[]);

    // (SNI, certificate that must answer)
    for (sni, cn) in [
        ("www.example.com", "www"),
        ("WWW.EXAMPLE.COM", "www"),
        ("shop.example.org", "star"),
        ("a.b.example.org", "default"),
        ("unknown.test", "default"),
    ] {
        let out = r.s_client(&["-servername", sni]);
        assert_eq!(subject_cn(&out), Some(cn), "SNI {sni}:\n{out}");
        assert!(
            out.contains("Verify return code: 0 (ok)"),
            "SNI {sni}:\n{out}"
        );
        assert!(out.contains("ALPN protocol: h2"), "SNI {sni}:\n{out}");
    }
    let out = r.s_client(&["-noservername"]);
    assert_eq!(subject_cn(&out), Some("default"), "no SNI:\n{out}");
    let out = r.s_client(&["-servername", "www.example.com", "-tls1_2"]);
    assert!(out.contains("New, TLSv1.2"), "{out}");
    assert_eq!(subject_cn(&out), Some("www"));
    let out = r.s_client(&["-servername", "www.example.com", "-tls1_3"]);
    assert!(out.contains("New, TLSv1.3"), "{out}");
    // Resumption: a session saved by one connection is resumed by the next.
    let sess = r.certs.join("session.pem");
    let sess = sess.to_str().expect("UTF-8 path");
    for version in ["-tls1_2", "-tls1_3"] {
        // A TLS 1.3 ticket comes after the handshake: s_client must stay
        // until the server has answered a request and closed.
        let first =
            r.s_client_request(&["-servername", "www.example.com", version, "-sess_out", sess]);
        assert!(first.contains("New, TLSv1."), "{version}:\n{first}");
        let again = r.s_client(&["-servername", "www.example.com", version, "-sess_in", sess]);
        assert!(
            again.contains("Reused, TLSv1."),
            "{version} not resumed:\n{again}"
        );
    }

    // curl checks the chain and the name itself: the right certificate or
    // nothing. A spoofed X-Forwarded-Proto from the client is replaced.
    for (flag, version) in [("--http2", "HTTP/2"), ("--http1.1", "HTTP/1.1")] {
        for host in ["www.example.com", "shop.example.org"] {
            let reply = curl(&[
                flag,
                "--resolve",
                &r.resolve(host),
                "--cacert",
                r.ca.ca_pem().to_str().expect("UTF-8 path"),
                "-H",
                "X-Forwarded-Proto: http",
                &r.url(host, "/page"),
            ])
            .await;
            assert_eq!(reply.status, 200, "{host} {flag}: {reply:?}");
            assert_eq!(reply.version, version, "{host} {flag}: {reply:?}");
            assert_eq!(
                reply.body.trim(),
                format!("xfp=https fwd=for=127.0.0.1;host={host};proto=https"),
                "{host} {flag}"
            );
        }
    }
    // The plain listener still says http.
    let plain = curl(&[
        "-H",
        "Host: www.example.com",
        &format!("http://{}/", r.ferry.addr()),
    ])
    .await;
    assert_eq!(
        plain.body.trim(),
        "xfp=http fwd=for=127.0.0.1;host=www.example.com;proto=http"
    );

    let m = Admin::new(r.ferry.admin).metrics().await;
    let ok = metric(&m, r#"ferry_tls_handshakes_total{result="ok"}"#).unwrap_or(0.0);
    assert!(ok >= 11.0, "handshakes counted: {ok}\n{m}");
    assert!(
        metric(&m, "ferry_tls_alpn_h2_total").unwrap_or(0.0) >= 9.0,
        "{m}"
    );
    assert_eq!(metric(&m, "ferry_tls_certificates"), Some(3.0), "{m}");
    assert!(
        metric(&m, "ferry_tls_resumed_handshakes_total").unwrap_or(0.0) >= 2.0,
        "{m}"
    );
}

/// The numbers h2load printed: (succeeded, failed, errored, protocol).
fn h2load_summary(out: &str) -> (u64, u64, u64, String) {
    let line = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no requests line in h2load output:\n{out}"));
    let count = |word: &str| -> u64 {
        line.split(',')
            .find(|p| p.trim().ends_with(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {word} count in {line:?}"))
    };
    let proto = out
        .lines()
        .find_map(|l| l.strip_prefix("Application protocol: "))
        .unwrap_or("none")
        .trim()
        .to_string();
    (count("succeeded"), count("failed"), count("errored"), proto)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_over_tls_with_h2_and_http11() {
    let web = Nginx::start("web");
    let r = TlsRouter::start(web.addr(), &[]);
    let url = format!("https://127.0.0.1:{}/", r.tls_addr().port());
    for (flags, proto) in [(vec![], "h2"), (vec!["--h1"], "http/1.1")] {
        let out = tokio::process::Command::new("h2load")
            .args(["-n", "2000", "-c", "20", "-m", "4"])
            .args(&flags)
            .arg(&url)
            .output()
            .await
            .expect("running h2load (apt-get install nghttp2-client)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "h2load {flags:?}: {text}");
        let (ok, failed, errored, negotiated) = h2load_summary(&text);
        assert_eq!((ok, failed, errored), (2000, 0, 0), "{text}");
        assert_eq!(negotiated, proto, "{text}");
    }
}

/// One full handshake and one `Connection: close` request for `host`.
/// Returns the leaf certificate the router presented and the status line.
async fn one_request(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    host: &str,
) -> Result<(Vec<u8>, String), String> {
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or("no peer certificate")?;
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        match tls.read_to_end(&mut buf).await {
            Ok(_) => {}
            // A peer that closes without close_notify after a complete answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        let text = String::from_utf8_lossy(&buf);
        let status = text.lines().next().unwrap_or_default().to_string();
        Ok((leaf, status))
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .map_err(|_| "no answer within 15 s".to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_api_and_replacement_under_load() {
    let web = Nginx::start("web");
    let ca_router = TlsRouter::start(web.addr(), &[]);
    let r = &ca_router;
    let admin = Admin::new(r.ferry.admin);
    let host = "shop.example.com";
    let v1 = r.ca.issue("shop-v1", &[host]);
    let v2 = r.ca.issue("shop-v2", &[host]);

    // Before: shop.example.com is answered by the default certificate.
    let (status, v) = admin.get("/v1/certs").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], 3, "{v}");

    // Add (JSON body).
    let (status, v) = admin
        .put("/v1/certs/shop", &json!({"chain": v1.chain, "key": v1.key}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["hosts"], json!([host]), "{v}");
    assert_eq!(v["replaced"], false, "{v}");
    assert!(r.certs.join("shop.pem").is_file(), "written to cert_dir");
    // It holds the private key: readable by the router's user only (issue 15 #4).
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(r.certs.join("shop.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "shop.pem written with mode {mode:o}");

    // A mismatched pair and garbage are refused, naming the problem; v1 stays.
    let (status, v) = admin
        .put("/v1/certs/shop", &json!({"chain": v1.chain, "key": v2.key}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("does not belong to the leaf"),
        "{v}"
    );
    let (status, v) = admin
        .call(http::Method::PUT, "/v1/certs/shop", "not a certificate")
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("no CERTIFICATE block"),
        "{v}"
    );
    let (status, _) = admin
        .call(http::Method::PUT, "/v1/certs/..%2Fescape", &v1.bundle())
        .await;
    assert_eq!(status, 400);

    let connector = r.ca.client(&[b"http/1.1"]);
    let addr = r.tls_addr();
    let (leaf, status) = one_request(&connector, addr, host)
        .await
        .expect("v1 handshake");
    assert_eq!(leaf, v1.der(), "the added certificate answers at once");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    // A keep-alive connection opened now must outlive every replacement.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = connector
        .connect(ServerName::try_from(host).expect("name"), tcp)
        .await
        .expect("keep-alive handshake");
    let (mut keep, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 on TLS");
    tokio::spawn(conn);
    let keep_get = |keep: &mut hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>| {
        let req = http::Request::builder()
            .uri("/")
            .header("host", host)
            .body(Empty::new())
            .expect("request");
        keep.send_request(req)
    };
    let first = keep_get(&mut keep).await.expect("keep-alive request");
    assert_eq!(first.status(), 200);
    let _ = first.into_body().collect().await;

    // Load: 4 clients making new connections (full handshakes) in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Failures::default());
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, done, failures, connector) = (
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&failures),
            connector.clone(),
        );
        let (d1, d2) = (v1.der(), v2.der());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match one_request(&connector, addr, host).await {
                    Ok((leaf, status)) if status.starts_with("HTTP/1.1 200") => {
                        if leaf != d1 && leaf != d2 {
                            failures.push("a certificate other than v1 or v2".into());
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((_, status)) => failures.push(format!("status {status:?}")),
                    Err(e) => failures.push(e),
                }
            }
        }));
    }
    let wait_for = |n: u64, what: String| {
        let done = Arc::clone(&done);
        async move {
            let d = Deadline::new(what, Duration::from_secs(60));
            while done.load(Ordering::Relaxed) < n {
                d.tick().await;
            }
        }
    };
    let replacements = 20u64;
    for i in 0..replacements {
        let next = if i % 2 == 0 { &v2 } else { &v1 };
        // The load has run between two replacements.
        wait_for(
            done.load(Ordering::Relaxed) + 20,
            format!("load before replacement {i}"),
        )
        .await;
        let (status, v) = if i % 4 == 3 {
            // PEM body: chain and key in one text.
            admin
                .call(http::Method::PUT, "/v1/certs/shop", &next.bundle())
                .await
        } else {
            admin
                .put(
                    "/v1/certs/shop",
                    &json!({"chain": next.chain, "key": next.key}),
                )
                .await
        };
        assert_eq!(status, 200, "replacement {i}: {v}");
        assert_eq!(v["replaced"], true, "{v}");
        let (leaf, _) = one_request(&connector, addr, host)
            .await
            .expect("handshake after a replacement");
        assert_eq!(
            leaf,
            next.der(),
            "replacement {i} is used by the next handshake"
        );
    }
    wait_for(
        done.load(Ordering::Relaxed) + 20,
        "load after the last replacement".into(),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("load client");
    }
    let total = done.load(Ordering::Relaxed);
    let failed = failures.take();
    println!(
        "replacement under load: {total} handshakes, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed handshakes of {total}: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(total >= replacements * 20, "only {total} handshakes");

    // The connection opened before the first replacement is still served.
    let again = keep_get(&mut keep)
        .await
        .expect("keep-alive request after replacements");
    assert_eq!(again.status(), 200);

    let m = admin.metrics().await;
    assert_eq!(
        metric(&m, r#"ferry_tls_handshakes_total{result="failed"}"#),
        Some(0.0),
        "the router counted failed handshakes:\n{m}"
    );
    let ok = metric(&m, r#"ferry_tls_handshakes_total{result="ok"}"#).unwrap_or(0.0);
    assert!(
        ok >= total as f64,
        "router counted {ok} handshakes, clients {total}"
    );

    // Remove: the default answers again; the default itself cannot go.
    let (status, v) = admin.call(http::Method::DELETE, "/v1/certs/shop", "").await;
    assert_eq!(status, 200, "{v}");
    assert!(!r.certs.join("shop.pem").exists());
    let (status, v) = admin
        .call(http::Method::DELETE, "/v1/certs/default", "")
        .await;
    assert_eq!(status, 409, "{v}");
    let (status, _) = admin.call(http::Method::DELETE, "/v1/certs/shop", "").await;
    assert_eq!(status, 404);
    let out = r.s_client(&["-servername", host]);
    assert_eq!(subject_cn(&out), Some("default"), "{out}");
}

/// Failures collected by the load clients (a plain mutex: no hot path here).
#[derive(Default)]
struct Failures(std::sync::Mutex<Vec<String>>);

impl Failures {
    fn push(&self, what: String) {
        if let Ok(mut v) = self.0.lock() {
            v.push(what);
        }
    }

    fn take(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reindexes_the_directory_and_silent_clients_time_out() {
    let web = Nginx::start("web");
    let r = TlsRouter::start(web.addr(), &[]);

    // A file dropped into the directory is served after a SIGHUP.
    install(
        &r.certs,
        "extra",
        &r.ca.issue("extra", &["extra.example.com"]),
    );
    let before = r.s_client(&["-servername", "extra.example.com"]);
    assert_eq!(subject_cn(&before), Some("default"), "{before}");
    r.ferry.sighup();
    let d = Deadline::new("the reload to index extra.pem", Duration::from_secs(20));
    loop {
        let out = r.s_client(&["-servername", "extra.example.com"]);
        if subject_cn(&out) == Some("extra") {
            break;
        }
        d.tick().await;
    }

    // A client that connects and never says hello is closed after
    // handshake_timeout (2 s here), and counted.
    let mut silent = TcpStream::connect(r.tls_addr()).await.expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(15), silent.read(&mut buf))
        .await
        .expect("the router closes a silent client")
        .unwrap_or(0);
    assert_eq!(n, 0, "no bytes for a client that sent none");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed too early"
    );
    let m = Admin::new(r.ferry.admin).metrics().await;
    assert_eq!(
        metric(&m, r#"ferry_tls_handshakes_total{result="timeout"}"#),
        Some(1.0),
        "{m}"
    );

    // `ferry proxy --check` reads the directory as a start would.
    let config = r._dir.path().join("proxy.toml");
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["proxy", "--check", "--config"])
            .arg(&config)
            .output()
            .expect("ferry proxy --check")
    };
    let ok = check();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("4 certificate(s)"), "{stdout}");

    // A file that is not a certificate makes the reload fail and the running
    // certificates stay.
    std::fs::write(r.certs.join("broken.pem"), "not a certificate").expect("writing");
    let bad = check();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("certificate broken"), "{stderr}");
    let (status, v) = Admin::new(r.ferry.admin)
        .post("/v1/reload", &json!({}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("certificate broken: no CERTIFICATE block"),
        "{v}"
    );
    let out = r.s_client(&["-servername", "extra.example.com"]);
    assert_eq!(subject_cn(&out), Some("extra"), "{out}");
}
