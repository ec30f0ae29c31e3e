//! Fingerprints: what each site answers through the check router (status
//! and a hash of the body), taken at prepare and compared at post-check.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Orchestrator;
use crate::router::{fingerprint, Fingerprint};

/// How many sites are fetched at once.
const PARALLEL: usize = 16;

impl Orchestrator {
    /// Every site's fingerprint through `[check] via`; none when that
    /// router has no traffic address.
    pub(super) async fn fingerprints(&self, sites: &[String]) -> BTreeMap<String, Fingerprint> {
        let via = self
            .cfg
            .router(&self.cfg.check.via)
            .and_then(|r| r.traffic.clone());
        let Some(traffic) = via else {
            return BTreeMap::new();
        };
        let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut set = tokio::task::JoinSet::new();
        for h in sites {
            let (http, traffic, h, path, timeout, sem) = (
                self.http.clone(),
                traffic.clone(),
                h.clone(),
                self.cfg.check.path.clone(),
                self.cfg.check.timeout,
                sem.clone(),
            );
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let f = fingerprint(&http, &traffic, &h, &path, timeout).await;
                (h, f)
            });
        }
        let mut out = BTreeMap::new();
        while let Some(j) = set.join_next().await {
            if let Ok((h, f)) = j {
                out.insert(h, f);
            }
        }
        out
    }
}
