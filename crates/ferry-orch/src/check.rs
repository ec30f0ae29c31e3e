//! `ferry migrate check` (and `ferry migrate run --dry-run`): everything a
//! run of the selected units would need, asked without changing anything.
//! Each check is one [`CheckLine`]: what, where, its [`Verdict`], why, and
//! how to fix it. [`check`] returns them all (a failed check does not stop
//! the others: an operator fixes everything in one round).
//!
//! What "changing nothing" means here: no journal is created (its directory
//! is asked with `access(2)`), routers are only read (`GET /v1/status`, the
//! sites' query), agents are opened and scanned for no path (a volume opened
//! for writing is only checked by the handshake, nothing is sent), and the
//! database servers are asked the mover's preconditions through
//! [`ferry_db::Mover::check`], which writes no state file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_admin_api::sites::QueriedSite;
use ferry_admin_api::{AdminClient, AdminError, Http};
use ferry_sync::Tree as _;
use serde::{Deserialize, Serialize};

use crate::config::{FilerSpec, RouterSpec};
use crate::dbmove;
use crate::plan::PlanUnit;
use crate::runbook::RunInputs;

/// The largest epoch a router's site table holds (46 bits of the slot word).
const MAX_EPOCH: u64 = (1 << 46) - 1;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    /// The run would fail here.
    Failed,
    /// Could not be asked (said why); does not fail the check.
    Unchecked,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Failed => "FAILED",
            Verdict::Unchecked => "unchecked",
        }
    }
}

/// One check's answer.
#[derive(Clone, Debug, Serialize)]
pub struct CheckLine {
    /// What was checked: `plan`, `journal`, `router`, `sites`, `filer`,
    /// `room`, `database`, `freeze`.
    pub what: String,
    /// Where: a router, a filer side, a database server, a unit.
    pub at: String,
    pub verdict: Verdict,
    /// What was found.
    pub why: String,
    /// How to fix it (empty when ok).
    pub fix: String,
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<9} {:<24} {:<9} {}",
            self.what,
            self.at,
            self.verdict.as_str(),
            self.why
        )?;
        if !self.fix.is_empty() {
            write!(f, "; fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// Every check's line, in the order they were asked.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub lines: Vec<CheckLine>,
}

impl CheckReport {
    /// Could the night run: no check failed.
    pub fn ok(&self) -> bool {
        self.failed().next().is_none()
    }

    pub fn failed(&self) -> impl Iterator<Item = &CheckLine> {
        self.lines.iter().filter(|l| l.verdict == Verdict::Failed)
    }

    fn push(
        &mut self,
        what: &str,
        at: impl Into<String>,
        verdict: Verdict,
        why: String,
        fix: &str,
    ) {
        self.lines.push(CheckLine {
            what: what.into(),
            at: at.into(),
            verdict,
            why,
            fix: if verdict == Verdict::Ok {
                String::new()
            } else {
                fix.into()
            },
        });
    }
}

/// What the check is told besides the config and the plan.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// The journal a run would create.
    pub journal: PathBuf,
    /// Bound of each router and agent call.
    pub timeout: Duration,
    /// Time a bounded read from each filer's source (at most
    /// [`LINK_SAMPLE`] bytes, at most `timeout`) and predict each unit's
    /// pre-copy and final copy at that rate.
    pub measure_link: bool,
}

/// Most bytes `measure_link` reads from one filer.
pub const LINK_SAMPLE: u64 = 64 << 20;

/// The plan's numbers for one unit the orchestrator's [`PlanUnit`] does not
/// keep (read again from the file: the check alone needs them).
#[derive(Default, Deserialize)]
struct UnitNumbers {
    id: String,
    #[serde(default)]
    size: Option<Size>,
    #[serde(default)]
    freeze: Option<FreezeNumbers>,
}

#[derive(Default, Deserialize)]
struct Size {
    #[serde(default)]
    file_bytes: u64,
}

#[derive(Default, Deserialize)]
struct FreezeNumbers {
    #[serde(default)]
    total_s: f64,
    #[serde(default)]
    final_copy_s: f64,
    #[serde(default)]
    final_bytes: f64,
    #[serde(default)]
    db_check_s: f64,
}

