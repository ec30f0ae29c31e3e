//! `ferry migrate`: run, resume, inspect and roll back a migration
//! (the runbook lives in `ferry-orch`; this is flags, output, exit codes).
//!
//! Exit codes: 0 every unit done; 1 a unit failed (or the run stopped on an
//! error); 2 bad config, plan, unit id or flag; 3 refused (a journal that is
//! not ours, damaged or already used; a plan that changed since the run began;
//! a run whose lease another runner holds, with `[store] backend = "etcd"` or
//! `--control etcd`); 4 this runner lost the run's lease to another runner
//! (etcd): it stopped at once and changed nothing more (docs/control-plane.md).
//! `check` (and `run --dry-run`): 0 the night could run, 1 a check failed,
//! 2 bad config, plan, unit id or flag.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;
use ferry_orch::journal::detail_line;
use ferry_orch::{
    EventRecord, Failpoints, Faults, Journal, MigrationStatus, Options, OrchError, Orchestrator,
    Phase, RunInputs, RunSummary, UnitState,
};

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Start a migration: every scheduled unit of the plan (or --only), in
    /// the plan's lanes (--parallel units frozen at once), each lane in plan
    /// order.
    Run(RunArgs),
    /// Go on with the run recorded in a journal (after a crash or a stop).
    Resume(ResumeArgs),
    /// Print the state of the run recorded in a journal (works while it runs).
    Status(StatusArgs),
    /// Put a unit back at the source: before its flip, unfreeze there; after
    /// it, run the runbook in reverse (copy back, freeze, flip back).
    Rollback(RollbackArgs),
    /// Check everything a run would need (routers, agents, databases, the
    /// journal's directory, room, predicted freezes) without changing
    /// anything; exit 0 only if the night could run.
    Check(CheckArgs),
}

/// What a run is made of, as `check` and `run` take it.
#[derive(clap::Args)]
struct InputArgs {
    /// migrate.toml: routers, pools, filers, freeze budget (docs/migrate-config.md).
    #[arg(long)]
    config: PathBuf,
    /// plan.json written by `ferry plan`.
    #[arg(long)]
    plan: PathBuf,
    /// Only these units (comma-separated ids), whatever their plan status.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl InputArgs {
    fn load(&self) -> Result<RunInputs, OrchError> {
        RunInputs::load(
            &self.config,
            &self.plan,
            (!self.only.is_empty()).then_some(self.only.as_slice()),
        )
    }
}

#[derive(clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    inputs: InputArgs,
    /// The journal a run would create (checked, not created); with
    /// --resume, the run's journal (read, never written).
    #[arg(long, default_value = "ferry-journal.db")]
    journal: PathBuf,
    /// Check before `ferry migrate resume`: open the journal read-only,
    /// verify its chain, skip the units it says are done, and fail a router
    /// behind the epochs it says every router took.
    #[arg(long)]
    resume: bool,
    /// One JSON object per check on stdout.
    #[arg(long)]
    json: bool,
    /// Bound of each router and agent call, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = ferry_conf::parse_duration)]
    timeout: std::time::Duration,
    /// Time a bounded read (64 MiB, --timeout) from each filer's source and
    /// print each unit's pre-copy, final copy and freeze at that rate.
    #[arg(long)]
    measure_link: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    inputs: InputArgs,
    /// The journal to create (must not hold a run yet).
    #[arg(long, default_value = "ferry-journal.db")]
    journal: PathBuf,
    /// Do not wait for the [window]: freeze as soon as pre-copy is done.
    #[arg(long)]
    now: bool,
    /// One JSON event per line on stdout instead of progress bars.
    #[arg(long)]
    json: bool,
    /// Serve the tracking page and JSON status here (overrides [tracking] listen).
    #[arg(long)]
    listen: Option<String>,
    /// Change nothing: run `ferry migrate check` with these flags instead.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: time a bounded read from each filer's source (as
    /// `check --measure-link`).
    #[arg(long, requires = "dry_run")]
    measure_link: bool,
    /// Units frozen at once: the lanes (default: the plan's `parallel`). A
    /// lane runs its units back to back, the next one's pre-copy beside the
    /// freeze; 1 runs every unit start to end, one after another.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    parallel: Option<u32>,
    /// Bytes per second for every copy job of the run together, all lanes
    /// sharing it (K, M, G: powers of 1024), e.g. 100M. Default: unlimited.
    #[arg(long, value_parser = crate::parse_size)]
    bwlimit: Option<u64>,
}

