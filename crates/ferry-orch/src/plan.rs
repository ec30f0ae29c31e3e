//! Reading `plan.json` (format `ferry-plan`, version 1, docs/plan-format.md):
//! only what the orchestrator needs. Unknown fields are ignored (the format
//! only grows); an unknown format or version is refused before anything runs.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::MigrateConfig;
use crate::error::{OrchError, Result};

#[derive(Clone, Debug, Deserialize)]
pub struct PlanHosting {
    pub name: String,
    pub filer: String,
    pub directory: String,
    #[serde(default)]
    pub sites: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PlanUnit {
    pub id: String,
    pub status: String,
    pub night: Option<u32>,
    pub lane: Option<u32>,
    pub order: Option<u32>,
    #[serde(default)]
    pub filers: Vec<String>,
    #[serde(default)]
    pub hostings: Vec<PlanHosting>,
    /// `name@server`: the databases that move with the unit, in the same freeze.
    #[serde(default)]
    pub databases: Vec<String>,
    /// The planner's freeze model for the unit (absent on impossible units
    /// and in older plans).
    #[serde(default)]
    pub freeze: Option<PlanFreeze>,
}

/// The part of a unit's `freeze` object the tracking page shows.
#[derive(Clone, Debug, Deserialize)]
pub struct PlanFreeze {
    /// The predicted freeze, seconds.
    pub total_s: f64,
}

impl PlanUnit {
    /// Every site of the unit, in plan order.
    pub fn sites(&self) -> Vec<String> {
        self.hostings
            .iter()
            .flat_map(|h| h.sites.iter().cloned())
            .collect()
    }

