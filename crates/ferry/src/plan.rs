//! `ferry plan --inventory DIR`: units, their explanation, nights, plan.json,
//! and Graphviz drawings of units.
//!
//! Exit codes: 0 every unit is scheduled; 1 the plan is incomplete (a unit is
//! impossible or does not fit in `--nights`; plan.json is still written) or an
//! I/O failure; 2 bad inventory or flags.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, Context};
use ferry_plan::{Constraints, Params, Plan, Window};

use crate::inventory::{emit, load, Bars};
use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Inventory directory (see README "Inventory and plan").
    #[arg(long)]
    inventory: PathBuf,
    /// What must move together: any of ip, filer, declared-db, observed-db
    /// (comma-separated), or none.
    #[arg(long, default_value = "filer,declared-db,observed-db", value_parser = Constraints::parse)]
    constraints: Constraints,
    /// Nightly window in which freezes happen (may wrap midnight).
    #[arg(long, default_value = "01:00-05:00", value_parser = Window::parse)]
    window: Window,
    /// Link between the datacenters (e.g. 10Gbit/s, 1GB/s).
    #[arg(long, default_value = "10Gbit/s", value_parser = ferry_plan::parse_byte_rate)]
    bandwidth: f64,
    /// Longest acceptable freeze of one unit.
    #[arg(long, default_value = "15m", value_parser = ferry_plan::parse_duration)]
    max_freeze: f64,
    /// Use at most this many nights (default: as many as needed).
    #[arg(long)]
    nights: Option<u32>,
    /// Freezes that may run at the same time in a night.
    #[arg(long, default_value_t = 4)]
    parallel: u32,
    /// Share of a unit's file data written per day or hour (2%/d, 0.1%/h).
    #[arg(long, default_value = "2%/d", value_parser = ferry_plan::parse_change_rate)]
    change_rate: f64,
    /// Read rate of one filer during a block-mode pre-copy pass.
    #[arg(long, default_value = "1GB/s", value_parser = ferry_plan::parse_byte_rate)]
    scan_rate: f64,
    /// Files per second a file-mode walk stats (the last pre-copy pass).
    #[arg(long, default_value = "5000/s", value_parser = ferry_plan::parse_count_rate)]
    walk_rate: f64,
    /// How units are copied: files (a tree walk) or blocks (whole filers'
    /// volumes; needs the filer constraint). Default: blocks under the
    /// filer constraint, files otherwise.
    #[arg(long, value_parser = ferry_plan::CopyMode::parse)]
    copy_mode: Option<ferry_plan::CopyMode>,
    /// What a file-mode freeze spends per file of the unit (final pass and
    /// proof), e.g. "60us"; `ferry migrate check` measures it. Default: a
    /// walk at --walk-rate.
    #[arg(long, value_parser = ferry_plan::parse_short_duration)]
    freeze_per_file: Option<f64>,
    /// Checksum rate of one database server during the freeze.
    #[arg(long, default_value = "500MB/s", value_parser = ferry_plan::parse_byte_rate)]
    db_check_rate: f64,
    /// Fixed cost of every freeze: router acknowledgements, binlog catch-up,
    /// verification, flip.
    #[arg(long, default_value = "60s", value_parser = ferry_plan::parse_duration)]
    freeze_overhead: f64,
    /// Fixed cost of every unit's pre-copy, besides its bytes: the copy
    /// sessions, handshakes and round trips of its passes (e.g. "1s").
    #[arg(long, default_value = "0s", value_parser = ferry_plan::parse_duration)]
    precopy_overhead: f64,
    /// What a file-mode pre-copy spends per file of the unit besides its
    /// bytes (the first pass walks and hashes it at both agents, the
    /// converging passes walk it again), e.g. "500us". Default: 0 (bytes
    /// over the link only).
    #[arg(long, default_value = "0us", value_parser = ferry_plan::parse_short_duration)]
    precopy_per_file: f64,
    /// Time from the start of pre-copy to the opening of night 1.
    #[arg(long, default_value = "24h", value_parser = ferry_plan::parse_duration)]
    lead: f64,
    /// Where to write the plan ("-" for stdout).
    #[arg(long, default_value = "plan.json")]
    out: PathBuf,
    /// Draw one unit (U<n>, or a filer, hosting, database or site in it) as
    /// Graphviz DOT.
    #[arg(long, value_name = "UNIT", conflicts_with = "largest")]
    dot: Option<String>,
    /// Draw the K largest units as Graphviz DOT.
    #[arg(long, value_name = "K")]
    largest: Option<usize>,
    /// Where the drawing goes: a .dot file, or a .svg file rendered with
    /// Graphviz `dot` if installed. Default: stdout (the summary then goes to stderr).
    #[arg(long, value_name = "FILE")]
    graph_out: Option<PathBuf>,
    /// How many of the largest units the summary details.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Print the summary as JSON on stdout instead of tables.
    #[arg(long)]
    json: bool,
}