/// Where a run is when its journal is in etcd (the migrate config's
/// `[store] backend = "etcd"`), instead of `--journal`. The user and TLS
/// flags (shared with `ferry ctl routers`) need `--control` here.
#[derive(clap::Args)]
#[command(mut_args(|a| match AccessArgs::IDS.contains(&a.get_id().as_str()) {
    true => a.requires("control"),
    false => a,
}))]
pub(crate) struct ControlArgs {
    /// `etcd`: the run's journal and lease are in etcd (`--etcd-endpoints`,
    /// `--etcd-prefix`, `--run`); another machine's dead run is taken over
    /// once its lease has expired.
    #[arg(long, value_parser = ["etcd"], requires_all = ["run", "etcd_endpoints"])]
    pub(crate) control: Option<String>,
    /// The etcd members, comma-separated `http://HOST:PORT` (`https://` with
    /// --etcd-ca-file) (`[store] endpoints`).
    #[arg(long, value_delimiter = ',', requires = "control")]
    etcd_endpoints: Vec<String>,
    /// The key prefix in etcd (`[store] prefix`).
    #[arg(long, default_value = "/ferry", requires = "control")]
    pub(crate) etcd_prefix: String,
    /// The run id (`[store] run`): its journal is under PREFIX/runs/RUN/.
    #[arg(long, requires = "control")]
    pub(crate) run: Option<String>,
    /// TTL of the run's lease taken by this runner (`[store] lease_ttl`).
    #[arg(long, default_value = "10s", value_parser = ferry_conf::parse_duration, requires = "control")]
    pub(crate) lease_ttl: std::time::Duration,
    /// User and TLS files (boxed: rarely given, and every subcommand
    /// holding these flags would grow by their size).
    #[command(flatten)]
    access: Box<AccessArgs>,
}

/// How an etcd client logs in: the keys of `[store]` as flags, for
/// `--control etcd` (ferry migrate, ferry update) and `ferry ctl routers`.
#[derive(clap::Args)]
pub(crate) struct AccessArgs {
    /// etcd user (`[store] user`), with --etcd-password-file.
    #[arg(long)]
    etcd_user: Option<String>,
    /// File holding the etcd user's password, readable by its owner only
    /// (`[store] password_file`).
    #[arg(long)]
    etcd_password_file: Option<String>,
    /// The CA of the members' certificates (`[store] ca_file`): the
    /// endpoints are then https://.
    #[arg(long)]
    etcd_ca_file: Option<String>,
    /// Client certificate, when the cluster asks for one (`[store] cert_file`).
    #[arg(long)]
    etcd_cert_file: Option<String>,
    /// Its private key, readable by its owner only (`[store] key_file`).
    #[arg(long)]
    etcd_key_file: Option<String>,
}

impl AccessArgs {
    /// The ids of these flags, for the commands that flatten them to adjust
    /// (`requires`, `global`).
    pub(crate) const IDS: [&'static str; 5] = [
        "etcd_user",
        "etcd_password_file",
        "etcd_ca_file",
        "etcd_cert_file",
        "etcd_key_file",
    ];

    /// The cluster at `endpoints` and `prefix` with these flags, checked by
    /// the code that checks `[store]` (ferry-conf's `etcd`: the same rules
    /// and messages, naming the flags); relative files are relative to the
    /// working directory. No run (empty), a lease TTL of 10 s, requests
    /// bounded by 5 s.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn settings(
        &self,
        endpoints: &[String],
        prefix: &str,
    ) -> Result<ferry_orch::config::EtcdSettings, Failure> {
        let flag = |v: &String| ferry_conf::etcd::Spanned::new(0..0, v.clone());
        let endpoints = ferry_conf::etcd::Spanned::new(0..0, endpoints.iter().map(flag).collect());
        let prefix = prefix.to_string();
        let [prefix, user, password_file, ca_file, cert_file, key_file] = [
            Some(&prefix),
            self.etcd_user.as_ref(),
            self.etcd_password_file.as_ref(),
            self.etcd_ca_file.as_ref(),
            self.etcd_cert_file.as_ref(),
            self.etcd_key_file.as_ref(),
        ]
        .map(|v| v.map(flag));
        let access = ferry_conf::etcd::EtcdKeys {
            naming: ferry_conf::etcd::Naming::Flags,
            endpoints: Some(&endpoints),
            prefix: prefix.as_ref(),
            missing_at: 0..0,
            user: user.as_ref(),
            password_file: password_file.as_ref(),
            ca_file: ca_file.as_ref(),
            cert_file: cert_file.as_ref(),
            key_file: key_file.as_ref(),
        }
        .check(std::path::Path::new(""))
        .map_err(|e| Failure::usage(anyhow!(e.message)))?;
        Ok(ferry_orch::config::EtcdSettings {
            endpoints: access.endpoints,
            prefix: access.prefix,
            auth: access.auth,
            tls: access.tls,
            run: String::new(),
            lease_ttl: std::time::Duration::from_secs(10),
            request_timeout: std::time::Duration::from_secs(5),
            // Only a lease is taken with these (a run's placements follow
            // the migrate.toml recorded in its journal), or the fleet read.
            shared_records: false,
        })
    }
}

