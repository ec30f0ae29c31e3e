//! One accepted command, as its own task: on record as `accepted` before it
//! is spawned, its output streamed line by line, stopped (its whole process
//! group) on timeout, when the caller goes away or when the agent stops,
//! and on record as `end` before the caller gets the last line.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

use super::handle::ExecRequest;
use super::{object, ExecServer, DRAIN_AFTER_EXIT, KILL_GRACE, MAX_LINE, OUTPUT_RECORDS};
use crate::allow::AllowEntry;

/// What the handler gets from a run: its output, or why it did not start.
pub(super) type Ready = std::result::Result<mpsc::Receiver<Bytes>, (StatusCode, String)>;

/// One accepted request.
pub(super) struct Run {
    id: String,
    caller: String,
    peer: SocketAddr,
    argv: Vec<String>,
    entry: AllowEntry,
    timeout: Duration,
}

/// How a command ended, as the caller and the audit log see it.
enum Ending {
    Exited(ExitStatus),
    TimedOut,
    CallerGone,
    /// The agent is stopping.
    Stopped,
}

impl Run {
    /// The run of `request`, allowed by `entry`: its timeout is the one
    /// asked for, at most the entry's; its id is unique across restarts.
    pub(super) fn new(
        srv: &ExecServer,
        caller: String,
        peer: SocketAddr,
        request: ExecRequest,
        entry: AllowEntry,
    ) -> Run {
        let timeout = request
            .timeout_ms
            .map_or(entry.max_timeout, Duration::from_millis)
            .min(entry.max_timeout);
        let id = format!(
            "{}-{}",
            srv.boot,
            srv.seq.fetch_add(1, Ordering::Relaxed) + 1
        );
        Run {
            id,
            caller,
            peer,
            argv: request.argv,
            entry,
            timeout,
        }
    }

    fn who(&self) -> Map<String, Value> {
        object(json!({
            "id": self.id,
            "caller": self.caller,
            "peer": self.peer.to_string(),
            "argv": self.argv,
            "shell": self.entry.shell,
        }))
    }

    /// Records the run as accepted, spawns the command, tells the handler
    /// (`ready`: the output channel, or the status refusing it), then
    /// streams the output until the command ends. `permit` (a
    /// `max_running` slot) is held until the command is reaped. Nothing
    /// runs unrecorded: the `accepted` record is on disk first.
    pub(super) async fn execute(
        self,
        srv: Arc<ExecServer>,
        permit: OwnedSemaphorePermit,
        ready: oneshot::Sender<Ready>,
    ) {
        let _permit = permit;
        let Some((mut child, tx)) = self.start(&srv, ready).await else {
            return;
        };
        let started = Instant::now();
        let mut pumps = spawn_pumps(&mut child, &tx);
        let pid = child.id();
        let ending = self.wait(&srv, &mut child, &tx).await;
        let status = match ending {
            Ending::Exited(s) => {
                // What the command left running in its group goes too.
                kill_group(pid, rustix::process::Signal::KILL);
                Some(s)
            }
            _ => stop_group(&mut child, pid).await,
        };
        self.drain(&mut pumps).await;
        let last = self
            .record_end(&srv, &ending, status, started.elapsed())
            .await;
        // A caller that stopped reading gets no more than the write
        // deadline to take the last record.
        let _ = tokio::time::timeout(
            srv.limits().write_timeout,
            tx.send(Bytes::from(format!("{last}\n"))),
        )
        .await;
    }

    /// `accepted` on record, the command spawned, `start` on record and the
    /// handler told; `None` (the handler told why) when it cannot run.
    async fn start(
        &self,
        srv: &ExecServer,
        ready: oneshot::Sender<Ready>,
    ) -> Option<(Child, mpsc::Sender<Bytes>)> {
        let mut f = self.who();
        f.insert(
            "timeout_ms".into(),
            (self.timeout.as_millis() as u64).into(),
        );
        if let Err(e) = srv.audit("accepted", Value::Object(f)).await {
            srv.stats.audit_refused.fetch_add(1, Ordering::Relaxed);
            let msg = format!("not run: the audit log cannot be written ({e})");
            let _ = ready.send(Err((StatusCode::SERVICE_UNAVAILABLE, msg)));
            return None;
        }
        let child = match self.command().spawn() {
            Ok(c) => c,
            Err(e) => {
                srv.stats.spawn_failed.fetch_add(1, Ordering::Relaxed);
                let msg = format!("cannot start {:?}: {e}", self.argv[0]);
                let mut f = self.who();
                f.insert("reason".into(), msg.clone().into());
                let _ = srv.audit("spawn_failed", Value::Object(f)).await;
                let _ = ready.send(Err((StatusCode::UNPROCESSABLE_ENTITY, msg)));
                return None;
            }
        };
        srv.stats.started.fetch_add(1, Ordering::Relaxed);
        let mut f = self.who();
        f.insert("pid".into(), child.id().into());
        f.insert(
            "timeout_ms".into(),
            (self.timeout.as_millis() as u64).into(),
        );
        // Best effort: the run is already on record as accepted.
        let _ = srv.audit("start", Value::Object(f)).await;
        let (tx, rx) = mpsc::channel::<Bytes>(OUTPUT_RECORDS);
        // A handler gone already drops `rx` here: `tx.closed()` in `wait`
        // then stops the command as for a caller that went away.
        let _ = ready.send(Ok(rx));
        Some((child, tx))
    }

