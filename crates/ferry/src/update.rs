//! `ferry update`: the HA shop's update runbook (levels 1-3), journaled and
//! resumable; `ferry update resume` and `ferry update status`.
//!
//! Without `--journal` the journal is `ferry-update.journal` in the current
//! directory; a finished run's journal there is moved aside to
//! `ferry-update.<start ms>.journal`, an unfinished one is refused (resume
//! it first). With `--control etcd --etcd-endpoints URL,... --run ID` the
//! journal and the update's lease are in etcd instead (cargo feature
//! `etcd`; `--etcd-user`, `--etcd-password-file`, `--etcd-ca-file`,
//! `--etcd-cert-file`, `--etcd-key-file` as in `[store]`): another machine resumes a dead runner's update once its lease
//! expired (exit 3 while it lives), and a runner that lost its lease to
//! another stops at once (exit 4).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::anyhow;
use ferry_fleet::journal::RunMeta;
use ferry_fleet::update::{fold, overall, plan, PlannedStep};
use ferry_fleet::{ExecClient, FleetConfig, Journal, Runbook, Sink, Stream, Updater};

use crate::Failure;

const DEFAULT_JOURNAL: &str = "ferry-update.journal";

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Continue an interrupted update from its journal.
    Resume(ResumeArgs),
    /// Where an update stands (from its journal; works while it runs).
    Status(StatusArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// 1: sync files from the primary; 2: drain, upgrade steps, sync, purge,
    /// spread; 3: level 2 with the sites in maintenance during database steps.
    #[arg(long)]
    level: Option<u8>,
    /// The server the update is made on (a name in the fleet file).
    #[arg(long)]
    primary: Option<String>,
    /// The runbook: routers, pool, sites, steps, purge (docs/update-runbook.md).
    #[arg(long)]
    runbook: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct Common {
    /// The fleet: servers, exec addresses, files volumes.
    #[arg(long, env = "FERRY_FLEET")]
    fleet: Option<PathBuf>,
    /// The update's journal [default: ferry-update.journal].
    #[arg(long)]
    journal: Option<PathBuf>,
    /// The caller's exec token (else the fleet file's).
    #[arg(long, env = "FERRY_EXEC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The replicator's key (else the fleet file's sync_key).
    #[arg(long, env = "FERRY_SYNC_KEY", hide_env_values = true)]
    sync_key: Option<String>,
    #[command(flatten)]
    control: crate::migrate::ControlArgs,
}

#[derive(clap::Args)]
struct ResumeArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The update's journal [default: ferry-update.journal].
    #[arg(long)]
    journal: Option<PathBuf>,
    /// The status as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    control: crate::migrate::ControlArgs,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    match args.command {
        Some(Sub::Resume(a)) => resume(a.common).await,
        Some(Sub::Status(a)) => status(a),
        None => start(args.run).await,
    }
}

fn journal_path(p: &Option<PathBuf>) -> PathBuf {
    p.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_JOURNAL))
}

