//! A compact hostname index: every name lives in one byte arena, and a hash table
//! holds only 4-byte slot ids. At 3 million sites this costs about the name's own
//! length plus ~10 bytes, where a `HashMap<String, u32>` would cost ~60.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// Maps names to slot ids. The names themselves are stored in a [`NameArena`];
/// each entry keeps the slot id and 32 bits of the name's hash, so growing the
/// table never re-reads (and cache-misses on) the names, and a probe compares
/// names only when the stored hash matches.
#[derive(Default)]
pub(crate) struct NameIndex {
    table: HashTable<Entry>,
}

#[derive(Clone, Copy)]
struct Entry {
    id: u32,
    hash: u32,
}

/// The table's hash is the 32-bit name hash spread over 64 bits: hashbrown takes
/// the bucket from the low bits and its tag from the top 7 bits.
fn widen(h: u32) -> u64 {
    (u64::from(h) << 32) | u64::from(h)
}

/// The bucket, of `buckets` ([`NameIndex::buckets`]), at which the probe for
/// a key hashing to `h` starts: where in the table's memory it lands, by which
/// a bulk load can order its inserts.
pub(crate) fn bucket_of(h: u32, buckets: usize) -> usize {
    (widen(h) as usize) & (buckets - 1)
}

pub(crate) fn hash32(hasher: &impl BuildHasher, key: &str) -> u32 {
    let h = hasher.hash_one(key);
    (h ^ (h >> 32)) as u32
}

impl NameIndex {
    pub(crate) fn get(
        &self,
        key: &str,
        hasher: &impl BuildHasher,
        arena: &NameArena,
        key_of: KeyOf,
    ) -> Option<u32> {
        let h = hash32(hasher, key);
        self.table
            .find(widen(h), |e| {
                e.hash == h && key_of.key(arena.get(e.id)) == key
            })
            .map(|e| e.id)
    }

    /// Inserts `id` under `key`; the caller has checked the key is absent.
    pub(crate) fn insert(&mut self, key: &str, id: u32, hasher: &impl BuildHasher) {
        let h = hash32(hasher, key);
        self.table
            .insert_unique(widen(h), Entry { id, hash: h }, |e| widen(e.hash));
    }

    /// The id stored under `key`, or `new_id` inserted under it (one probe
    /// either way): `Ok(id)` when the key was there, `Err(new_id)` when it was
    /// just added. The caller pushes `new_id`'s name into the arena next.
    pub(crate) fn get_or_insert(
        &mut self,
        key: &str,
        new_id: u32,
        hasher: &impl BuildHasher,
        arena: &NameArena,
        key_of: KeyOf,
    ) -> Result<u32, u32> {
        let h = hash32(hasher, key);
        match self.table.entry(
            widen(h),
            |e| e.hash == h && key_of.key(arena.get(e.id)) == key,
            |e| widen(e.hash),
        ) {
            hashbrown::hash_table::Entry::Occupied(e) => Ok(e.get().id),
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(Entry {
                    id: new_id,
                    hash: h,
                });
                Err(new_id)
            }
        }
    }

    /// [`NameIndex::get_or_insert`] for a name already in `arena` as slot
    /// `id`, whose key hashes to `h` ([`hash32`]): the id of an entry with
    /// the same key (`Ok`), or `id` inserted (`Err`). For a bulk load that
    /// hashed its names once and inserts them in bucket order.
    pub(crate) fn get_or_insert_hashed(
        &mut self,
        h: u32,
        id: u32,
        arena: &NameArena,
        key_of: KeyOf,
    ) -> Result<u32, u32> {
        // The names are read only when the whole hash matches: the entries
        // come in bucket order, their names in another.
        match self.table.entry(
            widen(h),
            |e| e.hash == h && key_of.key(arena.get(e.id)) == key_of.key(arena.get(id)),
            |e| widen(e.hash),
        ) {
            hashbrown::hash_table::Entry::Occupied(e) => Ok(e.get().id),
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(Entry { id, hash: h });
                Err(id)
            }
        }
    }

    /// The table's number of buckets (a power of two).
    pub(crate) fn buckets(&self) -> usize {
        // hashbrown keeps 7/8 of its buckets usable (all but one when small).
        match self.table.capacity() {
            0 => 1,
            c if c < 8 => (c + 1).next_power_of_two(),
            c => (c * 8 / 7).next_power_of_two(),
        }
    }

    /// Drops the entries whose id is `from` or above (undoing a load).
    pub(crate) fn forget_from(&mut self, from: u32) {
        self.table.retain(|e| e.id < from);
    }

    pub(crate) fn remove(
        &mut self,
        key: &str,
        hasher: &impl BuildHasher,
        arena: &NameArena,
        key_of: KeyOf,
    ) -> Option<u32> {
        let h = hash32(hasher, key);
        match self.table.find_entry(widen(h), |e| {
            e.hash == h && key_of.key(arena.get(e.id)) == key
        }) {
            Ok(entry) => Some(entry.remove().0.id),
            Err(_) => None,
        }
    }

    pub(crate) fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional, |e| widen(e.hash));
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        // hashbrown allocates buckets = capacity * 8 / 7 (rounded to a power of
        // two), each an 8-byte entry plus one control byte.
        let buckets = (self.table.capacity() * 8 / 7).next_power_of_two();
        buckets * (std::mem::size_of::<Entry>() + 1)
    }
}

