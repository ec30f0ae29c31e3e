//! `migrate.toml` as serde reads it: every value still to be checked keeps
//! its span; unknown keys are refused.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub(super) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) source: S<String>,
    pub(super) destination: S<String>,
    #[serde(default)]
    pub(super) datacenters: BTreeMap<String, S<RawDc>>,
    #[serde(default)]
    pub(super) routers: Vec<S<RawRouter>>,
    #[serde(default)]
    pub(super) filers: BTreeMap<String, S<RawFiler>>,
    #[serde(default)]
    pub(super) db_servers: BTreeMap<String, S<RawDbServer>>,
    pub(super) db: Option<RawDb>,
    pub(super) copy: Option<RawCopy>,
    pub(super) freeze: Option<RawFreeze>,
    pub(super) window: Option<RawWindow>,
    pub(super) check: Option<RawCheck>,
    pub(super) tracking: Option<RawTracking>,
    pub(super) store: Option<RawStore>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDc {
    pub(super) pool: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouter {
    pub(super) name: S<String>,
    pub(super) datacenter: S<String>,
    pub(super) admin: S<String>,
    pub(super) traffic: Option<S<String>>,
    pub(super) token: Option<S<String>>,
    pub(super) token_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFiler {
    pub(super) source: S<String>,
    pub(super) destination: S<String>,
    pub(super) key: Option<S<String>>,
    pub(super) key_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDbServer {
    pub(super) source: Option<S<String>>,
    pub(super) source_file: Option<S<String>>,
    pub(super) destination: Option<S<String>>,
    pub(super) destination_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDb {
    pub(super) verify: Option<bool>,
    pub(super) dest_binlog: Option<bool>,
    pub(super) max_lag: Option<S<i64>>,
    pub(super) workers: Option<S<i64>>,
    pub(super) catch_up_timeout: Option<S<String>>,
    pub(super) wait_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCopy {
    pub(super) mode: Option<S<String>>,
    pub(super) max_passes: Option<S<i64>>,
    pub(super) checksum: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFreeze {
    pub(super) max_freeze: Option<S<String>>,
    pub(super) drain_timeout: Option<S<String>>,
    pub(super) retry_after: Option<S<String>>,
    pub(super) max_attempts: Option<S<i64>>,
    pub(super) unfreeze_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    pub(super) start: S<String>,
    pub(super) end: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub(super) via: Option<S<String>>,
    pub(super) path: Option<S<String>>,
    pub(super) timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTracking {
    pub(super) listen: Option<S<String>>,
}

/// `[store]`: where the journal is kept (and the run's lease, with etcd).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) backend: S<String>,
    pub(super) endpoints: Option<S<Vec<S<String>>>>,
    pub(super) prefix: Option<S<String>>,
    /// etcd authentication, as in a router's `[store]`.
    pub(super) user: Option<S<String>>,
    pub(super) password_file: Option<S<String>>,
    /// TLS to the members, as in a router's `[store]`.
    pub(super) ca_file: Option<S<String>>,
    pub(super) cert_file: Option<S<String>>,
    pub(super) key_file: Option<S<String>>,
    pub(super) run: Option<S<String>>,
    pub(super) lease_ttl: Option<S<String>>,
    pub(super) request_timeout: Option<S<String>>,
    pub(super) shared_records: Option<S<bool>>,
}
