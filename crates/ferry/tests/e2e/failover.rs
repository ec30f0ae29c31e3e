//! Tier failover with real nginx: the tier-0 server dies under a client loop,
//! tier 1 takes its traffic without one failed GET, and the traffic returns to
//! tier 0 once it is back and has passed `rise` health checks.

use std::time::Duration;

use crate::support::{router_config, site, workdir, Admin, Deadline, Ferry, Nginx, Traffic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier0_down_moves_traffic_to_tier1_without_a_failed_get_and_back() {
    let dir = workdir();
    let tier0 = Nginx::start("tier0");
    let tier1 = Nginx::start("tier1");
    let config = router_config("dc1", "")
        + &format!(
            r#"
[[pool]]
name = "web"

[pool.health]
path = "/healthz"
interval = "200ms"
# Generous: a slow answer on a busy CI machine must not count as a failure.
timeout = "2s"
rise = 2
fall = 2

[[pool.server]]
name = "t0"
address = "{}"
tier = 0

[[pool.server]]
name = "t1"
address = "{}"
tier = 1
"#,
            tier0.addr(),
            tier1.addr()
        )
        + &site("www.failover.test", "pool:web", "");
    let ferry = Ferry::start(dir.path(), &config);
    let admin = Admin::new(ferry.admin);
    let limit = Duration::from_secs(20);

    let traffic = Traffic::start(ferry.addr(), 2, vec!["www.failover.test".into()]);
    traffic
        .wait_for("tier 0 serving", limit, |s| s.from("tier0") >= 50)
        .await;
    assert_eq!(
        traffic.stats().from("tier1"),
        0,
        "tier 1 idle while tier 0 is up"
    );

    let port = tier0.port;
    drop(tier0); // SIGKILL: connections reset, the port refuses.
    let at_kill = traffic.stats();
    traffic
        .wait_for("tier 1 serving", limit, |s| s.from("tier1") >= 200)
        .await;
    let down = Deadline::new("GET /v1/pools to report t0 down", limit);
    while server_health(&admin, "t0").await != Some(false) {
        down.tick().await;
    }

    let tier0 = Nginx::start_on("tier0", port);
    let at_restart = traffic.stats();
    traffic
        .wait_for("traffic back on tier 0", limit, |s| {
            s.from("tier0") >= at_restart.from("tier0") + 50
        })
        .await;
    let stats = traffic.stop().await;

    assert_eq!(
        stats.failed,
        0,
        "failed GETs during failover: {:#?}\nrouter log:\n{}",
        stats.failures,
        ferry.stderr()
    );
    assert!(
        stats.from("tier1") > at_kill.from("tier1"),
        "tier 1 answered after the kill: {stats:?}"
    );
    assert_eq!(server_health(&admin, "t0").await, Some(true));
    assert!(
        tier0.requests().iter().any(|r| r.starts_with("GET /loop")),
        "the restarted tier-0 nginx logged the loop's requests"
    );
    println!(
        "failover: {} GETs, {} from tier 0, {} from tier 1, 0 failed",
        stats.total(),
        stats.from("tier0"),
        stats.from("tier1")
    );
}

/// `healthy` of a server of pool "web" as GET /v1/pools reports it.
async fn server_health(admin: &Admin, server: &str) -> Option<bool> {
    let (status, pools) = admin.get("/v1/pools").await;
    assert_eq!(status, 200, "{pools}");
    pools["pools"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "web")?["servers"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == server)?["healthy"]
        .as_bool()
}
