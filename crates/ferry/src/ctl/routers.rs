//! `ferry ctl routers ...`: the routers of an etcd control plane (not one
//! router's admin API): who is registered, who was ever seen, who is retired
//! (docs/control-plane.md, "Who must acknowledge a freeze"). A freeze waits
//! for every registered router and every seen one that is not retired; an
//! operator retires a router removed from the fleet for good so that it no
//! longer blocks freezes.
//!
//! It logs in as `ferry migrate --control etcd` does: the same flags
//! (`--etcd-user`, `--etcd-password-file`, `--etcd-ca-file`,
//! `--etcd-cert-file`, `--etcd-key-file`: migrate's `AccessArgs`), checked by
//! the same code and connected by the same function
//! (`ferry_orch::lease::connect`); a password etcd refuses exits 3.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::anyhow;
use serde::Serialize;

use super::table::{Out, Table};
use crate::migrate::AccessArgs;
use crate::Failure;
use ferry_orch::config::EtcdSettings;

#[derive(clap::Args)]
#[command(mut_args(|a| match AccessArgs::IDS.contains(&a.get_id().as_str()) {
    true => a.global(true),
    false => a,
}))]
pub(super) struct RoutersArgs {
    /// The etcd members, comma-separated `http://HOST:PORT` (`https://` with
    /// --etcd-ca-file) (the routers' `[store] endpoints`).
    #[arg(
        long,
        env = "FERRY_ETCD_ENDPOINTS",
        value_delimiter = ',',
        global = true
    )]
    etcd_endpoints: Vec<String>,
    /// The key prefix in etcd (the routers' `[store] prefix`).
    #[arg(
        long,
        env = "FERRY_ETCD_PREFIX",
        default_value = "/ferry",
        global = true
    )]
    etcd_prefix: String,
    /// User and TLS files, as `ferry migrate --control etcd` takes them
    /// (boxed: rarely given).
    #[command(flatten)]
    access: Box<AccessArgs>,
    #[command(subcommand)]
    command: RoutersCmd,
}

#[derive(clap::Subcommand)]
enum RoutersCmd {
    /// Every router registered, seen or retired, with the revision it applied
    /// and its requests in flight on frozen sites.
    List,
    /// Retire a router removed from the fleet for good: freezes stop waiting
    /// for it. Refused while it is registered (it is running: stop it first)
    /// and for a name never seen. A retired router that registers again is
    /// no longer retired: it serves again, so freezes wait for it again.
    /// Never restart a retired router on its old local copy (delete the copy,
    /// or start it with etcd reachable).
    Retire {
        /// The router's name (its `[router] name`).
        name: String,
        /// Why, kept in the retirement record.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// One router as `list` prints it.
#[derive(Serialize)]
struct Row {
    name: String,
    registered: bool,
    seen: bool,
    retired: bool,
    /// The revision its table applied (registered routers).
    revision: Option<i64>,
    /// Requests in flight on frozen sites, by epoch (registered routers).
    frozen: BTreeMap<u64, u64>,
    /// Whether a freeze now would wait for it.
    blocks_freezes: bool,
    /// The retirement record (JSON), when retired.
    retirement: Option<serde_json::Value>,
    /// A registration that does not read.
    error: Option<String>,
}

pub(super) fn run(
    out: &Out,
    timeout: std::time::Duration,
    args: RoutersArgs,
) -> Result<(), Failure> {
    if args.etcd_endpoints.is_empty() {
        return Err(Failure::usage(anyhow!(
            "--etcd-endpoints (or FERRY_ETCD_ENDPOINTS) is needed: the etcd members the routers use"
        )));
    }
    let mut etcd = args
        .access
        .settings(&args.etcd_endpoints, &args.etcd_prefix)?;
    etcd.request_timeout = timeout;
    imp::run(out, &etcd, args.command)
}

/// The rows of `list` from what etcd holds (names sorted).
fn rows(
    registered: &[(String, String)],
    seen: &[(String, String)],
    retired: &[(String, String)],
) -> Vec<Row> {
    let reg: BTreeMap<&str, &str> = registered
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let seen: BTreeSet<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    let ret: BTreeMap<&str, &str> = retired
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let names: BTreeSet<&str> = reg.keys().chain(&seen).chain(ret.keys()).copied().collect();
    names
        .into_iter()
        .map(|name| {
            let parsed = reg
                .get(name)
                .map(|v| ferry_orch::acks::Registration::parse(v));
            let (revision, frozen, error) = match parsed {
                Some(Ok(r)) => (Some(r.revision), r.frozen, None),
                Some(Err(e)) => (None, BTreeMap::new(), Some(e)),
                None => (None, BTreeMap::new(), None),
            };
            let registered = reg.contains_key(name);
            let retired = ret.contains_key(name);
            Row {
                name: name.to_string(),
                registered,
                seen: seen.contains(name),
                retired,
                revision,
                frozen,
                blocks_freezes: registered || (seen.contains(name) && !retired),
                retirement: ret
                    .get(name)
                    .map(|v| serde_json::from_str(v).unwrap_or_else(|_| (*v).into())),
                error,
            }
        })
        .collect()
}

fn table(rows: &Vec<Row>) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "REVISION",
        "IN_FLIGHT",
        "FROZEN_EPOCHS",
        "FREEZES",
    ]);
    for r in rows {
        let state = match (r.registered, r.retired) {
            (true, true) => "registered (retired record left: back)",
            (true, false) => "registered",
            (false, true) => "retired",
            (false, false) => "gone (seen, lease expired)",
        };
        let in_flight: u64 = r.frozen.values().sum();
        let epochs = r
            .frozen
            .keys()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        t = t.row(vec![
            r.name.clone(),
            state.to_string(),
            r.revision.map_or_else(|| "-".into(), |v| v.to_string()),
            if r.registered {
                in_flight.to_string()
            } else {
                "-".into()
            },
            if epochs.is_empty() {
                "-".into()
            } else {
                epochs
            },
            if r.blocks_freezes {
                "awaited"
            } else {
                "not awaited"
            }
            .to_string(),
        ]);
    }
    t
}

