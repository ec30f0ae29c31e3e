//! Graphviz drawing of units: volumes (filers, or hostings in file mode) as
//! boxes, glue databases as ellipses, glue IPs as diamonds. Databases used from
//! one volume only are summed up in the volume's label, so a unit of 3,000
//! hostings draws as a handful of nodes that show why it is one unit.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;

use crate::explain::{Glue, UseKind, Volume};
use crate::human;
use crate::output::unit_label;
use crate::params::Constraint;
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

/// Draws `units` as one Graphviz graph, a cluster per unit.
pub(crate) fn render(plan: &Plan<'_>, units: &[u32]) -> String {
    let inv = plan.inventory();
    let mut out = String::new();
    out.push_str("graph ferry_units {\n");
    out.push_str("  graph [rankdir=LR, fontname=\"Helvetica\", fontsize=11];\n");
    out.push_str("  node [fontname=\"Helvetica\", fontsize=10];\n");
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=9];\n");
    // Per filer: hostings, for labels.
    let mut filer_hostings = vec![0u32; inv.counts().filers];
    for f in inv.hosting_filers() {
        filer_hostings[f.index()] += 1;
    }
    for &u in units {
        Unit {
            plan,
            u,
            filer_hostings: &filer_hostings,
            out: &mut out,
        }
        .draw();
    }
    out.push_str("}\n");
    out
}

/// The drawing of one unit into `out`.
struct Unit<'p, 'a> {
    plan: &'p Plan<'a>,
    u: u32,
    filer_hostings: &'p [u32],
    out: &'p mut String,
}

fn volume_id(v: &Volume) -> String {
    match v {
        Volume::Filer(f) => format!("f{}", f.0),
        Volume::Hosting(h) => format!("h{}", h.0),
    }
}

impl Unit<'_, '_> {
    fn draw(mut self) {
        let (plan, u) = (self.plan, self.u);
        let _ = writeln!(self.out, "  subgraph cluster_u{} {{", u + 1);
        let _ = writeln!(self.out, "    label={};", quote(&self.label()));
        if matches!(plan.schedule.slots[u as usize], Slot::Impossible(_)) {
            self.out.push_str("    color=red;\n");
        }
        let volumes = self.volumes();
        let shown: Vec<Volume> = volumes.iter().copied().take(MAX_VOLUMES).collect();
        for v in &shown {
            self.volume_node(v);
        }
        if volumes.len() > shown.len() {
            let more = format!("… {} more volumes", volumes.len() - shown.len());
            let _ = writeln!(
                self.out,
                "    \"more_u{}\" [shape=note, label={}];",
                u + 1,
                quote(&more)
            );
        }
        let glue: Vec<&Glue> = plan.unit_glue(u).collect();
        self.own_databases(&glue, volumes.is_empty());
        for g in &glue {
            self.glue_node(g, &shown);
        }
        for g in plan.unit_ip_glue(u) {
            let label = format!(
                "IP {}\n{} volumes",
                plan.inventory().ip_address(g.ip),
                g.volumes
            );
            let _ = writeln!(
                self.out,
                "    \"ip{}\" [shape=diamond, label={}];",
                g.ip.0,
                quote(&label)
            );
        }
        self.out.push_str("  }\n");
    }

    /// The cluster's title: size, freeze and night.
    fn label(&self) -> String {
        let st = &self.plan.partition.stats()[self.u as usize];
        let when = match self.plan.schedule.slots[self.u as usize] {
            Slot::Night { night, .. } => format!("night {}", night + 1),
            Slot::Impossible(_) => "IMPOSSIBLE".to_string(),
            Slot::Unscheduled => "unscheduled".to_string(),
        };
        format!(
            "{}: {} sites, {} hostings, {} filers, {} databases, {}; freeze {} ({})",
            unit_label(self.u),
            human::count(st.sites),
            human::count(u64::from(st.hostings)),
            st.filers,
            human::count(u64::from(st.databases)),
            human::bytes(st.precopy_bytes() as f64),
            human::duration(st.freeze_s),
            when
        )
    }

    /// The unit's volumes, sorted: its filers (block mode) or hostings.
    fn volumes(&self) -> BTreeSet<Volume> {
        let plan = self.plan;
        let mut volumes = BTreeSet::new();
        for &h in plan.members.hostings.get(self.u) {
            volumes.insert(crate::explain::volume_of(
                &plan.prep,
                plan.partition.constraints,
                h,
            ));
        }
        if plan.partition.constraints.contains(Constraint::Filer) {
            for &f in plan.members.filers.get(self.u) {
                volumes.insert(Volume::Filer(f));
            }
        }
        volumes
    }

    fn volume_node(&mut self, v: &Volume) {
        let (plan, inv) = (self.plan, self.plan.inventory());
        let label = match v {
            Volume::Filer(f) => format!(
                "filer {}\n{} hostings, {}",
                inv.filer_name(*f),
                human::count(u64::from(self.filer_hostings[f.index()])),
                human::bytes(plan.prep.filer_bytes[f.index()] as f64)
            ),
            Volume::Hosting(h) => format!(
                "hosting {}\n{} sites, {}",
                inv.hosting_name(*h),
                plan.prep.sites_per_hosting[h.index()],
                human::bytes(inv.hosting_bytes()[h.index()] as f64)
            ),
        };
        let _ = writeln!(
            self.out,
            "    {} [shape=box, style=filled, fillcolor=\"#e8f0fe\", label={}];",
            quote(&volume_id(v)),
            quote(&label)
        );
    }

    /// One note counting the databases that glue nothing.
    fn own_databases(&mut self, glue: &[&Glue], no_volume: bool) {
        let glue_dbs: HashSet<_> = glue.iter().map(|g| g.database).collect();
        let own = self
            .plan
            .members
            .databases
            .get(self.u)
            .iter()
            .filter(|d| !glue_dbs.contains(d))
            .count();
        if own == 0 {
            return;
        }
        let what = if no_volume {
            "used by no hosting"
        } else {
            "each used from one volume only"
        };
        let label = format!(
            "{} database{} {what}",
            human::count(own as u64),
            if own == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            self.out,
            "    \"own_u{}\" [shape=note, label={}];",
            self.u + 1,
            quote(&label)
        );
    }

    /// A glue database and its edges to the volumes drawn.
    fn glue_node(&mut self, g: &Glue, shown: &[Volume]) {
        let inv = self.plan.inventory();
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
            self.out,
            "    {} [shape=ellipse, style=filled, fillcolor=\"{color}\", label={}];",
            quote(&id),
            quote(&label)
        );
        for (v, kind) in &g.volumes {
            if !shown.contains(v) {
                continue;
            }
            let style = match kind {
                UseKind::Declared => "solid",
                UseKind::Observed => "dashed",
                UseKind::Both => "bold",
            };
            let _ = writeln!(
                self.out,
                "    {} -- {} [style={style}, label={}];",
                quote(&volume_id(v)),
                quote(&id),
                quote(kind.name())
            );
        }
    }
}
