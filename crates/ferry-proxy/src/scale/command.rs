//! Runs a policy's provider command: an argument vector (no shell), in its
//! own process group, bounded by a timeout (TERM to the group, KILL after a
//! grace), with the start of its output kept for the log.
//!
//! The group is left alone when the leader exits by itself: an add command
//! may start a server that must outlive it (it should detach, e.g. with
//! `setsid`). The exec server of ferry-fleet stops whole groups the same
//! way; the two differ on that last point.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// TERM first, KILL this long after.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// Output kept per stream for the log.
const OUTPUT_KEPT: usize = 2048;
/// After the leader exits, its output readers get this long: a detached
/// child holding the pipe must not hold the scaler.
const READ_AFTER_EXIT: Duration = Duration::from_secs(1);

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Exit status 0.
    Ok,
    /// Exited with another status, or by a signal (`None`).
    Failed(Option<i32>),
    TimedOut,
    /// It could not be started (program missing, not executable).
    NotStarted(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        *self == Outcome::Ok
    }

    /// The `result` label of `ferry_scale_actions_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(_) => "failed",
            Outcome::TimedOut => "timeout",
            Outcome::NotStarted(_) => "not_started",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => f.write_str("exit 0"),
            Outcome::Failed(Some(c)) => write!(f, "exit {c}"),
            Outcome::Failed(None) => f.write_str("killed by a signal"),
            Outcome::TimedOut => f.write_str("timed out (process group killed)"),
            Outcome::NotStarted(e) => write!(f, "not started: {e}"),
        }
    }
}

/// What a run gave: its outcome and the start of its output.
#[derive(Debug)]
pub(crate) struct Run {
    pub outcome: Outcome,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// Runs `argv` with `env` added, for at most `timeout`.
pub(crate) async fn run(argv: &[String], env: &[(&str, String)], timeout: Duration) -> Run {
    let started = tokio::time::Instant::now();
    let Some((program, args)) = argv.split_first() else {
        return Run {
            outcome: Outcome::NotStarted("empty command".into()),
            stdout: String::new(),
            stderr: String::new(),
            took: Duration::ZERO,
        };
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Run {
                outcome: Outcome::NotStarted(format!("{program}: {e}")),
                stdout: String::new(),
                stderr: String::new(),
                took: started.elapsed(),
            }
        }
    };
    let pid = child.id();
    let out = child.stdout.take().map(|o| tokio::spawn(keep_start(o)));
    let err = child.stderr.take().map(|e| tokio::spawn(keep_start(e)));
    let outcome = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) if s.success() => Outcome::Ok,
        Ok(Ok(s)) => Outcome::Failed(s.code()),
        Ok(Err(e)) => Outcome::NotStarted(format!("waiting for {program}: {e}")),
        Err(_) => {
            kill_group(pid, rustix::process::Signal::TERM);
            if tokio::time::timeout(KILL_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            // The leader is gone; what it left in its group goes too.
            kill_group(pid, rustix::process::Signal::KILL);
            Outcome::TimedOut
        }
    };
    Run {
        outcome,
        stdout: collect(out).await,
        stderr: collect(err).await,
        took: started.elapsed(),
    }
}

/// Sends `signal` to the process group led by `pid` (errors ignored: the
/// group may be gone already).
fn kill_group(pid: Option<u32>, signal: rustix::process::Signal) {
    let pid = pid.and_then(|p| i32::try_from(p).ok());
    if let Some(g) = pid.and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process_group(g, signal);
    }
}

async fn collect(reader: Option<tokio::task::JoinHandle<String>>) -> String {
    let Some(mut r) = reader else {
        return String::new();
    };
    match tokio::time::timeout(READ_AFTER_EXIT, &mut r).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => String::new(),
        Err(_) => {
            r.abort();
            String::new()
        }
    }
}

/// Reads `r` to its end, keeping the first [`OUTPUT_KEPT`] bytes.
async fn keep_start(mut r: impl AsyncRead + Unpin) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn a_command_gets_its_environment_and_its_output_is_kept() {
        let r = run(
            &sh("echo \"$FERRY_POOL/$FERRY_SERVER\"; echo oops >&2; exit 3"),
            &[("FERRY_POOL", "web".into()), ("FERRY_SERVER", "x1".into())],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(r.outcome, Outcome::Failed(Some(3)));
        assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("web/x1", "oops"));
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        // The child of the shell is in its group and must go too.
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let r = run(&sh(&script), &[], Duration::from_millis(300)).await;
        assert_eq!(r.outcome, Outcome::TimedOut);
        assert!(r.took < Duration::from_secs(5), "{:?}", r.took);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Bounded: the kill is asynchronous in the kernel only for a moment.
        let mut gone = false;
        for _ in 0..100 {
            let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for its (killed) parent's reaper.
            if status.is_empty() || status.split(' ').nth(2) == Some("Z") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "the command's child {pid} outlived the timeout");
    }

    #[tokio::test]
    async fn a_missing_program_is_reported_not_started() {
        let r = run(
            &["/nonexistent/ferry-add".to_string()],
            &[],
            Duration::from_secs(1),
        )
        .await;
        assert!(
            matches!(r.outcome, Outcome::NotStarted(_)),
            "{:?}",
            r.outcome
        );
    }
}
