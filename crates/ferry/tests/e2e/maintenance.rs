//! Maintenance: clients get 503, `Retry-After` and the site's page; an operator
//! address passes through to the backend.

use crate::support::client::curl;
use crate::support::{pool, router_config, site, workdir, Admin, Ferry, Nginx};

const DEFAULT_PAGE: &str = "<html><body>Back soon (router default page)</body></html>\n";
const OWN_PAGE: &str = "<html><body>own.maint.test is being upgraded</body></html>\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_answers_503_with_page_and_operators_pass() {
    let dir = workdir();
    std::fs::write(dir.path().join("maintenance.html"), DEFAULT_PAGE).unwrap();
    std::fs::write(dir.path().join("own.html"), OWN_PAGE).unwrap();
    let web = Nginx::start("web");
    let config = router_config(
        "dc1",
        r#"retry_after = 7
operator_networks = ["127.0.0.2"]
maintenance_page = "maintenance.html""#,
    ) + &pool("web", &[("s1", web.addr())])
        + &site("www.maint.test", "pool:web", "")
        + &site(
            "own.maint.test",
            "pool:web",
            "state = \"maintenance\"\nmaintenance_page = \"own.html\"",
        );
    let ferry = Ferry::start(dir.path(), &config);
    let admin = Admin::new(ferry.admin);
    let url = format!("http://{}/", ferry.addr());
    let www = "Host: www.maint.test";

    let before = curl(&["-H", www, &url]).await;
    assert_eq!(
        (before.status, before.backend()),
        (200, Some("web")),
        "{before:?}"
    );

    admin
        .set_site("www.maint.test", "pool:web", "maintenance", 1)
        .await;
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let r = curl(&[proto, "-H", www, &url]).await;
        assert_eq!(r.status, 503, "{proto}: {r:?}");
        assert_eq!(r.header("retry-after"), Some("7"), "{proto}: {r:?}");
        assert_eq!(
            r.body, DEFAULT_PAGE,
            "{proto}: the router's maintenance page"
        );
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("text/html")),
            "{r:?}"
        );
        assert_eq!(r.backend(), None, "no backend answered: {r:?}");
    }

    // The operator's address (a bare address in operator_networks) passes.
    let op = curl(&["--interface", "127.0.0.2", "-H", www, &url]).await;
    assert_eq!(op.status, 200, "operator: {op:?}");
    assert_eq!(op.body, "web / 127.0.0.2\n", "operator reaches the backend");

    // A site with its own page, in maintenance from the config.
    let own = curl(&["-H", "Host: own.maint.test", &url]).await;
    assert_eq!(own.status, 503, "{own:?}");
    assert_eq!(own.header("retry-after"), Some("7"));
    assert_eq!(own.body, OWN_PAGE, "the site's own page");

    admin
        .set_site("www.maint.test", "pool:web", "active", 2)
        .await;
    let after = curl(&["-H", www, &url]).await;
    assert_eq!(
        (after.status, after.body.as_str()),
        (200, "web / 127.0.0.1\n")
    );

    // nginx saw the requests that passed, never the refused ones.
    let seen = web.requests_at_least(3);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[1].ends_with("xff=127.0.0.2"), "{seen:?}");
}
