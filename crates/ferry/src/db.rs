//! `ferry db move`: moves MariaDB databases to another server by hand, with
//! progress lines, using the same [`ferry_db::Mover`] steps the
//! orchestrator runs.
//!
//! Flags are read in two stages (as the rest of the CLI): clap's raw
//! [`MoveArgs`], then [`Settings`] with durations and URLs checked, so a
//! usage error (exit 2) comes before any connection. A move that fails
//! after `prepare` leaves its state file: running the same command again
//! resumes it, `--rollback` undoes it. By default the state file lives in a
//! directory of the user's state directory named for both servers and the
//! databases (`$XDG_STATE_HOME/ferry/db/<from>-to-<to>-<dbs>/move.json`),
//! so moves between other servers never meet it; `ferry db status` lists
//! them or shows one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use ferry_db::{Account, Error, Lag, MoveStatus, Mover, MoverConfig, Phase};

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Copy databases to another server under live writes, catch up, freeze
    /// writes at the source, verify and switch (or resume a move).
    Move(MoveArgs),
    /// Where a move stands: the one recorded in STATE, or every move in the
    /// default state directory.
    Status(StatusArgs),
}

#[derive(clap::Args)]
struct StatusArgs {
    /// A move's state file.
    state: Option<PathBuf>,
}

#[derive(clap::Args)]
struct MoveArgs {
    /// Source server: mysql://user:password@host:port (the account needs
    /// RELOAD, REPLICATION SLAVE, SELECT, PROCESS and CREATE USER / account
    /// locking rights; the destination connects to this address too).
    #[arg(long)]
    from: String,
    /// Destination server: mysql://user:password@host:port.
    #[arg(long)]
    to: String,
    /// Databases to move (one or more), together in one freeze.
    #[arg(long, required = true, num_args = 1..)]
    db: Vec<String>,
    /// Catch up until the rest would be applied within --max-freeze before
    /// freezing; without it the freeze follows the first copy at once.
    #[arg(long)]
    until_converged: bool,
    /// Before the switch, compare per-chunk checksums of every table on
    /// both servers; any difference rolls the move back.
    #[arg(long)]
    verify: bool,
    /// Longest the source may stay frozen waiting for the destination,
    /// e.g. "5s"; longer rolls the move back.
    #[arg(long, default_value = "5s")]
    max_freeze: String,
    /// Give up converging after this long (then roll back).
    #[arg(long, default_value = "1h")]
    converge_timeout: String,
    /// Progress record [default: move.json (back.json with --back) in
    /// $XDG_STATE_HOME/ferry/db/<from>-to-<to>-<dbs>/, ~/.local/state when
    /// XDG_STATE_HOME is unset].
    #[arg(long)]
    state: Option<PathBuf>,
    /// Parallel connections for the copy and the checksums.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Rows per primary-key chunk.
    #[arg(long, default_value_t = 10_000)]
    chunk_rows: u64,
    /// Keep the first copy out of the destination's binary log (as myloader
    /// does by default): faster, but the destination's own replicas and
    /// Galera peers never get the copied rows. Only for a destination that
    /// stands alone.
    #[arg(long)]
    no_dest_binlog: bool,
    /// Undo the move recorded in the state file (before its switch only).
    #[arg(long)]
    rollback: bool,
    /// Move the databases back after the switched move recorded in this
    /// state file (by default the forward move's default one): --from is
    /// that move's destination (their home now), --to its source (which
    /// kept them as they were at the freeze). No first copy: only what was
    /// written since the switch travels back.
    #[arg(long, value_name = "FORWARD_STATE")]
    back: Option<Option<PathBuf>>,
}

/// Checked settings.
struct Settings {
    config: MoverConfig,
    until_converged: bool,
    verify: bool,
    max_freeze: Duration,
    converge_timeout: Duration,
    rollback: bool,
    back: Option<PathBuf>,
}

