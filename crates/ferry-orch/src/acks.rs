//! Who must acknowledge a freeze when the routers share etcd, and whether
//! they have (docs/control-plane.md, "Who must acknowledge a freeze").
//! Pure: the runbook reads `P/routers/`, `P/fleet/seen/` and
//! `P/fleet/retired/` (ferry-store's `EtcdStore::fleet`) and hands them in.
//!
//! The rule: every registered router, and every router ever seen that an
//! operator has not retired, must acknowledge. A seen router whose
//! registration is gone (killed, paused, cut off: its lease expired) blocks
//! the freeze: it may still be serving the unit's sites from its old table,
//! and a flip without it could make a site writable in two places. A retired
//! router that registers again is required again (it is back, and serves).
//!
//! A router acknowledges a freeze at epoch `E` written by revision `R` when
//! its registration says it applied `R` or later and has 0 requests in
//! flight on the sites it holds frozen at `E`. A registration that names no
//! frozen site at `E` although it applied `R` acknowledges too: the router
//! applied the freeze and has since applied something newer for those sites
//! (only the orchestrator writes them during a unit, so that is its own
//! later step), or the unit has no sites.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;

/// A router's registration value: `{"revision": R, "frozen": {"E": n}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Registration {
    /// The etcd revision the router's table has applied.
    pub revision: i64,
    /// Requests in flight on the sites it holds frozen, by epoch.
    #[serde(default)]
    pub frozen: BTreeMap<u64, u64>,
}

impl Registration {
    /// Reads a registration's JSON; the error names what is wrong with it.
    pub fn parse(value: &str) -> Result<Registration, String> {
        serde_json::from_str(value).map_err(|e| format!("unreadable registration {value:?}: {e}"))
    }
}

/// Why a router has not acknowledged a freeze yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Seen before, not retired, and not registered now (lease expired or
    /// never renewed): it may be serving from its old table.
    NotRegistered,
    /// Registered, but its table has not applied the freeze's revision.
    Behind { applied: i64, freeze: i64 },
    /// Registered and frozen, with requests still in flight.
    InFlight(u64),
    /// Its registration does not read (a newer or broken router).
    Unreadable(String),
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waiting::NotRegistered => f.write_str(
                "not registered (its lease expired: killed, paused or cut off from etcd); \
                 it may still serve from its old table: restart it, or retire it with \
                 `ferry ctl routers retire`",
            ),
            Waiting::Behind { applied, freeze } => {
                write!(
                    f,
                    "applied revision {applied}, the freeze is revision {freeze}"
                )
            }
            Waiting::InFlight(n) => write!(f, "{n} requests in flight on the frozen sites"),
            Waiting::Unreadable(e) => f.write_str(e),
        }
    }
}

/// The answer for one freeze: who acknowledged, who is awaited and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acks {
    pub acknowledged: Vec<String>,
    pub waiting: Vec<(String, Waiting)>,
}

impl Acks {
    pub fn complete(&self) -> bool {
        self.waiting.is_empty()
    }

