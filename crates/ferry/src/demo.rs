//! `ferry demo`: everything on loopback, nothing to install. Starts demo
//! backends and a router, keeps a client loop running the whole time, and
//! shows routing, maintenance, tier failover and a frozen site's held requests.
//! Ends with a summary and exits 1 if any check failed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use http::{Method, StatusCode};
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend;
use crate::http_client::HttpClient;
use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Client requests running in parallel during the demo.
    #[arg(long, default_value_t = 4)]
    clients: usize,
}

const TOKEN: &str = "demo-token";

struct Backend {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

async fn start_backend(name: &str, addr: SocketAddr) -> anyhow::Result<Backend> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding demo backend {name} on {addr}"))?;
    let addr = listener.local_addr()?;
    let (stop, rx) = watch::channel(false);
    tokio::spawn(backend::serve(listener, name.to_string(), rx));
    Ok(Backend { addr, stop })
}

/// Results of the checks, printed at the end.
#[derive(Default)]
struct Report {
    rows: Vec<(String, bool, String)>,
}

impl Report {
    fn check(&mut self, what: &str, ok: bool, detail: impl Into<String>) {
        let detail = detail.into();
        println!("  [{}] {what}: {detail}", if ok { " ok " } else { "FAIL" });
        self.rows.push((what.to_string(), ok, detail));
    }
}

/// The client loop that runs during the whole demo.
#[derive(Default)]
struct Traffic {
    sent: AtomicU64,
    failed: AtomicU64,
    by_backend: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<Vec<String>>,
}

