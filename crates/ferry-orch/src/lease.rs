//! A migration run kept in etcd (cargo feature `etcd`, `[store] backend =
//! "etcd"`): the connection, the run id and, for a runner, the run's lease.
//!
//! `ferry migrate run` / `resume` take `P/runs/<run>/lock` before acting
//! ([`EtcdRun::take`]); while another runner's lease lives the command is
//! refused, naming the holder and since when. Every journal append is then a
//! transaction guarded by the lock's create revision (ferry-journal's
//! `lease` and `etcd` modules): a runner paused past its lease, once
//! another took the run over, can append nothing, so it cannot begin a step
//! (a step's begin is journaled before it acts); it stops with
//! [`crate::OrchError::LostLease`] (`ferry migrate` exits 4). Router
//! changes carry epochs as always, so even a change it was sending when it
//! was paused is refused by a router once the new runner moved on
//! (docs/control-plane.md, "The orchestrator's lease").

use std::sync::Arc;

use ferry_journal::lease::RunLease;
use ferry_store::{EtcdAuth, EtcdConfig, EtcdStore, EtcdTlsConfig};

use crate::config::EtcdSettings;
use crate::error::{OrchError, Result};

/// One run in etcd: where, and the lease when this process is its runner.
#[derive(Clone)]
pub struct EtcdRun {
    pub(crate) store: Arc<EtcdStore>,
    pub(crate) run: String,
    pub(crate) lease: Option<Arc<RunLease>>,
}

/// `<host> pid <pid>`: who a lock names.
pub fn default_holder() -> String {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    format!("{host} pid {}", std::process::id())
}

/// The etcd client's settings from `[store]` (or `--control etcd`'s
/// flags): endpoints, prefix, bound, and the user and TLS files when given.
pub fn etcd_config(s: &EtcdSettings) -> EtcdConfig {
    let mut cfg = EtcdConfig::new(s.endpoints.clone(), s.prefix.clone());
    cfg.request_timeout = s.request_timeout;
    cfg.auth = s.auth.as_ref().map(|a| EtcdAuth {
        user: a.user.clone(),
        password: a.password.expose().to_string(),
    });
    cfg.tls = s.tls.as_ref().map(|t| EtcdTlsConfig {
        ca: t.ca.clone(),
        identity: t.identity_pem(),
    });
    cfg
}

/// Connects with `s`; a refused password is named as such.
pub fn connect(s: &EtcdSettings) -> Result<Arc<EtcdStore>> {
    EtcdStore::connect(etcd_config(s))
        .map(Arc::new)
        .map_err(|e| OrchError::Journal {
            path: format!("etcd:{}/runs/{}", s.prefix, s.run).into(),
            message: refused_or_unreachable(s, &e),
        })
}

/// Why the connection failed, in words: a refused password or certificate is
/// not a cluster down, and retrying will not help.
fn refused_or_unreachable(s: &EtcdSettings, e: &ferry_store::StoreError) -> String {
    let text = e.to_string();
    match &s.auth {
        // etcd's own words for a wrong user or password.
        Some(a) if text.contains("authentication failed") => format!(
            "etcd refused user {:?}: a wrong password, or no such user ({text})",
            a.user
        ),
        _ => format!("cannot reach etcd: {text}"),
    }
}

impl EtcdRun {
    /// Connects and takes the run's lease for `holder` (default:
    /// [`default_holder`]); refused while another runner's lease lives.
    pub fn take(s: &EtcdSettings, holder: Option<&str>) -> Result<EtcdRun> {
        let store = connect(s)?;
        let holder = holder.map_or_else(default_holder, str::to_string);
        let lease = RunLease::acquire(store.clone(), &s.run, &holder, s.lease_ttl)?;
        Ok(EtcdRun {
            store,
            run: s.run.clone(),
            lease: Some(Arc::new(lease)),
        })
    }

    /// Connects to read the run only (`ferry migrate status`): no lease.
    pub fn read_only(s: &EtcdSettings) -> Result<EtcdRun> {
        Ok(EtcdRun {
            store: connect(s)?,
            run: s.run.clone(),
            lease: None,
        })
    }

    /// The run's lease, when this process holds it.
    pub fn lease(&self) -> Option<&Arc<RunLease>> {
        self.lease.as_ref()
    }

    /// The run id.
    pub fn run(&self) -> &str {
        &self.run
    }
}
