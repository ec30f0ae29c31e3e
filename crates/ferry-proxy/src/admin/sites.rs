//! `/v1/sites...`: read, change (one site or an atomic batch), query and
//! remove sites. Hosts and placements arrive as text and are checked here,
//! so a refusal names the site (`sites[3]: host "a b": ...`).

use std::collections::HashSet;

use ferry_admin_api::routes;
use ferry_admin_api::sites::{
    AbsentSite, Applied, Conflict, HostList, QueriedSite, QueryAnswer, Removed, Site, SiteBatch,
    SiteChange as Change, SitePage, SiteRecord as ListedSite, StaleSite, Stragglers,
};
use ferry_model::{Epoch, Hostname, Placement, SiteRecord, SiteState};
use ferry_router::{ApplyError, Outcome, SiteChange, SiteId};
use ferry_store::StoreError;
use http::StatusCode;

use super::{answer, error, ok, parse_host, read_body, Resp};
use crate::{Proxy, ProxyError};

/// The API's view of a site the table has.
fn site(proxy: &Proxy, rec: SiteRecord, id: SiteId) -> Site {
    let (held, in_flight) = proxy.shared.table.counters(id);
    let stragglers = match rec.state {
        SiteState::Frozen => proxy.shared.stragglers.cuts(id, rec.epoch).map(|c| {
            let [upload, long_poll, stream, upgrade] = c.cut;
            Stragglers {
                deadline_passed: c.deadline_passed,
                upload,
                long_poll,
                stream,
                upgrade,
                kept: c.kept,
            }
        }),
        _ => None,
    };
    Site {
        host: rec.host.to_string(),
        placement: rec.placement.to_string(),
        state: rec.state,
        epoch: rec.epoch.0,
        held: held.into(),
        in_flight: in_flight.into(),
        stragglers,
    }
}

/// The site named exactly `host`, with its current counts.
fn lookup(proxy: &Proxy, host: Hostname) -> Option<Site> {
    let route = proxy.shared.table.get(&host)?;
    let rec = SiteRecord {
        host,
        placement: (*route.placement).clone(),
        state: route.state,
        epoch: route.epoch,
    };
    Some(site(proxy, rec, route.site))
}

pub(super) fn get(proxy: &Proxy, raw: &str) -> Resp {
    let host = match parse_host(raw) {
        Ok(h) => h,
        Err(r) => return r,
    };
    match lookup(proxy, host.clone()) {
        Some(s) => ok(&s),
        None => error(StatusCode::NOT_FOUND, format!("no site {host}")),
    }
}

pub(super) fn list(proxy: &Proxy, query: &str) -> Resp {
    let mut limit = 1000usize;
    let mut offset = 0usize;
    let mut prefix = String::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "limit" => match v.parse() {
                Ok(n) => limit = n,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("limit={v:?} is not a number"),
                    )
                }
            },
            "offset" => match v.parse() {
                Ok(n) => offset = n,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("offset={v:?} is not a number"),
                    )
                }
            },
            "prefix" => prefix = routes::decode(v),
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {other:?}"),
                )
            }
        }
    }
    let mut recs = proxy.shared.table.records();
    recs.retain(|r| r.host.as_str().starts_with(&prefix));
    recs.sort_by(|a, b| a.host.cmp(&b.host));
    let total = recs.len() as u64;
    let sites = recs
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|r| ListedSite {
            host: r.host.to_string(),
            placement: r.placement.to_string(),
            state: r.state,
            epoch: r.epoch.0,
        })
        .collect();
    ok(&SitePage { total, sites })
}

fn to_record(proxy: &Proxy, host: Hostname, c: Change) -> Result<SiteRecord, String> {
    let placement = Placement::parse(&c.placement).ok_or_else(|| {
        format!(
            "site {host}: placement {:?} is not \"pool:NAME\" or \"remote:NAME\"",
            c.placement
        )
    })?;
    if !proxy.shared.check_placement(&placement) {
        return Err(format!(
            "site {host}: placement {placement} names no configured pool or remote"
        ));
    }
    Ok(SiteRecord {
        host,
        placement,
        state: c.state,
        epoch: Epoch(c.epoch),
    })
}

/// Applies `records` as one batch (the epoch rule, the store first, held
/// requests woken: `Shared::apply_sites`); a site it freezes gets its drain
/// deadline (`straggler.rs`), one it unfreezes loses it.
fn apply(proxy: &Proxy, records: Vec<SiteRecord>) -> Resp {
    let hosts: Vec<Hostname> = records.iter().map(|r| r.host.clone()).collect();
    let changes = records
        .into_iter()
        .map(|record| SiteChange {
            record,
            extras: None,
        })
        .collect();
    match proxy.shared.apply_sites(changes) {
        Ok(outcomes) => {
            crate::control::await_applied(&proxy.shared);
            drains(proxy, &hosts);
            let count = |k: Outcome| outcomes.iter().filter(|(_, o)| *o == k).count() as u64;
            ok(&Applied {
                added: count(Outcome::Added),
                changed: count(Outcome::Changed),
                unchanged: count(Outcome::Unchanged),
            })
        }
        Err(ApplyError::Stale(list)) => answer(
            StatusCode::CONFLICT,
            &Conflict {
                error: format!(
                    "stale epoch for {} site(s); nothing was changed",
                    list.len()
                ),
                stale: list
                    .iter()
                    .take(100)
                    .map(|(h, cur, given)| StaleSite {
                        host: h.to_string(),
                        current_epoch: cur.0,
                        given_epoch: given.0,
                    })
                    .collect(),
            },
        ),
        Err(ApplyError::Invalid(e)) => error(StatusCode::BAD_REQUEST, e),
        // etcd judged the batch against a newer record this router has not
        // applied yet (another writer's): nothing was written.
        Err(ApplyError::Persist(e @ StoreError::Stale { .. })) => {
            error(StatusCode::CONFLICT, ProxyError::Store(e))
        }
        Err(ApplyError::Persist(e)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, ProxyError::Store(e))
        }
    }
}

