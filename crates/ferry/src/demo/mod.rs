//! `ferry demo`: the product's main job on loopback, nothing to install.
//! N sites on F filers in datacenter `par` move to `gra` under live read and
//! write traffic; then the demo proves, from the data itself, that no
//! acknowledged write was lost or doubled and that no site was written in
//! two places (no split brain). Exit 1 if any check fails.
//!
//! Pieces: `topology` (files, inventory, plan, the two `ferry proxy`
//! children, migrate.toml), `app` (the shop stand-in, in process), `load`
//! (the clients), `orch` (the `ferry migrate` children), `check` (the proof).

mod app;
mod check;
mod load;
mod orch;
mod topology;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use ferry_orch::{Direction, MigrationStatus, Outcome, Step};
use rustix::process::Signal;
use serde_json::json;

use crate::Failure;
use app::{AppConfig, AppServer};
use check::Check;
use load::{Load, LoadConfig};
use orch::ChildEnv;
use topology::{Router, DESTINATION, GRA_ROUTER, PAR_ROUTER, SOURCE};

#[derive(clap::Args)]
pub struct Args {
    /// Sites to migrate (one directory each, on the filers).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    sites: u32,
    /// Filers the sites are spread over; each filer is one migration unit.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    filers: u32,
    /// How long the load runs at least (the migration runs inside it).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    duration: Duration,
    /// Keep the work directory (files, configs, journal, logs) and print its path.
    #[arg(long)]
    keep: bool,
    /// Where to write the HTML report (timeline and checks).
    #[arg(long, default_value = "ferry-demo.html")]
    report: PathBuf,
    /// Print one JSON object with the checks at the end (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Kill -9 the orchestrator at this failpoint, then resume it (crash test).
    #[arg(long, hide = true, value_name = "FAILPOINT")]
    crash_at: Option<String>,
    /// Break something on purpose: stop-router (SIGSTOP the source router
    /// during the freeze) or skip-freeze (the source router is never frozen:
    /// the checks must catch the split brain).
    #[arg(long, hide = true, value_enum)]
    fault: Option<Fault>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Fault {
    SkipFreeze,
    StopRouter,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    ferry_config::parse_duration(s)
}

/// Human output: stdout, or stderr when stdout is reserved for `--json`.
struct Out {
    json: bool,
    t0: Instant,
}

impl Out {
    fn say(&self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// A progress line stamped with the time since the start.
    fn progress(&self, line: &str) {
        let s = self.t0.elapsed().as_secs();
        self.say(&format!("  [{:02}:{:02}] {line}", s / 60, s % 60));
    }
}

struct Summary {
    checks: Vec<Check>,
    sent: u64,
    failed: u64,
    units: Vec<(String, Option<u64>)>,
    report: PathBuf,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    if let Some(name) = &args.crash_at {
        if !ferry_orch::failpoint::names().contains(name) {
            return Err(Failure::usage(anyhow!(
                "--crash-at {name:?}: unknown failpoint (known: {})",
                ferry_orch::failpoint::names().join(", ")
            )));
        }
    }
    if args.crash_at.is_some() && args.fault.is_some() {
        return Err(Failure::usage(anyhow!(
            "--crash-at and --fault do not combine"
        )));
    }
    let out = Out {
        json: args.json,
        t0: Instant::now(),
    };
    let work = tempfile::Builder::new()
        .prefix("ferry-demo-")
        .tempdir()
        .context("creating the demo's work directory")?;
    let result = tokio::select! {
        r = demo(&args, work.path(), &out) => r,
        // Returning drops the demo future: routers, apps and the
        // orchestrator child are killed by their guards.
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let kept = if args.keep {
        let path = work.keep();
        out.say(&format!("Work directory kept: {}", path.display()));
        Some(path)
    } else {
        drop(work);
        None
    };
    let summary = result?;
    let failed: Vec<&str> = summary
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name)
        .collect();
    if args.json {
        let doc = json!({
            "ok": failed.is_empty(),
            "checks": summary.checks.iter().map(|c| json!({
                "name": c.name, "ok": c.ok, "detail": c.detail,
            })).collect::<Vec<_>>(),
            "requests": {"sent": summary.sent, "failed": summary.failed},
            "units": summary.units.iter().map(|(id, ms)| json!({"id": id, "freeze_ms": ms})).collect::<Vec<_>>(),
            "report": summary.report.display().to_string(),
            "work_dir": kept.map(|p| p.display().to_string()),
        });
        println!("{doc}");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{} check(s) failed: {}", failed.len(), failed.join(", ")).into())
    }
}

async fn demo(args: &Args, work: &Path, out: &Out) -> anyhow::Result<Summary> {
    let exe = std::env::current_exe().context("finding the ferry binary")?;
    let (par_root, gra_root) = (work.join(SOURCE), work.join(DESTINATION));
    out.say(&format!(
        "ferry demo: {} sites on {} filer(s) move from {SOURCE} to {DESTINATION} under load, all on loopback",
        args.sites, args.filers
    ));

    // The world before the move: files at the source, the inventory, the plan.
    let sites = {
        let (root, n, f) = (par_root.clone(), args.sites, args.filers);
        tokio::task::spawn_blocking(move || topology::generate_sites(&root, n, f)).await??
    };
    let sites = Arc::new(sites);
    let inventory = work.join("inventory");
    topology::write_inventory(&inventory, &sites, args.filers, &par_root)?;
    let plan = work.join("plan.json");
    topology::run_plan(&exe, &inventory, &plan, &work.join("plan.log"))?;
    out.progress(&format!(
        "{} sites written to {SOURCE}'s filers; ferry plan: one unit per filer",
        sites.len()
    ));

    // Two shop servers per DC, each serving its own DC's copy of the filers.
    let mut apps = Vec::new();
    let mut pools: HashMap<&str, Vec<(String, std::net::SocketAddr)>> = HashMap::new();
    for (dc, root) in [(SOURCE, &par_root), (DESTINATION, &gra_root)] {
        for n in 1..=2 {
            let name = format!("{dc}-web-{n}");
            let config = Arc::new(AppConfig {
                dc: dc.to_string(),
                name: name.clone(),
                sites: sites
                    .iter()
                    .map(|s| (s.host.clone(), s.dir(root)))
                    .collect(),
            });
            let app = AppServer::start(config).await?;
            pools.entry(dc).or_default().push((name, app.addr));
            apps.push(app);
        }
    }

    // The routers: par serves the sites from its pool; gra, where the public
    // IP now points, forwards them to par until the flip.
    let (par_port, gra_port) = (topology::free_port()?, topology::free_port()?);
    let par_conf = topology::router_config(
        PAR_ROUTER,
        par_port,
        "par-web",
        &pools[SOURCE],
        (DESTINATION, gra_port),
        &sites,
        "pool:par-web",
    );
    let gra_conf = topology::router_config(
        GRA_ROUTER,
        gra_port,
        "gra-web",
        &pools[DESTINATION],
        (SOURCE, par_port),
        &sites,
        &format!("remote:{SOURCE}"),
    );
    let (par, gra) = tokio::task::block_in_place(|| -> anyhow::Result<(Router, Router)> {
        let par = Router::start(&exe, &work.join("routers/par"), PAR_ROUTER, &par_conf)?;
        let gra = Router::start(&exe, &work.join("routers/gra"), GRA_ROUTER, &gra_conf)?;
        Ok((par, gra))
    })?;
    out.progress(&format!(
        "routers up: {PAR_ROUTER} on {} (pid {}), {GRA_ROUTER} on {} (pid {}); 2 shop servers per DC",
        par.traffic, par.pid, gra.traffic, gra.pid
    ));
    let migrate_toml = work.join("migrate.toml");
    std::fs::write(
        &migrate_toml,
        topology::migrate_config(work, &par, &gra, args.filers),
    )?;

    // The load: most clients come in through gra (the public IP); two still
    // reach par (a stale DNS answer), which is what makes a router that
    // ignores the freeze able to write at the source.
    let load = Load::start(LoadConfig {
        entry: gra.traffic,
        stale_entry: par.traffic,
        clients: 16,
        stale_clients: 2,
        sites: Arc::clone(&sites),
        max_run: args.duration + Duration::from_secs(600),
    });
    out.progress("load started: 16 clients (2 via the old address), 70% reads, 30% orders");

    // A warm-up first, so the source takes writes the move must carry over.
    let warm_up = (args.duration / 4).min(Duration::from_secs(10));
    tokio::time::sleep(warm_up).await;

    let journal = work.join("journal.db");
    let run_args: Vec<String> = vec![
        "run".into(),
        "--config".into(),
        migrate_toml.display().to_string(),
        "--plan".into(),
        plan.display().to_string(),
        "--journal".into(),
        journal.display().to_string(),
        "--now".into(),
    ];
    let resume_args: Vec<String> = vec![
        "resume".into(),
        "--journal".into(),
        journal.display().to_string(),
        "--now".into(),
    ];
    let show = |l: &str| out.progress(&format!("migrate: {l}"));
    let mut checks = Vec::new();
    let final_run = match (&args.crash_at, args.fault) {
        (Some(point), _) => {
            let env = ChildEnv {
                failpoints: Some(format!("{point}=kill")),
                ..ChildEnv::default()
            };
            out.progress(&format!("orchestrator armed to die (SIGKILL) at {point}"));
            let first = orch::run(&exe, &run_args, &env, &work.join("migrate-1.log"), show).await?;
            let killed = first.killed_by_sigkill();
            checks.push(Check::new(
                check::FAILPOINT,
                killed,
                if killed {
                    format!("killed by SIGKILL at {point}, then resumed")
                } else {
                    format!(
                        "failpoint never reached: the orchestrator ended with {}",
                        first.describe()
                    )
                },
            ));
            out.progress(&format!(
                "orchestrator ended: {}; resuming from the journal",
                first.describe()
            ));
            orch::run(
                &exe,
                &resume_args,
                &ChildEnv::default(),
                &work.join("migrate-2.log"),
                show,
            )
            .await?
        }
        (None, Some(Fault::SkipFreeze)) => {
            // The freeze of a small unit lasts a few milliseconds: held open
            // (paused before the final copy) until the load has done some
            // requests, so the broken fence lets writes through every time.
            let fp = work.join("fp");
            std::fs::create_dir_all(&fp)?;
            let env = ChildEnv {
                faults: Some(format!("skip-freeze:{PAR_ROUTER}")),
                failpoints: Some("final_copy:before=pause".into()),
                failpoint_dir: Some(fp.clone()),
            };
            out.progress(&format!(
                "fault: the orchestrator never freezes {PAR_ROUTER} (a broken fence)"
            ));
            let done = AtomicBool::new(false);
            let run = async {
                let r = orch::run(&exe, &run_args, &env, &work.join("migrate-1.log"), show).await;
                done.store(true, Ordering::Relaxed);
                r
            };
            let (r, ()) = tokio::join!(run, hold_freeze_open(&fp, &load.done, &done, out));
            r?
        }
        (None, Some(Fault::StopRouter)) => {
            let fp = work.join("fp");
            std::fs::create_dir_all(&fp)?;
            let env = ChildEnv {
                failpoints: Some("freeze:inside=pause".into()),
                failpoint_dir: Some(fp.clone()),
                ..ChildEnv::default()
            };
            let done = AtomicBool::new(false);
            let run = async {
                let r = orch::run(&exe, &run_args, &env, &work.join("migrate-1.log"), show).await;
                done.store(true, Ordering::Relaxed);
                r
            };
            let (r, stopped) =
                tokio::join!(run, stop_router(&exe, &journal, &fp, &par, &done, out));
            if !stopped {
                checks.push(Check::new(
                    check::ABANDONED,
                    false,
                    "the freeze:inside failpoint never paused: the router was not stopped",
                ));
            }
            r?
        }
        (None, None) => {
            orch::run(
                &exe,
                &run_args,
                &ChildEnv::default(),
                &work.join("migrate-1.log"),
                show,
            )
            .await?
        }
    };
    checks.push(Check::new(
        check::ORCHESTRATOR,
        final_run.status.success(),
        if final_run.status.success() {
            "ferry migrate finished (exit 0)".to_string()
        } else {
            format!(
                "ferry migrate ended with {}: {}",
                final_run.describe(),
                final_run.stderr_tail
            )
        },
    ));

    // The load runs for --duration at least, then drains (held requests finish).
    let mut last = Instant::now();
    while load.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last.elapsed() >= Duration::from_secs(5) {
            last = Instant::now();
            out.progress(&format!(
                "load: {} requests so far",
                load.done.load(Ordering::Relaxed)
            ));
        }
    }
    out.progress("stopping the load");
    let mut load = load.finish().await;
    drop((par, gra));
    drop(apps);