    /// The command as the allow-list entry says: the argv itself, or the
    /// entry's shell line; in its own process group, stdin closed.
    fn command(&self) -> tokio::process::Command {
        let mut cmd = if self.entry.shell {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c").arg(self.entry.shell_line());
            c
        } else {
            let mut c = tokio::process::Command::new(&self.argv[0]);
            c.args(&self.argv[1..]);
            c
        };
        if let Some(cwd) = &self.entry.cwd {
            cmd.current_dir(cwd);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    /// Waits for whichever comes first: the exit, the timeout, the caller
    /// gone, the agent stopping.
    async fn wait(&self, srv: &ExecServer, child: &mut Child, tx: &mpsc::Sender<Bytes>) -> Ending {
        let mut stopping = srv.stopping.subscribe();
        tokio::select! {
            st = child.wait() => match st {
                Ok(s) => Ending::Exited(s),
                Err(e) => {
                    tracing::error!(id = %self.id, error = %e, "waiting for a command failed");
                    Ending::CallerGone
                }
            },
            _ = tokio::time::sleep(self.timeout) => Ending::TimedOut,
            _ = tx.closed() => Ending::CallerGone,
            _ = stopping.wait_for(|s| *s) => Ending::Stopped,
        }
    }

    /// Output still buffered in the pipes is passed on; a reader whose pipe
    /// a process outside the group still holds is stopped (its end of the
    /// pipe closes with it).
    async fn drain(&self, pumps: &mut [JoinHandle<()>]) {
        let drain_until = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
        for p in pumps {
            if tokio::time::timeout_at(drain_until, &mut *p).await.is_err() {
                p.abort();
                tracing::warn!(id = %self.id, "output still open after the command ended (a process that left its group?): reader stopped");
            }
        }
    }

    /// Writes the `end` record (on record before the caller learns the
    /// result) and returns the caller's last line.
    async fn record_end(
        &self,
        srv: &ExecServer,
        ending: &Ending,
        status: Option<ExitStatus>,
        took: Duration,
    ) -> Value {
        let duration_ms = took.as_millis() as u64;
        let exit = status.and_then(|s| s.code());
        let signal = status.and_then(|s| s.signal());
        let timed_out = matches!(ending, Ending::TimedOut);
        let gone = matches!(ending, Ending::CallerGone);
        let agent_stopped = matches!(ending, Ending::Stopped);
        let last = json!({
            "exit": exit,
            "signal": signal,
            "timed_out": timed_out,
            "duration_ms": duration_ms,
        });
        let mut f = self.who();
        f.insert("exit".into(), exit.into());
        f.insert("signal".into(), signal.into());
        f.insert("timed_out".into(), timed_out.into());
        f.insert("caller_gone".into(), gone.into());
        f.insert("agent_stopped".into(), agent_stopped.into());
        f.insert("duration_ms".into(), duration_ms.into());
        let _ = srv.audit("end", Value::Object(f)).await;
        last
    }
}

/// One reader task per output pipe of `child`, each sending to `tx`.
fn spawn_pumps(child: &mut Child, tx: &mpsc::Sender<Bytes>) -> Vec<JoinHandle<()>> {
    [
        child
            .stdout
            .take()
            .map(|o| tokio::spawn(pump(o, "stdout", tx.clone()))),
        child
            .stderr
            .take()
            .map(|e| tokio::spawn(pump(e, "stderr", tx.clone()))),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Sends `signal` to the process group led by `pid` (errors ignored: the
/// group may be gone already).
fn kill_group(pid: Option<u32>, signal: rustix::process::Signal) {
    if let Some(g) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(g, signal);
    }
}

/// TERM to the command's process group, KILL after a grace; the exit status.
async fn stop_group(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
) -> Option<std::process::ExitStatus> {
    kill_group(pid, rustix::process::Signal::TERM);
    if let Ok(Ok(s)) = tokio::time::timeout(KILL_GRACE, child.wait()).await {
        // The leader is gone; what it left in its group goes too.
        kill_group(pid, rustix::process::Signal::KILL);
        return Some(s);
    }
    kill_group(pid, rustix::process::Signal::KILL);
    let _ = child.start_kill();
    child.wait().await.ok()
}

/// Sends each line of `r` as `{"stream": name, "line": ...}`.
async fn pump(r: impl AsyncRead + Unpin, name: &'static str, tx: mpsc::Sender<Bytes>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut r)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let line = json!({"stream": name, "line": String::from_utf8_lossy(&buf)});
        if tx.send(Bytes::from(format!("{line}\n"))).await.is_err() {
            return;
        }
    }
}
