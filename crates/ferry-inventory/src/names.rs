//! Interned names: every name of a kind lives back to back in one string arena and
//! a hash table holds only 4-byte ids (plus 4 bytes of hash), so 3 million
//! hostnames cost their own length plus ~20 bytes instead of a `String` and a
//! `HashMap` entry each.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

/// Strings appended one after another; `get(i)` returns the `i`-th.
#[derive(Debug, Default, Clone)]
pub struct Strings {
    arena: String,
    ends: Vec<u64>,
}

impl Strings {
    /// Appends `s` and returns its index.
    pub fn push(&mut self, s: &str) -> u32 {
        let id = self.ends.len() as u32;
        self.arena.push_str(s);
        self.ends.push(self.arena.len() as u64);
        id
    }

    /// The `i`-th string; panics if out of range like slice indexing does.
    pub fn get(&self, i: u32) -> &str {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.arena[start..self.ends[i] as usize]
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Every string in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.ends.len() as u32).map(move |i| self.get(i))
    }

    pub fn reserve(&mut self, additional: usize, avg_len: usize) {
        self.ends.reserve(additional);
        self.arena.reserve(additional * avg_len);
    }

    /// Bytes held (arena and offsets), for memory reports.
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.ends.capacity() * 8
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    id: u32,
    hash: u32,
}

/// Unique names with a lookup index.
#[derive(Debug, Default, Clone)]
pub struct Names {
    strings: Strings,
    index: HashTable<Entry>,
    hasher: DefaultHashBuilder,
}

// hashbrown takes the bucket from the low bits and the tag from the top 7 bits;
// spreading the 32 stored bits over both lets the table grow without re-reading
// (and cache-missing on) the names.
fn widen(h: u32) -> u64 {
    (u64::from(h) << 32) | u64::from(h)
}

impl Names {
    fn hash32(&self, key: &str) -> u32 {
        let h = self.hasher.hash_one(key);
        (h ^ (h >> 32)) as u32
    }

    /// The id of `key`, if present.
    pub fn find(&self, key: &str) -> Option<u32> {
        let h = self.hash32(key);
        self.index
            .find(widen(h), |e| e.hash == h && self.strings.get(e.id) == key)
            .map(|e| e.id)
    }

    /// Adds `key` and returns its new id, or `Err(existing id)` if it is there.
    /// One probe of the table either way.
    pub fn insert(&mut self, key: &str) -> Result<u32, u32> {
        let h = self.hash32(key);
        let strings = &self.strings;
        let entry = self.index.entry(
            widen(h),
            |e| e.hash == h && strings.get(e.id) == key,
            |e| widen(e.hash),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(o) => Err(o.get().id),
            hashbrown::hash_table::Entry::Vacant(v) => {
                let id = self.strings.ends.len() as u32;
                v.insert(Entry { id, hash: h });
                self.strings.push(key);
                Ok(id)
            }
        }
    }

    /// Pre-sizes for `additional` more names of about `avg_len` bytes.
    pub fn reserve_names(&mut self, additional: usize, avg_len: usize) {
        self.index.reserve(additional, |e| widen(e.hash));
        self.strings.ends.reserve(additional);
        self.strings.arena.reserve(additional * avg_len);
    }

    /// Adds `key` if absent; returns its id either way.
    pub fn intern(&mut self, key: &str) -> u32 {
        match self.insert(key) {
            Ok(id) | Err(id) => id,
        }
    }

    pub fn get(&self, id: u32) -> &str {
        self.strings.get(id)
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.strings.iter()
    }

    pub fn reserve(&mut self, additional: usize) {
        self.index.reserve(additional, |e| widen(e.hash));
    }

    /// Bytes held, for memory reports.
    pub fn heap_bytes(&self) -> usize {
        self.strings.heap_bytes() + self.index.capacity() * 9
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.strings.shrink_to_fit();
        self.index.shrink_to_fit(|e| widen(e.hash));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_and_duplicates() {
        let mut n = Names::default();
        assert_eq!(n.insert("a"), Ok(0));
        assert_eq!(n.insert("bb"), Ok(1));
        assert_eq!(n.insert("a"), Err(0));
        assert_eq!(n.find("bb"), Some(1));
        assert_eq!(n.find("c"), None);
        assert_eq!(n.get(1), "bb");
        assert_eq!(n.iter().collect::<Vec<_>>(), ["a", "bb"]);
        assert_eq!(n.intern("c"), 2);
        assert_eq!(n.intern("a"), 0);
    }

    #[test]
    fn empty_string_is_a_name() {
        let mut s = Strings::default();
        s.push("");
        s.push("x");
        assert_eq!(s.get(0), "");
        assert_eq!(s.get(1), "x");
    }
}
