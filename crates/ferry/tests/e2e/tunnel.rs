//! The database tunnel of the real `ferry proxy` binary, between the real
//! `mariadb` client and real `mariadbd` servers: queries pass, the observed
//! uses list exactly the logins that happened and `ferry inventory check`
//! accepts the file the router writes, a re-point leaves an open session on
//! its old server, and bad input (a client that is not MySQL, bad admin
//! bodies, a bad config) is refused cleanly.
//! (mysql_async through the tunnel: `crates/ferry-proxy/tests/tunnel.rs`.)

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::procs::FERRY;
use crate::support::{free_port, router_config, workdir, Admin, Deadline, Ferry};

/// Debian keeps `mariadbd` and `mariadb-install-db` in /usr/sbin or /usr/bin,
/// not always on PATH.
fn program(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("{name} not found: install mariadb-server and mariadb-client"))
}

/// A private `mariadbd` on a free loopback port, killed (by its pid) and its
/// directory removed when dropped. Root logs in over TCP without a password.
struct Mariadbd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mariadbd {
    fn start() -> Mariadbd {
        let dir = tempfile::Builder::new()
            .prefix("ferry-e2e-mariadb-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let out = Command::new(program("mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--user=root"])
            .arg("--skip-test-db")
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = Command::new(program("mariadbd"))
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!(
                "--log-error={}",
                dir.path().join("error.log").display()
            ))
            .arg(format!("--port={port}"))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
            .args(["--innodb-buffer-pool-size=32M", "--performance-schema=OFF"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mariadbd");
        let mut db = Mariadbd {
            child,
            port,
            _dir: dir,
        };
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = db.child.try_wait() {
                panic!("mariadbd exited ({status}) before it was ready");
            }
            if sql(db.addr(), "root", "", None, "SELECT 1").is_ok() {
                return db;
            }
            assert!(Instant::now() < end, "mariadbd not ready after 60s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Mariadbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mariadb_args(addr: SocketAddr, user: &str, pw: &str) -> Vec<String> {
    let mut a = vec![
        "-h".into(),
        addr.ip().to_string(),
        "-P".into(),
        addr.port().to_string(),
        "-u".into(),
        user.into(),
        // Plain-text logins only: newer clients default to TLS.
        "--skip-ssl".into(),
        "--batch".into(),
        "--skip-column-names".into(),
    ];
    if !pw.is_empty() {
        a.push(format!("-p{pw}"));
    }
    a
}

/// Runs `query` with the real `mariadb` client; its output or its error text.
fn sql(
    addr: SocketAddr,
    user: &str,
    pw: &str,
    db: Option<&str>,
    query: &str,
) -> Result<String, String> {
    let out = Command::new("mariadb")
        .args(mariadb_args(addr, user, pw))
        .args(["-e", query])
        .args(db)
        .output()
        .expect("run mariadb");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// An interactive `mariadb` session kept open across a re-point.
struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Session {
    fn open(addr: SocketAddr) -> Session {
        let mut child = Command::new("mariadb")
            .args(mariadb_args(addr, "root", ""))
            // Flush each result at once, so a line can be read per query.
            .arg("--unbuffered")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mariadb session");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Session {
            child,
            stdin,
            stdout,
        }
    }

    fn port(&mut self) -> u16 {
        writeln!(self.stdin, "SELECT @@port;").expect("write query");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read answer");
        line.trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a port: {line:?}"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tunnel(name: &str, listen: SocketAddr, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "\n[[tunnels]]\nname = \"{name}\"\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n{extra}\n"
    )
}

async fn uses(admin: &Admin, name: &str) -> Vec<(String, String, Value)> {
    let (status, body) = admin.get(&format!("/v1/tunnels/{name}/uses")).await;
    assert_eq!(status, 200, "{body}");
    let mut rows: Vec<_> = body["uses"]
        .as_array()
        .expect("uses")
        .iter()
        .map(|u| {
            (
                u["client"].as_str().unwrap_or_default().to_string(),
                u["user"].as_str().unwrap_or_default().to_string(),
                u["database"].clone(),
            )
        })
        .collect();
    rows.sort_by_key(|r| format!("{r:?}"));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_tunnel_of_the_binary() {
    let (old, new) = (Mariadbd::start(), Mariadbd::start());
    for db in [&old, &new] {
        sql(
            db.addr(),
            "root",
            "",
            None,
            "CREATE DATABASE shopdb; CREATE DATABASE blogdb;
             CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'apppw';
             CREATE USER 'report'@'127.0.0.1' IDENTIFIED BY 'reportpw';
             GRANT ALL ON shopdb.* TO 'app'@'127.0.0.1';
             GRANT SELECT ON blogdb.* TO 'report'@'127.0.0.1';",
        )
        .expect("seed");
    }
    let dir = workdir();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = router_config("dc2", "observed_uses_file = \"observed_uses.jsonl\"")
        + &tunnel("sql002", listen, old.addr(), "server = \"sql002-1\"");
    let ferry = Ferry::start(dir.path(), &config);
    let admin = Admin::new(ferry.admin);

    // (a) Queries through the tunnel, as two users, one without a database.
    assert_eq!(
        sql(listen, "app", "apppw", Some("shopdb"), "SELECT 1"),
        Ok("1".into())
    );
    assert_eq!(
        sql(listen, "report", "reportpw", Some("blogdb"), "SELECT 2"),
        Ok("2".into())
    );
    assert_eq!(
        sql(listen, "app", "apppw", None, "SELECT 3"),
        Ok("3".into())
    );
    assert!(sql(listen, "app", "nope", Some("shopdb"), "SELECT 1").is_err());

    // (b) Exactly those logins (the refused one is not a use).
    assert_eq!(
        uses(&admin, "sql002").await,
        vec![
            ("127.0.0.1".into(), "app".into(), Value::Null),
            ("127.0.0.1".into(), "app".into(), json!("shopdb")),
            ("127.0.0.1".into(), "report".into(), json!("blogdb")),
        ]
    );
    // The router writes the file by itself; `ferry inventory check` takes it.
    let file = dir.path().join("observed_uses.jsonl");
    let wait = Deadline::new("the observed uses file", Duration::from_secs(10));
    let written = loop {
        match std::fs::read_to_string(&file) {
            Ok(t) if t.lines().count() == 2 => break t,
            _ => wait.tick().await,
        }
    };
    let lines: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"database": "blogdb@sql002-1", "client": "127.0.0.1"}),
            json!({"database": "shopdb@sql002-1", "client": "127.0.0.1"}),
        ]
    );
    let inv = workdir();
    for (name, content) in [
        ("datacenters.jsonl", "{\"name\":\"dc1\"}\n"),
        ("clusters.jsonl", "{\"name\":\"c1\",\"datacenter\":\"dc1\"}\n"),
        ("db_servers.jsonl", "{\"name\":\"sql002-1\",\"cluster\":\"c1\"}\n"),
        (
            "databases.jsonl",
            "{\"name\":\"shopdb\",\"server\":\"sql002-1\",\"bytes\":1}\n{\"name\":\"blogdb\",\"server\":\"sql002-1\",\"bytes\":1}\n",
        ),
        ("observed_uses.jsonl", written.as_str()),
    ] {
        std::fs::write(inv.path().join(name), content).expect("inventory file");
    }
    let check = Command::new(FERRY)
        .args(["inventory", "check"])
        .arg(inv.path())
        .output()
        .expect("ferry inventory check");
    assert!(
        check.status.success(),
        "inventory check refused the observed uses:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // (c) Re-point: a session opened before stays on the old server.
    let mut before = Session::open(listen);
    assert_eq!(before.port(), old.port);
    let (status, body) = admin
        .put(
            "/v1/tunnels/sql002",
            &json!({"upstream": new.addr().to_string()}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sql(listen, "root", "", None, "SELECT @@port"),
        Ok(new.port.to_string())
    );
    assert_eq!(before.port(), old.port, "the open session was moved or cut");
    let (_, list) = admin.get("/v1/tunnels").await;
    assert_eq!(list["tunnels"][0]["upstream"], new.addr().to_string());

    // (d) A client that is not MySQL: forwarded, closed by the server,
    // counted as unobserved; the router carries on.
    let mut s = tokio::net::TcpStream::connect(listen)
        .await
        .expect("connect");
    let mut greeting = [0u8; 4];
    s.read_exact(&mut greeting)
        .await
        .expect("greeting passes through");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    let wait = Deadline::new("the unobserved login", Duration::from_secs(10));
    loop {
        let (_, t) = admin.get("/v1/tunnels/sql002").await;
        if t["logins"]["unobserved"] == 1 {
            break;
        }
        wait.tick().await;
    }
    assert_eq!(
        sql(listen, "app", "apppw", Some("shopdb"), "SELECT 4"),
        Ok("4".into())
    );
    let (status, err) = admin
        .put("/v1/tunnels/sql002", &json!({"upstream": "no-port"}))
        .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("upstream:"),
        "{err}"
    );
    let (status, _) = admin
        .put("/v1/tunnels/other", &json!({"upstream": "h:1"}))
        .await;
    assert_eq!(status, 404);
    // Only the session opened before the re-point is still open.
    drop(s);
    let wait = Deadline::new("one open tunnel connection", Duration::from_secs(10));
    while !admin
        .metrics()
        .await
        .contains("ferry_tunnel_open_connections{tunnel=\"sql002\"} 1")
    {
        wait.tick().await;
    }

    // A bad tunnel in a config: refused at its line, exit 2.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        router_config("dc2", "") + &tunnel("t", listen, old.addr(), "observe = \"yes\""),
    )
    .expect("bad config");
    let out = Command::new(FERRY)
        .args(["proxy", "--check", "--config"])
        .arg(&bad)
        .output()
        .expect("ferry proxy --check");
    assert_eq!(out.status.code(), Some(2));
    let text = std::fs::read_to_string(&bad).expect("read");
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("observe"))
        .expect("line");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("bad.toml:{line}:")), "{stderr}");

    drop(before);
    assert!(ferry.terminate().success());
}
