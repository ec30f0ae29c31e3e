//! The netns module against the real kernel: two namespaces joined by a
//! shaped link carry a TCP exchange (with the latency netem adds), and
//! every namespace is gone once its guard is dropped, a process started
//! inside included. CI runs as root; without root these tests fail (they
//! are the proof the rehearsal cleans up, not an optional extra).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ferry_rehearse::netns::{self, End, Link, Namespace, Netem};

/// Test namespaces: `ferrytest-<pid>-<role>`, so a concurrent rehearsal's
/// are never touched.
const PREFIX: &str = "ferrytest";

fn require_root() {
    assert!(
        netns::is_root(),
        "these tests create network namespaces: run them as root (CI does)"
    );
}

/// This process's namespaces with one of these roles (the tests run in
/// parallel: each looks at its own).
fn mine(roles: &[&str]) -> Vec<String> {
    let me = format!("{PREFIX}-{}-", std::process::id());
    netns::list(PREFIX)
        .unwrap()
        .into_iter()
        .filter(|n| n.strip_prefix(&me).is_some_and(|r| roles.contains(&r)))
        .collect()
}

#[test]
fn a_shaped_link_carries_tcp_and_namespaces_are_removed_on_drop() {
    require_root();
    let a = Namespace::create(PREFIX, "a").unwrap();
    let b = Namespace::create(PREFIX, "b").unwrap();
    let link = Link::veth(
        End {
            ns: &a,
            dev: "wan",
            addr: Ipv4Addr::new(10, 213, 9, 1),
            prefix_len: 24,
        },
        End {
            ns: &b,
            dev: "wan",
            addr: Ipv4Addr::new(10, 213, 9, 2),
            prefix_len: 24,
        },
    )
    .unwrap();
    let applied = link
        .shape(&Netem {
            delay: Duration::from_millis(20),
            rate_bits: Some(100_000_000),
            loss_percent: 0.0,
        })
        .unwrap();
    // A kernel without netem still gets the rate (tbf), and says so.
    assert!(["netem", "tbf"].contains(&applied.qdisc), "{applied:?}");
    assert_eq!(applied.rate_bits, Some(100_000_000));
    let qdiscs = a.ip(&["link"]).and_then(|_| {
        std::process::Command::new("tc")
            .args(["-n", a.name(), "qdisc", "show", "dev", "wan"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .map_err(|e| panic!("tc: {e}"))
    });
    assert!(qdiscs.unwrap().contains(applied.qdisc));
    assert_eq!(mine(&["a", "b"]).len(), 2);

    // A listener in b; a process in b that stays (it must die with b).
    let listener = b
        .run(|| TcpListener::bind("10.213.9.2:7000"))
        .unwrap()
        .unwrap();
    let mut sleeper = b.command("sleep").arg("600").spawn().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    // From a: connect and ping-pong; one round trip is at least 2 x 20 ms.
    let rtt = a
        .run(|| {
            let mut c = TcpStream::connect_timeout(
                &SocketAddr::from(([10, 213, 9, 2], 7000)),
                Duration::from_secs(10),
            )
            .unwrap();
            let t0 = Instant::now();
            c.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"ping");
            t0.elapsed()
        })
        .unwrap();
    server.join().unwrap();
    // With netem, one round trip is at least 2 x 20 ms.
    assert!(rtt >= applied.delay * 2, "rtt {rtt:?}, {applied:?}");
    // The addresses exist only inside: the host has none of them (no probe
    // is sent from the host: its network is not ours to use).
    let host = std::process::Command::new("ip")
        .args(["-o", "addr"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&host.stdout).contains("10.213.9."));

    drop(link);
    drop(a);
    drop(b);
    assert_eq!(mine(&["a", "b"]), Vec::<String>::new());
    // The process inside was killed with its namespace.
    let status = sleeper.wait().unwrap();
    assert!(!status.success());
}

#[test]
fn a_runtime_lives_in_its_namespace() {
    require_root();
    let ns = Namespace::create(PREFIX, "rt").unwrap();
    let rt = ns.runtime(1).unwrap();
    // Only the namespace's loopback exists there: no 10.213.x address, and
    // binding one fails, while 127.0.0.1 works.
    let (lo, other) = rt.block_on(async {
        tokio::spawn(async {
            (
                tokio::net::TcpListener::bind("127.0.0.1:0").await.is_ok(),
                tokio::net::TcpListener::bind("10.213.9.1:0").await.is_ok(),
            )
        })
        .await
        .unwrap()
    });
    assert!(lo && !other);
    let links = ns.ip(&["-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
    drop(rt);
    drop(ns);
    assert_eq!(mine(&["rt"]), Vec::<String>::new());
}

#[test]
fn stale_namespaces_of_dead_pids_are_removed() {
    require_root();
    // A pid that is not running: beyond pid_max's default range.
    let dead = format!("{PREFIX}-4194303-x");
    let out = std::process::Command::new("ip")
        .args(["netns", "add", &dead])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let live = Namespace::create(PREFIX, "live").unwrap();
    let removed = netns::remove_stale(PREFIX).unwrap();
    assert!(removed.contains(&dead), "{removed:?}");
    assert!(!removed.iter().any(|n| n == live.name()));
    assert!(!netns::list(PREFIX).unwrap().contains(&dead));
    assert_eq!(mine(&["live"]), vec![live.name().to_string()]);
}
