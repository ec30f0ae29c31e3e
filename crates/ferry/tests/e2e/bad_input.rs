//! Bad input: malformed configs, bad admin API calls, absurd Host headers,
//! request smuggling and a broken config on SIGHUP. Each is refused with a
//! message, and nothing changes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::support::client::{self, raw};
use crate::support::procs::FERRY;
use crate::support::{
    metric, pool, router_config, site, workdir, Admin, Backend, Deadline, Ferry, Nginx, TOKEN,
};

/// 1-based line of the first line of `text` containing `marker`.
fn line_of(text: &str, marker: &str) -> usize {
    text.lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("{marker:?} not in the config"))
        + 1
}

fn check(config: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(FERRY)
        .args(["proxy", "--check", "--config"])
        .arg(config)
        .output()
        .expect("running ferry proxy --check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_config_is_refused_naming_file_and_line() {
    let dir = workdir();
    let good = router_config("dc1", "hold_max = \"5s\"")
        + &pool("web", &[("s1", "127.0.0.1:9".parse().unwrap())])
        + &site("www.example.com", "pool:web", "");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &good).unwrap();
    let (code, stdout, stderr) = check(&path);
    assert_eq!(code, Some(0), "a valid config passes --check: {stderr}");
    assert!(stdout.contains("valid"), "{stdout}");

    // (what, the bad config, a marker on the line the error must name)
    let cases = [
        (
            "bad duration",
            good.replace("hold_max = \"5s\"", "hold_max = \"ten seconds\""),
            "ten seconds",
        ),
        (
            "TOML syntax",
            good.replace("name = \"web\"", "name = \"web"),
            "name = \"web",
        ),
        (
            "unknown key",
            good.replace("name = \"s1\"", "name = \"s1\"\ncolour = \"red\""),
            "colour",
        ),
        (
            "placement naming no pool",
            good.replace("placement = \"pool:web\"", "placement = \"pool:nowhere\""),
            "pool:nowhere",
        ),
        (
            "bad site host",
            good.replace("host = \"www.example.com\"", "host = \"www..example.com\""),
            "www..example.com",
        ),
    ];
    for (what, text, marker) in cases {
        std::fs::write(&path, &text).unwrap();
        let want = format!("{}:{}:", path.display(), line_of(&text, marker));
        let (code, _, stderr) = check(&path);
        assert_eq!(code, Some(2), "{what}: --check exits 2; stderr: {stderr}");
        assert!(
            stderr.contains(&want),
            "{what}: stderr names {want}: {stderr}"
        );
        // Starting on it fails the same way, before binding anything.
        let out = Command::new(FERRY)
            .args(["proxy", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{what}: ferry proxy exits 2");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&want),
            "{what}"
        );
    }
}

/// A router with sites bad.test and other.test on pool a at epoch 5.
fn two_site_router(dir: &Path, a: &Backend, b: &Backend) -> Ferry {
    let config = router_config("dc1", "")
        + &pool("a", &[("a1", a.addr)])
        + &pool("b", &[("b1", b.addr)])
        + &site("bad.test", "pool:a", "epoch = 5")
        + &site("other.test", "pool:a", "epoch = 5");
    Ferry::start(dir, &config)
}

async fn assert_unchanged(admin: &Admin, host: &str, why: &str) {
    let s = admin.site(host).await;
    assert_eq!(
        (&s["placement"], &s["state"], &s["epoch"]),
        (&json!("pool:a"), &json!("active"), &json!(5)),
        "{host} unchanged after {why}: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_calls_are_refused_and_change_nothing() {
    let dir = workdir();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let ferry = two_site_router(dir.path(), &a, &b);
    let admin = Admin::new(ferry.admin);

    // (b) Bad bodies and paths: 400 with a message.
    let bad_bodies: [(&str, &str, String); 10] = [
        (
            "invalid JSON",
            "/v1/sites/bad.test",
            "{\"placement\": ".into(),
        ),
        ("not an object", "/v1/sites/bad.test", "[1, 2]".into()),
        (
            "unknown field",
            "/v1/sites/bad.test",
            json!({"placement": "pool:b", "epoch": 6, "colour": "red"}).to_string(),
        ),
        (
            "unknown pool",
            "/v1/sites/bad.test",
            json!({"placement": "pool:nowhere", "epoch": 6}).to_string(),
        ),
        (
            "placement syntax",
            "/v1/sites/bad.test",
            json!({"placement": "somewhere", "epoch": 6}).to_string(),
        ),
        (
            "unknown state",
            "/v1/sites/bad.test",
            json!({"placement": "pool:b", "state": "asleep", "epoch": 6}).to_string(),
        ),
        (
            "missing epoch",
            "/v1/sites/bad.test",
            json!({"placement": "pool:b"}).to_string(),
        ),
        (
            "negative epoch",
            "/v1/sites/bad.test",
            json!({"placement": "pool:b", "epoch": -1}).to_string(),
        ),
        (
            "bad host in path",
            "/v1/sites/bad_host!.test",
            json!({"placement": "pool:b", "epoch": 6}).to_string(),
        ),
        (
            "body host differs from path",
            "/v1/sites/bad.test",
            json!({"host": "other.test", "placement": "pool:b", "epoch": 6}).to_string(),
        ),
    ];
    for (what, path, body) in &bad_bodies {
        let (status, v) = admin.call(Method::PUT, path, body).await;
        assert_eq!(status, 400, "{what}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: a message in \"error\": {v}"
        );
    }
    let bad_batches = [
        ("batch: invalid JSON", "{\"sites\": [".to_string()),
        (
            "batch: missing host",
            json!({"sites": [{"placement": "pool:b", "epoch": 6}]}).to_string(),
        ),
        (
            "batch: bad host",
            json!({"sites": [{"host": "bad host.test", "placement": "pool:b", "epoch": 6}]})
                .to_string(),
        ),
        (
            "batch: one unknown pool among good records",
            json!({"sites": [
                {"host": "bad.test", "placement": "pool:b", "epoch": 6},
                {"host": "other.test", "placement": "pool:nowhere", "epoch": 6},
            ]})
            .to_string(),
        ),
        (
            "batch: the same host twice",
            json!({"sites": [
                {"host": "bad.test", "placement": "pool:b", "epoch": 6},
                {"host": "bad.test", "placement": "pool:b", "epoch": 7},
            ]})
            .to_string(),
        ),
    ];
    for (what, body) in &bad_batches {
        let (status, v) = admin.call(Method::POST, "/v1/sites", body).await;
        assert_eq!(status, 400, "{what}: {v}");
        assert!(v["error"].is_string(), "{what}: {v}");
    }
    assert_unchanged(&admin, "bad.test", "bad bodies").await;
    assert_unchanged(&admin, "other.test", "bad bodies").await;
    let (status, _) = admin.get("/v1/sites/bad_host!.test").await;
    assert_eq!(status, 400, "GET of a bad host name");

    // (c) A stale epoch, or the same epoch with other content: 409.
    for (what, epoch) in [("lower epoch", 4), ("same epoch, other placement", 5)] {
        let (status, v) = admin
            .put(
                "/v1/sites/bad.test",
                &json!({"placement": "pool:b", "epoch": epoch}),
            )
            .await;
        assert_eq!(status, 409, "{what}: {v}");
        assert!(v["error"].is_string(), "{what}: {v}");
    }
    assert_unchanged(&admin, "bad.test", "stale epochs").await;
    // The same record again is a no-op, not a conflict.
    let (status, v) = admin
        .put(
            "/v1/sites/bad.test",
            &json!({"placement": "pool:a", "state": "active", "epoch": 5}),
        )
        .await;
    assert_eq!((status, &v["unchanged"]), (200, &json!(1)), "{v}");

    // (d) One stale record refuses the whole batch.
    let (status, v) = admin
        .post(
            "/v1/sites",
            &json!({"sites": [
                {"host": "bad.test", "placement": "pool:b", "epoch": 6},
                {"host": "other.test", "placement": "pool:b", "epoch": 3},
            ]}),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(
        v["stale"][0]["host"], "other.test",
        "names the stale site: {v}"
    );
    assert_unchanged(&admin, "bad.test", "a refused batch").await;
    assert_unchanged(&admin, "other.test", "a refused batch").await;
    let http = client::http1();
    let r = client::get(&http, ferry.addr(), "bad.test", "/")
        .await
        .unwrap();
    assert_eq!(r.backend(), Some("a"), "traffic still on pool a: {r:?}");

    // (e) No token, a wrong one, or the wrong scheme: 401, and nothing changes.
    let change = json!({"placement": "pool:b", "epoch": 9}).to_string();
    let wrong = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    for auth in [
        None,
        Some(wrong.as_str()),
        Some(basic.as_str()),
        Some(TOKEN),
    ] {
        for (method, path, body) in [
            (Method::GET, "/v1/status", ""),
            (Method::GET, "/v1/sites/bad.test", ""),
            (Method::PUT, "/v1/sites/bad.test", change.as_str()),
            (Method::POST, "/v1/reload", ""),
        ] {
            let (status, v) = admin.call_as(auth, method.clone(), path, body).await;
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {v}");
        }
    }
    assert_unchanged(&admin, "bad.test", "unauthenticated calls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_missing_and_absurd_host_headers_get_400() {
    let dir = workdir();
    let web = Nginx::start("web");
    let config = router_config("dc1", r#"default_site = "www.example.com""#)
        + &pool("web", &[("s1", web.addr())])
        + &site("www.example.com", "pool:web", "");
    let ferry = Ferry::start(dir.path(), &config);
    let long = "a".repeat(10_000);
    let cases = [
        ("empty Host", "Host: \r\n".to_string()),
        ("no Host", String::new()),
        ("10,000-char Host", format!("Host: {long}\r\n")),
        (
            "10,000-char Host with a dot",
            format!("Host: www.{long}.com\r\n"),
        ),
        (
            "port not a number",
            "Host: www.example.com:http\r\n".to_string(),
        ),
        ("space in name", "Host: www example.com\r\n".to_string()),
    ];
    for (what, host_line) in cases {
        let req = format!("GET /bad-host HTTP/1.1\r\n{host_line}Connection: close\r\n\r\n");
        let reply = raw(ferry.addr(), req.as_bytes(), Duration::from_secs(15)).await;
        assert_eq!(reply.status(), Some(400), "{what}: {}", reply.text);
    }
    assert!(
        web.requests().is_empty(),
        "no bad request reached nginx: {:?}",
        web.requests()
    );
    // The router still serves a good one (even with the default site in place).
    let ok = raw(
        ferry.addr(),
        b"GET /good HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    assert_eq!(
        web.requests_at_least(1),
        vec![
            "GET /good fwd=for=127.0.0.1;host=www.example.com;proto=http xff=127.0.0.1".to_string()
        ]
    );
}

/// A request that frames its body both ways; under Content-Length the body
/// holds a second request, under chunked that request is "smuggled" after it.
fn smuggling_request(te_first: bool) -> Vec<u8> {
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: www.example.com\r\n\r\n";
    let body = format!("0\r\n\r\n{hidden}");
    let cl = format!("Content-Length: {}\r\n", body.len());
    let te = "Transfer-Encoding: chunked\r\n";
    let (h1, h2) = if te_first {
        (te, cl.as_str())
    } else {
        (cl.as_str(), te)
    };
    format!("POST /upload HTTP/1.1\r\nHost: www.example.com\r\n{h1}{h2}\r\n{body}").into_bytes()
}

async fn smuggling_router() -> (tempfile::TempDir, Nginx, Ferry) {
    let dir = workdir();
    let web = Nginx::start("web");
    let config = router_config("dc1", "")
        + &pool("web", &[("s1", web.addr())])
        + &site("www.example.com", "pool:web", "");
    let ferry = Ferry::start(dir.path(), &config);
    (dir, web, ferry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_request_never_reaches_the_backend() {
    let (_dir, web, ferry) = smuggling_router().await;
    for te_first in [false, true] {
        let reply = raw(
            ferry.addr(),
            &smuggling_request(te_first),
            Duration::from_secs(15),
        )
        .await;
        assert!(
            reply.closed,
            "te_first={te_first}: the router closes the connection (RFC 9112 6.1): {}",
            reply.text
        );
        assert_eq!(reply.responses(), 1, "one answer only: {}", reply.text);
        assert!(
            !web.requests().iter().any(|r| r.contains("/smuggled")),
            "te_first={te_first}: nginx saw the smuggled request: {:?}",
            web.requests()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_on_sighup_keeps_the_running_one() {
    let dir = workdir();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let ferry = two_site_router(dir.path(), &a, &b);
    let admin = Admin::new(ferry.admin);
    let http = client::http1();
    let good = std::fs::read_to_string(&ferry.config).unwrap();

    // Every site moved to pool b, with a typo on one line.
    let broken = good
        .replace("pool:a", "pool:b")
        .replace("epoch = 5", "epoch = 6")
        + "\n[[site]]\nhost = \"new.test\"\nplacment = \"pool:b\"\n";
    std::fs::write(&ferry.config, &broken).unwrap();
    ferry.sighup();
    let deadline = Deadline::new("the SIGHUP reload to be refused", Duration::from_secs(20));
    while metric(&admin.metrics().await, "ferry_reload_failures_total") != Some(1.0) {
        deadline.tick().await;
    }
    for host in ["bad.test", "other.test"] {
        let r = client::get(&http, ferry.addr(), host, "/").await.unwrap();
        assert_eq!((r.status, r.backend()), (200, Some("a")), "{host}: {r:?}");
        assert_unchanged(&admin, host, "a refused SIGHUP").await;
    }
    assert_eq!(admin.get("/v1/sites/new.test").await.0, 404);

    let (status, v) = admin.post("/v1/reload", &Value::Null).await;
    assert_eq!(status, 400, "{v}");
    let want = format!(
        "{}:{}:",
        ferry.config.display(),
        line_of(&broken, "placment")
    );
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains(&want)),
        "the error names {want}: {v}"
    );

    // Fixed, it applies.
    std::fs::write(&ferry.config, broken.replace("placment", "placement")).unwrap();
    let (status, v) = admin.post("/v1/reload", &Value::Null).await;
    assert_eq!(status, 200, "{v}");
    let r = client::get(&http, ferry.addr(), "other.test", "/")
        .await
        .unwrap();
    assert_eq!(r.backend(), Some("b"), "the fixed config applies: {r:?}");
}

/// Regression: a port above 65535 and labels that start or end with '-' are
/// not host names; they once went to the default site, or into the table
/// through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_with_port_above_65535_or_hyphen_edged_label_is_refused() {
    let dir = workdir();
    let web = Nginx::start("web");
    let config = router_config("dc1", r#"default_site = "www.example.com""#)
        + &pool("web", &[("s1", web.addr())])
        + &site("www.example.com", "pool:web", "");
    let ferry = Ferry::start(dir.path(), &config);
    for host in ["www.example.com:99999", "-bad-.example.com"] {
        let req = format!("GET /bad-host HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let reply = raw(ferry.addr(), req.as_bytes(), Duration::from_secs(15)).await;
        assert_eq!(reply.status(), Some(400), "Host {host}: {}", reply.text);
    }
    let admin = Admin::new(ferry.admin);
    let (status, v) = admin
        .put(
            "/v1/sites/-bad-.test",
            &json!({"placement": "pool:web", "epoch": 1}),
        )
        .await;
    assert_eq!(status, 400, "site -bad-.test: {v}");
    assert!(web.requests().is_empty(), "{:?}", web.requests());
}