impl ControlArgs {
    /// The run in etcd these flags name (see [`AccessArgs::settings`]).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn settings(&self) -> Result<ferry_orch::config::EtcdSettings, Failure> {
        Ok(ferry_orch::config::EtcdSettings {
            run: self.run.clone().unwrap_or_default(),
            lease_ttl: self.lease_ttl,
            ..self
                .access
                .settings(&self.etcd_endpoints, &self.etcd_prefix)?
        })
    }
}

/// The journal named by `--journal` or `--control etcd ...`; with etcd and
/// `runner`, the run's lease is taken first (refused, exit 3, while another
/// runner holds it).
fn journal_at(
    journal: Option<&PathBuf>,
    c: &ControlArgs,
    runner: bool,
) -> Result<ferry_orch::JournalAt, Failure> {
    if c.control.is_none() {
        let p = journal
            .ok_or_else(|| Failure::usage(anyhow!("--journal or --control etcd is needed")))?;
        return Ok(p.into());
    }
    #[cfg(feature = "etcd")]
    {
        let s = c.settings()?;
        let run = if runner {
            ferry_orch::lease::EtcdRun::take(&s, None)
        } else {
            ferry_orch::lease::EtcdRun::read_only(&s)
        };
        Ok(run.map_err(orch_failure)?.into())
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = (runner, &c.run, c.lease_ttl);
        Err(Failure::usage(anyhow!(
            "--control etcd: this ferry was built without etcd support (cargo feature `etcd`)"
        )))
    }
}

/// Where `run` keeps its journal: the config's `[store]` (etcd, under the
/// run's lease) or `--journal`.
fn run_journal(
    inputs: &RunInputs,
    journal: &std::path::Path,
) -> Result<ferry_orch::JournalAt, Failure> {
    match &inputs.cfg.store {
        ferry_orch::config::StoreSettings::Sqlite => Ok(journal.into()),
        #[cfg(feature = "etcd")]
        ferry_orch::config::StoreSettings::Etcd(s) => Ok(ferry_orch::lease::EtcdRun::take(s, None)
            .map_err(orch_failure)?
            .into()),
        #[cfg(not(feature = "etcd"))]
        ferry_orch::config::StoreSettings::Etcd(_) => Err(Failure::usage(anyhow!(
            "[store] backend = \"etcd\": this ferry was built without etcd support"
        ))),
    }
}

