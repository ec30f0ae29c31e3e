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
use ferry_plan::{
    human, Constraint, Constraints, Params, Plan, Scenario, Slot, UnitStats, Volume, Window,
};

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
    /// Files per second a file-mode walk stats (used without the filer constraint).
    #[arg(long, default_value = "5000/s", value_parser = ferry_plan::parse_count_rate)]
    walk_rate: f64,
    /// Checksum rate of one database server during the freeze.
    #[arg(long, default_value = "500MB/s", value_parser = ferry_plan::parse_byte_rate)]
    db_check_rate: f64,
    /// Fixed cost of every freeze: router acknowledgements, binlog catch-up,
    /// verification, flip.
    #[arg(long, default_value = "60s", value_parser = ferry_plan::parse_duration)]
    freeze_overhead: f64,
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
        db_check_rate: a.db_check_rate,
        freeze_overhead: a.freeze_overhead,
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

    let mut text = String::new();
    if args.json {
        text = serde_json::to_string_pretty(&summary_json(&plan, &args, written.clone()))
            .map_err(Failure::from)?;
        text.push('\n');
    } else {
        summary_text(&plan, &args, written.clone(), &mut text);
    }
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

fn status_text(slot: &Slot) -> String {
    match slot {
        Slot::Night { night, .. } => format!("night {}", night + 1),
        Slot::Impossible(_) => "IMPOSSIBLE".to_string(),
        Slot::Unscheduled => "unscheduled".to_string(),
    }
}

fn constraint_label(chosen: Constraints, s: &Scenario) -> String {
    let mut label = s.constraints.to_string();
    if s.constraints == chosen {
        label.push_str(" (chosen)");
    } else if let Some(c) = Constraint::ALL
        .into_iter()
        .find(|c| s.constraints.contains(*c) != chosen.contains(*c))
    {
        let sign = if s.constraints.contains(c) { '+' } else { '-' };
        label = format!("{sign} {c}");
    }
    label
}

fn unit_size(s: &UnitStats) -> String {
    format!(
        "{} sites, {} filers, {}",
        human::count(s.sites),
        human::count(u64::from(s.filers)),
        human::bytes(s.precopy_bytes() as f64)
    )
}

/// "sites per unit" buckets.
/// (label, number of units) per bucket.
type Buckets = Vec<(String, usize)>;

