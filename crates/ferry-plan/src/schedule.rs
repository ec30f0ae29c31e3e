//! Packing units into nights.
//!
//! Rules (see `docs/plan-format.md`):
//! - A unit whose freeze exceeds `--max-freeze` or the window is impossible: it
//!   is reported, never scheduled.
//! - A night has `--parallel` lanes; freezes in one lane run one after another
//!   and add up to at most the window. The final copies of all the night's
//!   freezes share the link: together at most bandwidth x window.
//! - Pre-copy runs day and night on the same link, in night order: everything
//!   frozen up to night m, plus the final copies of earlier nights, must fit in
//!   bandwidth x (time from the start of pre-copy to the opening of night m).
//!
//! Units go longest freeze first into the first night that satisfies all three
//! (first-fit decreasing), on that night's least busy lane: the lane whose last
//! freeze ends first. A night's freezes thus spread over its lanes (longest
//! first, each lane back to back) and the night ends as early as it can, not
//! when one lane has filled the window. Two segment trees make finding the
//! night O(log nights): a min-tree of pre-copy slack per night with range add,
//! and a max-tree of the window time left on each night's least busy lane.

use crate::params::Params;

const DAY: f64 = 86_400.0;

/// What the scheduler needs of a unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Job {
    pub freeze_s: f64,
    pub precopy_bytes: f64,
    pub final_bytes: f64,
}

/// Why a unit cannot be scheduled at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impossible {
    /// Its freeze is longer than `--max-freeze`.
    FreezeOverBudget,
    /// Its freeze is longer than the night window.
    FreezeOverWindow,
}

/// Where a unit goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slot {
    /// Night `night` (0-based), lane `lane`, the `order`-th freeze of the
    /// night, starting `start_s` after the window opens.
    Night {
        night: u32,
        lane: u32,
        order: u32,
        start_s: f64,
    },
    Impossible(Impossible),
    /// Fits alone, but not within `--nights`.
    Unscheduled,
}

/// One night's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Night {
    pub units: u32,
    /// Sum of the freezes (over all lanes).
    pub freeze_s: f64,
    /// When the last freeze ends, after the window opens (the busiest lane).
    pub busy_s: f64,
    pub final_bytes: f64,
    pub precopy_bytes: f64,
    /// Pre-copy and earlier final copies that must be done when this night opens.
    pub link_bytes_needed: f64,
    /// What the link can carry from the start of pre-copy to this night's opening.
    pub link_bytes_available: f64,
    /// Seconds from the start of pre-copy to this night's opening.
    pub opens_after_s: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub slots: Vec<Slot>,
    pub nights: Vec<Night>,
}

impl Schedule {
    pub fn impossible(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Impossible(_)))
            .count()
    }
    pub fn unscheduled(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Unscheduled))
            .count()
    }
}

/// Min over a range with range add.
struct MinTree {
    n: usize,
    min: Vec<f64>,
    lazy: Vec<f64>,
}

