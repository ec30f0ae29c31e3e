//! The database tunnel against real `mariadbd` servers: the `mariadb` client
//! and mysql_async through it, the observed uses (exactly the logins that
//! happened) and their export read by the inventory loader, re-pointing
//! without cutting open connections, garbage clients, the admin API's refusals
//! and reloads. The router runs in-process (`Proxy::start`); the binary's own
//! end-to-end test is in `crates/ferry/tests/e2e/tunnel.rs`.

#[path = "../../ferry-db/tests/support/mod.rs"]
mod mariadb;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_proxy::Proxy;
use mariadb::MariaDb;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "tunnel-test-token";

fn config(dir: &Path, tunnels: &str) -> String {
    format!(
        r#"[router]
name = "dc2"
observed_uses_file = "{}"

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[[listener]]
listen = "127.0.0.1:0"

{tunnels}
"#,
        dir.join("observed_uses.jsonl").display()
    )
}

fn tunnel(name: &str, upstream: u16, extra: &str) -> String {
    format!(
        "[[tunnels]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:{upstream}\"\n{extra}\n"
    )
}

async fn start(dir: &Path, text: &str) -> Arc<Proxy> {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).expect("write config");
    let config = ferry_config::load(&path).expect("config");
    Proxy::start(config, Some(path)).await.expect("start proxy")
}

