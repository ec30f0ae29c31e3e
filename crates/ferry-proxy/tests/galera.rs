//! The Galera node check on a real 3-node Galera cluster (Debian's
//! `galera-4`) on loopback: `ferry_proxy::galera_state` and `usable` (every
//! node reads Synced, then a desynced node reads Donor/Desynced and is not
//! usable), and a `ferry proxy` tunnel with `[tunnels.galera]` in front of
//! the cluster: new connections leave a desynced node for the next usable
//! one and come back when it is Synced again, open ones are not cut. A
//! missing Galera library fails the test (scripts/test.sh installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_proxy::{galera_state, usable, WsrepState};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

const PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn program(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: install mariadb-server"))
}

/// One Galera node: its own data directory and four ports (SQL, group
/// communication, incremental and full state transfer). Killed by pid on drop.
struct Node {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Node {
    fn install() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("ferry-galera-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("tmp")).expect("tmp");
        let out = Command::new(program("mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--user=root")
            .arg("--skip-test-db")
            .arg(format!("--tmpdir={}", dir.path().join("tmp").display()))
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The joiner's state transfer is received by an rsync daemon that
        // wsrep_sst_rsync starts without a `uid` line: run as root, rsync
        // then drops to `nobody`, who must be able to write the data
        // directory (a private temporary one: opening it up is harmless).
        open_up(dir.path());
        Node {
            child: None,
            dir,
            port: free_port(),
        }
    }

    fn start(&mut self, i: usize, gcomm: &[u16], ist: u16, sst: u16, bootstrap: bool) {
        let d = self.dir.path();
        let cluster: Vec<String> = gcomm.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut cmd = Command::new(program("mariadbd"));
        cmd.arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--tmpdir={}", d.join("tmp").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg("--skip-name-resolve")
            .arg("--binlog-format=ROW")
            .arg("--default-storage-engine=InnoDB")
            .arg("--innodb-autoinc-lock-mode=2")
            .arg("--innodb-buffer-pool-size=64M")
            .arg("--innodb-flush-log-at-trx-commit=2")
            .arg("--performance-schema=OFF")
            .arg("--wsrep-on=ON")
            .arg(format!("--wsrep-provider={PROVIDER}"))
            .arg("--wsrep-cluster-name=ferry-test")
            .arg(format!("--wsrep-node-name=node{i}"))
            .arg(format!(
                "--wsrep-cluster-address=gcomm://{}",
                cluster.join(",")
            ))
            .arg(format!("--wsrep-node-address=127.0.0.1:{}", gcomm[i]))
            .arg(format!(
                "--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{};ist.recv_addr=127.0.0.1:{ist}",
                gcomm[i]
            ))
            .arg(format!("--wsrep-sst-receive-address=127.0.0.1:{sst}"))
            .arg("--wsrep-sst-method=rsync")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if bootstrap {
            cmd.arg("--wsrep-new-cluster");
        }
        self.child = Some(cmd.spawn().expect("spawn mariadbd"));
    }

    fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the node answers and reads Synced.
    async fn wait_synced(&mut self, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("node on {} exited ({st})", self.port));
            }
            if let Ok(n) = galera_state(&self.url()).await {
                if n.state == WsrepState::Synced {
                    return Ok(());
                }
            }
            if started.elapsed() > limit {
                return Err(format!("node on {} not Synced after {limit:?}", self.port));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn open_up(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(p).expect("stat");
    let mode = if meta.is_dir() { 0o777 } else { 0o666 };
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    if meta.is_dir() {
        for e in std::fs::read_dir(p).expect("read_dir") {
            open_up(&e.expect("entry").path());
        }
    }
}

/// The lines that explain a failed join: errors and state transfer.
fn tail(s: &str) -> String {
    let lines: Vec<&str> = s
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("SST") || l.contains("rsync"))
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desynced_node_is_taken_out_of_a_synced_cluster() {
    // scripts/test.sh installs Debian's galera-4; a missing provider is a
    // broken test machine, not a reason to skip.
    assert!(
        Path::new(PROVIDER).is_file(),
        "{PROVIDER} missing: apt-get install galera-4 (scripts/test.sh does)"
    );
    let mut nodes: Vec<Node> = (0..3).map(|_| Node::install()).collect();
    let gcomm: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for i in 0..3 {
        let (ist, sst) = (free_port(), free_port());
        nodes[i].start(i, &gcomm, ist, sst, i == 0);
        // One at a time: a joiner needs a synced donor for its state transfer.
        if let Err(e) = nodes[i].wait_synced(Duration::from_secs(120)).await {
            let logs: Vec<String> = nodes[..=i]
                .iter()
                .enumerate()
                .map(|(j, n)| format!("--- node{j} error log ---\n{}", tail(&n.log())))
                .collect();
            panic!("{e}\n{}", logs.join("\n"));
        }
    }
    for n in &nodes {
        let s = galera_state(&n.url()).await.unwrap();
        assert_eq!(s.state, WsrepState::Synced, "{s:?}");
        assert_eq!(s.cluster_status, "Primary", "{s:?}");
        assert_eq!(s.cluster_size, 3, "{s:?}");
        assert!(s.ready && usable(&s, false), "{s:?}");
    }
    // A write on one node is seen on another: a real cluster, not three
    // lone bootstraps.
    let mut c0 = Conn::new(Opts::from_url(&nodes[0].url()).unwrap())
        .await
        .unwrap();
    c0.query_drop(
        "CREATE DATABASE g; CREATE TABLE g.t (id INT PRIMARY KEY); INSERT INTO g.t VALUES (1)",
    )
    .await
    .unwrap();
    let mut c2 = Conn::new(Opts::from_url(&nodes[2].url()).unwrap())
        .await
        .unwrap();
    let n: Option<u64> = c2.query_first("SELECT COUNT(*) FROM g.t").await.unwrap();
    assert_eq!(n, Some(1));

    let mut c1 = Conn::new(Opts::from_url(&nodes[1].url()).unwrap())
        .await
        .unwrap();
    c1.query_drop("SET GLOBAL wsrep_desync = ON").await.unwrap();
    let s = galera_state(&nodes[1].url()).await.unwrap();
    assert_eq!(s.state, WsrepState::DonorDesynced, "{s:?}");
    assert!(!usable(&s, false), "{s:?}");
    assert!(usable(&s, true), "{s:?}");
    for i in [0, 2] {
        let o = galera_state(&nodes[i].url()).await.unwrap();
        assert!(usable(&o, false), "node {i}: {o:?}");
    }
    c1.query_drop("SET GLOBAL wsrep_desync = OFF")
        .await
        .unwrap();
    let started = Instant::now();
    while galera_state(&nodes[1].url()).await.unwrap().state != WsrepState::Synced {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node 1 did not resync"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A server without Galera is an error, not a healthy node: node 0's
    // URL on a port nobody listens on fails to connect.
    assert!(
        galera_state(&format!("mysql://root@127.0.0.1:{}", free_port()))
            .await
            .is_err()
    );

    // A tunnel in front of the cluster, node 1 preferred.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[router]\nname = \"dc2\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"galera-test-token\"\n\
             [[listener]]\nlisten = \"127.0.0.1:0\"\n\
             [[tunnels]]\nname = \"shop\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:{}\"\n\
             [tunnels.galera]\nnodes = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\nuser = \"root\"\ninterval = \"200ms\"\n",
            nodes[1].port, nodes[0].port, nodes[2].port
        ),
    )
    .unwrap();
    let proxy = ferry_proxy::Proxy::start(ferry_config::load(&path).unwrap(), Some(path))
        .await
        .unwrap();
    let tunnel = proxy.tunnel_addr("shop").unwrap();
    assert_eq!(port_through(tunnel).await, nodes[1].port);
    let mut held = through(tunnel).await;

    c1.query_drop("SET GLOBAL wsrep_desync = ON").await.unwrap();
    wait_port(tunnel, nodes[0].port, "node 1 desynced: node 0 next").await;
    // The connection opened before stays on node 1 and works.
    let p: Option<u16> = held.query_first("SELECT @@port").await.unwrap();
    assert_eq!(p, Some(nodes[1].port));

    c1.query_drop("SET GLOBAL wsrep_desync = OFF")
        .await
        .unwrap();
    wait_port(tunnel, nodes[1].port, "node 1 synced again: back to it").await;
    let metrics = metrics(proxy.admin_addr().unwrap()).await;
    assert!(
        metrics.contains(&format!(
            "ferry_tunnel_galera_node_usable{{tunnel=\"shop\",node=\"127.0.0.1:{}\"}} 1",
            nodes[1].port
        )),
        "{metrics}"
    );
}

/// `GET /metrics` from the router's admin listener.
async fn metrics(admin: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer galera-test-token\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn through(tunnel: std::net::SocketAddr) -> Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(tunnel.ip().to_string())
        .tcp_port(tunnel.port())
        .user(Some("root"))
        .prefer_socket(false);
    Conn::new(opts)
        .await
        .expect("a connection through the tunnel")
}

async fn port_through(tunnel: std::net::SocketAddr) -> u16 {
    let mut c = through(tunnel).await;
    let p: Option<u16> = c.query_first("SELECT @@port").await.unwrap();
    let _ = c.disconnect().await;
    p.unwrap()
}

/// Opens connections through the tunnel until one lands on `port` (each
/// one is a real client's view), at most 30 s.
async fn wait_port(tunnel: std::net::SocketAddr, port: u16, what: &str) {
    let started = Instant::now();
    loop {
        let p = port_through(tunnel).await;
        if p == port {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: still on port {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
