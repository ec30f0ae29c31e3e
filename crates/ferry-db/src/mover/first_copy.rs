//! The first copy: every table as of one consistent snapshot of the source,
//! then the views, routines, triggers and events.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::copy::Counters;
use crate::endpoint::{ident, quote, Session};
use crate::error::{Result, Side, SqlContext};
use crate::state::{Phase, ScheduledEvent};
use crate::{copy, schema};

use super::{CopyProgress, CopyReport, Mover};

impl Mover {
    /// Copies the databases as of one consistent snapshot of the source
    /// (whose GTID position is recorded: the catch-up starts there),
    /// parallel by table and primary-key chunk. `progress` is called about
    /// once a second.
    pub async fn first_copy(
        &mut self,
        progress: &(dyn Fn(CopyProgress) + Send + Sync),
    ) -> Result<CopyReport> {
        self.need("first copy", &[Phase::Prepared])?;
        let started = Instant::now();
        self.state.phase = Phase::Copying;
        self.state.created = self.cfg.databases.clone();
        self.save()?;
        let mut snap = copy::snapshot(
            &self.cfg.source,
            self.cfg.workers.max(1),
            self.cfg.lock_wait,
        )
        .await?;
        let position = snap.position.clone();
        let lock_held = snap.lock_held;
        let mut tables = Vec::new();
        let mut views = Vec::new();
        for db in &self.cfg.databases {
            let sql = format!("SHOW CREATE DATABASE {}", ident(db));
            let row: Option<(String, String)> = snap
                .coordinator
                .query_first(&sql)
                .await
                .ctx(Side::Source, || sql.clone())?;
            let create = row
                .map(|r| r.1)
                .unwrap_or_else(|| format!("CREATE DATABASE {}", ident(db)));
            self.dst
                .query_drop(&create)
                .await
                .ctx(Side::Destination, || format!("creating database {db}"))?;
            let (t, v) = schema::list(&mut snap.coordinator, Side::Source, db).await?;
            tables.extend(t);
            views.extend(v.into_iter().map(|v| (db.clone(), v)));
        }
        let n_tables = tables.len();
        let counters = Arc::new(Counters::default());
        let view_defs = view_definitions(&mut snap.coordinator, &views).await?;
        let copy = copy::copy_tables(
            snap,
            &self.cfg.dest,
            tables,
            self.cfg.chunk_rows,
            self.cfg.batch_bytes,
            self.cfg.dest_binlog,
            counters.clone(),
        );
        tokio::pin!(copy);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let snapshot_now = |c: &Counters| CopyProgress {
            rows: c.rows.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            chunks_done: c.chunks_done.load(Ordering::Relaxed),
            chunks_total: c.chunks_total.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        };
        loop {
            tokio::select! {
                r = &mut copy => { r?; break; }
                _ = tick.tick() => {
                    let p = snapshot_now(&counters);
                    self.state.chunks_done = p.chunks_done;
                    self.state.chunks_total = p.chunks_total;
                    self.save()?;
                    progress(p);
                }
            }
        }
        create_views(&mut self.dst, view_defs).await?;
        // Triggers and routines after the rows: row-based catch-up does not
        // fire triggers at the destination, so they only matter after the
        // switch, and the copy's INSERTs must not fire them either.
        let mut coordinator = self.cfg.source.connect(Session::Control).await?;
        for db in &self.cfg.databases {
            copy_programs(&mut coordinator, &mut self.dst, db).await?;
            let enabled = copy_events(&mut coordinator, &mut self.dst, db).await?;
            for name in enabled {
                let e = ScheduledEvent {
                    db: db.clone(),
                    name,
                };
                if !self.state.events.contains(&e) {
                    self.state.events.push(e);
                }
            }
        }
        let p = snapshot_now(&counters);
        progress(p);
        self.state.chunks_done = p.chunks_done;
        self.state.chunks_total = p.chunks_total;
        self.state.snapshot = Some(position.clone());
        self.state.phase = Phase::Copied;
        self.save()?;
        Ok(CopyReport {
            snapshot: position,
            tables: n_tables,
            views: views.len(),
            rows: p.rows,
            bytes: p.bytes,
            chunks: p.chunks_done,
            elapsed: started.elapsed(),
            lock_held,
        })
    }
}

