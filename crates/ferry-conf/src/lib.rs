//! The plumbing every Ferry config file shares, written once:
//!
//! - [`line_col`] / [`Source`]: a byte span of the text -> `file:line:col`,
//!   with one rule: lines are 1-based, and so are columns, counted in
//!   characters (what editors show), not bytes. [`Invalid`] is the error that
//!   carries such a position.
//! - [`parse_duration`]: `250ms`, `10s`, `1m30s`; a bare number is refused.
//! - [`SecretKeys`]: a secret given inline (`token = "..."`) or in a file
//!   (`token_file = "..."`), under one rule:
//!   * exactly one of the two keys (both is an error naming both: with two
//!     sources nobody can tell which one is in force);
//!   * a file is read through [`ferry_secret::read_file`] (owner-only mode or
//!     root's and its group's, trimmed, not empty); relative paths are
//!     relative to the config file; an empty path is refused;
//!   * an inline value must not be empty;
//!   * a secret that authenticates a caller or keys a protocol (exec caller
//!     tokens, the replicator's key) has at least [`MIN_TOKEN_CHARS`]
//!     characters, the strictest rule the copies this replaced had (ferry-fleet
//!     and ferry-sync already required 16; a shorter token is guessable).
//!     The minimum is a parameter because passwords of other systems (a
//!     database account) are not Ferry's to judge, and routers' admin tokens
//!     are accepted at any length for now: raising that would refuse
//!     configurations that work today (see issue 19).
//! - [`check_host_port`], [`read_named_file`]: an address to connect to, a
//!   file the config names (read at load, refused at its key).
//! - [`etcd`]: how an etcd client reaches its cluster (endpoints, user and
//!   password, TLS files), one check for routers, the orchestrator and the
//!   `--control etcd` flags.
//!
//! No Ferry dependency except `ferry-secret`.

#![forbid(unsafe_code)]

mod duration;
pub mod etcd;
mod files;
mod position;
mod secret;

pub use duration::parse_duration;
pub use files::{check_host_port, read_named_file};
pub use position::{line_col, Invalid, Source};
pub use secret::{SecretKeys, SpanError, MIN_TOKEN_CHARS};
