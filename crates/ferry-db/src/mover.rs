//! [`Mover`]: the steps of one database move, in the order the
//! orchestrator's runbook calls them. This file: the settings, the
//! reports, opening a move (or its way back) and `prepare`; the other steps
//! live in one file each: `first_copy`, `catch_up`, `freeze` (with the
//! checksums and the unfreeze), `finish` (switch or rollback).

mod catch_up;
mod finish;
mod first_copy;
mod freeze;

use std::path::PathBuf;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::accounts;
use crate::endpoint::{quote, Endpoint, Session};
use crate::error::{Error, Problem, Result, Side, SqlContext};
use crate::gtid::GtidPos;
use crate::preflight;
use crate::replica;
use crate::state::{Account, Phase, ServerIdentity, State};

/// What to move, from where to where, and how hard to push.
#[derive(Debug, Clone)]
pub struct MoverConfig {
    pub source: Endpoint,
    pub dest: Endpoint,
    pub databases: Vec<String>,
    /// Progress record; a mover opened on an existing one resumes.
    pub state_path: PathBuf,
    /// Parallel connections for the copy and the checksums.
    pub workers: usize,
    /// Rows per primary-key chunk.
    pub chunk_rows: u64,
    /// Size of one multi-row INSERT.
    pub batch_bytes: usize,
    /// How long the snapshot's brief global read lock may wait for running
    /// statements before the copy gives up.
    pub lock_wait: Duration,
    /// How long killed sessions may take to end at the freeze.
    pub kill_wait: Duration,
    /// Name of the replication connection at the destination.
    pub connection: String,
    /// Whether the first copy's rows go to the destination's binary log
    /// (default). Off (`SET sql_log_bin = 0`, as myloader does by default)
    /// the copy writes about a fifth less, but the destination's own
    /// replicas, and Galera peers, never receive the copied rows: only for
    /// a destination that stands alone.
    pub dest_binlog: bool,
}

impl MoverConfig {
    pub fn new(
        source_url: &str,
        dest_url: &str,
        databases: Vec<String>,
        state_path: PathBuf,
    ) -> Result<MoverConfig> {
        let source = Endpoint::parse(Side::Source, source_url)?;
        let dest = Endpoint::parse(Side::Destination, dest_url)?;
        let first = databases.first().cloned().unwrap_or_default();
        // Connection names appear unquoted in `SET GLOBAL name.variable`:
        // keep them to identifier characters.
        let tag: String = first
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(40)
            .collect();
        Ok(MoverConfig {
            source,
            dest,
            databases,
            state_path,
            workers: 4,
            chunk_rows: 10_000,
            batch_bytes: 1 << 20,
            lock_wait: Duration::from_secs(10),
            kill_wait: Duration::from_secs(10),
            connection: format!("ferry_{tag}"),
            dest_binlog: true,
        })
    }
}

/// What `prepare` found.
#[derive(Debug, Clone)]
pub struct PrepareReport {
    /// Accounts using the databases; locked at the freeze, copied at the switch.
    pub accounts: Vec<Account>,
    /// Roles those accounts hold; created at the destination at the switch.
    pub roles: Vec<String>,
    /// Bytes of data and indexes at the source (from the table statistics).
    pub source_bytes: u64,
    /// What will work but cost (a table without a primary key), or was not
    /// checked.
    pub warnings: Vec<Problem>,
}

/// Copy progress, for progress lines.
#[derive(Debug, Clone, Copy)]
pub struct CopyProgress {
    pub rows: u64,
    pub bytes: u64,
    pub chunks_done: u64,
    pub chunks_total: u64,
    pub elapsed: Duration,
}

/// What `first_copy` did.
#[derive(Debug, Clone)]
pub struct CopyReport {
    pub snapshot: GtidPos,
    pub tables: usize,
    pub views: usize,
    pub rows: u64,
    /// Bytes of INSERT statements sent.
    pub bytes: u64,
    pub chunks: u64,
    pub elapsed: Duration,
    /// How long the source's writes were blocked to take the snapshot.
    pub lock_held: Duration,
}

/// What `freeze` did.
#[derive(Debug, Clone)]
pub struct FreezeReport {
    /// The source position read after writes were blocked: the destination
    /// must reach it before the switch.
    pub position: GtidPos,
    /// Accounts this freeze locked.
    pub locked: Vec<Account>,
    pub sessions_ended: u64,
    /// Accounts with global write privileges, not locked (operators); a
    /// site using one of them is not blocked.
    pub not_blocked: Vec<Account>,
}

/// What `switch` did.
#[derive(Debug, Clone)]
pub struct SwitchReport {
    pub accounts: Vec<Account>,
}

/// One move of one or more databases from a source server to a destination
/// server. Steps: [`prepare`](Mover::prepare), [`first_copy`](Mover::first_copy),
/// [`catch_up`](Mover::catch_up) (then [`lag`](Mover::lag) as often as
/// wanted), [`freeze`](Mover::freeze), [`wait_applied`](Mover::wait_applied),
/// [`verify`](Mover::verify), [`switch`](Mover::switch); or
/// [`rollback`](Mover::rollback) at any point before the switch. Each step
/// records its progress in the state file first, so a mover opened again on
/// it continues (or rolls back) where the last one stopped.
pub struct Mover {
    cfg: MoverConfig,
    state: State,
    /// Whether the state came from a file (a resumed move).
    resumed: bool,
    src: Conn,
    dst: Conn,
}