impl Settings {
    fn from_args(a: MoveArgs) -> Result<Settings, Failure> {
        let dur = |flag: &str, s: &str| {
            ferry_conf::parse_duration(s)
                .map_err(|e| Failure::usage(anyhow!("--{flag} {s:?}: {e}")))
        };
        let max_freeze = dur("max-freeze", &a.max_freeze)?;
        let converge_timeout = dur("converge-timeout", &a.converge_timeout)?;
        if a.workers == 0 || a.chunk_rows == 0 {
            return Err(Failure::usage(anyhow!(
                "--workers and --chunk-rows must be at least 1"
            )));
        }
        // Parsed here once for the default paths; MoverConfig checks them.
        let addr = |side, url: &str| {
            ferry_db::Endpoint::parse(side, url)
                .map(|e| e.addr())
                .map_err(Failure::usage)
        };
        let from = addr(ferry_db::Side::Source, &a.from)?;
        let to = addr(ferry_db::Side::Destination, &a.to)?;
        let back = match a.back {
            Some(None) => Some(move_dir(&to, &from, &a.db)?.join("move.json")),
            Some(Some(p)) => Some(p),
            None => None,
        };
        let state = match a.state {
            Some(s) => s,
            None => {
                let dir = move_dir(&from, &to, &a.db)?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Failure::from(anyhow!("creating {}: {e}", dir.display())))?;
                dir.join(if back.is_some() {
                    "back.json"
                } else {
                    "move.json"
                })
            }
        };
        if back.as_ref() == Some(&state) {
            return Err(Failure::usage(anyhow!(
                "--back names the forward move's state file; --state must be another file"
            )));
        }
        let mut config = MoverConfig::new(&a.from, &a.to, a.db, state).map_err(Failure::usage)?;
        config.workers = a.workers;
        config.dest_binlog = !a.no_dest_binlog;
        config.chunk_rows = a.chunk_rows;
        Ok(Settings {
            config,
            until_converged: a.until_converged,
            verify: a.verify,
            max_freeze,
            converge_timeout,
            rollback: a.rollback,
            back,
        })
    }
}

pub async fn run(args: Args) -> Result<(), Failure> {
    match args.command {
        Command::Move(a) => run_move(Settings::from_args(a)?).await,
        Command::Status(a) => status(a),
    }
}

/// `$XDG_STATE_HOME/ferry/db`, or `~/.local/state/ferry/db`.
fn state_root() -> Result<PathBuf, Failure> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".local").join("state"),
            None => {
                return Err(Failure::usage(anyhow!(
                    "neither XDG_STATE_HOME nor HOME is set: give the state file with --state"
                )))
            }
        },
    };
    Ok(base.join("ferry").join("db"))
}

/// The state directory of a move: named for both servers and the
/// databases, in characters safe in a file name.
fn move_dir(from: &str, to: &str, dbs: &[String]) -> Result<PathBuf, Failure> {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("{}-to-{}-{}", safe(from), safe(to), safe(&dbs.join("+")));
    // File names stop at 255 bytes; the state file inside records the
    // whole list, and a move of other databases with this prefix is
    // refused by it.
    name.truncate(200);
    Ok(state_root()?.join(name))
}

