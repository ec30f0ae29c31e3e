//! Passes through an agent on loopback.

use std::fs;
use std::os::unix::fs::FileExt;

use ferry_sync::{run_pass, verify, LocalTree, RemoteTree, SyncError};

use crate::support::*;

#[test]
fn push_to_agent_round_trip_and_verify() {
    let t = tmp();
    let (src, dst) = dirs(&t);
    make_tree(&src);
    let agent = Agent::start(&[("www", &dst, false)]);
    let remote = agent.connect("www", true);
    let s = LocalTree::new(&src);
    let p1 = run_pass(&s, &remote, &mirror_options(), 1, &no_events()).unwrap();
    assert!(p1.wire_sent > 0);
    assert_same(&src, &dst);
    let p2 = run_pass(&s, &remote, &mirror_options(), 2, &no_events()).unwrap();
    assert_eq!(p2.changed_entries, 0);
    let v = verify(&s, &remote, 10).unwrap();
    assert!(v.equal(), "{v:?}");
    // Narrowing works across the wire too.
    fs::write(dst.join("dir2/sub/deep.txt"), b"DEEP").unwrap();
    let v = verify(&s, &remote, 10).unwrap();
    assert_eq!(
        v.differing
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        vec!["dir2/sub/deep.txt"]
    );
}

#[test]
fn pull_from_agent_round_trip() {
    let t = tmp();
    let (src, dst) = dirs(&t);
    make_tree(&src);
    let agent = Agent::start(&[("www", &src, true)]);
    let remote = agent.connect("www", false);
    let d = LocalTree::new(&dst);
    run_pass(&remote, &d, &mirror_options(), 1, &no_events()).unwrap();
    assert_same(&src, &dst);
}

#[test]
fn delta_of_a_one_percent_change_costs_a_small_multiple_on_the_wire() {
    let t = tmp();
    let (src, dst) = dirs(&t);
    fs::create_dir_all(&src).unwrap();
    const SIZE: usize = 64 * 1024 * 1024;
    fs::write(src.join("db.img"), bytes(1, SIZE)).unwrap();
    let agent = Agent::start(&[("v", &dst, false)]);
    let remote = agent.connect("v", true);
    let s = LocalTree::new(&src);
    let p1 = run_pass(&s, &remote, &mirror_options(), 1, &no_events()).unwrap();
    assert!(p1.wire_sent >= SIZE as u64);
    // Change 1%: ten 64 KiB regions spread over the file.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(src.join("db.img"))
        .unwrap();
    let region = 64 * 1024;
    let mut changed = 0u64;
    for i in 0..10u64 {
        let off = i * (SIZE as u64 / 10) + 12_345;
        f.write_all_at(&bytes(100 + i, region), off).unwrap();
        changed += region as u64;
    }
    drop(f);
    let p2 = run_pass(&s, &remote, &mirror_options(), 2, &no_events()).unwrap();
    let wire = p2.wire_sent + p2.wire_received;
    eprintln!(
        "1% change of 64 MiB: changed {changed} B, wire {wire} B (sent {} + received {}), ratio {:.2}",
        p2.wire_sent,
        p2.wire_received,
        wire as f64 / changed as f64
    );
    assert!(
        wire < 3 * changed,
        "wire {wire} B for a change of {changed} B"
    );
    assert_eq!(
        fs::read(dst.join("db.img")).unwrap(),
        fs::read(src.join("db.img")).unwrap()
    );
}

