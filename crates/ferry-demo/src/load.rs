//! The load generator: concurrent clients reading and writing every site
//! through the routers for the whole migration. It records each write the
//! shop acknowledged (site, sequence number) and each failed request with its
//! reason; a request held by a frozen site is slow, not failed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;

use super::topology::Site;

/// Longer than the routers' hold_max (30 s): a held request is never cut short
/// by the client, only a real hang is.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);
/// Between two requests of one client: keeps a 2-core machine responsive for
/// the routers and the orchestrator while still sending hundreds per second.
const THINK: Duration = Duration::from_millis(4);

pub struct LoadConfig {
    /// Where the public IP now points: the destination router.
    pub entry: SocketAddr,
    /// The source router: clients with a stale DNS answer still reach it.
    pub stale_entry: SocketAddr,
    pub clients: usize,
    /// Of `clients`, how many use `stale_entry`.
    pub stale_clients: usize,
    pub sites: Arc<Vec<Site>>,
    /// Hard bound: the load stops itself after this even if nobody asks.
    pub max_run: Duration,
}

#[derive(Default)]
pub struct LoadResult {
    pub sent: u64,
    pub failed: u64,
    /// Reason -> count.
    pub reasons: BTreeMap<String, u64>,
    /// Acknowledged writes per site (index into the site list): sequence numbers.
    pub acked: Vec<Vec<u64>>,
    pub reads: u64,
    pub writes: u64,
    /// The longest any acknowledged request took (held ones included).
    pub slowest: Duration,
    /// Every request, in no particular order: what `ferry rehearse` needs to
    /// tell, per unit, the requests held by its freeze and those that failed.
    pub log: Vec<RequestRecord>,
}

/// One request as the client saw it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Index into the site list.
    pub site: usize,
    /// Sent at, in milliseconds since the Unix epoch (the journal's clock).
    pub sent_at_ms: u64,
    /// How long until the answer was complete (or the failure).
    pub took: Duration,
    /// The reason it failed, if it did.
    pub failed: Option<String>,
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<LoadResult>,
    started: Instant,
    sites: usize,
    /// Requests finished so far (for progress lines).
    pub done: Arc<AtomicU64>,
}

impl Load {
    pub fn start(config: LoadConfig) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let seqs: Arc<Vec<AtomicU64>> =
            Arc::new((0..config.sites.len()).map(|_| AtomicU64::new(0)).collect());
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.clients * 2)
            .build(connector);
        let deadline = Instant::now() + config.max_run;
        let mut tasks = JoinSet::new();
        for i in 0..config.clients {
            let target = if i < config.stale_clients {
                config.stale_entry
            } else {
                config.entry
            };
            let c = Worker {
                http: client.clone(),
                target,
                sites: Arc::clone(&config.sites),
                seqs: Arc::clone(&seqs),
                stop: Arc::clone(&stop),
                done: Arc::clone(&done),
                deadline,
                rng: Rng::new(i as u64),
            };
            tasks.spawn(c.run());
        }
        Load {
            stop,
            tasks,
            started: Instant::now(),
            sites: config.sites.len(),
            done,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Asks every client to stop after its current request and merges what
    /// they saw. A client's current request may be held up to the routers'
    /// hold_max, so this can take that long.
    pub async fn finish(mut self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadResult {
            acked: vec![Vec::new(); self.sites],
            ..LoadResult::default()
        };
        while let Some(r) = self.tasks.join_next().await {
            let Ok(r) = r else {
                *total
                    .reasons
                    .entry("load client panicked".into())
                    .or_default() += 1;
                total.failed += 1;
                continue;
            };
            total.sent += r.sent;
            total.failed += r.failed;
            total.reads += r.reads;
            total.writes += r.writes;
            total.slowest = total.slowest.max(r.slowest);
            for (k, v) in r.reasons {
                *total.reasons.entry(k).or_default() += v;
            }
            for (site, seqs) in r.acked.into_iter().enumerate() {
                total.acked[site].extend(seqs);
            }
            total.log.extend(r.log);
        }
        total
    }
}

