//! `ferry-orch`: the orchestrator. Runs a plan's units through the durable
//! migration runbook (prepare, pre-copy, window, freeze, final copy and
//! verify, flip, unfreeze, post-check), every step journaled before it acts.
//!
//! - [`config`]: `migrate.toml` -> [`MigrateConfig`] (errors name file:line:col).
//! - [`plan`]: the parts of `plan.json` the runbook needs ([`Plan`]).
//! - [`journal`]: the migration's kind of ferry-journal file (SQLite,
//!   hash-chained, locked: [`Journal`], or in etcd under the run's lease:
//!   `lease`, cargo feature `etcd`) and its fold into [`MigrationStatus`];
//!   [`event`]: what it records, typed ([`event::Detail`]).
//! - [`router`]: the routers' admin API client; [`acks`]: with etcd, who
//!   must acknowledge a freeze (registered, seen, retired) and who has;
//!   `fleet` (feature `etcd`): the wait for it on etcd.
//! - [`runbook`]: [`Orchestrator`]: run (units over lanes,
//!   [`runbook::lanes`]; copy jobs under one [`runbook::Budget`]), resume,
//!   rollback; [`progress`]: where a unit stands, folded from its events
//!   (what a replay starts from).
//! - [`failpoint`]: `FERRY_FAILPOINTS` / `FERRY_FAULTS` (crash tests, demo).
//! - [`status`]: what a migration looks like from outside.
//! - [`check`]: `ferry migrate check` / `run --dry-run`: everything a run
//!   needs, asked without changing anything ([`CheckReport`]).

#![forbid(unsafe_code)]

pub mod acks;
pub mod check;
pub mod config;
mod dbmove;
mod error;
pub mod event;
pub mod failpoint;
#[cfg(feature = "etcd")]
pub mod fleet;
mod fold;
pub mod journal;
#[cfg(feature = "etcd")]
pub mod lease;
mod metrics;
pub mod plan;
pub mod progress;
pub mod report;
pub mod router;
pub mod runbook;
pub mod status;
pub mod track;

pub use check::{CheckLine, CheckOptions, CheckReport, Verdict};
pub use config::MigrateConfig;
pub use error::{OrchError, Result};
pub use failpoint::{Failpoints, Faults, KillMode};
pub use journal::{EventRecord, Journal, JournalAt, Phase};
pub use plan::Plan;
pub use runbook::{Observer, Options, Orchestrator, RunInputs, RunSummary};
pub use status::{
    Direction, MigrationStatus, Outcome, RunState, Step, StepRecord, UnitState, UnitStatus,
    WaveStatus,
};