#[test]
fn agent_refuses_a_wrong_key() {
    let t = tmp();
    let agent = Agent::start(&[("v", t.path(), false)]);
    let bad = ferry_sync::proto::derive_key("not-the-key-at-all-0000");
    let err = RemoteTree::connect("127.0.0.1", agent.port, "v", &bad, true)
        .err()
        .expect("a wrong key must be refused");
    assert!(matches!(err, SyncError::Auth(_)), "{err}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
}

#[test]
fn agent_refuses_writes_to_a_read_only_volume_and_unknown_volumes() {
    let t = tmp();
    let agent = Agent::start(&[("ro", t.path(), true)]);
    let key = ferry_sync::proto::derive_key(KEY);
    let err = RemoteTree::connect("127.0.0.1", agent.port, "ro", &key, true)
        .err()
        .unwrap();
    assert!(err.to_string().contains("read-only"), "{err}");
    let err = RemoteTree::connect("127.0.0.1", agent.port, "nope", &key, false)
        .err()
        .unwrap();
    assert!(err.to_string().contains("unknown volume"), "{err}");
}

#[test]
fn agent_config_errors_name_the_line() {
    let p = std::path::Path::new("/etc/ferry/agent.toml");
    let e = ferry_sync::AgentConfig::parse(
        "listen = \"127.0.0.1:7700\"\nkey = \"short\"\n[volumes.www]\npath = \"/srv\"\n",
        p,
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("/etc/ferry/agent.toml:2:"), "{e}");
    let e = ferry_sync::AgentConfig::parse(
        "listen = \"127.0.0.1:7700\"\nkey = \"0123456789abcdef\"\n[volumes.www]\npath = \"/srv\"\nbogus = 1\n",
        p,
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("/etc/ferry/agent.toml:5:"), "{e}");
    let ok = ferry_sync::AgentConfig::parse(
        "listen = \"127.0.0.1:7700\"\nkey = \"0123456789abcdef\"\n[volumes.www]\npath = \"/srv\"\nread_only = true\n",
        p,
    )
    .unwrap();
    assert!(ok.volumes["www"].read_only);
}

#[test]
fn a_peer_that_accepts_and_never_answers_is_refused_within_the_handshake_deadline() {
    // Not an agent: accepts, reads, says nothing (a hung agent looks the same).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut sink);
    });
    let key = ferry_sync::proto::derive_key(KEY);
    let deadlines = ferry_sync::Deadlines {
        handshake: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let err = RemoteTree::connect_with("127.0.0.1", port, "v", &key, false, &deadlines)
        .err()
        .expect("a silent peer must be refused");
    // Generous: only there to tell a deadline from a hang.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{err}"
    );
    assert!(matches!(err, SyncError::Net { .. }), "{err}");
    silent.join().unwrap();
}

/// Issue 18: the proof at a flip reuses content hashes kept since the
/// pre-copy's proof; a file rewritten since, with its size and mtime put
/// back, must still be found (its ctime moved), on either side.
#[test]
fn kept_hashes_never_hide_a_rewrite_that_kept_size_and_mtime() {
    let t = tmp();
    let (src, dst) = dirs(&t);
    make_tree(&src);
    let agent = Agent::start(&[("www", &dst, false)]);
    let hashes = std::sync::Arc::new(ferry_sync::HashCache::new());
    let s = LocalTree::new(&src).with_hash_cache(hashes.clone());
    let remote = agent.connect("www", true);
    run_pass(&s, &remote, &mirror_options(), 1, &no_events()).unwrap();
    // Hashes are kept only for files whose last change is a second old (a
    // write in the same clock tick would not move ctime): wait that out.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(ferry_sync::warm_proof(&s, &remote).unwrap());
    assert!(!hashes.is_empty(), "the source kept its hashes");
    // A proof in a new session (as at the flip) is still equal.
    let remote = agent.connect("www", true);
    assert!(verify(&s, &remote, 10).unwrap().equal());
    let rewrite = |p: &std::path::Path| {
        let old = fs::read(p).unwrap();
        let mtime = fs::metadata(p).unwrap().modified().unwrap();
        let mut new = old.clone();
        new[0] ^= 0xff;
        fs::write(p, &new).unwrap();
        fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    };
    rewrite(&dst.join("dir2/sub/deep.txt"));
    let remote = agent.connect("www", true);
    let v = verify(&s, &remote, 10).unwrap();
    assert_eq!(
        v.differing
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        vec!["dir2/sub/deep.txt"],
        "a rewrite at the destination"
    );
    // The same rewrite at the source makes deep.txt equal again (only a
    // fresh hash on both sides can tell); f4.php now differs.
    rewrite(&src.join("dir2/sub/deep.txt"));
    rewrite(&src.join("dir3/f4.php"));
    let v = verify(&s, &remote, 10).unwrap();
    assert_eq!(
        v.differing
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        vec!["dir3/f4.php"],
        "rewrites at the source"
    );
}