/// Copies `db`'s stored procedures, functions and triggers, each created
/// under the sql_mode it was defined with.
async fn copy_programs(src: &mut Conn, dst: &mut Conn, db: &str) -> Result<()> {
    let sql = format!(
        "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {q} \
         UNION ALL SELECT 'TRIGGER', TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {q}",
        q = quote(db)
    );
    let programs: Vec<(String, String)> =
        src.query(&sql).await.ctx(Side::Source, || sql.clone())?;
    dst.query_drop(format!("USE {}", ident(db)))
        .await
        .ctx(Side::Destination, || format!("USE {db}"))?;
    for (kind, name) in programs {
        let show = format!("SHOW CREATE {kind} {}.{}", ident(db), ident(&name));
        let row: Option<mysql_async::Row> = src
            .query_first(&show)
            .await
            .ctx(Side::Source, || show.clone())?;
        let Some(row) = row else { continue };
        let mode: String = row.get_opt(1).and_then(|r| r.ok()).unwrap_or_default();
        let Some(Ok(create)) = row.get_opt::<String, _>(2) else {
            continue;
        };
        let what = || format!("creating {kind} {db}.{name}");
        dst.query_drop(format!("SET SESSION sql_mode = {}", quote(&mode)))
            .await
            .ctx(Side::Destination, what)?;
        dst.query_drop(&create).await.ctx(Side::Destination, what)?;
    }
    dst.query_drop("SET SESSION sql_mode = DEFAULT")
        .await
        .ctx(Side::Destination, || "sql_mode".into())
}

/// Copies `db`'s scheduled events, each created under its sql_mode and
/// time zone and left disabled at the destination (the switch enables
/// them): an event firing there during the catch-up would change rows the
/// catch-up also writes. Returns the names of those enabled at the source.
async fn copy_events(src: &mut Conn, dst: &mut Conn, db: &str) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT EVENT_NAME, STATUS FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {}",
        quote(db)
    );
    let events: Vec<(String, String)> = src.query(&sql).await.ctx(Side::Source, || sql.clone())?;
    let mut enabled = Vec::new();
    for (name, status) in events {
        let qualified = format!("{}.{}", ident(db), ident(&name));
        let show = format!("SHOW CREATE EVENT {qualified}");
        let row: Option<mysql_async::Row> = src
            .query_first(&show)
            .await
            .ctx(Side::Source, || show.clone())?;
        let Some(row) = row else { continue };
        let text = |i: usize| -> String { row.get_opt(i).and_then(|r| r.ok()).unwrap_or_default() };
        let (mode, zone, create) = (text(1), text(2), text(3));
        let what = || format!("creating event {db}.{name}");
        for setup in [
            format!("USE {}", ident(db)),
            format!("SET SESSION sql_mode = {}", quote(&mode)),
            format!("SET SESSION time_zone = {}", quote(&zone)),
        ] {
            dst.query_drop(setup).await.ctx(Side::Destination, what)?;
        }
        dst.query_drop(&create).await.ctx(Side::Destination, what)?;
        if status == "ENABLED" {
            dst.query_drop(format!("ALTER EVENT {qualified} DISABLE"))
                .await
                .ctx(Side::Destination, what)?;
            enabled.push(name);
        }
    }
    dst.query_drop("SET SESSION sql_mode = DEFAULT, SESSION time_zone = DEFAULT")
        .await
        .ctx(Side::Destination, || "session defaults".into())?;
    Ok(enabled)
}

async fn view_definitions(
    conn: &mut Conn,
    views: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (db, v) in views {
        let sql = format!("SHOW CREATE VIEW {}.{}", ident(db), ident(v));
        let row: Option<mysql_async::Row> = conn
            .query_first(&sql)
            .await
            .ctx(Side::Source, || sql.clone())?;
        let text = row
            .and_then(|r| r.get_opt::<String, _>(1))
            .and_then(|r| r.ok())
            .unwrap_or_default();
        out.push((db.clone(), text));
    }
    Ok(out)
}

/// Views may use views: create in rounds until a round makes no progress.
async fn create_views(dst: &mut Conn, mut pending: Vec<(String, String)>) -> Result<()> {
    while !pending.is_empty() {
        let mut failed = Vec::new();
        let mut last_err = None;
        let before = pending.len();
        for (db, sql) in pending {
            dst.query_drop(format!("USE {}", ident(&db)))
                .await
                .ctx(Side::Destination, || format!("USE {db}"))?;
            if let Err(e) = dst.query_drop(&sql).await {
                last_err = Some(e);
                failed.push((db, sql));
            }
        }
        if failed.len() == before {
            if let Some(e) = last_err {
                return Err(e).ctx(Side::Destination, || "creating views".into());
            }
        }
        pending = failed;
    }
    Ok(())
}