fn digest(path: &Path) -> Result<String, Failure> {
    let bytes =
        std::fs::read(path).map_err(|e| Failure::usage(anyhow!("{}: {e}", path.display())))?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

async fn start(a: RunArgs) -> Result<(), Failure> {
    let missing =
        |f: &str| Failure::usage(anyhow!("{f} is required (or `ferry update resume|status`)"));
    let level = a.level.ok_or_else(|| missing("--level"))?;
    let primary = a.primary.clone().ok_or_else(|| missing("--primary"))?;
    let runbook_path = a.runbook.clone().ok_or_else(|| missing("--runbook"))?;
    let fleet_path = a
        .common
        .fleet
        .clone()
        .ok_or_else(|| missing("--fleet (or FERRY_FLEET)"))?;
    let (runbook, _) = Runbook::load(&runbook_path).map_err(Failure::usage)?;
    let fleet = FleetConfig::load(&fleet_path).map_err(Failure::usage)?;
    let steps = plan(level, &runbook, &fleet, &primary).map_err(|m| Failure::usage(anyhow!(m)))?;
    let jpath = journal_path(&a.common.journal);
    let etcd = a.common.control.control.is_some();
    if !etcd && a.common.journal.is_none() && jpath.exists() {
        move_finished_aside(&jpath)?;
    }
    let meta = RunMeta {
        level,
        primary,
        runbook_path: absolute(&runbook_path),
        runbook_digest: digest(&runbook_path)?,
        fleet_path: absolute(&fleet_path),
        fleet_digest: digest(&fleet_path)?,
        started_at_ms: ferry_fleet::journal::now_ms(),
    };
    let journal = match etcd {
        false => Journal::create(&jpath, &meta).map_err(Failure::usage)?,
        true => etcd_journal(&a.common.control, Open::Create(&meta))?,
    };
    match etcd {
        false => println!("journal: {}", jpath.display()),
        true => println!("journal: {}", etcd_name(&a.common.control)),
    }
    go(meta, runbook, fleet, steps, journal, &a.common).await
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The default journal of a finished run is moved aside; an unfinished one
/// must be resumed first.
fn move_finished_aside(jpath: &Path) -> Result<(), Failure> {
    let j = Journal::open_read_only(jpath).map_err(Failure::usage)?;
    let meta = j.meta()?;
    let (_, _, steps) = load_plan(&meta)?;
    let state = overall(&fold(&steps, &j.events()?));
    if state == "unfinished" || state.contains("not finished") {
        return Err(Failure::usage(anyhow!(
            "{}: a previous update is {state}: `ferry update resume` it first",
            jpath.display()
        )));
    }
    let aside = jpath.with_file_name(format!("ferry-update.{}.journal", meta.started_at_ms));
    std::fs::rename(jpath, &aside)?;
    Ok(())
}

fn load_plan(meta: &RunMeta) -> Result<(Runbook, FleetConfig, Vec<PlannedStep>), Failure> {
    let (runbook, _) = Runbook::load(&meta.runbook_path).map_err(Failure::usage)?;
    let fleet = FleetConfig::load(&meta.fleet_path).map_err(Failure::usage)?;
    let steps = plan(meta.level, &runbook, &fleet, &meta.primary)
        .map_err(|m| Failure::usage(anyhow!(m)))?;
    Ok((runbook, fleet, steps))
}

async fn resume(c: Common) -> Result<(), Failure> {
    let journal = match c.control.control {
        None => Journal::open(&journal_path(&c.journal)).map_err(Failure::usage)?,
        Some(_) => etcd_journal(&c.control, Open::Resume)?,
    };
    let meta = journal.meta()?;
    for (path, want) in [
        (&meta.runbook_path, &meta.runbook_digest),
        (&meta.fleet_path, &meta.fleet_digest),
    ] {
        if digest(path)? != *want {
            return Err(Failure::usage(anyhow!(
                "{} changed since the update started: resume needs the same file",
                path.display()
            )));
        }
    }
    let (runbook, fleet, steps) = load_plan(&meta)?;
    go(meta, runbook, fleet, steps, journal, &c).await
}

async fn go(
    meta: RunMeta,
    runbook: Runbook,
    fleet: FleetConfig,
    steps: Vec<PlannedStep>,
    journal: Journal,
    c: &Common,
) -> Result<(), Failure> {
    // FERRY_FAILPOINTS: `<step>:before|after=kill|pause` (crash tests).
    let failpoints =
        ferry_fleet::update::Failpoints::from_env(&ferry_fleet::update::failpoint_names(&steps))
            .map_err(|e| Failure::usage(anyhow!(e)))?;
    let token = crate::exec::caller_token(c.token.clone(), &fleet)?;
    let sync_key = c
        .sync_key
        .clone()
        .filter(|k| !k.is_empty())
        .or_else(|| fleet.sync_key.clone())
        .map(|k| ferry_sync::proto::derive_key(&k));
    let width = fleet
        .servers
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0);
    let sink: Sink = Arc::new(
        move |server: &str, stream: Stream, line: &str| match stream {
            Stream::Stdout => println!("{server:<width$} | {line}"),
            Stream::Stderr => eprintln!("{server:<width$} | {line}"),
        },
    );
    let updater = Updater {
        level: meta.level,
        primary: meta.primary,
        runbook,
        fleet,
        steps,
        journal,
        exec: ExecClient::new(token),
        sync_key,
        http: ferry_orch::router::Http::new(),
        say: Arc::new(|s: &str| println!("{s}")),
        sink,
    };
    updater.run_with(&failpoints).await.map_err(|e| match e {
        ferry_fleet::FleetError::LostLease { .. } => Failure {
            code: 4,
            error: anyhow!(e),
        },
        e => Failure::from(anyhow!(e)),
    })
}

/// How an update in etcd is opened.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
enum Open<'a> {
    Create(&'a RunMeta),
    Resume,
    Read,
}

/// `etcd:PREFIX/runs/RUN`, as the journal is named in messages.
fn etcd_name(c: &crate::migrate::ControlArgs) -> String {
    let run = c.run.as_deref().unwrap_or_default();
    format!("etcd:{}/runs/{run}", c.etcd_prefix.trim_end_matches('/'))
}

/// The update's journal in etcd; a runner (create, resume) first takes the
/// run's lease: refused (exit 3, naming the holder) while another's lives.
fn etcd_journal(c: &crate::migrate::ControlArgs, how: Open<'_>) -> Result<Journal, Failure> {
    #[cfg(feature = "etcd")]
    {
        use ferry_fleet::journal::EtcdRun;
        // The flags of `ferry migrate --control etcd`, user and TLS files
        // included, checked as `[store]` is.
        // Connected as `ferry migrate` is: a refused password is named as
        // such and refused (exit 3).
        let s = c.settings()?;
        let store = ferry_orch::lease::connect(&s).map_err(crate::migrate::orch_failure)?;
        let at = EtcdRun::read_only(store, &s.run);
        let take = |at: EtcdRun| {
            let holder = ferry_orch::lease::default_holder();
            at.take(&holder, c.lease_ttl).map_err(|e| match e {
                ferry_fleet::FleetError::Held(_) => Failure::refused(anyhow!(e)),
                e => Failure::usage(anyhow!(e)),
            })
        };
        let opened = match how {
            Open::Create(meta) => Journal::create_etcd(&take(at)?, meta),
            Open::Resume => Journal::open_etcd(&take(at)?),
            Open::Read => Journal::open_etcd_read_only(&at),
        };
        opened.map_err(Failure::usage)
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = (c, how);
        Err(Failure::usage(anyhow!(
            "--control etcd: this ferry was built without etcd support (cargo feature `etcd`)"
        )))
    }
}

fn status(a: StatusArgs) -> Result<(), Failure> {
    let jpath = journal_path(&a.journal);
    let etcd = a.control.control.is_some();
    let journal = match etcd {
        false => Journal::open_read_only(&jpath).map_err(Failure::usage)?,
        true => etcd_journal(&a.control, Open::Read)?,
    };
    let meta = journal.meta()?;
    let (_, _, steps) = load_plan(&meta)?;
    let states = fold(&steps, &journal.events()?);
    let mut state = overall(&states).to_string();
    if state == "unfinished" {
        state = if etcd {
            "unfinished (running, or `ferry update resume --control etcd` once its lease expired)"
                .into()
        } else if Journal::running(&jpath) {
            "running".into()
        } else {
            "interrupted (run `ferry update resume`)".into()
        };
    }
    if a.json {
        let v = serde_json::json!({
            "level": meta.level, "primary": meta.primary, "state": state,
            "started_at_ms": meta.started_at_ms, "steps": states,
        });
        println!("{v:#}");
        return Ok(());
    }
    println!("update level {} on {}: {state}", meta.level, meta.primary);
    for s in &states {
        if s.name == ferry_fleet::update::RESTORE
            && s.state == ferry_fleet::update::StepStatus::Pending
        {
            continue;
        }
        let took = match (s.began_ms, s.ended_ms) {
            (Some(b), Some(e)) => format!("{:.1}s", e.saturating_sub(b) as f64 / 1000.0),
            _ => String::new(),
        };
        println!(
            "  {:<8} {:<32} {took:>8}  {}",
            s.state,
            s.name,
            s.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
