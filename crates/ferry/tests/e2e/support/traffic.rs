//! A client loop: workers sending GETs through the router for as long as a test
//! changes things under it, counting every answer and every failure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::client::{self, Reply};
use super::Deadline;

/// No loop runs longer than this, whatever happens to the test.
const MAX_RUN: Duration = Duration::from_secs(60);

/// What the loop saw so far.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Requests answered 200 by a backend.
    pub ok: u64,
    /// Answers per `X-Backend`.
    pub by_backend: HashMap<String, u64>,
    /// Everything else: errors, other statuses (counted all, the first 50 kept).
    pub failed: u64,
    pub failures: Vec<String>,
}

impl Stats {
    pub fn from(&self, backend: &str) -> u64 {
        self.by_backend.get(backend).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.ok + self.failed
    }
}

pub struct Traffic {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Starts `workers` loops of GETs to `addr`; request n of worker w asks for
    /// `hosts[(w + n * workers) % hosts.len()]`. Each worker keeps its own
    /// keep-alive connection.
    pub fn start(addr: SocketAddr, workers: usize, hosts: Vec<String>) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let hosts = Arc::new(hosts);
        let tasks = (0..workers)
            .map(|w| {
                let (stop, stats, hosts) =
                    (Arc::clone(&stop), Arc::clone(&stats), Arc::clone(&hosts));
                tokio::spawn(async move {
                    let http = client::http1();
                    let started = tokio::time::Instant::now();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_RUN {
                        let host = &hosts[(w + n * workers) % hosts.len()];
                        n += 1;
                        let result = client::get(&http, addr, host, "/loop").await;
                        record(&stats, host, result);
                    }
                })
            })
            .collect();
        Traffic { stop, stats, tasks }
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Waits (bounded) until `done` holds for what the loop saw.
    pub async fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&Stats) -> bool) {
        let deadline = Deadline::new(what, limit);
        loop {
            let s = self.stats();
            if done(&s) {
                return;
            }
            if deadline.passed() {
                panic!("timed out waiting for {what}; client loop so far: {s:?}");
            }
            deadline.tick().await;
        }
    }

    /// Waits until the loop has made `n` more requests than now.
    pub async fn wait_progress(&self, n: u64) {
        let from = self.stats().total();
        self.wait_for(
            &format!("{n} more requests"),
            Duration::from_secs(30),
            |s| s.total() >= from + n,
        )
        .await;
    }

    /// Stops the workers, waits for their last request, returns the totals.
    pub async fn stop(mut self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(client::REQUEST_LIMIT * 2, t).await;
        }
        self.stats()
    }
}

fn record(stats: &Mutex<Stats>, host: &str, result: Result<Reply, String>) {
    let mut s = stats.lock().expect("stats lock");
    let failure = match result {
        Ok(r) if r.status == 200 => match r.backend() {
            Some(b) => {
                s.ok += 1;
                *s.by_backend.entry(b.to_string()).or_default() += 1;
                return;
            }
            None => format!("{host}: 200 without X-Backend: {:?}", r.body),
        },
        Ok(r) => format!("{host}: {} {:?}", r.status, r.body),
        Err(e) => format!("{host}: {e}"),
    };
    s.failed += 1;
    if s.failures.len() < 50 {
        s.failures.push(failure);
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}
