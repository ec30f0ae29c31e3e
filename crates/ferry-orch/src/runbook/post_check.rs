//! Step `post_check`: every site fetched again through the check router
//! and compared with its fingerprint from `prepare`. Differences are
//! reported (the unit's message), not undone: the move is complete.

use serde::Serialize;
use serde_json::json;

use super::unit_run::UnitRun;
use crate::error::Result;
use crate::event::{Detail, StepDetail};
use crate::status::{Outcome, Step};

/// How many differing sites the message names.
const NAMED: usize = 10;

/// A site that answers differently than at prepare.
#[derive(Serialize)]
struct Difference<'a> {
    host: &'a str,
    /// The status at prepare; None: the site was not fingerprinted then.
    before: Option<u16>,
    after: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_changed: Option<bool>,
}

impl Difference<'_> {
    /// "host (200 -> 502)".
    fn line(&self) -> String {
        let before = self.before.map_or("null".to_string(), |b| b.to_string());
        format!("{} ({before} -> {})", self.host, self.after)
    }
}

impl UnitRun<'_> {
    pub(super) async fn post_check(&self) -> Result<()> {
        let step = Step::PostCheck;
        self.begin(step, None, Detail::none()).await?;
        let before = self.progress.fingerprints.clone().unwrap_or_default();
        let after = self.orch.fingerprints(&self.unit.sites).await;
        let mut diffs = Vec::new();
        for (h, a) in &after {
            match before.get(h) {
                Some(b) if b == a => {}
                Some(b) => diffs.push(Difference {
                    host: h,
                    before: Some(b.status),
                    after: a.status,
                    body_changed: Some(b.body != a.body),
                }),
                None => diffs.push(Difference {
                    host: h,
                    before: None,
                    after: a.status,
                    body_changed: None,
                }),
            }
        }
        let d = if diffs.is_empty() {
            StepDetail::summary(format!("{} sites answer as before", after.len()))
        } else {
            let names: Vec<String> = diffs.iter().take(NAMED).map(Difference::line).collect();
            let msg = format!(
                "post-check: {} of {} sites answer differently: {}",
                diffs.len(),
                after.len(),
                names.join(", ")
            );
            StepDetail {
                message: Some(msg.clone()),
                ..StepDetail::summary(msg)
            }
        };
        let d = d.report(json!({"differences": diffs, "checked": after.len()}));
        self.end(step, None, Outcome::Ok, d).await
    }
}
