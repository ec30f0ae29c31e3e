//! Step `post_check`: every site fetched again through the check router
//! and compared with its fingerprint from `prepare`. Differences are
//! reported (the unit's message), not undone: the move is complete.

use std::collections::BTreeMap;

use serde_json::json;

use super::unit_run::UnitRun;
use crate::error::Result;
use crate::router::Fingerprint;
use crate::status::{Outcome, Step};

/// How many differing sites the message names.
const NAMED: usize = 10;

impl UnitRun<'_> {
    pub(super) async fn post_check(&self) -> Result<()> {
        let step = Step::PostCheck;
        self.begin(step, None, json!({})).await?;
        let before: BTreeMap<String, Fingerprint> = self
            .progress
            .fingerprints
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let after = self.orch.fingerprints(&self.unit.sites).await;
        let mut diffs = Vec::new();
        for (h, a) in &after {
            match before.get(h) {
                Some(b) if b == a => {}
                Some(b) => diffs.push(json!({"host": h, "before": b.status, "after": a.status, "body_changed": b.body != a.body})),
                None => diffs.push(json!({"host": h, "before": null, "after": a.status})),
            }
        }
        let mut d = json!({"differences": diffs, "checked": after.len()});
        if diffs.is_empty() {
            d["summary"] = json!(format!("{} sites answer as before", after.len()));
        } else {
            let names: Vec<String> = diffs
                .iter()
                .take(NAMED)
                .map(|x| {
                    format!(
                        "{} ({} -> {})",
                        x["host"].as_str().unwrap_or("?"),
                        x["before"],
                        x["after"]
                    )
                })
                .collect();
            let msg = format!(
                "post-check: {} of {} sites answer differently: {}",
                diffs.len(),
                after.len(),
                names.join(", ")
            );
            d["summary"] = json!(msg.clone());
            d["message"] = json!(msg);
        }
        self.end(step, None, Outcome::Ok, d).await
    }
}
