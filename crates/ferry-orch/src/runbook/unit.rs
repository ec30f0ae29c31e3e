//! A plan unit as the runbook sees it in one direction: its sites, its
//! copy jobs, its database movers, where it comes from and goes to.

use std::path::PathBuf;

use super::Orchestrator;
use crate::config::{self, FilerSpec};
use crate::dbmove::{self, DbGroup};
use crate::error::{OrchError, Result};
use crate::plan::PlanUnit;
use crate::router::RouterClient;
use crate::status::Direction;

/// One copy job: a whole filer, or one hosting's directory under its filer.
#[derive(Clone, Debug)]
pub(super) struct Job {
    pub(super) label: String,
    pub(super) from: String,
    pub(super) to: String,
    pub(super) key: Option<[u8; 32]>,
}

/// A unit as the runbook sees it, in one direction.
pub(super) struct Unit {
    pub(super) id: String,
    pub(super) sites: Vec<String>,
    pub(super) jobs: Vec<Job>,
    /// One database mover per server the unit's databases live on.
    pub(super) dbs: Vec<DbGroup>,
    pub(super) dir: Direction,
    pub(super) from_dc: String,
    pub(super) to_dc: String,
    pub(super) from_pool: String,
    pub(super) to_pool: String,
    /// One record per site shared by every router (etcd):
    /// `MigrateConfig::placement`.
    pub(super) shared_records: bool,
}

impl Unit {
    /// The placement a router gives the unit's sites while they live at the source.
    pub(super) fn source_placement(&self, r: &RouterClient) -> String {
        let dc = &r.spec.datacenter;
        config::placement(self.shared_records, dc, &self.from_dc, &self.from_pool)
    }

    /// The placement after the flip.
    pub(super) fn dest_placement(&self, r: &RouterClient) -> String {
        let dc = &r.spec.datacenter;
        config::placement(self.shared_records, dc, &self.to_dc, &self.to_pool)
    }
}

impl Orchestrator {
    /// The plan's unit `id`, moving in direction `dir`.
    pub(super) fn unit(&self, id: &str, dir: Direction) -> Result<Unit> {
        let pu = self
            .plan
            .unit(id)
            .ok_or_else(|| OrchError::UnknownUnit(id.to_string()))?;
        let (from_dc, to_dc) = match dir {
            Direction::Forward => (self.cfg.source.clone(), self.cfg.destination.clone()),
            Direction::Reverse => (self.cfg.destination.clone(), self.cfg.source.clone()),
        };
        Ok(Unit {
            id: id.to_string(),
            sites: pu.sites(),
            jobs: self.copy_jobs(pu, dir)?,
            dbs: self.db_groups(pu, dir)?,
            dir,
            from_pool: self.cfg.pool_of(&from_dc).to_string(),
            to_pool: self.cfg.pool_of(&to_dc).to_string(),
            from_dc,
            to_dc,
            shared_records: self.cfg.shared_records(),
        })
    }

    /// One job per filer of the unit (a plan of whole filers), else one per
    /// hosting directory.
    fn copy_jobs(&self, pu: &PlanUnit, dir: Direction) -> Result<Vec<Job>> {
        let id = &pu.id;
        let mut jobs = Vec::new();
        let side = |f: &FilerSpec| match dir {
            Direction::Forward => (f.source.clone(), f.destination.clone()),
            Direction::Reverse => (f.destination.clone(), f.source.clone()),
        };
        if self.plan.whole_filers {
            for name in unit_filers(pu) {
                let f = self.filer(id, &name)?;
                let (from, to) = side(f);
                jobs.push(Job {
                    label: format!("filer {name}"),
                    from,
                    to,
                    key: f.key,
                });
            }
        } else {
            for h in &pu.hostings {
                let f = self.filer(id, &h.filer)?;
                let (from, to) = side(f);
                let rel = h.directory.trim_start_matches('/');
                let join =
                    |root: &str| PathBuf::from(root).join(rel).to_string_lossy().into_owned();
                jobs.push(Job {
                    label: format!("hosting {} ({}:{})", h.name, h.filer, h.directory),
                    from: join(&from),
                    to: join(&to),
                    key: f.key,
                });
            }
        }
        Ok(jobs)
    }

    /// One database mover per server the unit's databases live on.
    fn db_groups(&self, pu: &PlanUnit, dir: Direction) -> Result<Vec<DbGroup>> {
        let id = &pu.id;
        let mut dbs = Vec::new();
        let by_server = pu
            .databases_by_server()
            .map_err(|message| OrchError::Unit {
                unit: id.to_string(),
                message,
            })?;
        for (server, databases) in by_server {
            let spec = self
                .cfg
                .db_servers
                .get(&server)
                .ok_or_else(|| OrchError::Unit {
                    unit: id.to_string(),
                    message: format!(
                        "database server {server:?} has no [db_servers.{server}] in the config"
                    ),
                })?;
            let (from_url, to_url) = match dir {
                Direction::Forward => (spec.source.clone(), spec.destination.clone()),
                Direction::Reverse => (spec.destination.clone(), spec.source.clone()),
            };
            dbs.push(DbGroup {
                state_path: dbmove::state_path(
                    self.journal.path(),
                    id,
                    &server,
                    dir == Direction::Reverse,
                ),
                forward_state: (dir == Direction::Reverse)
                    .then(|| dbmove::state_path(self.journal.path(), id, &server, false)),
                server,
                databases,
                from_url,
                to_url,
            });
        }
        Ok(dbs)
    }

    fn filer(&self, unit: &str, name: &str) -> Result<&FilerSpec> {
        self.cfg.filers.get(name).ok_or_else(|| OrchError::Unit {
            unit: unit.to_string(),
            message: format!("filer {name:?} has no [filers.{name}] in the config"),
        })
    }
}

/// The filers a unit names (its own list, else its hostings').
pub(crate) fn unit_filers(u: &PlanUnit) -> Vec<String> {
    let mut v: Vec<String> = u.filers.clone();
    for h in &u.hostings {
        if !v.contains(&h.filer) {
            v.push(h.filer.clone());
        }
    }
    v
}
