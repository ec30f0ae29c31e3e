//! Lanes: how a run lays the selected units out over `parallel` lanes.
//!
//! The plan puts each unit of a night on a lane (`lane`, from 0) and orders
//! it (`order`); a lane's freezes run back to back. The runbook follows it:
//! lane `l` of the plan runs on lane `l mod parallel` (so `--parallel`
//! below the plan's folds lanes together, each still in plan order), and a
//! unit the plan gave no lane (selected with `--only`, or from an older
//! plan) goes to the lane with the fewest units. Units keep the order of
//! the selection (night, then order) inside their lane, across nights.
//! With one lane every unit runs one after another in plan order: the
//! runbook as it was before lanes.

use crate::plan::Plan;

/// One lane: its number and its units, in the order they run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    pub index: u32,
    pub units: Vec<String>,
}

/// Lays `selected` (in plan order) out over `parallel` lanes (at least 1).
/// Lanes that get no unit are left out.
pub fn lay_out(plan: &Plan, selected: &[String], parallel: usize) -> Vec<Lane> {
    let n = parallel.max(1);
    let mut lanes: Vec<Lane> = (0..n)
        .map(|i| Lane {
            index: i as u32,
            units: Vec::new(),
        })
        .collect();
    for id in selected {
        let planned = plan.unit(id).and_then(|u| u.lane);
        let l = match planned {
            Some(l) => l as usize % n,
            // Fewest units first, the lowest index on a tie.
            None => (0..n)
                .min_by_key(|i| (lanes[*i].units.len(), *i))
                .unwrap_or(0),
        };
        lanes[l].units.push(id.clone());
    }
    lanes.retain(|l| !l.units.is_empty());
    lanes
}

/// The lane of `unit`, if it is in one.
pub fn lane_of(lanes: &[Lane], unit: &str) -> Option<u32> {
    lanes
        .iter()
        .find(|l| l.units.iter().any(|u| u == unit))
        .map(|l| l.index)
}

/// `lane 0: U1 U3; lane 1: U2 U4`: the layout as the journal's session
/// note and the log print it.
pub fn describe(lanes: &[Lane]) -> String {
    lanes
        .iter()
        .map(|l| format!("lane {}: {}", l.index, l.units.join(" ")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(units: &[(&str, u32, Option<u32>, u32)]) -> Plan {
        let units: Vec<String> = units
            .iter()
            .map(|(id, night, lane, order)| {
                format!(
                    r#"{{"id":"{id}","status":"scheduled","night":{night},"lane":{},"order":{order}}}"#,
                    lane.map_or("null".to_string(), |l| l.to_string())
                )
            })
            .collect();
        let text = format!(
            r#"{{"format":"ferry-plan","version":1,"parameters":{{"parallel":2}},"units":[{}]}}"#,
            units.join(",")
        );
        Plan::from_bytes(text.as_bytes(), std::path::Path::new("plan.json")).unwrap()
    }

    fn ids(lanes: &[Lane]) -> Vec<(u32, Vec<&str>)> {
        lanes
            .iter()
            .map(|l| (l.index, l.units.iter().map(|s| s.as_str()).collect()))
            .collect()
    }

    #[test]
    fn the_plans_lanes_in_plan_order() {
        let p = plan(&[
            ("U1", 1, Some(0), 0),
            ("U2", 1, Some(1), 1),
            ("U3", 1, Some(0), 2),
            ("U4", 1, Some(1), 3),
            ("U5", 2, Some(1), 0),
        ]);
        assert_eq!(p.parallel, Some(2));
        let sel = p.select(None).unwrap();
        assert_eq!(
            ids(&lay_out(&p, &sel, 2)),
            vec![(0, vec!["U1", "U3"]), (1, vec!["U2", "U4", "U5"])]
        );
        // One lane: everything in plan order, as before lanes.
        assert_eq!(
            ids(&lay_out(&p, &sel, 1)),
            vec![(0, vec!["U1", "U2", "U3", "U4", "U5"])]
        );
        // More lanes than the plan's: the plan's lanes, the others empty.
        assert_eq!(ids(&lay_out(&p, &sel, 4)).len(), 2);
        assert_eq!(
            describe(&lay_out(&p, &sel, 2)),
            "lane 0: U1 U3; lane 1: U2 U4 U5"
        );
    }

    #[test]
    fn units_without_a_lane_go_where_there_are_fewest() {
        let p = plan(&[
            ("U1", 1, Some(0), 0),
            ("U2", 1, None, 1),
            ("U3", 1, None, 2),
        ]);
        let sel = p.select(None).unwrap();
        let lanes = lay_out(&p, &sel, 2);
        assert_eq!(ids(&lanes), vec![(0, vec!["U1", "U3"]), (1, vec!["U2"])]);
        assert_eq!(lane_of(&lanes, "U3"), Some(0));
        assert_eq!(lane_of(&lanes, "U9"), None);
    }
}
