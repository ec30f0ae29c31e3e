//! Units: connected components of the dependency graph under a set of
//! constraints (union-find, linear in the inventory), with the sizes and the
//! predicted freeze of each.
//!
//! Graph nodes are hostings, databases, filers and IPs; sites always follow their
//! hosting (one directory), so they are not nodes. Edges, per constraint:
//! `filer` hosting–filer, `declared-db` hosting–database, `observed-db`
//! hosting–database (client addresses tie nothing: they reach the database
//! wherever it is), `ip` hosting–IP of each of its sites.
//!
//! Databases used by no hosting at all (no declared use, no use observed from
//! a hosting) would each be a unit of their own, each paying a whole freeze
//! for a few megabytes. They are batched instead ([`MAX_BATCH_DATABASES`] at
//! most, within the freeze budget), under every set of constraints alike, so
//! dropping a constraint still only splits units.

use ferry_inventory::{DatabaseId, FilerId, HostingId, Inventory, User};

use crate::params::{Constraint, Constraints, CopyMode, Params};

/// Marks "in no unit" (a filer whose hostings may be split, without `filer`).
pub const NO_UNIT: u32 = u32::MAX;

/// Most databases in one batch of databases used by no hosting: one freeze
/// locks their accounts together, and a batch that fails rolls all of them
/// back, so a batch stays the size of a large unit's database list, not the
/// whole platform's leftovers.
pub const MAX_BATCH_DATABASES: usize = 1_000;

/// Inventory-wide numbers every partition needs, computed once.
pub struct Prepared<'a> {
    pub inv: &'a Inventory,
    /// Sites per hosting.
    pub sites_per_hosting: Vec<u32>,
    /// Bytes of all hostings on each filer (what a block-mode pass reads).
    pub filer_bytes: Vec<u64>,
    /// Databases grouped by server (offsets, ids), so per-server sums need no sort.
    db_by_server: (Vec<u32>, Vec<u32>),
    /// Databases used by no hosting (declared or observed), in inventory order.
    unused_databases: Vec<DatabaseId>,
}

impl<'a> Prepared<'a> {
    pub fn new(inv: &'a Inventory) -> Prepared<'a> {
        let counts = inv.counts();
        let mut sites_per_hosting = vec![0u32; counts.hostings];
        for h in inv.site_hostings() {
            sites_per_hosting[h.index()] += 1;
        }
        let mut filer_bytes = vec![0u64; counts.filers];
        for (f, b) in inv.hosting_filers().iter().zip(inv.hosting_bytes()) {
            filer_bytes[f.index()] += b;
        }
        let servers = inv.database_servers();
        let mut offsets = vec![0u32; counts.db_servers + 1];
        for s in servers {
            offsets[s.index() + 1] += 1;
        }
        for i in 0..counts.db_servers {
            offsets[i + 1] += offsets[i];
        }
        let mut next = offsets.clone();
        let mut ids = vec![0u32; servers.len()];
        for (d, s) in servers.iter().enumerate() {
            ids[next[s.index()] as usize] = d as u32;
            next[s.index()] += 1;
        }
        let mut used = vec![false; counts.databases];
        for (_, d) in inv.declared_uses() {
            used[d.index()] = true;
        }
        for u in inv.observed_uses() {
            if let User::Hosting(_) = u.user {
                used[u.database.index()] = true;
            }
        }
        let unused_databases = (0..counts.databases as u32)
            .filter(|&d| !used[d as usize])
            .map(DatabaseId)
            .collect();
        Prepared {
            inv,
            sites_per_hosting,
            filer_bytes,
            db_by_server: (offsets, ids),
            unused_databases,
        }
    }

    /// The databases used by no hosting, cut into batches that each move in
    /// one freeze: in inventory order, a batch closes when one more database
    /// would make its freeze (overhead + the check of its busiest server, the
    /// model every unit's freeze follows) exceed `--max-freeze` or the window,
    /// or when it holds [`MAX_BATCH_DATABASES`]. A database too big to move
    /// even alone is a batch of its own (an impossible unit).
    pub fn unused_database_batches(&self, params: &Params) -> Vec<Vec<DatabaseId>> {
        let inv = self.inv;
        let limit = params.max_freeze.min(params.window.seconds());
        let servers = inv.database_servers();
        let bytes = inv.database_bytes();
        // Bytes of the open batch per server, and the servers it touches.
        let mut acc = vec![0u64; inv.counts().db_servers];
        let mut touched: Vec<usize> = Vec::new();
        let mut busiest = 0u64;
        let mut batches: Vec<Vec<DatabaseId>> = Vec::new();
        let mut open: Vec<DatabaseId> = Vec::new();
        for &d in &self.unused_databases {
            let server = servers[d.index()].index();
            let with = acc[server] + bytes[d.index()];
            let freeze = params.freeze_overhead + busiest.max(with) as f64 / params.db_check_rate;
            if !open.is_empty() && (freeze > limit || open.len() >= MAX_BATCH_DATABASES) {
                batches.push(std::mem::take(&mut open));
                for s in touched.drain(..) {
                    acc[s] = 0;
                }
                busiest = 0;
            }
            if acc[server] == 0 {
                touched.push(server);
            }
            acc[server] += bytes[d.index()];
            busiest = busiest.max(acc[server]);
            open.push(d);
        }
        if !open.is_empty() {
            batches.push(open);
        }
        batches
    }
}

/// Size and predicted freeze of one unit. See `docs/plan-format.md` for the model.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UnitStats {
    pub sites: u64,
    pub hostings: u32,
    pub filers: u32,
    pub databases: u32,
    pub files: u64,
    pub file_bytes: u64,
    pub db_bytes: u64,
    /// Seconds of the last pre-copy pass (block: the largest filer read at the
    /// scan rate; file mode: every file walked).
    pub pass_s: f64,
    /// Bytes written during that pass: what the freeze must copy.
    pub final_bytes: f64,
    /// Seconds to find what changed during the freeze (file mode walks again;
    /// block mode reads the replicator's change log: 0).
    pub find_s: f64,
    /// Seconds to checksum the unit's databases (servers work in parallel).
    pub db_check_s: f64,
    /// overhead + find + final copy + database check.
    pub freeze_s: f64,
    /// Seconds the pre-copy spends on the unit's files besides their bytes
    /// (file mode: files x `--precopy-per-file`; block mode: 0).
    pub precopy_files_s: f64,
}

