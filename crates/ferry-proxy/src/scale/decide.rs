//! The scale decision, pure: a signal sample and the clock in, add / remove /
//! hold out. No I/O, so it is tested with paused time.

use std::time::Duration;

use ferry_config::ScaleSpec;
use tokio::time::Instant;

/// First wait after a failed action; doubled per failure in a row.
const BACK_OFF_FIRST: Duration = Duration::from_secs(2);
/// Longest wait after failures: a broken provider command is retried every
/// five minutes, never in a tight loop.
const BACK_OFF_MAX: Duration = Duration::from_secs(300);

/// One second's view of a pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    /// The policy's signal (requests in flight per ready server).
    pub signal: f64,
    /// Servers taking traffic (state `ready`).
    pub servers: u32,
}

/// What the policy does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Add,
    Remove,
    Hold(Why),
}

/// Why nothing is done now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The signal is between the thresholds.
    Steady,
    /// Past a threshold, for less than `hold` so far.
    Holding,
    /// An action is in flight (one at a time per pool).
    Busy,
    /// The last action ended less than `cooldown` ago.
    Cooldown,
    /// The last action failed; waiting before trying again.
    BackOff,
    /// Above `add_above`, but the pool has `max_servers` already.
    AtMax,
    /// Below `remove_below`, but the pool has `min_servers` only.
    AtMin,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Add => "add",
            Decision::Remove => "remove",
            Decision::Hold(w) => w.as_str(),
        }
    }
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Steady => "steady",
            Why::Holding => "holding",
            Why::Busy => "busy",
            Why::Cooldown => "cooldown",
            Why::BackOff => "back_off",
            Why::AtMax => "at_max",
            Why::AtMin => "at_min",
        }
    }
}

/// A pool's decision state: since when the signal is past a threshold, and
/// until when the policy stays quiet after an action.
#[derive(Debug, Default)]
pub(crate) struct Decider {
    above_since: Option<Instant>,
    below_since: Option<Instant>,
    quiet_until: Option<Instant>,
    /// Failed actions in a row (0 after a success).
    failures: u32,
}

impl Decider {
    /// The decision for `sample` at `now`; `busy`: an action is in flight.
    /// An `Add` or `Remove` restarts the hold, so the next action needs the
    /// signal past its threshold for a whole `hold` again.
    pub fn decide(&mut self, p: &ScaleSpec, now: Instant, s: Sample, busy: bool) -> Decision {
        let above = s.signal > p.add_above.get();
        let below = s.signal < p.remove_below.get();
        if above {
            self.above_since.get_or_insert(now);
        } else {
            self.above_since = None;
        }
        if below {
            self.below_since.get_or_insert(now);
        } else {
            self.below_since = None;
        }
        if busy {
            return Decision::Hold(Why::Busy);
        }
        if self.quiet_until.is_some_and(|t| now < t) {
            return Decision::Hold(if self.failures > 0 {
                Why::BackOff
            } else {
                Why::Cooldown
            });
        }
        let held = |since: Option<Instant>| since.is_some_and(|t| now - t >= p.hold);
        let d = if s.servers < p.min_servers {
            // Below the floor (a server died, or the policy just started):
            // no need to wait for the signal.
            Decision::Add
        } else if s.servers > p.max_servers {
            Decision::Remove
        } else if held(self.above_since) {
            if s.servers < p.max_servers {
                Decision::Add
            } else {
                Decision::Hold(Why::AtMax)
            }
        } else if held(self.below_since) {
            if s.servers > p.min_servers {
                Decision::Remove
            } else {
                Decision::Hold(Why::AtMin)
            }
        } else if above || below {
            Decision::Hold(Why::Holding)
        } else {
            Decision::Hold(Why::Steady)
        };
        if matches!(d, Decision::Add | Decision::Remove) {
            self.above_since = None;
            self.below_since = None;
        }
        d
    }

    /// An action ended at `now`: quiet for `cooldown` after a success, for a
    /// doubling back-off after failures in a row. Returns the quiet time.
    pub fn finished(&mut self, p: &ScaleSpec, now: Instant, ok: bool) -> Duration {
        let wait = if ok {
            self.failures = 0;
            p.cooldown
        } else {
            self.failures = self.failures.saturating_add(1);
            back_off(self.failures).max(p.cooldown.min(BACK_OFF_MAX))
        };
        self.quiet_until = Some(now + wait);
        wait
    }

