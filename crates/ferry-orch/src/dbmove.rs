//! The database side of a unit: one [`ferry_db::Mover`] per database server
//! the unit's databases live on, driven by the runbook's steps. Each mover
//! keeps its own progress in a state file next to the journal, so a step
//! replayed after a crash reopens the mover where it stood; every call made
//! here is one the mover accepts again at the phase it left (see each
//! function).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::DbSettings;
use crate::error::{OrchError, Result};

/// What prepare found on one server (journaled with the step's end).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Prepared {
    /// A move back: ready from its forward move's record.
    MovingBack {
        server: String,
        databases: Vec<String>,
        phase: String,
        moving_back_from: Option<String>,
    },
    /// Prepared before (a replay): nothing checked again.
    Already { server: String, phase: String },
    /// The mover's checks passed.
    Checked {
        server: String,
        databases: Vec<String>,
        accounts: Vec<String>,
        roles: Vec<String>,
        warnings: Vec<String>,
        source_bytes: u64,
    },
}

/// What the pre-copy did on one server.
#[derive(Debug, Serialize)]
pub(crate) struct PreCopied {
    server: String,
    /// None when the first copy was done before (a replay).
    first_copy: Option<FirstCopy>,
    lag_transactions: u64,
    applied: String,
    pub(crate) ready: bool,
    /// None without `verify`, or when not caught up (the freeze checks all).
    verified_online: Option<Checked>,
}

#[derive(Debug, Serialize)]
struct FirstCopy {
    rows: u64,
    tables: usize,
    snapshot: String,
    elapsed_ms: u64,
    lock_held_ms: u64,
}

#[derive(Debug, Serialize)]
struct Checked {
    rows: u64,
    chunks: u64,
    scope: String,
}

/// One server frozen: its writes blocked, the position read after.
#[derive(Debug, Serialize)]
pub(crate) struct Frozen {
    pub(crate) server: String,
    pub(crate) position: String,
    locked: Vec<String>,
    sessions_ended: u64,
    not_blocked: Vec<String>,
}

/// The final copy of one server: at the freeze position (and equal, with `verify`).
#[derive(Debug, Serialize)]
pub(crate) struct FinalCheck {
    server: String,
    position: String,
    verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tables: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunks: Option<u64>,
}

/// One server switched: the destination is the databases' home.
#[derive(Debug, Serialize)]
pub(crate) struct Switched {
    server: String,
    accounts: usize,
}

/// One database server's share of a unit, in one direction.
#[derive(Clone, Debug)]
pub(crate) struct DbGroup {
    pub(crate) server: String,
    pub(crate) databases: Vec<String>,
    pub(crate) from_url: String,
    pub(crate) to_url: String,
    pub(crate) state_path: PathBuf,
    /// A move back: the forward move's state file (it records where the
    /// destination's binary log stood at the switch).
    pub(crate) forward_state: Option<PathBuf>,
}

impl DbGroup {
    fn err(&self, source: ferry_db::Error) -> OrchError {
        OrchError::Db {
            server: self.server.clone(),
            source,
        }
    }
}

/// `<journal>.db-<unit>-<server>[-reverse].json`: beside the journal, so a
/// resume from the journal alone finds it.
pub(crate) fn state_path(journal: &Path, unit: &str, server: &str, reverse: bool) -> PathBuf {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut p = journal.as_os_str().to_owned();
    p.push(format!(
        ".db-{}-{}{}.json",
        safe(unit),
        safe(server),
        if reverse { "-reverse" } else { "" }
    ));
    PathBuf::from(p)
}

async fn open(g: &DbGroup, s: &DbSettings) -> Result<ferry_db::Mover> {
    let mut cfg = ferry_db::MoverConfig::new(
        &g.from_url,
        &g.to_url,
        g.databases.clone(),
        g.state_path.clone(),
    )
    .map_err(|e| g.err(e))?;
    cfg.workers = s.workers;
    cfg.dest_binlog = s.dest_binlog;
    match &g.forward_state {
        // A move back is set up from the forward move's record (or resumed
        // from its own).
        Some(forward) => ferry_db::Mover::open_reverse(cfg, forward).await,
        None => ferry_db::Mover::open(cfg).await,
    }
    .map_err(|e| g.err(e))
}