/// One admin call over a fresh HTTP/1.1 connection; (status, JSON body).
async fn admin(proxy: &Proxy, method: &str, path: &str, body: &str) -> (u16, Value) {
    let addr = proxy.admin_addr().expect("admin address");
    let mut s = TcpStream::connect(addr).await.expect("admin connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("admin write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("admin read");
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    (status, body)
}

/// A connection through the tunnel at `addr`. TCP only: mysql_async would
/// otherwise move to the server's socket file and bypass the tunnel.
async fn conn(
    addr: SocketAddr,
    user: &str,
    pw: &str,
    db: Option<&str>,
) -> Result<Conn, mysql_async::Error> {
    let url = match db {
        Some(db) => format!("mysql://{user}:{pw}@{addr}/{db}"),
        None => format!("mysql://{user}:{pw}@{addr}"),
    };
    let opts = OptsBuilder::from_opts(Opts::from_url(&url).expect("url")).prefer_socket(false);
    Conn::new(opts).await
}

async fn port_of(c: &mut Conn) -> u16 {
    c.query_first::<u16, _>("SELECT @@port")
        .await
        .expect("select @@port")
        .expect("a row")
}

/// The real `mariadb` client, through the tunnel.
fn mariadb_client(addr: SocketAddr, user: &str, pw: &str, db: Option<&str>, sql: &str) -> String {
    let mut cmd = std::process::Command::new("mariadb");
    cmd.args(["-h", "127.0.0.1", "-P", &addr.port().to_string()])
        .args(["-u", user, &format!("-p{pw}")])
        // Observation needs a plain-text login; newer clients default to TLS.
        .args(["--skip-ssl", "--batch", "--skip-column-names", "-e", sql]);
    if let Some(db) = db {
        cmd.arg(db);
    }
    let out = cmd.output().expect("run mariadb client");
    assert!(
        out.status.success(),
        "mariadb client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn seed(db: &MariaDb) {
    db.exec(
        "CREATE DATABASE shopdb; CREATE DATABASE blogdb;
         CREATE TABLE shopdb.t (id INT PRIMARY KEY); INSERT INTO shopdb.t VALUES (1), (2);
         CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'apppw';
         CREATE USER 'report'@'127.0.0.1' IDENTIFIED BY 'reportpw';
         GRANT ALL ON shopdb.* TO 'app'@'127.0.0.1';
         GRANT SELECT ON blogdb.* TO 'report'@'127.0.0.1';",
    )
    .await;
}

/// Sorted (client, user, database, connections) rows of a tunnel's uses.
async fn uses(proxy: &Proxy, name: &str) -> Vec<(String, String, Option<String>, u64)> {
    let (status, body) = admin(proxy, "GET", &format!("/v1/tunnels/{name}/uses"), "").await;
    assert_eq!(status, 200, "{body}");
    let mut rows: Vec<_> = body["uses"]
        .as_array()
        .expect("uses array")
        .iter()
        .map(|u| {
            (
                u["client"].as_str().unwrap_or_default().to_string(),
                u["user"].as_str().unwrap_or_default().to_string(),
                u["database"].as_str().map(str::to_string),
                u["connections"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Logins are recorded as soon as the server accepts them, but a refused or
/// garbage one only when decided: poll the counter rather than sleep.
async fn wait_logins(proxy: &Proxy, name: &str, outcome: &str, want: u64) {
    for _ in 0..250 {
        let (_, t) = admin(proxy, "GET", &format!("/v1/tunnels/{name}"), "").await;
        if t["logins"][outcome].as_u64() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, t) = admin(proxy, "GET", &format!("/v1/tunnels/{name}"), "").await;
    panic!("tunnel {name}: expected {want} {outcome} logins, have {t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_learns_uses_and_repoints() {
    let (a, b) = tokio::join!(MariaDb::start(1), MariaDb::start(2));
    seed(&a).await;
    let dir = tempfile::tempdir().expect("temp dir");
    // What an earlier run saw stays in the file.
    std::fs::write(
        dir.path().join("observed_uses.jsonl"),
        "{\"database\":\"olddb@sql002-1\",\"client\":\"10.9.9.9\"}\n",
    )
    .expect("earlier uses");
    let text = config(
        dir.path(),
        &tunnel("sql002", a.port, "server = \"sql002-1\""),
    );
    let proxy = start(dir.path(), &text).await;
    let addr = proxy.tunnel_addr("sql002").expect("tunnel bound");

    // (a) The real client and mysql_async both work through the tunnel.
    assert_eq!(
        mariadb_client(
            addr,
            "app",
            "apppw",
            Some("shopdb"),
            "SELECT COUNT(*) FROM t"
        ),
        "2"
    );
    let mut app = conn(addr, "app", "apppw", Some("shopdb"))
        .await
        .expect("app");
    let n: Option<u32> = app
        .query_first("SELECT COUNT(*) FROM t")
        .await
        .expect("count");
    assert_eq!(n, Some(2));
    app.disconnect().await.expect("disconnect");
    let mut report = conn(addr, "report", "reportpw", Some("blogdb"))
        .await
        .expect("report");
    report.query_drop("SELECT 1").await.expect("select 1");
    report.disconnect().await.expect("disconnect");
    // No database chosen: a use of the server, not of a database.
    assert_eq!(mariadb_client(addr, "app", "apppw", None, "SELECT 1"), "1");
    // A refused login is not a use.
    assert!(conn(addr, "app", "wrong", Some("shopdb")).await.is_err());
    wait_logins(&proxy, "sql002", "refused", 1).await;
    wait_logins(&proxy, "sql002", "accepted", 4).await;

    // (b) Exactly the logins that happened.
    let ip = "127.0.0.1".to_string();
    assert_eq!(
        uses(&proxy, "sql002").await,
        vec![
            (ip.clone(), "app".into(), None, 1),
            (ip.clone(), "app".into(), Some("shopdb".into()), 2),
            (ip.clone(), "report".into(), Some("blogdb".into()), 1),
        ]
    );
    let (status, export) = admin(&proxy, "POST", "/v1/tunnels/uses/export", "").await;
    assert_eq!(status, 200, "{export}");
    assert_eq!(export["lines"], 3);
    let written =
        std::fs::read_to_string(dir.path().join("observed_uses.jsonl")).expect("uses file");
    let lines: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"database": "blogdb@sql002-1", "client": "127.0.0.1"}),
            json!({"database": "olddb@sql002-1", "client": "10.9.9.9"}),
            json!({"database": "shopdb@sql002-1", "client": "127.0.0.1"}),
        ]
    );
    // The inventory loader takes the file as it is.
    let inv = tempfile::tempdir().expect("inventory dir");
    let files = [
        ("datacenters.jsonl", "{\"name\":\"dc1\"}\n"),
        ("clusters.jsonl", "{\"name\":\"c1\",\"datacenter\":\"dc1\"}\n"),
        ("db_servers.jsonl", "{\"name\":\"sql002-1\",\"cluster\":\"c1\"}\n"),
        (
            "databases.jsonl",
            "{\"name\":\"shopdb\",\"server\":\"sql002-1\",\"bytes\":1}\n{\"name\":\"blogdb\",\"server\":\"sql002-1\",\"bytes\":1}\n{\"name\":\"olddb\",\"server\":\"sql002-1\",\"bytes\":1}\n",
        ),
        ("observed_uses.jsonl", written.as_str()),
    ];
    for (name, content) in files {
        std::fs::write(inv.path().join(name), content).expect("write inventory file");
    }
    let loaded = ferry_inventory::load_dir(inv.path(), &ferry_inventory::Quiet)
        .unwrap_or_else(|e| panic!("inventory refused the observed uses: {e}"));
    assert_eq!(loaded.observed_uses().len(), 3);

    // (c) Re-point: the open connection stays on the old server.
    let mut before = conn(addr, "root", "", None).await.expect("root via a");
    assert_eq!(port_of(&mut before).await, a.port);
    let (status, body) = admin(
        &proxy,
        "PUT",
        "/v1/tunnels/sql002",
        &json!({"upstream": format!("127.0.0.1:{}", b.port)}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upstream"], format!("127.0.0.1:{}", b.port));
    let mut after = conn(addr, "root", "", None).await.expect("root via b");
    assert_eq!(port_of(&mut after).await, b.port);
    assert_eq!(port_of(&mut before).await, a.port, "open connection moved");
    let (_, list) = admin(&proxy, "GET", "/v1/tunnels", "").await;
    assert_eq!(
        list["tunnels"][0]["upstream"],
        format!("127.0.0.1:{}", b.port)
    );
    assert_eq!(list["tunnels"][0]["open_connections"], 2);
    before.disconnect().await.expect("disconnect");
    after.disconnect().await.expect("disconnect");

    // Metrics carry the per-tunnel counters.
    let addr_admin = proxy.admin_addr().expect("admin");
    let mut s = TcpStream::connect(addr_admin).await.expect("metrics");
    let get = format!(
        "GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(get.as_bytes()).await.expect("write");
    let mut m = String::new();
    s.read_to_string(&mut m).await.expect("read");
    assert!(
        m.contains("ferry_tunnel_connections_total{tunnel=\"sql002\"} 7"),
        "{m}"
    );
    assert!(
        m.contains("ferry_tunnel_logins_total{tunnel=\"sql002\",outcome=\"accepted\"} 6"),
        "{m}"
    );
    assert!(m.contains("ferry_tunnel_bytes_to_client_total{tunnel=\"sql002\"}"));

    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_admin_refusals_and_reload() {
    let (a, b) = tokio::join!(MariaDb::start(3), MariaDb::start(4));
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(dir.path(), &tunnel("one", a.port, ""));
    let proxy = start(dir.path(), &text).await;
    let addr = proxy.tunnel_addr("one").expect("tunnel bound");

    // (d) A client that is not MySQL: forwarded as bytes, the server closes,
    // nothing is recorded, and the tunnel keeps serving.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut greeting = [0u8; 4];
    s.read_exact(&mut greeting)
        .await
        .expect("server greeting passes through");
    s.write_all(b"\x05\x00\x00\x01GARBAGE-NOT-MYSQL\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    wait_logins(&proxy, "one", "unobserved", 1).await;
    // Oversized "packet" announced: not buffered, not observed.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.read_exact(&mut greeting).await.expect("greeting");
    s.write_all(&[0xff, 0xff, 0xff, 0x01, 0, 0])
        .await
        .expect("write");
    drop(s);
    wait_logins(&proxy, "one", "unobserved", 2).await;
    assert!(uses(&proxy, "one").await.is_empty());
    let mut c = conn(addr, "root", "", None).await.expect("still serving");
    c.query_drop("SELECT 1").await.expect("select 1");
    c.disconnect().await.expect("disconnect");

    // Admin refusals: 400 names the field, 404 for an unknown tunnel.
    for (body, field) in [
        ("not json", "body"),
        ("{}", "upstream"),
        ("{\"upstream\": 3306}", "upstream"),
        ("{\"upstream\": \"nohost\"}", "upstream"),
        ("{\"upstream\": \"127.0.0.1:0\"}", "upstream"),
        ("{\"upstream\": \"127.0.0.1:1\", \"extra\": 1}", "extra"),
    ] {
        let (status, err) = admin(&proxy, "PUT", "/v1/tunnels/one", body).await;
        assert_eq!(status, 400, "{body}: {err}");
        let msg = err["error"].as_str().unwrap_or_default();
        assert!(msg.contains(field), "{body}: {msg:?} should name {field:?}");
    }
    let (status, _) = admin(&proxy, "PUT", "/v1/tunnels/nope", "{\"upstream\":\"h:1\"}").await;
    assert_eq!(status, 404);
    let (status, _) = admin(&proxy, "GET", "/v1/tunnels/nope/uses", "").await;
    assert_eq!(status, 404);

    // An unreachable upstream: the client is closed, the failure counted.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let (status, _) = admin(
        &proxy,
        "PUT",
        "/v1/tunnels/one",
        &json!({"upstream": format!("127.0.0.1:{dead_port}")}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(conn(addr, "root", "", None).await.is_err());
    let (_, t) = admin(&proxy, "GET", "/v1/tunnels/one", "").await;
    assert_eq!(t["connect_failures"], 1, "{t}");

    // Reload: the config's upstream changes (it wins over the re-point), a
    // tunnel is added; then removed again.
    let text = config(
        dir.path(),
        &format!(
            "{}{}",
            tunnel("one", b.port, ""),
            tunnel("two", a.port, "observe = false")
        ),
    );
    std::fs::write(dir.path().join("proxy.toml"), &text).expect("write");
    let (status, body) = admin(&proxy, "POST", "/v1/reload", "").await;
    assert_eq!(status, 200, "{body}");
    let mut c = conn(addr, "root", "", None)
        .await
        .expect("one after reload");
    assert_eq!(port_of(&mut c).await, b.port);
    c.disconnect().await.expect("disconnect");
    let two = proxy.tunnel_addr("two").expect("two bound");
    let mut c = conn(two, "root", "", None).await.expect("two");
    assert_eq!(port_of(&mut c).await, a.port);
    c.disconnect().await.expect("disconnect");
    wait_logins(&proxy, "two", "off", 1).await;
    assert!(uses(&proxy, "two").await.is_empty());
    // The counters of "one" survived the reload (the failed connect was no
    // login at all).
    let (_, t) = admin(&proxy, "GET", "/v1/tunnels/one", "").await;
    assert_eq!(t["logins"]["unobserved"], 2, "{t}");
    assert_eq!(t["connect_failures"], 1, "{t}");

    std::fs::write(
        dir.path().join("proxy.toml"),
        config(dir.path(), &tunnel("one", b.port, "")),
    )
    .expect("write");
    let (status, _) = admin(&proxy, "POST", "/v1/reload", "").await;
    assert_eq!(status, 200);
    assert!(proxy.tunnel_addr("two").is_none());
    // Its port is closed once the accept loop has seen the stop.
    let mut closed = false;
    for _ in 0..100 {
        if TcpStream::connect(two).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "removed tunnel still accepts");

    // A bad config is refused with its line, and nothing changes.
    let text = config(
        dir.path(),
        &tunnel("one", b.port, "idle_timeout = \"soon\""),
    );
    std::fs::write(dir.path().join("proxy.toml"), &text).expect("write");
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("idle_timeout"))
        .expect("idle_timeout line");
    let (status, err) = admin(&proxy, "POST", "/v1/reload", "").await;
    assert_eq!(status, 400);
    let msg = err["error"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("proxy.toml:{line}:")), "{msg}");
    assert!(msg.contains("idle_timeout"), "{msg}");
    assert!(proxy.tunnel_addr("one").is_some());

    proxy.shutdown(Duration::from_secs(1)).await;
}