/// Flags (already parsed by clap) checked together into planner parameters.
fn settings(a: &Args) -> Result<Params, ferry_plan::ParamError> {
    let p = Params {
        constraints: a.constraints,
        window: a.window,
        bandwidth: a.bandwidth,
        max_freeze: a.max_freeze,
        nights: a.nights,
        parallel: a.parallel,
        change_rate: a.change_rate,
        scan_rate: a.scan_rate,
        walk_rate: a.walk_rate,
        copy_mode: a.copy_mode,
        freeze_per_file: a.freeze_per_file,
        db_check_rate: a.db_check_rate,
        freeze_overhead: a.freeze_overhead,
        precopy_overhead: a.precopy_overhead,
        precopy_per_file: a.precopy_per_file,
        lead: a.lead,
    };
    p.validate()?;
    Ok(p)
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let params = settings(&args).map_err(Failure::usage)?;
    if args.largest == Some(0) {
        return Err(Failure::usage(anyhow!("--largest must be at least 1")));
    }
    let bars = Bars::new();
    let t0 = Instant::now();
    let inv = load(&args.inventory, &bars)?;
    let t_load = t0.elapsed();
    let t1 = Instant::now();
    let plan = Plan::build(&inv, &params, &bars).map_err(Failure::usage)?;
    let t_plan = t1.elapsed();

    let graph_units: Option<Vec<u32>> = match (&args.dot, args.largest) {
        (Some(q), _) => Some(vec![plan.find_unit(q).map_err(Failure::usage)?]),
        (None, Some(k)) => Some((0..k.min(plan.partition.len()) as u32).collect()),
        (None, None) => None,
    };
    // Graph on stdout moves the human summary to stderr.
    let graph_on_stdout = graph_units.is_some() && args.graph_out.is_none();
    let plan_on_stdout = args.out.as_os_str() == "-";

    let t2 = Instant::now();
    let written = write_plan(&plan, &args.out)?;
    let t_write = t2.elapsed();

    if let Some(units) = &graph_units {
        let dot = plan.dot(units);
        match &args.graph_out {
            None => emit(&dot)?,
            Some(path) => write_graph(&dot, path)?,
        }
    }

    let written_to = written.as_ref().map(|(p, size)| (p.as_path(), *size));
    let text = if args.json {
        let doc = ferry_plan::summary::json(&plan, args.top, written_to);
        serde_json::to_string_pretty(&doc).map_err(Failure::from)? + "\n"
    } else {
        ferry_plan::summary::text(&plan, &args.inventory, args.top, written_to)
    };
    if graph_on_stdout || plan_on_stdout {
        eprint!("{text}");
    } else {
        emit(&text)?;
    }
    tracing::debug!(
        load_s = t_load.as_secs_f64(),
        plan_s = t_plan.as_secs_f64(),
        write_s = t_write.as_secs_f64(),
        "planned"
    );
    let impossible = plan.schedule.impossible();
    let unscheduled = plan.schedule.unscheduled();
    if impossible + unscheduled > 0 {
        return Err(Failure::from(anyhow!(
            "the plan is incomplete: {impossible} impossible and {unscheduled} unscheduled unit(s) (see above){}",
            written.as_ref().map(|(p, _)| format!("; {} was written all the same", p.display())).unwrap_or_default()
        )));
    }
    Ok(())
}

/// Writes plan.json (or to stdout for "-"); returns the path and size written.
fn write_plan(plan: &Plan<'_>, out: &Path) -> Result<Option<(PathBuf, u64)>, Failure> {
    if out.as_os_str() == "-" {
        let stdout = std::io::stdout();
        plan.write_json(BufWriter::with_capacity(1 << 20, stdout.lock()))
            .context("writing the plan to stdout")?;
        return Ok(None);
    }
    // Write next to the target and rename, so a reader never sees half a plan.
    let tmp = out.with_extension("json.tmp");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    plan.write_json(BufWriter::with_capacity(1 << 20, file))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(Some((out.to_path_buf(), size)))
}

fn write_graph(dot: &str, path: &Path) -> Result<(), Failure> {
    let svg = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if !svg {
        std::fs::write(path, dot).with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .arg("-o")
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow!(
                "cannot run Graphviz `dot` to make {} ({e}); install graphviz, or write a .dot file instead",
                path.display()
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(dot.as_bytes()).context("feeding dot")?;
    }
    let status = child.wait().context("waiting for dot")?;
    if !status.success() {
        return Err(anyhow!("dot failed ({status}) while writing {}", path.display()).into());
    }
    Ok(())
}
