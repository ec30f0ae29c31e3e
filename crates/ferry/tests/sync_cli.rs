//! `ferry sync` and `ferry agent` as a user runs them: real processes, real
//! trees in temporary directories, an agent on a loopback port.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "cli-test-key-0123456789";

fn ferry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env("FERRY_SYNC_KEY", KEY)
        .env_remove("FERRY_SYNC_KEY_FILE");
    c
}

fn run(args: &[&str]) -> Output {
    ferry().args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn data(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    for i in 0..40 {
        fs::write(
            root.join(format!("a/f{i}")),
            data(i, 1000 + i as usize * 37),
        )
        .unwrap();
    }
    fs::write(root.join("a/b/new\nline"), b"nl").unwrap();
    fs::write(root.join("-dash"), b"dash").unwrap();
    std::os::unix::fs::symlink("a/f1", root.join("link")).unwrap();
}

fn rsync_clean(src: &Path, dst: &Path) {
    let o = Command::new("rsync")
        .args(["-aHcn", "--itemize-changes", "--delete"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .expect("rsync must be installed (scripts/test.sh installs it)");
    assert!(o.status.success());
    assert!(
        o.stdout.is_empty(),
        "rsync: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct AgentProc {
    child: Child,
    port: u16,
}

impl AgentProc {
    fn start(dir: &Path, vol: &Path, port: u16) -> AgentProc {
        let cfg = dir.join("agent.toml");
        fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{port}\"\nkey = \"{KEY}\"\n[volumes.www]\npath = \"{}\"\n",
                vol.display()
            ),
        )
        .unwrap();
        let child = ferry()
            .args(["agent", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        AgentProc { child, port }
    }
    fn url(&self) -> String {
        format!("ferry://127.0.0.1:{}/www", self.port)
    }
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn local_sync_with_delete_verify_and_json_events() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    make_tree(&src);
    fs::create_dir_all(&dst).unwrap();
    fs::write(dst.join("extraneous"), b"x").unwrap();
    let o = run(&[
        "sync",
        "--delete",
        "--verify",
        "--json",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"pass_started") && kinds.contains(&"pass_finished"),
        "{kinds:?}"
    );
    let fin = events
        .iter()
        .find(|e| e["event"] == "pass_finished")
        .unwrap();
    assert_eq!(fin["summary"]["deleted"], 1);
    assert!(fin["summary"]["predicted_final_secs"].is_number());
    let ver = events.last().unwrap();
    assert_eq!(ver["event"], "verified");
    assert_eq!(ver["equal"], true);
    rsync_clean(&src, &dst);
}

#[test]
fn verify_reports_differing_paths_and_exits_1() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    make_tree(&src);
    let o = run(&["sync", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // Same size and mtime, other content: only --verify (or --checksum) sees it.
    let p = dst.join("a/f3");
    let md = fs::metadata(&p).unwrap();
    let mut d = fs::read(&p).unwrap();
    d[10] ^= 1;
    fs::write(&p, d).unwrap();
    let f = fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(md.modified().unwrap()).unwrap();
    let o = run(&[
        "sync",
        "--verify",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\"a/f3\""),
        "{}",
        text(&o)
    );
    let o = run(&[
        "sync",
        "--checksum",
        "--verify",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn push_through_an_agent_and_refuse_a_wrong_key() {
    let t = tempfile::tempdir().unwrap();
    let (src, vol) = (t.path().join("src"), t.path().join("vol"));
    make_tree(&src);
    fs::create_dir_all(&vol).unwrap();
    let agent = AgentProc::start(t.path(), &vol, free_port());
    let o = run(&[
        "sync",
        "--delete",
        "--verify",
        src.to_str().unwrap(),
        &agent.url(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("verify: equal"),
        "{}",
        text(&o)
    );
    rsync_clean(&src, &vol);
    let o = ferry()
        .env("FERRY_SYNC_KEY", "wrong-key-wrong-key-wrong")
        .args(["sync", src.to_str().unwrap(), &agent.url()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("authentication failed"),
        "{}",
        text(&o)
    );
}

#[test]
fn killed_agent_mid_pass_leaves_no_half_file_and_the_next_pass_resumes() {
    let t = tempfile::tempdir().unwrap();
    let (src, vol) = (t.path().join("src"), t.path().join("vol"));
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&vol).unwrap();
    const SIZE: usize = 24 * 1024 * 1024;
    fs::write(src.join("big"), data(9, SIZE)).unwrap();
    let port = free_port();
    let mut agent = AgentProc::start(t.path(), &vol, port);
    let url = agent.url();
    // 8 MiB/s: the copy takes ~3 s; the agent dies after ~1.5 s.
    let sync = ferry()
        .args([
            "sync",
            "--bwlimit",
            "8M",
            "--json",
            src.to_str().unwrap(),
            &url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    agent.kill();
    let o = sync.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!vol.join("big").exists(), "a half file is visible");
    let partial: u64 = fs::read_dir(&vol)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(partial > 0, "nothing arrived before the kill");
    // Restart; the next pass sends only what had not arrived.
    let _agent = AgentProc::start(t.path(), &vol, port);
    let o = run(&["sync", "--json", "--verify", src.to_str().unwrap(), &url]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let fin: serde_json::Value = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "pass_finished")
        .unwrap();
    let sent = fin["summary"]["data_bytes"].as_u64().unwrap();
    assert!(
        sent <= SIZE as u64 - partial + 1024 * 1024,
        "resumed pass sent {sent} B; {partial} B had already arrived"
    );
    assert_eq!(
        fs::read(vol.join("big")).unwrap(),
        fs::read(src.join("big")).unwrap()
    );
    let names: Vec<_> = fs::read_dir(&vol)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("big")],
        "temporary files left behind"
    );
}

#[test]
fn until_converged_on_a_quiet_tree_is_ready() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    make_tree(&src);
    let o = run(&[
        "sync",
        "--until-converged",
        "--max-freeze",
        "5s",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ready after"),
        "{}",
        text(&o)
    );
}

#[test]
fn block_mode_copies_an_image() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("disk.img"), t.path().join("copy.img"));
    fs::write(&src, data(3, 4 * 1024 * 1024 + 5)).unwrap();
    let o = run(&[
        "sync",
        "--mode",
        "block",
        "--verify",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
}

#[test]
fn bad_flags_and_combinations_are_usage_errors() {
    for args in [
        &["sync", "--watch", "--mode", "block", "/tmp", "/tmp/x"][..],
        &["sync", "--follow", "--verify", "/tmp", "/tmp/x", "/tmp/y"],
        &["sync", "--follow", "--mode", "block", "/tmp", "/tmp/x"],
        &["sync", "/tmp", "/tmp/x", "/tmp/y"],
        &["sync", "--bwlimit", "fast", "/tmp", "/tmp/x"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            !String::from_utf8_lossy(&o.stderr).contains("not implemented"),
            "{}",
            text(&o)
        );
    }
    let o = ferry()
        .env_remove("FERRY_SYNC_KEY")
        .args(["sync", "/tmp", "ferry://127.0.0.1:1/www"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn watch_until_converged_visits_only_changes_after_the_first_pass() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    make_tree(&src);
    let o = run(&[
        "sync",
        "--watch",
        "--until-converged",
        "--max-freeze",
        "5s",
        "--json",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let walk: serde_json::Value = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "full_walk")
        .unwrap();
    assert!(walk["reason"].as_str().unwrap().contains("first pass"));
    rsync_clean(&src, &dst);
}

/// Polls `cond` until it holds or `secs` pass (no fixed sleeps as
/// synchronisation: the deadline only bounds a failure).
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t.elapsed()
}

fn has(p: &Path, content: &[u8]) -> bool {
    fs::read(p).is_ok_and(|c| c == content)
}

/// Seed 000: files saved on server 1 reach servers 2 and 3 within about a
/// second; a destination that was down catches up when it returns.
#[test]
fn follow_pushes_changes_to_two_destinations_and_a_restarted_one_catches_up() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst1, vol) = (
        t.path().join("src"),
        t.path().join("dst1"),
        t.path().join("vol"),
    );
    make_tree(&src);
    fs::create_dir_all(&vol).unwrap();
    let port = free_port();
    let mut agent = AgentProc::start(t.path(), &vol, port);
    let mut follow = ferry()
        .args(["sync", "--follow", "--delete", "--json"])
        .arg(&src)
        .arg(&dst1)
        .arg(agent.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    // The first full pass reaches both.
    wait_for(30, "the first pass", || {
        has(&dst1.join("a/f39"), &data(39, 1000 + 39 * 37))
            && has(&vol.join("a/f39"), &data(39, 1000 + 39 * 37))
    });
    // A file saved at the source appears at both destinations.
    fs::write(src.join("a/b/saved.txt"), b"from the back office").unwrap();
    let latency = wait_for(10, "the saved file at both destinations", || {
        has(&dst1.join("a/b/saved.txt"), b"from the back office")
            && has(&vol.join("a/b/saved.txt"), b"from the back office")
    });
    eprintln!("follow: a saved file reached both destinations in {latency:?}");
    // One destination goes down; changes keep reaching the other.
    agent.kill();
    fs::write(src.join("while-down.txt"), b"missed by vol").unwrap();
    fs::remove_file(src.join("a/f7")).unwrap();
    wait_for(10, "the change at the live destination", || {
        has(&dst1.join("while-down.txt"), b"missed by vol") && !dst1.join("a/f7").exists()
    });
    assert!(!vol.join("while-down.txt").exists());
    // Back up: it catches up with what it missed.
    let agent = AgentProc::start(t.path(), &vol, port);
    let catch_up = wait_for(20, "the restarted destination to catch up", || {
        has(&vol.join("while-down.txt"), b"missed by vol") && !vol.join("a/f7").exists()
    });
    eprintln!("follow: the restarted destination caught up {catch_up:?} after it came back");
    // SIGTERM stops it cleanly.
    let st = Command::new("kill")
        .args(["-TERM", &follow.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = follow.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "follow did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status:?}: {err}");
    let lines = lines.join().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("\"dest_down\"")),
        "no dest_down event: {lines:?}"
    );
    rsync_clean(&src, &dst1);
    rsync_clean(&src, &vol);
    drop(agent);
}

#[test]
fn agent_check_names_the_bad_line() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("agent.toml");
    fs::write(&cfg, "listen = \"127.0.0.1:7700\"\nkey = \"0123456789abcdef\"\n\n[volumes.www]\npath = \"/srv\"\nreadonly = true\n").unwrap();
    let o = run(&["agent", "--check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("agent.toml:6:"),
        "{}",
        text(&o)
    );
    let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agent.toml");
    let o = run(&["agent", "--check", "--config", ex.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_key_file_others_can_read_is_refused_before_connecting() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let (src, key) = (t.path().join("src"), t.path().join("sync.key"));
    fs::create_dir_all(&src).unwrap();
    fs::write(&key, format!("{KEY}\n")).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let o = ferry()
        .env_remove("FERRY_SYNC_KEY")
        .args(["sync", "--key-file"])
        .arg(&key)
        .arg(&src)
        .arg(format!("ferry://127.0.0.1:{}/www", free_port()))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("sync.key") && err.contains("chmod 600"),
        "{}",
        text(&o)
    );
}

#[test]
fn agent_metrics_on_a_network_address_need_a_private_token_file() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agent.toml");
    let ex = ex.to_str().unwrap();
    // No token, an address other hosts reach: refused.
    let o = run(&[
        "agent",
        "--check",
        "--config",
        ex,
        "--metrics-listen",
        "0.0.0.0:9102",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--metrics-token-file"),
        "{}",
        text(&o)
    );
    // A token file others can read: refused (ferry-secret's rule).
    let token = t.path().join("metrics.token");
    fs::write(&token, "scrape-token-0123456789\n").unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o644)).unwrap();
    let tok = token.to_str().unwrap();
    let args = [
        "agent",
        "--check",
        "--config",
        ex,
        "--metrics-listen",
        "0.0.0.0:9102",
        "--metrics-token-file",
        tok,
    ];
    let o = run(&args);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // Owner-only: accepted; on loopback no token is needed.
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&[
        "agent",
        "--check",
        "--config",
        ex,
        "--metrics-listen",
        "127.0.0.1:9102",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // `ferry sync` publishes metrics only while it follows.
    let (src, dst) = (t.path().join("s"), t.path().join("d"));
    fs::create_dir_all(&src).unwrap();
    let o = run(&[
        "sync",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:9102",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!dst.exists(), "nothing done before the usage error");
    // Without --config there is no sync agent to measure.
    let exec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/exec.toml");
    if exec.exists() {
        let o = run(&[
            "agent",
            "--check",
            "--exec-config",
            exec.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:9102",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    }
}
