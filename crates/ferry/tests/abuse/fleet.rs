//! Attacks on the fleet agent's exec server (`ferry agent --exec-config`),
//! issue 15 #2, #12, #13 and the exec findings: each against a real agent
//! on loopback with its default limits, checked with what `ferry exec` and
//! a raw client see, and with the agent's audit log and stderr.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http1::read_response;
use crate::report;
use crate::support::procs::{free_port, FERRY};
use crate::support::workdir;
use crate::tmpfs::Tmpfs;

/// The binary under test.
const FERRY_BIN: &str = FERRY;
const TOKEN: &str = "abuse-fleet-caller-token-0123";
/// Longest wait for anything that should happen: only there to catch hangs.
const LIMIT: Duration = Duration::from_secs(60);
/// The agent's default `limits.header_timeout`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `ferry agent --exec-config`, killed (by pid) and reaped when
/// dropped.
struct Agent {
    child: Child,
    addr: SocketAddr,
    audit: PathBuf,
    stderr: PathBuf,
    fleet: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts an agent in `work` whose audit log is `audit` and whose
/// allow-list is `allow` (TOML `[[allow]]` tables), with one caller.
fn start_agent(work: &Path, audit: &Path, allow: &str) -> Agent {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let exec = work.join("exec.toml");
    std::fs::write(
        &exec,
        format!(
            "listen = \"{addr}\"\naudit_log = \"{}\"\n[callers.ops]\ntoken = \"{TOKEN}\"\n{allow}",
            audit.display()
        ),
    )
    .unwrap();
    let fleet = work.join("fleet.toml");
    std::fs::write(
        &fleet,
        format!("token = \"{TOKEN}\"\n[servers.a]\nexec = \"{addr}\"\n"),
    )
    .unwrap();
    let stderr = work.join("agent.stderr");
    let child = Command::new(FERRY_BIN)
        .arg("agent")
        .arg("--exec-config")
        .arg(&exec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("starting ferry agent");
    let mut agent = Agent {
        child,
        addr,
        audit: audit.to_path_buf(),
        stderr,
        fleet,
    };
    // Ready when it says it listens (connections queue from then on). Not
    // a probe connection: its slot would be freed at an unknown moment.
    let end = Instant::now() + LIMIT;
    while !agent.stderr_text().contains("exec server listening") {
        if let Ok(Some(st)) = agent.child.try_wait() {
            panic!("ferry agent exited ({st}):\n{}", agent.stderr_text());
        }
        assert!(Instant::now() < end, "agent not listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

impl Agent {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `ferry exec` on this agent, as an operator runs it.
    fn exec(&self, argv: &[&str]) -> Output {
        Command::new(FERRY_BIN)
            .args(["exec", "--fleet"])
            .arg(&self.fleet)
            .args(["--all", "--timeout", "60s", "--"])
            .args(argv)
            .env_remove("FERRY_EXEC_TOKEN")
            .output()
            .unwrap()
    }

    fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }

    /// A raw connection with a read deadline.
    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s
    }

    /// `ferry exec -- echo served` until it succeeds (the agent may still
    /// be cutting the attacker's connections); whether it did within LIMIT.
    fn served(&self) -> bool {
        let end = Instant::now() + LIMIT;
        loop {
            let out = self.exec(&["echo", "served"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("served") {
                return true;
            }
            if Instant::now() > end {
                eprintln!("not served:\n{}", text(&out));
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// How long until the peer closes `s` (EOF or reset), or None if it sent
/// data or the read deadline passed first.
fn closed_after(s: &mut TcpStream, since: Instant) -> Option<Duration> {
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Some(since.elapsed())
            }
            Err(_) => return None,
        }
    }
}

/// Issue 15 #2: hyper's HTTP/1 server had no timer, so a half-sent request,
/// a silent connection and an idle keep-alive connection stayed open for
/// good, and so did a body that never finished.
#[test]
fn fleet_half_sent_requests_and_idle_connections_are_closed() {
    let dir = workdir();
    let agent = start_agent(
        dir.path(),
        &dir.path().join("audit.jsonl"),
        "[[allow]]\nargv = [\"echo\", \"...\"]\n",
    );
    let t0 = Instant::now();
    let mut silent = agent.connect();
    let mut half = agent.connect();
    half.write_all(b"POST /v1/exec HTTP/1.1\r\nHost: a\r\nAuthoriz")
        .unwrap();
    let mut idle = agent.connect();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut idle_r = BufReader::new(idle.try_clone().unwrap());
    let st = read_response(&mut idle_r).unwrap().status;
    assert_eq!(st, 200);
    let idle_since = Instant::now();
    let mut slow_body = agent.connect();
    slow_body
        .write_all(
            format!(
                "POST /v1/exec HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{\"argv\""
            )
            .as_bytes(),
        )
        .unwrap();
    // Normal requests are served while those hang.
    let served = agent.served();
    let silent_t = closed_after(&mut silent, t0);
    let half_t = closed_after(&mut half, t0);
    let idle_t = closed_after(&mut idle, idle_since);
    let mut slow_r = BufReader::new(slow_body.try_clone().unwrap());
    let slow = read_response(&mut slow_r);
    let rss = report::rss_kib(agent.pid());
    for (what, t) in [
        ("silent", silent_t),
        ("half-sent", half_t),
        ("idle", idle_t),
    ] {
        let t = t.unwrap_or_else(|| panic!("{what} connection still open after {LIMIT:?}"));
        assert!(
            t >= HEADER_TIMEOUT - Duration::from_millis(500),
            "{what} connection closed after {t:?}, before the header timeout"
        );
    }
    let slow = slow.expect("a response to the unfinished body");
    let body = &slow.body;
    assert_eq!(slow.status, 408, "{body}");
    assert!(body.contains("body_timeout"), "{body}");
    assert!(served);
    report::row(
        "exec: silent, half-sent head, idle keep-alive, unfinished body",
        &format!(
            "closed after {:.1} s / {:.1} s / {:.1} s; body 408",
            silent_t.unwrap_or_default().as_secs_f64(),
            half_t.unwrap_or_default().as_secs_f64(),
            idle_t.unwrap_or_default().as_secs_f64()
        ),
        rss,
        served,
    );
}

/// Issue 15 #2: no connection cap; 64 silent connections hold every slot,
/// and more are refused at once instead of queueing without bound.
#[test]
fn fleet_connection_flood_is_capped() {
    let dir = workdir();
    let agent = start_agent(
        dir.path(),
        &dir.path().join("audit.jsonl"),
        "[[allow]]\nargv = [\"echo\", \"...\"]\n",
    );
    let held: Vec<TcpStream> = (0..64).map(|_| agent.connect()).collect();
    // The agent accepts in order, so once the 64 are answered by a
    // refusal of the next ones, they hold the slots.
    let mut refused = 0;
    let t0 = Instant::now();
    for _ in 0..16 {
        let mut s = agent.connect();
        s.set_read_timeout(Some(HEADER_TIMEOUT / 2)).unwrap();
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => {
                let t = String::from_utf8_lossy(&buf);
                assert!(t.starts_with("HTTP/1.1 503"), "{t}");
                refused += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            Err(e) => panic!("connection over the cap not refused at once: {e}"),
        }
    }
    let refusing = t0.elapsed();
    let rss = report::rss_kib(agent.pid());
    drop(held);
    let served = agent.served();
    let metrics = {
        let mut s = agent.connect();
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        read_response(&mut BufReader::new(s)).unwrap().body
    };
    assert!(
        metrics.contains("ferry_exec_connections_refused_total 16"),
        "{metrics}"
    );
    assert_eq!(refused, 16);
    assert!(served);
    report::row(
        "exec: 80 connections at once",
        &format!(
            "64 held, 16 refused with 503 in {:.2} s",
            refusing.as_secs_f64()
        ),
        rss,
        served,
    );
}

/// Issue 15 #12: every unauthenticated request was audited with its own
/// fdatasync on a runtime thread (and logged). A flood is now counted and
/// written as one record per interval.
#[test]
fn fleet_unauthenticated_flood_is_counted_not_synced_each() {
    const CONNS: usize = 8;
    const EACH: usize = 250;
    let dir = workdir();
    let agent = start_agent(
        dir.path(),
        &dir.path().join("audit.jsonl"),
        "[[allow]]\nargv = [\"echo\", \"...\"]\n",
    );
    let t0 = Instant::now();
    let flood: Vec<_> = (0..CONNS)
        .map(|_| {
            let s = agent.connect();
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                for _ in 0..EACH {
                    w.write_all(
                        b"POST /v1/exec HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer wrong-token-wrong-token\r\nContent-Length: 0\r\n\r\n",
                    )
                    .unwrap();
                    let st = read_response(&mut r).unwrap().status;
                    assert_eq!(st, 401);
                }
            })
        })
        .collect();
    let served = agent.served();
    for t in flood {
        t.join().unwrap();
    }
    let flood_t = t0.elapsed();
    let rss = report::rss_kib(agent.pid());
    // The batch is written within one interval (10 s by default).
    let end = Instant::now() + LIMIT;
    let (records, counted) = loop {
        let recs: Vec<Value> = agent
            .audit_events()
            .into_iter()
            .filter(|e| e["event"] == "unauthenticated")
            .collect();
        let counted: u64 = recs.iter().map(|e| e["count"].as_u64().unwrap_or(1)).sum();
        if counted >= (CONNS * EACH) as u64 || Instant::now() > end {
            break (recs.len(), counted);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(counted, (CONNS * EACH) as u64);
    assert!(
        records <= 4,
        "{records} audit records for one flood (one synced write each?)"
    );
    let stderr = agent.stderr_text();
    let log_lines = stderr
        .lines()
        .filter(|l| l.contains("unauthenticated"))
        .count();
    assert!(log_lines <= 4, "{log_lines} log lines:\n{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    assert!(served);
    report::row(
        "exec: 2,000 unauthenticated requests",
        &format!(
            "401 each in {:.2} s; {records} audit record(s), {log_lines} log line(s)",
            flood_t.as_secs_f64()
        ),
        rss,
        served,
    );
}

/// Issue 15 #12: with the audit log's disk full, an authenticated command
/// still ran, unrecorded. It is now refused (503) until the log can be
/// written, and the failure is logged once, not per request.
#[test]
fn fleet_a_command_that_cannot_be_audited_is_not_run() {
    let dir = workdir();
    let fs = Tmpfs::mount(&dir.path().join("log"), "256k");
    let filler = fs.fill();
    let agent = start_agent(
        dir.path(),
        &dir.path().join("log/audit.jsonl"),
        &format!(
            "[[allow]]\nargv = [\"touch\", \"*\"]\ncwd = \"{}\"\n[[allow]]\nargv = [\"echo\", \"...\"]\n",
            dir.path().display()
        ),
    );
    let mut outs = Vec::new();
    for i in 0..3 {
        outs.push(agent.exec(&["touch", &format!("ran-{i}")]));
    }
    let rss = report::rss_kib(agent.pid());
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(out.status.code(), Some(1), "{}", text(out));
        let t = text(out);
        assert!(t.contains("503") && t.contains("audit log"), "{t}");
        assert!(
            !dir.path().join(format!("ran-{i}")).exists(),
            "a command ran although it could not be audited"
        );
    }
    let stderr = agent.stderr_text();
    let errors = stderr.lines().filter(|l| l.contains("ERROR")).count();
    assert_eq!(errors, 1, "{stderr}");
    // Room again: commands run and are on record.
    std::fs::remove_file(&filler).unwrap();
    let out = agent.exec(&["touch", "ran-after"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.path().join("ran-after").exists());
    let events = agent.audit_events();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "accepted" && e["argv"][1] == "ran-after"),
        "{events:?}"
    );
    let served = agent.served();
    drop(agent);
    drop(fs);
    report::row(
        "exec: audit log disk full",
        "3 commands refused with 503, none run; 1 log line; runs again once there is room",
        rss,
        served,
    );
}

/// Issue 15 #13: `cat /srv/www/*` admitted `cat /srv/www/../secret`, and
/// `bin/magento setup:* ...` admitted `setup:uninstall -n`.
#[test]
fn fleet_wildcards_admit_no_dotdot_and_no_options() {
    let dir = workdir();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "public page\n").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "top secret\n").unwrap();
    let shop = dir.path().join("shop");
    std::fs::create_dir_all(shop.join("bin")).unwrap();
    std::os::unix::fs::symlink("/bin/echo", shop.join("bin/magento")).unwrap();
    let agent = start_agent(
        dir.path(),
        &dir.path().join("audit.jsonl"),
        &format!(
            "[[allow]]\nargv = [\"cat\", \"{}/*\"]\n[[allow]]\nargv = [\"bin/magento\", \"setup:*\", \"...\"]\ncwd = \"{}\"\n[[allow]]\nargv = [\"echo\", \"...\"]\n",
            www.display(),
            shop.display()
        ),
    );
    let climb = format!("{}/../secret.txt", www.display());
    let attacks = [
        agent.exec(&["cat", &climb]),
        agent.exec(&["bin/magento", "setup:uninstall", "-n"]),
    ];
    let rss = report::rss_kib(agent.pid());
    for out in &attacks {
        let t = text(out);
        assert_eq!(out.status.code(), Some(3), "{t}");
        assert!(t.contains("allow-list"), "{t}");
        assert!(
            !t.contains("top secret") && !t.contains("setup:uninstall -n"),
            "{t}"
        );
    }
    let page = agent.exec(&["cat", &format!("{}/index.html", www.display())]);
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("public page"),
        "{}",
        text(&page)
    );
    let up = agent.exec(&["bin/magento", "setup:upgrade"]);
    assert!(
        String::from_utf8_lossy(&up.stdout).contains("setup:upgrade"),
        "{}",
        text(&up)
    );
    let served = agent.served();
    report::row(
        "exec: `..` and an option through allow-list wildcards",
        "both refused (403), nothing run",
        rss,
        served,
    );
}

/// No cap on concurrent commands: each caller could start any number. The
/// ninth is now refused with 429 while eight run; a caller that goes away
/// stops its command (killed and reaped).
#[test]
fn fleet_running_commands_are_capped_and_stop_with_their_caller() {
    let dir = workdir();
    let agent = start_agent(
        dir.path(),
        &dir.path().join("audit.jsonl"),
        "[[allow]]\nargv = [\"sleep\", \"*\"]\n[[allow]]\nargv = [\"echo\", \"...\"]\n",
    );
    let body = r#"{"argv":["sleep","300"],"timeout_ms":300000}"#;
    let mut running = Vec::new();
    for _ in 0..8 {
        let mut s = agent.connect();
        s.write_all(
            format!(
                "POST /v1/exec HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        running.push(s);
    }
    let ninth = agent.exec(&["echo", "ninth"]);
    let rss = report::rss_kib(agent.pid());
    let t = text(&ninth);
    assert_eq!(ninth.status.code(), Some(1), "{t}");
    assert!(t.contains("429") && t.contains("max_running"), "{t}");
    assert!(
        !String::from_utf8_lossy(&ninth.stdout).contains("| ninth"),
        "{t}"
    );
    // The callers go away: their sleeps are killed and reaped.
    drop(running);
    let served = agent.served();
    let pids: Vec<u64> = agent
        .audit_events()
        .iter()
        .filter(|e| e["event"] == "start" && e["argv"][0] == "sleep")
        .filter_map(|e| e["pid"].as_u64())
        .collect();
    assert_eq!(pids.len(), 8);
    let end = Instant::now() + LIMIT;
    for pid in pids {
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < end, "sleep {pid} outlived its caller");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(served);
    report::row(
        "exec: 9 commands at once, then the callers vanish",
        "9th refused with 429; the 8 killed and reaped",
        rss,
        served,
    );
}

/// Live (not zombie) processes of process group `pgid`.
fn group(pgid: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // After "(comm)": state, ppid, pgrp.
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, r)| r.split_whitespace().collect());
        if rest.len() > 2 && rest[2] == pgid && rest[0] != "Z" {
            out.push(name);
        }
    }
    out
}

/// Open file descriptors of `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Whether `pid` is still a live process (not gone, not a zombie).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false)
}

