//! `ferry-sync`: Ferry's replicator.
//!
//! Copies a tree (file mode) or an image / block device (block mode) from a
//! [`Source`] to a [`Dest`], locally or through a `ferry agent`, in passes that
//! converge, and proves the copies equal.
//!
//! - [`manifest`]: the parallel walk and the [`Entry`] of each path.
//! - [`delta`]: rsync-style rolling + BLAKE3 delta of changed files.
//! - [`LocalTree`]: a directory on this machine as a source and a receiver
//!   (temporary file + rename, no write through a symlink, metadata kept).
//! - [`engine`]: [`run_pass`], [`run_block_pass`], [`converge`] (the QEMU/Xen
//!   pre-copy criteria), [`verify`]; progress as [`Event`]s, a [`PassSummary`]
//!   per pass with scan time S, changed bytes R, rate B and the predicted final
//!   pass S + R/B.
//! - [`hash_cache`]: content hashes kept between proofs ([`HashCache`]), so
//!   the proof at a flip hashes only the files changed since the last one.
//! - [`merkle`]: the Merkle tree over (path, type, mode, size, mtime, content)
//!   and the narrowing that lists differing paths.
//! - [`proto`]: the versioned, length-prefixed wire frames and their strict
//!   decoder; [`remote`]: the client side of a connection to an agent
//!   ([`RemoteTree`]); [`agent`]: the server side ([`serve`], [`AgentConfig`],
//!   its [`Limits`] against strangers and hostile sessions).
//! - [`metrics_http`]: `GET /metrics` for Prometheus from the agent (its
//!   [`AgentStats`]) and follow mode, a bounded responder on std threads.
//! - [`open`]: an [`Endpoint`] (local path or agent volume) opened as a
//!   source or a destination ([`Endpoint::open`]); every caller opens
//!   sides this way.
//! - [`block`]: block mode (parallel hashing, digest file).
//! - [`limits`]: the frame and block-size bounds every module checks
//!   against (a leaf: the modules depend on each other one way, checked by
//!   the `modules` test).
//! - [`watch`]: `--watch`, the record of changed paths between passes
//!   ([`Watch`], [`Changes`]); [`follow`]: follow mode, every change pushed
//!   to several destinations ([`follow()`]).

#![forbid(unsafe_code)]

mod accept;
pub mod agent;
mod beneath;
pub mod block;
pub mod delta;
mod dircache;
pub mod endpoint;
pub mod engine;
mod error;
pub mod follow;
pub mod hash_cache;
pub mod limits;
pub mod local;
pub mod manifest;
pub mod merkle;
pub mod metrics_http;
pub mod open;
pub mod path;
pub mod proto;
mod read_ahead;
pub mod remote;
pub mod watch;

pub use agent::{serve, serve_with_stats, AgentConfig, AgentStats, Limits, Volume};
pub use endpoint::{Basis, Dest, Op, Source, Tree};
pub use engine::{
    converge, run_block_pass, run_pass, run_pass_over, verify, verify_blocks, warm_proof,
    BlockVerdict, ConvergeOptions, Convergence, Event, Mode, OnEvent, PassSummary, SyncOptions,
};
pub use error::{Result, SyncError};
pub use follow::{follow, FollowDest, FollowOptions};
pub use hash_cache::HashCache;
pub use local::LocalTree;
pub use manifest::{Entry, Kind, Manifest, Meta, Mtime, ScanOptions};
pub use merkle::{Digest, Verdict};
pub use open::{Endpoint, EndpointTree, OpenOptions, Role};
pub use path::RelPath;
pub use proto::Space;
pub use remote::{query_space, Deadlines, RemoteTree};
pub use watch::{Changes, Watch};
