//! The router's side of the control plane (`[store] backend = "etcd"`,
//! cargo feature `etcd`; docs/control-plane.md, "Routers that watch").
//!
//! - `store.rs`: [`EtcdBacked`], the router's [`ferry_store::Store`] on etcd.
//!   Reads at start are a snapshot at one revision; writes of the admin API
//!   go to etcd (`apply_sites`: judged on epochs in the transaction), then to
//!   the local copy.
//! - `watcher.rs`: the control thread. Watches from the revision after the
//!   snapshot and applies each batch to the table under the epoch rule; on a
//!   compaction or a lost watch it takes a fresh snapshot, applies the
//!   difference and watches again. It also keeps the registration.
//! - `copy.rs`: the local SQLite copy of what was applied (records and
//!   revision), and the rule for serving from it while etcd is unreachable:
//!   settled sites serve, frozen ones stay frozen (held, then refused).
//!
//! Without the feature, `choose` and `attach` leave the router as it was and
//! `Shared::control` stays empty.

#[cfg(feature = "etcd")]
mod copy;
#[cfg(feature = "etcd")]
mod store;
#[cfg(feature = "etcd")]
mod watcher;

#[cfg(feature = "etcd")]
pub(crate) use store::Control;

use std::sync::Arc;

use ferry_config::Config;
use ferry_store::Store;

use crate::state::Shared;
use crate::ProxyError;

/// The control plane a router starts with: `[store] backend = "etcd"` (in a
/// build with the feature), or none.
#[cfg(feature = "etcd")]
pub(crate) type Started = Option<Arc<Control>>;
#[cfg(not(feature = "etcd"))]
pub(crate) type Started = ();

/// The store the router seeds from: with etcd configured, [`store::EtcdBacked`]
/// (a snapshot at one revision, or the local copy while etcd is unreachable)
/// in place of `store`; otherwise `store` itself.
pub(crate) fn choose(
    config: &Config,
    store: Arc<dyn Store>,
) -> Result<(Arc<dyn Store>, Started), ProxyError> {
    #[cfg(feature = "etcd")]
    if let Some(etcd) = &config.etcd {
        let (control, store) = store::open(etcd, &config.router.name)?;
        return Ok((store, Some(control)));
    }
    let _ = config;
    #[cfg(feature = "etcd")]
    return Ok((store, None));
    #[cfg(not(feature = "etcd"))]
    Ok((store, ()))
}

/// Starts the control thread (watch, registration, local copy) once the
/// table is seeded.
pub(crate) fn attach(
    shared: &Arc<Shared>,
    started: Started,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), ProxyError> {
    #[cfg(feature = "etcd")]
    if let Some(control) = started {
        let _ = shared
            .control
            .set(Arc::clone(&control) as Arc<dyn crate::state::ControlPlane>);
        watcher::spawn(Arc::clone(shared), control, shutdown.clone())
            .map_err(|e| ProxyError::Seed(format!("cannot start the control thread: {e}")))?;
    }
    #[cfg(not(feature = "etcd"))]
    let _ = (shared, started, shutdown);
    Ok(())
}

/// After an admin write: waits (bounded) until this router's watch has applied
/// the revision the write made in etcd, so the answer reflects what every
/// router converges to. A no-op without etcd.
pub(crate) fn await_applied(shared: &Shared) {
    if let Some(c) = shared.control.get() {
        c.await_written();
    }
}

/// The control plane's lines of `/metrics` (none without etcd).
pub(crate) fn metrics(shared: &Shared, out: &mut String) {
    if let Some(c) = shared.control.get() {
        c.render_metrics(out);
    }
}
