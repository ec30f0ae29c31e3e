//! The run's journal in an etcd that asks who is calling (cargo feature
//! `etcd`, issue 17): migrate.toml's `[store]` takes a router's `user` and
//! `password_file`, `ca_file`, `cert_file` and `key_file`, and the runner
//! connects with them. Real etcd members (tests/etcd_cluster, in
//! ferry-journal), real routers and filers (tests/common):
//!
//! - with authentication on, a run with the right password moves its unit
//!   and its journal reads back; a wrong password, or none, is refused
//!   (a refusal, naming the user) and writes nothing;
//! - over TLS with client certificates (a CA made here with rcgen), a run
//!   with the CA and its certificate moves its unit; without the
//!   certificate, or trusting another CA, it cannot connect;
//! - a password file others can read is refused at its line, before any
//!   connection.

mod common;
#[path = "../../ferry-journal/tests/etcd_cluster/mod.rs"]
mod etcd_cluster;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{world, World};
use etcd_cluster::{Cluster, Tls};
use ferry_orch::config::{EtcdSettings, StoreSettings};
use ferry_orch::lease::EtcdRun;
use ferry_orch::{Journal, MigrateConfig, Options, OrchError, Orchestrator, UnitState};

const PASSWORD: &str = "correct horse battery staple";

