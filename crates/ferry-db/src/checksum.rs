//! Proof of equality, as pt-table-checksum does it: each primary-key chunk
//! is summarised on both servers by the same query (row count and an XOR of
//! per-row MD5s over length-prefixed column values), and the answers
//! compared. Only summaries travel; rows never leave their server.

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tokio::sync::{mpsc, Mutex};

use crate::binlog::{Changes, TableChanges};
use crate::endpoint::{ident, Endpoint, Session};
use crate::error::{Error, Result, Side, SqlContext};
use crate::gtid::GtidPos;
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
    /// What was compared.
    pub scope: Scope,
}

/// How much of the databases a [`VerifyReport`] covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every row, on the live servers.
    #[default]
    Full,
    /// Every row, on snapshots of both sides at the source position `at`.
    Snapshot { at: GtidPos },
    /// Every row, because the changes since the snapshot check could not
    /// be narrowed (the reason).
    FullBecause(String),
    /// The rows changed since the snapshot check at `since` (`keys` of
    /// them) and, in full, the tables whose changes could not be narrowed.
    Changed {
        since: GtidPos,
        keys: u64,
        whole_tables: Vec<String>,
    },
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Full => f.write_str("every row"),
            Scope::Snapshot { at } => write!(f, "every row, on snapshots at {at}"),
            Scope::FullBecause(why) => write!(f, "every row ({why})"),
            Scope::Changed {
                since,
                keys,
                whole_tables,
            } => {
                write!(f, "{keys} rows changed since {since}")?;
                if !whole_tables.is_empty() {
                    write!(f, ", in full: {}", whole_tables.join("; "))?;
                }
                Ok(())
            }
        }
    }
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

/// One comparison: a primary-key chunk of a table, or rows named by key.
pub(crate) enum Piece {
    Chunk(Chunk),
    /// Primary keys as SQL literals, in key order.
    Keys {
        table: Arc<Table>,
        keys: Vec<Vec<String>>,
    },
}

impl Piece {
    fn table(&self) -> &Arc<Table> {
        match self {
            Piece::Chunk(c) => &c.table,
            Piece::Keys { table, .. } => table,
        }
    }

    fn where_clause(&self) -> String {
        match self {
            Piece::Chunk(c) => c.where_clause(),
            Piece::Keys { table, keys } => {
                let pk: Vec<String> = table.pk.iter().map(|c| ident(c)).collect();
                if pk.len() == 1 {
                    let vals: Vec<&str> = keys.iter().map(|k| k[0].as_str()).collect();
                    format!("{} IN ({})", pk[0], vals.join(","))
                } else {
                    // OR of ANDs rather than a row IN list: the range
                    // optimizer reads these as primary-key point lookups.
                    let terms: Vec<String> = keys
                        .iter()
                        .map(|k| {
                            let eq: Vec<String> = pk
                                .iter()
                                .zip(k)
                                .map(|(c, v)| format!("{c} = {v}"))
                                .collect();
                            format!("({})", eq.join(" AND "))
                        })
                        .collect();
                    terms.join(" OR ")
                }
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Piece::Chunk(c) => c.describe(),
            Piece::Keys { table, keys } => {
                let first = keys.first().map(|k| k.join(",")).unwrap_or_default();
                format!(
                    "{}.{} ({} changed rows from key {first})",
                    table.db,
                    table.name,
                    keys.len()
                )
            }
        }
    }
}

fn checksum_sql(piece: &Piece) -> String {
    let t = piece.table();
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
        piece.where_clause()
    )
}

async fn summary(conn: &mut Conn, side: Side, piece: &Piece) -> Result<(u64, String)> {
    let sql = checksum_sql(piece);
    let row: Option<(u64, String, String)> = conn
        .query_first(&sql)
        .await
        .ctx(side, || format!("checksum of {}", piece.describe()))?;
    let (n, a, b) = row.unwrap_or_default();
    Ok((n, format!("{n}:{a}:{b}")))
}

