//! Two routers: a site placed remote on both is refused with 508 instead of
//! bouncing; a remote forward reaches the other router's backend with the
//! original client address, over plain HTTP to a trusted listener or with a
//! PROXY v2 header. A placement that names a pool of the other datacenter
//! (`[[remote]] pools`, the form records shared in etcd take) is forwarded
//! there, and refused with 508 when it would bounce back.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::support::client::{self, curl, raw};
use crate::support::{free_port, metric, pool, router_config, site, workdir, Admin, Ferry, Nginx};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// A PROXY protocol v2 header for a TCP/IPv4 connection from `src` to `dst`.
fn proxy_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 only");
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // AF_INET, STREAM
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

struct Pair {
    a: Ferry,
    b: Ferry,
    /// B's listener that requires a PROXY v2 header.
    b_proxy_protocol: SocketAddr,
    web: Nginx,
    _dirs: [tempfile::TempDir; 2],
}

/// Router A (dc-a) forwards every site to router B (dc-b): `remote:b` to B's
/// trusted listener, `remote:bpp` to B's PROXY-protocol listener. B serves
/// fwd.test and fwdpp.test from its nginx, and places loop.test back on A.
fn start_pair() -> Pair {
    let (dir_a, dir_b) = (workdir(), workdir());
    let web = Nginx::start("b-web");
    // B's listeners must be known to A before B starts.
    let (trusted, pp) = (free_port(), free_port());
    let config_a = router_config("dc-a", "")
        + &format!(
            r#"
[[remote]]
name = "b"
address = "127.0.0.1:{trusted}"
pools = ["local"]

[[remote]]
name = "bpp"
address = "127.0.0.1:{pp}"
proxy_protocol = true
"#
        )
        + &site("loop.test", "remote:b", "")
        + &site("fwd.test", "remote:b", "")
        + &site("fwdpp.test", "remote:bpp", "")
        + &site("shared.test", "pool:local", "")
        + &site("pool-loop.test", "remote:b", "");
    let a = Ferry::start(dir_a.path(), &config_a);
    let config_b = router_config("dc-b", "")
        + &format!(
            r#"
[[listener]]
listen = "127.0.0.1:{trusted}"
trusted = true

[[listener]]
listen = "127.0.0.1:{pp}"
trusted = true
proxy_protocol = true

[[remote]]
name = "a"
address = "{}"
pools = ["a-web"]
"#,
            a.addr()
        )
        + &pool("local", &[("web", web.addr())])
        + &site("loop.test", "remote:a", "")
        + &site("fwd.test", "pool:local", "")
        + &site("fwdpp.test", "pool:local", "")
        + &site("shared.test", "pool:local", "")
        + &site("pool-loop.test", "pool:a-web", "");
    let b = Ferry::start(dir_b.path(), &config_b);
    Pair {
        a,
        b,
        b_proxy_protocol: SocketAddr::from(([127, 0, 0, 1], pp)),
        web,
        _dirs: [dir_a, dir_b],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_remote_on_both_routers_gets_508_not_a_loop() {
    let pair = start_pair();
    let url = format!("http://{}/", pair.a.addr());
    let r = curl(&["-H", "Host: loop.test", &url]).await;
    assert_eq!(r.status, 508, "{r:?}");
    let loops = |m: &str| metric(m, "ferry_loops_detected_total");
    let b_metrics = Admin::new(pair.b.admin).metrics().await;
    assert_eq!(loops(&b_metrics), Some(1.0), "B refused it, once");
    // A request naming the router itself in ferry-via is refused at once.
    let direct = format!("http://{}/", pair.b.addr());
    let r = curl(&["-H", "Host: fwd.test", "-H", "ferry-via: dc-b", &direct]).await;
    assert_eq!(r.status, 508, "{r:?}");
    assert!(pair.web.requests().is_empty(), "{:?}", pair.web.requests());
}

/// One record for both routers, as etcd shares it: `pool:local` is B's pool,
/// so A forwards to B and B serves it; `pool:a-web` on B goes back to A,
/// which already sent it: 508.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_the_other_datacenter_is_forwarded_there() {
    let pair = start_pair();
    let url = format!("http://{}/shared", pair.a.addr());
    let r = curl(&["-H", "Host: shared.test", &url]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), Some("b-web"), "{r:?}");
    let seen = pair.web.requests_at_least(1);
    assert!(seen[0].starts_with("GET /shared "), "{seen:?}");

    let url = format!("http://{}/", pair.a.addr());
    let r = curl(&["-H", "Host: pool-loop.test", &url]).await;
    assert_eq!(r.status, 508, "{r:?}");
    assert!(r.body.contains("placed in a by both routers"), "{r:?}");
    assert_eq!(pair.web.requests().len(), 1, "{:?}", pair.web.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_forward_keeps_the_original_client_address() {
    let pair = start_pair();
    let url = format!("http://{}/page", pair.a.addr());
    for host in ["fwd.test", "fwdpp.test"] {
        let r = curl(&[
            "--interface",
            "127.0.0.3",
            "-H",
            &format!("Host: {host}"),
            // Forged by the client: A must drop it, B must not see it.
            "-H",
            "X-Forwarded-For: 203.0.113.66",
            &url,
        ])
        .await;
        assert_eq!(r.status, 200, "{host}: {r:?}");
        assert_eq!(r.backend(), Some("b-web"), "{host}: {r:?}");
        assert_eq!(
            r.body, "b-web /page 127.0.0.3\n",
            "{host}: B's backend sees the client A saw"
        );
    }
    // A's Forwarded header crossed B's trusted listeners unchanged.
    let seen = pair.web.requests_at_least(2);
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (line, host) in seen.iter().zip(["fwd.test", "fwdpp.test"]) {
        assert_eq!(
            line,
            &format!("GET /page fwd=for=127.0.0.3;host={host};proto=http xff=127.0.0.3")
        );
    }

    // B's PROXY listener believes the header: the source it names is the client.
    let pp_addr = pair.b_proxy_protocol;
    let mut req = proxy_v2("198.51.100.7:40000".parse().unwrap(), pp_addr);
    req.extend_from_slice(b"GET /pp HTTP/1.1\r\nHost: fwd.test\r\nConnection: close\r\n\r\n");
    let r = raw(pp_addr, &req, Duration::from_secs(15)).await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert!(r.text.ends_with("b-web /pp 198.51.100.7\n"), "{}", r.text);
    // ... and serves nothing to a connection without one.
    let r = raw(
        pp_addr,
        b"GET /no-header HTTP/1.1\r\nHost: fwd.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(15),
    )
    .await;
    assert!(r.closed && r.text.is_empty(), "{r:?}");
    // B's public listener trusts nobody: forged headers are replaced.
    let stream = client::connect(pair.b.addr(), Some(CLIENT)).await;
    let r = client::raw_on(
        stream,
        b"GET /public HTTP/1.1\r\nHost: fwd.test\r\nX-Forwarded-For: 203.0.113.66\r\nConnection: close\r\n\r\n",
        Duration::from_secs(15),
    )
    .await;
    assert!(r.text.ends_with("b-web /public 127.0.0.3\n"), "{}", r.text);
    let seen = pair.web.requests();
    assert!(!seen.iter().any(|l| l.contains("/no-header")), "{seen:?}");
    assert!(!seen.iter().any(|l| l.contains("203.0.113.66")), "{seen:?}");
}
