//! The runbook: one unit at a time through prepare, pre-copy, window,
//! freeze, final copy + verify, flip, unfreeze, post-check, done
//! (shared/design/cutover.md), every step journaled before it acts.
//!
//! Replay: where a unit stands is read back from the journal
//! ([`Progress::of`]). A step with a `begin` and no `end` is run again with
//! the epoch its `begin` recorded, so the routers see exactly the same
//! changes (same epoch + same content is a no-op for them); every step is
//! idempotent (copies converge, verification reads, sends repeat).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::{FilerSpec, MigrateConfig};
use crate::dbmove::{self, DbGroup};
use crate::error::{OrchError, Result};
use crate::failpoint::{Failpoints, Faults};
use crate::journal::{now_ms, EventRecord, Journal, Migration, NewEvent, Phase, RunMeta, UnitMeta};
use crate::plan::{Plan, PlanUnit};
pub use crate::progress::Progress;
use crate::router::{fingerprint, Fingerprint, Http, RouterClient, SiteChange, SiteReport};
use crate::status::{Direction, Outcome, Step, UnitState};
use ferry_journal::Steps;

/// Called with every journaled event (progress bars, `--json`).
pub type Observer = Arc<dyn Fn(&EventRecord) + Send + Sync>;

/// How a run behaves (not recorded: flags of this invocation).
#[derive(Clone)]
pub struct Options {
    /// Skip the window (`--now`).
    pub now: bool,
    pub failpoints: Arc<Failpoints>,
    pub faults: Faults,
    pub observer: Option<Observer>,
    /// How often routers are polled while waiting for acknowledgements.
    pub poll: Duration,
    /// Per-request timeout of admin API calls.
    pub admin_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            now: false,
            failpoints: Arc::new(Failpoints::none()),
            faults: Faults::default(),
            observer: None,
            poll: Duration::from_millis(25),
            admin_timeout: Duration::from_secs(5),
        }
    }
}

/// How each selected unit ended (or stands, when the run stopped early).
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    pub units: Vec<(String, UnitState)>,
}

impl RunSummary {
    /// Every unit done (or rolled back on request).
    pub fn ok(&self) -> bool {
        self.units
            .iter()
            .all(|(_, s)| matches!(s, UnitState::Done | UnitState::RolledBack))
    }
}

/// One copy job: a whole filer, or one hosting's directory under its filer.
#[derive(Clone, Debug)]
struct Job {
    label: String,
    from: String,
    to: String,
    key: Option<[u8; 32]>,
}

/// A unit as the runbook sees it, in one direction.
struct Unit {
    id: String,
    sites: Vec<String>,
    jobs: Vec<Job>,
    /// One database mover per server the unit's databases live on.
    dbs: Vec<DbGroup>,
    dir: Direction,
    from_dc: String,
    to_dc: String,
    from_pool: String,
    to_pool: String,
}

/// The orchestrator of one run: config, plan, journal, routers.
pub struct Orchestrator {
    cfg: MigrateConfig,
    plan: Plan,
    journal: Arc<Journal>,
    selected: Vec<String>,
    opts: Options,
    http: Http,
    routers: Vec<RouterClient>,
    /// Logs each journaled event and hands it to the observer.
    on_append: Box<OnAppend>,
}

type OnAppend = dyn Fn(&EventRecord) + Send + Sync;

/// What `Orchestrator::prepare_run` checked, before any file is written.
pub struct RunInputs {
    pub cfg: MigrateConfig,
    pub config_text: String,
    pub plan: Plan,
    pub selected: Vec<String>,
}

impl RunInputs {
    /// Reads and checks the config and the plan, selects the units. Nothing is written.
    pub fn load(
        config: &std::path::Path,
        plan: &std::path::Path,
        only: Option<&[String]>,
    ) -> Result<RunInputs> {
        let config_text =
            std::fs::read_to_string(config).map_err(|source| OrchError::ConfigRead {
                path: config.to_path_buf(),
                source,
            })?;
        let config_abs = absolute(config);
        let cfg = MigrateConfig::parse(&config_text, &config_abs)?;
        let plan = Plan::load(&absolute(plan))?;
        let selected = plan.select(only)?;
        plan.check_against(&cfg, &selected)?;
        Ok(RunInputs {
            cfg,
            config_text,
            plan,
            selected,
        })
    }
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Orchestrator {
    /// Starts a new run in a new journal (or an empty one): records the run
    /// meta. Refuses a journal that already holds a run.
    pub fn start(
        inputs: RunInputs,
        journal: &std::path::Path,
        opts: Options,
    ) -> Result<Orchestrator> {
        let j = Journal::create(journal)?;
        let units = inputs
            .selected
            .iter()
            .filter_map(|id| inputs.plan.unit(id))
            .map(|u| UnitMeta {
                id: u.id.clone(),
                night: u.night,
                sites: u.sites().len(),
                filers: unit_filers(u),
            })
            .collect();
        j.start_run(&RunMeta {
            config_text: inputs.config_text,
            config_path: inputs.cfg.path.clone(),
            plan_path: inputs.plan.path.clone(),
            plan_digest: inputs.plan.digest.clone(),
            source: inputs.cfg.source.clone(),
            destination: inputs.cfg.destination.clone(),
            started_at_ms: now_ms(),
            units,
        })?;
        Ok(Orchestrator::new(
            inputs.cfg,
            inputs.plan,
            Arc::new(j),
            inputs.selected,
            opts,
        ))
    }

    /// Opens the run recorded in `journal`: the config from the journal, the
    /// plan re-read from its recorded path (refused if its digest changed).
    pub fn resume(journal: &std::path::Path, opts: Options) -> Result<Orchestrator> {
        let j = Journal::open(journal)?;
        let meta = j.meta()?.ok_or_else(|| OrchError::Journal {
            path: journal.to_path_buf(),
            message: "holds no run yet (use `ferry migrate run`)".into(),
        })?;
        let cfg = MigrateConfig::parse(&meta.config_text, &meta.config_path)?;
        let plan = Plan::load(&meta.plan_path)?;
        if plan.digest != meta.plan_digest {
            return Err(OrchError::PlanChanged {
                path: meta.plan_path.clone(),
                recorded: meta.plan_digest.clone(),
                actual: plan.digest.clone(),
            });
        }
        let selected: Vec<String> = meta.units.iter().map(|u| u.id.clone()).collect();
        plan.check_against(&cfg, &selected)?;
        Ok(Orchestrator::new(cfg, plan, Arc::new(j), selected, opts))
    }

    fn new(
        cfg: MigrateConfig,
        plan: Plan,
        journal: Arc<Journal>,
        selected: Vec<String>,
        opts: Options,
    ) -> Orchestrator {
        let http = Http::new();
        let routers = cfg
            .routers
            .iter()
            .map(|r| RouterClient::new(r.clone(), http.clone(), opts.admin_timeout))
            .collect();
        let observer = opts.observer.clone();
        let on_append: Box<OnAppend> = Box::new(move |rec: &EventRecord| {
            tracing::debug!(
                unit = %rec.event.unit,
                step = rec.event.step.map(|s| s.as_str()),
                phase = rec.event.phase.as_str(),
                attempt = rec.event.attempt,
                epoch = rec.event.epoch,
                "journaled"
            );
            if let Some(o) = &observer {
                o(rec);
            }
        });
        Orchestrator {
            cfg,
            plan,
            journal,
            selected,
            opts,
            http,
            routers,
            on_append,
        }
    }

    pub fn journal(&self) -> Arc<Journal> {
        self.journal.clone()
    }

    pub fn config(&self) -> &MigrateConfig {
        &self.cfg
    }

    pub fn selected(&self) -> &[String] {
        &self.selected
    }

    /// The journal's step runner: its begin/end with this run's failpoints,
    /// every event logged and shown to the observer as it is journaled.
    fn steps(&self) -> Steps<'_, Migration> {
        self.journal
            .steps(self.opts.failpoints.inner())
            .on_append(&*self.on_append)
    }