impl Mover {
    /// Connects to both servers (a refused login is
    /// [`Error::AccessDenied`]) and loads the state file if there is one.
    pub async fn open(cfg: MoverConfig) -> Result<Mover> {
        let loaded = State::load(&cfg.state_path)?;
        let mut src = cfg.source.connect(Session::Control).await?;
        let mut dst = cfg.dest.connect(Session::Control).await?;
        let source = identity(&mut src, &cfg.source).await?;
        let destination = identity(&mut dst, &cfg.dest).await?;
        let resumed = loaded.is_some();
        let mut state = match loaded {
            Some(s) => {
                // A file left by another move (other servers, other
                // databases) must not be taken for this one's progress.
                let mut differences = Vec::new();
                if s.databases != cfg.databases {
                    differences.push(format!(
                        "databases {:?} vs {:?}",
                        s.databases, cfg.databases
                    ));
                }
                for (side, recorded, now) in [
                    ("source", &s.source, &source),
                    ("destination", &s.destination, &destination),
                ] {
                    if let Some(r) = recorded {
                        let d = r.differences(now);
                        if !d.is_empty() {
                            differences.push(format!("{side}: recorded {r}, now {now}"));
                        }
                    }
                }
                if !differences.is_empty() {
                    return Err(Error::StateMismatch {
                        path: cfg.state_path.clone(),
                        differences,
                    });
                }
                s
            }
            None => State::new(cfg.databases.clone(), cfg.connection.clone()),
        };
        state.source = Some(source);
        state.destination = Some(destination);
        Ok(Mover {
            cfg,
            state,
            resumed,
            src,
            dst,
        })
    }

    pub fn phase(&self) -> Phase {
        self.state.phase
    }

    pub fn resumed(&self) -> bool {
        self.resumed
    }

    pub fn config(&self) -> &MoverConfig {
        &self.cfg
    }

    /// The position of the first copy's snapshot, once taken.
    pub fn snapshot(&self) -> Option<&GtidPos> {
        self.state.snapshot.as_ref()
    }

    fn need(&self, step: &'static str, ok: &[Phase]) -> Result<()> {
        if ok.contains(&self.state.phase) {
            Ok(())
        } else {
            Err(Error::Phase {
                step,
                phase: self.state.phase.to_string(),
            })
        }
    }

    fn save(&self) -> Result<()> {
        self.state.save(&self.cfg.state_path)
    }

