//! The orchestrator as the demo runs it: `ferry migrate` children of this
//! same binary, exactly as an operator would run them, so a failpoint's
//! SIGKILL kills a real process and `resume` starts from the real journal.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use ferry_orch::MigrationStatus;
use tokio::io::{AsyncBufReadExt, BufReader};

/// What the demo tells the orchestrator child besides its arguments.
#[derive(Default, Clone)]
pub struct ChildEnv {
    pub failpoints: Option<String>,
    pub failpoint_dir: Option<PathBuf>,
    pub faults: Option<String>,
    /// Set to the child's pid once it runs (a fault that signals it).
    pub pid: Option<Arc<AtomicU32>>,
}

/// How one orchestrator run ended.
#[derive(Clone, Debug)]
pub struct RunEnd {
    pub status: ExitStatus,
    /// The last lines of its stderr, for a failure message.
    pub stderr_tail: String,
}

impl RunEnd {
    pub fn killed_by_sigkill(&self) -> bool {
        self.status.signal() == Some(9)
    }

    pub fn describe(&self) -> String {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => self.status.to_string(),
        }
    }
}

/// Runs `ferry migrate ARGS --json`, turning each JSON event line into a
/// short human line through `progress`. The child is killed if this future
/// is dropped (Ctrl-C, an error elsewhere).
pub async fn run(
    exe: &Path,
    args: &[String],
    env: &ChildEnv,
    log: &Path,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<RunEnd> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["--log-level", "warn", "migrate"])
        .args(args)
        .arg("--json")
        // Plain log lines in the file the failure message quotes.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?)
        .kill_on_drop(true);
    // Only what this run asks for: never a failpoint inherited from our caller.
    for (key, value) in [
        ("FERRY_FAILPOINTS", &env.failpoints),
        ("FERRY_FAULTS", &env.faults),
        (
            "FERRY_FAILPOINT_DIR",
            &env.failpoint_dir.as_ref().map(|d| d.display().to_string()),
        ),
    ] {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    let mut child = cmd.spawn().context("starting ferry migrate")?;
    if let (Some(pid), Some(id)) = (&env.pid, child.id()) {
        pid.store(id, Ordering::Relaxed);
    }
    let stdout = child.stdout.take().context("orchestrator stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await.unwrap_or(None) {
        if let Some(h) = human(&line) {
            progress(&h);
        }
    }
    let status = child.wait().await.context("waiting for ferry migrate")?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let text = strip_ansi(&text);
    let tail: Vec<&str> = text.lines().rev().take(6).collect();
    Ok(RunEnd {
        status,
        stderr_tail: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
    })
}

/// Drops terminal colour sequences (ESC [ ... letter) from log text.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One `--json` event of `ferry migrate` (unit, step, phase, attempt,
/// outcome, kind, freeze_ms, detail: the summary line) as a short line. Step
/// beginnings are skipped (the end says the same with its outcome); lines that
/// are not JSON are shown as they are.
fn human(line: &str) -> Option<String> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(line) else {
        return Some(line.to_string());
    };
    let text = |k: &str| {
        map.get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    let phase = text("phase");
    if phase == Some("begin") {
        return None;
    }
    let mut parts: Vec<String> = Vec::new();
    parts.push(text("unit").unwrap_or("run").to_string());
    if phase == Some("note") {
        parts.push(text("kind").unwrap_or("note").replace('_', " "));
    } else {
        parts.extend(text("step").map(str::to_string));
        parts.extend(text("outcome").map(str::to_string));
    }
    if let Some(a) = map
        .get("attempt")
        .and_then(|v| v.as_u64())
        .filter(|a| *a > 1)
    {
        parts.push(format!("(attempt {a})"));
    }
    if let Some(ms) = map.get("freeze_ms").and_then(|v| v.as_u64()) {
        parts.push(format!("(freeze {ms} ms)"));
    }
    // A detail without a summary comes as its raw JSON: not for people.
    if let Some(d) = text("detail").filter(|d| !d.starts_with('{')) {
        parts.push(format!("- {d}"));
    }
    Some(parts.join(" "))
}

/// `ferry migrate status --journal J --json`: the journal folded into
/// waves, units and step records.
pub async fn status(exe: &Path, journal: &Path) -> anyhow::Result<MigrationStatus> {
    status_with(exe, &["--journal".into(), journal.display().to_string()]).await
}

/// `ferry migrate status --json` with `source`: `--journal FILE`, or the
/// `--control etcd ...` flags of a run kept in etcd.
pub async fn status_with(exe: &Path, source: &[String]) -> anyhow::Result<MigrationStatus> {
    let out = tokio::process::Command::new(exe)
        .args(["--log-level", "warn", "migrate", "status", "--json"])
        .args(source)
        .env_remove("FERRY_FAILPOINTS")
        .env_remove("FERRY_FAULTS")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running ferry migrate status")?;
    if !out.status.success() {
        bail!(
            "ferry migrate status failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("reading the JSON of ferry migrate status")
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn events_become_short_lines() {
        assert_eq!(
            human(
                r#"{"unit":"U1","step":"freeze","phase":"end","outcome":"ok","attempt":2,"freeze_ms":null,"detail":"2 routers"}"#
            )
            .as_deref(),
            Some("U1 freeze ok (attempt 2) - 2 routers")
        );
        assert_eq!(
            human(r#"{"unit":"","phase":"note","kind":"session","detail":"{\"pid\":1}"}"#)
                .as_deref(),
            Some("run session")
        );
        assert_eq!(
            human(r#"{"unit":"U1","step":"flip","phase":"begin"}"#),
            None
        );
        assert_eq!(human("plain text").as_deref(), Some("plain text"));
        assert_eq!(human("  "), None);
    }

    #[test]
    fn colours_are_stripped() {
        assert_eq!(super::strip_ansi("\u{1b}[31mERROR\u{1b}[0m x"), "ERROR x");
    }
}
