//! Routing by host (exact, normalised, wildcard, default) and by path rule, over
//! HTTP/1.1 and h2c, to real nginx backends; the client address reaches them.

use crate::support::client::curl;
use crate::support::{pool, router_config, site, workdir, Ferry, Nginx};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_over_http1_and_h2c() {
    let dir = workdir();
    let web = Nginx::start("web");
    let backoffice = Nginx::start("backoffice");
    let statics = Nginx::start("static");
    let wild = Nginx::start("wild");
    let fallback = Nginx::start("fallback");
    let mut config = router_config("dc1", r#"default_site = "fallback.example.net""#);
    for n in [&web, &backoffice, &statics, &wild, &fallback] {
        config += &pool(&n.name, &[("s1", n.addr())]);
    }
    config += &site(
        "www.example.com",
        "pool:web",
        r#"
[[site.rule]]
prefix = "/admin"
pool = "backoffice"

[[site.rule]]
prefix = "/static"
pool = "static""#,
    );
    config += &site("*.example.org", "pool:wild", "");
    config += &site("fallback.example.net", "pool:fallback", "");
    let ferry = Ferry::start(dir.path(), &config);

    // (Host header, path, backend that must answer, path the backend must see)
    let cases = [
        ("www.example.com", "/", "web", "/"),
        ("WWW.Example.COM.:8080", "/", "web", "/"),
        ("a.example.org", "/", "wild", "/"),
        ("x.y.example.org", "/deep/page", "wild", "/deep/page"),
        ("example.org", "/", "fallback", "/"),
        ("unknown.test", "/", "fallback", "/"),
        ("www.example.com", "/admin", "backoffice", "/admin"),
        (
            "www.example.com",
            "/admin/users?page=2",
            "backoffice",
            "/admin/users",
        ),
        (
            "www.example.com",
            "/static/app.css",
            "static",
            "/static/app.css",
        ),
        ("www.example.com", "/administrator", "web", "/administrator"),
        ("www.example.com", "/staticky", "web", "/staticky"),
    ];
    for (proto_flag, version) in [
        ("--http1.1", "HTTP/1.1"),
        ("--http2-prior-knowledge", "HTTP/2"),
    ] {
        for (host, path, backend, seen_path) in cases {
            let url = format!("http://{}{path}", ferry.addr());
            let host_header = format!("Host: {host}");
            // A client may not tell the router who it is: this header must be
            // replaced by the address the router saw.
            let reply = curl(&[
                proto_flag,
                "-H",
                &host_header,
                "-H",
                "X-Forwarded-For: 203.0.113.66",
                &url,
            ])
            .await;
            let what = format!("{version} Host {host:?} {path}");
            assert_eq!(reply.status, 200, "{what}: {reply:?}");
            assert_eq!(reply.version, version, "{what}: {reply:?}");
            assert_eq!(reply.backend(), Some(backend), "{what}: {reply:?}");
            assert_eq!(
                reply.body,
                format!("{backend} {seen_path} 127.0.0.1\n"),
                "{what}: the backend sees the path and X-Forwarded-For = the client"
            );
        }
    }
    // The backend also gets a Forwarded header naming the client and the
    // normalised host (here for "WWW.Example.COM.:8080").
    assert_eq!(
        web.requests()[1],
        "GET / fwd=for=127.0.0.1;host=www.example.com;proto=http xff=127.0.0.1"
    );
    // The nginx of each pool saw exactly the requests routed to it.
    assert_eq!(
        backoffice.requests().len(),
        4,
        "{:?}",
        backoffice.requests()
    );
    assert_eq!(statics.requests().len(), 2, "{:?}", statics.requests());
    assert_eq!(wild.requests().len(), 4, "{:?}", wild.requests());
    assert_eq!(fallback.requests().len(), 4, "{:?}", fallback.requests());
    assert_eq!(web.requests().len(), 8, "{:?}", web.requests());
}

/// Many multiplexed h2c streams on few connections (h2load), all answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_streams_all_succeed() {
    let dir = workdir();
    let web = Nginx::start("web");
    let config = router_config("dc1", "")
        + &pool("web", &[("s1", web.addr())])
        + &site("www.example.com", "pool:web", "");
    let ferry = Ferry::start(dir.path(), &config);
    let out = tokio::process::Command::new("h2load")
        .args([
            "-n",
            "400",
            "-c",
            "4",
            "-m",
            "16",
            "-H",
            "host: www.example.com",
        ])
        .arg(format!("http://{}/h2load", ferry.addr()))
        .output()
        .await
        .expect("running h2load (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed: {text}");
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("h2load printed no {prefix:?} line:\n{text}"))
            .to_string()
    };
    assert!(
        line("requests:").contains("400 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(
        line("status codes:").starts_with("status codes: 400 2xx"),
        "{text}"
    );
    assert_eq!(web.requests().len(), 400, "nginx saw every stream");
}