#[cfg(feature = "etcd")]
mod imp {
    use super::*;
    use ferry_orch::OrchError;

    pub(super) fn run(out: &Out, s: &EtcdSettings, cmd: RoutersCmd) -> Result<(), Failure> {
        let prefix = &s.prefix;
        let at = format!("etcd {} prefix {prefix}", s.endpoints.join(","));
        // Connected as `ferry migrate` is; its words for why not (a
        // refused password: exit 3, as migrate; anything else: exit 1).
        let etcd = ferry_orch::lease::connect(s).map_err(|e| match e {
            OrchError::Journal { message, .. } if message.starts_with("etcd refused") => {
                Failure::refused(anyhow!("{at}: {message}"))
            }
            OrchError::Journal { message, .. } => Failure::from(anyhow!("{at}: {message}")),
            e => Failure::from(anyhow!("{at}: {e}")),
        })?;
        let fleet = etcd.fleet().map_err(|e| {
            anyhow!("cannot read {prefix}/routers/ and {prefix}/fleet/ in {at}: {e}")
        })?;
        match cmd {
            RoutersCmd::List => {
                let rows = rows(&fleet.registered, &fleet.seen, &fleet.retired);
                out.print(&rows, table);
            }
            RoutersCmd::Retire { name, reason } => {
                if name.is_empty() || name.chars().any(char::is_control) {
                    return Err(Failure::usage(anyhow!(
                        "router name {name:?}: empty or with control characters"
                    )));
                }
                if fleet.registered.iter().any(|(n, _)| *n == name) {
                    return Err(Failure::refused(anyhow!(
                        "router {name} is registered at {prefix}/routers/{name} in {at}: its lease is \
                         live, so it is running; stop it (and wait for its lease to expire) before \
                         retiring it"
                    )));
                }
                if let Some((_, v)) = fleet.retired.iter().find(|(n, _)| *n == name) {
                    eprintln!("router {name} is already retired ({v}); nothing changed");
                    return Ok(());
                }
                if !fleet.seen.iter().any(|(n, _)| *n == name) {
                    let known: Vec<&str> = fleet.seen.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(Failure::refused(anyhow!(
                        "no router {name} was ever seen under {prefix}/fleet/seen/ in {at} \
                         (seen: {}); nothing to retire",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
                let record = serde_json::json!({
                    "at_ms": ferry_orch::journal::now_ms(),
                    "by": ferry_orch::lease::default_holder(),
                    "reason": reason,
                    "revision": fleet.revision,
                });
                etcd.retire_router(&name, &record.to_string())
                    .map_err(|e| {
                        anyhow!("cannot write {prefix}/fleet/retired/{name} in {at}: {e}")
                    })?;
                out.print(&record, |_| {
                    Table::fields(vec![
                        ("retired", name.clone()),
                        ("key", format!("{prefix}/fleet/retired/{name}")),
                    ])
                });
            }
        }
        Ok(())
    }
}

#[cfg(not(feature = "etcd"))]
mod imp {
    use super::*;

    pub(super) fn run(_out: &Out, _s: &EtcdSettings, _cmd: RoutersCmd) -> Result<(), Failure> {
        let _ = (rows, table);
        Err(Failure::usage(anyhow!(
            "ferry ctl routers: this ferry was built without etcd support (cargo feature `etcd`)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(n: &str, v: &str) -> (String, String) {
        (n.to_string(), v.to_string())
    }

    #[test]
    fn a_seen_router_blocks_until_retired_and_a_registered_one_always() {
        let rows = rows(
            &[
                kv("a", r#"{"revision": 9, "frozen": {"4": 2}}"#),
                kv("back", r#"{"revision": 9}"#),
            ],
            &[
                kv("a", "{}"),
                kv("back", "{}"),
                kv("gone", "{}"),
                kv("old", "{}"),
            ],
            &[kv("back", "{}"), kv("old", r#"{"at_ms": 1}"#)],
        );
        let by: BTreeMap<&str, &Row> = rows.iter().map(|r| (r.name.as_str(), r)).collect();
        assert!(by["a"].blocks_freezes && by["a"].revision == Some(9));
        assert_eq!(by["a"].frozen.get(&4), Some(&2));
        assert!(by["back"].blocks_freezes, "registered again: awaited");
        assert!(by["gone"].blocks_freezes && !by["gone"].registered);
        assert!(!by["old"].blocks_freezes && by["old"].retired);
        let text = table(&rows).to_string();
        assert!(text.contains("gone (seen, lease expired)"), "{text}");
    }
}