/// Base tables present on both sides (what gets compared) and the tables
/// or views present on one side only.
async fn both_sides(
    src: &mut Conn,
    dst: &mut Conn,
    dbs: &[String],
) -> Result<(Vec<Arc<Table>>, Vec<String>)> {
    let mut missing = Vec::new();
    let mut tables = Vec::new();
    for db in dbs {
        let (st, sv) = schema::list(src, Side::Source, db).await?;
        let (dt, dv) = schema::list(dst, Side::Destination, db).await?;
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
                missing.push(format!("{db}.{n}: not at the destination"));
            }
        }
        for n in &d_names {
            if !s_names.contains(n) {
                missing.push(format!("{db}.{n}: not at the source"));
            }
        }
        for t in st {
            if d_names.contains(&t.name) {
                tables.push(Arc::new(t));
            }
        }
    }
    Ok((tables, missing))
}

type Outcome = (Arc<Table>, u64, Option<String>);

/// Workers comparing pieces, one (source, destination) connection pair
/// each; the connections may be plain or inside snapshot transactions.
struct Checker {
    tx: mpsc::Sender<Piece>,
    set: tokio::task::JoinSet<Result<()>>,
    results: Arc<Mutex<Vec<Outcome>>>,
}

impl Checker {
    fn start(pairs: Vec<(Conn, Conn)>) -> Checker {
        let results = Arc::new(Mutex::new(Vec::<Outcome>::new()));
        let (tx, rx) = mpsc::channel::<Piece>(pairs.len().max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        let mut set = tokio::task::JoinSet::new();
        for (mut s, mut d) in pairs {
            let (rx, results) = (rx.clone(), results.clone());
            set.spawn(async move {
                loop {
                    let piece = rx.lock().await.recv().await;
                    let Some(piece) = piece else {
                        return Ok::<_, Error>(());
                    };
                    let (a, b) = tokio::join!(
                        summary(&mut s, Side::Source, &piece),
                        summary(&mut d, Side::Destination, &piece)
                    );
                    let ((rows, a), (_, b)) = (a?, b?);
                    let bad = (a != b).then(|| piece.describe());
                    results
                        .lock()
                        .await
                        .push((piece.table().clone(), rows, bad));
                }
            });
        }
        Checker { tx, set, results }
    }

    /// Queues every chunk of `t`, its bounds read on `walker`.
    async fn chunks_of(&self, walker: &mut Conn, t: &Arc<Table>, chunk_rows: u64) -> Result<()> {
        schema::chunks(walker, Side::Source, t.clone(), chunk_rows, |c| {
            let tx = self.tx.clone();
            async move {
                // A send fails only when every worker stopped on an error,
                // which `finish` reports.
                let _ = tx.send(Piece::Chunk(c)).await;
                Ok(())
            }
        })
        .await
        .map(|_| ())
    }

    /// Queues every chunk of every table; stops at the first error.
    async fn every_chunk(
        &self,
        walker: &mut Conn,
        tables: &[Arc<Table>],
        chunk_rows: u64,
    ) -> Result<()> {
        for t in tables {
            self.chunks_of(walker, t, chunk_rows).await?;
        }
        Ok(())
    }

    async fn keys_of(&self, t: &Arc<Table>, keys: Vec<Vec<String>>) {
        for batch in keys.chunks(KEYS_PER_CHECK) {
            let piece = Piece::Keys {
                table: t.clone(),
                keys: batch.to_vec(),
            };
            if self.tx.send(piece).await.is_err() {
                return;
            }
        }
    }

    /// Waits for the workers; one [`TableCheck`] per table of `tables`.
    async fn finish(self, tables: &[Arc<Table>], fed: Result<()>) -> Result<Vec<TableCheck>> {
        let Checker {
            tx,
            mut set,
            results,
        } = self;
        drop(tx);
        let mut err = fed.err();
        while let Some(j) = set.join_next().await {
            if let Ok(Err(e)) = j {
                err.get_or_insert(e);
            }
        }
        if let Some(e) = err {
            return Err(e);
        }
        let results = results.lock().await;
        Ok(tables
            .iter()
            .map(|t| {
                let mut check = TableCheck {
                    db: t.db.clone(),
                    table: t.name.clone(),
                    ..TableCheck::default()
                };
                for (tt, rows, bad) in results.iter() {
                    if Arc::ptr_eq(tt, t) {
                        check.chunks += 1;
                        check.rows += rows;
                        check.mismatched.extend(bad.clone());
                    }
                }
                check
            })
            .collect())
    }
}

/// Rows named in one checksum query.
const KEYS_PER_CHECK: usize = 500;

async fn pairs(source: &Endpoint, dest: &Endpoint, n: usize) -> Result<Vec<(Conn, Conn)>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push((
            source.connect(Session::Data).await?,
            dest.connect(Session::Data).await?,
        ));
    }
    Ok(out)
}

