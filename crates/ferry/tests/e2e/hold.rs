//! Frozen sites: requests are held, not failed, and released to the placement
//! the site has when it is unfrozen; past `hold_max` they get 503 + Retry-After.

use std::time::Duration;

use crate::support::client::{self, HttpClient};
use crate::support::{metric, pool, router_config, site, workdir, Admin, Backend, Deadline, Ferry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_all_answered_by_the_new_placement() {
    let dir = workdir();
    let a = Backend::start("a");
    let b = Backend::start("b");
    let config = router_config("dc1", r#"hold_max = "60s""#)
        + &pool("a", &[("a1", a.addr)])
        + &pool("b", &[("b1", b.addr)])
        + &site("hold.test", "pool:a", "epoch = 1");
    let ferry = Ferry::start(dir.path(), &config);
    let admin = Admin::new(ferry.admin);
    let h1 = client::http1();
    let first = client::get(&h1, ferry.addr(), "hold.test", "/")
        .await
        .unwrap();
    assert_eq!(first.backend(), Some("a"));

    admin.set_site("hold.test", "pool:a", "frozen", 2).await;
    // Half over HTTP/1.1 (one connection each), half as h2c streams.
    let h2 = client::h2c();
    let addr = ferry.addr();
    let requests: Vec<_> = (0..30)
        .map(|i| {
            let http: HttpClient = if i % 2 == 0 { h1.clone() } else { h2.clone() };
            tokio::spawn(async move {
                client::get(&http, addr, "hold.test", &format!("/held/{i}")).await
            })
        })
        .collect();

    let deadline = Deadline::new("30 requests held", Duration::from_secs(20));
    loop {
        let s = admin.site("hold.test").await;
        if s["held"] == 30 {
            break;
        }
        deadline.tick().await;
    }
    assert!(
        requests.iter().all(|r| !r.is_finished()),
        "no held request was answered while the site was frozen"
    );

    admin.set_site("hold.test", "pool:b", "active", 3).await;
    for (i, r) in requests.into_iter().enumerate() {
        let reply = r
            .await
            .expect("request task")
            .unwrap_or_else(|e| panic!("held request {i} failed: {e}"));
        assert_eq!(reply.status, 200, "held request {i}: {reply:?}");
        assert_eq!(reply.backend(), Some("b"), "held request {i}: {reply:?}");
        assert_eq!(reply.body, format!("b /held/{i} 127.0.0.1\n"));
    }
    let s = admin.site("hold.test").await;
    assert_eq!(
        (s["held"].as_u64(), s["epoch"].as_u64()),
        (Some(0), Some(3)),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_past_hold_max_gets_503_with_retry_after() {
    let dir = workdir();
    let a = Backend::start("a");
    let config = router_config("dc1", "hold_max = \"1s\"\nretry_after = 4")
        + &pool("a", &[("a1", a.addr)])
        + &site("hold.test", "pool:a", "");
    let ferry = Ferry::start(dir.path(), &config);
    let admin = Admin::new(ferry.admin);
    admin.set_site("hold.test", "pool:a", "frozen", 1).await;

    let http = client::http1();
    let reply = client::get(&http, ferry.addr(), "hold.test", "/")
        .await
        .unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("4"), "{reply:?}");
    assert_eq!(reply.backend(), None, "{reply:?}");
    let m = admin.metrics().await;
    assert_eq!(
        metric(&m, "ferry_held_requests_total"),
        Some(1.0),
        "it was held"
    );
    assert_eq!(
        metric(&m, "ferry_hold_timeouts_total"),
        Some(1.0),
        "then timed out"
    );
    assert_eq!(admin.site("hold.test").await["held"], 0);
}

/// A request another router sent on before it froze a site is part of that
/// router's drain, so a frozen site's own pool takes it (both datacenters
/// freeze at once with records shared in etcd). Only a trusted listener
/// believes `ferry-via`: a client that claims to be a router on the public
/// listener is held like any other, so no client can write past a freeze.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_trusted_router_passes_a_freeze_and_only_to_a_local_pool() {
    let dir = workdir();
    let a = Backend::start("a");
    let peers = crate::support::free_port();
    let config = router_config("dc1", r#"hold_max = "1s""#)
        + &format!("\n[[listener]]\nlisten = \"127.0.0.1:{peers}\"\ntrusted = true\n")
        + "\n[[remote]]\nname = \"dc2\"\naddress = \"127.0.0.1:9\"\npools = [\"far\"]\n"
        + &pool("a", &[("a1", a.addr)])
        + &site("near.test", "pool:a", "epoch = 1")
        + &site("far.test", "pool:far", "epoch = 1");
    let ferry = Ferry::start(dir.path(), &config);
    let admin = Admin::new(ferry.admin);
    admin.set_site("near.test", "pool:a", "frozen", 2).await;
    admin.set_site("far.test", "pool:far", "frozen", 2).await;

    let public = format!("http://{}/liar", ferry.addr());
    let trusted = format!("http://127.0.0.1:{peers}/drain");
    let liar = client::curl(&["-H", "Host: near.test", "-H", "ferry-via: dc2", &public]).await;
    assert_eq!(
        liar.status, 503,
        "a client is held until hold_max: {liar:?}"
    );
    let plain = client::curl(&["-H", "Host: near.test", &trusted]).await;
    assert_eq!(plain.status, 503, "no ferry-via: held: {plain:?}");
    let drained = client::curl(&["-H", "Host: near.test", "-H", "ferry-via: dc2", &trusted]).await;
    assert_eq!(drained.status, 200, "sent on by dc2: {drained:?}");
    assert_eq!(drained.backend(), Some("a"), "{drained:?}");
    // Served in dc2: sending it back would bounce, so it waits for the flip.
    let far = client::curl(&["-H", "Host: far.test", "-H", "ferry-via: dc2", &trusted]).await;
    assert_eq!(far.status, 503, "{far:?}");
    assert!(drained.body.starts_with("a /drain "), "{drained:?}");
    for held in [&liar, &plain, &far] {
        assert!(
            held.body.contains("being moved"),
            "held, then 503: {held:?}"
        );
    }
}