impl MinTree {
    fn new(values: &[f64]) -> MinTree {
        let n = values.len().max(1);
        let mut t = MinTree {
            n,
            min: vec![f64::INFINITY; 4 * n],
            lazy: vec![0.0; 4 * n],
        };
        t.build(1, 0, n - 1, values);
        t
    }
    fn build(&mut self, node: usize, lo: usize, hi: usize, v: &[f64]) {
        if lo == hi {
            self.min[node] = v.get(lo).copied().unwrap_or(f64::INFINITY);
            return;
        }
        let mid = (lo + hi) / 2;
        self.build(2 * node, lo, mid, v);
        self.build(2 * node + 1, mid + 1, hi, v);
        self.min[node] = self.min[2 * node].min(self.min[2 * node + 1]);
    }
    fn push(&mut self, node: usize) {
        let z = self.lazy[node];
        if z != 0.0 {
            for c in [2 * node, 2 * node + 1] {
                self.min[c] += z;
                self.lazy[c] += z;
            }
            self.lazy[node] = 0.0;
        }
    }
    /// Adds `v` to every index in `l..=r`.
    fn add(&mut self, l: usize, r: usize, v: f64) {
        if l <= r && l < self.n {
            self.add_rec(1, 0, self.n - 1, l, r.min(self.n - 1), v);
        }
    }
    fn add_rec(&mut self, node: usize, lo: usize, hi: usize, l: usize, r: usize, v: f64) {
        if r < lo || hi < l {
            return;
        }
        if l <= lo && hi <= r {
            self.min[node] += v;
            self.lazy[node] += v;
            return;
        }
        self.push(node);
        let mid = (lo + hi) / 2;
        self.add_rec(2 * node, lo, mid, l, r, v);
        self.add_rec(2 * node + 1, mid + 1, hi, l, r, v);
        self.min[node] = self.min[2 * node].min(self.min[2 * node + 1]);
    }
    /// The value at index `i`.
    fn get(&mut self, i: usize) -> f64 {
        let (mut node, mut lo, mut hi) = (1, 0, self.n - 1);
        while lo < hi {
            self.push(node);
            let mid = (lo + hi) / 2;
            if i <= mid {
                (node, hi) = (2 * node, mid);
            } else {
                (node, lo) = (2 * node + 1, mid + 1);
            }
        }
        self.min[node]
    }
    /// The largest index whose value is below `x`.
    fn last_below(&mut self, x: f64) -> Option<usize> {
        if self.min[1] >= x {
            // Every night has room: the usual case once pre-copy is ahead.
            return None;
        }
        self.last_below_rec(1, 0, self.n - 1, x)
    }
    fn last_below_rec(&mut self, node: usize, lo: usize, hi: usize, x: f64) -> Option<usize> {
        if self.min[node] >= x {
            return None;
        }
        if lo == hi {
            return Some(lo);
        }
        self.push(node);
        let mid = (lo + hi) / 2;
        self.last_below_rec(2 * node + 1, mid + 1, hi, x)
            .or_else(|| self.last_below_rec(2 * node, lo, mid, x))
    }
}

/// Max over a range with point assignment; iterative, leaves at `size..2 * size`.
struct MaxTree {
    size: usize,
    max: Vec<f64>,
}

impl MaxTree {
    fn new(values: &[f64]) -> MaxTree {
        let size = values.len().max(1).next_power_of_two();
        let mut max = vec![f64::NEG_INFINITY; 2 * size];
        max[size..size + values.len()].copy_from_slice(values);
        for i in (1..size).rev() {
            max[i] = max[2 * i].max(max[2 * i + 1]);
        }
        MaxTree { size, max }
    }
    fn set(&mut self, i: usize, v: f64) {
        let mut i = i + self.size;
        self.max[i] = v;
        while i > 1 {
            i >>= 1;
            self.max[i] = self.max[2 * i].max(self.max[2 * i + 1]);
        }
    }
    /// The smallest index >= `from` whose value is at least `x`.
    fn first_at_least(&self, from: usize, x: f64) -> Option<usize> {
        if from >= self.size {
            return None;
        }
        let mut i = from + self.size;
        if self.max[i] < x {
            loop {
                // Climb while a right child, then step to the right sibling.
                while i & 1 == 1 {
                    i >>= 1;
                }
                if i == 0 {
                    return None;
                }
                i += 1;
                if self.max[i] >= x {
                    break;
                }
            }
        }
        // Descend to the leftmost leaf that qualifies.
        while i < self.size {
            i *= 2;
            if self.max[i] < x {
                i += 1;
            }
        }
        Some(i - self.size)
    }
}

struct Nights {
    params: Params,
    window: f64,
    lanes: usize,
    nights: Vec<Night>,
    /// Freeze time used per lane, `night * lanes + lane`.
    lane_used: Vec<f64>,
    slack: MinTree,
    /// Per night: window time left on its least busy lane.
    room: MaxTree,
}

impl Nights {
    fn opens_after(params: &Params, m: usize) -> f64 {
        params.lead + m as f64 * DAY
    }

