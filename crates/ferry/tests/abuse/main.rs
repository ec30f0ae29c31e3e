//! The standing abuse suite: every attack of issue 15 replayed against the
//! real `ferry` binary, bounded in count and time, on loopback only. Each test
//! fails on the code before the fix and asserts on what a user would see: the
//! attacker is cut or refused, normal requests are still served, memory and
//! log output stay bounded.
//!
//! `bench/abuse/run.sh` runs this suite against the release build and prints
//! the table that `report::row` collects (attack, result, RSS, served).

#[path = "../e2e/support/mod.rs"]
#[allow(dead_code)]
mod support;

mod fleet;
mod http1;
mod logs;
mod proxy;
mod report;
mod sync;
mod tmpfs;
