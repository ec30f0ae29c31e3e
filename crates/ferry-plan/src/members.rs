//! Who is in each unit, grouped for output: hostings, databases and filers per
//! unit, sites per hosting (compressed rows: one offsets vector, one items vector).

use ferry_inventory::{DatabaseId, FilerId, HostingId, SiteId};

use crate::units::{Partition, Prepared, NO_UNIT};

/// Items grouped by key: `items[offsets[k]..offsets[k + 1]]` belong to key `k`.
#[derive(Debug, Clone, Default)]
pub struct Groups<T> {
    offsets: Vec<u32>,
    items: Vec<T>,
}

impl<T: Copy + Default> Groups<T> {
    /// Counting sort of `(key, item)` pairs, stable in item order.
    fn build(keys: usize, pairs: impl Iterator<Item = (u32, T)> + Clone) -> Groups<T> {
        let mut offsets = vec![0u32; keys + 1];
        for (k, _) in pairs.clone() {
            offsets[k as usize + 1] += 1;
        }
        for i in 0..keys {
            offsets[i + 1] += offsets[i];
        }
        let mut next = offsets.clone();
        let mut items = vec![T::default(); offsets[keys] as usize];
        for (k, item) in pairs {
            let slot = &mut next[k as usize];
            items[*slot as usize] = item;
            *slot += 1;
        }
        Groups { offsets, items }
    }

    pub fn get(&self, key: u32) -> &[T] {
        let k = key as usize;
        &self.items[self.offsets[k] as usize..self.offsets[k + 1] as usize]
    }
}

/// Members of every unit of a [`Partition`].
#[derive(Debug, Clone, Default)]
pub struct Members {
    pub hostings: Groups<HostingId>,
    pub databases: Groups<DatabaseId>,
    /// Under `filer`, a filer is in one unit; without it, every unit lists the
    /// filers its hostings are on.
    pub filers: Groups<FilerId>,
    pub sites_of_hosting: Groups<SiteId>,
}

impl Members {
    pub fn new(prep: &Prepared<'_>, p: &Partition) -> Members {
        let inv = prep.inv;
        let n = p.len();
        let hostings = Groups::build(
            n,
            p.hosting_units()
                .iter()
                .enumerate()
                .map(|(h, &u)| (u, HostingId(h as u32))),
        );
        let databases = Groups::build(
            n,
            p.database_units()
                .iter()
                .enumerate()
                .map(|(d, &u)| (u, DatabaseId(d as u32))),
        );
        let filers = if p.filer_units().iter().all(|&u| u == NO_UNIT) {
            let mut pairs: Vec<(u32, FilerId)> = p
                .hosting_units()
                .iter()
                .zip(inv.hosting_filers())
                .map(|(&u, &f)| (u, f))
                .collect();
            pairs.sort_unstable();
            pairs.dedup();
            Groups::build(n, pairs.into_iter())
        } else {
            Groups::build(
                n,
                p.filer_units()
                    .iter()
                    .enumerate()
                    .filter(|(_, &u)| u != NO_UNIT)
                    .map(|(f, &u)| (u, FilerId(f as u32))),
            )
        };
        let sites_of_hosting = Groups::build(
            inv.counts().hostings,
            inv.site_hostings()
                .iter()
                .enumerate()
                .map(|(s, h)| (h.0, SiteId(s as u32))),
        );
        Members {
            hostings,
            databases,
            filers,
            sites_of_hosting,
        }
    }
}