fn status(a: StatusArgs) -> Result<(), Failure> {
    let Some(path) = a.state else {
        let root = state_root()?;
        let mut found = Vec::new();
        if let Ok(dirs) = std::fs::read_dir(&root) {
            for d in dirs.flatten() {
                for f in ["move.json", "back.json"] {
                    let p = d.path().join(f);
                    if let Some(m) = MoveStatus::load(&p).map_err(Failure::usage)? {
                        found.push((p, m));
                    }
                }
            }
        }
        if found.is_empty() {
            println!("no moves recorded in {}", root.display());
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        for (p, m) in found {
            println!(
                "{:<12} {} {} -> {}  ({})",
                m.phase.to_string(),
                m.databases.join(","),
                m.source.map_or("?".into(), |s| s.addr),
                m.destination.map_or("?".into(), |s| s.addr),
                p.display()
            );
        }
        return Ok(());
    };
    let m = MoveStatus::load(&path)
        .map_err(Failure::usage)?
        .ok_or_else(|| Failure::usage(anyhow!("no move is recorded in {}", path.display())))?;
    let opt = |p: &Option<ferry_db::GtidPos>| p.as_ref().map_or("-".into(), |p| p.to_string());
    let server =
        |s: &Option<ferry_db::ServerIdentity>| s.as_ref().map_or("-".into(), |s| s.to_string());
    println!(
        "{} of {}: {}",
        if m.moving_back { "move back" } else { "move" },
        m.databases.join(", "),
        m.phase
    );
    println!("  source       {}", server(&m.source));
    println!("  destination  {}", server(&m.destination));
    println!("  snapshot     {}", opt(&m.snapshot));
    println!("  applied      {}", opt(&m.applied));
    println!("  frozen at    {}", opt(&m.frozen_at));
    println!("  first copy   {}/{} chunks", m.chunks_done, m.chunks_total);
    println!("  locked       {}", names(&m.locked));
    let next = match m.phase {
        Phase::Switched => "nothing: the destination is the home (--back moves it back)".to_string(),
        Phase::RolledBack => "nothing: rolled back".to_string(),
        Phase::Copying => "the first copy was interrupted: --rollback, then start again".to_string(),
        _ => format!(
            "run the same `ferry db move` to resume (catch-up through connection {:?}), or add --rollback",
            m.connection
        ),
    };
    println!("  next         {next}");
    Ok(())
}

/// Bad input is a usage error (2), a refused login is "refused" (3), the
/// rest is a failure (1).
fn fail(e: Error) -> Failure {
    match e {
        Error::InvalidUrl { .. }
        | Error::DatabaseMissing { .. }
        | Error::DatabaseExists { .. }
        | Error::AccountConflict { .. }
        | Error::Phase { .. }
        | Error::Preconditions { .. }
        | Error::StateMismatch { .. }
        | Error::State { .. } => Failure::usage(e),
        Error::AccessDenied { .. } => Failure::refused(e),
        e => Failure::from(e),
    }
}

fn names(accounts: &[Account]) -> String {
    if accounts.is_empty() {
        return "none".into();
    }
    accounts
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn run_move(s: Settings) -> Result<(), Failure> {
    let state_path = s.config.state_path.clone();
    let mut m = match &s.back {
        Some(forward) => Mover::open_reverse(s.config.clone(), forward).await,
        None => Mover::open(s.config.clone()).await,
    }
    .map_err(fail)?;
    if m.resumed() {
        eprintln!(
            "resuming the move recorded in {} at phase {}",
            state_path.display(),
            m.phase()
        );
    }
    if s.rollback {
        m.rollback().await.map_err(fail)?;
        eprintln!("rolled back: destination databases dropped, source accounts unlocked");
        return Ok(());
    }
    let result = drive(&mut m, &s).await;
    if result.is_err() && m.phase() != Phase::Switched && m.phase() != Phase::Prepared {
        eprintln!(
            "the move stopped at phase {}; run the same command to resume, or add --rollback to undo it (state: {})",
            m.phase(),
            state_path.display()
        );
    }
    result
}

async fn drive(m: &mut Mover, s: &Settings) -> Result<(), Failure> {
    if m.phase() == Phase::Prepared {
        let p = m.prepare().await.map_err(fail)?;
        eprintln!(
            "prepared: {:.1} MiB at the source, accounts {}{}",
            mb(p.source_bytes),
            names(&p.accounts),
            if p.roles.is_empty() {
                String::new()
            } else {
                format!(", roles {}", p.roles.join(", "))
            }
        );
        for w in &p.warnings {
            eprintln!("warning: {w}");
        }
        let r = m
            .first_copy(&|p| {
                eprintln!(
                    "copy: {} rows, {:.1} MiB, chunks {}/{}, {:.0} rows/s",
                    p.rows,
                    mb(p.bytes),
                    p.chunks_done,
                    p.chunks_total,
                    p.rows as f64 / p.elapsed.as_secs_f64().max(0.001)
                )
            })
            .await
            .map_err(fail)?;
        eprintln!(
            "first copy done: {} tables, {} views, {} rows in {:.1?} (snapshot {}, writes paused {:.0?} for it)",
            r.tables, r.views, r.rows, r.elapsed, r.snapshot, r.lock_held
        );
    }
    if matches!(m.phase(), Phase::Copying) {
        return Err(Failure::from(anyhow!(
            "the first copy was interrupted; roll back (--rollback) and start again"
        )));
    }
    // Frozen too: a mover killed during the freeze may have left the
    // catch-up stopped; starting it again is harmless when it runs.
    if matches!(m.phase(), Phase::Copied | Phase::CatchingUp | Phase::Frozen) {
        m.catch_up().await.map_err(fail)?;
        eprintln!("catch-up running");
        if s.until_converged && m.phase() != Phase::Frozen {
            converge(m, s.max_freeze, s.converge_timeout).await?;
        }
    }
    // The full check before the freeze, on snapshots of both sides while
    // writes go on; the freeze then re-checks only the rows changed since.
    if s.verify && m.phase() == Phase::CatchingUp {
        let started = Instant::now();
        let v = m.verify_online(s.converge_timeout).await.map_err(fail)?;
        if !v.equal() {
            return Err(Failure::from(anyhow!(
                "checksums differ before the freeze: {}; nothing frozen (--rollback drops the copy)",
                mismatches(&v)
            )));
        }
        eprintln!(
            "verified before the freeze: {} rows in {} chunks equal ({}) in {:.1?}",
            v.rows(),
            v.chunks(),
            v.scope,
            started.elapsed()
        );
    }
    if m.phase() == Phase::Switched {
        eprintln!("already switched");
        return Ok(());
    }
    let frozen = Instant::now();
    let f = m.freeze().await.map_err(fail)?;
    eprintln!(
        "frozen at {}: locked {}, ended {} sessions",
        f.position,
        names(&f.locked),
        f.sessions_ended
    );
    if !f.not_blocked.is_empty() {
        eprintln!(
            "warning: accounts with global write rights are not blocked: {}",
            names(&f.not_blocked)
        );
    }
    if let Err(e) = m.wait_applied(&f.position, s.max_freeze).await {
        m.rollback().await.map_err(fail)?;
        return Err(Failure::from(anyhow!(
            "{e}; rolled back, the source is writable again"
        )));
    }
    eprintln!(
        "destination at {} after {:.1?}",
        f.position,
        frozen.elapsed()
    );
    if s.verify {
        let v = m.verify_frozen().await.map_err(fail)?;
        if !v.equal() {
            m.rollback().await.map_err(fail)?;
            return Err(Failure::from(anyhow!(
                "checksums differ: {}; rolled back, the source is writable again",
                mismatches(&v)
            )));
        }
        eprintln!(
            "verified: {} rows in {} chunks equal on both sides ({})",
            v.rows(),
            v.chunks(),
            v.scope
        );
    }
    let sw = m.switch().await.map_err(fail)?;
    eprintln!(
        "switched: {} accounts copied; writes were blocked for {:.1?}",
        sw.accounts.len(),
        frozen.elapsed()
    );
    Ok(())
}

fn mismatches(v: &ferry_db::VerifyReport) -> String {
    let mut what: Vec<String> = v.missing.clone();
    for t in &v.tables {
        what.extend(t.mismatched.iter().cloned());
    }
    what.join("; ")
}

/// Polls the lag once a second until what is left would be applied within
/// half the freeze budget, at the apply rate just measured.
async fn converge(m: &mut Mover, max_freeze: Duration, timeout: Duration) -> Result<(), Failure> {
    let started = Instant::now();
    let mut last: Option<(Instant, Lag)> = None;
    loop {
        let lag = m.lag().await.map_err(fail)?;
        let now = Instant::now();
        let rate = last.as_ref().and_then(|(t, l)| {
            let done = lag
                .applied_position
                .transactions_ahead_of(&l.applied_position);
            let secs = now.duration_since(*t).as_secs_f64();
            (secs > 0.0 && done > 0).then(|| done as f64 / secs)
        });
        eprintln!(
            "catch-up: {} transactions behind, {} s behind{}",
            lag.transactions,
            lag.seconds.map_or("?".into(), |s| s.to_string()),
            rate.map_or(String::new(), |r| format!(", applying {r:.0}/s"))
        );
        let fits = lag.transactions == 0
            || rate.is_some_and(|r| lag.transactions as f64 / r < max_freeze.as_secs_f64() / 2.0);
        if fits {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(Failure::from(anyhow!(
                "not converged after {timeout:?}: {} transactions behind",
                lag.transactions
            )));
        }
        last = Some((now, lag));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
