//! Per unit: what the plan predicted (freeze, pre-copy) against what the
//! journal recorded, and what the unit's freeze did to its sites' requests:
//! held (in flight across the freeze and answered), cut (failed across it,
//! by reason) and failed (at any other time).

use std::collections::{BTreeMap, HashMap};

use ferry_demo::topology::Site;
use ferry_orch::{Direction, MigrationStatus, Outcome, Step, UnitStatus};
use serde::Serialize;

use crate::traffic::Record;

/// One row of the per-unit table.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UnitRow {
    pub id: String,
    pub night: Option<u64>,
    pub lane: Option<u64>,
    pub sites: usize,
    pub state: String,
    pub attempts: u32,
    pub predicted_freeze_ms: Option<u64>,
    pub freeze_ms: Option<u64>,
    pub predicted_precopy_ms: Option<u64>,
    pub precopy_ms: Option<u64>,
    /// Freeze sent (of the attempt that flipped) to flip done, journal clock.
    pub frozen_from_ms: Option<u64>,
    pub frozen_to_ms: Option<u64>,
    pub held: u64,
    pub cut: BTreeMap<String, u64>,
    pub failed: BTreeMap<String, u64>,
}

/// The plan's view of one unit.
struct Predicted {
    night: Option<u64>,
    lane: Option<u64>,
    freeze_ms: Option<u64>,
    precopy_ms: Option<u64>,
}

/// Reads `plan.json`: per unit id, its night, lane, predicted freeze and
/// pre-copy (`precopy.total_s`: fixed cost, files, bytes over the link; a
/// plan without it: the unit's file bytes at the planned link rate).
fn predictions(plan: &serde_json::Value) -> HashMap<String, Predicted> {
    let rate = plan["parameters"]["bandwidth_bytes_per_s"]
        .as_f64()
        .filter(|r| *r > 0.0);
    plan["units"]
        .as_array()
        .map(|units| {
            units
                .iter()
                .filter_map(|u| {
                    let id = u["id"].as_str()?.to_string();
                    let bytes = u["size"]["file_bytes"].as_f64();
                    Some((
                        id,
                        Predicted {
                            night: u["night"].as_u64(),
                            lane: u["lane"].as_u64(),
                            freeze_ms: u["freeze"]["total_s"].as_f64().map(|s| (s * 1000.0) as u64),
                            precopy_ms: u["precopy"]["total_s"]
                                .as_f64()
                                .or_else(|| bytes.zip(rate).map(|(b, r)| b / r))
                                .map(|s| (s * 1000.0) as u64),
                        },
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn forward(u: &UnitStatus, step: Step) -> impl Iterator<Item = &ferry_orch::StepRecord> {
    u.steps
        .iter()
        .filter(move |s| s.step == step && s.direction == Direction::Forward)
}

/// Freeze sent to flip done, of the attempt that flipped.
fn frozen_window(u: &UnitStatus) -> Option<(u64, u64)> {
    let flip = forward(u, Step::Flip)
        .filter(|s| s.outcome == Some(Outcome::Ok))
        .last()?;
    let from = forward(u, Step::Freeze)
        .filter(|s| s.attempt == flip.attempt)
        .map(|s| s.started_at_ms)
        .min()?;
    Some((from, flip.ended_at_ms?))
}

/// The table, in the journal's unit order.
pub fn rows(
    plan: &serde_json::Value,
    status: &MigrationStatus,
    sites: &[Site],
    records: &[Record],
) -> Vec<UnitRow> {
    let predicted = predictions(plan);
    let unit_of_filer: HashMap<&str, usize> = status
        .units
        .iter()
        .enumerate()
        .flat_map(|(i, u)| u.filers.iter().map(move |f| (f.as_str(), i)))
        .collect();
    let mut rows: Vec<UnitRow> = status
        .units
        .iter()
        .map(|u| {
            let p = predicted.get(&u.id);
            let precopy: u64 = forward(u, Step::PreCopy)
                .filter_map(|s| Some(s.ended_at_ms?.saturating_sub(s.started_at_ms)))
                .sum();
            let window = frozen_window(u);
            UnitRow {
                id: u.id.clone(),
                night: p.and_then(|p| p.night),
                lane: p.and_then(|p| p.lane),
                sites: u.sites,
                state: serde_json::to_value(u.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                attempts: u.attempt,
                predicted_freeze_ms: p.and_then(|p| p.freeze_ms),
                freeze_ms: u.freeze_ms,
                predicted_precopy_ms: p.and_then(|p| p.precopy_ms),
                precopy_ms: (precopy > 0).then_some(precopy),
                frozen_from_ms: window.map(|w| w.0),
                frozen_to_ms: window.map(|w| w.1),
                ..UnitRow::default()
            }
        })
        .collect();
    for r in records {
        let Some(&i) = sites
            .get(r.site)
            .and_then(|s| unit_of_filer.get(s.filer.as_str()))
        else {
            continue;
        };
        let row = &mut rows[i];
        let end = r.sent_at_ms + r.took.as_millis() as u64;
        let across = match (row.frozen_from_ms, row.frozen_to_ms) {
            (Some(from), Some(to)) => r.sent_at_ms <= to && end >= from,
            _ => false,
        };
        match (&r.failed, across) {
            (None, true) => row.held += 1,
            (None, false) => {}
            (Some(reason), true) => *row.cut.entry(reason.clone()).or_default() += 1,
            (Some(reason), false) => *row.failed.entry(reason.clone()).or_default() += 1,
        }
    }
    rows
}

/// The most freezes that were on at the same moment (lanes overlapping).
pub fn max_overlap(rows: &[UnitRow]) -> usize {
    let mut edges: Vec<(u64, i32)> = rows
        .iter()
        .filter_map(|r| Some([(r.frozen_from_ms?, 1), (r.frozen_to_ms?, -1)]))
        .flatten()
        .collect();
    // An end before a start at the same millisecond: touching is not overlapping.
    edges.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

/// How far a freeze was from its prediction, in percent (+: longer).
pub fn deviation_percent(r: &UnitRow) -> Option<f64> {
    let (p, a) = (r.predicted_freeze_ms? as f64, r.freeze_ms? as f64);
    (p > 0.0).then(|| (a - p) / p * 100.0)
}

/// How far a pre-copy was from its prediction, in percent (+: longer).
pub fn precopy_deviation_percent(r: &UnitRow) -> Option<f64> {
    let (p, a) = (r.predicted_precopy_ms? as f64, r.precopy_ms? as f64);
    (p > 0.0).then(|| (a - p) / p * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(from: u64, to: u64) -> UnitRow {
        UnitRow {
            frozen_from_ms: Some(from),
            frozen_to_ms: Some(to),
            ..UnitRow::default()
        }
    }

    #[test]
    fn overlap_counts_freezes_on_at_once() {
        assert_eq!(max_overlap(&[]), 0);
        assert_eq!(max_overlap(&[row(0, 10), row(10, 20)]), 1);
        assert_eq!(max_overlap(&[row(0, 10), row(5, 20), row(6, 7)]), 3);
    }

    #[test]
    fn plan_predictions() {
        let plan = serde_json::json!({
            "parameters": {"bandwidth_bytes_per_s": 1000.0},
            "units": [{"id": "U1", "night": 1, "lane": 2,
                       "size": {"file_bytes": 5000}, "freeze": {"total_s": 1.5}}]
        });
        let p = predictions(&plan);
        let u = &p["U1"];
        assert_eq!((u.night, u.lane), (Some(1), Some(2)));
        assert_eq!((u.freeze_ms, u.precopy_ms), (Some(1500), Some(5000)));
    }
}
