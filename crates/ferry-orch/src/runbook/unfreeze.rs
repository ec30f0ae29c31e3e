//! Step `unfreeze`: the flip made the sites active at the destination and
//! released the requests held during the freeze; this waits (up to
//! `unfreeze_timeout`) until no router holds any of them, and records what
//! was still held.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::unit_run::UnitRun;
use crate::error::Result;
use crate::event::{Detail, StepDetail};
use crate::status::{Outcome, Step};

impl UnitRun<'_> {
    pub(super) async fn unfreeze(&self) -> Result<()> {
        let (o, u) = (self.orch, self.unit);
        let step = Step::Unfreeze;
        self.begin(step, None, Detail::none()).await?;
        let started = Instant::now();
        let deadline = started + o.cfg.freeze.unfreeze_timeout;
        let mut remaining: BTreeMap<String, u64>;
        // A router that does not answer (cut off, restarting) may still
        // hold requests: it is asked again until the deadline, and named.
        let mut unanswered: BTreeMap<String, String>;
        loop {
            remaining = BTreeMap::new();
            unanswered = BTreeMap::new();
            for (name, res) in o.query_all(&o.routers, &u.sites).await {
                match res {
                    Ok(list) => {
                        let held: u64 = list.iter().map(|s| s.held).sum();
                        if held > 0 {
                            remaining.insert(name, held);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(router = name, error = %e, "cannot read held requests");
                        unanswered.insert(name, e.to_string());
                    }
                }
            }
            if (remaining.is_empty() && unanswered.is_empty()) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(o.opts.poll.max(Duration::from_millis(50))).await;
        }
        let waited = started.elapsed().as_millis() as u64;
        let mut summary = if remaining.is_empty() {
            format!("no request held after {waited} ms")
        } else {
            format!("still held after {waited} ms: {remaining:?}")
        };
        if !unanswered.is_empty() {
            let names: Vec<&str> = unanswered.keys().map(String::as_str).collect();
            summary.push_str(&format!(
                " at the routers that answered; not answering (held unknown): {}",
                names.join(", ")
            ));
        }
        self.end(
            step,
            None,
            Outcome::Ok,
            StepDetail::summary(summary).report(
                json!({"waited_ms": waited, "still_held": remaining, "unanswered": unanswered}),
            ),
        )
        .await
    }
}
