//! `ferry ctl` against a running router, configured by FERRY_ADMIN and
//! FERRY_ADMIN_TOKEN: reads, a change with the epoch filled in, and the exit
//! codes of a refused change (3) and of an unreachable router (1).

use serde_json::Value;

use crate::support::client;
use crate::support::procs::FERRY;
use crate::support::{free_port, pool, router_config, site, workdir, Backend, Ferry, TOKEN};

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
