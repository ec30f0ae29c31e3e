//! The runbook: each unit through prepare, pre-copy, window, freeze, final
//! copy + verify, flip, unfreeze, post-check, done
//! (shared/design/cutover.md), every step journaled before it acts.
//!
//! Lanes ([`lanes`]): the selected units are laid out over `parallel`
//! lanes (the plan's lanes; `--parallel` overrides the plan's count). Each
//! lane runs its units back to back; while one of its units is in its
//! freeze stage (window .. done), the pre-copy stage (prepare, pre-copy) of
//! its next unit runs beside it, so at most `parallel` units are frozen at
//! once and at most `parallel` pre-copies run. Every copy job of every lane
//! takes its data from one budget (`--bwlimit`, [`budget`]). A unit that
//! fails ends failed in the journal and its lane goes on with its next
//! unit; the other lanes do not notice. A lane whose step errs (the
//! journal cannot be written, ...) stops; the others run to their end and
//! the error is returned then. An interruption (a `kill` failpoint in
//! process) stops every lane at once, as a SIGKILL would. With one lane,
//! nothing runs beside anything: each unit start to end, in plan order.
//!
//! Replay: where a unit stands is read back from the journal
//! ([`UnitProgress::of`]). A step with a `begin` and no `end` is run again with
//! the epoch its `begin` recorded, so the routers see exactly the same
//! changes (same epoch + same content is a no-op for them); every step is
//! idempotent (copies converge, verification reads, sends repeat).
//!
//! Layout: this file holds the [`Orchestrator`] (start, resume, the loop
//! that picks each unit's next step); `unit_run` the context every step
//! runs in (`UnitRun`: the unit, where it stands, the attempt,
//! whether the step is a replay, the epoch its begin recorded); one file per
//! step (`prepare`, `pre_copy`, `window`, `freeze`, `abandon`, `final_copy`,
//! `flip`, `unfreeze`, `post_check`, `done`) and per rollback before the
//! flip (`rollback`); `fleet_acks`: with the run in etcd, the freeze's
//! acknowledgements by every router registered or seen there; `fencing`: the changes sent to routers, epochs,
//! changes owed by routers that were down; `copy`: the replicator's jobs
//! (through `budget`, the run's shared bandwidth); `lanes`: the layout;
//! `fingerprint`: what the sites answer before and after; `unit`: a
//! plan unit as the runbook sees it in one direction.

mod abandon;
mod budget;
mod copy;
mod db_turns;
mod done;
mod fencing;
mod final_copy;
mod fingerprint;
#[cfg(feature = "etcd")]
mod fleet_acks;
mod flip;
mod freeze;
pub mod lanes;
mod post_check;
mod pre_copy;
mod prepare;
mod rollback;
mod unfreeze;
mod unit;
mod unit_run;
mod window;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::MigrateConfig;
use crate::error::{OrchError, Result};
use crate::event::{NewEvent, Note, Phase};
use crate::failpoint::{Failpoints, Faults};
use crate::journal::{now_ms, EventRecord, Journal, Migration, RunMeta, UnitMeta};
use crate::plan::Plan;
pub use crate::progress::UnitProgress;
use crate::progress::{EndedStep, OpenStep};
use crate::router::{Http, RouterClient};
use crate::status::{Direction, Outcome, Step, UnitState};
use ferry_journal::Steps;

pub use budget::Budget;
use copy::SharedBudget;
pub use lanes::Lane;
pub(crate) use unit::unit_filers;
use unit_run::UnitRun;

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
    /// Lanes (units frozen at once); `None`: the plan's `parallel` (1 when
    /// the plan does not say).
    pub parallel: Option<usize>,
    /// Bytes per second for all copy jobs together (`--bwlimit`); `None`:
    /// unlimited.
    pub bwlimit: Option<u64>,
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
            parallel: None,
            bwlimit: None,
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