    let status = orch::status(&exe, &journal).await;
    checks.push(check::check_requests(&load));
    match &status {
        Ok(s) => checks.push(check::check_units(s)),
        Err(e) => checks.push(Check::new(
            check::UNITS_DONE,
            false,
            format!("no status: {e:#}").replace('\n', " "),
        )),
    }
    {
        let (sites, work, st) = (
            Arc::clone(&sites),
            work.to_path_buf(),
            status.as_ref().ok().cloned(),
        );
        let acked = std::mem::take(&mut load.acked);
        let data = tokio::task::spawn_blocking(move || {
            check::check_data(&sites, &work, &acked, st.as_ref())
        })
        .await?;
        checks.extend(data);
    }
    if status.is_err() {
        checks.push(Check::new(check::VERIFIED, false, "no migration status"));
    }
    if let Ok(s) = &status {
        checks.push(check::check_verified(s));
        if args.fault == Some(Fault::StopRouter)
            && !checks.iter().any(|c| c.name == check::ABANDONED)
        {
            checks.push(check::check_abandoned(s));
        }
    }
    // Order the table as the story goes: the fault/crash lines last.
    let order = [
        check::REQUESTS,
        check::UNITS_DONE,
        check::NOTHING_LOST,
        check::NO_SPLIT_BRAIN,
        check::NO_EARLY_WRITES,
        check::VERIFIED,
        check::ORCHESTRATOR,
        check::FAILPOINT,
        check::ABANDONED,
    ];
    checks.sort_by_key(|c| order.iter().position(|n| *n == c.name));

