//! What a scenario breaks on purpose costs some requests; those it
//! documents are taken out of the request checks (and listed).

use std::time::Duration;

/// Failures a scenario causes on purpose, as documented for it
/// (docs/control-plane.md, "Partitions rehearsed"): requests in flight
/// between `from_ms` and `to_ms` (Unix ms) that failed with a reason
/// starting with one of `reasons`. They are taken out of the request checks
/// and listed in the scenario's own; every other failure still fails them.
pub(crate) struct Excused {
    pub from_ms: u64,
    pub to_ms: u64,
    pub reasons: &'static [&'static str],
    /// Why, for the check's detail.
    pub why: &'static str,
}

impl Excused {
    fn covers(&self, sent_at_ms: u64, took: Duration, failed: Option<&String>) -> bool {
        let ended = sent_at_ms + took.as_millis() as u64;
        failed.is_some_and(|f| self.reasons.iter().any(|r| f.starts_with(r)))
            && sent_at_ms <= self.to_ms
            && ended >= self.from_ms
    }

    /// Takes the excused failures out of `load` and `mixed`; returns their
    /// count by reason, as a sentence.
    pub(crate) fn apply(
        &self,
        load: &mut ferry_demo::load::LoadResult,
        mixed: &mut [crate::traffic::Record],
    ) -> String {
        let mut by_reason: std::collections::BTreeMap<String, u64> = Default::default();
        for r in &mut load.log {
            if self.covers(r.sent_at_ms, r.took, r.failed.as_ref()) {
                let reason = r.failed.take().unwrap_or_default();
                load.failed = load.failed.saturating_sub(1);
                if let Some(n) = load.reasons.get_mut(&reason) {
                    *n -= 1;
                    if *n == 0 {
                        load.reasons.remove(&reason);
                    }
                }
                *by_reason.entry(reason).or_default() += 1;
            }
        }
        for r in mixed.iter_mut() {
            if self.covers(r.sent_at_ms, r.took, r.failed.as_ref()) {
                *by_reason
                    .entry(r.failed.take().unwrap_or_default())
                    .or_default() += 1;
            }
        }
        if by_reason.is_empty() {
            return format!("; no request failed {}", self.why);
        }
        let list: Vec<String> = by_reason
            .iter()
            .map(|(r, n)| format!("{n} x {r}"))
            .collect();
        format!("; failed {} (documented): {}", self.why, list.join(", "))
    }
}
