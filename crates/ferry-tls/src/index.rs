//! The certificate index: which certificate answers which name. Pure data:
//! the store fills it from files and the admin API, and keeps the keys.
//!
//! A certificate lives in a slot (a `u32` id reused after removal, so the key
//! cache is keyed by a small integer). Each slot has a generation that moves on
//! every replacement, so a key parsed from an older version is never served.
//! When two certificates claim the same name, the one added last has it;
//! removing it hands the name back to another certificate that claims it.

use hashbrown::HashMap;

use crate::names::{normalize_sni, parent_domain, HostKey};

pub(crate) type SlotId = u32;

#[derive(Debug)]
pub(crate) struct Slot {
    pub name: Box<str>,
    pub hosts: Box<[HostKey]>,
    pub generation: u64,
    /// The key is in `NAME.key` rather than in `NAME.pem`.
    pub separate_key: bool,
    /// The leaf's notAfter (Unix seconds); 0 when it could not be read.
    pub not_after: u64,
}

/// Certificates by how soon they expire (for `/metrics` and its alert).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expiry {
    /// The earliest notAfter of all certificates (Unix seconds).
    pub earliest: Option<u64>,
    /// Certificates already expired.
    pub expired: usize,
    /// Certificates valid now that expire within the window asked for.
    pub expiring: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    slots: Vec<Option<Slot>>,
    free: Vec<SlotId>,
    by_name: HashMap<Box<str>, SlotId>,
    exact: HashMap<Box<str>, SlotId>,
    wildcard: HashMap<Box<str>, SlotId>,
    default: Option<Box<str>>,
    /// Source of generations: unique across the index's life, so a reused
    /// slot never repeats one.
    next_generation: u64,
    /// Bytes of every name string held (slots and map keys) and of the slots'
    /// host lists, kept up to date so the memory gauge costs nothing at
    /// 3 million certificates.
    string_bytes: usize,
}

fn host_len(h: &HostKey) -> usize {
    match h {
        HostKey::Exact(n) | HostKey::Wildcard(n) => n.len(),
    }
}

/// Heap bytes of one entry of a slot's host list.
fn listed_host_len(h: &HostKey) -> usize {
    host_len(h) + std::mem::size_of::<HostKey>()
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub id: SlotId,
    pub generation: u64,
}

impl Index {
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn set_default(&mut self, name: Option<&str>) {
        self.default = name.map(Into::into);
    }

    pub fn default_name(&self) -> Option<&str> {
        self.default.as_deref()
    }

    pub fn slot(&self, id: SlotId) -> Option<&Slot> {
        self.slots.get(id as usize).and_then(Option::as_ref)
    }

    pub fn by_name(&self, name: &str) -> Option<(SlotId, &Slot)> {
        let id = *self.by_name.get(name)?;
        self.slot(id).map(|s| (id, s))
    }