/// Which part of a stored name is the index key: the whole name for exact sites,
/// the domain after `*.` for wildcard sites.
#[derive(Clone, Copy)]
pub(crate) enum KeyOf {
    Whole,
    WildcardDomain,
}

impl KeyOf {
    fn key(self, name: &str) -> &str {
        match self {
            KeyOf::Whole => name,
            KeyOf::WildcardDomain => name.strip_prefix("*.").unwrap_or(name),
        }
    }
}

/// Names of all slots, back to back. Slot `i`'s name is `bytes[start[i]..start[i+1]]`.
/// Removed slots keep their bytes until the slot is reused by a name that fits.
#[derive(Default)]
pub(crate) struct NameArena {
    bytes: String,
    /// Start offset and length of each slot's name.
    spans: Vec<(u32, u8)>,
}

impl NameArena {
    pub(crate) fn get(&self, id: u32) -> &str {
        let (start, len) = self.spans[id as usize];
        let start = start as usize;
        &self.bytes[start..start + len as usize]
    }

    /// Appends a name for a new slot; returns its id.
    pub(crate) fn push(&mut self, name: &str) -> Result<u32, ArenaFull> {
        let start = u32::try_from(self.bytes.len()).map_err(|_| ArenaFull)?;
        let id = u32::try_from(self.spans.len()).map_err(|_| ArenaFull)?;
        // Hostnames are at most 253 bytes, checked by ferry_model::Hostname.
        let len = u8::try_from(name.len()).map_err(|_| ArenaFull)?;
        self.bytes.push_str(name);
        self.spans.push((start, len));
        Ok(id)
    }

    /// Gives slot `id` a new name (slot reuse after a removal).
    pub(crate) fn rename(&mut self, id: u32, name: &str) -> Result<(), ArenaFull> {
        let (start, old_len) = self.spans[id as usize];
        let len = u8::try_from(name.len()).map_err(|_| ArenaFull)?;
        if len <= old_len {
            let start = start as usize;
            self.bytes.replace_range(start..start + name.len(), name);
            self.spans[id as usize] = (start as u32, len);
        } else {
            let start = u32::try_from(self.bytes.len()).map_err(|_| ArenaFull)?;
            self.bytes.push_str(name);
            self.spans[id as usize] = (start, len);
        }
        Ok(())
    }

    /// Drops the slots from `id` on and their names (undoing a load that
    /// appended them, the last names of the arena).
    pub(crate) fn truncate(&mut self, id: u32) {
        if let Some(&(start, _)) = self.spans.get(id as usize) {
            self.bytes.truncate(start as usize);
            self.spans.truncate(id as usize);
        }
    }

    pub(crate) fn reserve(&mut self, names: usize, bytes: usize) {
        self.spans.reserve(names);
        self.bytes.reserve(bytes);
    }

    /// Gives back the names' spare room (after a reserve that guessed).
    pub(crate) fn shrink_to_fit(&mut self) {
        self.bytes.shrink_to_fit();
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.spans.capacity() * std::mem::size_of::<(u32, u8)>()
    }
}

/// The arena passed 4 GiB of names or 4 billion slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArenaFull;