    /// The unit's databases grouped by server (`name@server`), servers and
    /// names in plan order; a name without `@server` is an error naming it.
    pub fn databases_by_server(&self) -> std::result::Result<Vec<(String, Vec<String>)>, String> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for d in &self.databases {
            let (name, server) = d
                .rsplit_once('@')
                .filter(|(n, s)| !n.is_empty() && !s.is_empty())
                .ok_or_else(|| format!("database {d:?}: expected NAME@SERVER"))?;
            match out.iter_mut().find(|(s, _)| s == server) {
                Some((_, v)) => {
                    if !v.iter().any(|x| x == name) {
                        v.push(name.to_string());
                    }
                }
                None => out.push((server.to_string(), vec![name.to_string()])),
            }
        }
        Ok(out)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Parameters {
    #[serde(default)]
    constraints: Vec<String>,
    /// The night's lanes the plan was made for (`--parallel` of `ferry plan`).
    #[serde(default)]
    parallel: Option<u32>,
}

#[derive(Deserialize)]
struct RawPlan {
    #[serde(default)]
    parameters: Parameters,
    #[serde(default)]
    units: Vec<PlanUnit>,
}

/// A loaded plan with the digest of its bytes (recorded in the journal).
#[derive(Clone, Debug)]
pub struct Plan {
    pub path: PathBuf,
    /// BLAKE3 of the file's bytes, hex.
    pub digest: String,
    /// The `filer` constraint was on: a unit moves whole filers (one copy job
    /// per filer); without it, one job per hosting directory.
    pub whole_filers: bool,
    /// The lanes of a night (`parameters.parallel`): how many units the
    /// runbook freezes at once unless told otherwise (`--parallel`).
    pub parallel: Option<u32>,
    pub units: Vec<PlanUnit>,
}

impl Plan {
    pub fn load(path: &Path) -> Result<Plan> {
        let bytes = std::fs::read(path).map_err(|e| OrchError::Plan {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        Plan::from_bytes(&bytes, path)
    }

    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Plan> {
        let err = |message: String| OrchError::Plan {
            path: path.to_path_buf(),
            message,
        };
        let head: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| err(format!("not JSON: {e}")))?;
        let format = head.get("format").and_then(|v| v.as_str());
        if format != Some("ferry-plan") {
            return Err(err(format!(
                "format {}: expected \"ferry-plan\"",
                format.map_or("missing".to_string(), |f| format!("{f:?}"))
            )));
        }
        let version = head.get("version").and_then(|v| v.as_u64());
        if version != Some(1) {
            return Err(err(format!(
                "version {}: this ferry reads version 1 only",
                head.get("version")
                    .map_or("missing".to_string(), |v| v.to_string())
            )));
        }
        let raw: RawPlan = serde_json::from_value(head).map_err(|e| err(format!("{e}")))?;
        let mut seen = std::collections::HashSet::new();
        for u in &raw.units {
            if !seen.insert(u.id.as_str()) {
                return Err(err(format!("unit {:?} appears twice", u.id)));
            }
        }
        Ok(Plan {
            path: path.to_path_buf(),
            digest: blake3::hash(bytes).to_hex().to_string(),
            whole_filers: raw.parameters.constraints.iter().any(|c| c == "filer"),
            parallel: raw.parameters.parallel.filter(|p| *p > 0),
            units: raw.units,
        })
    }

    pub fn unit(&self, id: &str) -> Option<&PlanUnit> {
        self.units.iter().find(|u| u.id == id)
    }

    /// The units to run: the scheduled ones in plan order (night, then order),
    /// or exactly `only` (any status) in that same order. An id that is not in
    /// the plan is an error naming it.
    pub fn select(&self, only: Option<&[String]>) -> Result<Vec<String>> {
        let mut picked: Vec<&PlanUnit> = match only {
            Some(ids) => {
                let mut v = Vec::new();
                for id in ids {
                    let u = self
                        .unit(id)
                        .ok_or_else(|| OrchError::UnknownUnit(id.clone()))?;
                    if !v.iter().any(|x: &&PlanUnit| x.id == u.id) {
                        v.push(u);
                    }
                }
                v
            }
            None => self
                .units
                .iter()
                .filter(|u| u.status == "scheduled")
                .collect(),
        };
        picked.sort_by_key(|u| (u.night.unwrap_or(u32::MAX), u.order.unwrap_or(u32::MAX)));
        Ok(picked.into_iter().map(|u| u.id.clone()).collect())
    }

    /// Every filer used by the `selected` units must have a `[filers.X]`
    /// table, every database server a `[db_servers.X]` table.
    pub fn check_against(&self, cfg: &MigrateConfig, selected: &[String]) -> Result<()> {
        for id in selected {
            let Some(u) = self.unit(id) else {
                return Err(OrchError::UnknownUnit(id.clone()));
            };
            let used = u.filers.iter().chain(u.hostings.iter().map(|h| &h.filer));
            for f in used {
                if !cfg.filers.contains_key(f) {
                    return Err(OrchError::Plan {
                        path: self.path.clone(),
                        message: format!(
                            "unit {id} uses filer {f:?}, which {} does not describe (add a [filers.{f}] table)",
                            cfg.path.display()
                        ),
                    });
                }
            }
            let by_server = u.databases_by_server().map_err(|m| OrchError::Plan {
                path: self.path.clone(),
                message: format!("unit {id}: {m}"),
            })?;
            for (server, _) in &by_server {
                if !cfg.db_servers.contains_key(server) {
                    return Err(OrchError::Plan {
                        path: self.path.clone(),
                        message: format!(
                            "unit {id} uses database server {server:?}, which {} does not describe (add a [db_servers.{server}] table)",
                            cfg.path.display()
                        ),
                    });
                }
            }
            if !self.whole_filers {
                for h in &u.hostings {
                    let f = &cfg.filers[&h.filer];
                    if f.source.starts_with("ferry://") || f.destination.starts_with("ferry://") {
                        return Err(OrchError::Plan {
                            path: self.path.clone(),
                            message: format!(
                                "unit {id}: hosting {:?} is copied by directory (no `filer` constraint), which ferry:// filers do not support yet",
                                h.name
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}