/// Compares `dbs` in full between the two live servers, `workers` chunks
/// at a time.
pub(crate) async fn verify(
    source: &Endpoint,
    dest: &Endpoint,
    dbs: &[String],
    chunk_rows: u64,
    workers: usize,
) -> Result<VerifyReport> {
    let mut src = source.connect(Session::Data).await?;
    let mut dst = dest.connect(Session::Data).await?;
    let (tables, missing) = both_sides(&mut src, &mut dst, dbs).await?;
    let checker = Checker::start(pairs(source, dest, workers).await?);
    let fed = checker.every_chunk(&mut src, &tables, chunk_rows).await;
    Ok(VerifyReport {
        tables: checker.finish(&tables, fed).await?,
        missing,
        scope: Scope::Full,
    })
}

/// Snapshot connections on both sides that all see the same position.
pub(crate) struct SnapshotPair {
    pub source_walker: Conn,
    pub dest_lister: Conn,
    pub pairs: Vec<(Conn, Conn)>,
    pub at: GtidPos,
}

/// Compares `dbs` in full on snapshots of both sides taken at the same
/// source position (the servers keep running and changing).
pub(crate) async fn verify_snapshots(
    mut snap: SnapshotPair,
    dbs: &[String],
    chunk_rows: u64,
) -> Result<VerifyReport> {
    let (tables, missing) = both_sides(&mut snap.source_walker, &mut snap.dest_lister, dbs).await?;
    let checker = Checker::start(snap.pairs);
    let fed = checker
        .every_chunk(&mut snap.source_walker, &tables, chunk_rows)
        .await;
    Ok(VerifyReport {
        tables: checker.finish(&tables, fed).await?,
        missing,
        scope: Scope::Snapshot { at: snap.at },
    })
}

/// Compares only what `changes` names (rows by key; whole tables where the
/// changes could not be narrowed), between the two live servers. Meaningful
/// when the databases were proved equal at `since` and neither side has
/// changed since but through the catch-up.
pub(crate) async fn verify_changes(
    source: &Endpoint,
    dest: &Endpoint,
    dbs: &[String],
    chunk_rows: u64,
    workers: usize,
    since: &GtidPos,
    changes: Changes,
) -> Result<VerifyReport> {
    if let Some(why) = changes.everything {
        let mut r = verify(source, dest, dbs, chunk_rows, workers).await?;
        r.scope = Scope::FullBecause(why);
        return Ok(r);
    }
    let mut src = source.connect(Session::Data).await?;
    let mut dst = dest.connect(Session::Data).await?;
    let (tables, missing) = both_sides(&mut src, &mut dst, dbs).await?;
    let checker = Checker::start(pairs(source, dest, workers).await?);
    let mut by_name = changes.tables;
    let (mut keys_checked, mut whole) = (0u64, Vec::new());
    let mut fed = Ok(());
    for t in &tables {
        match by_name.remove(&(t.db.clone(), t.name.clone())) {
            None => {}
            Some(TableChanges::Keys(keys)) => {
                keys_checked += keys.len() as u64;
                let mut keys: Vec<Vec<String>> = keys.into_iter().collect();
                keys.sort();
                checker.keys_of(t, keys).await;
            }
            Some(TableChanges::Whole(why)) => {
                whole.push(format!("{}.{}: {why}", t.db, t.name));
                fed = checker.chunks_of(&mut src, t, chunk_rows).await;
                if fed.is_err() {
                    break;
                }
            }
        }
    }
    Ok(VerifyReport {
        tables: checker.finish(&tables, fed).await?,
        missing,
        scope: Scope::Changed {
            since: since.clone(),
            keys: keys_checked,
            whole_tables: whole,
        },
    })
}
