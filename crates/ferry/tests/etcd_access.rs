//! `ferry migrate` and `ferry update` against an etcd with authentication
//! on (issue 17; real member from ferry-journal's tests/etcd_cluster): the
//! `--control etcd` flags take `[store]`'s user and files, a wrong password
//! is refused (exit 3, naming the user) and a password file others can read
//! is refused before anything connects (exit 2, naming the flag or the
//! key at its line). ferry-orch's tests/etcd_access.rs runs whole units
//! with a password and over TLS. `ferry ctl routers` takes the same flags:
//! it lists and retires with the password and over TLS with a client
//! certificate, and is refused the same ways.
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
    let (code, _, err) = ferry_output(args);
    (code, err)
}

/// Runs `ferry args...`; the exit code, stdout and stderr.
fn ferry_output<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .expect("run ferry");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
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

/// The fleet keys a router writes (docs/control-plane.md, "Registration"):
/// `par-1` registered under a lease (kept alive while the answer lives),
/// `old-1` seen once and gone. Written through `cfg`, logged in as the
/// routers are.
fn register(cfg: ferry_store::EtcdConfig) -> (ferry_store::EtcdStore, ferry_store::Lease) {
    let etcd = ferry_store::EtcdStore::connect(cfg).expect("connect as a router");
    let lease = etcd
        .grant_lease(std::time::Duration::from_secs(60))
        .unwrap();
    for name in ["par-1", "old-1"] {
        etcd.note_seen(name, r#"{"first_ms": 1}"#).unwrap();
    }
    etcd.put_registration("par-1", r#"{"revision": 7, "frozen": {"3": 2}}"#, &lease)
        .unwrap();
    (etcd, lease)
}

/// `ferry ctl --json routers ARGS --etcd-endpoints E --etcd-prefix P
/// FLAGS...`: (exit code, the JSON answer or null, stderr).
fn ctl_routers(
    endpoint: &str,
    args: &[&str],
    flags: &[(&str, &Path)],
) -> (i32, serde_json::Value, String) {
    let mut a: Vec<std::ffi::OsString> = ["ctl", "--json", "--timeout", "3", "routers"]
        .iter()
        .chain(args)
        .chain(&["--etcd-endpoints", endpoint, "--etcd-prefix", "/ctl"])
        .map(Into::into)
        .collect();
    for (flag, path) in flags {
        a.push(flag.into());
        a.push(path.into());
    }
    let (code, out, err) = ferry_output(&a);
    (code, serde_json::from_str(&out).unwrap_or_default(), err)
}

/// Router `name` as `ferry ctl --json routers list` answered it.
fn router<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list.as_array()
        .and_then(|l| l.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

#[test]
fn ctl_routers_logs_in_with_the_password_and_a_wrong_one_is_refused() {
    let c = Cluster::start(1);
    c.enable_auth("ferry", PASSWORD);
    let endpoint = c.endpoints()[0].clone();
    let mut cfg = ferry_store::EtcdConfig::new(c.endpoints(), "/ctl");
    cfg.auth = Some(ferry_store::EtcdAuth {
        user: "ferry".into(),
        password: PASSWORD.into(),
    });
    let (_router, _lease) = register(cfg);
    let dir = tempfile::tempdir().unwrap();
    let (good, bad, open) = (
        dir.path().join("good.pw"),
        dir.path().join("bad.pw"),
        dir.path().join("open.pw"),
    );
    write(&good, &format!("{PASSWORD}\n"), 0o600);
    write(&bad, "hunter2", 0o600);
    write(&open, PASSWORD, 0o644);
    let login = |pw| {
        [
            ("--etcd-user", Path::new("ferry")),
            ("--etcd-password-file", pw),
        ]
    };

    // The right password: what the routers registered, and a retirement
    // written (flags after the subcommand, as --etcd-endpoints).
    let (code, list, err) = ctl_routers(&endpoint, &["list"], &login(&good));
    assert_eq!(code, 0, "{err}");
    let r = router(&list, "par-1");
    assert_eq!(r["registered"], true, "{list}");
    assert_eq!(r["revision"], 7, "{list}");
    assert_eq!(r["frozen"]["3"], 2, "{list}");
    let (code, _, err) = ctl_routers(&endpoint, &["retire", "old-1"], &login(&good));
    assert_eq!(code, 0, "{err}");
    let (_, list, _) = ctl_routers(&endpoint, &["list"], &login(&good));
    let old = router(&list, "old-1");
    assert_eq!(old["retired"], true, "{list}");
    assert_eq!(old["blocks_freezes"], false, "{list}");

    // A wrong password: refused, exit 3, naming the user, for both.
    for cmd in [&["list"][..], &["retire", "par-1"]] {
        let (code, _, err) = ctl_routers(&endpoint, cmd, &login(&bad));
        assert_eq!(code, 3, "{cmd:?}: {err}");
        assert!(
            err.contains("etcd refused user \"ferry\""),
            "{cmd:?}: {err}"
        );
    }
    // A password file others can read: bad usage, naming the flag, before
    // anything connects.
    let (code, _, err) = ctl_routers(&endpoint, &["list"], &login(&open));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--etcd-password-file"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    // Checked as migrate's flags are: a user without a password.
    let (code, _, err) = ctl_routers(&endpoint, &["list"], &login(&good)[..1]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--etcd-user without --etcd-password-file"),
        "{err}"
    );
}

/// Runs `openssl ARGS` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`), another one (`other-ca.pem`), and certificates signed
/// by the first for the members (127.0.0.1) and a client, made with
/// openssl; keys readable by their owner only.
fn certificates(dir: &Path) -> etcd_cluster::Tls {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, pem, subj) = (
            format!("{ca}.key"),
            format!("{ca}.pem"),
            format!("/CN=ferry test {ca}"),
        );
        let mut a = vec![
            "req", "-x509", "-days", "2", "-subj", &subj, "-keyout", &key, "-out", &pem,
        ];
        a.extend(ec);
        a.extend([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        openssl(dir, &a);
    }
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    for leaf in ["member", "client"] {
        let (key, csr, pem, subj) = (
            format!("{leaf}.key"),
            format!("{leaf}.csr"),
            format!("{leaf}.pem"),
            format!("/CN={leaf}"),
        );
        let mut a = vec!["req", "-new", "-subj", &subj, "-keyout", &key, "-out", &csr];
        a.extend(ec);
        openssl(dir, &a);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                "leaf.ext",
                "-out",
                &pem,
            ],
        );
        std::fs::set_permissions(dir.join(&key), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    etcd_cluster::Tls {
        ca: dir.join("ca.pem"),
        cert: dir.join("member.pem"),
        key: dir.join("member.key"),
        client_cert_auth: true,
    }
}

#[test]
fn ctl_routers_over_tls_with_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let c = Cluster::start_with(1, Some(&certificates(d)));
    let endpoint = c.endpoints()[0].clone();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let mut cfg = ferry_store::EtcdConfig::new(c.endpoints(), "/ctl");
    cfg.tls = Some(ferry_store::EtcdTlsConfig {
        ca: read("ca.pem"),
        identity: Some((read("client.pem"), read("client.key"))),
    });
    let (_router, _lease) = register(cfg);
    let (ca, other_ca) = (d.join("ca.pem"), d.join("other-ca.pem"));
    let (cert, key) = (d.join("client.pem"), d.join("client.key"));
    let identity = [
        ("--etcd-cert-file", cert.as_path()),
        ("--etcd-key-file", key.as_path()),
    ];
    fn with<'a>(ca: &'a Path, identity: &[(&'a str, &'a Path)]) -> Vec<(&'a str, &'a Path)> {
        let mut f = vec![("--etcd-ca-file", ca)];
        f.extend(identity);
        f
    }

    let (code, list, err) = ctl_routers(&endpoint, &["list"], &with(&ca, &identity));
    assert_eq!(code, 0, "{err}");
    assert_eq!(router(&list, "par-1")["revision"], 7, "{list}");

    // Without the CA: the https endpoint is refused by the flags' check.
    let (code, _, err) = ctl_routers(&endpoint, &["list"], &identity);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is https: set --etcd-ca-file"), "{err}");
    // Trusting another CA, or without the client certificate the members
    // ask for: nothing connects (exit 1, as any etcd ctl cannot reach).
    for flags in [
        with(&other_ca, &identity),
        vec![("--etcd-ca-file", ca.as_path())],
    ] {
        let (code, _, err) = ctl_routers(&endpoint, &["list"], &flags);
        assert_eq!(code, 1, "{flags:?}: {err}");
        assert!(err.contains("cannot reach etcd"), "{flags:?}: {err}");
    }
}
