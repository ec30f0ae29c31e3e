//! The caller's side of exec: one command on one agent ([`ExecClient::run`])
//! and the fan-out over many ([`run_all`]) with at most N at a time, output
//! handed line by line to a sink as it arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_admin_api::Http;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

/// An agent to run commands on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    /// `host:port` of its exec server.
    pub addr: String,
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Receives each output line: (server, stream, line).
pub type Sink = Arc<dyn Fn(&str, Stream, &str) + Send + Sync>;

/// How a command ended on one server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub server: String,
    pub exit: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration: Duration,
    /// The agent refused the caller or the command (401, 403).
    pub refused: bool,
    /// Why there is no exit code (refused, unreachable, cut off).
    pub error: Option<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.exit == Some(0) && self.error.is_none()
    }

    /// What the summary table shows in the exit column.
    pub fn exit_text(&self) -> String {
        if self.refused {
            "refused".into()
        } else if self.timed_out {
            "timeout".into()
        } else if let Some(c) = self.exit {
            c.to_string()
        } else if let Some(s) = self.signal {
            format!("signal {s}")
        } else {
            "error".into()
        }
    }
}

#[derive(Deserialize)]
struct Record {
    stream: Option<String>,
    line: Option<String>,
    exit: Option<i32>,
    signal: Option<i32>,
    #[serde(default)]
    timed_out: bool,
    duration_ms: Option<u64>,
}

/// Extra time the caller waits beyond the command's timeout (the agent
/// enforces the timeout; this only bounds a silent network).
const CLIENT_GRACE: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct ExecClient {
    http: Http,
    token: String,
}

impl ExecClient {
    pub fn new(token: String) -> ExecClient {
        ExecClient {
            http: Http::with_connect_timeout(Duration::from_secs(3)),
            token,
        }
    }

    /// Runs `argv` on `target`, streaming its lines to `sink`.
    pub async fn run(
        &self,
        target: &Target,
        argv: &[String],
        timeout: Duration,
        sink: &Sink,
    ) -> Outcome {
        let started = Instant::now();
        let mut out = Outcome {
            server: target.name.clone(),
            ..Outcome::default()
        };
        let limit = timeout + CLIENT_GRACE;
        let r =
            tokio::time::timeout(limit, self.exchange(target, argv, timeout, sink, &mut out)).await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => out.error = Some(e),
            Err(_) => out.error = Some(format!("no end of output within {limit:?}")),
        }
        if out.duration.is_zero() {
            out.duration = started.elapsed();
        }
        out
    }

    async fn exchange(
        &self,
        target: &Target,
        argv: &[String],
        timeout: Duration,
        sink: &Sink,
        out: &mut Outcome,
    ) -> Result<(), String> {
        let url = format!("http://{}/v1/exec", target.addr);
        let body = serde_json::json!({"argv": argv, "timeout_ms": timeout.as_millis() as u64});
        let req = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("{url}: {e}"))?;
        let resp = self
            .http
            .send(req)
            .await
            .map_err(|e| format!("{}: cannot reach the agent: {e}", target.addr))?;
        let status = resp.status();
        let mut body = resp.into_body();
        if status != StatusCode::OK {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            out.refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
            return Err(format!("{status}: {msg}"));
        }
        let mut pending: Vec<u8> = Vec::new();
        let mut ended = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("output cut off: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let rec: Record = serde_json::from_slice(&line[..line.len() - 1])
                    .map_err(|e| format!("unreadable output record: {e}"))?;
                if let (Some(s), Some(l)) = (&rec.stream, &rec.line) {
                    let stream = if s == "stderr" {
                        Stream::Stderr
                    } else {
                        Stream::Stdout
                    };
                    sink(&target.name, stream, l);
                } else if let Some(ms) = rec.duration_ms {
                    out.exit = rec.exit;
                    out.signal = rec.signal;
                    out.timed_out = rec.timed_out;
                    out.duration = Duration::from_millis(ms);
                    ended = true;
                }
            }
        }
        if !ended {
            return Err("output ended without an exit status (agent stopped?)".into());
        }
        if out.timed_out {
            return Err(format!("timed out after {timeout:?}"));
        }
        Ok(())
    }
}

/// Runs `argv` on every target, at most `parallel` at a time; outcomes in
/// the order of `targets`.
pub async fn run_all(
    client: &ExecClient,
    targets: &[Target],
    argv: &[String],
    parallel: usize,
    timeout: Duration,
    sink: Sink,
) -> Vec<Outcome> {
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let argv: Arc<[String]> = argv.into();
    let mut tasks = Vec::with_capacity(targets.len());
    for t in targets {
        let (client, t, argv, sink, permits) = (
            client.clone(),
            t.clone(),
            argv.clone(),
            sink.clone(),
            permits.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // The semaphore is never closed, so acquire cannot fail; if it
            // ever did, running without a permit is the harmless fallback.
            let _permit = permits.acquire_owned().await.ok();
            client.run(&t, &argv, timeout, &sink).await
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for (t, task) in targets.iter().zip(tasks) {
        out.push(task.await.unwrap_or_else(|e| Outcome {
            server: t.name.clone(),
            error: Some(format!("internal: {e}")),
            ..Outcome::default()
        }));
    }
    out
}

/// The summary table: server, exit code, duration.
pub fn summary_table(outcomes: &[Outcome]) -> String {
    let w = outcomes
        .iter()
        .map(|o| o.server.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let mut s = format!("{:<w$}  {:<9}  {:>9}  note\n", "server", "exit", "duration");
    for o in outcomes {
        s.push_str(&format!(
            "{:<w$}  {:<9}  {:>8.3}s  {}\n",
            o.server,
            o.exit_text(),
            o.duration.as_secs_f64(),
            o.error.as_deref().unwrap_or("")
        ));
    }
    s
}
