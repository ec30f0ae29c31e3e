//! Changes under load: while a client loop sends GETs across 1,000 sites, every
//! site is flipped between two pools 10 times (atomic batches, rising epochs)
//! and the config is edited and reloaded with SIGHUP 20 times. Not one request
//! may fail, and every site ends on the pool of the last flip.

use std::time::Duration;

use serde_json::json;

use crate::support::client;
use crate::support::{
    metric, pool, router_config, site, workdir, Admin, Backend, Deadline, Ferry, Traffic,
};

const SITES: usize = 1000;
const FLIPS: u64 = 10;
const RELOADS: usize = 20;

fn host(i: usize) -> String {
    format!("s{i:04}.load.test")
}

/// The pool of site `i` after flip `round` (0-based): half the sites move each way.
fn pool_after(i: usize, round: u64) -> &'static str {
    match (i as u64 + round) % 2 {
        0 => "b",
        _ => "a",
    }
}

/// The config with `extras` more sites and a `retry_after` that changes too.
fn config(a: &Backend, b: &Backend, extras: usize) -> String {
    let mut c = router_config("dc1", &format!("retry_after = {}", 10 + extras))
        + &pool("a", &[("a1", a.addr)])
        + &pool("b", &[("b1", b.addr)]);
    for i in 0..SITES {
        c += &site(&host(i), "pool:a", "epoch = 1");
    }
    for n in 0..extras {
        c += &site(&format!("extra{n}.load.test"), "pool:b", "");
    }
    c
}

/// The router, its two backends and the client loop of one run.
struct Bench {
    a: Backend,
    b: Backend,
    ferry: Ferry,
    admin: Admin,
    traffic: Traffic,
}

impl Bench {
    /// Moves every site to its pool of flip `round` (epoch `round + 2`) in one batch.
    async fn flip(&self, round: u64) {
        let sites: Vec<_> = (0..SITES)
            .map(|i| {
                json!({
                    "host": host(i),
                    "placement": format!("pool:{}", pool_after(i, round)),
                    "state": "active",
                    "epoch": round + 2,
                })
            })
            .collect();
        let (status, v) = self
            .admin
            .post("/v1/sites", &json!({ "sites": sites }))
            .await;
        assert_eq!(status, 200, "flip {round}: {v}");
        assert_eq!(v["changed"], SITES, "flip {round}: {v}");
        self.traffic.wait_progress(100).await;
    }

    /// Edits the config (one more site, another retry_after) and sends SIGHUP
    /// number `n`; waits until the added site shows the reload was applied.
    async fn reload(&self, n: usize) {
        let path = &self.ferry.config;
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, config(&self.a, &self.b, n)).unwrap();
        std::fs::rename(&tmp, path).unwrap();
        self.ferry.sighup();
        let added = format!("/v1/sites/extra{}.load.test", n - 1);
        let deadline = Deadline::new(format!("reload {n}"), Duration::from_secs(20));
        while self.admin.get(&added).await.0 != 200 {
            let refused = metric(&self.admin.metrics().await, "ferry_reload_failures_total");
            if deadline.passed() || refused != Some(0.0) {
                panic!(
                    "SIGHUP {n} was not applied; router log:\n{}",
                    self.ferry.stderr()
                );
            }
            deadline.tick().await;
        }
        self.traffic.wait_progress(50).await;
    }
}

/// Flips and reloads take turns while the client loop runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flips_and_reloads_under_load_fail_no_request() {
    changes_under_load(false).await;
}

/// Regression: a SIGHUP reload racing an API batch was refused with "stale
/// epoch" (the reload merged a snapshot of the runtime records taken before
/// the batch landed), so the edited config was never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_racing_api_flips_are_all_applied() {
    changes_under_load(true).await;
}

async fn changes_under_load(concurrent: bool) {
    let dir = workdir();
    let a = Backend::start("a");
    let b = Backend::start("b");
    let ferry = Ferry::start(dir.path(), &config(&a, &b, 0));
    let admin = Admin::new(ferry.admin);
    let traffic = Traffic::start(ferry.addr(), 3, (0..SITES).map(host).collect());
    traffic.wait_progress(200).await;
    let bench = Bench {
        a,
        b,
        ferry,
        admin,
        traffic,
    };
    if concurrent {
        let flips = async {
            for round in 0..FLIPS {
                bench.flip(round).await;
            }
        };
        let reloads = async {
            for n in 1..=RELOADS {
                bench.reload(n).await;
            }
        };
        tokio::join!(flips, reloads);
    } else {
        for n in 1..=RELOADS {
            bench.reload(n).await;
            if n % 2 == 0 {
                bench.flip((n / 2 - 1) as u64).await;
            }
        }
    }
    // The backends stay bound (and running) to the end of the test.
    let Bench {
        a: _a,
        b: _b,
        ferry,
        admin,
        traffic,
    } = bench;
    let stats = traffic.stop().await;
    println!(
        "changes under load: {} requests ({} from a, {} from b), {} failed",
        stats.total(),
        stats.from("a"),
        stats.from("b"),
        stats.failed
    );
    assert_eq!(
        stats.failed,
        0,
        "failed requests during flips and reloads: {:#?}\nrouter log:\n{}",
        stats.failures,
        ferry.stderr()
    );
    let m = admin.metrics().await;
    assert_eq!(
        metric(&m, "ferry_reloads_total"),
        Some(RELOADS as f64),
        "{m}"
    );
    assert_eq!(metric(&m, "ferry_reload_failures_total"), Some(0.0));

    // One more reload after the last flip: the config's epoch-1 records must not
    // undo what the API set.
    let (status, v) = admin.post("/v1/reload", &json!({})).await;
    assert_eq!(status, 200, "{v}");
    let http = client::http1();
    let last = FLIPS - 1;
    for i in 0..SITES {
        let r = client::get(&http, ferry.addr(), &host(i), "/")
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", host(i)));
        assert_eq!(
            (r.status, r.backend()),
            (200, Some(pool_after(i, last))),
            "{} after the last flip: {r:?}",
            host(i)
        );
    }
    let (_, list) = admin.get("/v1/sites?prefix=s&limit=2000").await;
    let listed = list["sites"].as_array().expect("site list");
    assert_eq!(listed.len(), SITES);
    assert!(
        listed.iter().all(|s| s["epoch"] == FLIPS + 1),
        "every site at the last flip's epoch"
    );
}
