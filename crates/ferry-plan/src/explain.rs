//! Why units are what they are: the databases (and, under `ip`, the IPs) that
//! glue several volumes into one unit, and what each constraint costs.

use ferry_inventory::{ClusterId, DatabaseId, FilerId, HostingId, IpId, User};

use crate::params::{Constraint, Constraints, Params};
use crate::schedule::{schedule, Job, Schedule};
use crate::units::{Partition, Prepared, UnitStats};

/// What is copied as one piece: a filer (block mode, under `filer`) or a
/// hosting's directory (file mode, without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Volume {
    Filer(FilerId),
    Hosting(HostingId),
}

/// How a volume uses a glue database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseKind {
    Declared,
    Observed,
    Both,
}

impl UseKind {
    pub fn name(self) -> &'static str {
        match self {
            UseKind::Declared => "declared",
            UseKind::Observed => "observed",
            UseKind::Both => "declared+observed",
        }
    }
    fn merge(self, other: UseKind) -> UseKind {
        if self == other {
            self
        } else {
            UseKind::Both
        }
    }
}

/// A database used from two volumes or more: it forces them into one unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Glue {
    pub database: DatabaseId,
    pub unit: u32,
    /// The volumes using it, each with how (sorted by volume).
    pub volumes: Vec<(Volume, UseKind)>,
    /// True when those volumes are in different clusters.
    pub cross_cluster: bool,
}

/// A public IP whose sites live on two volumes or more (only under `ip`).
#[derive(Debug, Clone, PartialEq)]
pub struct IpGlue {
    pub ip: IpId,
    pub unit: u32,
    pub volumes: u32,
}

pub(crate) fn volume_of(prep: &Prepared<'_>, constraints: Constraints, h: HostingId) -> Volume {
    if constraints.contains(Constraint::Filer) {
        Volume::Filer(prep.inv.hosting_filers()[h.index()])
    } else {
        Volume::Hosting(h)
    }
}

fn volume_cluster(prep: &Prepared<'_>, v: Volume) -> ClusterId {
    let inv = prep.inv;
    let f = match v {
        Volume::Filer(f) => f,
        Volume::Hosting(h) => inv.hosting_filers()[h.index()],
    };
    inv.filer_clusters()[f.index()]
}

/// Every glue database of `p`, sorted by decreasing number of volumes.
pub fn glue(prep: &Prepared<'_>, p: &Partition) -> Vec<Glue> {
    let inv = prep.inv;
    let c = p.constraints;
    let mut uses: Vec<(DatabaseId, Volume, UseKind)> = Vec::new();
    if c.contains(Constraint::DeclaredDb) {
        for (h, d) in inv.declared_uses() {
            uses.push((*d, volume_of(prep, c, *h), UseKind::Declared));
        }
    }
    if c.contains(Constraint::ObservedDb) {
        for u in inv.observed_uses() {
            if let User::Hosting(h) = u.user {
                uses.push((u.database, volume_of(prep, c, h), UseKind::Observed));
            }
        }
    }
    uses.sort_unstable_by_key(|u| (u.0, u.1));
    let mut out = Vec::new();
    let mut i = 0;
    while i < uses.len() {
        let d = uses[i].0;
        let mut j = i;
        while j < uses.len() && uses[j].0 == d {
            j += 1;
        }
        let group = &uses[i..j];
        if group.windows(2).any(|w| w[0].1 != w[1].1) {
            let mut volumes: Vec<(Volume, UseKind)> = Vec::new();
            for &(_, v, k) in group {
                match volumes.last_mut() {
                    Some(last) if last.0 == v => last.1 = last.1.merge(k),
                    _ => volumes.push((v, k)),
                }
            }
            let first = volume_cluster(prep, volumes[0].0);
            let cross_cluster = volumes.iter().any(|v| volume_cluster(prep, v.0) != first);
            out.push(Glue {
                database: d,
                unit: p.database_unit(d),
                volumes,
                cross_cluster,
            });
        }
        i = j;
    }
    out.sort_by(|a, b| {
        b.volumes
            .len()
            .cmp(&a.volumes.len())
            .then(a.database.cmp(&b.database))
    });
    out
}

/// IPs whose sites span several volumes (empty unless `ip` is a constraint).
pub fn ip_glue(prep: &Prepared<'_>, p: &Partition) -> Vec<IpGlue> {
    let inv = prep.inv;
    if !p.constraints.contains(Constraint::Ip) {
        return Vec::new();
    }
    let mut pairs: Vec<(IpId, Volume)> = inv
        .site_ips()
        .iter()
        .zip(inv.site_hostings())
        .map(|(ip, h)| (*ip, volume_of(prep, p.constraints, *h)))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut out: Vec<IpGlue> = Vec::new();
    let mut first_hosting = vec![None; inv.counts().ips];
    for (h, ip) in inv.site_hostings().iter().zip(inv.site_ips()) {
        first_hosting[ip.index()].get_or_insert(*h);
    }
    for (ip, _) in &pairs {
        match out.last_mut() {
            Some(g) if g.ip == *ip => g.volumes += 1,
            _ => out.push(IpGlue {
                ip: *ip,
                unit: first_hosting[ip.index()].map_or(0, |h| p.hosting_unit(h)),
                volumes: 1,
            }),
        }
    }
    out.retain(|g| g.volumes > 1);
    out.sort_by(|a, b| b.volumes.cmp(&a.volumes).then(a.ip.cmp(&b.ip)));
    out
}

/// The jobs the scheduler sees for a partition: a unit's pre-copy counts
/// as the link time it takes (its bytes, its fixed and per-file costs).
pub fn jobs(p: &Partition, params: &Params) -> Vec<Job> {
    p.stats()
        .iter()
        .map(|s| Job {
            freeze_s: s.freeze_s,
            precopy_bytes: s.precopy_link_bytes(params),
            final_bytes: s.final_bytes,
        })
        .collect()
}

/// The outcome of planning under one set of constraints, in numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub constraints: Constraints,
    pub units: usize,
    /// The unit with the most sites.
    pub largest: UnitStats,
    pub max_freeze_s: f64,
    pub impossible: usize,
    pub nights: usize,
    pub unscheduled: usize,
}

impl Scenario {
    pub fn of(p: &Partition, s: &Schedule) -> Scenario {
        Scenario {
            constraints: p.constraints,
            units: p.len(),
            largest: p.largest().copied().unwrap_or_default(),
            max_freeze_s: p.stats().iter().map(|s| s.freeze_s).fold(0.0, f64::max),
            impossible: s.impossible(),
            nights: s.nights.len(),
            unscheduled: s.unscheduled(),
        }
    }
}

/// The alternatives worth showing next to `chosen`: each constraint added or
/// removed.
pub fn alternatives(chosen: Constraints) -> Vec<Constraints> {
    Constraint::ALL
        .into_iter()
        .map(|c| {
            if chosen.contains(c) {
                chosen.without(c)
            } else {
                chosen.with(c)
            }
        })
        .collect()
}

/// Plans under `constraints` and summarises; returns the partition for
/// [`Partition::split_by`].
pub fn scenario(
    prep: &Prepared<'_>,
    params: &Params,
    constraints: Constraints,
) -> (Scenario, Partition) {
    let p = Partition::compute_unordered(prep, params, constraints);
    let s = schedule(
        &jobs(&p, params),
        &Params {
            constraints,
            ..*params
        },
    );
    (Scenario::of(&p, &s), p)
}