    /// `a (why); b (why)`, for logs and the abandon reason.
    pub fn describe_waiting(&self) -> String {
        self.waiting
            .iter()
            .map(|(n, w)| format!("router {n}: {w}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Which routers acknowledged the freeze at `epoch` written by revision
/// `freeze_revision`, given the registrations (parsed, by name), the routers
/// ever seen and the retired ones. Names come out sorted.
pub fn freeze_acks(
    registered: &BTreeMap<String, Result<Registration, String>>,
    seen: &BTreeSet<String>,
    retired: &BTreeSet<String>,
    freeze_revision: i64,
    epoch: u64,
) -> Acks {
    let required: BTreeSet<&String> = registered
        .keys()
        .chain(seen.iter().filter(|n| !retired.contains(*n)))
        .collect();
    let mut acks = Acks::default();
    for name in required {
        let verdict = match registered.get(name) {
            None => Some(Waiting::NotRegistered),
            Some(Err(e)) => Some(Waiting::Unreadable(e.clone())),
            Some(Ok(r)) if r.revision < freeze_revision => Some(Waiting::Behind {
                applied: r.revision,
                freeze: freeze_revision,
            }),
            Some(Ok(r)) => match r.frozen.get(&epoch) {
                Some(&n) if n > 0 => Some(Waiting::InFlight(n)),
                _ => None,
            },
        };
        match verdict {
            Some(w) => acks.waiting.push((name.clone(), w)),
            None => acks.acknowledged.push(name.clone()),
        }
    }
    acks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(revision: i64, frozen: &[(u64, u64)]) -> Result<Registration, String> {
        Ok(Registration {
            revision,
            frozen: frozen.iter().copied().collect(),
        })
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn regs(
        list: Vec<(&str, Result<Registration, String>)>,
    ) -> BTreeMap<String, Result<Registration, String>> {
        list.into_iter().map(|(n, r)| (n.to_string(), r)).collect()
    }

    #[test]
    fn every_registered_router_at_the_revision_with_none_in_flight_acknowledges() {
        let r = regs(vec![
            ("a", reg(10, &[(7, 0)])),
            ("b", reg(12, &[(7, 0), (8, 3)])),
        ]);
        let acks = freeze_acks(&r, &names(&["a", "b"]), &names(&[]), 10, 7);
        assert!(acks.complete(), "{acks:?}");
        assert_eq!(acks.acknowledged, vec!["a", "b"]);
    }

    #[test]
    fn a_router_behind_the_freeze_revision_is_awaited() {
        let r = regs(vec![("a", reg(9, &[]))]);
        let acks = freeze_acks(&r, &names(&["a"]), &names(&[]), 10, 7);
        assert_eq!(
            acks.waiting,
            vec![(
                "a".into(),
                Waiting::Behind {
                    applied: 9,
                    freeze: 10
                }
            )]
        );
    }

    #[test]
    fn requests_in_flight_at_the_epoch_are_awaited_other_epochs_are_not() {
        let r = regs(vec![
            ("a", reg(10, &[(7, 2)])),
            ("b", reg(10, &[(6, 5), (7, 0)])),
        ]);
        let acks = freeze_acks(&r, &names(&[]), &names(&[]), 10, 7);
        assert_eq!(acks.waiting, vec![("a".into(), Waiting::InFlight(2))]);
        assert_eq!(acks.acknowledged, vec!["b"]);
    }

    #[test]
    fn a_seen_router_whose_lease_expired_blocks_until_retired() {
        let r = regs(vec![("a", reg(10, &[(7, 0)]))]);
        let acks = freeze_acks(&r, &names(&["a", "gone"]), &names(&[]), 10, 7);
        assert_eq!(acks.waiting, vec![("gone".into(), Waiting::NotRegistered)]);
        assert!(acks
            .describe_waiting()
            .contains("router gone: not registered"));
        let acks = freeze_acks(&r, &names(&["a", "gone"]), &names(&["gone"]), 10, 7);
        assert!(acks.complete(), "{acks:?}");
        assert_eq!(acks.acknowledged, vec!["a"]);
    }

    #[test]
    fn a_retired_router_that_registers_again_must_acknowledge() {
        let r = regs(vec![("back", reg(5, &[]))]);
        let acks = freeze_acks(&r, &names(&["back"]), &names(&["back"]), 10, 7);
        assert_eq!(
            acks.waiting,
            vec![(
                "back".into(),
                Waiting::Behind {
                    applied: 5,
                    freeze: 10
                }
            )]
        );
    }

    #[test]
    fn a_router_registered_but_never_recorded_as_seen_is_required() {
        let r = regs(vec![("new", reg(10, &[(7, 1)]))]);
        let acks = freeze_acks(&r, &names(&[]), &names(&[]), 10, 7);
        assert_eq!(acks.waiting, vec![("new".into(), Waiting::InFlight(1))]);
    }

    #[test]
    fn an_unreadable_registration_is_awaited_with_its_error() {
        let bad = Registration::parse("{\"revision\": \"x\"}");
        assert!(bad.is_err());
        let r = regs(vec![("odd", bad)]);
        let acks = freeze_acks(&r, &names(&[]), &names(&[]), 1, 7);
        assert!(
            matches!(&acks.waiting[0].1, Waiting::Unreadable(e) if e.contains("unreadable registration"))
        );
    }

    #[test]
    fn retiring_a_router_never_seen_changes_nothing_and_nobody_is_vacuous() {
        let acks = freeze_acks(&regs(vec![]), &names(&[]), &names(&["x"]), 10, 7);
        assert!(acks.complete());
        assert!(acks.acknowledged.is_empty());
    }

    #[test]
    fn the_router_registration_format_reads() {
        let r = Registration::parse(r#"{"revision": 1234, "frozen": {"42": 3, "43": 0}}"#).unwrap();
        assert_eq!(r.revision, 1234);
        assert_eq!(r.frozen.get(&42), Some(&3));
        assert_eq!(r.frozen.get(&43), Some(&0));
    }
}
