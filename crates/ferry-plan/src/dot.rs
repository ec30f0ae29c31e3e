//! Graphviz drawing of units: volumes (filers, or hostings in file mode) as
//! boxes, glue databases as ellipses, glue IPs as diamonds. Databases used from
//! one volume only are summed up in the volume's label, so a unit of 3,000
//! hostings draws as a handful of nodes that show why it is one unit.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::explain::{UseKind, Volume};
use crate::human;
use crate::output::unit_label;
use crate::schedule::Slot;
use crate::Plan;

/// Most volume nodes drawn per unit; the rest are counted in one node.
const MAX_VOLUMES: usize = 200;

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(crate) fn render(plan: &Plan<'_>, units: &[u32]) -> String {
    let inv = plan.inventory();
    let mut out = String::new();
    out.push_str("graph ferry_units {\n");
    out.push_str("  graph [rankdir=LR, fontname=\"Helvetica\", fontsize=11];\n");
    out.push_str("  node [fontname=\"Helvetica\", fontsize=10];\n");
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=9];\n");
    // Per filer: hostings and bytes, for labels.
    let mut filer_hostings = vec![0u32; inv.counts().filers];
    for f in inv.hosting_filers() {
        filer_hostings[f.index()] += 1;
    }
    for &u in units {
        let st = &plan.partition.stats()[u as usize];
        let when = match plan.schedule.slots[u as usize] {
            Slot::Night { night, .. } => format!("night {}", night + 1),
            Slot::Impossible(_) => "IMPOSSIBLE".to_string(),
            Slot::Unscheduled => "unscheduled".to_string(),
        };
        let label = format!(
            "{}: {} sites, {} hostings, {} filers, {} databases, {}; freeze {} ({})",
            unit_label(u),
            human::count(st.sites),
            human::count(u64::from(st.hostings)),
            st.filers,
            human::count(u64::from(st.databases)),
            human::bytes(st.precopy_bytes() as f64),
            human::duration(st.freeze_s),
            when
        );
        let _ = writeln!(out, "  subgraph cluster_u{} {{", u + 1);
        let _ = writeln!(out, "    label={};", quote(&label));
        if matches!(plan.schedule.slots[u as usize], Slot::Impossible(_)) {
            out.push_str("    color=red;\n");
        }
        // Volumes of the unit, with their own databases counted.
        let mut volumes: BTreeMap<Volume, (u32, u64)> = BTreeMap::new();
        let glue: Vec<_> = plan.unit_glue(u).collect();
        let block = plan
            .partition
            .constraints
            .contains(crate::Constraint::Filer);
        for &h in plan.members.hostings.get(u) {
            let v = crate::explain::volume_of(&plan.prep, plan.partition.constraints, h);
            volumes.entry(v).or_default();
        }
        for &f in plan.members.filers.get(u) {
            if block {
                volumes.entry(Volume::Filer(f)).or_default();
            }
        }
        let unit_dbs = plan.members.databases.get(u);
        let glue_dbs: std::collections::HashSet<_> = glue.iter().map(|g| g.database).collect();
        let own_dbs = unit_dbs.iter().filter(|d| !glue_dbs.contains(d)).count();
        let shown: Vec<Volume> = volumes.keys().copied().take(MAX_VOLUMES).collect();
        for v in &shown {
            let (id, label) = match v {
                Volume::Filer(f) => (
                    format!("f{}", f.0),
                    format!(
                        "filer {}\n{} hostings, {}",
                        inv.filer_name(*f),
                        human::count(u64::from(filer_hostings[f.index()])),
                        human::bytes(plan.prep.filer_bytes[f.index()] as f64)
                    ),
                ),
                Volume::Hosting(h) => (
                    format!("h{}", h.0),
                    format!(
                        "hosting {}\n{} sites, {}",
                        inv.hosting_name(*h),
                        plan.prep.sites_per_hosting[h.index()],
                        human::bytes(inv.hosting_bytes()[h.index()] as f64)
                    ),
                ),
            };
            let _ = writeln!(
                out,
                "    {} [shape=box, style=filled, fillcolor=\"#e8f0fe\", label={}];",
                quote(&id),
                quote(&label)
            );
        }
        if volumes.len() > shown.len() {
            let _ = writeln!(
                out,
                "    \"more_u{}\" [shape=note, label={}];",
                u + 1,
                quote(&format!("… {} more volumes", volumes.len() - shown.len()))
            );
        }
        if own_dbs > 0 {
            let what = if volumes.is_empty() {
                "used by no hosting"
            } else {
                "each used from one volume only"
            };
            let _ = writeln!(
                out,
                "    \"own_u{}\" [shape=note, label={}];",
                u + 1,
                quote(&format!(
                    "{} database{} {what}",
                    human::count(own_dbs as u64),
                    if own_dbs == 1 { "" } else { "s" }
                ))
            );
        }
        for g in &glue {
            let id = format!("d{}", g.database.0);
            let label = format!(
                "{}\n{}",
                inv.database_name(g.database),
                human::bytes(inv.database_bytes()[g.database.index()] as f64)
            );
            let color = if g.cross_cluster {
                "#fde8e8"
            } else {
                "#fff4d6"
            };
            let _ = writeln!(
                out,
                "    {} [shape=ellipse, style=filled, fillcolor=\"{color}\", label={}];",
                quote(&id),
                quote(&label)
            );
            for (v, kind) in &g.volumes {
                let vid = match v {
                    Volume::Filer(f) => format!("f{}", f.0),
                    Volume::Hosting(h) => format!("h{}", h.0),
                };
                if !shown.contains(v) {
                    continue;
                }
                let style = match kind {
                    UseKind::Declared => "solid",
                    UseKind::Observed => "dashed",
                    UseKind::Both => "bold",
                };
                let _ = writeln!(
                    out,
                    "    {} -- {} [style={style}, label={}];",
                    quote(&vid),
                    quote(&id),
                    quote(kind.name())
                );
            }
        }
        for g in plan.unit_ip_glue(u) {
            let _ = writeln!(
                out,
                "    \"ip{}\" [shape=diamond, label={}];",
                g.ip.0,
                quote(&format!(
                    "IP {}\n{} volumes",
                    inv.ip_address(g.ip),
                    g.volumes
                ))
            );
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}
