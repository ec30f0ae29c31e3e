//! `ferry migrate` and `ferry update` against an etcd with authentication
//! on (issue 17; real member from ferry-journal's tests/etcd_cluster): the
//! `--control etcd` flags take `[store]`'s user and files, a wrong password
//! is refused (exit 3, naming the user) and a password file others can read
//! is refused before anything connects (exit 2, naming the flag or the
//! key at its line). ferry-orch's tests/etcd_access.rs runs whole units
//! with a password and over TLS.
#![cfg(feature = "etcd")]

#[path = "../../ferry-journal/tests/etcd_cluster/mod.rs"]
mod etcd_cluster;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use etcd_cluster::Cluster;

const PASSWORD: &str = "correct horse battery staple";

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `ferry args...`; the exit code and stderr.
fn ferry(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .expect("run ferry");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn the_control_flags_log_in_and_a_wrong_password_is_refused() {
    let c = Cluster::start(1);
    c.enable_auth("ferry", PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let (good, bad, open) = (
        dir.path().join("good.pw"),
        dir.path().join("bad.pw"),
        dir.path().join("open.pw"),
    );
    write(&good, PASSWORD, 0o600);
    write(&bad, "hunter2", 0o600);
    write(&open, PASSWORD, 0o644);
    let endpoint = c.endpoints()[0].clone();
    let args = |cmd: &[&'static str], pw: &Path| -> Vec<String> {
        let mut a: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        a.extend(
            [
                "--control",
                "etcd",
                "--etcd-endpoints",
                &endpoint,
                "--run",
                "night-1",
                "--etcd-user",
                "ferry",
                "--etcd-password-file",
                pw.to_str().unwrap(),
            ]
            .map(String::from),
        );
        a
    };
    let run = |a: Vec<String>| ferry(&a.iter().map(String::as_str).collect::<Vec<_>>());

    for cmd in [&["migrate", "status"][..], &["update", "status"][..]] {
        // The right password reaches the run (there is none yet): not a
        // refusal of the user.
        let (code, err) = run(args(cmd, &good));
        assert!(!err.contains("refused user"), "{cmd:?}: {code} {err}");
        assert!(err.contains("night-1"), "{cmd:?}: {code} {err}");
        // A wrong one: refused, exit 3, naming the user.
        let (code, err) = run(args(cmd, &bad));
        assert_eq!(code, 3, "{cmd:?}: {err}");
        assert!(
            err.contains("etcd refused user \"ferry\""),
            "{cmd:?}: {err}"
        );
        // A password file others can read: bad usage, before connecting.
        let (code, err) = run(args(cmd, &open));
        assert_eq!(code, 2, "{cmd:?}: {err}");
        assert!(err.contains("--etcd-password-file"), "{cmd:?}: {err}");
        assert!(err.contains("chmod 600"), "{cmd:?}: {err}");
    }
    // Flags checked as `[store]` is: https needs the CA.
    let mut a = args(&["migrate", "status"], &good);
    let at = a.iter().position(|s| s == &endpoint).unwrap();
    a[at] = endpoint.replace("http://", "https://");
    let (code, err) = run(a);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is https: set --etcd-ca-file"), "{err}");
}

/// migrate.toml's `[store]`: a password file others can read stops `ferry
/// migrate run` at its line (exit 2), before etcd or a router is asked.
#[test]
fn a_password_file_others_can_read_stops_the_run_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("etcd.password"), PASSWORD, 0o644);
    let config = dir.path().join("migrate.toml");
    std::fs::write(
        &config,
        r#"source = "par"
destination = "gra"
[datacenters.par]
pool = "par-web"
[datacenters.gra]
pool = "gra-web"
[[routers]]
name = "par-1"
datacenter = "par"
admin = "http://127.0.0.1:1"
token = "0123456789abcdef"
[[routers]]
name = "gra-1"
datacenter = "gra"
admin = "http://127.0.0.1:2"
traffic = "http://127.0.0.1:3"
token = "0123456789abcdef"

[store]
backend = "etcd"
endpoints = ["http://127.0.0.1:1"]
run = "night-1"
user = "ferry"
password_file = "etcd.password"
"#,
    )
    .unwrap();
    let plan = dir.path().join("plan.json");
    std::fs::write(&plan, "{}").unwrap();
    let (code, err) = ferry(&[
        "migrate",
        "run",
        "--config",
        config.to_str().unwrap(),
        "--plan",
        plan.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("migrate.toml:24:"), "{err}");
    assert!(err.contains("store password_file"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
}