    fn emit(&self, ev: NewEvent) -> Result<EventRecord> {
        Ok(self.steps().record(ev)?)
    }

    fn session_note(&self, what: &str) -> Result<()> {
        self.emit(NewEvent {
            unit: String::new(),
            step: None,
            phase: Phase::Note,
            attempt: 0,
            direction: Direction::Forward,
            epoch: None,
            outcome: None,
            detail: json!({
                "kind": "session",
                "pid": std::process::id(),
                "what": what,
                "summary": format!("orchestrator {what} (pid {})", std::process::id()),
            }),
        })?;
        Ok(())
    }

    /// Runs (or goes on with) every selected unit, one at a time, in plan order.
    pub async fn run(&self) -> Result<RunSummary> {
        self.session_note("run")?;
        let mut out = Vec::new();
        for id in self.selected.clone() {
            let mut p = Progress::of(&id, &self.journal.unit_events(&id)?);
            if let Some(t) = p.terminal {
                // A failed unit may have left a change owed by a router that
                // was down (an abandon it never got): pay it now.
                if !p.owed.is_empty() {
                    let u = self.unit(&id, p.direction.unwrap_or(Direction::Forward))?;
                    self.pay_owed(&u, &mut p).await?;
                }
                out.push((id, t));
                continue;
            }
            let dir = p.direction.unwrap_or(Direction::Forward);
            let state = self.run_unit(&id, dir).await?;
            out.push((id, state));
        }
        Ok(RunSummary { units: out })
    }

    /// `ferry migrate rollback UNIT`: before the flip began, unfreeze at the
    /// source with a new epoch; after it, the reverse runbook (copy back,
    /// freeze at the destination, flip back), window skipped.
    pub async fn rollback(&self, id: &str) -> Result<UnitState> {
        if !self.selected.iter().any(|u| u == id) {
            return Err(OrchError::UnknownUnit(id.to_string()));
        }
        self.session_note("rollback")?;
        let p = Progress::of(id, &self.journal.unit_events(id)?);
        if p.terminal == Some(UnitState::RolledBack) {
            return Ok(UnitState::RolledBack);
        }
        if p.flip_begun {
            if p.direction == Some(Direction::Reverse) {
                // A rollback already under way: go on with it.
                return self.run_unit(id, Direction::Reverse).await;
            }
            let fresh = Progress {
                max_epoch: p.max_epoch,
                ..Progress::default()
            };
            return self
                .run_unit_from(id, Direction::Reverse, fresh, true)
                .await;
        }
        let unit = self.unit(id, Direction::Forward)?;
        // The databases first, while the routers may still hold the sites:
        // the destination's copy dropped, the source accounts unlocked. An
        // error stops the rollback before any router change (run it again).
        for g in &unit.dbs {
            dbmove::rollback(g, &self.cfg.db).await?;
        }
        let seen = self.max_epoch_seen(&unit.sites).await;
        let epoch = 1 + seen.max(p.max_epoch);
        let attempt = p.attempt.max(1);
        self.emit(NewEvent {
            unit: id.to_string(),
            step: None,
            phase: Phase::Note,
            attempt,
            direction: Direction::Forward,
            epoch: Some(epoch),
            outcome: None,
            detail: json!({"kind": "rollback", "summary": format!("rollback before the flip: every router back to the source, active, epoch {epoch}")}),
        })?;
        let changes: Vec<(RouterClient, Vec<SiteChange>)> = self
            .routers
            .iter()
            .map(|r| {
                (
                    r.clone(),
                    self.changes(
                        &unit.sites,
                        &self.source_placement(&unit, r),
                        "active",
                        epoch,
                    ),
                )
            })
            .collect();
        let unpaid = self
            .send_with_retries(changes, 5, self.opts.admin_timeout)
            .await;
        for (r, c, why) in &unpaid {
            self.note_owed(&unit, attempt, r, c, why)?;
        }
        self.emit(NewEvent {
            unit: id.to_string(),
            step: None,
            phase: Phase::Note,
            attempt,
            direction: Direction::Forward,
            epoch: Some(epoch),
            outcome: None,
            detail: json!({"kind": "rolled_back", "unit_state": "rolled_back",
                "message": format!("rolled back before the flip: serving from {}", unit.from_dc)}),
        })?;
        Ok(UnitState::RolledBack)
    }

    fn unit(&self, id: &str, dir: Direction) -> Result<Unit> {
        let pu = self
            .plan
            .unit(id)
            .ok_or_else(|| OrchError::UnknownUnit(id.to_string()))?;
        let (from_dc, to_dc) = match dir {
            Direction::Forward => (self.cfg.source.clone(), self.cfg.destination.clone()),
            Direction::Reverse => (self.cfg.destination.clone(), self.cfg.source.clone()),
        };
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
        Ok(Unit {
            id: id.to_string(),
            sites: pu.sites(),
            jobs,
            dbs,
            dir,
            from_pool: self.cfg.pool_of(&from_dc).to_string(),
            to_pool: self.cfg.pool_of(&to_dc).to_string(),
            from_dc,
            to_dc,
        })
    }

    fn filer(&self, unit: &str, name: &str) -> Result<&FilerSpec> {
        self.cfg.filers.get(name).ok_or_else(|| OrchError::Unit {
            unit: unit.to_string(),
            message: format!("filer {name:?} has no [filers.{name}] in the config"),
        })
    }

    /// The placement a router gives the unit's sites while they live at the source.
    fn source_placement(&self, u: &Unit, r: &RouterClient) -> String {
        if r.spec.datacenter == u.from_dc {
            format!("pool:{}", u.from_pool)
        } else {
            format!("remote:{}", u.from_dc)
        }
    }

    /// The placement after the flip.
    fn dest_placement(&self, u: &Unit, r: &RouterClient) -> String {
        if r.spec.datacenter == u.to_dc {
            format!("pool:{}", u.to_pool)
        } else {
            format!("remote:{}", u.to_dc)
        }
    }

    fn changes(
        &self,
        sites: &[String],
        placement: &str,
        state: &str,
        epoch: u64,
    ) -> Vec<SiteChange> {
        sites
            .iter()
            .map(|h| SiteChange {
                host: h.clone(),
                placement: placement.to_string(),
                state: state.to_string(),
                epoch,
            })
            .collect()
    }

