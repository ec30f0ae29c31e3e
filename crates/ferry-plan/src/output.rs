//! `plan.json`: the versioned document the orchestrator reads. The format is
//! described in `docs/plan-format.md`; it only grows (new fields), and a change
//! that would break a reader bumps [`FORMAT_VERSION`].
//!
//! Members are streamed from the plan's groups rather than collected first, so a
//! 3-million-site plan is written without a second copy of every name.

use std::io::Write;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::explain::{Scenario, Volume};
use crate::params::Params;
use crate::schedule::{Impossible, Slot};
use crate::units::UnitStats;
use crate::Plan;

/// The `format` field of every plan.
pub const FORMAT_NAME: &str = "ferry-plan";
/// The `version` field; bumped only by a change a v1 reader would misread.
pub const FORMAT_VERSION: u32 = 1;

/// `U1`, `U2`, ... (1-based, as people read them).
pub(crate) fn unit_label(u: u32) -> String {
    format!("U{}", u + 1)
}

/// A sequence serialised from an iterator made on demand.
struct Seq<F>(F);

impl<F, I, T> Serialize for Seq<F>
where
    F: Fn() -> I,
    I: Iterator<Item = T>,
    T: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((self.0)())
    }
}

#[derive(Serialize)]
struct FileDoc<'a> {
    name: &'a str,
    rows: u64,
    bytes: u64,
    digest: &'a str,
}

#[derive(Serialize)]
struct ParamsDoc {
    constraints: Vec<&'static str>,
    window: String,
    window_s: f64,
    bandwidth_bytes_per_s: f64,
    max_freeze_s: f64,
    nights: Option<u32>,
    parallel: u32,
    change_rate_per_day: f64,
    scan_rate_bytes_per_s: f64,
    walk_rate_files_per_s: f64,
    /// Only when chosen (`--copy-mode`): plans without it read as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    copy_mode: Option<&'static str>,
    /// Only when chosen (`--freeze-per-file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    freeze_per_file_s: Option<f64>,
    db_check_rate_bytes_per_s: f64,
    freeze_overhead_s: f64,
    precopy_overhead_s: f64,
    precopy_per_file_s: f64,
    lead_s: f64,
}

#[derive(Serialize)]
struct ScenarioDoc {
    constraints: Vec<&'static str>,
    units: usize,
    largest_unit_sites: u64,
    largest_unit_filers: u32,
    largest_unit_bytes: u64,
    largest_unit_freeze_s: f64,
    max_freeze_s: f64,
    impossible_units: usize,
    nights: usize,
    unscheduled_units: usize,
}

impl From<&Scenario> for ScenarioDoc {
    fn from(s: &Scenario) -> ScenarioDoc {
        ScenarioDoc {
            constraints: s.constraints.iter().map(|c| c.name()).collect(),
            units: s.units,
            largest_unit_sites: s.largest.sites,
            largest_unit_filers: s.largest.filers,
            largest_unit_bytes: s.largest.precopy_bytes(),
            largest_unit_freeze_s: r3(s.largest.freeze_s),
            max_freeze_s: r3(s.max_freeze_s),
            impossible_units: s.impossible,
            nights: s.nights,
            unscheduled_units: s.unscheduled,
        }
    }
}

pub(crate) fn impossible_reason(i: Impossible) -> &'static str {
    match i {
        Impossible::FreezeOverBudget => "freeze-exceeds-max-freeze",
        Impossible::FreezeOverWindow => "freeze-exceeds-window",
    }
}

/// Rounds seconds and byte counts computed in floating point so the file does
/// not show `12.000000000002`.
fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

struct UnitDoc<'p, 'a> {
    plan: &'p Plan<'a>,
    unit: u32,
}

#[derive(Serialize)]
struct BlameDoc {
    constraint: &'static str,
    parts_without_it: u32,
    largest_part_freeze_s: f64,
}

#[derive(Serialize)]
struct SizeDoc {
    sites: u64,
    hostings: u32,
    filers: u32,
    databases: u32,
    files: u64,
    file_bytes: u64,
    db_bytes: u64,
}