/// Arms the drain deadline of the sites of `hosts` now frozen (a replay of
/// the same freeze keeps the first deadline) and ends it for the others.
fn drains(proxy: &Proxy, hosts: &[Hostname]) {
    let shared = &proxy.shared;
    let after = shared.settings.load().drain_timeout;
    shared.stragglers.note(&shared.table, hosts, after);
}

pub(super) fn put_one(proxy: &Proxy, raw: &str, body: &[u8]) -> Resp {
    let host = match parse_host(raw) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let c: Change = match read_body(body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Some(h) = &c.host {
        if Hostname::parse(h).ok().as_ref() != Some(&host) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body names host {h:?} but the path names {host}"),
            );
        }
    }
    match to_record(proxy, host, c) {
        Ok(rec) => apply(proxy, vec![rec]),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// A batch of at least this many sites gives the pages of its parsed copy
/// back once applied ([`crate::release_freed`]): a start through the API
/// sends a million sites in batches of 100,000, and a change of a few sites
/// does not pay for it.
const RELEASE_AFTER_SITES: usize = 1000;

/// When the request's body (the batch's JSON, a few megabytes, freed once
/// the answer is made) is given back too.
const RELEASE_BODY_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// Gives a big batch's freed pages back: its parsed copy now, and its body
/// (held by the caller until the answer is made) a moment later. Without
/// the second, the last batch of a start through the API stayed resident
/// (6 MiB at a million sites).
fn release_batch() {
    crate::release_freed();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async {
            tokio::time::sleep(RELEASE_BODY_AFTER).await;
            crate::release_freed();
        });
    }
}

pub(super) fn put_batch(proxy: &Proxy, body: &[u8]) -> Resp {
    let b: SiteBatch = match read_body(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let count = b.sites.len();
    let mut records = Vec::with_capacity(b.sites.len());
    for (i, s) in b.sites.into_iter().enumerate() {
        let Some(raw) = s.host.clone() else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("sites[{i}]: missing \"host\""),
            );
        };
        let host = match Hostname::parse(&raw) {
            Ok(h) => h,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("sites[{i}]: host {raw:?}: {e}"),
                )
            }
        };
        match to_record(proxy, host, s) {
            Ok(r) => records.push(r),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("sites[{i}]: {e}")),
        }
    }
    let applied = apply(proxy, records);
    if count >= RELEASE_AFTER_SITES {
        release_batch();
    }
    applied
}

/// The hosts of a [`HostList`], normalised, each once, in the order given.
fn parse_hosts(body: &[u8]) -> Result<Vec<Hostname>, Resp> {
    let b: HostList = read_body(body)?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(b.hosts.len());
    for (i, raw) in b.hosts.iter().enumerate() {
        let h = Hostname::parse(raw)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("hosts[{i}]: {raw:?}: {e}")))?;
        if seen.insert(h.clone()) {
            out.push(h);
        }
    }
    Ok(out)
}

pub(super) fn query(proxy: &Proxy, body: &[u8]) -> Resp {
    let hosts = match parse_hosts(body) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let sites = hosts
        .into_iter()
        .map(|h| {
            let host = h.to_string();
            match lookup(proxy, h) {
                Some(s) => QueriedSite::Present(s),
                None => QueriedSite::Absent(AbsentSite { host, absent: true }),
            }
        })
        .collect();
    ok(&QueryAnswer { sites })
}

fn remove(proxy: &Proxy, hosts: Vec<Hostname>) -> Result<u64, Resp> {
    let shared = &proxy.shared;
    // Held like an apply's, so a reload never judges a stale snapshot.
    let config = shared.config.lock();
    match shared.remove_sites_locked(&hosts, |h| shared.store.remove_sites(h)) {
        Ok(out) => {
            // The watch applies under the config lock: wait without it.
            drop(config);
            crate::control::await_applied(shared);
            Ok(out.iter().filter(|(_, o)| *o == Outcome::Removed).count() as u64)
        }
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

pub(super) fn remove_batch(proxy: &Proxy, body: &[u8]) -> Resp {
    match parse_hosts(body).and_then(|h| remove(proxy, h)) {
        Ok(removed) => ok(&Removed { removed }),
        Err(r) => r,
    }
}

pub(super) fn delete_one(proxy: &Proxy, raw: &str) -> Resp {
    let host = match parse_host(raw) {
        Ok(h) => h,
        Err(r) => return r,
    };
    match remove(proxy, vec![host.clone()]) {
        Ok(0) => error(StatusCode::NOT_FOUND, format!("no site {host}")),
        Ok(removed) => ok(&Removed { removed }),
        Err(r) => r,
    }
}
