//! The freeze step's wait for the fleet in etcd ([`crate::fleet`]).

use std::sync::Arc;
use std::time::Instant;

use ferry_store::EtcdStore;

use super::Orchestrator;

impl Orchestrator {
    /// Waits until every router registered or seen in etcd acknowledged the
    /// freeze at `epoch`, whose writes are all in etcd when this is called
    /// (the routers answered them). Answers the routers that acknowledged,
    /// or (router, why) for the first one still awaited at `deadline`.
    pub(super) async fn wait_fleet_acks(
        &self,
        etcd: Arc<EtcdStore>,
        sites: &[String],
        epoch: u64,
        deadline: Instant,
    ) -> std::result::Result<Vec<String>, (String, String)> {
        let revision = crate::fleet::freeze_revision(&etcd, sites)
            .await
            .map_err(|e| ("etcd".to_string(), e))?;
        crate::fleet::wait_freeze_acks(&etcd, epoch, revision, deadline, self.opts.poll, |_| {})
            .await
    }
}