#[derive(Deserialize)]
struct PlanNumbers {
    #[serde(default)]
    units: Vec<UnitNumbers>,
}

/// Runs every check for the units `inputs` selected. The config and the
/// plan were read and matched by [`RunInputs::load`] already (its errors
/// are usage errors, before any check).
pub async fn check(inputs: &RunInputs, opts: &CheckOptions) -> CheckReport {
    let mut r = CheckReport::default();
    let units: Vec<&PlanUnit> = inputs
        .selected
        .iter()
        .filter_map(|id| inputs.plan.unit(id))
        .collect();
    plan_line(&mut r, inputs, &units);
    journal(&mut r, &opts.journal);
    let numbers = plan_numbers(&inputs.plan.path);
    routers(&mut r, inputs, &units, opts.timeout).await;
    filers(&mut r, inputs, &units, &numbers, opts.timeout).await;
    databases(&mut r, inputs, &units, &opts.journal).await;
    freezes(&mut r, inputs, &units, &numbers);
    if opts.measure_link {
        link(&mut r, inputs, &units, &numbers, opts.timeout).await;
    }
    r
}

fn plan_line(r: &mut CheckReport, inputs: &RunInputs, units: &[&PlanUnit]) {
    let sites: usize = units.iter().map(|u| u.sites().len()).sum();
    let filers: BTreeSet<String> = units
        .iter()
        .flat_map(|u| crate::runbook::unit_filers(u))
        .collect();
    let ids: Vec<&str> = units.iter().map(|u| u.id.as_str()).collect();
    let verdict = if units.is_empty() {
        Verdict::Failed
    } else {
        Verdict::Ok
    };
    r.push(
        "plan",
        inputs.plan.path.display().to_string(),
        verdict,
        format!(
            "digest {}, {} unit(s) to run ({}), {sites} sites, filers {}; every filer and database server is in {}",
            &inputs.plan.digest[..16.min(inputs.plan.digest.len())],
            units.len(),
            ids.join(", "),
            filers.into_iter().collect::<Vec<_>>().join(", "),
            inputs.cfg.path.display()
        ),
        "the plan schedules no unit: run `ferry plan` again, or name units with --only",
    );
}

/// The journal must not hold a run, and its directory must take a new
/// file: asked with access(2), so nothing is created.
fn journal(r: &mut CheckReport, path: &Path) {
    let at = path.display().to_string();
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => {
            r.push(
                "journal",
                at,
                Verdict::Failed,
                "exists already (a run would refuse a journal that holds a run)".into(),
                "give --journal a new path, or `ferry migrate resume` that run",
            );
            return;
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            r.push(
                "journal",
                at,
                Verdict::Failed,
                format!("cannot be read: {e}"),
                "check the path and its permissions",
            );
            return;
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match rustix::fs::access(&dir, rustix::fs::Access::WRITE_OK) {
        Ok(()) => r.push(
            "journal",
            at,
            Verdict::Ok,
            format!("{} takes a new file", dir.display()),
            "",
        ),
        Err(e) => r.push(
            "journal",
            at,
            Verdict::Failed,
            format!("{} cannot take a new file: {e}", dir.display()),
            "create the directory, or make it writable by the orchestrator's user",
        ),
    }
}

fn plan_numbers(path: &Path) -> BTreeMap<String, UnitNumbers> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<PlanNumbers>(&b).ok())
        .map(|p| p.units.into_iter().map(|u| (u.id.clone(), u)).collect())
        .unwrap_or_default()
}