#[derive(clap::Args)]
struct ResumeArgs {
    /// The journal of the run (it holds the config and the plan's path).
    #[arg(long, required_unless_present = "control")]
    journal: Option<PathBuf>,
    #[command(flatten)]
    control: ControlArgs,
    /// Do not wait for the [window].
    #[arg(long)]
    now: bool,
    /// One JSON event per line on stdout instead of progress bars.
    #[arg(long)]
    json: bool,
    /// Serve the tracking page and JSON status here (overrides [tracking] listen).
    #[arg(long)]
    listen: Option<String>,
    /// Units frozen at once: the lanes (default: the plan's `parallel`). A
    /// lane runs its units back to back, the next one's pre-copy beside the
    /// freeze; 1 runs every unit start to end, one after another.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    parallel: Option<u32>,
    /// Bytes per second for every copy job of the run together, all lanes
    /// sharing it (K, M, G: powers of 1024), e.g. 100M. Default: unlimited.
    #[arg(long, value_parser = crate::parse_size)]
    bwlimit: Option<u64>,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The journal of the run (read only).
    #[arg(long, required_unless_present = "control")]
    journal: Option<PathBuf>,
    #[command(flatten)]
    control: ControlArgs,
    /// The status as one JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct RollbackArgs {
    /// The unit id.
    unit: String,
    /// The journal of the run.
    #[arg(long, required_unless_present = "control")]
    journal: Option<PathBuf>,
    /// The run in etcd instead: rolled back under its lease (refused, exit
    /// 3, while another runner holds it).
    #[command(flatten)]
    control: ControlArgs,
    /// One JSON event per line on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn orch_failure(e: OrchError) -> Failure {
    if let OrchError::LostLease { holder, .. } = &e {
        tracing::error!(holder, "lost the lease to {holder}; stopping");
        return Failure {
            code: 4,
            error: e.into(),
        };
    }
    if e.is_usage() {
        Failure::usage(e)
    } else if e.is_refusal() {
        Failure::refused(e)
    } else {
        Failure::from(e)
    }
}

pub async fn run(args: Args) -> Result<(), Failure> {
    match args.command {
        Cmd::Run(a) if a.dry_run => {
            check(CheckArgs {
                inputs: a.inputs,
                journal: a.journal,
                json: a.json,
                timeout: std::time::Duration::from_secs(10),
                measure_link: a.measure_link,
                resume: false,
            })
            .await
        }
        Cmd::Check(a) => check(a).await,
        Cmd::Run(a) => {
            let inputs = a.inputs.load().map_err(orch_failure)?;
            let listen = a
                .listen
                .clone()
                .or_else(|| inputs.cfg.tracking.map(|s| s.to_string()));
            let out = Output::new(a.json);
            let opts = Options {
                parallel: a.parallel.map(|p| p as usize),
                bwlimit: a.bwlimit,
                ..options(a.now, &out)?
            };
            let at = run_journal(&inputs, &a.journal)?;
            let o = Orchestrator::start(inputs, at, opts).map_err(orch_failure)?;
            drive(&o, &out, listen, |o| Box::pin(o.run())).await
        }
        Cmd::Resume(a) => {
            let out = Output::new(a.json);
            let opts = Options {
                parallel: a.parallel.map(|p| p as usize),
                bwlimit: a.bwlimit,
                ..options(a.now, &out)?
            };
            let at = journal_at(a.journal.as_ref(), &a.control, true)?;
            let o = Orchestrator::resume(at, opts).map_err(orch_failure)?;
            let listen = a
                .listen
                .clone()
                .or_else(|| o.config().tracking.map(|s| s.to_string()));
            drive(&o, &out, listen, |o| Box::pin(o.run())).await
        }
        Cmd::Rollback(a) => {
            let out = Output::new(a.json);
            let opts = options(true, &out)?;
            let at = journal_at(a.journal.as_ref(), &a.control, true)?;
            let o = Orchestrator::resume(at, opts).map_err(orch_failure)?;
            let unit = a.unit.clone();
            let state = o.rollback(&unit).await.map_err(orch_failure)?;
            out.finish();
            if !a.json {
                println!("{unit}: {}", state_name(state));
            }
            if state == UnitState::RolledBack {
                Ok(())
            } else {
                Err(Failure::from(anyhow!(
                    "unit {unit} was not rolled back: {}",
                    state_name(state)
                )))
            }
        }
        Cmd::Status(a) => {
            let at = journal_at(a.journal.as_ref(), &a.control, false)?;
            let j = Journal::open_read_only(at).map_err(orch_failure)?;
            let Some(st) = j.status().map_err(orch_failure)? else {
                return Err(Failure::refused(anyhow!(
                    "{}: holds no run yet",
                    j.path().display()
                )));
            };
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string(&st).map_err(anyhow::Error::from)?
                );
            } else {
                print_status(&st);
            }
            Ok(())
        }
    }
}