    /// Failed actions in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The wait after `failures` failures in a row (1 or more).
pub(crate) fn back_off(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACK_OFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACK_OFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_config::{ScaleSignal, SignalLevel};

    fn policy() -> ScaleSpec {
        ScaleSpec {
            signal: ScaleSignal::InflightPerServer,
            add_above: SignalLevel(8000),
            remove_below: SignalLevel(2000),
            hold: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
            min_servers: 2,
            max_servers: 4,
            add_command: vec!["add".into()],
            remove_command: vec!["remove".into()],
            command_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
        }
    }

    fn at(signal: f64, servers: u32) -> Sample {
        Sample { signal, servers }
    }

    /// Feeds one sample a second for `secs` seconds; the decisions taken.
    async fn run(d: &mut Decider, p: &ScaleSpec, secs: u32, s: Sample) -> Vec<Decision> {
        let mut out = Vec::new();
        for _ in 0..secs {
            out.push(d.decide(p, Instant::now(), s, false));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_is_added_only_after_the_signal_held_above_the_threshold() {
        let p = policy();
        let mut d = Decider::default();
        let got = run(&mut d, &p, 10, at(9.0, 2)).await;
        assert!(got.iter().all(|x| *x == Decision::Hold(Why::Holding)));
        assert_eq!(
            d.decide(&p, Instant::now(), at(9.0, 2), false),
            Decision::Add
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dip_between_the_thresholds_restarts_the_hold() {
        let p = policy();
        let mut d = Decider::default();
        run(&mut d, &p, 9, at(9.0, 2)).await;
        assert_eq!(
            d.decide(&p, Instant::now(), at(5.0, 2), false),
            Decision::Hold(Why::Steady)
        );
        let got = run(&mut d, &p, 10, at(9.0, 2)).await;
        assert!(!got.contains(&Decision::Add), "{got:?}");
        assert_eq!(
            d.decide(&p, Instant::now(), at(9.0, 2), false),
            Decision::Add
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_an_action_the_pool_stays_quiet_for_the_cooldown() {
        let p = policy();
        let mut d = Decider::default();
        run(&mut d, &p, 10, at(9.0, 2)).await;
        assert_eq!(
            d.decide(&p, Instant::now(), at(9.0, 2), false),
            Decision::Add
        );
        // In flight: one action at a time.
        let busy = d.decide(&p, Instant::now(), at(9.0, 2), true);
        assert_eq!(busy, Decision::Hold(Why::Busy));
        assert_eq!(d.finished(&p, Instant::now(), true), p.cooldown);
        let got = run(&mut d, &p, 30, at(9.0, 3)).await;
        assert!(got.iter().all(|x| *x == Decision::Hold(Why::Cooldown)));
        // The signal stayed high through the cooldown: held long enough.
        assert_eq!(
            d.decide(&p, Instant::now(), at(9.0, 3), false),
            Decision::Add
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_pool_never_grows_past_max_nor_shrinks_below_min() {
        let p = policy();
        let mut d = Decider::default();
        run(&mut d, &p, 10, at(50.0, 4)).await;
        assert_eq!(
            d.decide(&p, Instant::now(), at(50.0, 4), false),
            Decision::Hold(Why::AtMax)
        );
        let mut d = Decider::default();
        run(&mut d, &p, 10, at(0.0, 2)).await;
        assert_eq!(
            d.decide(&p, Instant::now(), at(0.0, 2), false),
            Decision::Hold(Why::AtMin)
        );
        // Below the floor: added without waiting for the signal.
        let mut d = Decider::default();
        assert_eq!(
            d.decide(&p, Instant::now(), at(0.0, 1), false),
            Decision::Add
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_is_removed_after_the_signal_held_below_the_threshold() {
        let p = policy();
        let mut d = Decider::default();
        let got = run(&mut d, &p, 10, at(1.0, 3)).await;
        assert!(got.iter().all(|x| *x == Decision::Hold(Why::Holding)));
        assert_eq!(
            d.decide(&p, Instant::now(), at(1.0, 3), false),
            Decision::Remove
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_doubling_up_to_a_cap() {
        let p = ScaleSpec {
            cooldown: Duration::from_secs(1),
            ..policy()
        };
        let mut d = Decider::default();
        let waits: Vec<u64> = (0..10)
            .map(|_| d.finished(&p, Instant::now(), false).as_secs())
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(d.failures(), 10);
        assert_eq!(
            d.decide(&p, Instant::now(), at(0.0, 1), false),
            Decision::Hold(Why::BackOff)
        );
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(
            d.decide(&p, Instant::now(), at(0.0, 1), false),
            Decision::Add
        );
        d.finished(&p, Instant::now(), true);
        assert_eq!(d.failures(), 0);
    }
}
