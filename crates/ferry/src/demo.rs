//! `ferry demo`: flags and printing; the demo itself is ferry-demo.
//! Exit 1 if any check fails.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use ferry_demo::{Options, Out};
use serde_json::json;

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Sites to migrate (one directory each, on the filers).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    sites: u32,
    /// Filers the sites are spread over; each filer is one migration unit.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    filers: u32,
    /// How long the load runs at least (the migration runs inside it).
    #[arg(long, default_value = "40s", value_parser = ferry_conf::parse_duration)]
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
    /// Where the control state lives: sqlite (each router's own file, the
    /// default) or etcd (a 3-member etcd cluster started for the demo, two
    /// routers per datacenter watching it; needs the etcd server installed
    /// and a ferry built with the `etcd` feature).
    #[arg(long, value_enum, default_value = "sqlite")]
    control: Control,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Control {
    Sqlite,
    Etcd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Fault {
    SkipFreeze,
    StopRouter,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let opts = Options {
        sites: args.sites,
        filers: args.filers,
        duration: args.duration,
        report: args.report.clone(),
        crash_at: args.crash_at.clone(),
        fault: args.fault.map(|f| match f {
            Fault::SkipFreeze => ferry_demo::Fault::SkipFreeze,
            Fault::StopRouter => ferry_demo::Fault::StopRouter,
        }),
        control_etcd: args.control == Control::Etcd,
    };
    if opts.control_etcd && !cfg!(feature = "etcd") {
        return Err(Failure::usage(anyhow!(
            "--control etcd: this ferry was built without etcd support (cargo feature `etcd`: \
             cargo build --release -p ferry --features etcd)"
        )));
    }
    opts.check().map_err(|e| Failure::usage(anyhow!(e)))?;
    let out = Out::new(args.json);
    let work = tempfile::Builder::new()
        .prefix("ferry-demo-")
        .tempdir()
        .context("creating the demo's work directory")?;
    let result = tokio::select! {
        r = ferry_demo::run(&opts, work.path(), &out) => r,
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
