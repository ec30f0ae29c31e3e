//! `GET /metrics` of the tracking server: where a migration stands, in
//! Prometheus' text format, for the alerts an operator is woken by (a unit
//! failed, a freeze abandoned because a router did not acknowledge) and the
//! dashboard's migration row. Counts and histograms only: units can number in
//! the thousands over a migration, so no series is labelled by unit or site.

use std::fmt::Write;

use crate::status::{MigrationStatus, Outcome, RunState, Step, UnitState};

/// Upper bounds (seconds) of the freeze-length histogram: a freeze is
/// budgeted in seconds, and anything past a minute is an incident.
const FREEZE_BUCKETS: [f64; 9] = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];

const UNIT_STATES: [(UnitState, &str); 6] = [
    (UnitState::Pending, "pending"),
    (UnitState::Running, "running"),
    (UnitState::Waiting, "waiting"),
    (UnitState::Done, "done"),
    (UnitState::Failed, "failed"),
    (UnitState::RolledBack, "rolled_back"),
];

pub(crate) fn render(s: &MigrationStatus) -> String {
    let mut out = String::with_capacity(2048);
    let _ = writeln!(
        out,
        "# HELP ferry_migration_running 1 while the orchestrator runs the migration, 0 when it stopped or finished.\n# TYPE ferry_migration_running gauge\nferry_migration_running {}",
        u8::from(s.state == RunState::Running)
    );
    let _ = writeln!(
        out,
        "# HELP ferry_migration_finished 1 once every selected unit is done.\n# TYPE ferry_migration_finished gauge\nferry_migration_finished {}",
        u8::from(s.state == RunState::Finished)
    );
    let _ = writeln!(out, "# HELP ferry_migration_units Units of the migration, by state.\n# TYPE ferry_migration_units gauge");
    for (state, name) in UNIT_STATES {
        let n = s.units.iter().filter(|u| u.state == state).count();
        let _ = writeln!(out, "ferry_migration_units{{state=\"{name}\"}} {n}");
    }
    let sites: usize = s
        .units
        .iter()
        .filter(|u| u.state == UnitState::Done)
        .map(|u| u.sites)
        .sum();
    let _ = writeln!(out, "# HELP ferry_migration_sites_moved Sites of the units that are done.\n# TYPE ferry_migration_sites_moved gauge\nferry_migration_sites_moved {sites}");
    // Abandoned freezes: a router did not acknowledge, or verification failed.
    let abandoned = s
        .units
        .iter()
        .flat_map(|u| &u.steps)
        .filter(|r| r.step == Step::Freeze && r.outcome == Some(Outcome::Abandoned))
        .count();
    let _ = writeln!(out, "# HELP ferry_migration_freezes_abandoned_total Freezes given up (a router did not acknowledge, or verification failed); the unit serves from the source and tries again.\n# TYPE ferry_migration_freezes_abandoned_total counter\nferry_migration_freezes_abandoned_total {abandoned}");
    let failed_steps = s
        .units
        .iter()
        .flat_map(|u| &u.steps)
        .filter(|r| r.outcome == Some(Outcome::Failed))
        .count();
    let _ = writeln!(out, "# HELP ferry_migration_steps_failed_total Steps that ended in failure.\n# TYPE ferry_migration_steps_failed_total counter\nferry_migration_steps_failed_total {failed_steps}");
    let freezes: Vec<f64> = s
        .units
        .iter()
        .filter_map(|u| u.freeze_ms)
        .map(|ms| ms as f64 / 1000.0)
        .collect();
    let _ = writeln!(out, "# HELP ferry_migration_freeze_seconds Freeze sent to flip applied everywhere, per moved unit.\n# TYPE ferry_migration_freeze_seconds histogram");
    for le in FREEZE_BUCKETS {
        let n = freezes.iter().filter(|f| **f <= le).count();
        let _ = writeln!(
            out,
            "ferry_migration_freeze_seconds_bucket{{le=\"{le}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "ferry_migration_freeze_seconds_bucket{{le=\"+Inf\"}} {}",
        freezes.len()
    );
    let _ = writeln!(
        out,
        "ferry_migration_freeze_seconds_sum {}",
        freezes.iter().sum::<f64>()
    );
    let _ = writeln!(
        out,
        "ferry_migration_freeze_seconds_count {}",
        freezes.len()
    );
    let _ = writeln!(
        out,
        "# HELP ferry_migration_updated_timestamp_seconds When the journal last changed.\n# TYPE ferry_migration_updated_timestamp_seconds gauge\nferry_migration_updated_timestamp_seconds {}",
        s.updated_at_ms as f64 / 1000.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Direction, StepRecord, UnitStatus};

    fn unit(
        id: &str,
        state: UnitState,
        freeze_ms: Option<u64>,
        steps: Vec<StepRecord>,
    ) -> UnitStatus {
        UnitStatus {
            id: id.into(),
            wave: Some(1),
            sites: 10,
            filers: vec!["f1".into()],
            state,
            direction: Direction::Forward,
            step: None,
            attempt: 1,
            epoch: None,
            freeze_ms,
            message: None,
            steps,
        }
    }

    fn freeze(outcome: Outcome) -> StepRecord {
        StepRecord {
            step: Step::Freeze,
            attempt: 1,
            direction: Direction::Forward,
            started_at_ms: 0,
            ended_at_ms: Some(1),
            outcome: Some(outcome),
            epoch: Some(2),
            detail: None,
        }
    }

    #[test]
    fn units_by_state_abandoned_freezes_and_freeze_lengths() {
        let s = MigrationStatus {
            source: "par".into(),
            destination: "gra".into(),
            state: RunState::Running,
            started_at_ms: 0,
            updated_at_ms: 5_000,
            waves: vec![],
            units: vec![
                unit(
                    "u1",
                    UnitState::Done,
                    Some(1_500),
                    vec![freeze(Outcome::Abandoned), freeze(Outcome::Ok)],
                ),
                unit("u2", UnitState::Done, Some(700), vec![freeze(Outcome::Ok)]),
                unit("u3", UnitState::Failed, None, vec![freeze(Outcome::Failed)]),
                unit("u4", UnitState::Pending, None, vec![]),
            ],
        };
        let m = render(&s);
        for line in [
            "ferry_migration_running 1",
            "ferry_migration_units{state=\"done\"} 2",
            "ferry_migration_units{state=\"failed\"} 1",
            "ferry_migration_units{state=\"pending\"} 1",
            "ferry_migration_units{state=\"running\"} 0",
            "ferry_migration_sites_moved 20",
            "ferry_migration_freezes_abandoned_total 1",
            "ferry_migration_steps_failed_total 1",
            "ferry_migration_freeze_seconds_bucket{le=\"1\"} 1",
            "ferry_migration_freeze_seconds_bucket{le=\"2\"} 2",
            "ferry_migration_freeze_seconds_bucket{le=\"+Inf\"} 2",
            "ferry_migration_freeze_seconds_count 2",
            "ferry_migration_updated_timestamp_seconds 5",
        ] {
            assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
        }
        assert!(!m.contains("u1"), "no series is labelled by unit");
    }
}