/// `ferry migrate check`: one line per check, exit 1 if any failed.
async fn check(a: CheckArgs) -> Result<(), Failure> {
    let inputs = a.inputs.load().map_err(Failure::usage)?;
    let opts = ferry_orch::CheckOptions {
        journal: a.journal,
        timeout: a.timeout,
        measure_link: a.measure_link,
        resume: a.resume,
    };
    let report = ferry_orch::check::check(&inputs, &opts).await;
    let mut o = std::io::stdout().lock();
    for l in &report.lines {
        let line = if a.json {
            serde_json::to_string(l).map_err(anyhow::Error::from)?
        } else {
            l.to_string()
        };
        let _ = writeln!(o, "{line}");
    }
    let _ = o.flush();
    let failed = report.failed().count();
    if failed == 0 {
        if !a.json {
            println!("the night could run: {} checks passed", report.lines.len());
        }
        Ok(())
    } else {
        Err(Failure::from(anyhow!(
            "{failed} of {} checks failed: the night could not run",
            report.lines.len()
        )))
    }
}

fn options(now: bool, out: &Output) -> Result<Options, Failure> {
    let failpoints = Failpoints::from_env().map_err(|e| Failure::usage(anyhow!(e)))?;
    let faults = Faults::from_env().map_err(|e| Failure::usage(anyhow!(e)))?;
    let o = out.clone();
    Ok(Options {
        now,
        failpoints: Arc::new(failpoints),
        faults,
        observer: Some(Arc::new(move |e: &EventRecord| o.event(e))),
        ..Options::default()
    })
}

type RunFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = ferry_orch::Result<RunSummary>> + 'a>>;

/// Runs `what` with the tracking server (when asked) beside it.
async fn drive(
    o: &Orchestrator,
    out: &Output,
    listen: Option<String>,
    what: impl for<'a> FnOnce(&'a Orchestrator) -> RunFuture<'a>,
) -> Result<(), Failure> {
    out.units(o.selected(), |id| o.lane_of(id));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = match listen {
        None => None,
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|e| Failure::usage(anyhow!("--listen {addr}: {e}")))?;
            tracing::info!(addr = %l.local_addr().map_or(addr.clone(), |a| a.to_string()), "tracking page");
            let j = o.journal();
            // The plan's lanes and predicted freezes, beside what happens
            // (none when the plan cannot be read again: the page still works).
            let mut expected = j
                .meta()
                .ok()
                .flatten()
                .and_then(|m| ferry_orch::Plan::load(&m.plan_path).ok())
                .map(|p| ferry_orch::report::Expected::from_plan(&p))
                .unwrap_or_default();
            // The lanes the run uses (--parallel may fold the plan's).
            for id in o.selected() {
                if let Some(l) = o.lane_of(id) {
                    let mut e = expected.unit(id);
                    e.lane = Some(l);
                    expected.set(id, e);
                }
            }
            let status: ferry_orch::track::StatusSource =
                Arc::new(move || j.status().ok().flatten());
            let tracker = ferry_orch::track::Tracker::new().expected(expected);
            Some(tokio::spawn(async move {
                tracker.serve(l, status, stop_rx).await
            }))
        }
    };
    let result = what(o).await;
    let _ = stop_tx.send(true);
    if let Some(s) = server {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s).await;
    }
    out.finish();
    let summary = result.map_err(orch_failure)?;
    if !out.json {
        for (id, s) in &summary.units {
            println!("{id}: {}", state_name(*s));
        }
    }
    if summary.ok() {
        Ok(())
    } else {
        let bad: Vec<String> = summary
            .units
            .iter()
            .filter(|(_, s)| !matches!(s, UnitState::Done | UnitState::RolledBack))
            .map(|(id, s)| format!("{id} {}", state_name(*s)))
            .collect();
        Err(Failure::from(anyhow!(
            "not every unit moved: {}",
            bad.join(", ")
        )))
    }
}

/// A unit's state in words (the JSON's name, but "rolled back").
fn state_name(s: UnitState) -> &'static str {
    match s {
        UnitState::RolledBack => "rolled back",
        s => s.as_str(),
    }
}

/// The progress bars of a terminal: one per unit, by unit id.
struct Bars {
    multi: indicatif::MultiProgress,
    units: parking_lot::Mutex<BTreeMap<String, indicatif::ProgressBar>>,
}

/// Where progress goes: JSON lines, one bar per unit on a terminal, or plain lines.
#[derive(Clone)]
struct Output {
    json: bool,
    bars: Option<Arc<Bars>>,
    /// Each unit's lane, when the run has several.
    lanes: Arc<parking_lot::Mutex<BTreeMap<String, u32>>>,
}

