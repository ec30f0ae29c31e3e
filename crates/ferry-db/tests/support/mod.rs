//! Test harness: real `mariadbd` servers in temporary directories on free
//! loopback ports, with GTID binary logs on. Each [`MariaDb`] is killed
//! (by its pid) and its directory removed when dropped.
//!
//! Reusable by any crate's tests: copy nothing, `#[path]` this module in.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

/// How a test server's GTIDs are set up.
#[derive(Clone, Copy, Debug)]
pub struct Gtid {
    pub domain: u32,
    pub strict: bool,
}

impl Gtid {
    /// A stock MariaDB server: every server writes in domain 0 and strict
    /// mode is off, as a datacenter's servers are unless someone changed it.
    pub const STOCK: Gtid = Gtid {
        domain: 0,
        strict: false,
    };
}

/// One running server. Root has no password and may log in over TCP from
/// 127.0.0.1.
pub struct MariaDb {
    child: Child,
    pub port: u16,
    pub server_id: u32,
    dir: tempfile::TempDir,
}

static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The server binaries: PATH first, then where Debian puts `mariadbd`
/// (/usr/sbin is not on every PATH).
fn program(name: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found: install Debian's mariadb-server and mariadb-client");
}

impl MariaDb {
    /// Installs a fresh data directory and starts a server with `server_id`
    /// (also its GTID domain: servers of one test never share a domain, as
    /// multi-source replication wants), ready for connections.
    pub async fn start(server_id: u32) -> MariaDb {
        MariaDb::start_with(
            server_id,
            Gtid {
                domain: server_id,
                strict: true,
            },
        )
        .await
    }

    /// A server with `server_id` and the GTID settings `gtid`
    /// ([`Gtid::STOCK`]: as installed, domain 0 and no strict mode).
    pub async fn start_with(server_id: u32, gtid: Gtid) -> MariaDb {
        let mut dir = tempfile::Builder::new()
            .prefix("ferry-mariadb-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("tmp")).expect("tmp dir");
        // Concurrent bootstraps were seen to trip over each other's
        // temporary tables: one at a time, each with its own tmpdir.
        let guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
        let out = Command::new(program("mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--user=root")
            .arg("--skip-test-db")
            .arg(format!("--tmpdir={}", dir.path().join("tmp").display()))
            .output()
            .expect("run mariadb-install-db");
        drop(guard);
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A free port can be taken between our probe and the server's bind:
        // try a few.
        for _ in 0..3 {
            let port = free_port();
            let data = dir.path().join("data");
            let child = Command::new(program("mariadbd"))
                .arg("--no-defaults")
                .arg("--user=root")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", dir.path().join("sock").display()))
                .arg(format!("--tmpdir={}", dir.path().join("tmp").display()))
                .arg(format!("--pid-file={}", dir.path().join("pid").display()))
                .arg(format!(
                    "--log-error={}",
                    dir.path().join("error.log").display()
                ))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg("--skip-name-resolve")
                .arg("--log-bin=binlog")
                .arg(format!("--server-id={server_id}"))
                .arg(format!("--gtid-domain-id={}", gtid.domain))
                .arg("--binlog-format=ROW")
                .arg(format!("--gtid-strict-mode={}", u8::from(gtid.strict)))
                // Replication connections start only when the mover says so
                // (filters are set at each start).
                .arg("--skip-slave-start")
                // Small and fast: a test server, not a durable one.
                .arg("--innodb-buffer-pool-size=64M")
                .arg("--innodb-log-file-size=32M")
                .arg("--innodb-flush-log-at-trx-commit=2")
                .arg("--sync-binlog=0")
                .arg("--performance-schema=OFF")
                .arg("--max-connections=300")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn mariadbd");
            let mut db = MariaDb {
                child,
                port,
                server_id,
                dir,
            };
            if db.wait_ready(Duration::from_secs(60)).await {
                return db;
            }
            let log = db.error_log();
            let _ = db.child.kill();
            let _ = db.child.wait();
            if !log.contains("Address already in use") {
                panic!("mariadbd {server_id} did not start:\n{log}");
            }
            dir = tempfile::Builder::new()
                .prefix("ferry-mariadb-")
                .tempdir()
                .expect("temp dir");
            // Reuse the installed data directory.
            for d in ["data", "tmp"] {
                std::fs::rename(db.dir.path().join(d), dir.path().join(d)).expect("move data dir");
            }
        }
        panic!("mariadbd {server_id}: no free port after 3 tries");
    }

    /// Polls with real connections (bounded): ready means a login works.
    async fn wait_ready(&mut self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(c) = Conn::new(Opts::from_url(&self.url()).expect("url")).await {
                let _ = c.disconnect().await;
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("mysql://{user}:{password}@127.0.0.1:{}", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// A root connection.
    pub async fn conn(&self) -> Conn {
        let opts = mysql_async::OptsBuilder::from_opts(Opts::from_url(&self.url()).expect("url"))
            .prefer_socket(false);
        Conn::new(opts).await.expect("root connection")
    }

    /// A connection as `user`, or the server's refusal.
    pub async fn conn_as(&self, user: &str, password: &str) -> Result<Conn, mysql_async::Error> {
        let opts = mysql_async::OptsBuilder::from_opts(
            Opts::from_url(&self.url_as(user, password)).expect("url"),
        )
        .prefer_socket(false);
        Conn::new(opts).await
    }

    /// Runs `sql` (several statements allowed) as root.
    pub async fn exec(&self, sql: &str) {
        let mut c = self.conn().await;
        c.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = c.disconnect().await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // Our own child, by pid: nothing else is touched.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