impl UnitStats {
    /// What the pre-copy must carry before the unit's night.
    pub fn precopy_bytes(&self) -> u64 {
        self.file_bytes + self.db_bytes
    }
    /// Seconds the link carries the pre-copy's bytes.
    pub fn precopy_transfer_s(&self, params: &Params) -> f64 {
        self.precopy_bytes() as f64 / params.bandwidth
    }
    /// Predicted pre-copy: `--precopy-overhead` + the files' cost + the
    /// bytes over the link (`docs/plan-format.md`).
    pub fn precopy_s(&self, params: &Params) -> f64 {
        params.precopy_overhead + self.precopy_files_s + self.precopy_transfer_s(params)
    }
    /// What the pre-copy takes of the link, in bytes: its bytes, plus the
    /// link time its fixed and per-file costs hold (pre-copies are counted
    /// one after another on the link). Exactly the bytes with both terms 0.
    pub fn precopy_link_bytes(&self, params: &Params) -> f64 {
        self.precopy_bytes() as f64
            + params.bandwidth * (params.precopy_overhead + self.precopy_files_s)
    }
    pub fn final_copy_s(&self, params: &Params) -> f64 {
        self.final_bytes / params.bandwidth
    }
}

/// Every hosting, database and (under `filer`) filer assigned to one unit.
/// Units are numbered from 0 by decreasing sites, then bytes, then first member.
#[derive(Debug, Clone)]
pub struct Partition {
    pub constraints: Constraints,
    hosting_unit: Vec<u32>,
    database_unit: Vec<u32>,
    filer_unit: Vec<u32>,
    stats: Vec<UnitStats>,
}

struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    fn new(n: usize) -> UnionFind {
        UnionFind {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut x: u32) -> u32 {
        // Path halving: every other node on the path points to its grandparent.
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            let gp = self.parent[p as usize];
            self.parent[x as usize] = gp;
            x = gp;
        }
        x
    }

    fn union(&mut self, a: u32, b: u32) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a as usize] < self.size[b as usize] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b as usize] = a;
        self.size[a as usize] += self.size[b as usize];
    }
}

impl Partition {
    /// Computes the units of `prep.inv` under `constraints`, numbered largest
    /// first.
    pub fn compute(prep: &Prepared<'_>, params: &Params, constraints: Constraints) -> Partition {
        let mut p = Partition::compute_unordered(prep, params, constraints);
        p.renumber();
        p
    }

