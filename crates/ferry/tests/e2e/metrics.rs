//! Prometheus metrics on the admin address: the token is needed (they name
//! pools, servers and database nodes), the documented series are there, and
//! they move with traffic.

use crate::support::client;
use crate::support::{metric, pool, router_config, site, workdir, Admin, Ferry, Nginx};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token_and_count_traffic() {
    let dir = workdir();
    let web = Nginx::start("web");
    let config = router_config("dc1", "")
        + &pool("web", &[("s1", web.addr())])
        + &site("www.metrics.test", "pool:web", "")
        + &site("down.metrics.test", "pool:web", "state = \"maintenance\"");
    let ferry = Ferry::start(dir.path(), &config);
    let admin = Admin::new(ferry.admin);

    let (status, _) = admin.call_as(None, http::Method::GET, "/metrics", "").await;
    assert_eq!(status, 401, "/metrics without the token");
    let (status, _) = admin
        .call_as(Some("Bearer wrong"), http::Method::GET, "/metrics", "")
        .await;
    assert_eq!(status, 401, "/metrics with a wrong token");
    let (status, _) = admin.call_as(None, http::Method::GET, "/healthz", "").await;
    assert_eq!(status, 200, "/healthz stays open for load balancers");

    let before = admin.metrics().await;
    for name in [
        "ferry_requests_total",
        "ferry_sites",
        "ferry_server_up",
        "ferry_held_requests",
        "ferry_in_flight_requests",
    ] {
        assert!(
            before.contains(&format!("\n# TYPE {name} ")),
            "/metrics has {name}:\n{before}"
        );
    }
    assert_eq!(metric(&before, "ferry_sites"), Some(2.0));
    assert_eq!(
        metric(&before, r#"ferry_server_up{pool="web",server="s1"}"#),
        Some(1.0)
    );

    let http = client::http1();
    for _ in 0..5 {
        let r = client::get(&http, ferry.addr(), "www.metrics.test", "/")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let r = client::get(&http, ferry.addr(), "nowhere.test", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 404, "no site and no default: {r:?}");
    let r = client::get(&http, ferry.addr(), "down.metrics.test", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 503);

    let after = admin.metrics().await;
    let moved = |series: &str| {
        metric(&after, series).unwrap_or(0.0) - metric(&before, series).unwrap_or(0.0)
    };
    assert_eq!(
        moved(r#"ferry_requests_total{class="2xx",state="active"}"#),
        5.0
    );
    assert_eq!(
        moved(r#"ferry_requests_total{class="4xx",state="none"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"ferry_requests_total{class="5xx",state="maintenance"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"ferry_upstream_duration_seconds_count{pool="web"}"#),
        5.0
    );
    assert_eq!(
        metric(
            &after,
            r#"ferry_upstream_duration_seconds_bucket{pool="web",le="+Inf"}"#
        ),
        Some(5.0),
        "{after}"
    );
    assert!(after.contains("ferry_upstream_duration_seconds_bucket{pool=\"web\",le=\"0.001\"}"));
    assert_eq!(web.requests_at_least(5).len(), 5);
}
