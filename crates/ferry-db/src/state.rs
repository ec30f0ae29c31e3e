//! The mover's record of where it is, so a killed mover resumes (catch-up
//! from the recorded position) or rolls back exactly what it did. JSON,
//! written to a temporary file and renamed (a crash leaves the old or the
//! new record, never half of one). Format `ferry-db-state` v1: fields only
//! ever get added, with defaults.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gtid::{BinlogMark, GtidPos};

pub(crate) const FORMAT: &str = "ferry-db-state";
pub(crate) const VERSION: u32 = 1;

/// Where a move stands. Each step moves it forward; `rollback` is allowed
/// from every phase before `Switched`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Checked, nothing changed yet.
    Prepared,
    /// Destination databases are being created and filled.
    Copying,
    /// First copy done at `snapshot`; catch-up may or may not be running.
    Copied,
    /// The destination's replication connection is applying the source's
    /// changes.
    CatchingUp,
    /// Writes are blocked at the source; `frozen_at` is the final position.
    Frozen,
    /// Catch-up stopped, accounts copied: the destination is the home.
    Switched,
    /// Everything created at the destination was dropped, the source is
    /// writable again.
    RolledBack,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// An account at the source that uses a moving database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub user: String,
    pub host: String,
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "'{}'@'{}'", self.user, self.host)
    }
}

/// Which server a move talks to, as recorded when it started: a state file
/// is only taken up again by a move between the same two servers.
/// MariaDB has no server UUID; the address given, the server id, the host
/// name and the port the server reports tell apart the servers a leftover
/// file could belong to (two stock servers share a server id of 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerIdentity {
    /// `host:port` as given to the mover.
    pub addr: String,
    pub server_id: u32,
    pub hostname: String,
    pub port: u16,
}

impl std::fmt::Display for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (server_id {}, hostname {}, port {})",
            self.addr, self.server_id, self.hostname, self.port
        )
    }
}

