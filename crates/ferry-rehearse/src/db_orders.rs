//! The clients that write to the sites' databases: `POST /db/order` with a
//! sequence number unique in the rehearsal, to the sites that have a
//! database, one after the other on a keep-alive connection. Every order
//! the app acknowledged (201) is kept by site, for the checks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_demo::topology::Site;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::exchange::{read_head, read_small_body, reuse_or_connect, within, Kind, Record};

/// Longer than the routers' hold_max (30 s): only a hang ends an order.
const TIMEOUT: Duration = Duration::from_secs(45);
/// Between two orders of one client.
const PAUSE: Duration = Duration::from_millis(20);

/// What the database clients share.
#[derive(Clone)]
pub struct DbShared {
    pub sites: Arc<Vec<Site>>,
    /// Indexes of the sites with a database.
    pub with_db: Arc<Vec<usize>>,
    pub stop: Arc<AtomicBool>,
    /// The next sequence number (shared: each is used once).
    pub next_seq: Arc<AtomicU64>,
    /// Acknowledged orders by site index.
    pub acked: Arc<Mutex<Vec<Vec<u64>>>>,
}

/// Orders back to back from one client through `target`, each to the
/// next site with a database.
pub async fn writer(c: DbShared, target: SocketAddr, n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    let mut conn: Option<TcpStream> = None;
    let mut k = n;
    while !c.stop.load(Ordering::Relaxed) && !c.with_db.is_empty() {
        k += 1;
        let site = c.with_db[k % c.with_db.len()];
        let seq = c.next_seq.fetch_add(1, Ordering::Relaxed);
        let (t0, sent_at_ms) = (Instant::now(), crate::unix_ms());
        let host = c.sites[site].host.clone();
        let failed = within(TIMEOUT, order(&mut conn, target, &host, seq))
            .await
            .err();
        match failed {
            None => c.acked.lock()[site].push(seq),
            Some(_) => conn = None,
        }
        out.push(Record {
            kind: Kind::DbOrder,
            site,
            sent_at_ms,
            took: t0.elapsed(),
            failed,
            bytes: 0,
        });
        tokio::time::sleep(PAUSE).await;
    }
    out
}

/// One order on `conn` (opened if none); Ok when the app answered 201.
async fn order(
    conn: &mut Option<TcpStream>,
    target: SocketAddr,
    host: &str,
    seq: u64,
) -> Result<(), String> {
    let mut c = reuse_or_connect(conn, target).await?;
    let body = seq.to_string();
    let req = format!(
        "POST /db/order HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes())
        .await
        .map_err(|_| "connection error".to_string())?;
    let (status, length, close, mut answer) = read_head(&mut c).await?;
    read_small_body(&mut c, length, &mut answer).await?;
    if status != 201 {
        return Err(ferry_demo::load::failure_reason(status, &answer));
    }
    if !String::from_utf8_lossy(&answer).starts_with(&format!("{seq} ")) {
        return Err("wrong body".into());
    }
    if !close {
        *conn = Some(c);
    }
    Ok(())
}
