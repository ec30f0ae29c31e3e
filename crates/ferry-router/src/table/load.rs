//! Filling the table in bulk ([`HostTable::load`]), as a start does: into an
//! empty table, the names are hashed once and put in the index in the order
//! of its buckets; into a table that holds sites, one index probe a site.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ferry_model::{Hostname, Placement};

use super::{pack, unpack, HostTable, Inner, Loaded, NewSite, PlacementId, Slot, MAX_EPOCH};
use crate::names::{bucket_of, hash32, KeyOf};
use crate::RouterError;

/// An empty table's index is filled window by window: the sites are first
/// grouped by the window of buckets their probe starts in (at most 2^11
/// windows, in memory order), so the inserts of one window touch a few
/// kilobytes of the index instead of missing the cache once or twice each.
const WINDOW_BITS: u32 = 11;

impl HostTable {
    /// Fills the table with many sites at once, without the per-batch
    /// bookkeeping of [`HostTable::apply`] (made for a start: a million sites
    /// in tens of milliseconds). A site whose host the table already holds
    /// replaces it only with a greater epoch; otherwise the table's record
    /// stays and the site's position in `sites` is in [`Loaded::not_taken`].
    /// A host given twice in `sites` is refused: its positions are in
    /// [`Loaded::repeated`] and then nothing changed. Extras are untouched.
    ///
    /// Every site is checked (epochs, names, placements, room): on error the
    /// table is as it was. Readers wait while the sites go in (the write
    /// lock is held throughout). Into an empty table, each name is hashed
    /// once, as it is copied in, and the index is filled in bucket order.
    ///
    /// # Panics
    ///
    /// If a site's placement index is not below `placements.len()`.
    pub fn load<'a, I>(&self, placements: &[Placement], sites: I) -> Result<Loaded, RouterError>
    where
        I: IntoIterator<Item = NewSite<'a>>,
        I::IntoIter: Clone,
    {
        let sites = sites.into_iter();
        let _w = self.writer.lock();
        let mut inner = self.inner.write();
        let new_placements = placements
            .iter()
            .filter(|p| !inner.placement_ids.contains_key(*p))
            .count();
        if inner.placements.len() + new_placements > usize::from(u16::MAX) {
            return Err(RouterError::TooManyPlacements);
        }
        if inner.exact.len() == 0 && inner.wildcard.len() == 0 {
            inner.load_fresh(placements, sites)
        } else {
            inner.load_merge(placements, sites)
        }
    }
}