fn backend_of(body: &str) -> String {
    body.split_whitespace().next().unwrap_or("?").to_string()
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let started = Instant::now();
    println!("ferry demo: a router, four demo backends and a client loop, all on loopback\n");
    let lo = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let app1 = start_backend("app1", lo(0)).await?;
    let app2 = start_backend("app2", lo(0)).await?;
    let static1 = start_backend("static1", lo(0)).await?;
    let office = start_backend("office1", lo(0)).await?;

    let dir = tempdir()?;
    let page = dir.join("maintenance.html");
    std::fs::write(
        &page,
        "<html><body><h1>shop.example is being upgraded</h1></body></html>\n",
    )?;
    let config_text = format!(
        r#"
[router]
name = "dc1"
hold_max = "10s"
retry_after = 15
operator_networks = ["127.0.0.2"]
default_site = "www.shop.example"

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[[listener]]
listen = "127.0.0.1:0"

[[pool]]
name = "web"
[pool.health]
path = "/healthz"
interval = "300ms"
timeout = "250ms"
rise = 2
fall = 2
[[pool.server]]
name = "app1"
address = "{app1}"
tier = 0
[[pool.server]]
name = "app2"
address = "{app2}"
tier = 1

[[pool]]
name = "static"
[[pool.server]]
name = "static1"
address = "{static1}"

[[pool]]
name = "backoffice"
[[pool.server]]
name = "office1"
address = "{office}"

[[site]]
host = "www.shop.example"
placement = "pool:web"
[[site.rule]]
prefix = "/admin"
pool = "backoffice"
[[site.rule]]
prefix = "/static"
pool = "static"

[[site]]
host = "*.blog.example"
placement = "pool:web"

[[site]]
host = "beta.shop.example"
placement = "pool:web"
maintenance_page = "{page}"

[[site]]
host = "new.shop.example"
placement = "pool:web"
"#,
        app1 = app1.addr,
        app2 = app2.addr,
        static1 = static1.addr,
        office = office.addr,
        page = page.display(),
    );
    let config_path = dir.join("demo.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = ferry_config::load(&config_path).map_err(Failure::usage)?;
    let proxy = ferry_proxy::Proxy::start(config, Some(config_path.clone())).await?;
    let listen = proxy.listen_addrs()[0];
    let admin = proxy
        .admin_addr()
        .ok_or_else(|| anyhow!("the demo router has no admin address"))?;
    println!("router listening on http://{listen}, admin API on http://{admin}\n");

    let client = HttpClient::new(Duration::from_secs(15));
    let get_client = client.clone();
    let get = move |host: &'static str, path: &'static str| {
        let client = get_client.clone();
        async move {
            client
                .request(
                    Method::GET,
                    &format!("http://{listen}{path}"),
                    &[("host", host)],
                    None,
                )
                .await
        }
    };
    let api_client = client.clone();
    let api = move |method: Method, path: String, body: Option<serde_json::Value>| {
        let client = api_client.clone();
        async move {
            let auth = format!("Bearer {TOKEN}");
            client
                .request(
                    method,
                    &format!("http://{admin}{path}"),
                    &[("authorization", auth.as_str())],
                    body.map(|b| b.to_string().into_bytes()),
                )
                .await
        }
    };

    // The client loop: GETs to the shop for the whole demo; every failure counted.
    let traffic = Arc::new(Traffic::default());
    let running = Arc::new(AtomicBool::new(true));
    let mut loops = Vec::new();
    for _ in 0..args.clients.max(1) {
        let (traffic, running, client) =
            (Arc::clone(&traffic), Arc::clone(&running), client.clone());
        loops.push(tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                traffic.sent.fetch_add(1, Ordering::Relaxed);
                match client
                    .request(
                        Method::GET,
                        &format!("http://{listen}/"),
                        &[("host", "www.shop.example")],
                        None,
                    )
                    .await
                {
                    Ok(r) if r.status == StatusCode::OK => {
                        *traffic
                            .by_backend
                            .lock()
                            .entry(backend_of(&r.text()))
                            .or_default() += 1;
                    }
                    Ok(r) => {
                        traffic.failed.fetch_add(1, Ordering::Relaxed);
                        traffic
                            .failures
                            .lock()
                            .push(format!("{} {}", r.status, r.text().trim()));
                    }
                    Err(e) => {
                        traffic.failed.fetch_add(1, Ordering::Relaxed);
                        traffic.failures.lock().push(format!("{e:#}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    let mut report = Report::default();

    println!("1. Routing by host and path");
    for (host, path, want) in [
        ("www.shop.example", "/", "app1"),
        ("WWW.Shop.Example.:80", "/cart", "app1"),
        ("www.shop.example", "/static/app.css", "static1"),
        ("www.shop.example", "/admin/orders", "office1"),
        ("news.blog.example", "/", "app1"),
        ("unknown.example", "/", "app1"),
    ] {
        let r = get(host, path).await?;
        let got = backend_of(&r.text());
        report.check(
            &format!("{host}{path}"),
            r.status == StatusCode::OK && got == want,
            format!("{} from {got} (expected {want})", r.status.as_u16()),
        );
    }

    println!("\n2. Maintenance: 503 with Retry-After and the site's page; operators pass");
    let r = api(
        Method::PUT,
        "/v1/sites/beta.shop.example".into(),
        Some(json!({"placement": "pool:web", "state": "maintenance", "epoch": 1})),
    )
    .await?;
    report.check(
        "set beta.shop.example to maintenance",
        r.status == StatusCode::OK,
        r.text().trim().to_string(),
    );
    let r = get("beta.shop.example", "/").await?;
    let retry = r
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    report.check(
        "visitor gets 503",
        r.status == StatusCode::SERVICE_UNAVAILABLE
            && retry == "15"
            && r.text().contains("being upgraded"),
        format!(
            "{} Retry-After: {retry}, page: {:?}",
            r.status.as_u16(),
            r.text().trim()
        ),
    );
    let operator = HttpClient::from_source(
        Duration::from_secs(5),
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
    );
    match operator
        .request(
            Method::GET,
            &format!("http://{listen}/"),
            &[("host", "beta.shop.example")],
            None,
        )
        .await
    {
        Ok(r) => report.check(
            "operator 127.0.0.2 passes",
            r.status == StatusCode::OK,
            format!("{} from {}", r.status.as_u16(), backend_of(&r.text())),
        ),
        Err(e) => report.check("operator 127.0.0.2 passes", false, format!("{e:#}")),
    }

    println!("\n3. Tier failover: app1 (tier 0) stops, app2 (tier 1) takes over, app1 comes back");
    let before = traffic.by_backend.lock().get("app2").copied().unwrap_or(0);
    let _ = app1.stop.send(true);
    let down_at = Instant::now();
    let went_down = wait_for(Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let r = api(Method::GET, "/v1/pools".into(), None).await.ok()?;
            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            let web = v["pools"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == "web")?
                .clone();
            (web["serving_tier"] == 1).then_some(())
        }
    })
    .await;
    report.check(
        "health checks mark app1 down",
        went_down.is_some(),
        format!("serving tier 1 after {} ms", down_at.elapsed().as_millis()),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = traffic.by_backend.lock().get("app2").copied().unwrap_or(0);
    report.check(
        "app2 serves while app1 is down",
        after > before,
        format!("app2 answered {} requests", after - before),
    );
    let app1 = start_backend("app1", app1.addr).await?;
    let up_at = Instant::now();
    let came_back = wait_for(Duration::from_secs(10), || {
        let get = get.clone();
        async move {
            let r = get("www.shop.example", "/").await.ok()?;
            (backend_of(&r.text()) == "app1").then_some(())
        }
    })
    .await;
    report.check(
        "traffic returns to app1 after `rise` checks",
        came_back.is_some(),
        format!("after {} ms", up_at.elapsed().as_millis()),
    );

    println!("\n4. Freeze: requests are held, then released to the new placement");
    let r = api(
        Method::PUT,
        "/v1/sites/new.shop.example".into(),
        Some(json!({"placement": "pool:web", "state": "frozen", "epoch": 1})),
    )
    .await?;
    report.check(
        "freeze new.shop.example (epoch 1)",
        r.status == StatusCode::OK,
        r.text().trim().to_string(),
    );
    let held_requests = 20;
    let mut waiting = Vec::new();
    for _ in 0..held_requests {
        let get = get.clone();
        waiting.push(tokio::spawn(
            async move { get("new.shop.example", "/").await },
        ));
    }
    let all_held = wait_for(Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let r = api(Method::GET, "/v1/sites/new.shop.example".into(), None)
                .await
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            (v["held"].as_u64()? == held_requests as u64).then_some(())
        }
    })
    .await;
    report.check(
        "the router reports 20 held requests",
        all_held.is_some(),
        "held = 20, in_flight = 0",
    );
    let flip_at = Instant::now();
    let r = api(
        Method::PUT,
        "/v1/sites/new.shop.example".into(),
        Some(json!({"placement": "pool:static", "state": "active", "epoch": 2})),
    )
    .await?;
    report.check(
        "flip to pool:static (epoch 2)",
        r.status == StatusCode::OK,
        r.text().trim().to_string(),
    );
    let mut released = 0;
    let mut at_new = 0;
    for w in waiting {
        if let Ok(Ok(r)) = w.await {
            if r.status == StatusCode::OK {
                released += 1;
                if backend_of(&r.text()) == "static1" {
                    at_new += 1;
                }
            }
        }
    }
    report.check(
        "every held request answered by the new placement",
        released == held_requests && at_new == held_requests,
        format!(
            "{at_new}/{held_requests} from static1, all within {} ms of the flip",
            flip_at.elapsed().as_millis()
        ),
    );
    let r = api(
        Method::PUT,
        "/v1/sites/new.shop.example".into(),
        Some(json!({"placement": "pool:web", "state": "active", "epoch": 1})),
    )
    .await?;
    report.check(
        "a stale epoch is refused",
        r.status == StatusCode::CONFLICT,
        format!("{} {}", r.status.as_u16(), r.text().trim()),
    );

    running.store(false, Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    let sent = traffic.sent.load(Ordering::Relaxed);
    let failed = traffic.failed.load(Ordering::Relaxed);
    println!("\n5. The client loop that ran the whole time");
    let by: Vec<String> = traffic
        .by_backend
        .lock()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    report.check(
        "no failed request",
        failed == 0 && sent > 0,
        format!("{sent} sent, {failed} failed ({})", by.join(", ")),
    );
    for f in traffic.failures.lock().iter().take(5) {
        println!("      failure: {f}");
    }

    proxy.shutdown(Duration::from_secs(2)).await;
    for b in [&app1, &app2, &static1, &office] {
        let _ = b.stop.send(true);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let passed = report.rows.iter().filter(|r| r.1).count();
    let total = report.rows.len();
    println!(
        "\nSummary: {passed}/{total} checks passed in {:.1} s; {sent} requests through the router, {failed} failed.",
        started.elapsed().as_secs_f64()
    );
    if passed == total {
        Ok(())
    } else {
        Err(anyhow!("{} demo check(s) failed", total - passed).into())
    }
}

/// Polls `probe` until it returns `Some` or `limit` passes.
async fn wait_for<F, Fut>(limit: Duration, probe: F) -> Option<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if probe().await.is_some() {
            return Some(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
