//! The update runbook of the HA shop (seed 000), levels 1 to 3.
//!
//! [`plan`] turns (level, runbook, fleet, primary) into a fixed list of
//! steps; [`Updater`] runs them, each journaled `begin` (with what it will
//! send) before it acts and `end` after, so `resume` re-runs only a step
//! that began and did not end, with the data its `begin` recorded:
//!
//! - level 1: `sync:<server>` for every other server (one pass with
//!   deletions, then a Merkle verification; again if they differ).
//! - level 2: `record` (every router's states of the pool's servers: what
//!   "as it was" means), `drain-primary` (and wait until it has no request
//!   in flight), one `step:<name>` per upgrade step on the primary (exit
//!   code, then the optional HTTP check), `primary-only` (the primary
//!   ready, every other server drained: all traffic on the new code while
//!   the others are overwritten), `sync:<server>` each, `purge` (PURGE or
//!   BAN to every Varnish, then the purge command on every server),
//!   `spread` (every server back to its recorded state).
//! - level 3: level 2, with `maintenance-on` before each run of
//!   consecutive database steps and `maintenance-off` after it (sites put
//!   in maintenance with epoch e+1, back to their state with e+2).
//!
//! A failed step stops the run and `restore` puts every server back to its
//! recorded state and ends any maintenance; the run is then failed.
//!
//! Each step goes through ferry-journal's [`Steps`]: its `begin` journaled
//! before it acts, then `<step>:before`, the work, `<step>:after` (the
//! failpoints of [`Updater::run_with`]; names from [`failpoint_names`]),
//! its `end` with a typed [`Outcome`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde::Serialize;
use serde_json::{json, Value};

use crate::client::{run_all, ExecClient, Sink, Target};
use crate::error::{FleetError, Result};
use crate::fleet_config::FleetConfig;
use crate::journal::{Entry, Event, Journal, Phase, Update};
use crate::routers::{self, SiteRecord};
use crate::runbook::{HttpCheck, Runbook};
use ferry_admin_api::Http;
use ferry_journal::Steps;
pub use ferry_journal::{Failpoints, KillMode, Outcome};

/// What a step does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Act {
    Record,
    DrainPrimary,
    MaintenanceOn,
    Upgrade(usize),
    MaintenanceOff,
    PrimaryOnly,
    Sync(String),
    Purge,
    Spread,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStep {
    pub act: Act,
    pub name: String,
}

/// The name of the step that undoes a failed run (index = plan length).
pub const RESTORE: &str = "restore";

fn step(act: Act, name: impl Into<String>) -> PlannedStep {
    PlannedStep {
        act,
        name: name.into(),
    }
}

/// The steps of an update; refuses what cannot work before anything runs.
pub fn plan(
    level: u8,
    runbook: &Runbook,
    fleet: &FleetConfig,
    primary: &str,
) -> std::result::Result<Vec<PlannedStep>, String> {
    if !(1..=3).contains(&level) {
        return Err(format!("level {level}: must be 1, 2 or 3"));
    }
    let p = fleet.server(primary).ok_or_else(|| {
        format!(
            "primary {primary:?} is not a server of {}",
            fleet.path.display()
        )
    })?;
    if p.files.is_none() {
        return Err(format!(
            "primary {primary}: no `files` volume in {} to sync from",
            fleet.path.display()
        ));
    }
    let others: Vec<&str> = fleet
        .servers
        .iter()
        .filter(|s| s.name != primary && s.files.is_some())
        .map(|s| s.name.as_str())
        .collect();
    let syncs = others
        .iter()
        .map(|o| step(Act::Sync(o.to_string()), format!("sync:{o}")));
    if level == 1 {
        return Ok(syncs.collect());
    }
    if runbook.steps.is_empty() {
        return Err(format!("level {level}: the runbook has no [[steps]]"));
    }
    if level == 3 {
        if runbook.sites.is_empty() {
            return Err("level 3: the runbook names no `sites` to put in maintenance".into());
        }
        if !runbook.steps.iter().any(|s| s.database) {
            return Err(
                "level 3: no step has `database = true` (nothing needs maintenance)".into(),
            );
        }
    }
    let mut out = vec![
        step(Act::Record, "record"),
        step(Act::DrainPrimary, "drain-primary"),
    ];
    let mut in_maintenance = false;
    for (i, s) in runbook.steps.iter().enumerate() {
        let wants = level == 3 && s.database;
        if wants && !in_maintenance {
            out.push(step(
                Act::MaintenanceOn,
                format!("maintenance-on:{}", s.name),
            ));
        }
        if !wants && in_maintenance {
            out.push(step(
                Act::MaintenanceOff,
                format!("maintenance-off:{}", runbook.steps[i - 1].name),
            ));
        }
        in_maintenance = wants;
        out.push(step(Act::Upgrade(i), format!("step:{}", s.name)));
    }
    if in_maintenance {
        let last = runbook.steps.last().map_or("", |s| s.name.as_str());
        out.push(step(Act::MaintenanceOff, format!("maintenance-off:{last}")));
    }
    out.push(step(Act::PrimaryOnly, "primary-only"));
    out.extend(syncs);
    out.push(step(Act::Purge, "purge"));
    out.push(step(Act::Spread, "spread"));
    Ok(out)
}