    /// The highest epoch any router reports for `sites` (routers that do not
    /// answer are skipped: the journal's own record covers what we sent them).
    async fn max_epoch_seen(&self, sites: &[String]) -> u64 {
        let mut max = 0;
        for (r, res) in self.query_all(&self.routers, sites).await {
            match res {
                Ok(list) => max = list.iter().map(|s| s.epoch).fold(max, u64::max),
                Err(e) => tracing::warn!(router = r, error = %e, "cannot read the sites' epochs"),
            }
        }
        max
    }

    async fn query_all(
        &self,
        routers: &[RouterClient],
        sites: &[String],
    ) -> Vec<(String, Result<Vec<SiteReport>>)> {
        self.query_all_by(routers, sites, None).await
    }

    /// Queries every router at once; with a deadline, a router that has
    /// not answered by then counts as an error (the freeze must not wait on
    /// it past drain_timeout).
    async fn query_all_by(
        &self,
        routers: &[RouterClient],
        sites: &[String],
        deadline: Option<Instant>,
    ) -> Vec<(String, Result<Vec<SiteReport>>)> {
        let mut set = tokio::task::JoinSet::new();
        for (i, r) in routers.iter().enumerate() {
            let r = r.clone();
            let sites = sites.to_vec();
            set.spawn(async move {
                let name = r.name().to_string();
                let res = match deadline {
                    None => r.query(&sites).await,
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        match tokio::time::timeout(left, r.query(&sites)).await {
                            Ok(x) => x,
                            Err(_) => Err(OrchError::Router {
                                router: name.clone(),
                                message: "did not answer the query in time".into(),
                                stale: false,
                            }),
                        }
                    }
                };
                (i, name, res)
            });
        }
        let mut out: Vec<(usize, String, Result<Vec<SiteReport>>)> = Vec::new();
        while let Some(j) = set.join_next().await {
            if let Ok(x) = j {
                out.push(x);
            }
        }
        out.sort_by_key(|x| x.0);
        out.into_iter().map(|(_, n, r)| (n, r)).collect()
    }

    /// Journals a step's begin (unless it is being replayed) and passes its
    /// `before` failpoint.
    async fn begin(
        &self,
        u: &Unit,
        step: Step,
        attempt: u32,
        epoch: Option<u64>,
        replay: bool,
        detail: Value,
    ) -> Result<()> {
        let begin = if replay {
            tracing::info!(unit = %u.id, step = step.as_str(), "replaying a step begun before the orchestrator stopped");
            None
        } else {
            Some(step_event(
                u,
                step,
                Phase::Begin,
                attempt,
                epoch,
                None,
                detail,
            ))
        };
        Ok(self.steps().begin(step.as_str(), begin).await?)
    }

    /// Passes the step's `after` failpoint and journals its end.
    async fn end(
        &self,
        u: &Unit,
        step: Step,
        attempt: u32,
        epoch: Option<u64>,
        outcome: Outcome,
        detail: Value,
    ) -> Result<()> {
        let end = step_event(u, step, Phase::End, attempt, epoch, Some(outcome), detail);
        Ok(self.steps().end(step.as_str(), end).await?)
    }

    async fn run_unit(&self, id: &str, dir: Direction) -> Result<UnitState> {
        let p = Progress::of(id, &self.journal.unit_events(id)?);
        self.run_unit_from(id, dir, p, dir == Direction::Reverse)
            .await
    }

    async fn run_unit_from(
        &self,
        id: &str,
        dir: Direction,
        mut p: Progress,
        skip_window: bool,
    ) -> Result<UnitState> {
        let u = self.unit(id, dir)?;
        tracing::info!(unit = id, direction = ?dir, sites = u.sites.len(), "unit");
        loop {
            self.pay_owed(&u, &mut p).await?;
            if let Some(t) = p.terminal {
                return Ok(t);
            }
            // What to do next, and whether it replays an open step.
            let (step, replay, attempt) = match (p.open, p.last_end) {
                (Some((s, _, _)), _) => (s, true, p.attempt.max(1)),
                (None, Some((Step::Freeze, Outcome::Abandoned, at))) => {
                    // Wait out the rest of retry_after, then a new attempt.
                    let wait = self
                        .cfg
                        .freeze
                        .retry_after
                        .saturating_sub(Duration::from_millis(now_ms().saturating_sub(at)));
                    if !wait.is_zero() {
                        tracing::info!(
                            unit = id,
                            ?wait,
                            "freeze abandoned; waiting before the next attempt"
                        );
                        tokio::time::sleep(wait).await;
                    }
                    (Step::Freeze, false, p.attempt + 1)
                }
                (None, Some((s, Outcome::Ok, _))) => match s.next() {
                    Some(n) => (n, false, p.attempt.max(1)),
                    None => return Ok(UnitState::Done),
                },
                (None, Some((_, _, _))) => return Ok(UnitState::Failed),
                (None, None) => (Step::Prepare, false, 1),
            };
            let open_epoch = if replay {
                p.open.and_then(|o| o.1)
            } else {
                None
            };
            match step {
                Step::Prepare => self.prepare(&u, &p, replay, open_epoch).await?,
                Step::PreCopy => self.pre_copy(&u, replay).await?,
                Step::AwaitWindow => self.await_window(&u, replay, skip_window).await?,
                Step::Freeze => self.freeze(&u, &p, attempt, replay, open_epoch).await?,
                Step::FinalCopy => self.final_copy(&u, &p, attempt, replay).await?,
                Step::Flip => self.flip(&u, &p, attempt, replay, open_epoch).await?,
                Step::Unfreeze => self.unfreeze(&u, attempt, replay).await?,
                Step::PostCheck => self.post_check(&u, &p, attempt, replay).await?,
                Step::Done => {
                    self.begin(&u, Step::Done, attempt, None, replay, json!({}))
                        .await?;
                    let msg = match u.dir {
                        Direction::Forward => format!("moved to {}", u.to_dc),
                        Direction::Reverse => format!("rolled back: serving from {}", u.to_dc),
                    };
                    self.end(
                        &u,
                        Step::Done,
                        attempt,
                        None,
                        Outcome::Ok,
                        json!({"summary": msg}),
                    )
                    .await?;
                }
            }
            let mut np = Progress::of(id, &self.journal.unit_events(id)?);
            if dir == Direction::Reverse && np.direction == Some(Direction::Forward) {
                // Nothing of the reverse run is journaled yet (cannot happen
                // after a step ran, kept as a guard against looping forward).
                np = p;
            }
            p = np;
        }
    }

    /// Sends the changes a router still owes (it was unreachable when an
    /// abandon or rollback was sent), before the unit's next step.
    async fn pay_owed(&self, u: &Unit, p: &mut Progress) -> Result<()> {
        for o in p.owed.clone() {
            let Some(r) = self.routers.iter().find(|r| r.name() == o.router) else {
                continue;
            };
            let epoch = o.changes.first().map_or(0, |c| c.epoch);
            let outcome = match r.apply(&o.changes).await {
                Ok(_) => "applied",
                // A newer epoch superseded it: nothing owed any more.
                Err(OrchError::Router { stale: true, .. }) => "superseded",
                Err(e) => {
                    tracing::warn!(unit = %u.id, router = %o.router, error = %e, "router still unreachable; its change stays owed");
                    continue;
                }
            };
            self.emit(NewEvent {
                unit: u.id.clone(),
                step: None,
                phase: Phase::Note,
                attempt: p.attempt,
                direction: u.dir,
                epoch: Some(epoch),
                outcome: None,
                detail: json!({"kind": "paid", "router": o.router, "epoch": epoch, "how": outcome}),
            })?;
            p.owed.retain(|x| x != &o);
        }
        Ok(())
    }

    fn note_owed(
        &self,
        u: &Unit,
        attempt: u32,
        router: &str,
        changes: &[SiteChange],
        why: &str,
    ) -> Result<()> {
        tracing::warn!(unit = %u.id, router, error = why, "router did not take the change; it is owed and retried before the next step");
        self.emit(NewEvent {
            unit: u.id.clone(),
            step: None,
            phase: Phase::Note,
            attempt,
            direction: u.dir,
            epoch: changes.first().map(|c| c.epoch),
            outcome: None,
            detail: json!({"kind": "owed", "router": router, "changes": changes, "error": why}),
        })?;
        Ok(())
    }

    /// Sends each router its changes, retrying `tries` times; answers the
    /// ones that still failed (router, changes, error).
    async fn send_with_retries(
        &self,
        work: Vec<(RouterClient, Vec<SiteChange>)>,
        tries: u32,
        per_try: Duration,
    ) -> Vec<(String, Vec<SiteChange>, String)> {
        let mut set = tokio::task::JoinSet::new();
        for (r, changes) in work {
            set.spawn(async move {
                let mut last = String::new();
                for i in 0..tries.max(1) {
                    match tokio::time::timeout(per_try, r.apply(&changes)).await {
                        Ok(Ok(_)) => return None,
                        Ok(Err(e @ OrchError::Router { stale: true, .. })) => {
                            return Some((r.name().to_string(), changes, e.to_string()));
                        }
                        Err(_) => {
                            last = format!("no answer within {per_try:?}");
                        }
                        Ok(Err(e)) => {
                            last = e.to_string();
                            tokio::time::sleep(Duration::from_millis(200 * u64::from(i + 1))).await;
                        }
                    }
                }
                Some((r.name().to_string(), changes, last))
            });
        }
        let mut out = Vec::new();
        while let Some(j) = set.join_next().await {
            if let Ok(Some(x)) = j {
                out.push(x);
            }
        }
        out
    }

    async fn fingerprints(&self, sites: &[String]) -> BTreeMap<String, Fingerprint> {
        let via = self
            .cfg
            .router(&self.cfg.check.via)
            .and_then(|r| r.traffic.clone());
        let Some(traffic) = via else {
            return BTreeMap::new();
        };
        let sem = Arc::new(tokio::sync::Semaphore::new(16));
        let mut set = tokio::task::JoinSet::new();
        for h in sites {
            let (http, traffic, h, path, timeout, sem) = (
                self.http.clone(),
                traffic.clone(),
                h.clone(),
                self.cfg.check.path.clone(),
                self.cfg.check.timeout,
                sem.clone(),
            );
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let f = fingerprint(&http, &traffic, &h, &path, timeout).await;
                (h, f)
            });
        }
        let mut out = BTreeMap::new();
        while let Some(j) = set.join_next().await {
            if let Ok((h, f)) = j {
                out.insert(h, f);
            }
        }
        out
    }

    fn fail_unit_event(
        &self,
        u: &Unit,
        step: Step,
        attempt: u32,
        epoch: Option<u64>,
        message: String,
    ) -> Result<()> {
        tracing::error!(unit = %u.id, step = step.as_str(), "{message}");
        self.emit(step_event(
            u,
            step,
            Phase::End,
            attempt,
            epoch,
            Some(Outcome::Failed),
            json!({"summary": message, "message": message, "unit_state": "failed"}),
        ))?;
        Ok(())
    }

    /// The epoch a step sends: the one its journaled `begin` recorded (a
    /// replay must send exactly the same change), else one above every epoch
    /// any router or the journal has seen for the unit's sites.
    async fn step_epoch(&self, u: &Unit, p: &Progress, open_epoch: Option<u64>) -> u64 {
        match open_epoch {
            Some(e) => e,
            None => 1 + self.max_epoch_seen(&u.sites).await.max(p.max_epoch),
        }
    }

    async fn prepare(
        &self,
        u: &Unit,
        p: &Progress,
        replay: bool,
        open_epoch: Option<u64>,
    ) -> Result<()> {
        let step = Step::Prepare;
        let epoch = self.step_epoch(u, p, open_epoch).await;
        self.begin(
            u,
            step,
            1,
            Some(epoch),
            replay,
            json!({"summary": format!("{} sites, {} copy jobs", u.sites.len(), u.jobs.len())}),
        )
        .await?;
        for job in &u.jobs {
            if !job.to.starts_with("ferry://") && self.cfg.copy.mode == ferry_sync::Mode::File {
                if let Err(e) = std::fs::create_dir_all(&job.to) {
                    return self.fail_unit_event(
                        u,
                        step,
                        1,
                        Some(epoch),
                        format!("{}: cannot create {}: {e}", job.label, job.to),
                    );
                }
            }
        }
        // The source routers must already serve every site; the others learn
        // them as served from the source, so traffic entering anywhere reaches it.
        let mut sent = Vec::new();
        for (name, res) in self.query_all(&self.routers, &u.sites).await {
            let r = self
                .routers
                .iter()
                .find(|r| r.name() == name)
                .expect("queried routers come from the list");
            let list = match res {
                Ok(l) => l,
                Err(e) => return self.fail_unit_event(u, step, 1, Some(epoch), e.to_string()),
            };
            if r.spec.datacenter == u.from_dc {
                let missing: Vec<&str> = list
                    .iter()
                    .filter(|s| s.absent)
                    .map(|s| s.host.as_str())
                    .collect();
                if !missing.is_empty() {
                    let shown: Vec<&str> = missing.iter().take(20).copied().collect();
                    return self.fail_unit_event(
                        u,
                        step,
                        1,
                        Some(epoch),
                        format!(
                            "source router {name} does not know {} site(s) of the unit: {}",
                            missing.len(),
                            shown.join(", ")
                        ),
                    );
                }
                continue;
            }
            let want = self.source_placement(u, r);
            let todo: Vec<String> = list
                .iter()
                .filter(|s| s.absent || s.placement != want)
                .map(|s| s.host.clone())
                .collect();
            if todo.is_empty() {
                continue;
            }
            let changes = self.changes(&todo, &want, "active", epoch);
            if let Err(e) = r.apply(&changes).await {
                return self.fail_unit_event(u, step, 1, Some(epoch), e.to_string());
            }
            sent.push(json!({"router": name, "sites": todo.len()}));
        }
        let mut db_detail = Vec::new();
        for g in &u.dbs {
            match dbmove::prepare(g, &self.cfg.db).await {
                Ok(d) => db_detail.push(d),
                Err(e) => return self.fail_unit_event(u, step, 1, Some(epoch), e.to_string()),
            }
        }
        let fps = self.fingerprints(&u.sites).await;
        let answering = fps.values().filter(|f| f.status != 0).count();
        self.end(
            u,
            step,
            1,
            Some(epoch),
            Outcome::Ok,
            json!({
                "summary": format!("{} sites known everywhere; {answering}/{} answered the fingerprint", u.sites.len(), u.sites.len()),
                "sent": sent,
                "databases": db_detail,
                "fingerprints": fps,
            }),
        )
        .await
    }

    fn open_side(
        job: &Job,
        to: bool,
        mode: ferry_sync::Mode,
    ) -> std::result::Result<Side, ferry_sync::SyncError> {
        let s = if to { &job.to } else { &job.from };
        match ferry_sync::Endpoint::parse(s)? {
            ferry_sync::Endpoint::Local(p) => {
                if to && mode == ferry_sync::Mode::File {
                    std::fs::create_dir_all(&p).map_err(|source| ferry_sync::SyncError::Io {
                        op: "create directory",
                        path: p.clone(),
                        source,
                    })?;
                }
                Ok(Side::Local(Box::new(ferry_sync::LocalTree::new(p))))
            }
            ferry_sync::Endpoint::Remote { host, port, volume } => {
                let key = job
                    .key
                    .ok_or_else(|| ferry_sync::SyncError::Auth(format!("no key for {host}")))?;
                Ok(Side::Remote(ferry_sync::RemoteTree::connect(
                    &host, port, &volume, &key, to,
                )?))
            }
        }
    }

    fn sync_opts(&self, checksum: bool) -> ferry_sync::SyncOptions {
        ferry_sync::SyncOptions {
            delete: true,
            checksum,
            // Owners can only be set by root; elsewhere comparing them would
            // make every pass see changes it cannot apply.
            owners: ferry_sync::local::running_as_root(),
            ..Default::default()
        }
    }

    async fn pre_copy(&self, u: &Unit, replay: bool) -> Result<()> {
        let step = Step::PreCopy;
        self.begin(
            u,
            step,
            1,
            None,
            replay,
            json!({"summary": format!("{} copy jobs", u.jobs.len())}),
        )
        .await?;
        let mode = self.cfg.copy.mode;
        let opts = self.sync_opts(false);
        let conv = ferry_sync::ConvergeOptions {
            max_freeze: self.cfg.freeze.max_freeze,
            max_passes: self.cfg.copy.max_passes,
        };
        let mut results = Vec::new();
        let mut all_ready = true;
        for (i, job) in u.jobs.iter().enumerate() {
            // The first pass alone (so a failpoint can sit after it), then
            // converging passes.
            let (j, o) = (job.clone(), opts.clone());
            let first = blocking(job, move || {
                let (s, d) = (
                    Self::open_side(&j, false, mode)?,
                    Self::open_side(&j, true, mode)?,
                );
                match mode {
                    ferry_sync::Mode::File => {
                        ferry_sync::run_pass(s.source(), d.dest(), &o, 1, &|_| {})
                    }
                    ferry_sync::Mode::Block => {
                        ferry_sync::run_block_pass(s.source(), d.dest(), &o, 1, &|_| {})
                    }
                }
            })
            .await;
            let first = match first {
                Ok(f) => f,
                Err(e) => return self.fail_unit_event(u, step, 1, None, e.to_string()),
            };
            if i == 0 {
                self.opts.failpoints.hit("pre_copy:inside").await?;
            }
            let (j, o, c) = (job.clone(), opts.clone(), conv.clone());
            let res = blocking(job, move || {
                let (s, d) = (
                    Self::open_side(&j, false, mode)?,
                    Self::open_side(&j, true, mode)?,
                );
                ferry_sync::converge(s.source(), d.dest(), &o, mode, &c, &|_| {})
            })
            .await;
            match res {
                Ok(c) => {
                    all_ready &= c.ready;
                    results.push(json!({
                        "job": job.label,
                        "first_pass": {"changed_entries": first.changed_entries, "changed_bytes": first.changed_bytes},
                        "passes": c.passes.len() + 1,
                        "ready": c.ready,
                        "reason": c.reason,
                        "predicted_final_s": c.passes.last().map(|p| p.predicted_final_secs),
                    }));
                }
                Err(e) => return self.fail_unit_event(u, step, 1, None, e.to_string()),
            }
        }
        let mut db_results = Vec::new();
        for g in &u.dbs {
            match dbmove::pre_copy(g, &self.cfg.db).await {
                Ok((ready, d)) => {
                    all_ready &= ready;
                    db_results.push(d);
                }
                Err(e) => return self.fail_unit_event(u, step, 1, None, e.to_string()),
            }
        }
        let summary = if all_ready {
            format!(
                "{} jobs converged within max_freeze {:?}{}",
                u.jobs.len(),
                self.cfg.freeze.max_freeze,
                if u.dbs.is_empty() {
                    String::new()
                } else {
                    format!("; {} database server(s) caught up", u.dbs.len())
                }
            )
        } else {
            "not converging for some jobs (the freeze budget is advisory here: the freeze goes on; see jobs)".to_string()
        };
        self.end(u, step, 1, None, Outcome::Ok, json!({"summary": summary, "converged": all_ready, "advisory": !all_ready, "jobs": results, "databases": db_results}))
            .await
    }

    async fn await_window(&self, u: &Unit, replay: bool, skip: bool) -> Result<()> {
        let step = Step::AwaitWindow;
        self.begin(u, step, 1, None, replay, json!({})).await?;
        let detail = if self.opts.now || skip {
            json!({"summary": "skipped (--now)", "skipped": true})
        } else if let Some(w) = self.cfg.window {
            let started = Instant::now();
            loop {
                let minute = ((now_ms() / 60_000) % 1440) as u32;
                if w.contains(minute) {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            json!({"summary": format!("window open after {:.0}s", started.elapsed().as_secs_f64())})
        } else {
            json!({"summary": "no window configured"})
        };
        self.end(u, step, 1, None, Outcome::Ok, detail).await
    }

    /// Waits until every router of `group` reports `epoch`, frozen, and 0 in
    /// flight for every site; by `deadline`. Errs with (router, why).
    async fn wait_drained(
        &self,
        group: &[RouterClient],
        sites: &[String],
        epoch: u64,
        deadline: Instant,
    ) -> std::result::Result<(), (String, String)> {
        let mut pending: Vec<RouterClient> = group.to_vec();
        let mut why: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let mut still = Vec::new();
            for (name, res) in self.query_all_by(&pending, sites, Some(deadline)).await {
                let ok = match res {
                    Ok(list) => {
                        let bad = list.iter().find(|s| {
                            s.absent || s.epoch != epoch || s.state != "frozen" || s.in_flight > 0
                        });
                        match bad {
                            None => true,
                            Some(s) => {
                                why.insert(
                                    name.clone(),
                                    format!(
                                        "{}: epoch {} {} in flight {}",
                                        s.host, s.epoch, s.state, s.in_flight
                                    ),
                                );
                                false
                            }
                        }
                    }
                    Err(e) => {
                        why.insert(name.clone(), e.to_string());
                        false
                    }
                };
                if !ok {
                    if let Some(r) = pending.iter().find(|r| r.name() == name) {
                        still.push(r.clone());
                    }
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let r = still[0].name().to_string();
                let w = why.get(&r).cloned().unwrap_or_default();
                return Err((
                    r,
                    format!("did not acknowledge epoch {epoch} with 0 in flight in time ({w})"),
                ));
            }
            pending = still;
            tokio::time::sleep(self.opts.poll).await;
        }
    }

    async fn freeze(
        &self,
        u: &Unit,
        p: &Progress,
        attempt: u32,
        replay: bool,
        open_epoch: Option<u64>,
    ) -> Result<()> {
        let step = Step::Freeze;
        let epoch = self.step_epoch(u, p, open_epoch).await;
        self.begin(
            u,
            step,
            attempt,
            Some(epoch),
            replay,
            json!({"summary": format!("attempt {attempt}, epoch {epoch}")}),
        )
        .await?;
        if replay {
            if let Some((ab_epoch, fail, reason)) = &p.abandoning {
                return self
                    .finish_abandon(u, step, attempt, epoch, *ab_epoch, *fail, reason.clone())
                    .await;
            }
        }
        let deadline = Instant::now() + self.cfg.freeze.drain_timeout;
        // Destination-side routers first: they forward to the source. Were a
        // source router frozen first, a request a destination router had
        // already forwarded to it would be held there while the forwarding
        // router waits for that very request to finish: a drain deadlock.
        let (src_group, dst_group): (Vec<RouterClient>, Vec<RouterClient>) = self
            .routers
            .iter()
            .cloned()
            .partition(|r| r.spec.datacenter == u.from_dc);
        let mut skipped = Vec::new();
        for (gi, group) in [dst_group, src_group].into_iter().enumerate() {
            if gi == 1 {
                self.opts.failpoints.hit("freeze:inside").await?;
            }
            let mut acking = Vec::new();
            let mut set = tokio::task::JoinSet::new();
            for r in group {
                if self.opts.faults.skip_freeze.iter().any(|n| n == r.name()) {
                    // FERRY_FAULTS: a deliberate bug (see failpoint.rs).
                    tracing::error!(
                        router = r.name(),
                        "FAULT skip-freeze: not freezing this router"
                    );
                    skipped.push(r.name().to_string());
                    continue;
                }
                let changes =
                    self.changes(&u.sites, &self.source_placement(u, &r), "frozen", epoch);
                acking.push(r.clone());
                let poll = self.opts.poll;
                set.spawn(async move {
                    let res = send_freeze(&r, &changes, deadline, poll).await;
                    (r.name().to_string(), res)
                });
            }
            let mut failed = None;
            while let Some(j) = set.join_next().await {
                if let Ok((name, Err(e))) = j {
                    failed.get_or_insert((name, e));
                }
            }
            if failed.is_none() {
                if let Err(f) = self.wait_drained(&acking, &u.sites, epoch, deadline).await {
                    failed = Some(f);
                }
            }
            if let Some((router, why)) = failed {
                let reason = format!("router {router} {why}");
                let last = attempt >= self.cfg.freeze.max_attempts;
                return self.abandon(u, step, attempt, epoch, last, reason).await;
            }
        }
        // Every router holds the sites: now the databases' writes are blocked
        // at the source, and only then is each position read.
        let mut positions = Vec::new();
        for g in &u.dbs {
            match dbmove::freeze(g, &self.cfg.db).await {
                Ok(d) => positions.push(d),
                Err(e) => {
                    let last = attempt >= self.cfg.freeze.max_attempts;
                    return self
                        .abandon(u, step, attempt, epoch, last, e.to_string())
                        .await;
                }
            }
        }
        let mut summary = format!("every router acknowledged epoch {epoch} with 0 in flight");
        for d in &positions {
            summary.push_str(&format!(
                "; {} frozen at {}",
                d["server"].as_str().unwrap_or("?"),
                d["position"].as_str().unwrap_or("?")
            ));
        }
        let mut d = json!({"summary": summary});
        if !positions.is_empty() {
            d["databases"] = json!(positions);
        }
        if !skipped.is_empty() {
            d["fault_skipped"] = json!(skipped);
        }
        self.end(u, step, attempt, Some(epoch), Outcome::Ok, d)
            .await
    }

    /// Abandons a freeze: journals it, sends (source, active, e+1) everywhere.
    async fn abandon(
        &self,
        u: &Unit,
        step: Step,
        attempt: u32,
        epoch: u64,
        fail: bool,
        reason: String,
    ) -> Result<()> {
        let ab = epoch + 1;
        tracing::warn!(unit = %u.id, step = step.as_str(), attempt, "abandoning the freeze: {reason}");
        self.emit(NewEvent {
            unit: u.id.clone(),
            step: Some(step),
            phase: Phase::Note,
            attempt,
            direction: u.dir,
            epoch: Some(ab),
            outcome: None,
            detail: json!({"kind": "abandoning", "abandon_epoch": ab, "fail": fail, "reason": reason}),
        })?;
        self.finish_abandon(u, step, attempt, epoch, ab, fail, reason)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_abandon(
        &self,
        u: &Unit,
        step: Step,
        attempt: u32,
        epoch: u64,
        ab: u64,
        fail: bool,
        reason: String,
    ) -> Result<()> {
        // The databases first, while the routers still hold the sites (no
        // request meets a locked account): an abandoned freeze unlocks the
        // source and keeps the catch-up; a failed verification drops the
        // destination's copy too. Both may run again on replay.
        let mut db_error = None;
        for g in &u.dbs {
            let undo = if step == Step::FinalCopy || fail {
                dbmove::rollback(g, &self.cfg.db).await
            } else {
                dbmove::unfreeze(g, &self.cfg.db).await
            };
            if let Err(e) = undo {
                tracing::error!(unit = %u.id, server = %g.server, error = %e, "cannot undo the database freeze");
                db_error.get_or_insert(e);
            }
        }
        let work = self
            .routers
            .iter()
            .map(|r| {
                (
                    r.clone(),
                    self.changes(&u.sites, &self.source_placement(u, r), "active", ab),
                )
            })
            .collect();
        // Bounded: a router that does not take it is owed the change, and it
        // is sent again before the unit's next step.
        let per_try = self
            .opts
            .admin_timeout
            .min(self.cfg.freeze.drain_timeout)
            .min(Duration::from_secs(2));
        let unpaid = self.send_with_retries(work, 3, per_try).await;
        for (r, c, why) in &unpaid {
            self.note_owed(u, attempt, r, c, why)?;
        }
        let (outcome, state, message) = if step == Step::FinalCopy {
            (
                Outcome::Failed,
                "failed",
                format!("verification failed; serving from {}: {reason}", u.from_dc),
            )
        } else if fail {
            (
                Outcome::Abandoned,
                "failed",
                format!(
                    "freeze abandoned {attempt} time(s), giving up; serving from {}: {reason}",
                    u.from_dc
                ),
            )
        } else {
            (
                Outcome::Abandoned,
                "waiting",
                format!(
                    "freeze attempt {attempt} abandoned, retrying in {:?}: {reason}",
                    self.cfg.freeze.retry_after
                ),
            )
        };
        if let Some(e) = db_error {
            // Not journaled as ended: a resume replays this abandon, the
            // database undo with it (the routers' changes are no-ops then).
            return Err(e);
        }
        let owed: Vec<&String> = unpaid.iter().map(|x| &x.0).collect();
        // Through `end`: the `<step>:after` failpoint sits here too, so a
        // crash between the abandon and its end event is tested.
        self.end(
            u,
            step,
            attempt,
            Some(epoch),
            outcome,
            json!({
                "summary": message,
                "message": message,
                "unit_state": state,
                "abandon_epoch": ab,
                "owed": owed,
                "reason": reason,
            }),
        )
        .await
    }

    async fn final_copy(&self, u: &Unit, p: &Progress, attempt: u32, replay: bool) -> Result<()> {
        let step = Step::FinalCopy;
        let epoch = p.freeze_epoch.unwrap_or(p.max_epoch);
        self.begin(u, step, attempt, Some(epoch), replay, json!({}))
            .await?;
        if replay {
            if let Some((ab, fail, reason)) = &p.abandoning {
                return self
                    .finish_abandon(u, step, attempt, epoch, *ab, *fail, reason.clone())
                    .await;
            }
        }
        let mode = self.cfg.copy.mode;
        let opts = self.sync_opts(self.cfg.copy.checksum);
        let mut passes = Vec::new();
        for job in &u.jobs {
            let (j, o) = (job.clone(), opts.clone());
            let res = blocking(job, move || {
                let (s, d) = (
                    Self::open_side(&j, false, mode)?,
                    Self::open_side(&j, true, mode)?,
                );
                let pass = |n| match mode {
                    ferry_sync::Mode::File => {
                        ferry_sync::run_pass(s.source(), d.dest(), &o, n, &|_| {})
                    }
                    ferry_sync::Mode::Block => {
                        ferry_sync::run_block_pass(s.source(), d.dest(), &o, n, &|_| {})
                    }
                };
                let a = pass(1)?;
                // A second pass when the first changed anything: catches what
                // moved while the first ran (nothing should: the site is frozen).
                let b = if a.changed_entries > 0 || a.deleted > 0 {
                    Some(pass(2)?)
                } else {
                    None
                };
                Ok((a, b))
            })
            .await;
            match res {
                Ok((a, b)) => passes.push(json!({
                    "job": job.label,
                    "changed_entries": a.changed_entries,
                    "changed_bytes": a.changed_bytes,
                    "second_pass": b.map(|b| b.changed_entries),
                })),
                Err(e) => {
                    return self
                        .abandon(u, step, attempt, epoch, true, e.to_string())
                        .await
                }
            }
        }
        self.opts.failpoints.hit("final_copy:inside").await?;
        let mut roots = Vec::new();
        for job in &u.jobs {
            let (j, bs) = (job.clone(), opts.block_size);
            let res = blocking(job, move || {
                let (s, d) = (
                    Self::open_side(&j, false, mode)?,
                    Self::open_side(&j, true, mode)?,
                );
                match mode {
                    ferry_sync::Mode::File => {
                        let v = ferry_sync::verify(s.source(), d.dest(), 10)?;
                        Ok((
                            v.equal(),
                            hex(&v.source_root),
                            v.differing
                                .iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>(),
                        ))
                    }
                    ferry_sync::Mode::Block => {
                        let v = ferry_sync::verify_blocks(s.source(), d.dest(), bs, 10)?;
                        Ok((
                            v.equal(),
                            hex(&v.source_root),
                            v.differing.iter().map(|b| format!("block {b}")).collect(),
                        ))
                    }
                }
            })
            .await;
            match res {
                Ok((true, root, _)) => roots.push(json!({"job": job.label, "root": root})),
                Ok((false, _, diff)) => {
                    let reason = format!(
                        "{}: Merkle roots differ; first differing: {}",
                        job.label,
                        diff.join(", ")
                    );
                    return self.abandon(u, step, attempt, epoch, true, reason).await;
                }
                Err(e) => {
                    return self
                        .abandon(u, step, attempt, epoch, true, e.to_string())
                        .await
                }
            }
        }
        let mut db_checks = Vec::new();
        for g in &u.dbs {
            match dbmove::final_copy(g, &self.cfg.db).await {
                Ok(dbmove::Final::Equal(d)) => db_checks.push(d),
                // The same path as a Merkle mismatch: abandon, the unit fails,
                // the source untouched (and writable again).
                Ok(dbmove::Final::Differ(reason)) => {
                    return self.abandon(u, step, attempt, epoch, true, reason).await
                }
                Err(e) => {
                    return self
                        .abandon(u, step, attempt, epoch, true, e.to_string())
                        .await
                }
            }
        }
        let mut summary = format!("{} jobs copied; Merkle roots equal", u.jobs.len());
        if !u.dbs.is_empty() {
            summary.push_str(&format!(
                "; {} database server(s) at the freeze position{}",
                u.dbs.len(),
                if self.cfg.db.verify {
                    ", checksums equal"
                } else {
                    ""
                }
            ));
        }
        self.end(
            u,
            step,
            attempt,
            Some(epoch),
            Outcome::Ok,
            json!({"summary": summary, "passes": passes, "roots": roots, "databases": db_checks}),
        )
        .await
    }

    async fn flip(
        &self,
        u: &Unit,
        p: &Progress,
        attempt: u32,
        replay: bool,
        open_epoch: Option<u64>,
    ) -> Result<()> {
        let step = Step::Flip;
        let epoch = open_epoch.unwrap_or(p.freeze_epoch.unwrap_or(p.max_epoch) + 1);
        self.begin(
            u,
            step,
            attempt,
            Some(epoch),
            replay,
            json!({"summary": format!("epoch {epoch}")}),
        )
        .await?;
        // The destination must be the databases' home before any request is
        // sent there. A few tries (the switch repeats safely); then the unit
        // fails with every router still holding the sites at the source.
        let mut switched = Vec::new();
        for g in &u.dbs {
            let mut tries = 0;
            let d = loop {
                tries += 1;
                match dbmove::switch(g, &self.cfg.db).await {
                    Ok(d) => break d,
                    Err(e) if tries >= 5 => {
                        let msg = format!("switch refused before any router flipped: {e}");
                        return self.fail_unit_event(u, step, attempt, Some(epoch), msg);
                    }
                    Err(e) => {
                        tracing::warn!(unit = %u.id, server = %g.server, error = %e, "switch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500 * tries)).await;
                    }
                }
            };
            switched.push(d);
        }
        let (dst_group, rest): (Vec<RouterClient>, Vec<RouterClient>) = self
            .routers
            .iter()
            .cloned()
            .partition(|r| r.spec.datacenter == u.to_dc);
        for (gi, group) in [dst_group, rest].into_iter().enumerate() {
            if gi == 1 {
                self.opts.failpoints.hit("flip:inside").await?;
            }
            let mut set = tokio::task::JoinSet::new();
            for r in group {
                let changes = self.changes(&u.sites, &self.dest_placement(u, &r), "active", epoch);
                set.spawn(async move {
                    let res = send_flip(&r, &changes).await;
                    (r.name().to_string(), res)
                });
            }
            while let Some(j) = set.join_next().await {
                if let Ok((name, Err(e))) = j {
                    let msg = format!(
                        "flip refused by router {name} after it began (a newer epoch there?): {e}"
                    );
                    return self.fail_unit_event(u, step, attempt, Some(epoch), msg);
                }
            }
        }
        let freeze_ms = p.freeze_began_ms.map(|b| now_ms().saturating_sub(b));
        self.end(
            u,
            step,
            attempt,
            Some(epoch),
            Outcome::Ok,
            json!({"summary": format!("serving from {}; frozen {} ms", u.to_dc, freeze_ms.unwrap_or(0)), "freeze_ms": freeze_ms, "databases": switched}),
        )
        .await
    }

    async fn unfreeze(&self, u: &Unit, attempt: u32, replay: bool) -> Result<()> {
        let step = Step::Unfreeze;
        self.begin(u, step, attempt, None, replay, json!({}))
            .await?;
        let started = Instant::now();
        let deadline = started + self.cfg.freeze.unfreeze_timeout;
        let mut remaining: BTreeMap<String, u64>;
        loop {
            remaining = BTreeMap::new();
            for (name, res) in self.query_all(&self.routers, &u.sites).await {
                match res {
                    Ok(list) => {
                        let held: u64 = list.iter().map(|s| s.held).sum();
                        if held > 0 {
                            remaining.insert(name, held);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(router = name, error = %e, "cannot read held requests")
                    }
                }
            }
            if remaining.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(self.opts.poll.max(Duration::from_millis(50))).await;
        }
        let waited = started.elapsed().as_millis() as u64;
        let summary = if remaining.is_empty() {
            format!("no request held after {waited} ms")
        } else {
            format!("still held after {waited} ms: {remaining:?}")
        };
        self.end(
            u,
            step,
            attempt,
            None,
            Outcome::Ok,
            json!({"summary": summary, "waited_ms": waited, "still_held": remaining}),
        )
        .await
    }

    async fn post_check(&self, u: &Unit, p: &Progress, attempt: u32, replay: bool) -> Result<()> {
        let step = Step::PostCheck;
        self.begin(u, step, attempt, None, replay, json!({}))
            .await?;
        let before: BTreeMap<String, Fingerprint> = p
            .fingerprints
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let after = self.fingerprints(&u.sites).await;
        let mut diffs = Vec::new();
        for (h, a) in &after {
            match before.get(h) {
                Some(b) if b == a => {}
                Some(b) => diffs.push(json!({"host": h, "before": b.status, "after": a.status, "body_changed": b.body != a.body})),
                None => diffs.push(json!({"host": h, "before": null, "after": a.status})),
            }
        }
        let mut d = json!({"differences": diffs, "checked": after.len()});
        if diffs.is_empty() {
            d["summary"] = json!(format!("{} sites answer as before", after.len()));
        } else {
            let names: Vec<String> = diffs
                .iter()
                .take(10)
                .map(|x| {
                    format!(
                        "{} ({} -> {})",
                        x["host"].as_str().unwrap_or("?"),
                        x["before"],
                        x["after"]
                    )
                })
                .collect();
            let msg = format!(
                "post-check: {} of {} sites answer differently: {}",
                diffs.len(),
                after.len(),
                names.join(", ")
            );
            d["summary"] = json!(msg.clone());
            d["message"] = json!(msg);
        }
        self.end(u, step, attempt, None, Outcome::Ok, d).await
    }
}

fn step_event(
    u: &Unit,
    step: Step,
    phase: Phase,
    attempt: u32,
    epoch: Option<u64>,
    outcome: Option<Outcome>,
    detail: Value,
) -> NewEvent {
    NewEvent {
        unit: u.id.clone(),
        step: Some(step),
        phase,
        attempt,
        direction: u.dir,
        epoch,
        outcome,
        detail,
    }
}

/// Sends a freeze to `r` until it takes it or `deadline` (a stale epoch
/// ends it at once). Spawned per router: owns what it needs.
async fn send_freeze(
    r: &RouterClient,
    changes: &[SiteChange],
    deadline: Instant,
    poll: Duration,
) -> std::result::Result<(), String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("did not take the freeze in time".to_string());
        }
        match tokio::time::timeout(left, r.apply(changes)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e @ OrchError::Router { stale: true, .. })) => return Err(e.to_string()),
            Ok(Err(e)) => {
                tracing::warn!(router = r.name(), error = %e, "freeze not taken yet; retrying");
                tokio::time::sleep(poll.max(Duration::from_millis(100)).min(left)).await;
            }
            Err(_) => return Err("did not answer in time".to_string()),
        }
    }
}