/// Prepare: the mover's checks (databases at the source and not at the
/// destination, binlog, GTID layout, engines, definers, no conflicting
/// accounts; its warnings journaled); changes nothing. Run
/// again only while the mover is still at `prepared`. A move back is
/// ready from its forward move's record: no first copy, the catch-up starts
/// where the destination stood at the switch.
pub(crate) async fn prepare(g: &DbGroup, s: &DbSettings) -> Result<Prepared> {
    let mut m = open(g, s).await?;
    if g.forward_state.is_some() {
        return Ok(Prepared::MovingBack {
            server: g.server.clone(),
            databases: g.databases.clone(),
            phase: m.phase().to_string(),
            moving_back_from: m.snapshot().map(|p| p.to_string()),
        });
    }
    if m.phase() != ferry_db::Phase::Prepared {
        return Ok(Prepared::Already {
            server: g.server.clone(),
            phase: m.phase().to_string(),
        });
    }
    let r = m.prepare().await.map_err(|e| g.err(e))?;
    Ok(Prepared::Checked {
        server: g.server.clone(),
        databases: g.databases.clone(),
        accounts: r.accounts.iter().map(|a| a.to_string()).collect(),
        roles: r.roles,
        warnings: r.warnings.iter().map(|w| w.to_string()).collect(),
        source_bytes: r.source_bytes,
    })
}

