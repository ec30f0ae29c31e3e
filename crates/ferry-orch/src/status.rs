//! What a migration looks like from outside: waves, units, steps, timings.
//! Folded from the journal; served as JSON by the tracking server, rendered
//! by the tracking page and `ferry migrate status`. Times are milliseconds
//! since the Unix epoch (UTC).

use serde::{Deserialize, Serialize};

/// The steps of one unit's runbook, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Prepare,
    PreCopy,
    AwaitWindow,
    Freeze,
    FinalCopy,
    Flip,
    Unfreeze,
    PostCheck,
    Done,
}

impl Step {
    pub const ALL: [Step; 9] = [
        Step::Prepare,
        Step::PreCopy,
        Step::AwaitWindow,
        Step::Freeze,
        Step::FinalCopy,
        Step::Flip,
        Step::Unfreeze,
        Step::PostCheck,
        Step::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::PreCopy => "pre_copy",
            Step::AwaitWindow => "await_window",
            Step::Freeze => "freeze",
            Step::FinalCopy => "final_copy",
            Step::Flip => "flip",
            Step::Unfreeze => "unfreeze",
            Step::PostCheck => "post_check",
            Step::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn next(self) -> Option<Step> {
        let i = Step::ALL.iter().position(|s| *s == self)?;
        Step::ALL.get(i + 1).copied()
    }
}

/// Which way a unit moves: forward (source DC -> destination DC) or back
/// (`ferry migrate rollback` after the flip runs the same runbook reversed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Forward,
    Reverse,
}

impl Direction {
    /// As the journal and the JSON write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }

    pub fn parse(s: &str) -> Option<Direction> {
        [Direction::Forward, Direction::Reverse]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    /// Not started.
    Pending,
    /// A step is under way (or was, when the orchestrator stopped).
    Running,
    /// The freeze was abandoned (a router did not acknowledge, or the
    /// verification failed); the unit serves from the source and waits for
    /// its next attempt.
    Waiting,
    /// Moved; the post-check ran.
    Done,
    /// Stopped with an error; the unit serves from where `message` says.
    Failed,
    /// `ferry migrate rollback` put it back at the source.
    RolledBack,
}

impl UnitState {
    /// As the JSON writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitState::Pending => "pending",
            UnitState::Running => "running",
            UnitState::Waiting => "waiting",
            UnitState::Done => "done",
            UnitState::Failed => "failed",
            UnitState::RolledBack => "rolled_back",
        }
    }
}

/// How a step ended (ferry-journal's: the journal stores it). `Abandoned`:
/// the freeze was abandoned, every router was sent (source, active, e+1).
pub use ferry_journal::Outcome;

/// One execution of one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    /// 1 for the first try of the unit's freeze, 2 after one abandon, ...
    pub attempt: u32,
    pub direction: Direction,
    pub started_at_ms: u64,
    /// None while the step runs (or was interrupted).
    pub ended_at_ms: Option<u64>,
    pub outcome: Option<Outcome>,
    /// The epoch this step sends to routers, when it sends any.
    pub epoch: Option<u64>,
    /// A line for people: numbers of a pass, the router that did not answer...
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitStatus {
    pub id: String,
    /// The night of the plan (1-based); None for a unit the plan did not schedule.
    pub wave: Option<u32>,
    pub sites: usize,
    pub filers: Vec<String>,
    pub state: UnitState,
    pub direction: Direction,
    /// The step running now, or the last one started.
    pub step: Option<Step>,
    pub attempt: u32,
    /// The last epoch sent for this unit's sites.
    pub epoch: Option<u64>,
    /// Freeze sent -> flip applied everywhere, of the attempt that flipped.
    pub freeze_ms: Option<u64>,
    pub message: Option<String>,
    pub steps: Vec<StepRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaveStatus {
    pub night: u32,
    pub units: Vec<String>,
    pub done: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    /// Every selected unit is done.
    Finished,
    /// Nothing runs now (the orchestrator stopped or failed); `resume` goes on.
    Stopped,
}

impl RunState {
    /// As the JSON writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Finished => "finished",
            RunState::Stopped => "stopped",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationStatus {
    pub source: String,
    pub destination: String,
    pub state: RunState,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
    pub waves: Vec<WaveStatus>,
    pub units: Vec<UnitStatus>,
}
