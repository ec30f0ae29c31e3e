//! `ferry ctl` against a running router, configured by FERRY_ADMIN and
//! FERRY_ADMIN_TOKEN: reads, a change with the epoch filled in, and the exit
//! codes of a refused change (3) and of an unreachable router (1).

use serde_json::Value;

use crate::support::client;
use crate::support::procs::FERRY;
use crate::support::{
    free_port, pool, router_config, self_signed, site, workdir, Backend, Ferry, TOKEN,
};

struct Ctl {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ctl {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("ctl printed no JSON ({e}): {}", self.stdout))
    }
}

/// `ferry ctl --json ARGS...`.
async fn ctl(admin: &str, token: &str, args: &[&str]) -> Ctl {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    ctl_text(admin, token, &all).await
}

/// `ferry ctl ARGS...` (tables unless ARGS say --json).
async fn ctl_text(admin: &str, token: &str, args: &[&str]) -> Ctl {
    let out = tokio::process::Command::new(FERRY)
        .arg("ctl")
        .args(args)
        .env("FERRY_ADMIN", admin)
        .env("FERRY_ADMIN_TOKEN", token)
        .output()
        .await
        .expect("running ferry ctl");
    Ctl {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_reads_sets_and_reports_refusals_by_exit_code() {
    let dir = workdir();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let config = router_config("dc1", "")
        + &pool("a", &[("a1", a.addr)])
        + &pool("b", &[("b1", b.addr)])
        + &site("ctl.test", "pool:a", "epoch = 4");
    let ferry = Ferry::start(dir.path(), &config);
    let admin = format!("http://{}", ferry.admin);

    let status = ctl(&admin, TOKEN, &["status"]).await;
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    let s = status.json();
    assert_eq!(
        (s["name"].as_str(), s["sites"].as_u64()),
        (Some("dc1"), Some(1)),
        "{s}"
    );

    let get = ctl(&admin, TOKEN, &["sites", "get", "ctl.test"]).await;
    assert_eq!(get.code, Some(0), "{}", get.stderr);
    let g = get.json();
    assert_eq!(
        (g["placement"].as_str(), g["epoch"].as_u64()),
        (Some("pool:a"), Some(4))
    );

    let set = ctl(
        &admin,
        TOKEN,
        &["sites", "set", "ctl.test", "--placement", "pool:b"],
    )
    .await;
    assert_eq!(set.code, Some(0), "{}", set.stderr);
    let g = ctl(&admin, TOKEN, &["sites", "get", "ctl.test"])
        .await
        .json();
    assert_eq!(
        (
            g["placement"].as_str(),
            g["state"].as_str(),
            g["epoch"].as_u64()
        ),
        (Some("pool:b"), Some("active"), Some(5)),
        "epoch is the current one + 1: {g}"
    );
    let http = client::http1();
    let r = client::get(&http, ferry.addr(), "ctl.test", "/")
        .await
        .unwrap();
    assert_eq!(r.backend(), Some("b"), "{r:?}");

    // Refused by the router: exit 3, with the reason, and nothing changed.
    let stale = ctl(
        &admin,
        TOKEN,
        &[
            "sites",
            "set",
            "ctl.test",
            "--state",
            "maintenance",
            "--epoch",
            "2",
        ],
    )
    .await;
    assert_eq!(stale.code, Some(3), "stale epoch: {}", stale.stderr);
    assert!(stale.stderr.contains("409"), "{}", stale.stderr);
    let unknown = ctl(&admin, TOKEN, &["sites", "get", "missing.test"]).await;
    assert_eq!(unknown.code, Some(3), "unknown site: {}", unknown.stderr);
    let wrong = ctl(&admin, "not-the-token", &["status"]).await;
    assert_eq!(wrong.code, Some(3), "wrong token: {}", wrong.stderr);
    assert!(wrong.stderr.contains("401"), "{}", wrong.stderr);
    // --token-file: the router's rule for secret files, and it wins over
    // the environment's (wrong) token.
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("writing the token file");
    let file_arg = token_file.to_str().expect("utf-8 path");
    let set_mode = |mode| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    };
    set_mode(0o644);
    let open = ctl(
        &admin,
        "not-the-token",
        &["--token-file", file_arg, "status"],
    )
    .await;
    assert_eq!(
        open.code,
        Some(2),
        "a token file others can read: {}",
        open.stderr
    );
    assert!(open.stderr.contains("chmod 600"), "{}", open.stderr);
    set_mode(0o600);
    let from_file = ctl(
        &admin,
        "not-the-token",
        &["--token-file", file_arg, "status"],
    )
    .await;
    assert_eq!(from_file.code, Some(0), "{}", from_file.stderr);
    let g = ctl(&admin, TOKEN, &["sites", "get", "ctl.test"])
        .await
        .json();
    assert_eq!(
        (g["state"].as_str(), g["epoch"].as_u64()),
        (Some("active"), Some(5))
    );

    // No router there: a failure, not a refusal.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let down = ctl(&nobody, TOKEN, &["status"]).await;
    assert_eq!(down.code, Some(1), "unreachable router: {}", down.stderr);
}

/// Runs `ferry ctl` with `args`, asserts it exited 0, and parses its JSON.
async fn ctl_ok(admin: &str, args: &[&str]) -> Value {
    let out = ctl(admin, TOKEN, args).await;
    assert_eq!(out.code, Some(0), "ctl {args:?}: {}", out.stderr);
    out.json()
}

/// Runs `ferry ctl` with `args` (a table), asserts it exited 0.
async fn table_ok(admin: &str, args: &[&str]) -> String {
    let out = ctl_text(admin, TOKEN, args).await;
    assert_eq!(out.code, Some(0), "ctl {args:?}: {}", out.stderr);
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_covers_status_sites_pools_reload_and_metrics() {
    let dir = workdir();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let config = router_config("dc1", "")
        + &pool("a", &[("a1", a.addr)])
        + &pool("b", &[("b1", b.addr)])
        + &site("one.test", "pool:a", "epoch = 2")
        + &site("two.test", "pool:b", "epoch = 3");
    let ferry = Ferry::start(dir.path(), &config);
    let admin = format!("http://{}", ferry.admin);
    let admin = admin.as_str();

    // Tables by default: a header, then the values.
    let status = table_ok(admin, &["status"]).await;
    assert!(status.starts_with("FIELD"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("name") && l.ends_with("dc1")),
        "{status}"
    );
    assert_eq!(ctl_ok(admin, &["health"]).await["ok"], true);
    let metrics = table_ok(admin, &["metrics"]).await;
    assert!(metrics.contains("\nferry_sites 2\n"), "{metrics}");

    // Sites: list (page and total), query (absent ones too), apply, remove.
    let list = table_ok(admin, &["sites", "list"]).await;
    let hosts: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(hosts, ["one.test", "two.test", "(2"], "{list}");
    let page = ctl_ok(admin, &["sites", "list", "--limit", "1", "--offset", "1"]).await;
    assert_eq!(page["total"], 2, "{page}");
    assert_eq!(page["sites"][0]["host"], "two.test", "{page}");
    let q = ctl_ok(admin, &["sites", "query", "one.test", "none.test"]).await;
    assert_eq!(q["sites"][0]["epoch"], 2, "{q}");
    assert_eq!(q["sites"][1]["absent"], true, "{q}");
    let batch = dir.path().join("batch.json");
    std::fs::write(
        &batch,
        r#"{"sites": [{"host": "three.test", "placement": "pool:b", "state": "frozen", "epoch": 1}]}"#,
    )
    .unwrap();
    let applied = ctl_ok(admin, &["sites", "apply", batch.to_str().unwrap()]).await;
    assert_eq!(
        (applied["added"].as_u64(), applied["changed"].as_u64()),
        (Some(1), Some(0))
    );
    let three = ctl_ok(admin, &["sites", "get", "three.test"]).await;
    assert_eq!(three["state"], "frozen", "{three}");
    let removed = ctl_ok(admin, &["sites", "remove", "three.test", "none.test"]).await;
    assert_eq!(removed["removed"], 1, "{removed}");
    // A new site needs a placement: a usage error, nothing sent.
    let new = ctl(admin, TOKEN, &["sites", "set", "new.test"]).await;
    assert_eq!(new.code, Some(2), "{}", new.stderr);
    assert!(new.stderr.contains("--placement"), "{}", new.stderr);
    let made = ctl_ok(
        admin,
        &["sites", "set", "new.test", "--placement", "pool:a"],
    )
    .await;
    assert_eq!(made["added"], 1, "{made}");
    // A batch file that is not a batch: usage, with the file named.
    std::fs::write(&batch, r#"{"hosts": []}"#).unwrap();
    let bad = ctl(admin, TOKEN, &["sites", "apply", batch.to_str().unwrap()]).await;
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(bad.stderr.contains("batch.json"), "{}", bad.stderr);

    // Pools: list, one pool's servers, state, join and leave.
    let pools = ctl_ok(admin, &["pools", "list"]).await;
    let names: Vec<&str> = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"], "{pools}");
    let table = table_ok(admin, &["pools", "servers", "a"]).await;
    assert!(table.starts_with("POOL"), "{table}");
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("a1") && l.contains("ready")),
        "{table}"
    );
    let set = ctl_ok(admin, &["pools", "set", "a", "a1", "drain"]).await;
    assert_eq!(
        (set["server"].as_str(), set["state"].as_str()),
        (Some("a1"), Some("drain"))
    );
    let extra = Backend::start("a2");
    let address = extra.addr.to_string();
    let joined = ctl_ok(
        admin,
        &["pools", "join", "a", "a2", &address, "--tier", "1"],
    )
    .await;
    assert_eq!(
        (joined["server"].as_str(), joined["tier"].as_u64()),
        (Some("a2"), Some(1)),
        "{joined}"
    );
    let servers = ctl_ok(admin, &["pools", "servers", "a"]).await;
    assert_eq!(
        servers["servers"].as_array().map(Vec::len),
        Some(2),
        "{servers}"
    );
    // Refused: a ready server cannot leave. Exit 3, the router's reason.
    let refused = ctl(admin, TOKEN, &["pools", "leave", "a", "a2"]).await;
    assert_eq!(refused.code, Some(3), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("DELETE /v1/pools/a/servers/a2 answered 409"),
        "{}",
        refused.stderr
    );
    ctl_ok(admin, &["pools", "set", "a", "a2", "drain"]).await;
    let left = ctl_ok(admin, &["pools", "leave", "a", "a2"]).await;
    assert_eq!(left["removed"], "a2", "{left}");
    let missing = ctl(admin, TOKEN, &["pools", "servers", "nope"]).await;
    assert_eq!(missing.code, Some(3), "{}", missing.stderr);
    // A state clap does not know: usage.
    let usage = ctl(admin, TOKEN, &["pools", "set", "a", "a1", "sleepy"]).await;
    assert_eq!(usage.code, Some(2), "{}", usage.stderr);

    // Reload: the config file again (sites it names come back).
    let reloaded = ctl_ok(admin, &["reload"]).await;
    assert_eq!(reloaded["pools"], 2, "{reloaded}");
    let reload_table = table_ok(admin, &["reload"]).await;
    assert!(reload_table.contains("sites_added"), "{reload_table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_covers_certs_and_tunnels() {
    let dir = workdir();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let (crt, key) = self_signed(dir.path(), "default", "default.test");
    let bundle = std::fs::read_to_string(&crt).unwrap() + &std::fs::read_to_string(&key).unwrap();
    std::fs::write(certs.join("default.pem"), bundle).unwrap();
    let a = Backend::start("a");
    let mut config = router_config("dc1", "observed_uses_file = \"uses.jsonl\"");
    config += &format!(
        "\n[[listener]]\nlisten = \"127.0.0.1:{}\"\ntls = true\n",
        free_port()
    );
    config += "\n[tls]\ncert_dir = \"certs\"\ndefault_cert = \"default\"\n";
    config += &pool("a", &[("a1", a.addr)]);
    let (db1, db2) = (free_port(), free_port());
    config += &format!(
        "\n[[tunnels]]\nname = \"db\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"127.0.0.1:{db1}\"\nserver = \"db1\"\n",
        free_port()
    );
    let ferry = Ferry::start(dir.path(), &config);
    let admin = format!("http://{}", ferry.admin);
    let admin = admin.as_str();

    let list = ctl_ok(admin, &["certs", "list"]).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["certificates"][0]["default"], true, "{list}");
    let (crt, key) = self_signed(dir.path(), "shop", "shop.ctl.test");
    let stored = ctl_ok(
        admin,
        &["certs", "add", "shop", "--chain", &crt, "--key", &key],
    )
    .await;
    assert_eq!(stored["hosts"][0], "shop.ctl.test", "{stored}");
    assert_eq!(stored["replaced"], false, "{stored}");
    let shown = table_ok(admin, &["certs", "show", "shop"]).await;
    assert!(
        shown
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("shop") && l.ends_with("shop.ctl.test")),
        "{shown}"
    );
    let gone = ctl_ok(admin, &["certs", "remove", "shop"]).await;
    assert_eq!(gone["removed"], "shop", "{gone}");
    let unknown = ctl(admin, TOKEN, &["certs", "show", "shop"]).await;
    assert_eq!(unknown.code, Some(3), "{}", unknown.stderr);
    let default = ctl(admin, TOKEN, &["certs", "remove", "default"]).await;
    assert_eq!(
        default.code,
        Some(3),
        "the default stays: {}",
        default.stderr
    );
    assert!(default.stderr.contains("409"), "{}", default.stderr);
    // A key file that is not there: usage, nothing sent.
    let no_file = ctl(
        admin,
        TOKEN,
        &[
            "certs",
            "add",
            "x",
            "--chain",
            &crt,
            "--key",
            "/nonexistent",
        ],
    )
    .await;
    assert_eq!(no_file.code, Some(2), "{}", no_file.stderr);

    let tunnels = ctl_ok(admin, &["tunnels", "list"]).await;
    assert_eq!(tunnels["tunnels"][0]["name"], "db", "{tunnels}");
    let table = table_ok(admin, &["tunnels", "list"]).await;
    assert!(
        table.lines().nth(1).is_some_and(|l| l.starts_with("db ")),
        "{table}"
    );
    let one = ctl_ok(admin, &["tunnels", "show", "db"]).await;
    assert_eq!(one["upstream"], format!("127.0.0.1:{db1}"), "{one}");
    let uses = ctl_ok(admin, &["tunnels", "uses", "db"]).await;
    assert_eq!(
        (
            uses["tunnel"].as_str(),
            uses["uses"].as_array().map(Vec::len)
        ),
        (Some("db"), Some(0))
    );
    let export = ctl_ok(admin, &["tunnels", "export"]).await;
    assert_eq!(export["lines"], 0, "{export}");
    assert!(
        export["written"]
            .as_str()
            .is_some_and(|w| w.ends_with("uses.jsonl")),
        "{export}"
    );
    let moved = ctl_ok(
        admin,
        &["tunnels", "repoint", "db", &format!("127.0.0.1:{db2}")],
    )
    .await;
    assert_eq!(moved["upstream"], format!("127.0.0.1:{db2}"), "{moved}");
    assert_eq!(
        moved["configured_upstream"],
        format!("127.0.0.1:{db1}"),
        "{moved}"
    );
    let bad = ctl(admin, TOKEN, &["tunnels", "repoint", "db", "no-port"]).await;
    assert_eq!(bad.code, Some(3), "{}", bad.stderr);
    assert!(bad.stderr.contains("upstream"), "{}", bad.stderr);
    let none = ctl(admin, TOKEN, &["tunnels", "show", "nope"]).await;
    assert_eq!(none.code, Some(3), "{}", none.stderr);
    assert!(none.stderr.contains("no tunnel named"), "{}", none.stderr);
}