impl Output {
    fn new(json: bool) -> Output {
        let bars = (!json && std::io::stderr().is_terminal()).then(|| {
            Arc::new(Bars {
                multi: indicatif::MultiProgress::new(),
                units: parking_lot::Mutex::new(BTreeMap::new()),
            })
        });
        Output {
            json,
            bars,
            lanes: Arc::default(),
        }
    }

    fn units(&self, ids: &[String], lane_of: impl Fn(&str) -> Option<u32>) {
        {
            let mut lanes = self.lanes.lock();
            for id in ids {
                if let Some(l) = lane_of(id) {
                    lanes.insert(id.clone(), l);
                }
            }
        }
        let Some(b) = &self.bars else { return };
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} {prefix:>8} {elapsed:>5} {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        let mut map = b.units.lock();
        for id in ids {
            let bar = b.multi.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(self.name(id));
            bar.set_message("pending");
            map.insert(id.clone(), bar);
        }
    }

    /// The unit as lines name it: `U3`, or with lanes `U3 [lane 1]`.
    fn name(&self, id: &str) -> String {
        match self.lanes.lock().get(id) {
            Some(l) => format!("{id} [lane {l}]"),
            None => id.to_string(),
        }
    }

    fn event(&self, e: &EventRecord) {
        let ev = &e.event;
        let summary = detail_line(&ev.detail);
        if self.json {
            let mut line = serde_json::json!({
                "seq": e.seq,
                "at_ms": e.at_ms,
                "unit": ev.unit,
                "step": ev.step.map(|s| s.as_str()),
                "phase": ev.phase.as_str(),
                "attempt": ev.attempt,
                "direction": ev.direction,
                "epoch": ev.epoch,
                "outcome": ev.outcome,
                "kind": ev.detail.kind(),
                "state": ev.detail.unit_state(),
                "freeze_ms": ev.detail.freeze_ms(),
                "detail": summary,
            });
            // With lanes, each line names its unit's lane.
            if let (Some(l), Some(m)) = (self.lanes.lock().get(&ev.unit), line.as_object_mut()) {
                m.insert("lane".into(), (*l).into());
            }
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
            return;
        }
        if ev.unit.is_empty() {
            return;
        }
        let step = ev.step.map_or("", |s| s.as_str());
        let text = match ev.phase {
            Phase::Begin => format!("{step} (attempt {})...", ev.attempt),
            Phase::End => format!(
                "{step} {}{}",
                ev.outcome
                    .map_or("?".to_string(), |o| format!("{o:?}").to_lowercase()),
                summary
                    .as_deref()
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default()
            ),
            Phase::Note => format!(
                "{}{}",
                ev.detail.kind().unwrap_or("note"),
                ev.detail
                    .reason()
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default()
            ),
        };
        match &self.bars {
            Some(b) => {
                if let Some(bar) = b.units.lock().get(&ev.unit) {
                    bar.set_message(text.clone());
                    bar.tick();
                    if ev.phase == Phase::End {
                        let _ = b.multi.println(format!("{} {text}", self.name(&ev.unit)));
                    }
                }
            }
            None => {
                if ev.phase != Phase::Begin {
                    println!("{} {text}", self.name(&ev.unit));
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bars {
            for bar in b.units.lock().values() {
                bar.finish();
            }
        }
    }
}

fn print_status(st: &MigrationStatus) {
    println!(
        "{} -> {}: {:?}, started {} ms, updated {} ms (since the epoch)",
        st.source, st.destination, st.state, st.started_at_ms, st.updated_at_ms
    );
    for w in &st.waves {
        println!("night {}: {}/{} units done", w.night, w.done, w.units.len());
    }
    println!(
        "{:<10} {:>5} {:>6} {:<11} {:<12} {:>7} {:>6} {:>10}  message",
        "unit", "night", "sites", "state", "step", "attempt", "epoch", "freeze_ms"
    );
    for u in &st.units {
        println!(
            "{:<10} {:>5} {:>6} {:<11} {:<12} {:>7} {:>6} {:>10}  {}",
            u.id,
            u.wave.map_or("-".to_string(), |w| w.to_string()),
            u.sites,
            state_name(u.state),
            u.step.map_or("-", |s| s.as_str()),
            u.attempt,
            u.epoch.map_or("-".to_string(), |e| e.to_string()),
            u.freeze_ms.map_or("-".to_string(), |f| f.to_string()),
            u.message.as_deref().unwrap_or("")
        );
    }
}