    /// Like [`Partition::compute`] but numbered in order of first member (as
    /// the inventory lists them): enough for summaries and
    /// [`Partition::split_by`], and it skips a sort of every unit.
    pub fn compute_unordered(
        prep: &Prepared<'_>,
        params: &Params,
        constraints: Constraints,
    ) -> Partition {
        let inv = prep.inv;
        let c = inv.counts();
        let (nh, nd, nf) = (c.hostings, c.databases, c.filers);
        let db_node = |d: DatabaseId| (nh + d.index()) as u32;
        let filer_node = |f: FilerId| (nh + nd + f.index()) as u32;
        let ip_base = nh + nd + nf;
        let mut uf = UnionFind::new(ip_base + c.ips);

        if constraints.contains(Constraint::Filer) {
            for (h, f) in inv.hosting_filers().iter().enumerate() {
                uf.union(h as u32, filer_node(*f));
            }
        }
        if constraints.contains(Constraint::DeclaredDb) {
            for (h, d) in inv.declared_uses() {
                uf.union(h.0, db_node(*d));
            }
        }
        if constraints.contains(Constraint::ObservedDb) {
            for u in inv.observed_uses() {
                if let User::Hosting(h) = u.user {
                    uf.union(h.0, db_node(u.database));
                }
            }
        }
        if constraints.contains(Constraint::Ip) {
            for (h, ip) in inv.site_hostings().iter().zip(inv.site_ips()) {
                uf.union(h.0, (ip_base + ip.index()) as u32);
            }
        }

        for batch in prep.unused_database_batches(params) {
            for pair in batch.windows(2) {
                uf.union(db_node(pair[0]), db_node(pair[1]));
            }
        }

        // Dense ids in order of first member (hostings, then databases, then filers).
        let mut root_unit = vec![NO_UNIT; uf.parent.len()];
        let mut next = 0u32;
        let mut unit_of = |uf: &mut UnionFind, node: u32| {
            let r = uf.find(node) as usize;
            if root_unit[r] == NO_UNIT {
                root_unit[r] = next;
                next += 1;
            }
            root_unit[r]
        };
        let hosting_unit: Vec<u32> = (0..nh as u32).map(|h| unit_of(&mut uf, h)).collect();
        let database_unit: Vec<u32> = (0..nd)
            .map(|d| unit_of(&mut uf, db_node(DatabaseId(d as u32))))
            .collect();
        let filer_unit: Vec<u32> = if constraints.contains(Constraint::Filer) {
            (0..nf)
                .map(|f| unit_of(&mut uf, filer_node(FilerId(f as u32))))
                .collect()
        } else {
            vec![NO_UNIT; nf]
        };
        drop(uf);
        let mut p = Partition {
            constraints,
            hosting_unit,
            database_unit,
            filer_unit,
            stats: vec![UnitStats::default(); next as usize],
        };
        p.fill_stats(prep, params);
        p
    }

    /// The unit with the most sites (then bytes, then first member).
    pub fn largest(&self) -> Option<&UnitStats> {
        self.stats
            .iter()
            .enumerate()
            .max_by_key(|(u, s)| (s.sites, s.precopy_bytes(), std::cmp::Reverse(*u)))
            .map(|(_, s)| s)
    }

    fn fill_stats(&mut self, prep: &Prepared<'_>, params: &Params) {
        let inv = prep.inv;
        let by_filer = self.constraints.contains(Constraint::Filer);
        let block = params.copy_mode_under(self.constraints) == CopyMode::Blocks;
        let stats = &mut self.stats;
        let files = inv.hosting_files();
        let bytes = inv.hosting_bytes();
        for (h, &u) in self.hosting_unit.iter().enumerate() {
            let s = &mut stats[u as usize];
            s.sites += u64::from(prep.sites_per_hosting[h]);
            s.hostings += 1;
            s.files += files[h];
            s.file_bytes += bytes[h];
        }
        for (d, &u) in self.database_unit.iter().enumerate() {
            let s = &mut stats[u as usize];
            s.databases += 1;
            s.db_bytes += inv.database_bytes()[d];
        }
        if by_filer {
            for (f, &u) in self.filer_unit.iter().enumerate() {
                let s = &mut stats[u as usize];
                s.filers += 1;
                if block {
                    s.pass_s = s.pass_s.max(prep.filer_bytes[f] as f64 / params.scan_rate);
                }
            }
        } else {
            // A unit's filers are the distinct filers of its hostings.
            let mut pairs: Vec<u64> = self
                .hosting_unit
                .iter()
                .zip(inv.hosting_filers())
                .map(|(&u, f)| (u64::from(u) << 32) | u64::from(f.0))
                .collect();
            pairs.sort_unstable();
            pairs.dedup();
            for p in pairs {
                stats[(p >> 32) as usize].filers += 1;
            }
        }
        if !block {
            // File mode: the last pass walks every file; the freeze walks
            // them again and proves them (`--freeze-per-file`).
            for s in stats.iter_mut() {
                s.pass_s = s.files as f64 / params.walk_rate;
                s.find_s = params.freeze_files_s(s.files);
                s.precopy_files_s = s.files as f64 * params.precopy_per_file;
            }
        }
        // Database servers checksum in parallel: the busiest one sets the time.
        // Per server, sum the bytes of each unit's databases in `acc`, then
        // reset only the units touched.
        let db_bytes = inv.database_bytes();
        let (offsets, ids) = &prep.db_by_server;
        let mut acc = vec![0u64; stats.len()];
        // The server (index + 1) each unit was last touched for: 0 = not yet.
        let mut touched_by = vec![0u32; stats.len()];
        let mut touched: Vec<u32> = Vec::new();
        for (server, w) in offsets.windows(2).enumerate() {
            let mark = server as u32 + 1;
            for &d in &ids[w[0] as usize..w[1] as usize] {
                let u = self.database_unit[d as usize] as usize;
                if touched_by[u] != mark {
                    touched_by[u] = mark;
                    touched.push(u as u32);
                }
                acc[u] += db_bytes[d as usize];
            }
            for &u in &touched {
                let s = &mut stats[u as usize];
                s.db_check_s = s
                    .db_check_s
                    .max(acc[u as usize] as f64 / params.db_check_rate);
                acc[u as usize] = 0;
            }
            touched.clear();
        }
        for s in stats.iter_mut() {
            s.final_bytes = params.change_rate * s.file_bytes as f64 * s.pass_s;
            s.freeze_s =
                params.freeze_overhead + s.find_s + s.final_bytes / params.bandwidth + s.db_check_s;
        }
    }