    pub fn slots(&self) -> impl Iterator<Item = (SlotId, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i as SlotId, s)))
    }

    /// Adds `name`, or replaces it (same slot, new generation, new names).
    pub fn insert(&mut self, name: &str, hosts: Vec<HostKey>, separate_key: bool) -> Found {
        self.next_generation += 1;
        let generation = self.next_generation;
        let id = match self.by_name.get(name) {
            Some(&id) => {
                self.unclaim(id);
                self.forget_slot_strings(id);
                id
            }
            None => {
                let id = match self.free.pop() {
                    Some(id) => id,
                    None => {
                        self.slots.push(None);
                        (self.slots.len() - 1) as SlotId
                    }
                };
                self.by_name.insert(name.into(), id);
                self.string_bytes += name.len();
                id
            }
        };
        self.string_bytes += name.len() + hosts.iter().map(listed_host_len).sum::<usize>();
        for h in &hosts {
            self.claim(h, id);
        }
        self.slots[id as usize] = Some(Slot {
            name: name.into(),
            hosts: hosts.into_boxed_slice(),
            generation,
            separate_key,
            not_after: 0,
        });
        Found { id, generation }
    }

    /// Records the notAfter of the certificate in slot `id`.
    pub fn set_not_after(&mut self, id: SlotId, not_after: Option<u64>) {
        if let Some(Some(slot)) = self.slots.get_mut(id as usize) {
            slot.not_after = not_after.unwrap_or(0);
        }
    }

    /// How the certificates stand at `now` with a window of `within` seconds.
    /// One pass over the slots: a few milliseconds at 3 million, once a scrape.
    pub fn expiry(&self, now: u64, within: u64) -> Expiry {
        let mut e = Expiry::default();
        for (_, slot) in self.slots() {
            let t = slot.not_after;
            if t == 0 {
                continue;
            }
            e.earliest = Some(e.earliest.map_or(t, |x| x.min(t)));
            if t <= now {
                e.expired += 1;
            } else if t <= now + within {
                e.expiring += 1;
            }
        }
        e
    }

    /// Removes `name`; the names it answered go to another certificate that
    /// claims them, if any.
    pub fn remove(&mut self, name: &str) -> Option<SlotId> {
        let id = self.by_name.remove(name)?;
        self.string_bytes -= name.len();
        let freed = self.unclaim(id);
        self.forget_slot_strings(id);
        self.slots[id as usize] = None;
        self.free.push(id);
        if !freed.is_empty() {
            // One pass over every slot: a removal is an admin action, rare
            // next to lookups, so the index keeps no per-name claimant lists.
            let mut reclaim = Vec::new();
            for (other, slot) in self.slots() {
                for h in slot.hosts.iter() {
                    if freed.contains(h) {
                        reclaim.push((h.clone(), other));
                    }
                }
            }
            for (h, other) in reclaim {
                self.claim(&h, other);
            }
        }
        Some(id)
    }

    fn claim(&mut self, h: &HostKey, id: SlotId) {
        let replaced = match h {
            HostKey::Exact(n) => self.exact.insert(n.clone(), id),
            HostKey::Wildcard(d) => self.wildcard.insert(d.clone(), id),
        };
        if replaced.is_none() {
            self.string_bytes += host_len(h);
        }
    }

    /// Takes the strings of slot `id` (its name and hosts) off the count.
    fn forget_slot_strings(&mut self, id: SlotId) {
        if let Some(s) = self.slot(id) {
            let n = s.name.len() + s.hosts.iter().map(listed_host_len).sum::<usize>();
            self.string_bytes -= n;
        }
    }

    /// Takes back the names `id` holds; returns them.
    fn unclaim(&mut self, id: SlotId) -> Vec<HostKey> {
        let Some(slot) = self.slot(id) else {
            return Vec::new();
        };
        let hosts = slot.hosts.to_vec();
        let mut freed = Vec::new();
        for h in hosts {
            let map = match &h {
                HostKey::Exact(_) => &mut self.exact,
                HostKey::Wildcard(_) => &mut self.wildcard,
            };
            let key = match &h {
                HostKey::Exact(n) | HostKey::Wildcard(n) => n,
            };
            if map.get(key) == Some(&id) {
                map.remove(key);
                self.string_bytes -= host_len(&h);
                freed.push(h);
            }
        }
        freed
    }

    /// The certificate for an SNI name: exact name, then a wildcard for its
    /// parent domain, then the default. No SNI (a client that dialled an IP
    /// address) gets the default.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Found> {
        let found = sni.and_then(|sni| {
            let sni = normalize_sni(sni);
            self.exact
                .get(sni.as_ref())
                .copied()
                .or_else(|| parent_domain(&sni).and_then(|d| self.wildcard.get(d).copied()))
        });
        let id = match found {
            Some(id) => id,
            None => *self.by_name.get(self.default.as_deref()?)?,
        };
        self.slot(id).map(|s| Found {
            id,
            generation: s.generation,
        })
    }

    /// Approximate heap bytes (names, maps, slots), for the memory report.
    /// Constant time: it is read at every metrics scrape.
    pub fn heap_bytes(&self) -> usize {
        let map_entry = std::mem::size_of::<(Box<str>, SlotId)>() + 1;
        self.string_bytes
            + self.slots.capacity() * std::mem::size_of::<Option<Slot>>()
            + (self.by_name.capacity() + self.exact.capacity() + self.wildcard.capacity())
                * map_entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(h: &str) -> HostKey {
        HostKey::from_san(h).unwrap()
    }

    fn name_of(ix: &Index, sni: Option<&str>) -> Option<String> {
        ix.lookup(sni)
            .map(|f| ix.slot(f.id).unwrap().name.to_string())
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let mut ix = Index::default();
        ix.insert("fallback", vec![ex("fallback.test")], false);
        ix.insert("star", vec![ex("*.example.com")], false);
        ix.insert("www", vec![ex("www.example.com")], false);
        ix.set_default(Some("fallback"));
        assert_eq!(
            name_of(&ix, Some("www.example.com")).as_deref(),
            Some("www")
        );
        assert_eq!(
            name_of(&ix, Some("WWW.example.com.")).as_deref(),
            Some("www")
        );
        assert_eq!(
            name_of(&ix, Some("shop.example.com")).as_deref(),
            Some("star")
        );
        // One label only: a.b.example.com is not covered by *.example.com.
        assert_eq!(
            name_of(&ix, Some("a.b.example.com")).as_deref(),
            Some("fallback")
        );
        assert_eq!(
            name_of(&ix, Some("example.com")).as_deref(),
            Some("fallback")
        );
        assert_eq!(name_of(&ix, None).as_deref(), Some("fallback"));
        ix.set_default(None);
        assert_eq!(name_of(&ix, Some("other.test")), None);
    }

    #[test]
    fn replace_moves_names_and_generation() {
        let mut ix = Index::default();
        let a = ix.insert("a", vec![ex("a.test"), ex("old.test")], false);
        let b = ix.insert("a", vec![ex("a.test"), ex("new.test")], true);
        assert_eq!(a.id, b.id);
        assert!(b.generation > a.generation);
        assert_eq!(ix.lookup(Some("a.test")), Some(b));
        assert_eq!(ix.lookup(Some("old.test")), None);
        assert_eq!(ix.lookup(Some("new.test")), Some(b));
        assert!(ix.slot(b.id).unwrap().separate_key);
        assert_eq!(ix.len(), 1);
    }

    /// The running byte count equals a full recount after any sequence.
    #[test]
    fn byte_count_stays_exact() {
        fn recount(ix: &Index) -> usize {
            let slots: usize = ix
                .slots()
                .map(|(_, s)| s.name.len() + s.hosts.iter().map(listed_host_len).sum::<usize>())
                .sum();
            let keys: usize = ix.by_name.keys().map(|k| k.len()).sum::<usize>()
                + ix.exact.keys().map(|k| k.len()).sum::<usize>()
                + ix.wildcard.keys().map(|k| k.len()).sum::<usize>();
            slots + keys
        }
        let mut ix = Index::default();
        ix.insert("a", vec![ex("a.test"), ex("*.a.test")], false);
        ix.insert("b", vec![ex("a.test"), ex("b.test")], false);
        assert_eq!(ix.string_bytes, recount(&ix));
        ix.insert("a", vec![ex("c.test")], false);
        assert_eq!(ix.string_bytes, recount(&ix));
        ix.remove("b");
        assert_eq!(ix.string_bytes, recount(&ix));
        ix.remove("a");
        assert_eq!(ix.string_bytes, 0);
    }

    #[test]
    fn removal_hands_names_back() {
        let mut ix = Index::default();
        ix.insert("first", vec![ex("shared.test"), ex("one.test")], false);
        ix.insert("second", vec![ex("shared.test")], false);
        assert_eq!(name_of(&ix, Some("shared.test")).as_deref(), Some("second"));
        assert!(ix.remove("second").is_some());
        assert_eq!(name_of(&ix, Some("shared.test")).as_deref(), Some("first"));
        assert!(ix.remove("second").is_none());
        ix.remove("first");
        assert_eq!(ix.lookup(Some("shared.test")), None);
        assert_eq!(ix.len(), 0);
        // Slots are reused, generations are not.
        let again = ix.insert("third", vec![ex("three.test")], false);
        assert!(again.id <= 1);
        assert!(again.generation > 2);
    }
}