impl From<&UnitStats> for SizeDoc {
    fn from(st: &UnitStats) -> SizeDoc {
        SizeDoc {
            sites: st.sites,
            hostings: st.hostings,
            filers: st.filers,
            databases: st.databases,
            files: st.files,
            file_bytes: st.file_bytes,
            db_bytes: st.db_bytes,
        }
    }
}

#[derive(Serialize)]
struct FreezeDoc {
    total_s: f64,
    overhead_s: f64,
    find_s: f64,
    final_copy_s: f64,
    final_bytes: f64,
    db_check_s: f64,
    last_pass_s: f64,
}

impl FreezeDoc {
    fn new(st: &UnitStats, p: &Params) -> FreezeDoc {
        FreezeDoc {
            total_s: r3(st.freeze_s),
            overhead_s: r3(p.freeze_overhead),
            find_s: r3(st.find_s),
            final_copy_s: r3(st.final_copy_s(p)),
            final_bytes: st.final_bytes.round(),
            db_check_s: r3(st.db_check_s),
            last_pass_s: r3(st.pass_s),
        }
    }
}

/// A unit's predicted pre-copy: `total_s` = `overhead_s` + `files_s` +
/// `transfer_s` (its file and database bytes over the link).
#[derive(Serialize)]
struct PrecopyDoc {
    total_s: f64,
    overhead_s: f64,
    files_s: f64,
    transfer_s: f64,
}

impl PrecopyDoc {
    fn new(st: &UnitStats, p: &Params) -> PrecopyDoc {
        PrecopyDoc {
            total_s: r3(st.precopy_s(p)),
            overhead_s: r3(p.precopy_overhead),
            files_s: r3(st.precopy_files_s),
            transfer_s: r3(st.precopy_transfer_s(p)),
        }
    }
}

#[derive(Serialize)]
struct IpDoc<'a> {
    ip: &'a str,
    volumes: u32,
}

impl UnitDoc<'_, '_> {
    /// `status` and where the unit goes, or why it goes nowhere.
    fn slot<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        let u = self.unit as usize;
        match self.plan.schedule.slots[u] {
            Slot::Night {
                night,
                lane,
                order,
                start_s,
            } => {
                m.serialize_entry("status", "scheduled")?;
                m.serialize_entry("night", &(night + 1))?;
                m.serialize_entry("lane", &lane)?;
                m.serialize_entry("order", &order)?;
                m.serialize_entry("freeze_start_s", &r3(start_s))?;
            }
            Slot::Impossible(why) => {
                m.serialize_entry("status", "impossible")?;
                m.serialize_entry("reason", impossible_reason(why))?;
                if let Some(b) = &self.plan.blame[u] {
                    let blame = BlameDoc {
                        constraint: b.constraint.name(),
                        parts_without_it: b.parts,
                        largest_part_freeze_s: r3(b.largest_part_freeze_s),
                    };
                    m.serialize_entry("blame", &blame)?;
                }
            }
            Slot::Unscheduled => {
                m.serialize_entry("status", "unscheduled")?;
                m.serialize_entry("reason", "needs-more-nights")?;
            }
        }
        Ok(())
    }

    /// Why the unit is one (`glue`, `ip_glue`) and everything in it.
    fn members<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        let (plan, u) = (self.plan, self.unit);
        let inv = plan.inventory();
        let glue = Seq(|| plan.unit_glue(u).map(|g| GlueDoc { plan, g }));
        m.serialize_entry("glue", &glue)?;
        let ip_glue = Seq(|| {
            plan.unit_ip_glue(u).map(|g| IpDoc {
                ip: inv.ip_address(g.ip),
                volumes: g.volumes,
            })
        });
        m.serialize_entry("ip_glue", &ip_glue)?;
        let members = &plan.members;
        let filers = Seq(|| members.filers.get(u).iter().map(|f| inv.filer_name(*f)));
        m.serialize_entry("filers", &filers)?;
        let databases = Seq(|| {
            members
                .databases
                .get(u)
                .iter()
                .map(|d| inv.database_name(*d))
        });
        m.serialize_entry("databases", &databases)?;
        let hostings = Seq(|| {
            members
                .hostings
                .get(u)
                .iter()
                .map(|&h| HostingDoc { plan, h })
        });
        m.serialize_entry("hostings", &hostings)
    }
}