    let report = std::path::absolute(&args.report).unwrap_or_else(|_| args.report.clone());
    let written = write_report(&report, status.as_ref().ok(), &checks, args);
    checks.push(match written {
        Ok(bytes) => Check::new(
            check::REPORT,
            true,
            format!("{} ({bytes} bytes)", report.display()),
        ),
        Err(e) => Check::new(check::REPORT, false, format!("{}: {e:#}", report.display())),
    });

    let units: Vec<(String, Option<u64>)> = status
        .as_ref()
        .map(|s| {
            s.units
                .iter()
                .map(|u| (u.id.clone(), u.freeze_ms))
                .collect()
        })
        .unwrap_or_default();
    out.say("");
    out.say("Checks");
    for c in &checks {
        out.say(&format!(
            "  {}  {:<28} {}",
            if c.ok { "pass" } else { "FAIL" },
            c.name,
            c.detail
        ));
    }
    out.say(&format!("Report: {}", report.display()));
    Ok(Summary {
        checks,
        sent: load.sent,
        failed: load.failed,
        units,
        report,
    })
}

/// The skip-freeze fault: each time the orchestrator pauses before a final
/// copy (the unit is frozen, or should be), lets the load complete 50 more
/// requests (bounded by 10 s: with every router frozen none would) and lets
/// the orchestrator go on.
async fn hold_freeze_open(fp: &Path, requests: &AtomicU64, done: &AtomicBool, out: &Out) {
    let pause = fp.join("final_copy_before.paused");
    while !done.load(Ordering::Relaxed) {
        if pause.exists() {
            let start = requests.load(Ordering::Relaxed);
            let end = Instant::now() + Duration::from_secs(10);
            while requests.load(Ordering::Relaxed) < start + 50 && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            out.progress(&format!(
                "fault: {} requests answered while the unit was frozen",
                requests.load(Ordering::Relaxed) - start
            ));
            let _ = std::fs::remove_file(&pause);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The stop-router fault: when the orchestrator pauses inside the freeze
/// (destination acknowledged, source not yet asked), SIGSTOP the source router,
/// let the orchestrator go on, and SIGCONT the router once the journal shows
/// the freeze abandoned (bounded). Returns whether the router was stopped.
async fn stop_router(
    exe: &Path,
    journal: &Path,
    fp: &Path,
    par: &Router,
    done: &AtomicBool,
    out: &Out,
) -> bool {
    let pause = fp.join("freeze_inside.paused");
    let mut stopped = false;
    while !done.load(Ordering::Relaxed) {
        if pause.exists() && !stopped {
            stopped = true;
            if let Err(e) = par.signal(Signal::STOP) {
                out.progress(&format!("fault: cannot stop {PAR_ROUTER}: {e:#}"));
                let _ = std::fs::remove_file(&pause);
                continue;
            }
            // From here on the router gets SIGCONT on every path.
            let _cont = Cont(par);
            out.progress(&format!(
                "fault: {PAR_ROUTER} stopped (SIGSTOP) before it got the freeze"
            ));
            let _ = std::fs::remove_file(&pause);
            let end = Instant::now() + Duration::from_secs(60);
            let mut seen = false;
            while Instant::now() < end && !done.load(Ordering::Relaxed) {
                if let Ok(s) = orch::status(exe, journal).await {
                    if has_abandoned(&s) {
                        seen = true;
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            out.progress(&if seen {
                format!("fault: the freeze was abandoned; {PAR_ROUTER} continued (SIGCONT)")
            } else {
                format!("fault: no abandoned freeze in the journal after 60s; {PAR_ROUTER} continued (SIGCONT)")
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stopped
}

/// Sends SIGCONT when dropped.
struct Cont<'a>(&'a Router);

impl Drop for Cont<'_> {
    fn drop(&mut self) {
        let _ = self.0.signal(Signal::CONT);
    }
}

fn has_abandoned(s: &MigrationStatus) -> bool {
    s.units.iter().any(|u| {
        u.steps.iter().any(|r| {
            r.step == Step::Freeze
                && r.direction == Direction::Forward
                && r.outcome == Some(Outcome::Abandoned)
        })
    })
}

/// The report: the orchestrator's timeline page with the checks appended.
fn write_report(
    path: &Path,
    status: Option<&MigrationStatus>,
    checks: &[Check],
    args: &Args,
) -> anyhow::Result<usize> {
    let title = format!(
        "ferry demo: {} sites, {SOURCE} to {DESTINATION}",
        args.sites
    );
    let checks_html = check::checks_html(checks);
    let page = match status {
        Some(s) => {
            let page = ferry_orch::report::render_html(s, &title, false);
            // Inside <main>, so the checks share the page's layout.
            match page.rfind("</main>") {
                Some(i) => format!("{}{checks_html}{}", &page[..i], &page[i..]),
                None => page + &checks_html,
            }
        }
        None => format!(
            "<!doctype html><meta charset=\"utf-8\"><title>{t}</title><h1>{t}</h1><p>No migration status was available.</p>{checks_html}",
            t = ferry_orch::report::escape(&title)
        ),
    };
    std::fs::write(path, &page).with_context(|| format!("writing {}", path.display()))?;
    Ok(page.len())
}