/// xorshift64*: enough randomness to spread requests, no dependency.
struct Rng(u64);

impl Rng {
    fn new(stream: u64) -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng((t ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

struct Worker {
    http: Client<HttpConnector, Full<Bytes>>,
    target: SocketAddr,
    sites: Arc<Vec<Site>>,
    seqs: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    deadline: Instant,
    rng: Rng,
}

enum Op {
    Index,
    Asset(usize),
    Order(u64),
}

impl Worker {
    async fn run(mut self) -> LoadResult {
        let mut r = LoadResult {
            acked: vec![Vec::new(); self.sites.len()],
            ..LoadResult::default()
        };
        while !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline {
            let site = self.rng.below(self.sites.len());
            let roll = self.rng.below(100);
            let op = if roll < 30 {
                // Taken before sending: a sequence number is never reused,
                // even if this request fails.
                Op::Order(self.seqs[site].fetch_add(1, Ordering::Relaxed) + 1)
            } else if roll < 55 {
                Op::Index
            } else {
                Op::Asset(self.rng.below(self.sites[site].assets.len()))
            };
            let (t0, sent_at_ms) = (Instant::now(), unix_ms());
            let outcome = self.once(site, &op).await;
            r.sent += 1;
            self.done.fetch_add(1, Ordering::Relaxed);
            r.log.push(RequestRecord {
                site,
                sent_at_ms,
                took: t0.elapsed(),
                failed: outcome.as_ref().err().cloned(),
            });
            match outcome {
                Ok(()) => {
                    r.slowest = r.slowest.max(t0.elapsed());
                    match op {
                        Op::Order(seq) => {
                            r.writes += 1;
                            r.acked[site].push(seq);
                        }
                        _ => r.reads += 1,
                    }
                }
                Err(reason) => {
                    r.failed += 1;
                    *r.reasons.entry(reason).or_default() += 1;
                }
            }
            tokio::time::sleep(THINK).await;
        }
        r
    }

    /// One request; Err is the reason it failed, short enough to group by.
    async fn once(&self, site: usize, op: &Op) -> Result<(), String> {
        let s = &self.sites[site];
        let (method, path, body) = match op {
            Op::Index => (Method::GET, "/".to_string(), String::new()),
            Op::Asset(i) => (Method::GET, format!("/{}", s.assets[*i]), String::new()),
            Op::Order(seq) => (Method::POST, "/order".to_string(), seq.to_string()),
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.target))
            .header(http::header::HOST, &s.host)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building request: {e}"))?;
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| {
                if e.is_connect() {
                    "connect error".to_string()
                } else {
                    "connection error".to_string()
                }
            })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| "body cut short".to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(CLIENT_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("timeout after {}s", CLIENT_TIMEOUT.as_secs()))??;
        let expected = match op {
            Op::Order(_) => StatusCode::CREATED,
            _ => StatusCode::OK,
        };
        if status != expected {
            return Err(failure_reason(status.as_u16(), &body));
        }
        let good = match op {
            // The page names its site: a response from another site is wrong.
            Op::Index => contains(&body, s.host.as_bytes()),
            Op::Asset(_) => !body.is_empty(),
            Op::Order(seq) => body.starts_with(format!("{seq} ").as_bytes()),
        };
        if !good {
            return Err("wrong body".to_string());
        }
        Ok(())
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A failed answer as the checks list it: `status 503 (the first line of
/// its body)`; the router's own answers say why in their first line.
pub fn failure_reason(status: u16, body: &[u8]) -> String {
    let why = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let why: String = why.lines().next().unwrap_or("").chars().take(72).collect();
    if why.is_empty() {
        format!("status {status}")
    } else {
        format!("status {status} ({why})")
    }
}