impl Serialize for UnitDoc<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let st = &self.plan.partition.stats()[self.unit as usize];
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &unit_label(self.unit))?;
        self.slot(&mut m)?;
        m.serialize_entry("size", &SizeDoc::from(st))?;
        m.serialize_entry("freeze", &FreezeDoc::new(st, &self.plan.params))?;
        m.serialize_entry("precopy", &PrecopyDoc::new(st, &self.plan.params))?;
        self.members(&mut m)?;
        m.end()
    }
}

struct GlueDoc<'p, 'a> {
    plan: &'p Plan<'a>,
    g: &'p crate::Glue,
}

impl Serialize for GlueDoc<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let inv = self.plan.inventory();
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("database", inv.database_name(self.g.database))?;
        m.serialize_entry("cross_cluster", &self.g.cross_cluster)?;
        m.serialize_entry(
            "used_by",
            &Seq(|| {
                self.g.volumes.iter().map(|(v, k)| {
                    let mut e = serde_json::Map::new();
                    match v {
                        Volume::Filer(f) => e.insert("filer".into(), inv.filer_name(*f).into()),
                        Volume::Hosting(h) => {
                            e.insert("hosting".into(), inv.hosting_name(*h).into())
                        }
                    };
                    e.insert("use".into(), k.name().into());
                    e
                })
            }),
        )?;
        m.end()
    }
}

struct HostingDoc<'p, 'a> {
    plan: &'p Plan<'a>,
    h: ferry_inventory::HostingId,
}

impl Serialize for HostingDoc<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let inv = self.plan.inventory();
        let h = self.h;
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("name", inv.hosting_name(h))?;
        m.serialize_entry("filer", inv.filer_name(inv.hosting_filers()[h.index()]))?;
        m.serialize_entry("directory", inv.hosting_directory(h))?;
        let sites = self.plan.members.sites_of_hosting.get(h.0);
        m.serialize_entry("sites", &Seq(|| sites.iter().map(|s| inv.site_name(*s))))?;
        m.end()
    }
}

#[derive(Serialize)]
struct InventoryDoc<'a> {
    counts: ferry_inventory::Counts,
    files: Vec<FileDoc<'a>>,
}

