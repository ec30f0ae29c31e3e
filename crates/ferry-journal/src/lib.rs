//! `ferry-journal`: the durable journal every Ferry runbook writes, and the
//! discipline its steps follow.
//!
//! - [`Journal`]: one run's journal. By default one SQLite file per run: a `run` row, `events` rows and a
//!   `head` row, each row's BLAKE3 hash chained over the previous one
//!   ([`Chain`]), checked whole when the file is opened; WAL with
//!   `synchronous=FULL`; the file's kind in `application_id`, its schema in
//!   `user_version`; `<journal>.lock` flock-ed by the one process that may
//!   write. Generic over a [`Kind`]: each runbook keeps its own run and
//!   event types, columns, hashes and `application_id`.
//!   With the cargo feature `etcd`, the same rows and chain under
//!   `P/runs/<id>/` in etcd (`Journal::create_etcd`/`open_etcd`), every
//!   write a transaction guarded by the run's lease (`lease::RunLease`):
//!   another machine can take a run over, a paused runner can change nothing.
//! - [`Steps`]: begin (journaled before the step acts) -> act -> end, with a
//!   typed [`Outcome`] and the `<step>:before` / `<step>:after` failpoints.
//! - [`Failpoints`]: `FERRY_FAILPOINTS`, ways to stop a runbook on purpose
//!   (SIGKILL, or a pause a test lifts), always compiled in.
//! - [`Error`]: what went wrong with which journal file.
//! - [`cell`]: a row's cells read back (text, integer, text or NULL).

#![forbid(unsafe_code)]

pub mod cell;
mod chain;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
pub mod failpoint;
mod journal;
mod kind;
#[cfg(feature = "etcd")]
pub mod lease;
mod sqlite;
mod step;

pub use chain::Chain;
pub use error::{Error, ErrorKind};
pub use failpoint::{Action, FailpointError, Failpoints, KillMode};
pub use journal::{running, Journal};
pub use kind::{now_ms, Kind, Record, Row};
pub use step::{Outcome, StepError, Steps};