    /// Renumbers units by decreasing sites, then bytes, then first member, so
    /// unit 0 is the largest and numbers do not depend on hashing or threads.
    fn renumber(&mut self) {
        let n = self.stats.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        // Dense ids were given in first-member order, so the id is the tie-break.
        order.sort_unstable_by_key(|&u| {
            let s = &self.stats[u as usize];
            (
                std::cmp::Reverse(s.sites),
                std::cmp::Reverse(s.precopy_bytes()),
                u,
            )
        });
        let mut new_id = vec![0u32; n];
        for (new, &old) in order.iter().enumerate() {
            new_id[old as usize] = new as u32;
        }
        self.stats = order.iter().map(|&old| self.stats[old as usize]).collect();
        for u in self
            .hosting_unit
            .iter_mut()
            .chain(self.database_unit.iter_mut())
            .chain(self.filer_unit.iter_mut())
        {
            if *u != NO_UNIT {
                *u = new_id[*u as usize];
            }
        }
    }

    pub fn len(&self) -> usize {
        self.stats.len()
    }
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }
    pub fn stats(&self) -> &[UnitStats] {
        &self.stats
    }
    pub fn hosting_unit(&self, h: HostingId) -> u32 {
        self.hosting_unit[h.index()]
    }
    pub fn database_unit(&self, d: DatabaseId) -> u32 {
        self.database_unit[d.index()]
    }
    /// [`NO_UNIT`] without the filer constraint (its hostings may be in several).
    pub fn filer_unit(&self, f: FilerId) -> u32 {
        self.filer_unit[f.index()]
    }
    pub fn hosting_units(&self) -> &[u32] {
        &self.hosting_unit
    }
    pub fn database_units(&self) -> &[u32] {
        &self.database_unit
    }
    pub fn filer_units(&self) -> &[u32] {
        &self.filer_unit
    }

    /// For every unit of `self`, how the finer partition `child` (made under a
    /// subset of the constraints) splits it: (number of parts, largest freeze of
    /// a part). Dropping constraints only splits units, never merges them.
    pub fn split_by(&self, child: &Partition) -> Vec<(u32, f64)> {
        let mut parent_of_child = vec![NO_UNIT; child.len()];
        let pairs = self
            .hosting_unit
            .iter()
            .zip(&child.hosting_unit)
            .chain(self.database_unit.iter().zip(&child.database_unit))
            .chain(self.filer_unit.iter().zip(&child.filer_unit));
        for (&p, &c) in pairs {
            if p != NO_UNIT && c != NO_UNIT {
                parent_of_child[c as usize] = p;
            }
        }
        let mut out = vec![(0u32, 0.0f64); self.len()];
        for (c, &p) in parent_of_child.iter().enumerate() {
            if p != NO_UNIT {
                let o = &mut out[p as usize];
                o.0 += 1;
                o.1 = o.1.max(child.stats[c].freeze_s);
            }
        }
        out
    }
}
