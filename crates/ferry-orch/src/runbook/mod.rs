//! The runbook: one unit at a time through prepare, pre-copy, window,
//! freeze, final copy + verify, flip, unfreeze, post-check, done
//! (shared/design/cutover.md), every step journaled before it acts.
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
//! flip (`rollback`); `fencing`: the changes sent to routers, epochs,
//! changes owed by routers that were down; `copy`: the replicator's jobs;
//! `fingerprint`: what the sites answer before and after; `unit`: a
//! plan unit as the runbook sees it in one direction.

mod abandon;
mod copy;
mod done;
mod fencing;
mod final_copy;
mod fingerprint;
mod flip;
mod freeze;
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
            detail: Note::Session {
                pid: std::process::id(),
                what: what.to_string(),
                summary: format!("orchestrator {what} (pid {})", std::process::id()),
            }
            .into(),
        })?;
        Ok(())
    }

    /// Runs (or goes on with) every selected unit, one at a time, in plan order.
    pub async fn run(&self) -> Result<RunSummary> {
        self.session_note("run")?;
        let mut out = Vec::new();
        for id in self.selected.clone() {
            let mut p = UnitProgress::of(&id, &self.journal.unit_events(&id)?);
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
        mut p: UnitProgress,
        skip_window: bool,
    ) -> Result<UnitState> {
        let u = self.unit(id, dir)?;
        tracing::info!(unit = id, direction = ?dir, sites = u.sites.len(), "unit");
        loop {
            self.pay_owed(&u, &mut p).await?;
            if let Some(t) = p.terminal {
                return Ok(t);
            }
            let Some((step, replay, attempt)) = self.next_step(id, &p).await else {
                return Ok(match p.last_end {
                    Some(EndedStep {
                        outcome: Outcome::Ok,
                        ..
                    }) => UnitState::Done,
                    _ => UnitState::Failed,
                });
            };
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
            (
                None,
                Some(EndedStep {
                    step: Step::Freeze,
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