/// Sends a flip to `r`, retrying with backoff for as long as it takes (after
/// the flip began there is no going back: a router that does not take it
/// stays frozen, which holds its requests but never splits the site).
async fn send_flip(r: &RouterClient, changes: &[SiteChange]) -> Result<()> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match r.apply(changes).await {
            Ok(_) => return Ok(()),
            Err(e @ OrchError::Router { stale: true, .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(router = r.name(), error = %e, retry_in = ?backoff, "flip not taken; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

enum Side {
    Local(Box<ferry_sync::LocalTree>),
    Remote(ferry_sync::RemoteTree),
}

impl Side {
    fn source(&self) -> &dyn ferry_sync::Source {
        match self {
            Side::Local(t) => t.as_ref(),
            Side::Remote(t) => t,
        }
    }
    fn dest(&self) -> &dyn ferry_sync::Dest {
        match self {
            Side::Local(t) => t.as_ref(),
            Side::Remote(t) => t,
        }
    }
}

/// Runs replicator work (std I/O + rayon) off the async threads.
async fn blocking<T: Send + 'static>(
    job: &Job,
    f: impl FnOnce() -> std::result::Result<T, ferry_sync::SyncError> + Send + 'static,
) -> Result<T> {
    let label = job.label.clone();
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|source| OrchError::Sync { job: label, source }),
        Err(e) => Err(OrchError::Sync {
            job: label,
            source: ferry_sync::SyncError::Protocol(format!("copy thread failed: {e}")),
        }),
    }
}

/// The filers a unit names (its own list, else its hostings').
fn unit_filers(u: &PlanUnit) -> Vec<String> {
    let mut v: Vec<String> = u.filers.clone();
    for h in &u.hostings {
        if !v.contains(&h.filer) {
            v.push(h.filer.clone());
        }
    }
    v
}

fn hex(d: &[u8; 32]) -> String {
    blake3::Hash::from(*d).to_hex().to_string()
}
