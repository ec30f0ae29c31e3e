//! The planner: from an inventory to units and night waves.
//!
//! - [`Partition`]: units as connected components of the dependency graph under
//!   a set of [`Constraints`] (union-find, linear), with each unit's
//!   [`UnitStats`] and predicted freeze. Databases used by no hosting are
//!   batched into units that share one freeze (at most
//!   [`MAX_BATCH_DATABASES`], within the freeze budget).
//! - [`schedule()`]: packs units into nights under the window, the bandwidth and
//!   the freeze budget ([`Params`]), each night's freezes spread over its lanes;
//!   a unit that cannot fit even alone is [`Slot::Impossible`], never scheduled.
//! - [`explain`]: the databases and IPs that glue volumes together ([`Glue`]) and
//!   what each constraint costs ([`Scenario`]).
//! - [`Plan`]: all of it for one run; [`Plan::write_json`] writes the versioned
//!   `plan.json` the orchestrator reads (`docs/plan-format.md`), [`Plan::dot`]
//!   draws units for Graphviz; [`summary`] says it all for people (text) and
//!   scripts (JSON).

#![forbid(unsafe_code)]

mod dot;
pub mod explain;
pub mod human;
mod members;
mod output;
mod params;
mod schedule;
pub mod summary;
mod units;

use ferry_inventory::{Inventory, Progress};

pub use explain::{Glue, IpGlue, Scenario, UseKind, Volume};
pub use members::Members;
pub use output::{FORMAT_NAME, FORMAT_VERSION};
pub use params::{
    parse_byte_rate, parse_change_rate, parse_count_rate, parse_duration, parse_short_duration,
    Constraint, Constraints, CopyMode, ParamError, Params, Window,
};
pub use schedule::{schedule, Impossible, Job, Night, Schedule, Slot};
pub use units::{Partition, Prepared, UnitStats, MAX_BATCH_DATABASES, NO_UNIT};

/// Which constraint made an impossible unit big: dropping it splits the unit
/// into `parts` units whose largest freezes `largest_part_freeze_s`.
#[derive(Debug, Clone, PartialEq)]
pub struct Blame {
    pub constraint: Constraint,
    pub parts: u32,
    pub largest_part_freeze_s: f64,
}

/// Why planning failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(
        "no unit matches {query:?} (give U<n>, or the name of a filer, hosting, database or site)"
    )]
    UnknownUnit { query: String },
}

/// One planning run: units, their schedule and the explanations.
pub struct Plan<'a> {
    pub prep: Prepared<'a>,
    pub params: Params,
    pub partition: Partition,
    pub schedule: Schedule,
    pub members: Members,
    pub glue: Vec<Glue>,
    pub ip_glue: Vec<IpGlue>,
    /// The chosen constraints first, then each constraint toggled.
    pub scenarios: Vec<Scenario>,
    /// For each unit: `Some` when it is impossible and a constraint is to blame.
    pub blame: Vec<Option<Blame>>,
}

