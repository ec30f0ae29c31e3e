//! Idle upstream connections: the router gives up on one before the server
//! does. When an upstream (another datacenter's router, nginx) was not
//! scheduled for a while (SIGSTOP here; a paused VM in the field), it wakes
//! with its keep-alive timers expired; a POST the router wrote meanwhile into
//! one of those idle connections races the server's close and cannot be
//! replayed: the client would get a 502 (the demo's `--fault stop-router`
//! saw this once every few runs for requests forwarded between datacenters).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::procs::{nginx_prefix, signal};
use crate::support::{free_port, pool, router_config, site, workdir, Deadline, Ferry, Nginx};

/// Longer than the router's reuse limit for idle upstream connections (4 s):
/// what the test is about is time passing while the upstreams cannot run.
const STALL: Duration = Duration::from_millis(5_500);

/// TCP sockets (local, peer) in `state` as `ss` lists them.
fn sockets(state: &str) -> Vec<(SocketAddr, SocketAddr, u64)> {
    let out = Command::new("ss")
        .args(["-Htn", "state", state])
        .output()
        .expect("running ss (apt-get install iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // Recv-Q Send-Q Local Peer (the state column is omitted with a filter).
            let f: Vec<&str> = line.split_whitespace().collect();
            let recv_q = f.first()?.parse().ok()?;
            Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?, recv_q))
        })
        .collect()
}

/// nginx answering POSTs, closing idle keep-alive connections after 1 s.
fn short_keepalive_nginx(name: &str) -> Nginx {
    let port = free_port();
    let dir = nginx_prefix(name);
    let http = format!(
        r#"access_log off;
    keepalive_timeout 1s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            return 200 "{name} $request_method $uri\n";
        }}
    }}"#
    );
    Nginx::run(name, port, dir, &http)
}

fn post(addr: SocketAddr, host: &str, path: &str) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", &format!("Host: {host}")])
        .args(["--data-binary", "order=1"])
        .arg(format!("http://{addr}{path}"))
        .stdout(Stdio::piped());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_after_a_stall_longer_than_the_upstreams_keepalive_is_not_lost() {
    let dir = workdir();
    let web = short_keepalive_nginx("ka-web");
    let upstream: SocketAddr = format!("127.0.0.1:{}", web.port).parse().unwrap();
    // Router B, a second datacenter's router with a short keep-alive of its own.
    let dir_b = workdir();
    let config_b = router_config("dc-b", "keepalive_timeout = \"1s\"")
        + &pool("web", &[("w1", upstream)])
        + &site("fwd.test", "pool:web", "");
    let b = Ferry::start(dir_b.path(), &config_b);
    let config_a = router_config("dc-a", "")
        + &format!("\n[[remote]]\nname = \"b\"\naddress = \"{}\"\n", b.addr())
        + &pool("web", &[("w1", upstream)])
        + &site("local.test", "pool:web", "")
        + &site("fwd.test", "remote:b", "");
    let a = Ferry::start(dir.path(), &config_a);

    // One POST each way leaves an idle upstream connection in A's pools:
    // A -> nginx (local pool) and A -> B (remote router).
    for host in ["local.test", "fwd.test"] {
        let out = post(a.addr(), host, "/warm").output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.ends_with("\n200"), "{host} warm-up: {text:?}");
    }

    // Both upstreams stop long enough for their keep-alive timers (1 s) to
    // expire and for A to stop trusting its idle connections to them.
    signal(web.pid(), "STOP");
    signal(b.pid, "STOP");
    tokio::time::sleep(STALL).await;
    // Two clients POST through A while its upstreams are still stopped: A
    // sends each request on, where the kernel queues it unread.
    let clients: Vec<_> = ["local.test", "fwd.test"]
        .iter()
        .map(|host| post(a.addr(), host, "/order").spawn().expect("curl"))
        .collect();
    let deadline = Deadline::new(
        "both POSTs queued at the stopped upstreams",
        Duration::from_secs(20),
    );
    loop {
        let queued = |addr: SocketAddr| {
            sockets("established")
                .iter()
                .any(|(local, _, recv_q)| *local == addr && *recv_q > 0)
        };
        if queued(upstream) && queued(b.addr()) {
            break;
        }
        deadline.tick().await;
    }
    signal(web.pid(), "CONT");
    signal(b.pid, "CONT");

    for (host, child) in ["local.test", "fwd.test"].iter().zip(clients) {
        let out = child.wait_with_output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.ends_with("\n200") && text.contains("POST /order"),
            "{host}: the POST sent during the stall got {text:?}; A's log:\n{}",
            a.stderr()
        );
    }
}