/// Pre-copy: first copy (unless done), catch-up started (idempotent: a
/// running connection is restarted with its filter set again), then waits
/// until the lag is at most `max_lag` transactions, or `catch_up_timeout`
/// (advisory, like the files' convergence). A first copy cut off midway
/// cannot be continued: what it created is dropped and it starts over.
pub(crate) async fn pre_copy(g: &DbGroup, s: &DbSettings) -> Result<PreCopied> {
    use ferry_db::Phase;
    let mut m = open(g, s).await?;
    if matches!(m.phase(), Phase::Copying | Phase::RolledBack) {
        if m.phase() == Phase::Copying {
            m.rollback().await.map_err(|e| g.err(e))?;
        }
        drop(m);
        std::fs::remove_file(&g.state_path).map_err(|source| OrchError::Io {
            what: format!("removing {}", g.state_path.display()),
            source,
        })?;
        m = open(g, s).await?;
        // A move back opens ready for its catch-up: nothing to prepare.
        if m.phase() == Phase::Prepared {
            m.prepare().await.map_err(|e| g.err(e))?;
        }
    }
    let mut copied = None;
    if m.phase() == Phase::Prepared {
        let r = m.first_copy(&|_| {}).await.map_err(|e| g.err(e))?;
        copied = Some(FirstCopy {
            rows: r.rows,
            tables: r.tables,
            snapshot: r.snapshot.to_string(),
            elapsed_ms: r.elapsed.as_millis() as u64,
            lock_held_ms: r.lock_held.as_millis() as u64,
        });
    }
    m.catch_up().await.map_err(|e| g.err(e))?;
    let started = Instant::now();
    let (ready, lag) = loop {
        let lag = m.lag().await.map_err(|e| g.err(e))?;
        if lag.transactions <= s.max_lag {
            break (true, lag);
        }
        if started.elapsed() >= s.catch_up_timeout {
            break (false, lag);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The full proof of equality runs here, on snapshots, while the sites
    // keep writing; the freeze then re-checks only the rows changed since.
    // Not caught up: the freeze checks everything instead.
    let mut online = None;
    if s.verify && ready {
        let v = m
            .verify_online(s.wait_timeout)
            .await
            .map_err(|e| g.err(e))?;
        if !v.equal() {
            return Err(OrchError::Unit {
                unit: g.databases.join(","),
                message: format!(
                    "database server {}: checksums differ before the freeze ({}): {}",
                    g.server,
                    v.scope,
                    differences(&v)
                ),
            });
        }
        online = Some(Checked {
            rows: v.rows(),
            chunks: v.chunks(),
            scope: v.scope.to_string(),
        });
    }
    Ok(PreCopied {
        server: g.server.clone(),
        first_copy: copied,
        lag_transactions: lag.transactions,
        applied: lag.applied_position.to_string(),
        ready,
        verified_online: online,
    })
}

/// The tables and chunks a failed check names.
fn differences(v: &ferry_db::VerifyReport) -> String {
    let mut bad: Vec<String> = v.missing.clone();
    for t in &v.tables {
        if !t.mismatched.is_empty() {
            bad.push(format!(
                "{}.{} ({})",
                t.db,
                t.table,
                t.mismatched.join(", ")
            ));
        }
    }
    bad.join("; ")
}

/// Freeze (after every router acknowledged): the source accounts locked
/// and their sessions ended, then the position read. Again at `frozen`: the
/// accounts are already locked (skipped), the position read again is the
/// same (writes are blocked).
pub(crate) async fn freeze(g: &DbGroup, s: &DbSettings) -> Result<Frozen> {
    let mut m = open(g, s).await?;
    let r = m.freeze().await.map_err(|e| g.err(e))?;
    Ok(Frozen {
        server: g.server.clone(),
        position: r.position.to_string(),
        locked: r.locked.iter().map(|a| a.to_string()).collect(),
        sessions_ended: r.sessions_ended,
        not_blocked: r.not_blocked.iter().map(|a| a.to_string()).collect(),
    })
}

/// What the final copy found for one server.
pub(crate) enum Final {
    Equal(FinalCheck),
    /// Checksums differ: the reason names the tables.
    Differ(String),
}

/// Final copy: the destination waits for the freeze position (the catch-up
/// is started again first: a destination restarted since does not start
/// it by itself), then the checksums. Reads only, so it can run any number
/// of times while frozen.
pub(crate) async fn final_copy(g: &DbGroup, s: &DbSettings) -> Result<Final> {
    let mut m = open(g, s).await?;
    let Some(pos) = m.frozen_at().cloned() else {
        return Err(g.err(ferry_db::Error::Phase {
            step: "final copy",
            phase: m.phase().to_string(),
        }));
    };
    m.catch_up().await.map_err(|e| g.err(e))?;
    m.wait_applied(&pos, s.wait_timeout)
        .await
        .map_err(|e| g.err(e))?;
    if !s.verify {
        return Ok(Final::Equal(FinalCheck {
            server: g.server.clone(),
            position: pos.to_string(),
            verified: false,
            scope: None,
            tables: None,
            rows: None,
            chunks: None,
        }));
    }
    let v = m.verify_frozen().await.map_err(|e| g.err(e))?;
    if !v.equal() {
        return Ok(Final::Differ(format!(
            "database server {}: checksums differ at {pos} ({}): {}",
            g.server,
            v.scope,
            differences(&v)
        )));
    }
    Ok(Final::Equal(FinalCheck {
        server: g.server.clone(),
        position: pos.to_string(),
        verified: true,
        scope: Some(v.scope.to_string()),
        tables: Some(v.tables.len()),
        rows: Some(v.rows()),
        chunks: Some(v.chunks()),
    }))
}

/// Flip, before any router: the destination becomes the databases' home
/// (catch-up removed, accounts created). Again at `switched`: the accounts
/// are checked and left as they are.
pub(crate) async fn switch(g: &DbGroup, s: &DbSettings) -> Result<Switched> {
    let mut m = open(g, s).await?;
    let r = m.switch().await.map_err(|e| g.err(e))?;
    Ok(Switched {
        server: g.server.clone(),
        accounts: r.accounts.len(),
    })
}

/// An abandoned freeze: the accounts this move locked are unlocked, the
/// catch-up goes on. Nothing to do unless the mover is frozen.
pub(crate) async fn unfreeze(g: &DbGroup, s: &DbSettings) -> Result<()> {
    if !g.state_path.exists() {
        return Ok(());
    }
    let mut m = open(g, s).await?;
    if m.phase() == ferry_db::Phase::Frozen {
        m.unfreeze().await.map_err(|e| g.err(e))?;
    }
    Ok(())
}

/// A failed verification or a rollback before the flip: the destination's
/// copy dropped, the source unlocked. Not after the switch (the mover
/// refuses: the destination is then the home).
pub(crate) async fn rollback(g: &DbGroup, s: &DbSettings) -> Result<()> {
    if !g.state_path.exists() {
        return Ok(());
    }
    let mut m = open(g, s).await?;
    m.rollback().await.map_err(|e| g.err(e))
}
