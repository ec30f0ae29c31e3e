//! What the migration journal records: [`NewEvent`] (one step boundary or
//! note) and its typed [`Detail`].
//!
//! The detail is stored as one JSON object in the `detail` column, which
//! the hash chain covers, so its shape only grows: notes carry a `"kind"`
//! ([`Note`]); step boundaries do not ([`StepDetail`]: the fields the fold
//! and the replay read back, typed, and the step's report, shown and never
//! read back). Written through [`serde_json::Value`], so keys come out
//! sorted as they always have.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::router::{Fingerprint, SiteChange};
use crate::status::{Direction, Outcome, Step, UnitState};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Begin,
    End,
    /// Not a step boundary: a session start, an owed change, an abandon under way...
    Note,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Begin => "begin",
            Phase::End => "end",
            Phase::Note => "note",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Phase> {
        [Phase::Begin, Phase::End, Phase::Note]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// An event to append.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NewEvent {
    /// Unit id; empty for run-wide notes.
    pub unit: String,
    pub step: Option<Step>,
    pub phase: Phase,
    pub attempt: u32,
    pub direction: Direction,
    pub epoch: Option<u64>,
    pub outcome: Option<Outcome>,
    pub detail: Detail,
}

/// What an event says beyond its columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Detail {
    /// A note (phase `note`): tagged by `"kind"`.
    Note(Note),
    /// A step's begin or end.
    Step(StepDetail),
}

/// A note's detail, by kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Note {
    /// An orchestrator process started `what` (`run`, `rollback`).
    Session {
        pid: u32,
        what: String,
        summary: String,
    },
    /// A rollback before the flip: every router sent the source, active,
    /// at the event's epoch.
    Rollback { summary: String },
    /// The rollback before the flip is complete.
    RolledBack {
        unit_state: UnitState,
        message: String,
    },
    /// `router` did not take `changes` (unreachable): it owes them, and
    /// they are sent again before the unit's next step.
    Owed {
        router: String,
        changes: Vec<SiteChange>,
        error: String,
    },
    /// An owed change of `epoch` was sent to `router`.
    Paid {
        router: String,
        epoch: u64,
        how: Paid,
    },
    /// An abandon journaled before it is carried out (a replay finishes
    /// it): every router is sent (source, active, `abandon_epoch`); `fail`:
    /// the unit fails (no attempt left, or a failed verification).
    Abandoning {
        abandon_epoch: u64,
        fail: bool,
        reason: String,
    },
}

/// How an owed change was paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Paid {
    /// The router took it.
    Applied,
    /// The router holds a newer epoch: nothing is owed any more.
    Superseded,
}

/// A step boundary's detail.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepDetail {
    /// The line people see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The unit's message from now on (why it failed or waits, what the
    /// post-check found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The unit's state from now on, when the step changes it (failed,
    /// waiting for the next freeze attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_state: Option<UnitState>,
    /// The end of a flip: freeze sent -> flip applied everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_ms: Option<u64>,
    /// The end of an abandoned step: the epoch every router was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandon_epoch: Option<u64>,
    /// The end of `prepare`: what each site answered (compared at post-check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprints: Option<BTreeMap<String, Fingerprint>>,
    /// The rest of the step's report (passes, roots, databases...): shown,
    /// never read back by the runbook.
    #[serde(flatten)]
    pub report: Map<String, Value>,
}

impl StepDetail {
    /// A detail with only a summary.
    pub fn summary(summary: impl Into<String>) -> StepDetail {
        StepDetail {
            summary: Some(summary.into()),
            ..StepDetail::default()
        }
    }

    /// Adds the entries of `report` (a JSON object; anything else is
    /// ignored) to the step's report.
    pub fn report(mut self, report: Value) -> StepDetail {
        if let Value::Object(m) = report {
            self.report.extend(m);
        }
        self
    }
}

impl From<StepDetail> for Detail {
    fn from(d: StepDetail) -> Detail {
        Detail::Step(d)
    }
}

impl From<Note> for Detail {
    fn from(n: Note) -> Detail {
        Detail::Note(n)
    }
}

impl Detail {
    /// No detail: `{}`.
    pub fn none() -> Detail {
        Detail::Step(StepDetail::default())
    }

    /// As stored: a JSON object with sorted keys.
    pub fn to_json(&self) -> Value {
        // Cannot fail: every map key is a string.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// A note's kind (`session`, `owed`, `paid`, `abandoning`...).
    pub fn kind(&self) -> Option<&'static str> {
        let Detail::Note(n) = self else { return None };
        Some(match n {
            Note::Session { .. } => "session",
            Note::Rollback { .. } => "rollback",
            Note::RolledBack { .. } => "rolled_back",
            Note::Owed { .. } => "owed",
            Note::Paid { .. } => "paid",
            Note::Abandoning { .. } => "abandoning",
        })
    }

    pub fn summary(&self) -> Option<&str> {
        match self {
            Detail::Step(d) => d.summary.as_deref(),
            Detail::Note(Note::Session { summary, .. } | Note::Rollback { summary }) => {
                Some(summary)
            }
            Detail::Note(_) => None,
        }
    }

    /// The unit's message from now on, when the event sets one.
    pub fn message(&self) -> Option<&str> {
        match self {
            Detail::Step(d) => d.message.as_deref(),
            Detail::Note(Note::RolledBack { message, .. }) => Some(message),
            Detail::Note(_) => None,
        }
    }