impl<'a> InventoryDoc<'a> {
    fn new(inv: &'a ferry_inventory::Inventory) -> InventoryDoc<'a> {
        let files = inv
            .files()
            .iter()
            .map(|f| FileDoc {
                name: &f.name,
                rows: f.rows,
                bytes: f.bytes,
                digest: &f.digest,
            })
            .collect();
        InventoryDoc {
            counts: inv.counts(),
            files,
        }
    }
}

impl From<&Params> for ParamsDoc {
    fn from(p: &Params) -> ParamsDoc {
        ParamsDoc {
            constraints: p.constraints.iter().map(|c| c.name()).collect(),
            window: p.window.to_string(),
            window_s: p.window.seconds(),
            bandwidth_bytes_per_s: p.bandwidth,
            max_freeze_s: p.max_freeze,
            nights: p.nights,
            parallel: p.parallel,
            change_rate_per_day: p.change_rate * 86_400.0,
            scan_rate_bytes_per_s: p.scan_rate,
            walk_rate_files_per_s: p.walk_rate,
            copy_mode: p.copy_mode.map(|m| m.name()),
            freeze_per_file_s: p.freeze_per_file,
            db_check_rate_bytes_per_s: p.db_check_rate,
            freeze_overhead_s: p.freeze_overhead,
            precopy_overhead_s: p.precopy_overhead,
            precopy_per_file_s: p.precopy_per_file,
            lead_s: p.lead,
        }
    }
}

#[derive(Serialize)]
struct SummaryDoc {
    units: usize,
    scheduled_units: usize,
    impossible_units: usize,
    unscheduled_units: usize,
    nights: usize,
    complete: bool,
}

impl SummaryDoc {
    fn new(plan: &Plan<'_>) -> SummaryDoc {
        let impossible = plan.schedule.impossible();
        let unscheduled = plan.schedule.unscheduled();
        SummaryDoc {
            units: plan.partition.len(),
            scheduled_units: plan.partition.len() - impossible - unscheduled,
            impossible_units: impossible,
            unscheduled_units: unscheduled,
            nights: plan.schedule.nights.len(),
            complete: impossible + unscheduled == 0,
        }
    }
}

#[derive(Serialize)]
struct NightDoc {
    night: usize,
    opens_after_s: f64,
    units: Vec<String>,
    freeze_s: f64,
    busy_s: f64,
    window_s: f64,
    final_bytes: f64,
    precopy_bytes: f64,
    link_bytes_needed: f64,
    link_bytes_available: f64,
}

/// The `nights` list: each night's totals and its units in placement order.
fn serialize_nights<M: SerializeMap>(m: &mut M, plan: &Plan<'_>) -> Result<(), M::Error> {
    let sched = &plan.schedule;
    let mut by_night: Vec<Vec<(u32, u32)>> = vec![Vec::new(); sched.nights.len()];
    for (u, slot) in sched.slots.iter().enumerate() {
        if let Slot::Night { night, order, .. } = slot {
            by_night[*night as usize].push((*order, u as u32));
        }
    }
    for n in &mut by_night {
        n.sort_unstable();
    }
    let window_s = plan.params.window.seconds();
    let nights = Seq(|| {
        sched.nights.iter().enumerate().map(|(i, n)| NightDoc {
            night: i + 1,
            opens_after_s: n.opens_after_s,
            units: by_night[i].iter().map(|(_, u)| unit_label(*u)).collect(),
            freeze_s: r3(n.freeze_s),
            busy_s: r3(n.busy_s),
            window_s,
            final_bytes: n.final_bytes.round(),
            precopy_bytes: n.precopy_bytes.round(),
            link_bytes_needed: n.link_bytes_needed.round(),
            link_bytes_available: n.link_bytes_available.round(),
        })
    });
    m.serialize_entry("nights", &nights)
}

/// Observed uses by client addresses that are not hostings.
fn serialize_unattributed<M: SerializeMap>(m: &mut M, plan: &Plan<'_>) -> Result<(), M::Error> {
    let inv = plan.inventory();
    let uses = Seq(|| {
        inv.observed_uses().iter().filter_map(|o| match o.user {
            ferry_inventory::User::Client(c) => {
                let mut e = serde_json::Map::new();
                e.insert("database".into(), inv.database_name(o.database).into());
                e.insert("client".into(), inv.client_address(c).into());
                Some(e)
            }
            ferry_inventory::User::Hosting(_) => None,
        })
    });
    m.serialize_entry("unattributed_uses", &uses)
}

/// The whole document, in the order `docs/plan-format.md` shows it.
fn serialize_plan<S: Serializer>(plan: &Plan<'_>, s: S) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(None)?;
    m.serialize_entry("format", FORMAT_NAME)?;
    m.serialize_entry("version", &FORMAT_VERSION)?;
    m.serialize_entry("generator", &format!("ferry {}", env!("CARGO_PKG_VERSION")))?;
    m.serialize_entry("inventory", &InventoryDoc::new(plan.inventory()))?;
    m.serialize_entry("parameters", &ParamsDoc::from(&plan.params))?;
    m.serialize_entry("summary", &SummaryDoc::new(plan))?;
    let costs: Vec<ScenarioDoc> = plan.scenarios.iter().map(ScenarioDoc::from).collect();
    m.serialize_entry("constraint_costs", &costs)?;
    serialize_nights(&mut m, plan)?;
    let units = Seq(|| (0..plan.partition.len() as u32).map(|unit| UnitDoc { plan, unit }));
    m.serialize_entry("units", &units)?;
    serialize_unattributed(&mut m, plan)?;
    m.end()
}

/// Writes the whole plan as JSON to `w`.
pub(crate) fn write(plan: &Plan<'_>, w: impl Write) -> std::io::Result<()> {
    let mut ser = serde_json::Serializer::new(w);
    serialize_plan(plan, &mut ser).map_err(std::io::Error::other)?;
    let mut w = ser.into_inner();
    w.write_all(b"\n")?;
    w.flush()
}
