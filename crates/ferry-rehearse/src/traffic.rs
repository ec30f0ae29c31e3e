//! The traffic the demo's clients do not make: large downloads at full
//! speed and slow readers (a large file read a few KiB at a time), over
//! keep-alive HTTP/1.1 connections, some through the old address; and the
//! uploads and WebSocket sessions of `interactive.rs`. Each
//! request is recorded (site, when, how long, why it failed) so the
//! rehearsal can say, per unit, what its freeze held and what it cut.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_demo::topology::Site;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::exchange::read_head;
pub use crate::exchange::{Kind, Record};
use crate::interactive::{self, AckedUpload};
use crate::world::LargeFile;

/// Longer than the routers' hold_max (30 s): only a hang ends a request here.
const TIMEOUT: Duration = Duration::from_secs(45);

/// Who sends what, where.
pub struct MixConfig {
    pub sites: Arc<Vec<Site>>,
    pub large: Arc<Vec<LargeFile>>,
    /// The public address (the destination's router) and the old one.
    pub entry: SocketAddr,
    pub stale_entry: SocketAddr,
    pub downloads: usize,
    pub slow_readers: usize,
    /// A slow reader's pace: bytes per 20 ms tick.
    pub slow_chunk: usize,
    /// Clients uploading, and clients holding WebSocket sessions
    /// (`interactive.rs`), all through `entry`.
    pub uploads: usize,
    pub websockets: usize,
    /// Indexes of the sites with a database, and clients writing orders to
    /// them (`db_orders.rs`): one through `stale_entry`, the rest `entry`.
    pub with_db: Vec<usize>,
    pub db_writers: usize,
}

pub struct Mix {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<Vec<Record>>,
    acked: Arc<parking_lot::Mutex<Vec<AckedUpload>>>,
    db_acked: Arc<parking_lot::Mutex<Vec<Vec<u64>>>>,
}

/// What the mix's clients did.
pub struct MixEnd {
    pub records: Vec<Record>,
    /// The uploads the app acknowledged.
    pub uploads: Vec<AckedUpload>,
    /// The database orders acknowledged, by site index.
    pub db_orders: Vec<Vec<u64>>,
}

impl Mix {
    /// Starts the clients on the current runtime (the internet's).
    pub fn start(c: MixConfig) -> Mix {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let acked = Arc::default();
        let shared = interactive::Shared {
            sites: Arc::clone(&c.sites),
            target: c.entry,
            stop: Arc::clone(&stop),
            acked: Arc::clone(&acked),
        };
        for n in 0..c.uploads {
            tasks.spawn(interactive::uploads(shared.clone(), n));
        }
        for n in 0..c.websockets {
            tasks.spawn(interactive::websockets(shared.clone(), n));
        }
        let db_acked = Arc::new(parking_lot::Mutex::new(vec![Vec::new(); c.sites.len()]));
        let db = crate::db_orders::DbShared {
            sites: Arc::clone(&c.sites),
            with_db: Arc::new(c.with_db.clone()),
            stop: Arc::clone(&stop),
            next_seq: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            acked: Arc::clone(&db_acked),
        };
        for n in 0..c.db_writers {
            let target = if n == 0 { c.stale_entry } else { c.entry };
            tasks.spawn(crate::db_orders::writer(db.clone(), target, n));
        }
        if c.large.is_empty() {
            return Mix {
                stop,
                tasks,
                acked,
                db_acked,
            };
        }
        let total = c.downloads + c.slow_readers;
        for i in 0..total {
            let kind = if i < c.downloads {
                Kind::Download
            } else {
                Kind::SlowReader
            };
            // One client of each kind uses the old address.
            let target = if i == 0 || i == c.downloads {
                c.stale_entry
            } else {
                c.entry
            };
            let client = Client {
                kind,
                target,
                sites: Arc::clone(&c.sites),
                large: Arc::clone(&c.large),
                stop: Arc::clone(&stop),
                chunk: c.slow_chunk.max(1024),
                conn: None,
                next: i,
            };
            tasks.spawn(client.run());
        }
        Mix {
            stop,
            tasks,
            acked,
            db_acked,
        }
    }

    /// Stops the clients after their current request; every record, and
    /// the writes the app acknowledged.
    pub async fn finish(mut self) -> MixEnd {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        while let Some(r) = self.tasks.join_next().await {
            match r {
                Ok(mut v) => all.append(&mut v),
                Err(_) => all.push(Record {
                    kind: Kind::Download,
                    site: 0,
                    sent_at_ms: crate::unix_ms(),
                    took: Duration::ZERO,
                    failed: Some("client panicked".into()),
                    bytes: 0,
                }),
            }
        }
        MixEnd {
            records: all,
            uploads: std::mem::take(&mut *self.acked.lock()),
            db_orders: std::mem::take(&mut *self.db_acked.lock()),
        }
    }
}

struct Client {
    kind: Kind,
    target: SocketAddr,
    sites: Arc<Vec<Site>>,
    large: Arc<Vec<LargeFile>>,
    stop: Arc<AtomicBool>,
    chunk: usize,
    /// The keep-alive connection, if the last exchange left it usable.
    conn: Option<TcpStream>,
    next: usize,
}

impl Client {
    async fn run(mut self) -> Vec<Record> {
        let mut out = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let file = self.large[self.next % self.large.len()].clone();
            self.next += 1;
            let (t0, sent_at_ms) = (Instant::now(), crate::unix_ms());
            let r = tokio::time::timeout(TIMEOUT, self.get(&file)).await;
            let (failed, bytes) = match r {
                Ok(Ok(n)) => (None, n),
                Ok(Err(reason)) => {
                    self.conn = None;
                    (Some(reason), 0)
                }
                Err(_) => {
                    self.conn = None;
                    (Some(format!("timeout after {}s", TIMEOUT.as_secs())), 0)
                }
            };
            out.push(Record {
                kind: self.kind,
                site: file.site,
                sent_at_ms,
                took: t0.elapsed(),
                failed,
                bytes,
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out
    }

    /// One GET of a large file on the kept connection (a new one if none);
    /// Ok(bytes of the body) when the status is 200 and the length right.
    async fn get(&mut self, file: &LargeFile) -> Result<u64, String> {
        let host = &self.sites[file.site].host;
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let c = TcpStream::connect(self.target)
                    .await
                    .map_err(|_| "connect error".to_string())?;
                let _ = c.set_nodelay(true);
                c
            }
        };
        let req = format!("GET /{} HTTP/1.1\r\nHost: {host}\r\n\r\n", file.path);
        conn.write_all(req.as_bytes())
            .await
            .map_err(|_| "connection error".to_string())?;
        let (status, length, close, mut body) = read_head(&mut conn).await?;
        let mut got = body.len() as u64;
        // A failed answer's first bytes say why; a good one's are not kept.
        let keep: usize = if status == 200 { 0 } else { 200 };
        body.truncate(keep);
        let mut buf = vec![0u8; self.chunk];
        while got < length {
            let want = buf.len().min((length - got) as usize);
            let n = conn
                .read(&mut buf[..want])
                .await
                .map_err(|_| "body cut short".to_string())?;
            if n == 0 {
                return Err("body cut short".into());
            }
            got += n as u64;
            let room = keep.saturating_sub(body.len()).min(n);
            body.extend_from_slice(&buf[..room]);
            if self.kind == Kind::SlowReader {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if status != 200 {
            return Err(ferry_demo::load::failure_reason(status, &body));
        }
        if got != file.bytes {
            return Err("wrong body".into());
        }
        if !close {
            self.conn = Some(conn);
        }
        Ok(got)
    }
}
