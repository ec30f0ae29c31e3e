//! `ferry-fleet`: the fleet agent's command runner and the update runbook.
//!
//! - [`allow`]: the allow-list patterns and the decision for one request.
//! - [`exec_config`]: the agent side's `[callers]` and `[[allow]]`
//!   ([`ExecConfig`]); [`server`]: the exec server ([`ExecServer`],
//!   [`serve`]) with its [`audit`] log (JSON lines).
//! - [`client`]: the caller side ([`ExecClient`]) and the fan-out over many
//!   servers ([`run_all`]) with streamed output and a summary table.
//! - [`fleet_config`]: the caller's `fleet.toml` ([`FleetConfig`]).
//! - [`runbook`]: the update runbook file ([`Runbook`]); [`update`]: the
//!   levels 1-3 as a plan of steps and the [`Updater`] that runs and
//!   resumes them from the [`journal`] (SQLite, hash-chained); [`routers`]:
//!   the admin API calls it makes.

#![forbid(unsafe_code)]

pub mod allow;
pub mod audit;
pub mod client;
mod error;
pub mod exec_config;
pub mod fleet_config;
pub mod journal;
pub mod routers;
pub mod runbook;
pub mod server;
pub mod update;

pub use client::{run_all, summary_table, ExecClient, Outcome, Sink, Stream, Target};
pub use error::{FleetError, Result};
pub use exec_config::ExecConfig;
pub use fleet_config::{FleetConfig, FleetServer};
pub use journal::Journal;
pub use runbook::Runbook;
pub use server::{serve, ExecServer};
pub use update::Updater;
