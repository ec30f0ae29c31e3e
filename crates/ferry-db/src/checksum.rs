//! Proof of equality, as pt-table-checksum does it: each primary-key chunk
//! is summarised on both servers by the same query (row count and an XOR of
//! per-row MD5s over length-prefixed column values), and the answers
//! compared. Only summaries travel; rows never leave their server.

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tokio::sync::{mpsc, Mutex};

use crate::endpoint::{ident, Endpoint, Session};
use crate::error::{Error, Result, Side, SqlContext};
use crate::schema::{self, Chunk, Table};

/// What `verify` found for one table.
#[derive(Debug, Clone, Default)]
pub struct TableCheck {
    pub db: String,
    pub table: String,
    pub chunks: u64,
    pub rows: u64,
    /// Chunks whose summaries differ (`db.table (lower .. upper)`).
    pub mismatched: Vec<String>,
}

/// The result of [`crate::Mover::verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub tables: Vec<TableCheck>,
    /// Tables or views present on one side only (`db.name: where`).
    pub missing: Vec<String>,
}

impl VerifyReport {
    pub fn equal(&self) -> bool {
        self.missing.is_empty() && self.tables.iter().all(|t| t.mismatched.is_empty())
    }
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
    pub fn chunks(&self) -> u64 {
        self.tables.iter().map(|t| t.chunks).sum()
    }
}

fn checksum_sql(chunk: &Chunk) -> String {
    let t = &chunk.table;
    let mut parts = Vec::new();
    let mut nulls = Vec::new();
    for c in &t.columns {
        let c = ident(c);
        // Length before value: ('a#', 'b') and ('a', '#b') differ.
        parts.push(format!("OCTET_LENGTH({c})"));
        parts.push(c.clone());
        nulls.push(format!("ISNULL({c})"));
    }
    parts.push(format!("CONCAT({})", nulls.join(",")));
    format!(
        "SELECT COUNT(*), \
         COALESCE(BIT_XOR(CAST(CONV(SUBSTRING(h, 1, 16), 16, 10) AS UNSIGNED)), 0), \
         COALESCE(BIT_XOR(CAST(CONV(SUBSTRING(h, 17, 16), 16, 10) AS UNSIGNED)), 0) \
         FROM (SELECT MD5(CONCAT_WS('#', {})) AS h FROM {} WHERE {}) AS ferry_rows",
        parts.join(", "),
        t.qualified(),
        chunk.where_clause()
    )
}

async fn summary(conn: &mut Conn, side: Side, chunk: &Chunk) -> Result<(u64, String)> {
    let sql = checksum_sql(chunk);
    let row: Option<(u64, String, String)> = conn
        .query_first(&sql)
        .await
        .ctx(side, || format!("checksum of {}", chunk.describe()))?;
    let (n, a, b) = row.unwrap_or_default();
    Ok((n, format!("{n}:{a}:{b}")))
}

/// Compares `dbs` between the two servers, `workers` chunks at a time.
pub(crate) async fn verify(
    source: &Endpoint,
    dest: &Endpoint,
    dbs: &[String],
    chunk_rows: u64,
    workers: usize,
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut src = source.connect(Session::Data).await?;
    let mut dst = dest.connect(Session::Data).await?;
    let mut tables = Vec::new();
    for db in dbs {
        let (st, sv) = schema::list(&mut src, Side::Source, db).await?;
        let (dt, dv) = schema::list(&mut dst, Side::Destination, db).await?;
        let names = |ts: &[Table], vs: &[String]| -> Vec<String> {
            let mut n: Vec<String> = ts
                .iter()
                .map(|t| t.name.clone())
                .chain(vs.iter().cloned())
                .collect();
            n.sort();
            n
        };
        let (s_names, d_names) = (names(&st, &sv), names(&dt, &dv));
        for n in &s_names {
            if !d_names.contains(n) {
                report
                    .missing
                    .push(format!("{db}.{n}: not at the destination"));
            }
        }
        for n in &d_names {
            if !s_names.contains(n) {
                report.missing.push(format!("{db}.{n}: not at the source"));
            }
        }
        for t in st {
            if d_names.contains(&t.name) {
                tables.push(Arc::new(t));
            }
        }
    }
    let results = Arc::new(Mutex::new(Vec::<(Arc<Table>, u64, Option<String>)>::new()));
    let (tx, rx) = mpsc::channel::<Chunk>(workers * 4);
    let rx = Arc::new(Mutex::new(rx));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (source, dest, rx, results) =
            (source.clone(), dest.clone(), rx.clone(), results.clone());
        set.spawn(async move {
            let mut s = source.connect(Session::Data).await?;
            let mut d = dest.connect(Session::Data).await?;
            loop {
                let chunk = rx.lock().await.recv().await;
                let Some(chunk) = chunk else {
                    return Ok::<_, Error>(());
                };
                let (a, b) = tokio::join!(
                    summary(&mut s, Side::Source, &chunk),
                    summary(&mut d, Side::Destination, &chunk)
                );
                let ((rows, a), (_, b)) = (a?, b?);
                let bad = (a != b).then(|| chunk.describe());
                results.lock().await.push((chunk.table.clone(), rows, bad));
            }
        });
    }
    let mut walk_err = None;
    for t in &tables {
        let r = schema::chunks(&mut src, Side::Source, t.clone(), chunk_rows, |c| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(c).await;
                Ok(())
            }
        })
        .await;
        if let Err(e) = r {
            walk_err = Some(e);
            break;
        }
    }
    drop(tx);
    let mut err = walk_err;
    while let Some(j) = set.join_next().await {
        if let Ok(Err(e)) = j {
            err.get_or_insert(e);
        }
    }
    if let Some(e) = err {
        return Err(e);
    }
    for t in &tables {
        let mut check = TableCheck {
            db: t.db.clone(),
            table: t.name.clone(),
            ..TableCheck::default()
        };
        for (tt, rows, bad) in results.lock().await.iter() {
            if Arc::ptr_eq(tt, t) {
                check.chunks += 1;
                check.rows += rows;
                check.mismatched.extend(bad.clone());
            }
        }
        report.tables.push(check);
    }
    Ok(report)
}
