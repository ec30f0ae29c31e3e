//! The `p95_latency` signal: the 95th percentile of a pool's upstream
//! latency over the last second, from the deltas of its histogram (the one
//! `/metrics` shows as `ferry_upstream_duration_seconds`). Coarse by
//! design: the answer is the upper bound of the bucket holding the 95th
//! percentile (0.5 ms up to 5 s; above the last bound, twice it).

/// A histogram's counts at one instant: per bucket (upper bound in seconds,
/// not cumulative) and in all.
pub(crate) type Counts = (Vec<(f64, u64)>, u64);

/// The 95th percentile in milliseconds between two snapshots; 0 without
/// requests in between.
pub(crate) fn p95_ms(before: &Counts, now: &Counts) -> f64 {
    let total = now.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    // The smallest count that is at least 95 % of the requests.
    let target = (total * 95).div_ceil(100);
    let mut seen = 0;
    for (i, (bound, n)) in now.0.iter().enumerate() {
        let was = before.0.get(i).map_or(0, |b| b.1);
        seen += n.saturating_sub(was);
        if seen >= target {
            return bound * 1000.0;
        }
    }
    now.0.last().map_or(0.0, |(bound, _)| bound * 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(per_bucket: &[u64], over: u64) -> Counts {
        let bounds = [0.001, 0.01, 0.1, 1.0];
        let v: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .zip(per_bucket.iter().copied())
            .collect();
        let total = per_bucket.iter().sum::<u64>() + over;
        (v, total)
    }

    #[test]
    fn the_95th_percentile_is_the_bound_of_its_bucket_over_the_last_window() {
        let before = counts(&[1000, 0, 0, 0], 0);
        // 100 new requests: 90 fast, 6 at <= 100 ms, 4 at <= 1 s.
        let now = counts(&[1090, 0, 6, 4], 0);
        assert_eq!(p95_ms(&before, &now), 100.0);
        // 95 fast of 100: the 95th is fast.
        let now = counts(&[1095, 0, 1, 4], 0);
        assert_eq!(p95_ms(&before, &now), 1.0);
        // Nothing new: no latency to speak of.
        assert_eq!(p95_ms(&before, &before), 0.0);
        // Most above the last bound.
        let now = counts(&[1000, 0, 0, 0], 10);
        assert_eq!(p95_ms(&before, &now), 2000.0);
    }
}