    fn new(params: &Params, capacity: usize, old: Vec<Night>, old_lanes: Vec<f64>) -> Nights {
        let window = params.window.seconds();
        let lanes = params.parallel.max(1) as usize;
        let mut nights = old;
        nights.resize(capacity, Night::default());
        let mut lane_used = old_lanes;
        lane_used.resize(capacity * lanes, 0.0);
        let mut slack = Vec::with_capacity(capacity);
        let (mut pre, mut fin_before) = (0.0, 0.0);
        for (m, night) in nights.iter_mut().enumerate() {
            pre += night.precopy_bytes;
            night.opens_after_s = Self::opens_after(params, m);
            night.link_bytes_available = params.bandwidth * night.opens_after_s;
            slack.push(night.link_bytes_available - pre - fin_before);
            fin_before += night.final_bytes;
        }
        let room: Vec<f64> = lane_used
            .chunks(lanes)
            .map(|night| window - night.iter().fold(f64::INFINITY, |a, &b| a.min(b)))
            .collect();
        Nights {
            params: *params,
            window,
            lanes,
            nights,
            lane_used,
            slack: MinTree::new(&slack),
            room: MaxTree::new(&room),
        }
    }

    fn grow(self) -> Nights {
        let cap = self.nights.len() * 2;
        Nights::new(&self.params, cap, self.nights, self.lane_used)
    }

    /// The least busy lane of night `night` (the lowest on a tie) and its time used.
    fn least_busy(&self, night: usize) -> (usize, f64) {
        let lanes = &self.lane_used[night * self.lanes..(night + 1) * self.lanes];
        let mut best = (0, lanes[0]);
        for (lane, &used) in lanes.iter().enumerate().skip(1) {
            if used < best.1 {
                best = (lane, used);
            }
        }
        best
    }

    /// The first (night, lane) that takes `job`, if any within capacity.
    fn find(&mut self, job: &Job) -> Option<(usize, usize)> {
        // Night k needs the job's pre-copy done by its opening, and every later
        // night also its final copy (which runs during night k, not before it).
        // So k is at least the last night short of pre-copy + final copy, and
        // that night itself only needs room for the pre-copy.
        let mut from = match self.slack.last_below(job.precopy_bytes + job.final_bytes) {
            Some(i) if self.slack.get(i) >= job.precopy_bytes => i,
            Some(i) => i + 1,
            None => 0,
        };
        let link = self.params.bandwidth * self.window;
        while from < self.nights.len() {
            let night = self.room.first_at_least(from, job.freeze_s)?;
            if self.nights[night].final_bytes + job.final_bytes <= link {
                return Some((night, self.least_busy(night).0));
            }
            // That night's link is full of final copies: look further.
            from = night + 1;
        }
        None
    }

    fn place(&mut self, night_index: usize, lane: usize, job: &Job) -> (u32, f64) {
        let n = self.nights.len();
        let bin = night_index * self.lanes + lane;
        let start = self.lane_used[bin];
        self.lane_used[bin] += job.freeze_s;
        let night = &mut self.nights[night_index];
        let order = night.units;
        night.units += 1;
        night.freeze_s += job.freeze_s;
        night.busy_s = night.busy_s.max(self.lane_used[bin]);
        night.final_bytes += job.final_bytes;
        night.precopy_bytes += job.precopy_bytes;
        self.room
            .set(night_index, self.window - self.least_busy(night_index).1);
        self.slack.add(night_index, n - 1, -job.precopy_bytes);
        self.slack.add(night_index + 1, n - 1, -job.final_bytes);
        (order, start)
    }
}