    fn servers(&mut self) -> preflight::Servers<'_> {
        preflight::Servers {
            src: &mut self.src,
            src_addr: self.cfg.source.addr(),
            dst: &mut self.dst,
            dst_addr: self.cfg.dest.addr(),
            connection: &self.cfg.connection,
        }
    }

    /// The checks a move back needs (its data is there already): the
    /// binary log and the GTID layout.
    async fn preflight_reverse(&mut self) -> Result<Vec<Problem>> {
        let f = preflight::check_replication(&mut self.servers()).await?;
        Ok(f.refusals)
    }

    /// Moving back a move that switched (`forward` is its state file): the
    /// databases go from that move's destination (now their home) back to
    /// its source, which still holds them as they were at the freeze, with
    /// their accounts locked. No first copy: the catch-up starts at the
    /// destination's binary log position recorded at the switch, so only
    /// what the sites wrote since travels back. Then the usual steps
    /// (catch-up, freeze at the destination, check, switch); the switch
    /// unlocks the accounts the forward move locked. `cfg` names the
    /// forward move's destination as its source and the other way round;
    /// an existing state file at `cfg.state_path` is resumed.
    pub async fn open_reverse(cfg: MoverConfig, forward: &std::path::Path) -> Result<Mover> {
        if State::load(&cfg.state_path)?.is_some() {
            return Mover::open(cfg).await;
        }
        let state_err = |message: String| Error::State {
            path: forward.to_path_buf(),
            message,
        };
        let fwd = State::load(forward)?
            .ok_or_else(|| state_err("no forward move is recorded here".into()))?;
        if fwd.databases != cfg.databases {
            return Err(Error::StateMismatch {
                path: forward.to_path_buf(),
                differences: vec![format!(
                    "databases {:?} vs {:?}",
                    fwd.databases, cfg.databases
                )],
            });
        }
        if fwd.phase != Phase::Switched {
            return Err(Error::Phase {
                step: "moving back (only a switched move moves back; roll back the others)",
                phase: fwd.phase.to_string(),
            });
        }
        let Some(at) = fwd.dest_at_switch.clone() else {
            return Err(state_err(
                "the switch recorded no destination position (switched by an older ferry): \
                 move the databases back as a new move"
                    .into(),
            ));
        };
        let mut m = Mover::open(cfg).await?;
        // The way back runs from the forward move's destination to its source.
        let mut differences = Vec::new();
        for (side, recorded, now) in [
            ("source", &fwd.destination, &m.state.source),
            ("destination", &fwd.source, &m.state.destination),
        ] {
            if let (Some(r), Some(now)) = (recorded, now) {
                if !r.differences(now).is_empty() {
                    differences.push(format!(
                        "{side} of the move back: the forward move recorded {r}, now {now}"
                    ));
                }
            }
        }
        if !differences.is_empty() {
            return Err(Error::StateMismatch {
                path: forward.to_path_buf(),
                differences,
            });
        }
        let refusals = m.preflight_reverse().await?;
        if !refusals.is_empty() {
            return Err(Error::Preconditions { problems: refusals });
        }
        for db in &m.cfg.databases.clone() {
            if !schema_exists(&mut m.dst, Side::Destination, db).await? {
                return Err(Error::DatabaseMissing {
                    db: db.clone(),
                    addr: m.cfg.dest.addr(),
                });
            }
        }
        m.state.phase = Phase::Copied;
        m.state.snapshot = Some(at);
        m.state.unlock_at_switch = fwd.locked;
        m.state.back = true;
        m.state.events = fwd.events;
        m.save()?;
        Ok(m)
    }

    /// Checks everything the move needs and changes nothing on either
    /// server: the databases exist at the source and not at the
    /// destination, the source writes a row-based binlog, the accounts that
    /// use the databases do not exist at the destination with other
    /// credentials. Writes the state file.
    pub async fn prepare(&mut self) -> Result<PrepareReport> {
        self.need("prepare", &[Phase::Prepared])?;
        let report = self.check().await?;
        self.save()?;
        Ok(report)
    }

    /// The checks of [`prepare`](Self::prepare) alone: reads both servers,
    /// writes nothing (no state file either), so a dry run can ask them.
    pub async fn check(&mut self) -> Result<PrepareReport> {
        let dbs = self.cfg.databases.clone();
        if dbs.is_empty() {
            return Err(Error::Phase {
                step: "prepare without databases",
                phase: self.state.phase.to_string(),
            });
        }
        for db in &dbs {
            if !schema_exists(&mut self.src, Side::Source, db).await? {
                return Err(Error::DatabaseMissing {
                    db: db.clone(),
                    addr: self.cfg.source.addr(),
                });
            }
            if schema_exists(&mut self.dst, Side::Destination, db).await? {
                return Err(Error::DatabaseExists {
                    db: db.clone(),
                    addr: self.cfg.dest.addr(),
                });
            }
        }
        if replica::exists(&mut self.dst, &self.cfg.connection).await? {
            return Err(Error::Replication {
                connection: self.cfg.connection.clone(),
                message: "a replication connection by this name already exists at the destination"
                    .into(),
            });
        }
        let users = accounts::users_of(&mut self.src, Side::Source, &dbs).await?;
        for a in &users {
            let Some(there) = accounts::show_create(&mut self.dst, Side::Destination, a).await?
            else {
                continue;
            };
            let here = accounts::show_create(&mut self.src, Side::Source, a).await?;
            let strip = |s: &str| s.replace(" ACCOUNT LOCK", "");
            if here.as_deref().map(strip) != Some(strip(&there)) {
                return Err(Error::AccountConflict {
                    account: a.to_string(),
                });
            }
        }
        let list = dbs.iter().map(|d| quote(d)).collect::<Vec<_>>().join(",");
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) AS UNSIGNED) \
             FROM information_schema.TABLES WHERE TABLE_SCHEMA IN ({list})"
        );
        let source_bytes: Option<u64> = self
            .src
            .query_first(&sql)
            .await
            .ctx(Side::Source, || sql.clone())?;
        let source_bytes = source_bytes.unwrap_or(0);
        let roles = accounts::roles_of(&mut self.src, Side::Source, &users).await?;
        let dest_binlog = self.cfg.dest_binlog;
        let findings = preflight::check(
            &mut self.servers(),
            &dbs,
            &users,
            &roles,
            source_bytes,
            dest_binlog,
        )
        .await?;
        if !findings.refusals.is_empty() {
            return Err(Error::Preconditions {
                problems: findings.refusals,
            });
        }
        Ok(PrepareReport {
            accounts: users,
            roles,
            source_bytes,
            warnings: findings.warnings,
        })
    }
}

/// The server behind `conn`, as a state file records it.
async fn identity(conn: &mut Conn, e: &Endpoint) -> Result<ServerIdentity> {
    let sql = "SELECT @@server_id, @@hostname, @@port";
    let row: Option<(u32, String, u16)> =
        conn.query_first(sql).await.ctx(e.side(), || sql.into())?;
    let (server_id, hostname, port) = row.unwrap_or_default();
    Ok(ServerIdentity {
        addr: e.addr(),
        server_id,
        hostname,
        port,
    })
}

async fn schema_exists(conn: &mut Conn, side: Side, db: &str) -> Result<bool> {
    let sql = format!(
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
        quote(db)
    );
    let n: Option<u64> = conn.query_first(&sql).await.ctx(side, || sql.clone())?;
    Ok(n.unwrap_or(0) > 0)
}
