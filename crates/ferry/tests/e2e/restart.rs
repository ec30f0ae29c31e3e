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

/// `[router] sites_file` loads before the listeners open: the first answer
/// already routes the file's sites. Without a `store`, the admin API's
/// changes apply but a restart forgets them and begins from the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sites_file_routes_from_the_first_answer_and_no_store_forgets_api_changes() {
    let dir = workdir();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut list = String::from("# host placement [state] [epoch]\n");
    for i in 0..5000 {
        list += &format!("s{i}.test pool:a\n");
    }
    list += "listed.test pool:a active 3\nclosed.test\tpool:b maintenance\n";
    std::fs::write(dir.path().join("sites.txt"), &list).unwrap();
    let config = router_config("dc1", "sites_file = \"sites.txt\"")
        + &pool("a", &[("a1", a.addr)])
        + &pool("b", &[("b1", b.addr)]);
    let ferry = Ferry::start(dir.path(), &config);
    let http = client::http1();
    let get = |host: &'static str| client::get(&http, ferry.addr(), host, "/");
    assert_eq!(get("s4999.test").await.unwrap().backend(), Some("a"));
    assert_eq!(get("listed.test").await.unwrap().backend(), Some("a"));
    assert_eq!(get("closed.test").await.unwrap().status, 503);
    let admin = Admin::new(ferry.admin);
    admin.set_site("listed.test", "pool:b", "active", 4).await;
    admin.set_site("added.test", "pool:b", "active", 1).await;
    assert_eq!(get("listed.test").await.unwrap().backend(), Some("b"));
    assert_eq!(get("added.test").await.unwrap().backend(), Some("b"));
    assert!(ferry.terminate().success());

    let ferry = Ferry::start_file(&dir.path().join("proxy.toml"));
    let admin = Admin::new(ferry.admin);
    let s = admin.site("listed.test").await;
    assert_eq!(
        (s["placement"].as_str(), s["epoch"].as_u64()),
        (Some("pool:a"), Some(3)),
        "back to the file's record: {s}"
    );
    let (status, _) = admin.get("/v1/sites/added.test").await;
    assert_eq!(status, 404, "an API site is forgotten without a store");
    let http = client::http1();
    let reply = client::get(&http, ferry.addr(), "listed.test", "/").await;
    assert_eq!(reply.unwrap().backend(), Some("a"));
    assert!(ferry.terminate().success());

    // A bad line refuses --check and the start alike, naming file:line:col.
    std::fs::write(
        dir.path().join("sites.txt"),
        list + "gone.test pool:nowhere\n",
    )
    .unwrap();
    let line = 5000 + 4;
    for args in [
        &["proxy", "--check", "--config"][..],
        &["proxy", "--config"][..],
    ] {
        let out = std::process::Command::new(crate::support::procs::FERRY)
            .args(args)
            .arg(dir.path().join("proxy.toml"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "sites.txt:{line}:11: site gone.test: placement pool:nowhere"
            )),
            "{args:?}: {stderr}"
        );
    }
}