impl Inner {
    /// [`HostTable::load`] into a table without sites: one walk of `sites`
    /// checks each, appends its name and slot (ids in order) and hashes its
    /// key; then the keys go into the index grouped by bucket window. A host
    /// given twice is met in the index (a key's copies share a window and
    /// keep their order in it, so the first is met first).
    fn load_fresh<'a>(
        &mut self,
        placements: &[Placement],
        sites: impl Iterator<Item = NewSite<'a>> + Clone,
    ) -> Result<Loaded, RouterError> {
        let (count, _) = sites.size_hint();
        let (base, base_bytes, base_placements) =
            (self.slots.len(), self.name_bytes, self.placements.len());
        let ids: Vec<PlacementId> = placements.iter().map(|p| self.intern(p)).collect();
        self.slots.reserve(count);
        // Names are ~20 bytes; what is not used is given back below.
        self.names.reserve(count, count * 24);
        let mut hashes: Vec<u32> = Vec::with_capacity(count);
        // Positions of the wildcard sites (their keys go to the other index).
        let mut wild: Vec<u32> = Vec::new();
        let mut failed = None;
        for (i, site) in sites.enumerate() {
            let Some(&placement) = ids.get(usize::from(site.placement)) else {
                panic!(
                    "placement index {} out of {}",
                    site.placement,
                    placements.len()
                );
            };
            let name = site.host;
            if site.epoch.0 > MAX_EPOCH {
                failed = Some(match Hostname::parse(name) {
                    Ok(host) => RouterError::EpochTooLarge {
                        host,
                        epoch: site.epoch,
                    },
                    Err(_) => RouterError::TableFull,
                });
                break;
            }
            let bytes = self.name_bytes + name.len() as u64;
            if name.is_empty()
                || name.len() > usize::from(u8::MAX)
                || bytes > u64::from(u32::MAX)
                || self.slots.len() >= u32::MAX as usize
            {
                failed = Some(RouterError::TableFull);
                break;
            }
            let key = match name.strip_prefix("*.") {
                Some(domain) => {
                    wild.push(i as u32);
                    domain
                }
                None => name,
            };
            hashes.push(hash32(&self.hasher, key));
            // Room was checked just above.
            let _ = self.names.push(name);
            self.name_bytes = bytes;
            self.slots.push(Slot {
                word: AtomicU64::new(pack(placement, site.state, site.epoch)),
                in_flight: AtomicU32::new(0),
                held: AtomicU32::new(0),
            });
        }
        if let Some(e) = failed {
            self.undo_fresh(base, base_bytes, base_placements);
            return Err(e);
        }
        let mut repeated = self.index_fresh(base as u32, &hashes, &wild);
        if repeated.is_empty() {
            self.names.shrink_to_fit();
            return Ok(Loaded::default());
        }
        self.undo_fresh(base, base_bytes, base_placements);
        repeated.sort_unstable();
        Ok(Loaded {
            not_taken: Vec::new(),
            repeated,
        })
    }

    /// Puts the sites appended from slot `base` on (`hashes[i]` is site
    /// `base + i`'s key hash; `wild` the wildcard ones, in order) into the
    /// empty indexes. Returns `(position, position of the first)` of the
    /// hosts met twice, in no particular order.
    fn index_fresh(&mut self, base: u32, hashes: &[u32], wild: &[u32]) -> Vec<(usize, usize)> {
        let Inner {
            names,
            exact,
            wildcard,
            ..
        } = self;
        exact.reserve(hashes.len() - wild.len());
        let buckets = exact.buckets();
        let bits = buckets.trailing_zeros();
        let shift = bits - bits.min(WINDOW_BITS);
        let window = |h: u32| bucket_of(h, buckets) >> shift;
        // Counting sort of the exact sites by window, stable: (hash, position).
        let mut starts = vec![0usize; (1 << bits.min(WINDOW_BITS)) + 1];
        let exact_ones = || {
            let mut w = wild.iter().copied().peekable();
            hashes
                .iter()
                .enumerate()
                .filter(move |&(i, _)| w.next_if_eq(&(i as u32)).is_none())
        };
        for (_, &h) in exact_ones() {
            starts[window(h) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut order = vec![0u64; hashes.len() - wild.len()];
        for (i, &h) in exact_ones() {
            let at = &mut starts[window(h)];
            order[*at] = (u64::from(h) << 32) | i as u64;
            *at += 1;
        }
        let mut repeated = Vec::new();
        for e in order {
            let (h, i) = ((e >> 32) as u32, e as u32);
            if let Ok(first) = exact.get_or_insert_hashed(h, base + i, names, KeyOf::Whole) {
                repeated.push((i as usize, (first - base) as usize));
            }
        }
        for &i in wild {
            let h = hashes[i as usize];
            let key_of = KeyOf::WildcardDomain;
            if let Ok(first) = wildcard.get_or_insert_hashed(h, base + i, names, key_of) {
                repeated.push((i as usize, (first - base) as usize));
            }
        }
        repeated
    }

    /// Takes back what a fresh load added from slot `base` on.
    fn undo_fresh(&mut self, base: usize, base_bytes: u64, base_placements: usize) {
        let base32 = base as u32;
        self.exact.forget_from(base32);
        self.wildcard.forget_from(base32);
        self.names.truncate(base32);
        self.slots.truncate(base);
        self.name_bytes = base_bytes;
        for p in self.placements.drain(base_placements..) {
            self.placement_ids.remove(&*p);
        }
    }

    /// [`HostTable::load`] into a table that holds sites: checked first, then
    /// one index probe a site.
    fn load_merge<'a>(
        &mut self,
        placements: &[Placement],
        sites: impl Iterator<Item = NewSite<'a>> + Clone,
    ) -> Result<Loaded, RouterError> {
        let (mut count, mut bytes) = (0usize, self.name_bytes);
        for site in sites.clone() {
            assert!(
                usize::from(site.placement) < placements.len(),
                "placement index {} out of {}",
                site.placement,
                placements.len()
            );
            if site.epoch.0 > MAX_EPOCH {
                return Err(match Hostname::parse(site.host) {
                    Ok(host) => RouterError::EpochTooLarge {
                        host,
                        epoch: site.epoch,
                    },
                    Err(_) => RouterError::TableFull,
                });
            }
            if site.host.is_empty() || site.host.len() > usize::from(u8::MAX) {
                return Err(RouterError::TableFull);
            }
            count += 1;
            bytes += site.host.len() as u64;
        }
        if bytes > u64::from(u32::MAX) || self.slots.len() + count > u32::MAX as usize {
            return Err(RouterError::TableFull);
        }
        // Nothing below can fail.
        let ids: Vec<PlacementId> = placements.iter().map(|p| self.intern(p)).collect();
        let (base, base_bytes) = (self.slots.len(), self.name_bytes);
        self.slots.reserve(count);
        let added_bytes = (bytes - self.name_bytes) as usize;
        self.names.reserve(count, added_bytes);
        self.exact.reserve(count);
        // Slots this load has met (a second meeting is a repeated host), one
        // bit each; and the words it replaced, to undo.
        let mut met = vec![0u64; (base + count).div_ceil(64)];
        let mut replaced: Vec<(u32, u64)> = Vec::new();
        let mut loaded = Loaded::default();
        for (i, site) in sites.clone().enumerate() {
            let word = pack(ids[usize::from(site.placement)], site.state, site.epoch);
            let (id, fresh) = self.load_one(site.host, word);
            let (cell, bit) = (id as usize / 64, 1u64 << (id % 64));
            if met[cell] & bit != 0 {
                loaded.repeated.push((i, 0));
                continue;
            }
            met[cell] |= bit;
            if fresh {
                continue;
            }
            let slot = &self.slots[id as usize].word;
            let old = slot.load(Ordering::Acquire);
            if unpack(old).is_none_or(|(_, _, epoch)| site.epoch > epoch) {
                slot.store(word, Ordering::Release);
                replaced.push((id, old));
            } else {
                loaded.not_taken.push(i);
            }
        }
        if loaded.repeated.is_empty() {
            return Ok(loaded);
        }
        // Undo, then find each repeated host's first position.
        for (id, old) in replaced {
            self.slots[id as usize].word.store(old, Ordering::Release);
        }
        let base32 = base as u32;
        self.exact.forget_from(base32);
        self.wildcard.forget_from(base32);
        self.names.truncate(base32);
        self.slots.truncate(base);
        self.name_bytes = base_bytes;
        // Each repeated host's first position (two more passes, on this
        // error path only).
        let mut at = loaded.repeated.iter().map(|&(i, _)| i).peekable();
        let mut hosts: Vec<&str> = Vec::with_capacity(loaded.repeated.len());
        for (i, s) in sites.clone().enumerate() {
            if at.next_if_eq(&i).is_some() {
                hosts.push(s.host);
            }
        }
        let mut first: hashbrown::HashMap<&str, usize> =
            hosts.iter().map(|h| (*h, usize::MAX)).collect();
        for (i, s) in sites.enumerate() {
            if let Some(f) = first.get_mut(s.host) {
                if *f == usize::MAX {
                    *f = i;
                }
            }
        }
        for ((_, f), h) in loaded.repeated.iter_mut().zip(&hosts) {
            *f = first.get(h).copied().unwrap_or(0);
        }
        loaded.not_taken.clear();
        Ok(loaded)
    }

    /// Adds `name` in a fresh slot with `word` (`(id, true)`), unless the
    /// table holds it: then its slot comes back (`(id, false)`) and nothing
    /// changes. Room was checked.
    fn load_one(&mut self, name: &str, word: u64) -> (u32, bool) {
        let Inner {
            hasher,
            names,
            exact,
            wildcard,
            slots,
            name_bytes,
            ..
        } = self;
        let new_id = slots.len() as u32;
        let found = match name.strip_prefix("*.") {
            Some(d) => wildcard.get_or_insert(d, new_id, hasher, names, KeyOf::WildcardDomain),
            None => exact.get_or_insert(name, new_id, hasher, names, KeyOf::Whole),
        };
        match found {
            Ok(id) => (id, false),
            Err(id) => {
                // Room (names of at most 255 bytes, u32 offsets) was checked.
                let _ = names.push(name);
                *name_bytes += name.len() as u64;
                slots.push(Slot {
                    word: AtomicU64::new(word),
                    in_flight: AtomicU32::new(0),
                    held: AtomicU32::new(0),
                });
                (id, true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ferry_model::{Epoch, Hostname, Placement, SiteState};

    use super::super::{HostTable, Loaded, NewSite, SiteId};
    use crate::RouterError;

    /// `n` sites `s{i}.example` (every 7th a wildcard `*.s{i}.example`) over
    /// two placements, epoch `i`: enough for the index's 2^11 windows.
    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| match i % 7 {
                3 => format!("*.s{i}.example"),
                _ => format!("s{i}.example"),
            })
            .collect()
    }

    fn load(t: &HostTable, hosts: &[String]) -> Result<Loaded, RouterError> {
        let placements = ["pool:a", "remote:dc2"].map(|p| Placement::parse(p).unwrap());
        t.load(
            &placements,
            hosts.iter().enumerate().map(|(i, host)| NewSite {
                host,
                placement: (i % 2) as u16,
                state: SiteState::Active,
                epoch: Epoch(i as u64),
            }),
        )
    }

    /// What a lookup of `host` gives: (slot, placement, epoch).
    fn seen(t: &HostTable, host: &str) -> Option<(u32, String, u64)> {
        t.lookup(host)
            .map(|r| (r.site.0, r.placement.to_string(), r.epoch.0))
    }

    #[test]
    fn a_load_into_an_empty_table_finds_every_site_in_its_slot() {
        let t = HostTable::new();
        let hosts = names(50_000);
        assert_eq!(load(&t, &hosts).unwrap(), Loaded::default());
        assert_eq!(t.len(), hosts.len());
        for (i, h) in hosts.iter().enumerate() {
            let asked = h.replace('*', "www");
            let placement = ["pool:a", "remote:dc2"][i % 2];
            assert_eq!(
                seen(&t, &asked),
                Some((i as u32, placement.to_string(), i as u64)),
                "{asked}"
            );
        }
        assert_eq!(seen(&t, "s1.example.org"), None);
        assert_eq!(t.records().len(), hosts.len());
        // Sites loaded in bulk take changes and removals like any other.
        let gone = Hostname::parse("s5.example").unwrap();
        t.remove(&[gone], |_| Ok::<(), ()>(())).unwrap();
        assert_eq!(seen(&t, "s5.example"), None);
        assert_eq!(
            t.get(&Hostname::parse("s6.example").unwrap()).unwrap().site,
            SiteId(6)
        );
    }

    #[test]
    fn a_repeated_host_in_an_empty_table_names_its_first_position_and_leaves_it_empty() {
        let t = HostTable::new();
        let mut hosts = names(40_000);
        // Copies far from their first (different windows of the index), a
        // host three times, a wildcard twice; and one spelled as its
        // wildcard's domain, which is another site.
        hosts[30_000] = hosts[17].clone();
        hosts[39_999] = hosts[17].clone();
        hosts[12_345] = hosts[2].clone();
        hosts[20_000] = hosts[3].clone();
        hosts[20_001] = "s3.example".into();
        let loaded = load(&t, &hosts).unwrap();
        assert_eq!(
            loaded.repeated,
            [(12_345, 2), (20_000, 3), (30_000, 17), (39_999, 17)]
        );
        assert!(loaded.not_taken.is_empty());
        assert_eq!(t.len(), 0);
        assert!(t.records().is_empty());
        assert_eq!(seen(&t, "s2.example"), None);
        // Nothing is left of it: the same load without the copies fills the
        // table from slot 0 on.
        let hosts = names(1000);
        assert_eq!(load(&t, &hosts).unwrap(), Loaded::default());
        assert_eq!(
            seen(&t, "s999.example"),
            Some((999, "remote:dc2".into(), 999))
        );
        assert_eq!(t.len(), 1000);
    }

    #[test]
    fn a_bad_site_in_an_empty_table_refuses_the_load_whole() {
        let t = HostTable::new();
        let mut hosts = names(100);
        hosts[60] = "a".repeat(256);
        assert_eq!(load(&t, &hosts).unwrap_err(), RouterError::TableFull);
        assert_eq!(t.len(), 0);
        let placements = [Placement::parse("pool:a").unwrap()];
        let sites =
            [("a.com", 1), ("b.com", crate::table::MAX_EPOCH + 1)].map(|(host, e)| NewSite {
                host,
                placement: 0,
                state: SiteState::Frozen,
                epoch: Epoch(e),
            });
        assert_eq!(
            t.load(&placements, sites).unwrap_err(),
            RouterError::EpochTooLarge {
                host: Hostname::parse("b.com").unwrap(),
                epoch: Epoch(crate::table::MAX_EPOCH + 1)
            }
        );
        assert_eq!((t.len(), t.records().len()), (0, 0));
    }
}
