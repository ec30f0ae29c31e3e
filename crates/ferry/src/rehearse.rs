//! `ferry rehearse`: flags and printing; the rehearsal itself is
//! ferry-rehearse. Exit 0 when every check passes, 1 when one fails (or the
//! rehearsal broke), 2 for bad flags or an environment that cannot run it
//! (not root, no `ip`/`tc`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use ferry_demo::Out;
use ferry_rehearse::Options;
use serde_json::json;

use crate::Failure;

#[derive(clap::Args)]
#[command(after_help = "Needs root: the datacenters are network namespaces \
(ferry-<pid>-par, -gra, -inet), deleted at the end, on error and on Ctrl-C; \
those of a run that died are deleted by the next one.\n\
Exit codes: 0 every check passed, 1 a check failed, 2 usage or environment.")]
pub struct Args {
    /// Sites to migrate (one directory each, on the filers).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    sites: u32,
    /// Filers the sites are spread over (one agent each per DC; one unit each).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    filers: u32,
    /// Freezes at once: the plan's lanes (`ferry plan --parallel`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    lanes: u32,
    /// Latency added each way on the link between the datacenters.
    #[arg(long, default_value = "5ms", value_parser = ferry_conf::parse_duration)]
    latency: Duration,
    /// The link's rate each way (e.g. 1Gbit/s, 100MB/s); the plan's bandwidth.
    #[arg(long, default_value = "1Gbit/s", value_parser = ferry_plan::parse_byte_rate)]
    rate: f64,
    /// How long the traffic runs at least (the night runs inside it).
    #[arg(long, default_value = "60s", value_parser = ferry_conf::parse_duration)]
    duration: Duration,
    /// Size of the largest media files (two per filer): large downloads.
    #[arg(long, default_value = "4M", value_parser = crate::parse_size)]
    large_file: u64,
    /// Where to write the HTML report.
    #[arg(long, default_value = "ferry-rehearse.html")]
    report: PathBuf,
    /// Keep the work directory (files, configs, journal, logs) and print its path.
    #[arg(long)]
    keep: bool,
    /// Print one JSON object with the checks and units at the end (progress
    /// goes to stderr).
    #[arg(long)]
    json: bool,
    /// Where the routers' sites and the orchestrator's journal live: each
    /// router's own store (the default), or 3 etcd members split 2+1
    /// across the datacenters (needs the etcd server and a ferry built
    /// with the `etcd` feature).
    #[arg(long, value_enum, default_value = "sqlite")]
    control: crate::demo::Control,
    /// Break something mid-night (needs --control etcd): etcd-member,
    /// etcd-quorum, orchestrator-killed, orchestrator-paused, wan-cut,
    /// wan-cut-before-freeze, wan-cut-after-flip,
    /// router-joins, router-restart
    /// (docs/control-plane.md, "Partitions rehearsed").
    #[arg(long, value_parser = |s: &str| s.parse::<ferry_rehearse::Partition>())]
    partition: Option<ferry_rehearse::Partition>,
    /// Sites with a database on each filer: a MariaDB server per datacenter
    /// (Debian's mariadb-server), the databases moved with their units' files
    /// in the same freeze. 0: no database servers. Not used with --partition.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=1000))]
    databases: u32,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let opts = Options {
        sites: args.sites,
        filers: args.filers,
        lanes: args.lanes,
        latency: args.latency,
        rate_bytes: args.rate as u64,
        duration: args.duration,
        large_bytes: args.large_file,
        report: args.report.clone(),
        control_etcd: args.control == crate::demo::Control::Etcd,
        partition: args.partition,
        databases: args.databases,
    };
    opts.check().map_err(|e| Failure::usage(anyhow!(e)))?;
    if opts.control_etcd && !cfg!(feature = "etcd") {
        return Err(Failure::usage(anyhow!(
            "--control etcd: this ferry was built without etcd support (cargo feature `etcd`: \
             cargo build --release -p ferry --features etcd)"
        )));
    }
    if !ferry_rehearse::netns::is_root() {
        return Err(Failure::usage(anyhow!(
            "ferry rehearse needs root to create network namespaces"
        )));
    }
    for tool in ["ip", "tc"] {
        let found = std::process::Command::new(tool)
            .arg("-V")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(Failure::usage(anyhow!(
                "ferry rehearse needs `{tool}` (iproute2) on the PATH"
            )));
        }
    }
    let out = Out::new(args.json);
    let work = tempfile::Builder::new()
        .prefix("ferry-rehearse-")
        .tempdir()
        .context("creating the rehearsal's work directory")?;
    let result = tokio::select! {
        r = ferry_rehearse::run(&opts, work.path(), &out) => r,
        // Returning drops the rehearsal: its guards stop every process and
        // delete the namespaces.
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
    print_units(&out, &summary);
    out.say("");
    out.say("Checks");
    for c in &summary.checks {
        out.say(&format!(
            "  {}  {:<28} {}",
            if c.ok { "pass" } else { "FAIL" },
            c.name,
            c.detail
        ));
    }
    out.say(&format!("Report: {}", summary.report.display()));
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
            "units": summary.units,
            "parallel": summary.parallel,
            "max_overlap": summary.max_overlap,
            "requests": summary.requests.iter().map(|(k, (sent, failed))| {
                (k.to_string(), json!({"sent": sent, "failed": failed}))
            }).collect::<serde_json::Map<_, _>>(),
            "namespaces": summary.namespaces,
            "link": summary.link,
            "setup_s": summary.setup_s,
            "night_s": summary.night_s,
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

/// The per-unit table: predicted against actual, and the requests.
fn print_units(out: &Out, s: &ferry_rehearse::Summary) {
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v}"));
    out.say("");
    out.say(&format!(
        "Units ({} lane(s) planned, at most {} freeze(s) at once; night {:.1} s)",
        s.parallel, s.max_overlap, s.night_s
    ));
    out.say(&format!(
        "  {:<6} {:>4} {:>6} {:>8} {:>13} {:>13} {:>15} {:>15} {:>6}  cut / failed",
        "unit",
        "lane",
        "sites",
        "attempts",
        "freeze pred",
        "freeze ms",
        "pre-copy pred",
        "pre-copy ms",
        "held"
    ));
    for u in &s.units {
        let reasons = |m: &std::collections::BTreeMap<String, u64>| {
            if m.is_empty() {
                "0".to_string()
            } else {
                m.iter()
                    .map(|(k, n)| format!("{n} x {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        out.say(&format!(
            "  {:<6} {:>4} {:>6} {:>8} {:>13} {:>13} {:>15} {:>15} {:>6}  {} / {}",
            u.id,
            u.lane.map_or("-".into(), |l| l.to_string()),
            u.sites,
            u.attempts,
            ms(u.predicted_freeze_ms),
            ms(u.freeze_ms),
            ms(u.predicted_precopy_ms),
            ms(u.precopy_ms),
            u.held,
            reasons(&u.cut),
            reasons(&u.failed)
        ));
    }
    let kinds: Vec<String> = s
        .requests
        .iter()
        .map(|(k, (sent, failed))| format!("{k} {sent} sent, {failed} failed"))
        .collect();
    out.say(&format!("Requests: {}", kinds.join("; ")));
}