/// Output readers were not stopped: a command that left a process behind
/// holding its stdout kept that process running, and one whose output a
/// process outside its group held kept the agent's readers (and pipe
/// descriptors) for good.
#[test]
fn fleet_command_leftovers_and_their_output_readers_are_stopped() {
    let dir = workdir();
    let agent = start_agent(
        dir.path(),
        &dir.path().join("audit.jsonl"),
        "[[allow]]\nargv = [\"sh\", \"-c\", \"*\"]\n[[allow]]\nargv = [\"echo\", \"...\"]\n",
    );
    assert!(agent.served());
    let before = fds(agent.pid());
    let mut left = Vec::new();
    let mut escaped = Vec::new();
    for i in 0..5 {
        // Left in the command's group, holding its output.
        let p = dir.path().join(format!("left-{i}"));
        let out = agent.exec(&[
            "sh",
            "-c",
            &format!("sleep 300 & echo $! > {}; echo started", p.display()),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        left.push(p);
        // Out of the group (a new session), holding its output.
        let p = dir.path().join(format!("escaped-{i}"));
        let out = agent.exec(&[
            "sh",
            "-c",
            &format!("setsid sleep 300 & echo $! > {}; echo started", p.display()),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        escaped.push(p);
    }
    let read_pid = |p: &PathBuf| std::fs::read_to_string(p).unwrap().trim().to_string();
    let escaped: Vec<String> = escaped.iter().map(read_pid).collect();
    let after = fds(agent.pid());
    let rss = report::rss_kib(agent.pid());
    let survivors: Vec<String> = left.iter().map(read_pid).filter(|p| alive(p)).collect();
    // The escaped sleeps were started by this test (through the agent):
    // stop them by pid before asserting.
    for pid in &escaped {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
    let served = agent.served();
    assert!(
        survivors.is_empty(),
        "left in their group and alive: {survivors:?}"
    );
    assert!(
        after <= before + 2,
        "the agent holds {after} descriptors, {before} before: output readers leaked"
    );
    assert!(served);
    report::row(
        "exec: 10 commands leaving processes that hold their output",
        &format!("group leftovers killed; agent fds {before} -> {after} (readers stopped)"),
        rss,
        served,
    );
}

/// A caller token in a file open to others was read as is.
#[test]
fn fleet_a_token_file_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = workdir();
    let tok = dir.path().join("ops.token");
    std::fs::write(&tok, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).unwrap();
    let exec = dir.path().join("exec.toml");
    std::fs::write(
        &exec,
        format!(
            "listen = \"127.0.0.1:{}\"\naudit_log = \"audit.jsonl\"\n[callers.ops]\ntoken_file = \"ops.token\"\n",
            free_port()
        ),
    )
    .unwrap();
    let out = Command::new(FERRY_BIN)
        .args(["agent", "--check", "--exec-config"])
        .arg(&exec)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("exec.toml:4:") && t.contains("0644") && t.contains("chmod 600"),
        "{t}"
    );
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(FERRY_BIN)
        .args(["agent", "--check", "--exec-config"])
        .arg(&exec)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    report::row(
        "exec: caller token file mode 0644",
        "agent refuses to start (exit 2, names file:line and chmod 600)",
        0,
        true,
    );
}

/// Stopping the agent (SIGTERM: a restart during a deploy) cut its running
/// commands off: the leader was killed on the way out, what it started in
/// its group ran on, and nothing recorded how the run ended.
#[test]
fn fleet_stopping_the_agent_stops_and_records_its_commands() {
    let dir = workdir();
    let mut agent = start_agent(
        dir.path(),
        &dir.path().join("audit.jsonl"),
        "[[allow]]\nargv = [\"sh\", \"-c\", \"*\"]\n",
    );
    let bg = dir.path().join("bg.pid");
    let body = serde_json::json!({
        "argv": ["sh", "-c", format!("sleep 300 & echo $! > {}; sleep 300", bg.display())],
        "timeout_ms": 300_000,
    })
    .to_string();
    let mut s = agent.connect();
    s.write_all(
        format!(
            "POST /v1/exec HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut status = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut status)
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let end = Instant::now() + LIMIT;
    let bg_pid = loop {
        let p = std::fs::read_to_string(&bg).unwrap_or_default();
        if p.ends_with('\n') {
            break p.trim().to_string();
        }
        assert!(Instant::now() < end, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let leader = agent
        .audit_events()
        .iter()
        .find(|e| e["event"] == "start")
        .and_then(|e| e["pid"].as_u64())
        .expect("a start record with the pid")
        .to_string();
    let rss = report::rss_kib(agent.pid());
    let t0 = Instant::now();
    let st = Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let exited = loop {
        if let Some(st) = agent.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "the agent did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stop_t = t0.elapsed();
    let mut left = group(&leader);
    if alive(&bg_pid) && !left.contains(&bg_pid) {
        left.push(bg_pid.clone());
    }
    // Stop what survived (started by this test, through the agent).
    for pid in &left {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
    assert!(
        exited.success(),
        "agent exit {exited}: {}",
        agent.stderr_text()
    );
    assert!(
        left.is_empty(),
        "still running after the agent stopped: {left:?}"
    );
    let events = agent.audit_events();
    let ended = events
        .iter()
        .find(|e| e["event"] == "end")
        .unwrap_or_else(|| panic!("no end record: {events:?}"));
    assert_eq!(ended["agent_stopped"], true, "{ended}");
    drop(s);
    report::row(
        "exec: agent stopped (SIGTERM) with a command running",
        &format!(
            "command group stopped and recorded; agent exited in {:.1} s",
            stop_t.as_secs_f64()
        ),
        rss,
        true,
    );
}