/// The orchestrator of one run: config, plan, journal, routers.
pub struct Orchestrator {
    cfg: MigrateConfig,
    plan: Plan,
    journal: Arc<Journal>,
    selected: Vec<String>,
    opts: Options,
    /// One keep-alive client for every router call of every lane (its
    /// connections are reused; no lock is held around a call).
    http: Http,
    routers: Vec<RouterClient>,
    /// Lanes asked for (`--parallel`, else the plan's).
    parallel: usize,
    /// The selected units over the run's lanes.
    lanes: Vec<Lane>,
    /// Every copy job's data goes through it (`--bwlimit`).
    budget: SharedBudget,
    /// One database move per server at a time ([`db_turns`]).
    db_turns: db_turns::DbTurns,
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
        journal: impl Into<crate::journal::JournalAt>,
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
    pub fn resume(
        journal: impl Into<crate::journal::JournalAt>,
        opts: Options,
    ) -> Result<Orchestrator> {
        let j = Journal::open(journal)?;
        let meta = j.meta()?.ok_or_else(|| OrchError::Journal {
            path: j.path().to_path_buf(),
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
        let parallel = opts
            .parallel
            .or(plan.parallel.map(|p| p as usize))
            .unwrap_or(1)
            .max(1);
        let lanes = lanes::lay_out(&plan, &selected, parallel);
        let budget = opts.bwlimit.map(|b| Arc::new(Budget::new(b)));
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
            parallel,
            lanes,
            budget,
            db_turns: db_turns::DbTurns::default(),
            on_append,
        }
    }

    /// The selected units over the run's lanes.
    pub fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    /// The lane of unit `id` when the run has several (a run of one lane
    /// journals and prints what it always did).
    pub fn lane_of(&self, id: &str) -> Option<u32> {
        if self.parallel <= 1 {
            return None;
        }
        lanes::lane_of(&self.lanes, id)
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
        self.session_note_saying(what, String::new())
    }

    /// A session note whose summary goes on with `more`.
    fn session_note_saying(&self, what: &str, more: String) -> Result<()> {
        self.emit(NewEvent {
            unit: String::new(),
            step: None,
            phase: Phase::Note,
            attempt: 0,
            direction: Direction::Forward,
            epoch: None,
            outcome: None,
            detail: Note::Session {
                pid: std::process::id(),
                what: what.to_string(),
                summary: format!("orchestrator {what} (pid {}){more}", std::process::id()),
            }
            .into(),
        })?;
        Ok(())
    }

    /// Runs (or goes on with) every selected unit over the run's lanes
    /// (see the module doc); the summary lists the units in plan order.
    pub async fn run(&self) -> Result<RunSummary> {
        let layout = lanes::describe(&self.lanes);
        tracing::info!(parallel = self.parallel, lanes = %layout, "run");
        // With lanes, the session note lists them (one lane: as before lanes).
        let more = if self.parallel > 1 {
            format!(
                ", {} lane{}: {layout}",
                self.lanes.len(),
                if self.lanes.len() == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        };
        self.session_note_saying("run", more)?;
        // Units a stopped run left past their window (waiting for it,
        // frozen, flipping; or rolling back) go first in their lane, so no
        // lane freezes a unit while another of its units is still frozen.
        // A lane holding several (a resume with another --parallel) runs
        // the others at once, beside the lanes: they are frozen already.
        let mut work: Vec<(Option<u32>, Vec<String>)> = Vec::new();
        for lane in &self.lanes {
            let mut first = Vec::new();
            let mut rest = Vec::new();
            for id in &lane.units {
                let p = UnitProgress::of(id, &self.journal.unit_events(id)?);
                // A unit left mid-move keeps its database servers' turns.
                if p.terminal.is_none() && (p.open.is_some() || p.last_end.is_some()) {
                    let dir = p.direction.unwrap_or(Direction::Forward);
                    let servers = self.db_servers_of(id, dir)?;
                    self.db_turns.try_take(id, &servers);
                }
                if past_window(&p) {
                    first.push(id.clone());
                } else {
                    rest.push(id.clone());
                }
            }
            for extra in first.drain(1.min(first.len())..) {
                work.push((Some(lane.index), vec![extra]));
            }
            first.extend(rest);
            work.push((Some(lane.index), first));
        }
        let runs = work.into_iter().map(|(lane, units)| async move {
            match self.run_lane(lane, &units).await {
                // A kill is a kill: every lane stops where it stands.
                Err(e @ OrchError::Interrupted(_)) => Err(e),
                other => Ok(other),
            }
        });
        let ended = futures_util::future::try_join_all(runs).await?;
        let mut states = std::collections::HashMap::new();
        let mut first_error = None;
        for r in ended {
            match r {
                Ok(v) => states.extend(v),
                Err(e) => {
                    tracing::error!(error = %e, "a lane stopped");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let units = self
            .selected
            .iter()
            .map(|id| {
                let s = states.get(id).copied().unwrap_or(UnitState::Pending);
                (id.clone(), s)
            })
            .collect();
        Ok(RunSummary { units })
    }

    /// The database servers unit `id` moves databases of.
    fn db_servers_of(&self, id: &str, dir: Direction) -> Result<Vec<String>> {
        Ok(self
            .unit(id, dir)?
            .dbs
            .into_iter()
            .map(|g| g.server)
            .collect())
    }

    /// One lane: its units back to back; with more than one lane, the
    /// pre-copy stage of the next unit beside the freeze stage of this one.
    async fn run_lane(
        &self,
        lane: Option<u32>,
        units: &[String],
    ) -> Result<Vec<(String, UnitState)>> {
        let mut out = Vec::new();
        if self.parallel <= 1 {
            for id in units {
                out.push((
                    id.clone(),
                    self.advance(id, None).await?.unwrap_or(UnitState::Pending),
                ));
            }
            return Ok(out);
        }
        let mut pre_copied = false;
        for (i, id) in units.iter().enumerate() {
            if !pre_copied {
                self.advance(id, Some(Step::AwaitWindow)).await?;
            }
            let next = units.get(i + 1);
            if let Some(n) = next {
                tracing::info!(lane, unit = %id, next = %n, "freeze stage; the lane's next unit pre-copies beside it");
            }
            let (state, _) = tokio::try_join!(self.advance(id, None), async {
                match next {
                    Some(n) => self.advance(n, Some(Step::AwaitWindow)).await,
                    None => Ok(None),
                }
            })?;
            pre_copied = next.is_some();
            out.push((id.clone(), state.unwrap_or(UnitState::Pending)));
        }
        Ok(out)
    }

    /// Runs unit `id` from where its journal stands until it ends, or
    /// (forward only) until its next step is `until`: then `None`. A unit
    /// already ended may still pay a change a router owes.
    async fn advance(&self, id: &str, until: Option<Step>) -> Result<Option<UnitState>> {
        let mut p = UnitProgress::of(id, &self.journal.unit_events(id)?);
        if let Some(t) = p.terminal {
            // A failed unit may have left a change owed by a router that
            // was down (an abandon it never got): pay it now.
            if !p.owed.is_empty() {
                let u = self.unit(id, p.direction.unwrap_or(Direction::Forward))?;
                self.pay_owed(&u, &mut p).await?;
            }
            return Ok(Some(t));
        }
        let dir = p.direction.unwrap_or(Direction::Forward);
        let until = until.filter(|_| dir == Direction::Forward);
        self.run_unit_until(id, dir, p, dir == Direction::Reverse, until)
            .await
    }

    async fn run_unit(&self, id: &str, dir: Direction) -> Result<UnitState> {
        let p = UnitProgress::of(id, &self.journal.unit_events(id)?);
        self.run_unit_from(id, dir, p, dir == Direction::Reverse)
            .await
    }

    /// Runs one unit's steps from where `p` stands until it ends (done,
    /// rolled back, failed) or a step errs.
    async fn run_unit_from(
        &self,
        id: &str,
        dir: Direction,
        p: UnitProgress,
        skip_window: bool,
    ) -> Result<UnitState> {
        // Without `until` it only returns once the unit ended.
        Ok(self
            .run_unit_until(id, dir, p, skip_window, None)
            .await?
            .unwrap_or(UnitState::Running))
    }

    /// [`Self::run_unit_from`], stopping before `until` (`None` then).
    async fn run_unit_until(
        &self,
        id: &str,
        dir: Direction,
        mut p: UnitProgress,
        skip_window: bool,
        until: Option<Step>,
    ) -> Result<Option<UnitState>> {
        let u = self.unit(id, dir)?;
        let lane = self.lane_of(id);
        tracing::info!(unit = id, lane, direction = ?dir, sites = u.sites.len(), "unit");
        let servers: Vec<String> = u.dbs.iter().map(|g| g.server.clone()).collect();
        loop {
            self.pay_owed(&u, &mut p).await?;
            if let Some(t) = p.terminal {
                self.db_turns.give_back(id);
                return Ok(Some(t));
            }
            if let Some(until) = until {
                let next = match (p.open, p.last_end) {
                    (Some(o), _) => Some(o.step),
                    (None, Some(e)) if e.outcome == Outcome::Ok => e.step.next(),
                    (None, Some(e)) if e.outcome == Outcome::Abandoned => Some(Step::Freeze),
                    (None, Some(_)) => None,
                    (None, None) => Some(Step::Prepare),
                };
                if next.is_some_and(|s| s >= until) {
                    return Ok(None);
                }
            }
            let Some((step, replay, attempt)) = self.next_step(id, &p).await else {
                self.db_turns.give_back(id);
                return Ok(Some(match p.last_end {
                    Some(EndedStep {
                        outcome: Outcome::Ok,
                        ..
                    }) => UnitState::Done,
                    _ => UnitState::Failed,
                }));
            };
            self.db_turns.take(id, &servers).await;
            // Attempts count freezes: the steps before the first one are attempt 1.
            let attempt = if step < Step::Freeze { 1 } else { attempt };
            let run = UnitRun {
                orch: self,
                unit: &u,
                progress: &p,
                attempt,
                replay,
                open_epoch: if replay {
                    p.open.and_then(|o| o.epoch)
                } else {
                    None
                },
            };
            match step {
                Step::Prepare => run.prepare().await?,
                Step::PreCopy => run.pre_copy().await?,
                Step::AwaitWindow => run.await_window(skip_window).await?,
                Step::Freeze => run.freeze().await?,
                Step::FinalCopy => run.final_copy().await?,
                Step::Flip => run.flip().await?,
                Step::Unfreeze => run.unfreeze().await?,
                Step::PostCheck => run.post_check().await?,
                Step::Done => run.done().await?,
            }
            let mut np = UnitProgress::of(id, &self.journal.unit_events(id)?);
            if dir == Direction::Reverse && np.direction == Some(Direction::Forward) {
                // Nothing of the reverse run is journaled yet (cannot happen
                // after a step ran, kept as a guard against looping forward).
                np = p;
            }
            p = np;
        }
    }

    /// What to do next: (step, whether it replays an open step, attempt);
    /// None when the unit has nothing left (the last step ended: done after
    /// an `ok` of the last step, failed after any other outcome). After an
    /// abandoned freeze, waits out the rest of `retry_after` first.
    async fn next_step(&self, id: &str, p: &UnitProgress) -> Option<(Step, bool, u32)> {
        Some(match (p.open, p.last_end) {
            (Some(OpenStep { step, .. }), _) => (step, true, p.attempt.max(1)),
            // A freeze abandoned in its own step or in the final copy.
            (
                None,
                Some(EndedStep {
                    step: Step::Freeze | Step::FinalCopy,
                    outcome: Outcome::Abandoned,
                    at_ms,
                }),
            ) => {
                let wait = self
                    .cfg
                    .freeze
                    .retry_after
                    .saturating_sub(Duration::from_millis(now_ms().saturating_sub(at_ms)));
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
            (
                None,
                Some(EndedStep {
                    step,
                    outcome: Outcome::Ok,
                    ..
                }),
            ) => (step.next()?, false, p.attempt.max(1)),
            (None, Some(_)) => return None,
            (None, None) => (Step::Prepare, false, 1),
        })
    }
}

/// A unit a stopped run left past its window: waiting for it, frozen, or
/// beyond (or moving back); it must finish before its lane freezes another.
fn past_window(p: &UnitProgress) -> bool {
    if p.terminal.is_some() {
        return false;
    }
    if p.direction == Some(Direction::Reverse) {
        return true;
    }
    let at = p.open.map(|o| o.step).or(p.last_end.map(|e| e.step));
    at.is_some_and(|s| s >= Step::AwaitWindow)
}

/// How long `prepare` and `pre_copy` wait before asking a peer out of reach
/// (a router, an agent) again, the `tries`-th time it failed: `retry_after`,
/// doubled at each try up to 8 times it, so that `max_attempts` tries span a
/// link's usual outage (5 tries: 15 x `retry_after`) while a peer that is
/// back is asked again soon. Nothing has changed yet at these steps; a unit
/// that fails there waits for the next night.
pub(super) fn ask_again_after(retry_after: Duration, tries: u32) -> Duration {
    retry_after * (1u32 << tries.saturating_sub(1).min(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_out_of_reach_is_asked_again_later_each_time_up_to_eight_times_the_wait() {
        let s = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=6).map(|t| ask_again_after(s, t).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 8, 8]);
        // 5 attempts (the default) span an 8 s outage of the link.
        let spanned: Duration = (1..5).map(|t| ask_again_after(s, t)).sum();
        assert!(spanned >= Duration::from_secs(8), "{spanned:?}");
    }
}
