//! `ferry-db`: moves MariaDB databases between servers while sites keep
//! writing to them.
//!
//! [`Mover`] runs one move: `prepare` names everything in the way before
//! anything changes ([`Problem`]s, each with its fix), a first copy from a
//! consistent snapshot (parallel by table and primary-key chunk, loaded
//! with `LOAD DATA LOCAL INFILE`), a catch-up that applies the
//! source's binlog since the snapshot through a MariaDB replication
//! connection on the destination ([`Lag`] says how far behind it is), a
//! freeze that locks the databases' accounts at the source before the final
//! position is read, a wait for that position, chunked checksums on both
//! sides ([`VerifyReport`]), and the switch that copies the roles, the
//! accounts and their grants; or a rollback before the switch. Progress lives in a state
//! file ([`Phase`]) tied to its two servers ([`ServerIdentity`]), so a
//! killed mover resumes and a file of another move is refused;
//! [`MoveStatus`] reads one.
//!
//! Errors are [`Error`], each naming the side ([`Side`]) it is about.

#![forbid(unsafe_code)]

mod accounts;
mod binlog;
mod checksum;
mod copy;
mod endpoint;
mod error;
mod gtid;
mod mover;
mod preflight;
mod replica;
mod schema;
mod state;

pub use checksum::{Scope, TableCheck, VerifyReport};
pub use endpoint::Endpoint;
pub use error::{Error, Problem, Result, Side};
pub use gtid::{BinlogMark, GtidPos};
pub use mover::{
    CopyProgress, CopyReport, FreezeReport, Mover, MoverConfig, PrepareReport, SwitchReport,
};
pub use replica::Lag;
pub use state::{Account, MoveStatus, Phase, ScheduledEvent, ServerIdentity};
