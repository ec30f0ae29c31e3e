//! [`Mover`]: the steps of one database move, in the order the
//! orchestrator's runbook calls them.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::accounts;
use crate::binlog;
use crate::checksum::{self, Scope, VerifyReport};
use crate::copy::{self, Counters};
use crate::endpoint::{ident, quote, Endpoint, Session};
use crate::error::{Error, Result, Side, SqlContext};
use crate::gtid::GtidPos;
use crate::preflight;
use crate::replica::{self, Lag};
use crate::schema;
use crate::state::{Account, Phase, ScheduledEvent, ServerIdentity, State};

/// Changed rows of one table the freeze re-checks by key; past this, the
/// whole table by chunk (as fast, and fewer statements).
const KEY_LIMIT: usize = 100_000;

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
    pub warnings: Vec<crate::preflight::Problem>,
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
    async fn preflight_reverse(&mut self) -> Result<Vec<preflight::Problem>> {
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
        self.save()?;
        Ok(PrepareReport {
            accounts: users,
            roles,
            source_bytes,
            warnings: findings.warnings,
        })
    }

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

    /// Starts applying the source's changes since the snapshot at the
    /// destination (or, for a resumed move, since the last applied
    /// position, whichever is further), and returns once the replication
    /// connection runs. The changes keep flowing until `switch` or
    /// `rollback`, whether this mover lives or not.
    pub async fn catch_up(&mut self) -> Result<()> {
        self.need(
            "catch-up",
            &[Phase::Copied, Phase::CatchingUp, Phase::Frozen],
        )?;
        // A new replication connection starts at the snapshot, or where an
        // earlier one of this move had got to (the source's domains only:
        // the destination's other entries are not ours to set).
        let snapshot = self.state.snapshot.clone().unwrap_or_default();
        let from = match &self.state.applied {
            Some(applied) => GtidPos::resume_from(&snapshot, applied),
            None => snapshot,
        };
        replica::start(
            &mut self.dst,
            &self.cfg.source,
            &self.cfg.connection,
            &self.cfg.databases,
            &from,
        )
        .await?;
        if self.state.phase == Phase::Copied {
            self.state.phase = Phase::CatchingUp;
        }
        self.save()?;
        Ok(())
    }

    /// How far the destination is behind; records the applied position.
    pub async fn lag(&mut self) -> Result<Lag> {
        self.need("lag", &[Phase::CatchingUp, Phase::Frozen])?;
        let lag = replica::lag(&mut self.src, &mut self.dst, &self.cfg.connection).await?;
        self.state.applied = Some(lag.applied_position.clone());
        self.save()?;
        Ok(lag)
    }

    /// Blocks writes to the databases at the source, then (only then) reads
    /// the source position. The block: every account with privileges on the
    /// databases is locked (`ALTER USER .. ACCOUNT LOCK`: new logins are
    /// refused) and its sessions are killed, and we wait until they are
    /// gone. Locking rather than revoking: grants stay exactly as they were
    /// (rollback is one `ACCOUNT UNLOCK`, nothing to reconstruct), the lock
    /// is stored in the grant tables so it survives a crash of the mover or
    /// a restart of the server (a freeze that fails closed), and it answers
    /// clients with a clear "account is locked". A global read lock would
    /// also stop every other database on the server, and hold only as long
    /// as our connection.
    pub async fn freeze(&mut self) -> Result<FreezeReport> {
        self.need("freeze", &[Phase::CatchingUp, Phase::Frozen])?;
        let users = accounts::users_of(&mut self.src, Side::Source, &self.cfg.databases).await?;
        let mut locked_now = Vec::new();
        for a in &users {
            if self.state.locked.contains(a) {
                continue;
            }
            let create = accounts::show_create(&mut self.src, Side::Source, a).await?;
            if create.as_deref().is_none_or(accounts::is_locked) {
                // Locked before us (or gone): not ours to unlock later.
                continue;
            }
            // Recorded before the lock: a crash in between leaves an
            // account rollback unlocks, never one it forgets.
            self.state.locked.push(a.clone());
            self.save()?;
            accounts::set_locked(&mut self.src, a, true).await?;
            locked_now.push(a.clone());
        }
        let sessions_ended =
            accounts::end_sessions(&mut self.src, &users, self.cfg.kill_wait).await?;
        let position = replica::source_position(&mut self.src).await?;
        let not_blocked = accounts::global_writers(&mut self.src, Side::Source).await?;
        self.state.frozen_at = Some(position.clone());
        self.state.phase = Phase::Frozen;
        self.save()?;
        Ok(FreezeReport {
            position,
            locked: locked_now,
            sessions_ended,
            not_blocked,
        })
    }

    /// Waits until the destination has applied `position` (MASTER_GTID_WAIT);
    /// [`Error::WaitTimeout`] after `timeout`, [`Error::Replication`] if the
    /// catch-up stopped on an error.
    pub async fn wait_applied(&mut self, position: &GtidPos, timeout: Duration) -> Result<()> {
        self.need("wait", &[Phase::CatchingUp, Phase::Frozen])?;
        replica::wait(&mut self.dst, &self.cfg.connection, position, timeout).await?;
        self.state.applied = Some(position.clone());
        self.save()
    }

    /// The full check without a freeze, VDiff-style: the destination's
    /// applier is held, a snapshot is taken on the source (with its binary
    /// log position), the applier runs up to exactly that position and
    /// stops, snapshots are taken on the destination, and the applier runs
    /// again; then every chunk is compared between the two sets of
    /// snapshots while both servers go on. Equal: the position is recorded
    /// and [`Mover::verify_frozen`] needs only re-check the rows changed
    /// after it. `wait` bounds the destination's run up to the position.
    pub async fn verify_online(&mut self, wait: Duration) -> Result<VerifyReport> {
        self.need("online verify", &[Phase::CatchingUp])?;
        let workers = self.cfg.workers.max(1);
        let name = self.cfg.connection.clone();
        replica::stop_applier(&mut self.dst, &name).await?;
        let held = async {
            let snap = copy::snapshot(&self.cfg.source, workers, self.cfg.lock_wait).await?;
            replica::apply_until(&mut self.dst, &name, &snap.position, wait).await?;
            let mut dest = Vec::with_capacity(workers + 1);
            for _ in 0..=workers {
                let mut c = self.cfg.dest.connect(Session::Data).await?;
                for sql in [
                    "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                    "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                ] {
                    c.query_drop(sql)
                        .await
                        .ctx(Side::Destination, || sql.into())?;
                }
                dest.push(c);
            }
            Ok::<_, Error>((snap, dest))
        }
        .await;
        let resumed = replica::resume_applier(&mut self.dst, &name).await;
        let (snap, mut dest) = held?;
        resumed?;
        let mark = snap.binlog.clone();
        let lister = dest.pop().expect("workers + 1 connections");
        let pairs = snap.workers.into_iter().zip(dest).collect();
        let report = checksum::verify_snapshots(
            checksum::SnapshotPair {
                source_walker: snap.coordinator,
                dest_lister: lister,
                pairs,
                at: snap.position,
            },
            &self.cfg.databases,
            self.cfg.chunk_rows,
        )
        .await?;
        self.state.verified_at = report.equal().then_some(mark);
        self.save()?;
        Ok(report)
    }

    /// The check inside the freeze, once the destination has applied the
    /// freeze position: after an equal [`Mover::verify_online`], only the
    /// rows the source's binary log shows changed since its snapshot (and
    /// in full the tables whose changes cannot be narrowed to rows); without
    /// one, or if the binary log cannot be read from there, everything.
    pub async fn verify_frozen(&self) -> Result<VerifyReport> {
        self.need("verify", &[Phase::Frozen])?;
        let Some(mark) = &self.state.verified_at else {
            let mut r = self.verify().await?;
            r.scope = Scope::FullBecause("no snapshot check before the freeze".into());
            return Ok(r);
        };
        let changes =
            match binlog::changes_since(&self.cfg.source, mark, &self.cfg.databases, KEY_LIMIT)
                .await
            {
                Ok(c) => c,
                Err(e) => binlog::Changes {
                    everything: Some(format!(
                        "the binary log since {} could not be read: {e}",
                        mark.gtid
                    )),
                    ..Default::default()
                },
            };
        checksum::verify_changes(
            &self.cfg.source,
            &self.cfg.dest,
            &self.cfg.databases,
            self.cfg.chunk_rows,
            self.cfg.workers.max(1),
            &mark.gtid,
            changes,
        )
        .await
    }

    /// Per-table, per-chunk checksums on both servers, compared: every row.
    /// Meaningful once frozen and applied.
    pub async fn verify(&self) -> Result<VerifyReport> {
        checksum::verify(
            &self.cfg.source,
            &self.cfg.dest,
            &self.cfg.databases,
            self.cfg.chunk_rows,
            self.cfg.workers.max(1),
        )
        .await
    }

    /// Makes the destination the databases' home: checks it has applied the
    /// freeze position, removes the replication connection, and creates the
    /// accounts with their password hashes and grants (so sites keep their
    /// credentials). The source stays locked.
    pub async fn switch(&mut self) -> Result<SwitchReport> {
        self.need("switch", &[Phase::Frozen, Phase::Switched])?;
        if self.state.phase == Phase::Frozen {
            let gone = !replica::exists(&mut self.dst, &self.cfg.connection).await?;
            if !(gone && self.state.switch_checked) {
                let pos = self.state.frozen_at.clone().unwrap_or_default();
                // Zero timeout: a check, not a wait; a switch never outruns the data.
                replica::wait(&mut self.dst, &self.cfg.connection, &pos, Duration::ZERO).await?;
                // Where the destination's own binary log stands before any
                // site writes there: a move back replays from here.
                self.state.dest_at_switch =
                    Some(replica::binlog_position(&mut self.dst, Side::Destination).await?);
                self.state.switch_checked = true;
                self.save()?;
            }
            replica::remove(&mut self.dst, &self.cfg.connection).await?;
        }
        let users = accounts::users_of(&mut self.src, Side::Source, &self.cfg.databases).await?;
        // Roles first: the accounts' grants name them.
        let roles = accounts::roles_of(&mut self.src, Side::Source, &users).await?;
        accounts::copy_roles(&mut self.src, &mut self.dst, &roles).await?;
        for a in &users {
            let unlock = self.state.locked.contains(a);
            let statements = accounts::recreate_statements(&mut self.src, a, unlock).await?;
            let exists = accounts::show_create(&mut self.dst, Side::Destination, a)
                .await?
                .is_some();
            for (i, s) in statements.iter().enumerate() {
                if i == 0 && exists {
                    continue;
                }
                self.dst
                    .query_drop(s)
                    .await
                    .ctx(Side::Destination, || format!("recreating account {a}"))?;
            }
        }
        // Scheduled events run where the data lives: on at the new home,
        // off at the old one (they were created disabled at the copy, so
        // they never ran twice against replicated rows).
        for e in self.state.events.clone() {
            let name = format!("{}.{}", ident(&e.db), ident(&e.name));
            for (conn, side, what) in [
                (&mut self.src, Side::Source, "DISABLE"),
                (&mut self.dst, Side::Destination, "ENABLE"),
            ] {
                let sql = format!("ALTER EVENT {name} {what}");
                conn.query_drop(&sql).await.ctx(side, || sql.clone())?;
            }
        }
        // A move back: the accounts the forward move locked here are the
        // sites' own again.
        for a in self.state.unlock_at_switch.clone() {
            accounts::set_locked(&mut self.dst, &a, false).await?;
        }
        self.state.phase = Phase::Switched;
        self.save()?;
        Ok(SwitchReport { accounts: users })
    }

    /// Undoes the move before the switch: removes the replication
    /// connection, drops the databases this move created at the
    /// destination, unlocks the accounts this move locked at the source.
    /// The source's data was never written: it is as it was, and writable.
    pub async fn rollback(&mut self) -> Result<()> {
        self.need(
            "rollback",
            &[
                Phase::Prepared,
                Phase::Copying,
                Phase::Copied,
                Phase::CatchingUp,
                Phase::Frozen,
                Phase::RolledBack,
            ],
        )?;
        replica::remove(&mut self.dst, &self.cfg.connection).await?;
        for db in self.state.created.clone() {
            self.dst
                .query_drop(format!("DROP DATABASE IF EXISTS {}", ident(&db)))
                .await
                .ctx(Side::Destination, || format!("dropping {db}"))?;
        }
        self.state.created.clear();
        self.save()?;
        for a in self.state.locked.clone() {
            accounts::set_locked(&mut self.src, &a, false).await?;
        }
        self.state.locked.clear();
        self.state.phase = Phase::RolledBack;
        self.save()
    }

    /// Undoes a freeze whose cutover was abandoned (a router did not
    /// acknowledge, or the orchestrator gave up on this attempt): unlocks
    /// exactly the accounts this move locked and goes back to catching up,
    /// so the next attempt freezes again without a new first copy. The
    /// replication connection is left running: the destination keeps
    /// following the source's writes, which resume now.
    pub async fn unfreeze(&mut self) -> Result<()> {
        self.need("unfreeze", &[Phase::CatchingUp, Phase::Frozen])?;
        for a in self.state.locked.clone() {
            accounts::set_locked(&mut self.src, &a, false).await?;
            // Forgotten one at a time, after its unlock: a crash in between
            // leaves an account unlocked twice (harmless), never one left
            // locked with no record.
            self.state.locked.retain(|x| x != &a);
            self.save()?;
        }
        self.state.frozen_at = None;
        self.state.switch_checked = false;
        self.state.phase = Phase::CatchingUp;
        self.save()
    }

    /// The source position read by the last [`freeze`](Mover::freeze).
    pub fn frozen_at(&self) -> Option<&GtidPos> {
        self.state.frozen_at.as_ref()
    }

    /// Stops the catch-up without removing it (tests and operators pausing
    /// a move); `catch_up` starts it again from where it stopped.
    pub async fn pause(&mut self) -> Result<()> {
        replica::stop(&mut self.dst, &self.cfg.connection).await
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