impl ServerIdentity {
    /// What differs from `other`, in words; empty when they are the same.
    pub fn differences(&self, other: &ServerIdentity) -> Vec<String> {
        let mut d = Vec::new();
        if self.addr != other.addr {
            d.push(format!("address {} vs {}", self.addr, other.addr));
        }
        if self.server_id != other.server_id {
            d.push(format!(
                "server_id {} vs {}",
                self.server_id, other.server_id
            ));
        }
        if self.hostname != other.hostname {
            d.push(format!("hostname {} vs {}", self.hostname, other.hostname));
        }
        if self.port != other.port {
            d.push(format!("port {} vs {}", self.port, other.port));
        }
        d
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct State {
    pub format: String,
    pub version: u32,
    pub databases: Vec<String>,
    /// The servers of this move (absent in files written before they were
    /// recorded: those are taken as they are and get them on the next save).
    #[serde(default)]
    pub source: Option<ServerIdentity>,
    #[serde(default)]
    pub destination: Option<ServerIdentity>,
    /// Name of the replication connection at the destination.
    pub connection: String,
    pub phase: Phase,
    #[serde(default)]
    pub snapshot: Option<GtidPos>,
    /// Last position the destination was seen to have applied.
    #[serde(default)]
    pub applied: Option<GtidPos>,
    #[serde(default)]
    pub frozen_at: Option<GtidPos>,
    #[serde(default)]
    pub chunks_total: u64,
    #[serde(default)]
    pub chunks_done: u64,
    /// Databases this move created at the destination (rollback drops them;
    /// recorded before each CREATE).
    #[serde(default)]
    pub created: Vec<String>,
    /// Accounts this move locked at the source (rollback unlocks exactly
    /// these; recorded before each ALTER USER).
    #[serde(default)]
    pub locked: Vec<Account>,
    /// The switch checked the destination had applied `frozen_at` and is
    /// about to remove the replication connection: a switch run again
    /// after a crash in between finds no connection and must not take
    /// that for an error.
    #[serde(default)]
    pub switch_checked: bool,
    /// Where the databases were last proved equal on snapshots (before the
    /// freeze): the freeze re-checks only the rows changed since.
    #[serde(default)]
    pub verified_at: Option<BinlogMark>,
    /// The destination's `gtid_binlog_pos` when the switch checked it had
    /// applied everything, before any site wrote there: a move back starts
    /// its catch-up here.
    #[serde(default)]
    pub dest_at_switch: Option<GtidPos>,
    /// A move back: the accounts the forward move locked at this move's
    /// destination, unlocked by the switch.
    #[serde(default)]
    pub unlock_at_switch: Vec<Account>,
    /// A move back (opened from a switched move's record).
    #[serde(default)]
    pub back: bool,
    /// Events enabled at the source, created disabled at the destination:
    /// the switch turns them on there and off at the source.
    #[serde(default)]
    pub events: Vec<ScheduledEvent>,
}

/// A scheduled event (`CREATE EVENT`) of a moving database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledEvent {
    pub db: String,
    pub name: String,
}

impl State {
    pub fn new(databases: Vec<String>, connection: String) -> State {
        State {
            format: FORMAT.into(),
            version: VERSION,
            databases,
            source: None,
            destination: None,
            connection,
            phase: Phase::Prepared,
            snapshot: None,
            applied: None,
            frozen_at: None,
            chunks_total: 0,
            chunks_done: 0,
            created: Vec::new(),
            locked: Vec::new(),
            switch_checked: false,
            verified_at: None,
            dest_at_switch: None,
            unlock_at_switch: Vec::new(),
            back: false,
            events: Vec::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Option<State>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(state_err(path, e.to_string())),
        };
        let state: State =
            serde_json::from_slice(&bytes).map_err(|e| state_err(path, e.to_string()))?;
        if state.format != FORMAT || state.version > VERSION {
            return Err(state_err(
                path,
                format!(
                    "format {} v{} is not {FORMAT} v{VERSION} or older",
                    state.format, state.version
                ),
            ));
        }
        Ok(Some(state))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tmp = PathBuf::from(path);
        tmp.as_mut_os_string().push(".tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| state_err(path, e.to_string()))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| state_err(path, e.to_string()))
    }
}

/// Where a recorded move stands, for `ferry db status`.
#[derive(Debug, Clone)]
pub struct MoveStatus {
    pub phase: Phase,
    pub databases: Vec<String>,
    pub source: Option<ServerIdentity>,
    pub destination: Option<ServerIdentity>,
    /// The replication connection at the destination (until the switch).
    pub connection: String,
    pub snapshot: Option<GtidPos>,
    pub applied: Option<GtidPos>,
    pub frozen_at: Option<GtidPos>,
    pub chunks_done: u64,
    pub chunks_total: u64,
    /// Accounts this move locked at its source.
    pub locked: Vec<Account>,
    /// A move back (its switch unlocks the accounts the forward move locked).
    pub moving_back: bool,
}

impl MoveStatus {
    /// Reads the state file at `path`; `None` if there is none.
    pub fn load(path: &Path) -> Result<Option<MoveStatus>> {
        Ok(State::load(path)?.map(|s| MoveStatus {
            phase: s.phase,
            databases: s.databases,
            source: s.source,
            destination: s.destination,
            connection: s.connection,
            snapshot: s.snapshot,
            applied: s.applied,
            frozen_at: s.frozen_at,
            chunks_done: s.chunks_done,
            chunks_total: s.chunks_total,
            locked: s.locked,
            moving_back: s.back,
        }))
    }
}

fn state_err(path: &Path, message: String) -> Error {
    Error::State {
        path: path.to_path_buf(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v1 layout as first written; later versions must still read it.
    const V1_FIXTURE: &str = r#"{
  "format": "ferry-db-state",
  "version": 1,
  "databases": ["shop"],
  "connection": "ferry_shop",
  "phase": "catching_up",
  "snapshot": "1-1-6",
  "applied": "1-1-40,2-2-3",
  "chunks_total": 3,
  "chunks_done": 3,
  "created": ["shop"],
  "locked": []
}"#;

    #[test]
    fn v1_fixture_loads_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        std::fs::write(&p, V1_FIXTURE).unwrap();
        let s = State::load(&p).unwrap().unwrap();
        assert_eq!(s.phase, Phase::CatchingUp);
        assert_eq!(s.applied.as_ref().unwrap().to_string(), "1-1-40,2-2-3");
        s.save(&p).unwrap();
        let again = State::load(&p).unwrap().unwrap();
        assert_eq!(again.snapshot, s.snapshot);
        assert!(State::load(&dir.path().join("none")).unwrap().is_none());
    }
}