    /// The unit's state from now on, when the event sets one.
    pub fn unit_state(&self) -> Option<UnitState> {
        match self {
            Detail::Step(d) => d.unit_state,
            Detail::Note(Note::RolledBack { unit_state, .. }) => Some(*unit_state),
            Detail::Note(_) => None,
        }
    }

    /// Freeze sent -> flip applied everywhere (the end of a flip).
    pub fn freeze_ms(&self) -> Option<u64> {
        match self {
            Detail::Step(d) => d.freeze_ms,
            Detail::Note(_) => None,
        }
    }

    /// Why an abandon is under way.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Detail::Note(Note::Abandoning { reason, .. }) => Some(reason),
            _ => None,
        }
    }

    /// An epoch the detail names beyond the event's own (an abandon's, a
    /// payment's).
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Detail::Step(d) => d.abandon_epoch,
            Detail::Note(Note::Abandoning { abandon_epoch, .. }) => Some(*abandon_epoch),
            Detail::Note(Note::Paid { epoch, .. }) => Some(*epoch),
            Detail::Note(_) => None,
        }
    }
}

/// The line people see for an event's detail: its summary, else the whole
/// detail as JSON (None when it is empty).
pub fn detail_line(d: &Detail) -> Option<String> {
    if let Some(s) = d.summary() {
        return Some(s.to_string());
    }
    match d.to_json() {
        Value::Object(o) if o.is_empty() => None,
        Value::Null => None,
        v => Some(v.to_string()),
    }
}

/// What a unit looks like in the run meta (what the status needs without the plan).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitMeta {
    pub id: String,
    pub night: Option<u32>,
    pub sites: usize,
    pub filers: Vec<String>,
}

/// The run row.
#[derive(Clone, Debug, PartialEq)]
pub struct RunMeta {
    pub config_text: String,
    pub config_path: PathBuf,
    pub plan_path: PathBuf,
    pub plan_digest: String,
    pub source: String,
    pub destination: String,
    pub started_at_ms: u64,
    pub units: Vec<UnitMeta>,
}

/// A journaled event.
pub type EventRecord = ferry_journal::Record<NewEvent>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each typed detail is stored as the JSON the untyped code wrote, and
    /// that JSON reads back as the same detail.
    #[test]
    fn details_keep_their_json_shape() {
        let change = SiteChange {
            host: "a.example".into(),
            placement: "pool:web".into(),
            state: "active".into(),
            epoch: 8,
        };
        let cases: Vec<(Detail, Value)> = vec![
            (Detail::none(), json!({})),
            (
                Note::Session {
                    pid: 7,
                    what: "run".into(),
                    summary: "orchestrator run (pid 7)".into(),
                }
                .into(),
                json!({"kind": "session", "pid": 7, "what": "run", "summary": "orchestrator run (pid 7)"}),
            ),
            (
                Note::Abandoning {
                    abandon_epoch: 8,
                    fail: false,
                    reason: "r2 late".into(),
                }
                .into(),
                json!({"kind": "abandoning", "abandon_epoch": 8, "fail": false, "reason": "r2 late"}),
            ),
            (
                Note::Owed {
                    router: "r2".into(),
                    changes: vec![change],
                    error: "down".into(),
                }
                .into(),
                json!({"kind": "owed", "router": "r2", "error": "down", "changes": [
                    {"host": "a.example", "placement": "pool:web", "state": "active", "epoch": 8}]}),
            ),
            (
                Note::Paid {
                    router: "r2".into(),
                    epoch: 8,
                    how: Paid::Superseded,
                }
                .into(),
                json!({"kind": "paid", "router": "r2", "epoch": 8, "how": "superseded"}),
            ),
            (
                Note::RolledBack {
                    unit_state: UnitState::RolledBack,
                    message: "back".into(),
                }
                .into(),
                json!({"kind": "rolled_back", "unit_state": "rolled_back", "message": "back"}),
            ),
            (
                StepDetail {
                    message: Some("m".into()),
                    unit_state: Some(UnitState::Waiting),
                    abandon_epoch: Some(8),
                    ..StepDetail::summary("m")
                }
                .report(json!({"owed": ["r2"], "reason": "late"}))
                .into(),
                json!({"summary": "m", "message": "m", "unit_state": "waiting",
                    "abandon_epoch": 8, "owed": ["r2"], "reason": "late"}),
            ),
            (
                StepDetail {
                    freeze_ms: Some(1234),
                    ..StepDetail::summary("flipped")
                }
                .report(json!({"databases": []}))
                .into(),
                json!({"freeze_ms": 1234, "summary": "flipped", "databases": []}),
            ),
        ];
        for (detail, want) in cases {
            assert_eq!(detail.to_json(), want);
            // Stored bytes: keys sorted, as `Value` always wrote them.
            assert_eq!(detail.to_json().to_string(), want.to_string());
            let back: Detail = serde_json::from_value(want).unwrap();
            assert_eq!(back, detail);
        }
    }

    #[test]
    fn the_line_is_the_summary_else_the_json() {
        assert_eq!(detail_line(&Detail::none()), None);
        assert_eq!(
            detail_line(&StepDetail::summary("ok").into()).as_deref(),
            Some("ok")
        );
        let owed: Detail = Note::Paid {
            router: "r".into(),
            epoch: 2,
            how: Paid::Applied,
        }
        .into();
        assert_eq!(
            detail_line(&owed).as_deref(),
            Some(r#"{"epoch":2,"how":"applied","kind":"paid","router":"r"}"#)
        );
    }
}