/// The failpoints an update passes: `<step>:before` and `<step>:after` of
/// each step of the plan and of `restore`.
pub fn failpoint_names(steps: &[PlannedStep]) -> Vec<String> {
    steps
        .iter()
        .map(|s| s.name.as_str())
        .chain([RESTORE])
        .flat_map(|n| [format!("{n}:before"), format!("{n}:after")])
        .collect()
}

/// Where one step stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    #[default]
    Pending,
    /// Began, no end: interrupted if no process runs it.
    Running,
    Ok,
    Failed,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Ok => "ok",
            StepStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`: the status table aligns it with `{:<8}`.
        f.pad(self.as_str())
    }
}

/// Where each step stands, folded from the journal.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepState {
    pub name: String,
    pub state: StepStatus,
    pub began_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub begin_data: Option<Value>,
    #[serde(skip)]
    pub end_data: Option<Value>,
}

/// Folds the journal's events over the plan (plus `restore` last).
pub fn fold(steps: &[PlannedStep], events: &[Event]) -> Vec<StepState> {
    let mut out: Vec<StepState> = steps
        .iter()
        .map(|s| s.name.as_str())
        .chain([RESTORE])
        .map(|n| StepState {
            name: n.to_string(),
            ..StepState::default()
        })
        .collect();
    for e in events {
        let Some(s) = out.get_mut(e.idx) else {
            continue;
        };
        match e.phase {
            Phase::Begin => {
                s.state = StepStatus::Running;
                s.began_ms = Some(e.at_ms);
                s.begin_data = Some(e.data.clone());
            }
            Phase::End => {
                s.state = match e.outcome {
                    None | Some(Outcome::Ok) => StepStatus::Ok,
                    // An update abandons nothing; read as a failure if ever written.
                    Some(Outcome::Failed | Outcome::Abandoned) => StepStatus::Failed,
                };
                s.ended_ms = Some(e.at_ms);
                s.error = e
                    .data
                    .get("error")
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                s.end_data = Some(e.data.clone());
            }
        }
    }
    out
}

/// The run as a whole: done, failed (restored or not), or unfinished.
pub fn overall(states: &[StepState]) -> &'static str {
    let (restore, steps) = states
        .split_last()
        .map_or((None, states), |(r, s)| (Some(r), s));
    if steps.iter().any(|s| s.state == StepStatus::Failed) {
        return match restore.map(|r| r.state) {
            Some(StepStatus::Ok) => "failed (traffic restored)",
            _ => "failed (restore not finished)",
        };
    }
    if steps.iter().all(|s| s.state == StepStatus::Ok) {
        "done"
    } else {
        "unfinished"
    }
}

/// Everything a run needs.
pub struct Updater {
    pub level: u8,
    pub primary: String,
    pub runbook: Runbook,
    pub fleet: FleetConfig,
    pub steps: Vec<PlannedStep>,
    pub journal: Journal,
    pub exec: ExecClient,
    /// The replicator's pre-shared key (derived).
    pub sync_key: Option<[u8; 32]>,
    pub http: Http,
    /// Progress lines for the operator.
    pub say: Arc<dyn Fn(&str) + Send + Sync>,
    /// Output of the commands run on the servers.
    pub sink: Sink,
}

fn step_err(step: &str, message: impl Into<String>) -> FleetError {
    FleetError::Step {
        step: step.to_string(),
        message: message.into(),
    }
}

fn entry(idx: usize, step: &str, phase: Phase, outcome: Option<Outcome>, data: Value) -> Entry {
    Entry {
        idx,
        step: step.to_string(),
        phase,
        outcome,
        data,
    }
}

impl Updater {
    /// Runs (or resumes) the update to its end. A failed step is restored
    /// from and returned as the error.
    pub async fn run(&self) -> Result<()> {
        self.run_with(&Failpoints::none()).await
    }

    /// [`Updater::run`], passing the armed `failpoints` (crash tests).
    pub async fn run_with(&self, failpoints: &Failpoints) -> Result<()> {
        let steps = self.journal.steps(failpoints);
        let states = fold(&self.steps, &self.journal.events()?);
        let restore_idx = self.steps.len();
        if let Some(failed) = states[..restore_idx]
            .iter()
            .find(|s| s.state == StepStatus::Failed)
        {
            let why = failed.error.clone().unwrap_or_default();
            if states[restore_idx].state != StepStatus::Ok {
                (self.say)(&format!(
                    "==> {} had failed; finishing the restore",
                    failed.name
                ));
                self.restore(&steps, &states).await?;
            }
            return Err(step_err(
                &failed.name,
                format!("{why} (traffic was restored)"),
            ));
        }
        for (i, s) in self.steps.iter().enumerate() {
            let st = &fold(&self.steps, &self.journal.events()?)[i];
            if st.state == StepStatus::Ok {
                continue;
            }
            // A step that began and did not end is run again with the data
            // its begin recorded (its begin is not journaled again).
            let (data, begin) = match &st.begin_data {
                Some(d) => {
                    (self.say)(&format!("==> {} (again: it began and did not end)", s.name));
                    (d.clone(), None)
                }
                None => {
                    (self.say)(&format!("==> {}", s.name));
                    let d = self
                        .prepare(i)
                        .await
                        .map_err(|e| step_err(&s.name, e.to_string()));
                    match d {
                        Ok(d) => (d.clone(), Some(entry(i, &s.name, Phase::Begin, None, d))),
                        Err(e) => {
                            steps.record(entry(i, &s.name, Phase::Begin, None, json!({})))?;
                            return self.fail(&steps, i, e).await;
                        }
                    }
                }
            };
            steps.begin(&s.name, begin).await?;
            match self.act(i, &data).await {
                Ok(end) => {
                    let end = entry(i, &s.name, Phase::End, Some(Outcome::Ok), end);
                    steps.end(&s.name, end).await?;
                }
                Err(e) => return self.fail(&steps, i, e).await,
            }
        }
        (self.say)("==> done");
        Ok(())
    }

    async fn fail(&self, steps: &Steps<'_, Update>, i: usize, e: FleetError) -> Result<()> {
        let name = &self.steps[i].name;
        (self.say)(&format!("!!! {name} failed: {e}"));
        steps.record(entry(
            i,
            name,
            Phase::End,
            Some(Outcome::Failed),
            json!({"error": e.to_string()}),
        ))?;
        let states = fold(&self.steps, &self.journal.events()?);
        self.restore(steps, &states).await?;
        Err(step_err(
            name,
            format!("{e} (traffic restored as it was before the run)"),
        ))
    }

    /// Servers back to their recorded states; maintenance ended.
    async fn restore(&self, steps: &Steps<'_, Update>, states: &[StepState]) -> Result<()> {
        let idx = self.steps.len();
        (self.say)("==> restore: traffic back as it was");
        let begin = entry(idx, RESTORE, Phase::Begin, None, json!({}));
        steps.begin(RESTORE, Some(begin)).await?;
        for (i, s) in self.steps.iter().enumerate() {
            if s.act == Act::MaintenanceOn && states[i].began_ms.is_some() {
                let off_done = self.steps[i..]
                    .iter()
                    .position(|x| x.act == Act::MaintenanceOff)
                    .map(|k| states[i + k].state == StepStatus::Ok)
                    .unwrap_or(false);
                if !off_done {
                    if let Some(d) = &states[i].begin_data {
                        self.maintenance(d, false).await?;
                    }
                }
            }
        }
        if let Some(recorded) = self.recorded(states) {
            self.set_states(&recorded).await?;
        }
        let end = entry(idx, RESTORE, Phase::End, Some(Outcome::Ok), json!({}));
        steps.end(RESTORE, end).await?;
        Ok(())
    }

    /// The router states the `record` step saw: router -> server -> state.
    fn recorded(&self, states: &[StepState]) -> Option<BTreeMap<String, BTreeMap<String, String>>> {
        let i = self.steps.iter().position(|s| s.act == Act::Record)?;
        let d = states[i].end_data.as_ref()?.get("states")?;
        serde_json::from_value(d.clone()).ok()
    }

    async fn set_states(&self, states: &BTreeMap<String, BTreeMap<String, String>>) -> Result<()> {
        for r in &self.runbook.routers {
            let Some(servers) = states.get(&r.name) else {
                continue;
            };
            for (server, state) in servers {
                routers::set_server(&self.http, r, &self.runbook.pool, server, state).await?;
            }
        }
        Ok(())
    }

    /// What a step will send, journaled with its `begin`.
    async fn prepare(&self, i: usize) -> Result<Value> {
        match &self.steps[i].act {
            Act::MaintenanceOn => {
                let mut sites = Vec::new();
                for r in &self.runbook.routers {
                    for host in &self.runbook.sites {
                        let rec = routers::get_site(&self.http, r, host).await?;
                        sites.push(json!({
                            "router": r.name, "host": host, "placement": rec.placement,
                            "prior_state": rec.state, "epoch": rec.epoch + 1,
                        }));
                    }
                }
                Ok(json!({ "sites": sites }))
            }
            Act::MaintenanceOff => {
                let states = fold(&self.steps, &self.journal.events()?);
                let on = (0..i)
                    .rev()
                    .find(|&k| self.steps[k].act == Act::MaintenanceOn)
                    .and_then(|k| states[k].begin_data.clone());
                on.ok_or_else(|| {
                    step_err(&self.steps[i].name, "no maintenance-on recorded before it")
                })
            }
            _ => Ok(json!({})),
        }
    }

    /// Sites in maintenance (`on`) or back to their prior state, from the
    /// data `maintenance-on` journaled.
    async fn maintenance(&self, data: &Value, on: bool) -> Result<()> {
        let sites = data
            .get("sites")
            .and_then(|s| s.as_array())
            .cloned()
            .unwrap_or_default();
        for s in sites {
            let field = |k: &str| {
                s.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let Some(r) = self
                .runbook
                .routers
                .iter()
                .find(|r| r.name == field("router"))
            else {
                continue;
            };
            let epoch = s.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0);
            let rec = SiteRecord {
                placement: field("placement"),
                state: if on {
                    "maintenance".into()
                } else {
                    field("prior_state")
                },
                epoch: if on { epoch } else { epoch + 1 },
            };
            routers::put_site(&self.http, r, &field("host"), &rec).await?;
        }
        Ok(())
    }

    async fn act(&self, i: usize, data: &Value) -> Result<Value> {
        let name = &self.steps[i].name;
        let rb = &self.runbook;
        match &self.steps[i].act {
            Act::Record => {
                let mut states = BTreeMap::new();
                for r in &rb.routers {
                    let servers = routers::pool_servers(&self.http, r, &rb.pool).await?;
                    if !servers.iter().any(|s| s.name == self.primary) {
                        return Err(step_err(
                            name,
                            format!(
                                "router {}: pool {} has no server {}",
                                r.name, rb.pool, self.primary
                            ),
                        ));
                    }
                    if !servers
                        .iter()
                        .any(|s| s.name != self.primary && s.state == "ready")
                    {
                        return Err(step_err(name, format!("router {}: pool {} has no other ready server: draining {} would leave none", r.name, rb.pool, self.primary)));
                    }
                    let m: BTreeMap<String, String> =
                        servers.into_iter().map(|s| (s.name, s.state)).collect();
                    states.insert(r.name.clone(), m);
                }
                Ok(json!({ "states": states }))
            }
            Act::DrainPrimary => {
                for r in &rb.routers {
                    routers::set_server(&self.http, r, &rb.pool, &self.primary, "drain").await?;
                }
                for r in &rb.routers {
                    routers::wait_idle(
                        &self.http,
                        r,
                        &rb.pool,
                        std::slice::from_ref(&self.primary),
                        rb.drain_timeout,
                    )
                    .await?;
                }
                Ok(json!({}))
            }
            Act::MaintenanceOn => self.maintenance(data, true).await.map(|()| json!({})),
            Act::MaintenanceOff => self.maintenance(data, false).await.map(|()| json!({})),
            Act::Upgrade(k) => self.upgrade(*k).await,
            Act::PrimaryOnly => {
                let mut drained = Vec::new();
                for r in &rb.routers {
                    routers::set_server(&self.http, r, &rb.pool, &self.primary, "ready").await?;
                }
                for r in &rb.routers {
                    for s in routers::pool_servers(&self.http, r, &rb.pool).await? {
                        if s.name != self.primary {
                            routers::set_server(&self.http, r, &rb.pool, &s.name, "drain").await?;
                            drained.push(s.name);
                        }
                    }
                }
                drained.sort();
                drained.dedup();
                for r in &rb.routers {
                    routers::wait_idle(&self.http, r, &rb.pool, &drained, rb.drain_timeout).await?;
                }
                Ok(json!({ "drained": drained }))
            }
            Act::Sync(to) => self.sync(to).await,
            Act::Purge => self.purge().await,
            Act::Spread => {
                let states = fold(&self.steps, &self.journal.events()?);
                let rec = self
                    .recorded(&states)
                    .ok_or_else(|| step_err(name, "no recorded states"))?;
                self.set_states(&rec).await?;
                Ok(json!({}))
            }
        }
    }

    async fn upgrade(&self, k: usize) -> Result<Value> {
        let s = &self.runbook.steps[k];
        let name = format!("step:{}", s.name);
        let p = self
            .fleet
            .server(&self.primary)
            .ok_or_else(|| step_err(&name, "primary left the fleet"))?;
        let target = Target {
            name: p.name.clone(),
            addr: p.exec.clone(),
        };
        let out = self.exec.run(&target, &s.argv, s.timeout, &self.sink).await;
        if !out.ok() {
            let why = out
                .error
                .clone()
                .unwrap_or_else(|| format!("exit {}", out.exit_text()));
            return Err(step_err(
                &name,
                format!("{:?} on {}: {why}", s.argv, p.name),
            ));
        }
        if let Some(c) = &s.check {
            check(&self.http, c)
                .await
                .map_err(|m| step_err(&name, format!("check {}: {m}", c.url)))?;
        }
        Ok(json!({"exit": out.exit, "duration_ms": out.duration.as_millis() as u64}))
    }

    async fn sync(&self, to: &str) -> Result<Value> {
        let from = self.primary.clone();
        let files = |n: &str| self.fleet.server(n).and_then(|s| s.files.clone());
        let (Some(src), Some(dst)) = (files(&from), files(to)) else {
            return Err(FleetError::Sync {
                from,
                to: to.into(),
                message: "no `files` volume in the fleet file".into(),
            });
        };
        let key = self.sync_key.ok_or_else(|| FleetError::Sync {
            from: from.clone(),
            to: to.into(),
            message: "no sync key (sync_key in the fleet file or FERRY_SYNC_KEY)".into(),
        })?;
        let checksum = self.runbook.checksum;
        let to = to.to_string();
        let (from2, to2) = (from.clone(), to.clone());
        tokio::task::spawn_blocking(move || full_sync(&src, &dst, &key, checksum))
            .await
            .map_err(|e| FleetError::Sync {
                from: from2.clone(),
                to: to2.clone(),
                message: e.to_string(),
            })?
            .map_err(|message| FleetError::Sync { from, to, message })
    }

    async fn purge(&self) -> Result<Value> {
        let p = &self.runbook.purge;
        let mut purged = 0;
        for v in &p.varnish {
            for path in &p.paths {
                let url = format!("http://{v}{path}");
                let mut headers = Vec::new();
                if let Some(h) = &p.host {
                    headers.push(("host", h.as_str()));
                }
                let method = Method::from_bytes(p.method.as_bytes()).unwrap_or(Method::GET);
                let (status, body) = self
                    .http
                    .request(method, &url, &headers, None, Duration::from_secs(10))
                    .await
                    .map_err(|m| step_err("purge", m))?;
                if !status.is_success() {
                    return Err(step_err(
                        "purge",
                        format!(
                            "{} {url}: {status}: {}",
                            p.method,
                            String::from_utf8_lossy(&body).trim()
                        ),
                    ));
                }
                purged += 1;
            }
        }
        if let Some(cmd) = &p.command {
            let targets = self.fleet.targets(None).map_err(|m| step_err("purge", m))?;
            let outs = run_all(
                &self.exec,
                &targets,
                cmd,
                targets.len(),
                Duration::from_secs(600),
                self.sink.clone(),
            )
            .await;
            let bad: Vec<String> = outs
                .iter()
                .filter(|o| !o.ok())
                .map(|o| {
                    format!(
                        "{}: {}",
                        o.server,
                        o.error.clone().unwrap_or_else(|| o.exit_text())
                    )
                })
                .collect();
            if !bad.is_empty() {
                return Err(step_err(
                    "purge",
                    format!("{cmd:?} failed on {}", bad.join("; ")),
                ));
            }
        }
        Ok(json!({ "varnish_requests": purged }))
    }
}

/// GET the check's URL: the expected status and, if set, text in the body.
async fn check(http: &Http, c: &HttpCheck) -> std::result::Result<(), String> {
    let mut headers = Vec::new();
    if let Some(h) = &c.host {
        headers.push(("host", h.as_str()));
    }
    let (status, body) = http
        .request(Method::GET, &c.url, &headers, None, Duration::from_secs(30))
        .await?;
    if status.as_u16() != c.status {
        return Err(format!("answered {status}, expected {}", c.status));
    }
    if let Some(t) = &c.contains {
        if !String::from_utf8_lossy(&body).contains(t.as_str()) {
            return Err(format!("the body does not contain {t:?}"));
        }
    }
    Ok(())
}

/// One pass with deletions from `src` to `dst` (both agents), then the
/// Merkle proof; a second and third pass if files changed meanwhile
/// (ferry-sync's `full_sync_verified`).
fn full_sync(
    src: &str,
    dst: &str,
    key: &[u8; 32],
    checksum: bool,
) -> std::result::Result<Value, String> {
    use ferry_sync::{Endpoint, OpenOptions, Role, SyncOptions};
    let opts = OpenOptions {
        key: Some(*key),
        ..OpenOptions::default()
    };
    // Both sides are agents: a path here would be the runner's own disk.
    let open = |e: &str, role: Role| -> std::result::Result<_, String> {
        match Endpoint::parse(e).map_err(|x| x.to_string())? {
            Endpoint::Local(_) => Err(format!("{e}: not a ferry:// volume")),
            remote => remote.open(role, &opts).map_err(|x| x.to_string()),
        }
    };
    let s = open(src, Role::Source)?;
    let d = open(dst, Role::Dest)?;
    let opts = SyncOptions {
        checksum,
        ..SyncOptions::default()
    };
    let done = ferry_sync::open::full_sync_verified(&s, &d, &opts).map_err(|e| e.to_string())?;
    if !done.verdict.equal() {
        return Err(format!(
            "still different after {} passes: {:?}",
            done.passes, done.verdict.differing
        ));
    }
    Ok(json!({"passes": done.passes, "changed_entries": done.changed_entries, "verified": true}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn inputs(steps: &str) -> (Runbook, FleetConfig) {
        let rb = format!(
            "pool = \"shop\"\nsites = [\"shop.test\"]\n[[routers]]\nname = \"r1\"\nadmin = \"http://127.0.0.1:1\"\ntoken = \"0123456789abcdef0\"\n{steps}"
        );
        let fleet = "[servers.s1]\nexec = \"127.0.0.1:1\"\nfiles = \"ferry://127.0.0.1:2/app\"\n[servers.s2]\nexec = \"127.0.0.1:3\"\nfiles = \"ferry://127.0.0.1:4/app\"\n[servers.s3]\nexec = \"127.0.0.1:5\"\n";
        (
            Runbook::parse(&rb, Path::new("u.toml")).unwrap(),
            FleetConfig::parse(fleet, Path::new("f.toml")).unwrap(),
        )
    }

    fn names(p: &[PlannedStep]) -> Vec<&str> {
        p.iter().map(|s| s.name.as_str()).collect()
    }

    const STEPS: &str = "[[steps]]\nname = \"a\"\nargv = [\"x\"]\n[[steps]]\nname = \"db1\"\nargv = [\"x\"]\ndatabase = true\n[[steps]]\nname = \"db2\"\nargv = [\"x\"]\ndatabase = true\n[[steps]]\nname = \"b\"\nargv = [\"x\"]\n";

    #[test]
    fn levels_give_their_steps() {
        let (rb, fleet) = inputs(STEPS);
        // s3 has no files volume: it is not synced.
        assert_eq!(names(&plan(1, &rb, &fleet, "s1").unwrap()), ["sync:s2"]);
        assert_eq!(
            names(&plan(2, &rb, &fleet, "s1").unwrap()),
            [
                "record",
                "drain-primary",
                "step:a",
                "step:db1",
                "step:db2",
                "step:b",
                "primary-only",
                "sync:s2",
                "purge",
                "spread"
            ]
        );
        assert_eq!(
            names(&plan(3, &rb, &fleet, "s1").unwrap()),
            [
                "record",
                "drain-primary",
                "step:a",
                "maintenance-on:db1",
                "step:db1",
                "step:db2",
                "maintenance-off:db2",
                "step:b",
                "primary-only",
                "sync:s2",
                "purge",
                "spread"
            ]
        );
    }

    #[test]
    fn impossible_updates_are_refused_before_anything_runs() {
        let (rb, fleet) = inputs(STEPS);
        assert!(plan(4, &rb, &fleet, "s1")
            .unwrap_err()
            .contains("1, 2 or 3"));
        assert!(plan(2, &rb, &fleet, "s9")
            .unwrap_err()
            .contains("not a server"));
        assert!(plan(2, &rb, &fleet, "s3")
            .unwrap_err()
            .contains("no `files`"));
        let (no_db, fleet) = inputs("[[steps]]\nname = \"a\"\nargv = [\"x\"]\n");
        assert!(plan(3, &no_db, &fleet, "s1")
            .unwrap_err()
            .contains("database = true"));
        let (none, fleet) = inputs("");
        assert!(plan(2, &none, &fleet, "s1")
            .unwrap_err()
            .contains("no [[steps]]"));
    }

    #[test]
    fn the_fold_tells_where_a_run_stands() {
        let (rb, fleet) = inputs(STEPS);
        let p = plan(2, &rb, &fleet, "s1").unwrap();
        let ev = |seq, idx, phase, outcome: Option<Outcome>| Event {
            seq,
            at_ms: seq * 10,
            idx,
            step: p.get(idx).map_or(RESTORE.to_string(), |s| s.name.clone()),
            phase,
            outcome,
            data: json!({"error": "boom"}),
        };
        let running = [
            ev(1, 0, Phase::Begin, None),
            ev(2, 0, Phase::End, Some(Outcome::Ok)),
            ev(3, 1, Phase::Begin, None),
        ];
        let st = fold(&p, &running);
        assert_eq!(st[0].state, StepStatus::Ok);
        assert_eq!(st[1].state, StepStatus::Running);
        assert_eq!(overall(&st), "unfinished");
        let failed = [
            ev(1, 0, Phase::Begin, None),
            ev(2, 0, Phase::End, Some(Outcome::Failed)),
        ];
        assert_eq!(overall(&fold(&p, &failed)), "failed (restore not finished)");
        let restored = [
            ev(1, 0, Phase::Begin, None),
            ev(2, 0, Phase::End, Some(Outcome::Failed)),
            ev(3, p.len(), Phase::Begin, None),
            ev(4, p.len(), Phase::End, Some(Outcome::Ok)),
        ];
        let st = fold(&p, &restored);
        assert_eq!(overall(&st), "failed (traffic restored)");
        assert_eq!(st[0].error.as_deref(), Some("boom"));
    }

    /// A step killed after its begin is run again on resume, its begin not
    /// journaled twice; its failure (no router answers) is restored from.
    #[tokio::test]
    async fn a_step_killed_after_its_begin_is_replayed() {
        use ferry_journal::KillMode;
        let (rb, fleet) = inputs(STEPS);
        let steps = plan(2, &rb, &fleet, "s1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let meta = crate::journal::tests::meta();
        let path = dir.path().join("j.db");
        let updater = |journal| Updater {
            level: 2,
            primary: "s1".into(),
            runbook: rb.clone(),
            fleet: fleet.clone(),
            steps: steps.clone(),
            journal,
            exec: ExecClient::new("0123456789abcdef0".into()),
            sync_key: None,
            http: Http::new(),
            say: Arc::new(|_: &str| {}),
            sink: Arc::new(|_: &str, _, _: &str| {}),
        };
        let names = failpoint_names(&steps);
        assert!(names.contains(&"step:db1:after".to_string()));
        assert!(names.contains(&"restore:before".to_string()));
        let fp = Failpoints::parse("record:before=kill", KillMode::Interrupt, &names).unwrap();
        let u = updater(Journal::create(&path, &meta).unwrap());
        match u.run_with(&fp).await {
            Err(FleetError::Interrupted(n)) => assert_eq!(n, "record:before"),
            other => panic!("{other:?}"),
        }
        let st = fold(&steps, &u.journal.events().unwrap());
        assert_eq!(st[0].state, StepStatus::Running);
        drop(u);
        let u = updater(Journal::open(&path).unwrap());
        assert!(matches!(u.run().await, Err(FleetError::Step { .. })));
        let ev: Vec<(usize, Phase, Option<Outcome>)> = u
            .journal
            .events()
            .unwrap()
            .into_iter()
            .map(|e| (e.idx, e.phase, e.outcome))
            .collect();
        let restore = steps.len();
        assert_eq!(
            ev,
            [
                (0, Phase::Begin, None),
                (0, Phase::End, Some(Outcome::Failed)),
                (restore, Phase::Begin, None),
                (restore, Phase::End, Some(Outcome::Ok)),
            ]
        );
        assert_eq!(
            overall(&fold(&steps, &u.journal.events().unwrap())),
            "failed (traffic restored)"
        );
    }
}