impl<'a> Plan<'a> {
    /// Plans `inv` under `params`.
    pub fn build(
        inv: &'a Inventory,
        params: &Params,
        progress: &dyn Progress,
    ) -> Result<Plan<'a>, PlanError> {
        params.validate()?;
        let alternatives = explain::alternatives(params.constraints);
        progress.begin("computing units", 1 + alternatives.len() as u64);
        let prep = Prepared::new(inv);
        let partition = Partition::compute(&prep, params, params.constraints);
        let schedule = schedule::schedule(&explain::jobs(&partition, params), params);
        progress.advance(1);
        let run = |set: &[Constraints]| -> Vec<(Scenario, Option<Partition>)> {
            set.iter()
                .map(|&c| {
                    let (sc, p) = explain::scenario(&prep, params, c);
                    progress.advance(1);
                    // Keep only the finer partitions: they explain impossible units.
                    (sc, c.is_subset_of(params.constraints).then_some(p))
                })
                .collect()
        };
        let half = alternatives.len().div_ceil(2);
        let (a, b) = alternatives.split_at(half);
        // The alternatives are independent: two threads use both cores.
        let alt = std::thread::scope(|s| {
            let other = s.spawn(|| run(b));
            let mut mine = run(a);
            match other.join() {
                Ok(r) => mine.extend(r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
            mine
        });
        progress.end();

        let mut blame: Vec<Option<Blame>> = vec![None; partition.len()];
        for (_, child) in &alt {
            let Some(child) = child else { continue };
            let dropped = params
                .constraints
                .iter()
                .find(|c| !child.constraints.contains(*c));
            let Some(dropped) = dropped else { continue };
            let split = partition.split_by(child);
            for (u, slot) in schedule.slots.iter().enumerate() {
                if !matches!(slot, Slot::Impossible(_)) {
                    continue;
                }
                let (parts, largest) = split[u];
                if parts < 2 {
                    continue;
                }
                // The smallest largest part wins; on a tie, the constraint Ferry
                // can lift (ip by the router, observed-db by the tunnel) first.
                let rank = |c: Constraint| match c {
                    Constraint::Ip => 0,
                    Constraint::ObservedDb => 1,
                    Constraint::DeclaredDb => 2,
                    Constraint::Filer => 3,
                };
                let better = match &blame[u] {
                    None => true,
                    Some(b) => {
                        (largest, rank(dropped)) < (b.largest_part_freeze_s, rank(b.constraint))
                    }
                };
                if better {
                    blame[u] = Some(Blame {
                        constraint: dropped,
                        parts,
                        largest_part_freeze_s: largest,
                    });
                }
            }
        }
        let mut scenarios = vec![Scenario::of(&partition, &schedule)];
        scenarios.extend(alt.into_iter().map(|(s, _)| s));
        let glue = explain::glue(&prep, &partition);
        let ip_glue = explain::ip_glue(&prep, &partition);
        let members = Members::new(&prep, &partition);
        Ok(Plan {
            prep,
            params: *params,
            partition,
            schedule,
            members,
            glue,
            ip_glue,
            scenarios,
            blame,
        })
    }

    pub fn inventory(&self) -> &'a Inventory {
        self.prep.inv
    }

    /// The unit a query names: `U<n>` (1-based, as printed), or any filer,
    /// hosting, database (`name@server`) or site in it.
    pub fn find_unit(&self, query: &str) -> Result<u32, PlanError> {
        let inv = self.prep.inv;
        let p = &self.partition;
        let unknown = || PlanError::UnknownUnit {
            query: query.to_string(),
        };
        if let Some(n) = query
            .strip_prefix('U')
            .or_else(|| query.strip_prefix('u'))
            .and_then(|n| n.parse::<usize>().ok())
        {
            return if n >= 1 && n <= p.len() {
                Ok(n as u32 - 1)
            } else {
                Err(unknown())
            };
        }
        if let Some(f) = inv.find_filer(query) {
            let u = p.filer_unit(f);
            if u != NO_UNIT {
                return Ok(u);
            }
            // Without the filer constraint: the unit of its first hosting.
            if let Some(h) = inv.hosting_filers().iter().position(|x| *x == f) {
                return Ok(p.hosting_units()[h]);
            }
        }
        if let Some(h) = inv.find_hosting(query) {
            return Ok(p.hosting_unit(h));
        }
        if let Some(d) = inv.find_database(query) {
            return Ok(p.database_unit(d));
        }
        if let Some(s) = inv.find_site(query) {
            return Ok(p.hosting_unit(inv.site_hostings()[s.index()]));
        }
        Err(unknown())
    }

    /// Glue databases of one unit.
    pub fn unit_glue(&self, unit: u32) -> impl Iterator<Item = &Glue> + '_ {
        self.glue.iter().filter(move |g| g.unit == unit)
    }

    /// IPs gluing one unit.
    pub fn unit_ip_glue(&self, unit: u32) -> impl Iterator<Item = &IpGlue> + '_ {
        self.ip_glue.iter().filter(move |g| g.unit == unit)
    }

    /// Writes `plan.json` (see `docs/plan-format.md`).
    pub fn write_json(&self, w: impl std::io::Write) -> std::io::Result<()> {
        output::write(self, w)
    }

    /// Graphviz DOT text drawing `units` (0-based).
    pub fn dot(&self, units: &[u32]) -> String {
        dot::render(self, units)
    }
}
