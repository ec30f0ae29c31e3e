//! The first copy: one consistent snapshot shared by several connections,
//! tables cut into primary-key chunks, chunks copied in parallel. Rows go
//! to the destination as `LOAD DATA LOCAL INFILE` from an in-memory stream
//! (tab-separated, escaped, bytes as stored: about a third less work for the
//! destination than parsing the same rows as INSERT statements), or as
//! batched multi-row INSERTs where the destination refuses local infile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};
use tokio::sync::{mpsc, Mutex};

use crate::endpoint::{ident, Endpoint, Session};
use crate::error::{Error, Result, Side, SqlContext};
use crate::gtid::{BinlogMark, GtidPos};
use crate::schema::{self, literal, Chunk, Table};

/// Connections that all see the source as of one instant, and that
/// instant's GTID position.
pub(crate) struct Snapshot {
    pub coordinator: Conn,
    pub workers: Vec<Conn>,
    pub position: GtidPos,
    /// The source's binary log coordinates at the same instant (where a
    /// reader of the changes made after the snapshot starts).
    pub binlog: BinlogMark,
    /// How long writes were blocked to line the snapshots up.
    pub lock_held: Duration,
}

/// Opens `workers + 1` snapshot connections. Writes are blocked (`FLUSH
/// TABLES WITH READ LOCK`) only while each connection starts its snapshot and
/// the position is read, so every snapshot and the position describe the
/// same instant; the lock waits at most `lock_wait` for running statements.
pub(crate) async fn snapshot(
    source: &Endpoint,
    workers: usize,
    lock_wait: Duration,
) -> Result<Snapshot> {
    let side = Side::Source;
    let mut conns = Vec::with_capacity(workers + 1);
    for _ in 0..=workers {
        let mut c = source.connect(Session::Data).await?;
        c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .ctx(side, || "isolation level".into())?;
        conns.push(c);
    }
    let mut lock = source.connect(Session::Control).await?;
    lock.query_drop(format!(
        "SET SESSION lock_wait_timeout = {}",
        lock_wait.as_secs().max(1)
    ))
    .await
    .ctx(side, || "lock_wait_timeout".into())?;
    let started = Instant::now();
    lock.query_drop("FLUSH TABLES WITH READ LOCK")
        .await
        .ctx(side, || {
            "FLUSH TABLES WITH READ LOCK (for the snapshot)".into()
        })?;
    let result = async {
        for c in conns.iter_mut() {
            c.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .ctx(side, || "START TRANSACTION WITH CONSISTENT SNAPSHOT".into())?;
        }
        let pos: Option<String> = lock
            .query_first("SELECT @@GLOBAL.gtid_binlog_pos")
            .await
            .ctx(side, || "reading @@gtid_binlog_pos".into())?;
        let row: Option<mysql_async::Row> = lock
            .query_first("SHOW MASTER STATUS")
            .await
            .ctx(side, || "SHOW MASTER STATUS".into())?;
        let coords = row.and_then(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)));
        Ok::<_, Error>((pos.unwrap_or_default(), coords))
    }
    .await;
    // Unlock whatever happened: the lock must not outlive this function.
    let unlocked = lock.query_drop("UNLOCK TABLES").await;
    let lock_held = started.elapsed();
    let (pos, coords) = result?;
    unlocked.ctx(side, || "UNLOCK TABLES".into())?;
    let position = GtidPos::parse(&pos).map_err(|message| Error::NotReplicable {
        addr: source.addr(),
        reason: message,
    })?;
    let Some((file, offset)) = coords else {
        return Err(Error::NotReplicable {
            addr: source.addr(),
            reason: "SHOW MASTER STATUS is empty: the binary log is off".into(),
        });
    };
    let binlog = BinlogMark {
        file,
        offset,
        gtid: position.clone(),
    };
    let coordinator = conns.remove(0);
    Ok(Snapshot {
        coordinator,
        workers: conns,
        position,
        binlog,
        lock_held,
    })
}

/// Counters shared by the copy workers (read by the progress reporter).
#[derive(Default)]
pub(crate) struct Counters {
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    pub chunks_done: AtomicU64,
    pub chunks_total: AtomicU64,
}