/// Each router: reachable, the token accepted (`GET /v1/status`); then the
/// units' sites: known to the source routers (prepare refuses a unit
/// otherwise), with epochs the run can go past (it sends 1 + the highest
/// epoch any router reports, the rule of runbook/fencing.rs).
async fn routers(r: &mut CheckReport, inputs: &RunInputs, units: &[&PlanUnit], timeout: Duration) {
    let http = Http::new();
    let cfg = &inputs.cfg;
    for spec in &cfg.routers {
        let api = client(spec, &http, timeout);
        match api.status().await {
            Ok(_) => r.push(
                "router",
                spec.name.as_str(),
                Verdict::Ok,
                format!("{} answered GET /v1/status with the token", spec.admin),
                "",
            ),
            Err(e) => {
                let fix = router_fix(&e);
                r.push(
                    "router",
                    spec.name.as_str(),
                    Verdict::Failed,
                    e.to_string(),
                    fix,
                );
                continue;
            }
        }
        for u in units {
            let sites = u.sites();
            if sites.is_empty() {
                continue;
            }
            let mut found = Vec::with_capacity(sites.len());
            let mut failed = None;
            for chunk in sites.chunks(crate::router::QUERY_CHUNK) {
                match api.query(chunk).await {
                    Ok(list) => found.extend(list),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let at = format!("{} {}", spec.name, u.id);
            if let Some(e) = failed {
                let fix = router_fix(&e);
                r.push("sites", at, Verdict::Failed, e.to_string(), fix);
                continue;
            }
            sites_line(r, at, spec, cfg, &found);
        }
    }
}

fn client(spec: &RouterSpec, http: &Http, timeout: Duration) -> AdminClient {
    AdminClient::new(spec.name.clone(), &spec.admin, Some(&spec.token))
        .with_http(http.clone())
        .with_timeout(timeout)
}

fn router_fix(e: &AdminError) -> &'static str {
    match e.status() {
        Some(401) | Some(403) => {
            "the router refused the token: set [[routers]] token to the router's [admin] token"
        }
        Some(_) => "see the router's answer; is `admin` the router's admin listener?",
        None => "start the router, or correct [[routers]] admin (http://HOST:PORT of its admin listener)",
    }
}

fn sites_line(
    r: &mut CheckReport,
    at: String,
    spec: &RouterSpec,
    cfg: &crate::config::MigrateConfig,
    found: &[QueriedSite],
) {
    // The placements the runbook gives this router's sites before and
    // after the flip (as runbook/unit.rs decides them).
    let placement = |dc: &str| {
        if spec.datacenter == dc {
            format!("pool:{}", cfg.pool_of(dc))
        } else {
            format!("remote:{dc}")
        }
    };
    let moved_to = placement(&cfg.destination);
    let mut absent = Vec::new();
    let mut moved = Vec::new();
    let mut frozen = Vec::new();
    let mut max = 0u64;
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    for q in found {
        match q {
            QueriedSite::Present(s) => {
                max = max.max(s.epoch);
                *states.entry(s.state.as_str()).or_default() += 1;
                if s.placement == moved_to {
                    moved.push(s.host.as_str());
                }
                if s.state == ferry_model::SiteState::Frozen {
                    frozen.push(s.host.as_str());
                }
            }
            QueriedSite::Absent(a) => absent.push(a.host.as_str()),
        }
    }
    let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let shown = |v: &[&str]| v.iter().take(10).copied().collect::<Vec<_>>().join(", ");
    if !moved.is_empty() {
        r.push(
            "sites",
            at,
            Verdict::Failed,
            format!(
                "{} site(s) already served from the destination ({moved_to}): {}; prepare would send them back to the source first",
                moved.len(),
                shown(&moved)
            ),
            "leave the unit out (--only), or plan again from the current inventory",
        );
        return;
    }
    if !frozen.is_empty() {
        r.push(
            "sites",
            at,
            Verdict::Failed,
            format!(
                "{} site(s) frozen: {}; another run is under way or stopped in its freeze",
                frozen.len(),
                shown(&frozen)
            ),
            "let that run end (`ferry migrate status`), or resume and roll it back",
        );
        return;
    }
    if spec.datacenter == cfg.source && !absent.is_empty() {
        r.push(
            "sites",
            at,
            Verdict::Failed,
            format!(
                "the source router does not know {} site(s) of the unit: {}",
                absent.len(),
                shown(&absent)
            ),
            "add the sites to the source routers (their config or PUT /v1/sites), or run `ferry plan` on the current inventory",
        );
        return;
    }
    if max >= MAX_EPOCH {
        r.push(
            "sites",
            at,
            Verdict::Failed,
            format!("epoch {max}: the run's next epoch would not fit a router's 46 bits"),
            "nothing a run can do: these sites' epochs are exhausted",
        );
        return;
    }
    let learn = if absent.is_empty() {
        String::new()
    } else {
        format!(", {} to learn at prepare", absent.len())
    };
    r.push(
        "sites",
        at,
        Verdict::Ok,
        format!(
            "{} known ({}){learn}; highest epoch {max}, the run sends {} or more",
            found.len() - absent.len(),
            if states.is_empty() {
                "none".into()
            } else {
                states.join(", ")
            },
            max + 1
        ),
        "",
    );
}

/// Each filer the units use: its source readable, its destination
/// writable, and room at a local destination.
async fn filers(
    r: &mut CheckReport,
    inputs: &RunInputs,
    units: &[&PlanUnit],
    numbers: &BTreeMap<String, UnitNumbers>,
    timeout: Duration,
) {
    let mut bytes: BTreeMap<String, u64> = BTreeMap::new();
    for u in units {
        let b = numbers
            .get(&u.id)
            .and_then(|n| n.size.as_ref())
            .map_or(0, |s| s.file_bytes);
        for f in crate::runbook::unit_filers(u) {
            *bytes.entry(f).or_default() += b;
        }
    }
    for (name, need) in &bytes {
        let Some(spec) = inputs.cfg.filers.get(name) else {
            continue; // RunInputs::load checked every filer is described
        };
        let src = side(name, spec, &spec.source, false, timeout).await;
        r.lines.push(src);
        let dst = side(name, spec, &spec.destination, true, timeout).await;
        let dst_ok = dst.verdict == Verdict::Ok;
        r.lines.push(dst);
        if dst_ok {
            room(r, name, &spec.destination, *need);
        }
    }
}

/// One side of a filer: an agent's volume opened with the key (for
/// writing at the destination: the agent refuses a read-only volume at the
/// handshake) and scanned for no path; a local directory read.
async fn side(name: &str, spec: &FilerSpec, at: &str, dest: bool, timeout: Duration) -> CheckLine {
    let which = if dest { "destination" } else { "source" };
    let line = |verdict, why: String, fix: &str| CheckLine {
        what: "filer".into(),
        at: format!("{name} {which}"),
        verdict,
        why,
        fix: if verdict == Verdict::Ok {
            String::new()
        } else {
            fix.into()
        },
    };
    let endpoint = match ferry_sync::Endpoint::parse(at) {
        Ok(e) => e,
        Err(e) => {
            return line(
                Verdict::Failed,
                e.to_string(),
                "correct the filer's address",
            )
        }
    };
    match endpoint {
        ferry_sync::Endpoint::Remote { host, port, volume } => {
            let Some(key) = spec.key else {
                return line(
                    Verdict::Failed,
                    format!("{at}: no key to open the agent's volume"),
                    "set [filers.NAME] key or key_file to the agents' pre-shared key",
                );
            };
            let shown = at.to_string();
            let asked = tokio::task::spawn_blocking(move || {
                let d = ferry_sync::Deadlines {
                    connect: timeout,
                    handshake: timeout,
                    idle: timeout,
                };
                let t = ferry_sync::RemoteTree::connect_with(&host, port, &volume, &key, dest, &d)?;
                t.scan_paths(&BTreeSet::new(), &ferry_sync::ScanOptions::default())
                    .map(|_| ())
            })
            .await;
            match asked {
                Ok(Ok(())) => line(
                    Verdict::Ok,
                    format!(
                        "{shown}: the agent took the key and opened the volume{}",
                        if dest { " for writing" } else { "" }
                    ),
                    "",
                ),
                Ok(Err(e)) => {
                    let fix = match &e {
                        ferry_sync::SyncError::Auth(_) => {
                            "the agent refused the key: set [filers.NAME] key to the agent's key"
                        }
                        ferry_sync::SyncError::Net { .. } => {
                            "start the agent (`ferry agent`), or correct the filer's ferry://HOST:PORT"
                        }
                        _ => "see the agent's answer (volume name, read_only in its agent.toml)",
                    };
                    line(Verdict::Failed, format!("{shown}: {e}"), fix)
                }
                Err(e) => line(
                    Verdict::Failed,
                    format!("{shown}: the check stopped: {e}"),
                    "run the check again",
                ),
            }
        }
        ferry_sync::Endpoint::Local(path) => {
            if !dest {
                return match std::fs::read_dir(&path) {
                    Ok(_) => line(
                        Verdict::Ok,
                        format!("{} is a readable directory", path.display()),
                        "",
                    ),
                    Err(e) => line(
                        Verdict::Failed,
                        format!("{}: {e}", path.display()),
                        "correct the filer's source path, or mount it here",
                    ),
                };
            }
            // The run creates the directory at prepare: its nearest
            // existing ancestor must take it.
            let Some(existing) = nearest_existing(&path) else {
                return line(
                    Verdict::Failed,
                    format!("{}: no part of the path exists", path.display()),
                    "correct the filer's destination path",
                );
            };
            match rustix::fs::access(&existing, rustix::fs::Access::WRITE_OK) {
                Ok(()) => line(
                    Verdict::Ok,
                    format!("{} is writable", existing.display()),
                    "",
                ),
                Err(e) => line(
                    Verdict::Failed,
                    format!("{} is not writable: {e}", existing.display()),
                    "make it writable by the orchestrator's user",
                ),
            }
        }
    }
}

fn nearest_existing(path: &Path) -> Option<PathBuf> {
    let mut p = path;
    loop {
        if p.exists() {
            return Some(p.to_path_buf());
        }
        p = p.parent()?;
        if p.as_os_str().is_empty() {
            return Some(PathBuf::from("."));
        }
    }
}

/// Free space at a local destination against the bytes of the units that
/// use the filer (the plan counts bytes per unit, not per filer: for a unit
/// of several filers this asks for more than the filer needs). An agent's
/// volume cannot be asked: the sync protocol has no free-space query.
fn room(r: &mut CheckReport, name: &str, at: &str, need: u64) {
    let at_name = format!("{name} destination");
    let ferry_sync::Endpoint::Local(path) =
        ferry_sync::Endpoint::parse(at).unwrap_or(ferry_sync::Endpoint::Local(PathBuf::new()))
    else {
        r.push(
            "room",
            at_name,
            Verdict::Unchecked,
            format!("the units need {need} bytes; the agent protocol has no free-space query"),
            "check the free space on the destination filer by hand (df)",
        );
        return;
    };
    let Some(existing) = nearest_existing(&path) else {
        return;
    };
    match rustix::fs::statvfs(&existing) {
        Ok(s) => {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            let verdict = if free >= need {
                Verdict::Ok
            } else {
                Verdict::Failed
            };
            r.push(
                "room",
                at_name,
                verdict,
                format!(
                    "{free} bytes free at {}, the units need {need}",
                    existing.display()
                ),
                "free space at the destination, or move fewer units (--only)",
            );
        }
        Err(e) => r.push(
            "room",
            at_name,
            Verdict::Unchecked,
            format!("statvfs {}: {e}", existing.display()),
            "check the free space by hand (df)",
        ),
    }
}

/// Each unit's database servers: the mover's preconditions on both
/// servers ([`ferry_db::Mover::check`]: reads, writes no state file).
async fn databases(r: &mut CheckReport, inputs: &RunInputs, units: &[&PlanUnit], journal: &Path) {
    let journal = std::path::absolute(journal).unwrap_or_else(|_| journal.to_path_buf());
    for u in units {
        let Ok(groups) = u.databases_by_server() else {
            continue; // RunInputs::load checked the names
        };
        for (server, dbs) in groups {
            let at = format!("{server} {}", u.id);
            let Some(spec) = inputs.cfg.db_servers.get(&server) else {
                continue; // checked by RunInputs::load
            };
            let state_path = dbmove::state_path(&journal, &u.id, &server, false);
            if state_path.exists() {
                r.push(
                    "database",
                    at,
                    Verdict::Failed,
                    format!(
                        "{} exists: a move of these databases was started",
                        state_path.display()
                    ),
                    "resume that run, or remove the state file if that move was undone",
                );
                continue;
            }
            let line = db_check(
                &spec.source,
                &spec.destination,
                &dbs,
                state_path,
                &inputs.cfg.db,
            )
            .await;
            match line {
                Ok(why) => r.push("database", at, Verdict::Ok, why, ""),
                Err(e) => {
                    let fix = db_fix(&e);
                    r.push("database", at, Verdict::Failed, e.to_string(), &fix);
                }
            }
        }
    }
}

async fn db_check(
    from: &str,
    to: &str,
    dbs: &[String],
    state_path: PathBuf,
    s: &crate::config::DbSettings,
) -> ferry_db::Result<String> {
    let mut cfg = ferry_db::MoverConfig::new(from, to, dbs.to_vec(), state_path)?;
    cfg.workers = s.workers;
    cfg.dest_binlog = s.dest_binlog;
    let mut m = ferry_db::Mover::open(cfg).await?;
    let report = m.check().await?;
    let mut why = format!(
        "{}: preconditions hold ({} bytes, {} account(s))",
        dbs.join(", "),
        report.source_bytes,
        report.accounts.len()
    );
    for w in report.warnings.iter().take(3) {
        why.push_str(&format!("; warning: {w}"));
    }
    Ok(why)
}

fn db_fix(e: &ferry_db::Error) -> String {
    match e {
        ferry_db::Error::DatabaseMissing { .. } => {
            "the database is not at the source: run `ferry plan` on the current inventory".into()
        }
        ferry_db::Error::DatabaseExists { .. } => {
            "drop or rename the destination's copy (or move a unit without it)".into()
        }
        ferry_db::Error::Preconditions { problems } => problems
            .iter()
            .map(|p| p.fix.clone())
            .collect::<Vec<_>>()
            .join("; "),
        _ => "check [db_servers.NAME] source/destination URLs and that both servers are up".into(),
    }
}

/// Each unit's predicted freeze (the planner's model) against the
/// configured `max_freeze`: past it the runbook would abandon the freeze.
fn freezes(
    r: &mut CheckReport,
    inputs: &RunInputs,
    units: &[&PlanUnit],
    numbers: &BTreeMap<String, UnitNumbers>,
) {
    let max = inputs.cfg.freeze.max_freeze.as_secs_f64();
    for u in units {
        let Some(f) = numbers.get(&u.id).and_then(|n| n.freeze.as_ref()) else {
            r.push(
                "freeze",
                u.id.as_str(),
                Verdict::Unchecked,
                "the plan has no freeze model for this unit".into(),
                "plan again with a current `ferry plan`",
            );
            continue;
        };
        let verdict = if f.total_s <= max {
            Verdict::Ok
        } else {
            Verdict::Failed
        };
        r.push(
            "freeze",
            u.id.as_str(),
            verdict,
            format!(
                "predicted {:.1} s (final copy {:.1} s, database check {:.1} s), max_freeze {:.0} s",
                f.total_s, f.final_copy_s, f.db_check_s, max
            ),
            "raise [freeze] max_freeze, or plan with a smaller --max-freeze so the unit is split",
        );
    }
}

/// `--measure-link`: per filer, the rate of a bounded read of the units'
/// hosting directories from its source (files of at most [`LINK_SAMPLE`]
/// bytes, until that many were read or `timeout` passed); per unit, its
/// pre-copy and final copy at the slowest rate of its filers, and its
/// freeze with that final copy against `max_freeze`.
async fn link(
    r: &mut CheckReport,
    inputs: &RunInputs,
    units: &[&PlanUnit],
    numbers: &BTreeMap<String, UnitNumbers>,
    timeout: Duration,
) {
    let mut dirs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for u in units {
        for h in &u.hostings {
            dirs.entry(h.filer.clone())
                .or_default()
                .insert(h.directory.trim_matches('/').to_string());
        }
    }
    let mut rates: BTreeMap<String, f64> = BTreeMap::new();
    for (name, dirs) in dirs {
        let Some(spec) = inputs.cfg.filers.get(&name) else {
            continue;
        };
        let at = format!("{name} source");
        let (source, key) = (spec.source.clone(), spec.key);
        let sampled =
            tokio::task::spawn_blocking(move || sample(&source, key, &dirs, timeout)).await;
        match sampled {
            Ok(Ok((bytes, took))) if bytes > 0 => {
                let rate = bytes as f64 / took.as_secs_f64().max(1e-6);
                rates.insert(name.clone(), rate);
                r.push(
                    "link",
                    at,
                    Verdict::Ok,
                    format!(
                        "read {bytes} bytes in {:.2} s: {:.0} bytes/s from {}",
                        took.as_secs_f64(),
                        rate,
                        spec.source
                    ),
                    "",
                );
            }
            Ok(Ok(_)) => r.push(
                "link",
                at,
                Verdict::Unchecked,
                "no file to read in the units' directories".into(),
                "nothing to do: there is nothing to copy either",
            ),
            Ok(Err(e)) => r.push(
                "link",
                at,
                Verdict::Failed,
                format!("reading from {}: {e}", spec.source),
                "see the filer's line above",
            ),
            Err(e) => r.push(
                "link",
                at,
                Verdict::Failed,
                format!("the read stopped: {e}"),
                "run the check again",
            ),
        }
    }
    let max = inputs.cfg.freeze.max_freeze.as_secs_f64();
    for u in units {
        let Some(rate) = crate::runbook::unit_filers(u)
            .iter()
            .filter_map(|f| rates.get(f).copied())
            .reduce(f64::min)
        else {
            continue;
        };
        let n = numbers.get(&u.id);
        let file_bytes = n.and_then(|n| n.size.as_ref()).map_or(0, |s| s.file_bytes);
        let Some(f) = n.and_then(|n| n.freeze.as_ref()) else {
            continue;
        };
        let final_s = f.final_bytes / rate;
        let freeze_s = f.total_s - f.final_copy_s + final_s;
        let verdict = if freeze_s <= max {
            Verdict::Ok
        } else {
            Verdict::Failed
        };
        r.push(
            "timeline",
            u.id.as_str(),
            verdict,
            format!(
                "at the measured {rate:.0} bytes/s: pre-copy {:.1} s, final copy {final_s:.1} s (planned {:.1} s), freeze {freeze_s:.1} s (planned {:.1} s, max_freeze {max:.0} s)",
                file_bytes as f64 / rate,
                f.final_copy_s,
                f.total_s
            ),
            "the link is slower than the plan assumed: plan again with the measured --bandwidth",
        );
    }
}

/// Reads whole files of `dirs` from `source` until [`LINK_SAMPLE`] bytes
/// or `timeout`: (bytes read, time taken by the reads).
fn sample(
    source: &str,
    key: Option<[u8; 32]>,
    dirs: &BTreeSet<String>,
    timeout: Duration,
) -> ferry_sync::Result<(u64, Duration)> {
    let tree: Box<dyn ferry_sync::Source> = match ferry_sync::Endpoint::parse(source)? {
        ferry_sync::Endpoint::Local(p) => Box::new(ferry_sync::LocalTree::new(p)),
        ferry_sync::Endpoint::Remote { host, port, volume } => {
            let key = key.ok_or_else(|| ferry_sync::SyncError::Auth("no key".into()))?;
            let d = ferry_sync::Deadlines {
                connect: timeout,
                handshake: timeout,
                idle: timeout,
            };
            Box::new(ferry_sync::RemoteTree::connect_with(
                &host, port, &volume, &key, false, &d,
            )?)
        }
    };
    let paths = dirs
        .iter()
        .filter(|d| !d.is_empty())
        .map(|d| ferry_sync::RelPath::new(d.as_bytes().to_vec()))
        .collect::<ferry_sync::Result<BTreeSet<_>>>()?;
    let m = tree.scan_paths(&paths, &ferry_sync::ScanOptions::default())?;
    let start = std::time::Instant::now();
    let mut bytes = 0u64;
    for e in &m.entries {
        if bytes >= LINK_SAMPLE || start.elapsed() >= timeout {
            break;
        }
        if e.kind != ferry_sync::Kind::File || e.size == 0 || e.size > LINK_SAMPLE {
            continue;
        }
        tree.read(&e.path, None, &mut |c| {
            if let ferry_sync::delta::Chunk::Data(d) = c {
                bytes += d.len() as u64;
            }
            Ok(())
        })?;
    }
    Ok((bytes, start.elapsed()))
}
