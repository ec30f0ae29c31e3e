//! The exec server in process, with real child processes: timeouts stop the
//! whole process group, shell entries run the configured line only, and a
//! caller that goes away stops its command.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_fleet::{serve, ExecClient, ExecConfig, ExecServer, Sink, Stream, Target};
use serde_json::Value;

const TOKEN: &str = "exec-server-test-token-01";

struct Running {
    target: Target,
    audit: std::path::PathBuf,
    _stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn start(allow: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\naudit_log = \"audit.jsonl\"\n[callers.t]\ntoken = \"{TOKEN}\"\n{allow}"
    );
    let path = dir.path().join("exec.toml");
    let cfg = ExecConfig::parse(&text, &path).unwrap();
    let audit = cfg.audit_log.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(listener, ExecServer::new(cfg).unwrap(), rx));
    Running {
        target: Target {
            name: "a".into(),
            addr: addr.to_string(),
        },
        audit,
        _stop: tx,
        _dir: dir,
    }
}

fn audit(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Lines a sink received, in order.
type Lines = Arc<Mutex<Vec<(Stream, String)>>>;

fn collect() -> (Sink, Lines) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    let sink: Sink = Arc::new(move |_: &str, s: Stream, line: &str| {
        l.lock().unwrap().push((s, line.to_string()))
    });
    (sink, lines)
}

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_timeout_stops_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let r = start("[[allow]]\nargv = [\"sh\", \"-c\", \"*\"]\n").await;
    let (sink, lines) = collect();
    // The command starts a grandchild that would outlive a plain kill of sh.
    let script = format!(
        "sleep 60 & echo $! > {}; echo started; wait",
        pidfile.display()
    );
    let t0 = Instant::now();
    let out = ExecClient::new(TOKEN.into())
        .run(
            &r.target,
            &argv(&["sh", "-c", &script]),
            Duration::from_millis(500),
            &sink,
        )
        .await;
    assert!(out.timed_out, "{out:?}");
    assert!(!out.ok());
    assert_eq!(out.exit_text(), "timeout");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        lines.lock().unwrap().first().map(|l| l.1.as_str()),
        Some("started")
    );
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let end = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            Instant::now() < end,
            "the grandchild {pid} survived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end_event = audit(&r.audit)
        .into_iter()
        .find(|e| e["event"] == "end")
        .unwrap();
    assert_eq!(end_event["timed_out"], true);
}

#[tokio::test]
async fn a_shell_entry_runs_the_configured_line_only() {
    let r = start("[[allow]]\nargv = [\"greet\"]\nshell = true\n[[allow]]\nargv = [\"printf\", \"%s|\", \"...\"]\n").await;
    let client = ExecClient::new(TOKEN.into());
    // `greet` is no program: sh answers 127 (not found), which shows the
    // configured line went to sh.
    let (sink, _) = collect();
    let out = client
        .run(&r.target, &argv(&["greet"]), Duration::from_secs(10), &sink)
        .await;
    assert_eq!(out.exit, Some(127), "{out:?}");
    // Without shell: metacharacters are plain bytes of the arguments.
    let (sink, lines) = collect();
    let out = client
        .run(
            &r.target,
            &argv(&["printf", "%s|", "$(id)", "a b", ";"]),
            Duration::from_secs(10),
            &sink,
        )
        .await;
    assert!(out.ok(), "{out:?}");
    assert_eq!(lines.lock().unwrap()[0].1, "$(id)|a b|;|");
    // A program that cannot start: 422, named, logged.
    let r2 = start("[[allow]]\nargv = [\"/nonexistent/prog\"]\n").await;
    let (sink, _) = collect();
    let out = client
        .run(
            &r2.target,
            &argv(&["/nonexistent/prog"]),
            Duration::from_secs(10),
            &sink,
        )
        .await;
    let e = out.error.unwrap();
    assert!(e.contains("422") && e.contains("/nonexistent/prog"), "{e}");
    assert!(audit(&r2.audit)
        .iter()
        .any(|e| e["event"] == "spawn_failed"));
}