/// Schedules `jobs` (one per unit, in unit order) under `params`.
pub fn schedule(jobs: &[Job], params: &Params) -> Schedule {
    let window = params.window.seconds();
    let mut slots = vec![Slot::Unscheduled; jobs.len()];
    // The jobs to place, copied in placement order (longest freeze first, then
    // unit order): the loop then reads memory in sequence, which at millions of
    // units matters more than the tree work.
    let mut order: Vec<(Job, u32)> = Vec::with_capacity(jobs.len());
    let mut total = 0.0;
    for (i, job) in jobs.iter().enumerate() {
        if job.freeze_s > params.max_freeze {
            slots[i] = Slot::Impossible(Impossible::FreezeOverBudget);
        } else if job.freeze_s > window {
            slots[i] = Slot::Impossible(Impossible::FreezeOverWindow);
        } else {
            order.push((*job, i as u32));
            total += job.precopy_bytes + job.final_bytes;
        }
    }
    order.sort_unstable_by(|a, b| b.0.freeze_s.total_cmp(&a.0.freeze_s).then(a.1.cmp(&b.1)));

    let cap = match params.nights {
        Some(n) => n as usize,
        // A guess; the table doubles when it is too small.
        None => {
            let freeze: f64 = order.iter().map(|(j, _)| j.freeze_s).sum();
            let lanes = f64::from(params.parallel.max(1));
            ((freeze / window / lanes) * 1.3 + total / (params.bandwidth * DAY) + 2.0) as usize
        }
    }
    .max(1);
    let mut nights = Nights::new(params, cap, Vec::new(), Vec::new());
    let mut placed: Vec<(u32, Slot)> = Vec::with_capacity(order.len());
    for (job, i) in &order {
        let k = loop {
            match nights.find(job) {
                Some(k) => break Some(k),
                None if params.nights.is_some() => break None,
                None => nights = nights.grow(),
            }
        };
        if let Some((k, lane)) = k {
            let (order, start_s) = nights.place(k, lane, job);
            placed.push((
                *i,
                Slot::Night {
                    night: k as u32,
                    lane: lane as u32,
                    order,
                    start_s,
                },
            ));
        }
    }
    for (i, slot) in placed {
        slots[i as usize] = slot;
    }
    let mut out = nights.nights;
    let used = out.iter().rposition(|n| n.units > 0).map_or(0, |i| i + 1);
    out.truncate(used);
    let (mut pre, mut fin_before) = (0.0, 0.0);
    for n in &mut out {
        pre += n.precopy_bytes;
        n.link_bytes_needed = pre + fin_before;
        fin_before += n.final_bytes;
    }
    Schedule { slots, nights: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each job's night (`u32::MAX`: not in a night).
    fn nights_of(s: &Schedule) -> Vec<u32> {
        s.slots
            .iter()
            .map(|s| match s {
                Slot::Night { night, .. } => *night,
                _ => u32::MAX,
            })
            .collect()
    }

    fn params() -> Params {
        Params {
            bandwidth: 1000.0,
            lead: 1000.0,
            parallel: 1,
            max_freeze: 1e9,
            ..Params::default()
        }
    }

    #[test]
    fn window_is_shared_by_freezes() {
        let p = params();
        let job = Job {
            freeze_s: 5_000.0,
            precopy_bytes: 0.0,
            final_bytes: 0.0,
        };
        let s = schedule(&[job; 5], &p);
        // 4 h window: two 5000 s freezes per night.
        let nights = nights_of(&s);
        assert_eq!(nights, [0, 0, 1, 1, 2]);
        assert_eq!(s.nights.len(), 3);
        assert!(matches!(s.slots[1], Slot::Night { order: 1, start_s, .. } if start_s == 5_000.0));
    }

    #[test]
    fn precopy_must_be_done_before_the_night() {
        let p = params();
        // Budget before night m: 1000 B/s * (1000 + m * 86400) s.
        let job = Job {
            freeze_s: 100.0,
            precopy_bytes: 50_000_000.0,
            final_bytes: 0.0,
        };
        let s = schedule(&[job; 3], &p);
        let nights = nights_of(&s);
        // 50 MB needs ~0.58 day: night 1 (86.4 MB budget) takes one, night 2 one more...
        assert_eq!(nights, [1, 2, 2]);
        for n in &s.nights {
            assert!(n.link_bytes_needed <= n.link_bytes_available);
        }
        assert_eq!(s.nights[0].units, 0);
    }

    #[test]
    fn own_final_copy_does_not_count_against_its_nights_precopy() {
        // Night 1 opens after 1,000 s at 1,000 B/s: 1 MB of pre-copy. The
        // final copy runs during the night, so 0.9 MB pre-copy + 0.2 MB final
        // copy fits night 1.
        let job = Job {
            freeze_s: 100.0,
            precopy_bytes: 900_000.0,
            final_bytes: 200_000.0,
        };
        let s = schedule(&[job], &params());
        assert!(matches!(s.slots[0], Slot::Night { night: 0, .. }));
        // One byte more pre-copy than the link carried does not.
        let over = Job {
            precopy_bytes: 1_000_001.0,
            ..job
        };
        let s = schedule(&[over], &params());
        assert!(matches!(s.slots[0], Slot::Night { night: 1, .. }));
    }

    #[test]
    fn impossible_and_unscheduled() {
        let p = Params {
            nights: Some(1),
            ..params()
        };
        let small = Job {
            freeze_s: 10_000.0,
            precopy_bytes: 0.0,
            final_bytes: 0.0,
        };
        let huge = Job {
            freeze_s: 3_600.0 * 5.0,
            ..small
        };
        let long = Job {
            freeze_s: 2_000.0,
            ..small
        };
        let p2 = Params {
            max_freeze: 20_000.0,
            ..p
        };
        let s = schedule(&[small, small, huge], &p2);
        assert_eq!(s.slots[2], Slot::Impossible(Impossible::FreezeOverWindow));
        assert_eq!(s.unscheduled(), 1);
        let s = schedule(
            &[long],
            &Params {
                max_freeze: 1_000.0,
                ..p
            },
        );
        assert_eq!(s.slots[0], Slot::Impossible(Impossible::FreezeOverBudget));
    }

    #[test]
    fn growing_keeps_placements() {
        // Many tiny jobs with a tiny first guess force the night table to grow.
        let p = Params {
            window: crate::params::Window::parse("01:00-01:01").unwrap(),
            max_freeze: 60.0,
            ..params()
        };
        let jobs = vec![
            Job {
                freeze_s: 30.0,
                precopy_bytes: 1.0,
                final_bytes: 1.0,
            };
            1000
        ];
        let s = schedule(&jobs, &p);
        assert_eq!(s.nights.len(), 500);
        assert!(s.nights.iter().all(|n| n.units == 2 && n.freeze_s <= 60.0));
    }

    #[test]
    fn lanes_run_side_by_side() {
        let p = Params {
            parallel: 3,
            ..params()
        };
        let job = Job {
            freeze_s: 8_000.0,
            precopy_bytes: 0.0,
            final_bytes: 0.0,
        };
        let s = schedule(&[job; 4], &p);
        assert_eq!(s.nights.len(), 2);
        assert_eq!(s.nights[0].units, 3);
        assert_eq!(s.nights[0].busy_s, 8_000.0);
        let lanes: Vec<u32> = s
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Night { lane, .. } => Some(*lane),
                _ => None,
            })
            .collect();
        assert_eq!(lanes, [0, 1, 2, 0]);
    }

    #[test]
    fn a_nights_freezes_spread_over_its_lanes() {
        // Eight 1,000 s freezes fit one lane's 4 h window, but four lanes run
        // them two by two: the night ends after 2,000 s, not 8,000 s.
        let p = Params {
            parallel: 4,
            ..params()
        };
        let job = Job {
            freeze_s: 1_000.0,
            precopy_bytes: 0.0,
            final_bytes: 0.0,
        };
        let s = schedule(&[job; 8], &p);
        assert_eq!(s.nights.len(), 1);
        assert_eq!(s.nights[0].busy_s, 2_000.0);
        let lanes: Vec<(u32, f64)> = s
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Night { lane, start_s, .. } => Some((*lane, *start_s)),
                _ => None,
            })
            .collect();
        assert_eq!(
            lanes,
            [
                (0, 0.0),
                (1, 0.0),
                (2, 0.0),
                (3, 0.0),
                (0, 1_000.0),
                (1, 1_000.0),
                (2, 1_000.0),
                (3, 1_000.0)
            ]
        );
    }

    #[test]
    fn a_night_link_full_of_final_copies_spills_over() {
        // Window 4 h at 1000 B/s: 14.4 MB of final copies per night.
        let p = Params {
            parallel: 4,
            lead: 86_400.0,
            ..params()
        };
        let job = Job {
            freeze_s: 100.0,
            precopy_bytes: 0.0,
            final_bytes: 10_000_000.0,
        };
        let s = schedule(&[job; 3], &p);
        assert_eq!(s.nights.len(), 3);
        for n in &s.nights {
            assert!(n.final_bytes <= 1000.0 * 14_400.0);
        }
    }
}