/// Creates `tables` at the destination (their `SHOW CREATE TABLE` read in
/// the snapshot) and copies their rows, `chunk_rows` per chunk, one worker
/// per snapshot connection.
pub(crate) async fn copy_tables(
    snap: Snapshot,
    dest: &Endpoint,
    tables: Vec<Table>,
    chunk_rows: u64,
    batch_bytes: usize,
    dest_binlog: bool,
    counters: Arc<Counters>,
) -> Result<()> {
    let connect_dest = || async {
        let mut c = dest.connect(Session::Data).await?;
        if !dest_binlog {
            c.query_drop("SET SESSION sql_log_bin = 0")
                .await
                .ctx(Side::Destination, || {
                    "SET SESSION sql_log_bin = 0 (needs BINLOG ADMIN or SUPER)".into()
                })?;
        }
        Ok::<_, Error>(c)
    };
    let Snapshot {
        mut coordinator,
        workers,
        ..
    } = snap;
    let mut ddl = connect_dest().await?;
    let local_infile: Option<String> = ddl
        .query_first("SELECT CAST(@@GLOBAL.local_infile AS CHAR)")
        .await
        .ctx(Side::Destination, || "reading local_infile".into())?;
    let format = match local_infile.as_deref() {
        Some("ON") | Some("1") => Format::Load,
        _ => Format::Insert,
    };
    let tables: Vec<Arc<Table>> = tables.into_iter().map(Arc::new).collect();
    for t in &tables {
        let sql = format!("SHOW CREATE TABLE {}", t.qualified());
        let row: Option<(String, String)> = coordinator
            .query_first(&sql)
            .await
            .ctx(Side::Source, || sql.clone())?;
        let Some((_, create)) = row else {
            return Err(table_err(t, "SHOW CREATE TABLE answered nothing"));
        };
        ddl.query_drop(format!("USE {}", ident(&t.db)))
            .await
            .ctx(Side::Destination, || format!("USE {}", t.db))?;
        ddl.query_drop(&create).await.ctx(Side::Destination, || {
            format!("creating {}.{}", t.db, t.name)
        })?;
    }

    // Bounded: the walk stays a little ahead of the workers, no further.
    let (tx, rx) = mpsc::channel::<Chunk>(workers.len() * 4);
    let rx = Arc::new(Mutex::new(rx));
    let mut set = tokio::task::JoinSet::new();
    for src in workers {
        let rx = rx.clone();
        let counters = counters.clone();
        let dst = connect_dest().await?;
        set.spawn(async move {
            let (mut src, mut dst) = (src, dst);
            loop {
                let chunk = rx.lock().await.recv().await;
                let Some(chunk) = chunk else { return Ok(()) };
                copy_chunk(&mut src, &mut dst, &chunk, format, batch_bytes, &counters).await?;
                counters.chunks_done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let walk = async {
        for t in &tables {
            let n = schema::chunks(&mut coordinator, Side::Source, t.clone(), chunk_rows, |c| {
                counters.chunks_total.fetch_add(1, Ordering::Relaxed);
                let tx = tx.clone();
                async move {
                    // A closed channel means a worker failed; its error is
                    // the one to report, from the join below.
                    let _ = tx.send(c).await;
                    Ok(())
                }
            })
            .await?;
            tracing::debug!(table = %t.name, chunks = n, "chunked");
        }
        drop(tx);
        Ok::<_, Error>(())
    };
    let walked = walk.await;
    let mut first_err = walked.err();
    while let Some(joined) = set.join_next().await {
        let r = joined.unwrap_or_else(|e| {
            Err(Error::Table {
                db: String::new(),
                table: String::new(),
                message: format!("copy worker died: {e}"),
            })
        });
        if let (Err(e), None) = (r, &first_err) {
            first_err = Some(e);
            // Stop the others: the copy has failed.
            set.abort_all();
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn table_err(t: &Table, message: &str) -> Error {
    Error::Table {
        db: t.db.clone(),
        table: t.name.clone(),
        message: message.into(),
    }
}

/// How rows are written at the destination.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `LOAD DATA LOCAL INFILE` of tab-separated rows.
    Load,
    /// Multi-row `INSERT ... VALUES`.
    Insert,
}

async fn copy_chunk(
    src: &mut Conn,
    dst: &mut Conn,
    chunk: &Chunk,
    format: Format,
    batch_bytes: usize,
    counters: &Counters,
) -> Result<()> {
    let t = &chunk.table;
    let sql = format!(
        "SELECT {} FROM {} WHERE {}",
        t.column_list(),
        t.qualified(),
        chunk.where_clause()
    );
    // The file name is only a label: the handler set before each statement
    // answers the server's request with the batch. The bytes are the
    // columns' own (`CHARACTER SET binary`), as in the INSERT form.
    let head = match format {
        Format::Load => format!(
            "LOAD DATA LOCAL INFILE 'ferry-batch' INTO TABLE {} CHARACTER SET binary \
             FIELDS TERMINATED BY '\\t' ENCLOSED BY '' ESCAPED BY '\\\\' \
             LINES TERMINATED BY '\\n' STARTING BY '' ({})",
            t.qualified(),
            t.column_list()
        ),
        Format::Insert => format!(
            "INSERT INTO {} ({}) VALUES ",
            t.qualified(),
            t.column_list()
        ),
    };
    // The reader formats the next batch while the previous one is written:
    // the source streams and the destination writes at the same time, one
    // batch apart (bounded: at most one batch waits).
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, u64)>(1);
    let write = async {
        while let Some((batch, rows)) = rx.recv().await {
            counters
                .bytes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let written = match format {
                Format::Load => load(dst, &head, batch).await,
                // Bytes, not text: row data is binary-safe only as raw bytes
                // in a `SET NAMES binary` session.
                Format::Insert => insert(dst, batch).await,
            };
            written.ctx(Side::Destination, || {
                format!("writing {}", chunk.describe())
            })?;
            counters.rows.fetch_add(rows, Ordering::Relaxed);
        }
        Ok::<_, Error>(())
    };
    let read = async {
        let mut result = src
            .query_iter(&sql)
            .await
            .ctx(Side::Source, || format!("reading {}", chunk.describe()))?;
        let types: Vec<_> = result
            .columns()
            .map(|c| c.iter().map(|c| c.column_type()).collect())
            .unwrap_or_default();
        let mut batch: Vec<u8> = Vec::with_capacity(batch_bytes + 4096);
        let mut in_batch = 0u64;
        loop {
            let row = result
                .next()
                .await
                .ctx(Side::Source, || format!("reading {}", chunk.describe()))?;
            let done = row.is_none();
            if let Some(row) = row {
                match format {
                    Format::Load => {
                        for (i, v) in row.unwrap().iter().enumerate() {
                            if i > 0 {
                                batch.push(b'\t');
                            }
                            field(v, &mut batch);
                        }
                        batch.push(b'\n');
                    }
                    Format::Insert => {
                        batch.extend_from_slice(if in_batch == 0 { head.as_bytes() } else { b"," });
                        batch.push(b'(');
                        for (i, v) in row.unwrap().iter().enumerate() {
                            if i > 0 {
                                batch.push(b',');
                            }
                            literal(v, types[i], &mut batch);
                        }
                        batch.push(b')');
                    }
                }
                in_batch += 1;
            }
            if in_batch > 0 && (done || batch.len() >= batch_bytes) {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_bytes + 4096));
                // A closed channel: the writer failed, and says why below.
                if tx.send((full, in_batch)).await.is_err() {
                    break;
                }
                in_batch = 0;
            }
            if done {
                break;
            }
        }
        drop(tx);
        Ok::<_, Error>(())
    };
    let (r, w) = tokio::join!(read, write);
    // The writer's error first: a failed write also ends the reader early.
    w?;
    r
}

/// One column of a `LOAD DATA` line: `\N` for NULL, otherwise the bytes
/// with the five that would end or change a field escaped.
fn field(v: &Value, out: &mut Vec<u8>) {
    let bytes = match v {
        Value::NULL => {
            out.extend_from_slice(b"\\N");
            return;
        }
        Value::Bytes(b) => b,
        // The text protocol sends every value as bytes; other forms are
        // written as their SQL text, which for numbers is the value.
        other => {
            out.extend_from_slice(other.as_sql(true).trim_matches('\'').as_bytes());
            return;
        }
    };
    for &b in bytes.iter() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => out.extend_from_slice(b"\\0"),
            _ => out.push(b),
        }
    }
}

/// One `LOAD DATA LOCAL INFILE` of `batch` (its own transaction), tried
/// again as [`insert`] is. The batch is kept for a retry: the stream handed
/// to the driver is consumed by the attempt.
async fn load(
    dst: &mut Conn,
    head: &str,
    batch: Vec<u8>,
) -> std::result::Result<(), mysql_async::Error> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        let data = batch.clone();
        dst.set_infile_handler(async move {
            Ok(futures_util::stream::once(async move { Ok(data.into()) }).boxed())
        });
        match dst.query_drop(head).await {
            Err(mysql_async::Error::Server(e))
                if (e.code == 1213 || e.code == 1205) && attempt < ATTEMPTS =>
            {
                tracing::debug!(code = e.code, attempt, "load retried");
                tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// One multi-row INSERT (its own transaction), tried again when InnoDB
/// chose it as a deadlock victim or it waited too long for a lock: workers
/// filling neighbouring key ranges of one table can meet on gap locks, and
/// a statement rolled back whole is safe to repeat.
async fn insert(dst: &mut Conn, sql: Vec<u8>) -> std::result::Result<(), mysql_async::Error> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match dst.query_drop(sql.as_slice()).await {
            Err(mysql_async::Error::Server(e))
                if (e.code == 1213 || e.code == 1205) && attempt < ATTEMPTS =>
            {
                tracing::debug!(code = e.code, attempt, "insert retried");
                tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_data_field_escapes_what_would_end_or_change_it() {
        let mut out = Vec::new();
        field(&Value::Bytes(b"a\tb\nc\\d\re\0f\\N".to_vec()), &mut out);
        out.push(b'|');
        field(&Value::NULL, &mut out);
        out.push(b'|');
        field(&Value::Int(-7), &mut out);
        assert_eq!(out, b"a\\tb\\nc\\\\d\\re\\0f\\\\N|\\N|-7".to_vec());
    }
}
