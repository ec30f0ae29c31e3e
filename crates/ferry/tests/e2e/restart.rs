//! State that survives a restart: what the API set (placement, state, epoch)
//! is what a restarted router serves, not what its config says, unless the
//! config carries a newer epoch.

use crate::support::client;
use crate::support::{pool, router_config, site, workdir, Admin, Backend, Ferry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_changes_survive_sigterm_and_restart() {
    let dir = workdir();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let config = router_config("dc1", "store = \"state.db\"")
        + &pool("a", &[("a1", a.addr)])
        + &pool("b", &[("b1", b.addr)])
        + &site("moved.test", "pool:a", "epoch = 1")
        + &site("closed.test", "pool:a", "epoch = 1")
        + &site("overridden.test", "pool:a", "epoch = 1");
    let ferry = Ferry::start(dir.path(), &config);
    let admin = Admin::new(ferry.admin);
    admin.set_site("moved.test", "pool:b", "active", 7).await;
    admin
        .set_site("closed.test", "pool:b", "maintenance", 3)
        .await;
    admin
        .set_site("overridden.test", "pool:b", "active", 2)
        .await;
    admin.set_site("added.test", "pool:b", "active", 1).await;
    let status = ferry.terminate();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");

    // The operator raises one site's epoch in the config meanwhile: that one wins.
    let path = dir.path().join("proxy.toml");
    let edited = config.replace(
        "host = \"overridden.test\"\nplacement = \"pool:a\"\nepoch = 1",
        "host = \"overridden.test\"\nplacement = \"pool:a\"\nepoch = 20",
    );
    assert_ne!(edited, config);
    std::fs::write(&path, edited).unwrap();
    let ferry = Ferry::start_file(&path);
    let admin = Admin::new(ferry.admin);

    for (host, placement, state, epoch) in [
        ("moved.test", "pool:b", "active", 7),
        ("closed.test", "pool:b", "maintenance", 3),
        ("added.test", "pool:b", "active", 1),
        ("overridden.test", "pool:a", "active", 20),
    ] {
        let s = admin.site(host).await;
        assert_eq!(
            (
                s["placement"].as_str(),
                s["state"].as_str(),
                s["epoch"].as_u64()
            ),
            (Some(placement), Some(state), Some(epoch)),
            "{host} after the restart: {s}"
        );
    }
    let http = client::http1();
    let get = |host: &'static str| client::get(&http, ferry.addr(), host, "/");
    assert_eq!(get("moved.test").await.unwrap().backend(), Some("b"));
    assert_eq!(get("added.test").await.unwrap().backend(), Some("b"));
    assert_eq!(get("closed.test").await.unwrap().status, 503);
    assert_eq!(get("overridden.test").await.unwrap().backend(), Some("a"));

    // And the store is a real file, where the config said.
    assert!(dir.path().join("state.db").exists());
}