fn distribution(plan: &Plan<'_>) -> (Buckets, Buckets) {
    let site_edges: [(u64, u64, &str); 7] = [
        (0, 0, "no site"),
        (1, 1, "1"),
        (2, 10, "2-10"),
        (11, 100, "11-100"),
        (101, 1_000, "101-1k"),
        (1_001, 100_000, "1k-100k"),
        (100_001, u64::MAX, ">100k"),
    ];
    let filer_edges: [(u32, u32, &str); 5] = [
        (0, 0, "none"),
        (1, 1, "1"),
        (2, 2, "2"),
        (3, 5, "3-5"),
        (6, u32::MAX, "6+"),
    ];
    let stats = plan.partition.stats();
    let sites = site_edges
        .iter()
        .map(|(lo, hi, l)| {
            let n = stats
                .iter()
                .filter(|s| s.sites >= *lo && s.sites <= *hi)
                .count();
            (l.to_string(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let filers = filer_edges
        .iter()
        .map(|(lo, hi, l)| {
            let n = stats
                .iter()
                .filter(|s| s.filers >= *lo && s.filers <= *hi)
                .count();
            (l.to_string(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    (sites, filers)
}

/// The database server holding most of a unit's database bytes.
fn busiest_server(plan: &Plan<'_>, unit: u32) -> Option<(String, u64)> {
    let inv = plan.inventory();
    let mut per: std::collections::HashMap<u32, u64> = Default::default();
    for d in plan.members.databases.get(unit) {
        *per.entry(inv.database_servers()[d.index()].0).or_default() +=
            inv.database_bytes()[d.index()];
    }
    per.into_iter()
        .max_by_key(|(s, b)| (*b, std::cmp::Reverse(*s)))
        .map(|(s, b)| {
            (
                inv.db_server_name(ferry_inventory::DbServerId(s))
                    .to_string(),
                b,
            )
        })
}

fn glue_text(plan: &Plan<'_>, g: &ferry_plan::Glue) -> String {
    let inv = plan.inventory();
    let users: Vec<String> = g
        .volumes
        .iter()
        .take(6)
        .map(|(v, k)| {
            let name = match v {
                Volume::Filer(f) => inv.filer_name(*f).to_string(),
                Volume::Hosting(h) => inv.hosting_name(*h).to_string(),
            };
            format!("{name} ({})", k.name())
        })
        .collect();
    let more = if g.volumes.len() > 6 {
        format!(" and {} more", g.volumes.len() - 6)
    } else {
        String::new()
    };
    format!(
        "{} joins {}{more}{}",
        inv.database_name(g.database),
        users.join(", "),
        if g.cross_cluster {
            " [across clusters]"
        } else {
            ""
        }
    )
}

fn summary_text(plan: &Plan<'_>, args: &Args, written: Option<(PathBuf, u64)>, out: &mut String) {
    use std::fmt::Write as _;
    let inv = plan.inventory();
    let p = &plan.params;
    let c = inv.counts();
    let stats = plan.partition.stats();
    let _ = writeln!(
        out,
        "Inventory   {}: {} sites, {} hostings, {} filers, {} databases ({} servers), {} IPs, {} clusters",
        args.inventory.display(),
        human::count(c.sites as u64),
        human::count(c.hostings as u64),
        human::count(c.filers as u64),
        human::count(c.databases as u64),
        human::count(c.db_servers as u64),
        human::count(c.ips as u64),
        human::count(c.clusters as u64),
    );
    let _ = writeln!(
        out,
        "Parameters  constraints {}; window {} ({}); bandwidth {}; max freeze {}; change rate {:.3}%/day",
        p.constraints,
        p.window,
        human::duration(p.window.seconds()),
        human::bit_rate(p.bandwidth),
        human::duration(p.max_freeze),
        p.change_rate * 86_400.0 * 100.0
    );
    let (by_sites, by_filers) = distribution(plan);
    let fmt_dist = |d: &[(String, usize)]| {
        d.iter()
            .map(|(l, n)| format!("{l}: {}", human::count(*n as u64)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "\nUnits       {}   by sites [{}]   by filers [{}]",
        human::count(stats.len() as u64),
        fmt_dist(&by_sites),
        fmt_dist(&by_filers)
    );
    let cross = plan.glue.iter().filter(|g| g.cross_cluster).count();
    let _ = writeln!(
        out,
        "Glue        {} databases are used from more than one {} ({} across clusters){}",
        human::count(plan.glue.len() as u64),
        if p.constraints.contains(Constraint::Filer) {
            "filer"
        } else {
            "hosting"
        },
        human::count(cross as u64),
        if plan.ip_glue.is_empty() {
            String::new()
        } else {
            format!(
                "; {} IPs carry sites of several volumes",
                plan.ip_glue.len()
            )
        }
    );

    let top = args.top.min(stats.len());
    if top > 0 {
        let _ = writeln!(out, "\nLargest units");
        let _ = writeln!(
            out,
            "  {:<7} {:>10} {:>9} {:>7} {:>9} {:>9} {:>9}  when",
            "unit", "sites", "hostings", "filers", "databases", "data", "freeze"
        );
        for u in 0..top as u32 {
            let s = &stats[u as usize];
            let _ = writeln!(
                out,
                "  {:<7} {:>10} {:>9} {:>7} {:>9} {:>9} {:>9}  {}",
                format!("U{}", u + 1),
                human::count(s.sites),
                human::count(u64::from(s.hostings)),
                human::count(u64::from(s.filers)),
                human::count(u64::from(s.databases)),
                human::bytes(s.precopy_bytes() as f64),
                human::duration(s.freeze_s),
                status_text(&plan.schedule.slots[u as usize])
            );
            let glue: Vec<_> = plan.unit_glue(u).collect();
            for g in glue.iter().take(3) {
                let _ = writeln!(out, "          glued by {}", glue_text(plan, g));
            }
            if glue.len() > 3 {
                let _ = writeln!(
                    out,
                    "          ... and {} more glue databases",
                    glue.len() - 3
                );
            }
            let ips: Vec<_> = plan.unit_ip_glue(u).collect();
            if !ips.is_empty() {
                let _ = writeln!(
                    out,
                    "          glued by {} IPs, e.g. {} ({} volumes)",
                    ips.len(),
                    inv.ip_address(ips[0].ip),
                    ips[0].volumes
                );
            }
        }
    }

    let _ = writeln!(out, "\nWhat each constraint costs");
    let _ = writeln!(
        out,
        "  {:<38} {:>9} {:>44} {:>10} {:>10} {:>7}",
        "constraints", "units", "largest unit", "max freeze", "impossible", "nights"
    );
    for s in &plan.scenarios {
        let _ = writeln!(
            out,
            "  {:<38} {:>9} {:>44} {:>10} {:>10} {:>7}",
            constraint_label(p.constraints, s),
            human::count(s.units as u64),
            format!(
                "{}, freeze {}",
                unit_size(&s.largest),
                human::duration(s.largest.freeze_s)
            ),
            human::duration(s.max_freeze_s),
            human::count(s.impossible as u64),
            human::count(s.nights as u64),
        );
    }

    let nights = &plan.schedule.nights;
    let _ = writeln!(
        out,
        "\nNights      {} ({} freezes at a time; pre-copy starts {} before night 1)",
        nights.len(),
        p.parallel,
        human::duration(p.lead)
    );
    if !nights.is_empty() {
        let _ = writeln!(
            out,
            "  {:<6} {:>7} {:>8} {:>10} {:>10} {:>12} {:>24}",
            "night",
            "opens",
            "units",
            "busy until",
            "of window",
            "final copy",
            "pre-copy due / possible"
        );
        const SHOWN: usize = 15;
        for (i, n) in nights.iter().enumerate() {
            if nights.len() > SHOWN && i == SHOWN - 3 {
                let _ = writeln!(out, "  ... {} more nights ...", nights.len() - SHOWN);
            }
            if nights.len() > SHOWN && i >= SHOWN - 3 && i < nights.len() - 3 {
                continue;
            }
            let _ = writeln!(
                out,
                "  {:<6} {:>7} {:>8} {:>10} {:>9.0}% {:>12} {:>24}",
                i + 1,
                format!("+{}", human::duration(n.opens_after_s)),
                human::count(u64::from(n.units)),
                format!("+{}", human::duration(n.busy_s)),
                100.0 * n.busy_s / p.window.seconds(),
                human::bytes(n.final_bytes),
                format!(
                    "{} / {}",
                    human::bytes(n.link_bytes_needed),
                    human::bytes(n.link_bytes_available)
                )
            );
        }
    }

    let impossible: Vec<u32> = plan
        .schedule
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Slot::Impossible(_)))
        .map(|(u, _)| u as u32)
        .collect();
    if !impossible.is_empty() {
        let _ = writeln!(
            out,
            "\nImpossible units ({}): never scheduled",
            impossible.len()
        );
        for &u in impossible.iter().take(10) {
            let s = &stats[u as usize];
            let limit = if s.freeze_s > p.max_freeze {
                format!("max freeze {}", human::duration(p.max_freeze))
            } else {
                format!("the {} window", human::duration(p.window.seconds()))
            };
            let _ = writeln!(
                out,
                "  U{}: freeze {} > {limit}; {} sites, {} hostings, {} filers, {} databases, {}",
                u + 1,
                human::duration(s.freeze_s),
                human::count(s.sites),
                human::count(u64::from(s.hostings)),
                human::count(u64::from(s.filers)),
                human::count(u64::from(s.databases)),
                human::bytes(s.precopy_bytes() as f64)
            );
            let _ = writeln!(
                out,
                "      freeze = {} overhead + {} finding changes + {} final copy ({} written during a {} last pass) + {} database check{}",
                human::duration(p.freeze_overhead),
                human::duration(s.find_s),
                human::duration(s.final_copy_s(p)),
                human::bytes(s.final_bytes),
                human::duration(s.pass_s),
                human::duration(s.db_check_s),
                busiest_server(plan, u)
                    .map(|(name, bytes)| format!(" ({} of its databases on {name})", human::bytes(bytes as f64)))
                    .unwrap_or_default()
            );
            match &plan.blame[u as usize] {
                Some(b)
                    if b.largest_part_freeze_s <= p.max_freeze
                        && b.largest_part_freeze_s <= p.window.seconds() =>
                {
                    let _ = writeln!(
                        out,
                        "      made big by {}: without it, {} units, the largest freezing {} (fits)",
                        b.constraint,
                        human::count(u64::from(b.parts)),
                        human::duration(b.largest_part_freeze_s)
                    );
                }
                Some(b) => {
                    let _ = writeln!(
                        out,
                        "      lifting {} alone gives {} units, the largest still freezing {}: one part is too big by itself",
                        b.constraint,
                        human::count(u64::from(b.parts)),
                        human::duration(b.largest_part_freeze_s)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "      no constraint to lift splits it: its own volume is too big for the freeze budget"
                    );
                }
            }
            if let Some(g) = plan.unit_glue(u).next() {
                let _ = writeln!(out, "      glued by {}", glue_text(plan, g));
            }
        }
        if impossible.len() > 10 {
            let _ = writeln!(
                out,
                "  ... and {} more (see plan.json)",
                impossible.len() - 10
            );
        }
    }
    let unscheduled = plan.schedule.unscheduled();
    if unscheduled > 0 {
        let _ = writeln!(
            out,
            "\nUnscheduled units: {unscheduled} fit alone but not within --nights {}",
            p.nights.unwrap_or(0)
        );
    }
    match written {
        Some((path, size)) => {
            let _ = writeln!(
                out,
                "\nPlan written to {} ({} v{}, {})",
                path.display(),
                ferry_plan::FORMAT_NAME,
                ferry_plan::FORMAT_VERSION,
                human::bytes(size as f64)
            );
        }
        None => {
            let _ = writeln!(out, "\nPlan written to stdout");
        }
    }
}

fn summary_json(
    plan: &Plan<'_>,
    args: &Args,
    written: Option<(PathBuf, u64)>,
) -> serde_json::Value {
    use serde_json::json;
    let stats = plan.partition.stats();
    let inv = plan.inventory();
    let largest: Vec<_> = (0..args.top.min(stats.len()) as u32)
        .map(|u| {
            let s = &stats[u as usize];
            json!({
                "id": format!("U{}", u + 1),
                "sites": s.sites,
                "hostings": s.hostings,
                "filers": s.filers,
                "databases": s.databases,
                "bytes": s.precopy_bytes(),
                "freeze_s": s.freeze_s,
                "status": status_text(&plan.schedule.slots[u as usize]),
                "glue": plan.unit_glue(u).map(|g| inv.database_name(g.database)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let scenarios: Vec<_> = plan
        .scenarios
        .iter()
        .map(|s| {
            json!({
                "constraints": s.constraints.to_string(),
                "units": s.units,
                "largest_unit_sites": s.largest.sites,
                "largest_unit_freeze_s": s.largest.freeze_s,
                "max_freeze_s": s.max_freeze_s,
                "impossible_units": s.impossible,
                "nights": s.nights,
            })
        })
        .collect();
    let impossible: Vec<_> = plan
        .schedule
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Slot::Impossible(_)))
        .map(|(u, _)| {
            let s = &stats[u];
            json!({
                "id": format!("U{}", u + 1),
                "freeze_s": s.freeze_s,
                "sites": s.sites,
                "filers": s.filers,
                "blame": plan.blame[u].as_ref().map(|b| json!({
                    "constraint": b.constraint.name(),
                    "parts_without_it": b.parts,
                    "largest_part_freeze_s": b.largest_part_freeze_s,
                })),
            })
        })
        .collect();
    json!({
        "inventory": inv.counts(),
        "constraints": plan.params.constraints.to_string(),
        "units": stats.len(),
        "glue_databases": plan.glue.len(),
        "nights": plan.schedule.nights.len(),
        "impossible_units": impossible,
        "unscheduled_units": plan.schedule.unscheduled(),
        "largest_units": largest,
        "constraint_costs": scenarios,
        "plan_file": written.map(|(p, _)| p.display().to_string()),
    })
}
