//! The human summary of a plan (`ferry plan`'s tables) and its JSON form:
//! inventory and parameters, units and what glues them, the largest units,
//! what each constraint costs, the nights, and why impossible units are.
//! Each section is one function writing into the summary's text.

use std::fmt::Write as _;
use std::path::Path;

use crate::{human, Constraint, Constraints, Glue, Plan, Scenario, Slot, UnitStats, Volume};

/// The summary as text; `inventory` names the inventory read, `top` how many
/// of the largest units are detailed, `written` where plan.json went (and its
/// size; `None`: stdout).
pub fn text(
    plan: &Plan<'_>,
    inventory: &Path,
    top: usize,
    written: Option<(&Path, u64)>,
) -> String {
    let mut out = String::new();
    overview(&mut out, plan, inventory);
    largest_units(&mut out, plan, top);
    constraint_costs(&mut out, plan);
    nights(&mut out, plan);
    impossible_units(&mut out, plan);
    let unscheduled = plan.schedule.unscheduled();
    if unscheduled > 0 {
        let _ = writeln!(
            out,
            "\nUnscheduled units: {unscheduled} fit alone but not within --nights {}",
            plan.params.nights.unwrap_or(0)
        );
    }
    match written {
        Some((path, size)) => {
            let _ = writeln!(
                out,
                "\nPlan written to {} ({} v{}, {})",
                path.display(),
                crate::FORMAT_NAME,
                crate::FORMAT_VERSION,
                human::bytes(size as f64)
            );
        }
        None => {
            let _ = writeln!(out, "\nPlan written to stdout");
        }
    }
    out
}

/// The inventory's size in one phrase, as `ferry plan` and `ferry inventory
/// check` print it.
pub fn inventory_counts(c: &ferry_inventory::Counts) -> String {
    format!(
        "{} sites on {} hostings, {} filers, {} databases on {} servers, {} IPs, {} clusters, {} datacenters",
        human::count(c.sites as u64),
        human::count(c.hostings as u64),
        human::count(c.filers as u64),
        human::count(c.databases as u64),
        human::count(c.db_servers as u64),
        human::count(c.ips as u64),
        human::count(c.clusters as u64),
        human::count(c.datacenters as u64),
    )
}

/// Inventory, parameters, units by size, and the glue between volumes.
fn overview(out: &mut String, plan: &Plan<'_>, inventory: &Path) {
    let inv = plan.inventory();
    let p = &plan.params;
    let stats = plan.partition.stats();
    let _ = writeln!(
        out,
        "Inventory   {}: {}",
        inventory.display(),
        inventory_counts(&inv.counts())
    );
    let mut copy = String::new();
    if let Some(m) = p.copy_mode {
        copy.push_str(&format!("; copy mode {m}"));
    }
    if let Some(c) = p.freeze_per_file {
        copy.push_str(&format!("; freeze {:.0} µs a file", c * 1e6));
    }
    if p.precopy_overhead > 0.0 || p.precopy_per_file > 0.0 {
        copy.push_str(&format!(
            "; pre-copy {} + {:.0} µs a file",
            human::duration(p.precopy_overhead),
            p.precopy_per_file * 1e6
        ));
    }
    let _ = writeln!(
        out,
        "Parameters  constraints {}; window {} ({}); bandwidth {}; max freeze {}; change rate {:.3}%/day{copy}",
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
}

/// The `top` largest units: size, freeze, night, and what glues them.
fn largest_units(out: &mut String, plan: &Plan<'_>, top: usize) {
    let stats = plan.partition.stats();
    let inv = plan.inventory();
    let top = top.min(stats.len());
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
}

/// One line per scenario: the chosen constraints, then each one toggled.
fn constraint_costs(out: &mut String, plan: &Plan<'_>) {
    let p = &plan.params;
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
}

/// The nights: when each opens, how busy it is, what its link must carry.
fn nights(out: &mut String, plan: &Plan<'_>) {
    let p = &plan.params;
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
}

/// Units that fit no night, with what their freeze is made of and what
/// (if anything) lifting one constraint would change.
fn impossible_units(out: &mut String, plan: &Plan<'_>) {
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
            impossible_unit(out, plan, u);
        }
        if impossible.len() > 10 {
            let _ = writeln!(
                out,
                "  ... and {} more (see plan.json)",
                impossible.len() - 10
            );
        }
    }
}

fn impossible_unit(out: &mut String, plan: &Plan<'_>, u: u32) {
    let p = &plan.params;
    let stats = plan.partition.stats();
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

/// (label, number of units) per bucket.
type Buckets = Vec<(String, usize)>;

/// Units by number of sites and by number of filers.
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

fn glue_text(plan: &Plan<'_>, g: &Glue) -> String {
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

/// The summary as one JSON object (`ferry plan --json`): the same facts as
/// [`text`], for scripts.
pub fn json(plan: &Plan<'_>, top: usize, written: Option<(&Path, u64)>) -> serde_json::Value {
    use serde_json::json;
    let stats = plan.partition.stats();
    let inv = plan.inventory();
    let largest: Vec<_> = (0..top.min(stats.len()) as u32)
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