#[tokio::test]
async fn stderr_is_kept_apart_and_exit_codes_travel() {
    let r = start("[[allow]]\nargv = [\"sh\", \"-c\", \"*\"]\n").await;
    let (sink, lines) = collect();
    let out = ExecClient::new(TOKEN.into())
        .run(
            &r.target,
            &argv(&["sh", "-c", "echo out; echo err >&2; exit 5"]),
            Duration::from_secs(10),
            &sink,
        )
        .await;
    assert_eq!(out.exit, Some(5));
    let mut l = lines.lock().unwrap().clone();
    l.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        l,
        vec![
            (Stream::Stderr, "err".to_string()),
            (Stream::Stdout, "out".to_string())
        ]
    );
}

#[tokio::test]
async fn a_relative_program_is_found_in_the_entry_cwd() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    // A link to echo rather than a script written now: executing a file
    // just written races other tests' forks (ETXTBSY).
    std::os::unix::fs::symlink("/bin/echo", dir.path().join("bin/magento")).unwrap();
    let r = start(&format!(
        "[[allow]]\nargv = [\"bin/magento\", \"cache:*\"]\ncwd = \"{}\"\n",
        dir.path().display()
    ))
    .await;
    let (sink, lines) = collect();
    let out = ExecClient::new(TOKEN.into())
        .run(
            &r.target,
            &argv(&["bin/magento", "cache:flush"]),
            Duration::from_secs(10),
            &sink,
        )
        .await;
    assert!(out.ok(), "{out:?}");
    assert_eq!(lines.lock().unwrap()[0].1, "cache:flush");
}

/// A caller that stops reading held its connection, and kept its command
/// running, until the command's timeout: a write that makes no progress for
/// `limits.write_timeout` now closes the connection, which stops the
/// command like a caller that went away.
#[tokio::test]
async fn a_caller_that_stops_reading_is_cut_and_its_command_stopped() {
    use tokio::io::AsyncWriteExt;
    let r = start("[limits]\nwrite_timeout = \"1s\"\n[[allow]]\nargv = [\"sh\", \"-c\", \"*\"]\n")
        .await;
    let body = r#"{"argv":["sh","-c","yes 0123456789abcdef"],"timeout_ms":300000}"#;
    let mut s = tokio::net::TcpStream::connect(&r.target.addr)
        .await
        .unwrap();
    s.write_all(
        format!(
            "POST /v1/exec HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Never read: the output fills the socket buffers and stalls.
    let end = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        if let Some(e) = audit(&r.audit).into_iter().find(|e| e["event"] == "end") {
            break e;
        }
        assert!(
            Instant::now() < end,
            "the command still runs for a caller that stopped reading"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ended["caller_gone"], true, "{ended}");
    assert_eq!(ended["timed_out"], false, "{ended}");
    drop(s);
}

/// A caller whose connection closes cleanly (FIN, everything read) while
/// its command is silent: the command is stopped.
#[tokio::test]
async fn a_caller_that_closes_its_connection_stops_a_silent_command() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = start("[[allow]]\nargv = [\"sleep\", \"*\"]\n").await;
    let body = r#"{"argv":["sleep","300"],"timeout_ms":300000}"#;
    let mut s = tokio::net::TcpStream::connect(&r.target.addr)
        .await
        .unwrap();
    s.write_all(
        format!(
            "POST /v1/exec HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    drop(s);
    let end = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        if let Some(e) = audit(&r.audit).into_iter().find(|e| e["event"] == "end") {
            break e;
        }
        assert!(Instant::now() < end, "the command outlived its caller");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ended["caller_gone"], true, "{ended}");
}

/// A caller that leaves right after sending its request (before the
/// response): hyper drops the handler, and the run must still be stopped
/// and recorded rather than cut off half way (no `end` record).
#[tokio::test]
async fn a_caller_that_leaves_before_the_response_stops_its_command() {
    use tokio::io::AsyncWriteExt;
    let r = start("[[allow]]\nargv = [\"sleep\", \"*\"]\n").await;
    let body = r#"{"argv":["sleep","300"],"timeout_ms":300000}"#;
    let mut s = tokio::net::TcpStream::connect(&r.target.addr)
        .await
        .unwrap();
    s.write_all(
        format!(
            "POST /v1/exec HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    drop(s);
    let end = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        let events = audit(&r.audit);
        if let Some(e) = events.iter().find(|e| e["event"] == "end") {
            break e.clone();
        }
        assert!(
            Instant::now() < end,
            "no end record for a caller that left: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ended["caller_gone"], true, "{ended}");
}
