//! Filling the empty table at start: the store's records, then the
//! `sites_file`'s and the `[[site]]`s where they are newer, in bulk.

use std::collections::{HashMap, HashSet};

use ferry_config::Config;
use ferry_model::{Placement, SiteRecord};
use ferry_router::{HostTable, Loaded, NewSite, SiteChange};
use ferry_store::{Store, StoreError};

use super::{check_placements, site_changes, unknown_placement, Known};
use crate::ProxyError;

/// Sites written to the store per call while seeding: bounds the copies held
/// at a million sites.
const SEED_CHUNK: usize = 65_536;

/// Fills an empty table at start, in bulk (`HostTable::load`): first the
/// store's records as they are (the state the router had when it stopped;
/// nothing written back), then the `sites_file`'s, each taken where the store
/// lacks the site or holds an older epoch (a stored record with an epoch at
/// least the config's wins, as in a reload), then the `[[site]]`s the same
/// way, with their extras in any case. Every placement is checked before
/// anything is written: a stored record must name a pool or remote of the
/// config unless the config replaces it. Then the sites taken from the
/// config are written to the store, in chunks. No map or sorted copy of
/// every site is built.
pub(super) fn seed(
    table: &HostTable,
    config: &Config,
    store: &dyn Store,
) -> Result<(), ProxyError> {
    let seed_err = |e: ferry_router::RouterError| ProxyError::Seed(e.to_string());
    let stored = store.sites().map_err(ProxyError::Store)?;
    let from_config = site_changes(config);
    check_placements(config, from_config.iter().map(|c| &c.record))?;
    load_stored(table, &stored)?;
    drop(stored);
    // The file is checked whole (placements, hosts also in [[site]]); its
    // sites go into the table as the check's last step, which finds hosts
    // listed twice with the table's own index (no second one).
    let mut loaded = Ok(Loaded::default());
    let listed = match &config.router.sites_file {
        Some(path) => Some(ferry_config::read_sites_file_with(path, config, |list| {
            loaded = table.load(
                list.placements(),
                list.iter().map(|s| NewSite {
                    host: s.host,
                    placement: s.placement,
                    state: s.state,
                    epoch: s.epoch,
                }),
            );
            match &loaded {
                Ok(l) => l.repeated.clone(),
                Err(_) => Vec::new(),
            }
        })?),
        None => None,
    };
    let not_taken = loaded.map_err(seed_err)?.not_taken;
    // [[site]]s: the stored record stays where its epoch is at least the
    // config's (with the config's extras); otherwise the config's is newer.
    let (mut kept, mut newer) = (Vec::new(), Vec::new());
    for c in from_config {
        match table.record(&c.record.host) {
            Some(cur) if cur.epoch >= c.record.epoch => kept.push(SiteChange {
                record: cur,
                extras: c.extras,
            }),
            _ => newer.push(c),
        }
    }
    for chunk in chunks(kept) {
        table
            .apply(chunk, |_| Ok::<(), StoreError>(()))
            .map_err(|e| ProxyError::Seed(e.to_string()))?;
    }
    let replaced: HashSet<&str> = newer.iter().map(|c| c.record.host.as_str()).collect();
    let known = Known::of(config);
    if let Some(r) = table.find_placed(|p| !known.has(p), |host| !replaced.contains(host)) {
        return Err(unknown_placement(&r));
    }
    drop(replaced);
    // Only now is the store written: the config's newer [[site]]s, then the
    // listed sites taken (a failed write fails the start; what was written
    // before it is the config's, which the next start writes again).
    for chunk in chunks(newer) {
        table
            .apply(chunk, |recs| store.put_sites(recs))
            .map_err(|e| ProxyError::Seed(e.to_string()))?;
    }
    // A store that keeps nothing (no `store`) is not handed a copy of every
    // listed site to forget.
    if let Some(list) = listed.as_ref().filter(|_| store.keeps_writes()) {
        let mut skip = not_taken.into_iter().peekable();
        let mut batch = Vec::with_capacity(SEED_CHUNK.min(list.len()));
        for i in 0..list.len() {
            if skip.next_if_eq(&i).is_some() {
                continue;
            }
            batch.extend(list.record(i));
            if batch.len() == SEED_CHUNK {
                store.put_sites(&batch).map_err(ProxyError::Store)?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            store.put_sites(&batch).map_err(ProxyError::Store)?;
        }
    }
    // The file's text and its list (about 50 bytes a site) are freed here:
    // their pages go back now, not after the allocator's delay, so the
    // router holds only its table once it answers.
    drop(listed);
    crate::release_freed();
    Ok(())
}

/// The store's records into the empty table, as they are.
fn load_stored(table: &HostTable, stored: &[SiteRecord]) -> Result<(), ProxyError> {
    let mut placements: Vec<Placement> = Vec::new();
    let mut index: HashMap<&Placement, u16> = HashMap::new();
    let mut of_site = Vec::with_capacity(stored.len());
    for r in stored {
        let i = match index.get(&r.placement) {
            Some(&i) => i,
            None => {
                let i = u16::try_from(placements.len()).map_err(|_| {
                    ProxyError::Seed(ferry_router::RouterError::TooManyPlacements.to_string())
                })?;
                placements.push(r.placement.clone());
                index.insert(&r.placement, i);
                i
            }
        };
        of_site.push(i);
    }
    table
        .load(
            &placements,
            stored.iter().zip(&of_site).map(|(r, &placement)| NewSite {
                host: r.host.as_str(),
                placement,
                state: r.state,
                epoch: r.epoch,
            }),
        )
        .map_err(|e| ProxyError::Seed(e.to_string()))?;
    Ok(())
}

/// `changes` in batches of at most [`SEED_CHUNK`].
fn chunks(mut changes: Vec<SiteChange>) -> impl Iterator<Item = Vec<SiteChange>> {
    std::iter::from_fn(move || {
        if changes.is_empty() {
            return None;
        }
        let rest = changes.split_off(changes.len().min(SEED_CHUNK));
        Some(std::mem::replace(&mut changes, rest))
    })
}