fn now_opts() -> Options {
    Options {
        now: true,
        ..Options::default()
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// migrate.toml's `[store]` as the world's config reads it.
fn etcd_settings(w: &World) -> EtcdSettings {
    match w.cfg().store {
        StoreSettings::Etcd(s) => *s,
        other => panic!("not etcd: {other:?}"),
    }
}

/// Runs the world's unit with the journal in etcd under `s`, then reads the
/// journal back (without the lease) and checks the unit is done.
async fn run_and_read_back(w: &World, s: &EtcdSettings) {
    let o = Orchestrator::start(
        w.inputs(),
        EtcdRun::take(s, Some("runner")).unwrap(),
        now_opts(),
    )
    .unwrap();
    let summary = o.run().await.unwrap();
    assert!(summary.ok(), "{summary:?}");
    drop(o);
    w.assert_moved().await;
    let reader = Journal::open_read_only(EtcdRun::read_only(s).unwrap()).unwrap();
    reader.verify().unwrap();
    let st = reader.status().unwrap().unwrap();
    assert_eq!(st.units[0].state, UnitState::Done);
}

/// The connection is refused: an `OrchError::Journal` (`ferry migrate`
/// exits 3, refused) whose message holds `want`.
fn assert_refused(s: &EtcdSettings, want: &str) {
    match EtcdRun::take(s, Some("intruder")) {
        Err(e @ OrchError::Journal { .. }) => {
            assert!(e.is_refusal(), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
        Err(other) => panic!("not a refusal: {other}"),
        Ok(_) => panic!("connected with {s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_the_password_moves_and_a_wrong_one_writes_nothing() {
    let c = Cluster::start(1);
    c.enable_auth("ferry", PASSWORD);
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("etcd.password");
    write(&pw, &format!("{PASSWORD}\n"), 0o600);
    let w = world(&format!(
        "[store]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"/auth\"\nrun = \"night-1\"\n\
         user = \"ferry\"\npassword_file = {:?}\n",
        c.endpoints()[0],
        pw.display().to_string()
    ))
    .await;
    let s = etcd_settings(&w);
    assert_eq!(s.auth.as_ref().unwrap().user, "ferry");
    run_and_read_back(&w, &s).await;

    // A wrong password and no password at all: refused before anything is
    // written, on a run nobody started.
    let bad = secrets.path().join("wrong.password");
    write(&bad, "hunter2\n", 0o600);
    let text = std::fs::read_to_string(&w.config)
        .unwrap()
        .replace("etcd.password", "wrong.password")
        .replace("night-1", "night-2");
    let wrong = match MigrateConfig::parse(&text, &w.config).unwrap().store {
        StoreSettings::Etcd(s) => *s,
        other => panic!("not etcd: {other:?}"),
    };
    assert_refused(&wrong, "etcd refused user \"ferry\"");
    let mut anonymous = wrong.clone();
    anonymous.auth = None;
    match EtcdRun::take(&anonymous, Some("intruder")) {
        Err(e) => assert!(e.is_refusal(), "{e}"),
        Ok(_) => panic!("connected without a password"),
    }
    let mut night2 = s.clone();
    night2.run = "night-2".into();
    let store = ferry_orch::lease::connect(&night2).unwrap();
    for key in [
        "lock",
        "format",
        "run",
        "head",
        "journal/00000000000000000000",
    ] {
        let key = store.key(&format!("runs/night-2/{key}"));
        let found = store
            .call("read", {
                let key = key.clone();
                move |mut c| {
                    let key = key.clone();
                    async move { c.get(key, None).await }
                }
            })
            .unwrap();
        assert!(found.kvs().is_empty(), "a refused runner wrote {key}");
    }
}

/// A CA, the members' certificate for 127.0.0.1, and a client's; another
/// CA a client could wrongly trust. PEM files in `dir`.
fn certificates(dir: &Path) -> Tls {
    let ca = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("ferry test {name}"));
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        rcgen::Issuer::new(p, key)
    };
    let issuer = ca("ca");
    ca("other-ca");
    let leaf = |name: &str, names: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(names).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        write(
            &dir.join(format!("{name}.key")),
            &key.serialize_pem(),
            0o600,
        );
    };
    leaf("member", vec!["127.0.0.1".into(), "localhost".into()]);
    leaf("runner", vec!["runner".into()]);
    Tls {
        ca: dir.join("ca.pem"),
        cert: dir.join("member.pem"),
        key: dir.join("member.key"),
        client_cert_auth: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_tls_with_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let tls = certificates(certs.path());
    let c = Cluster::start_with(1, Some(&tls));
    let d = certs.path().display().to_string();
    let endpoint = &c.endpoints()[0];
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let w = world(&format!(
        "[store]\nbackend = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"/tls\"\nrun = \"night-1\"\n\
         ca_file = \"{d}/ca.pem\"\ncert_file = \"{d}/runner.pem\"\nkey_file = \"{d}/runner.key\"\n"
    ))
    .await;
    let s = etcd_settings(&w);
    assert!(s.tls.as_ref().unwrap().identity.is_some());
    run_and_read_back(&w, &s).await;

    // The members ask for a client certificate: without one, or trusting
    // another CA than theirs, nothing connects (fast: a short bound).
    let mut bare = s.clone();
    bare.request_timeout = Duration::from_secs(2);
    bare.tls.as_mut().unwrap().identity = None;
    assert_refused(&bare, "cannot reach etcd");
    let mut other = s.clone();
    other.request_timeout = Duration::from_secs(2);
    other.tls.as_mut().unwrap().ca =
        std::fs::read_to_string(certs.path().join("other-ca.pem")).unwrap();
    assert_refused(&other, "cannot reach etcd");
}

/// Fail closed: a password others can read is refused at its line, naming
/// the key and the file, before anything connects (no etcd here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_others_can_read_is_refused_at_its_line() {
    let w = world("").await;
    let base = std::fs::read_to_string(&w.config).unwrap();
    let pw = w.path("etcd.password");
    write(&pw, PASSWORD, 0o644);
    let text = format!(
        "{base}\n[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:1\"]\nrun = \"r\"\n\
         user = \"ferry\"\npassword_file = \"etcd.password\"\n"
    );
    let e = MigrateConfig::parse(&text, &w.config).unwrap_err();
    assert!(e.is_usage(), "{e}");
    let e = e.to_string();
    let line = base.lines().count() + 7;
    assert!(
        e.contains(&format!(":{line}:")),
        "{e} (expected line {line})"
    );
    assert!(e.contains("store password_file"), "{e}");
    assert!(e.contains("etcd.password"), "{e}");
    assert!(e.contains("chmod 600"), "{e}");

    // The router's words for the router's rules (one check for both).
    for (extra, want) in [
        ("user = \"ferry\"\n", "store: user without password_file"),
        (
            "ca_file = \"ca.pem\"\n",
            "is plain http while ca_file is set: use https://",
        ),
        (
            "cert_file = \"c.pem\"\n",
            "store: cert_file without key_file",
        ),
    ] {
        let text = format!(
            "{base}\n[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:1\"]\nrun = \"r\"\n{extra}"
        );
        let e = MigrateConfig::parse(&text, &w.config)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{extra}: {e}");
    }
    let sqlite = format!("{base}\n[store]\nbackend = \"sqlite\"\nca_file = \"ca.pem\"\n");
    let e = MigrateConfig::parse(&sqlite, &w.config)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("store ca_file: only with backend = \"etcd\""),
        "{e}"
    );
}
