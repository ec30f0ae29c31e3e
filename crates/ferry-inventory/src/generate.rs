//! A synthetic inventory shaped like a large shared-hosting platform (seed 003):
//! deterministic for a given `(sites, seed)`, written as CSV or JSON Lines.
//!
//! The shape, and why:
//! - Clusters of ~600,000 sites (at least two once there are 1,000 sites, so
//!   cross-cluster sharing exists), one datacenter.
//! - Public IPs carry ~200,000 sites each: the IP constraint glues a whole cluster.
//! - Filers hold 1,500-4,500 hostings each (fewer in small inventories, so there
//!   are always ~10 filers per cluster to plan with).
//! - 1-20 sites per hosting, P(k) ~ 1/k^2 (mean ~2.25): most have one or two.
//! - Databases per hosting: 0 (30%), 1 (40%), 2 (17%), 3 (8%), 4-10 (5%), each on
//!   a random database server of the hosting's cluster (~3,000 databases each).
//!   Sizes are capped at 100 GB.
//! - 3% of databases get a second user. The partner is usually on the same filer;
//!   cross-filer partners are rare (about 0.3 per filer in all, a quarter of them
//!   in another cluster, the others on one of the 8 filers filled just before)
//!   because real platforms stay below the point where shared
//!   databases glue most filers together, yet above zero, so some units span
//!   several filers. 40% of those extra uses are undeclared (only the database
//!   tunnel sees them).
//! - 0.5% of databases have no declared owner (left over from closed accounts);
//!   0.1% are also used by an outside client address. The observed-uses file holds
//!   every undeclared use, those client uses, and 5% of declared uses (the tunnel
//!   sees those too).
//! - Sizes are log-normal (heavy tails): hosting median 150 MB (σ 1.6), ~40 KB
//!   per file; database median 15 MB (σ 2.0).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::InventoryError;
use crate::load::find_file;
use crate::model::Counts;
use crate::progress::Progress;
use crate::schema::{Entity, Format};

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct GenerateParams {
    pub sites: u64,
    pub seed: u64,
    pub format: Format,
}

const SITES_PER_CLUSTER: u64 = 600_000;
const SITES_PER_IP: u64 = 200_000;
const DATABASES_PER_SERVER: f64 = 3_000.0;
const MEAN_SITES_PER_HOSTING: f64 = 2.25;
const MEAN_DBS_PER_HOSTING: f64 = 1.28;
const SHARE_PROBABILITY: f64 = 0.03;
const CROSS_FILER_SHARES_PER_FILER: f64 = 0.3;
const CROSS_CLUSTER_SHARE: f64 = 0.25;
const UNDECLARED_SHARE: f64 = 0.4;
const ORPHAN_PROBABILITY: f64 = 0.005;
const CLIENT_USE_PROBABILITY: f64 = 0.001;
const DECLARED_ALSO_OBSERVED: f64 = 0.05;
/// Shared hosting caps database size; 100 GB also keeps one database's
/// checksum within a freeze budget of minutes.
const MAX_DATABASE_BYTES: f64 = 100e9;
/// A same-cluster partner on another filer is on one of the few filers filled
/// just before (customers of the same period); picking among all earlier filers
/// would make the first filers hubs that glue everything.
const NEARBY_FILERS: u64 = 8;

/// SplitMix64: tiny, fast, good enough for synthetic data, and ours, so the
/// output for a seed never changes with a dependency upgrade.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform in [0, n); n > 0.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn normal(&mut self) -> f64 {
        // Box-Muller; 1 - unit() is in (0, 1] so ln never sees 0.
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }
}

/// A table sampler for P(k) ~ 1/k^2, k = 1..=20.
struct SitesPerHosting([f64; 20]);

impl SitesPerHosting {
    fn new() -> Self {
        let mut cdf = [0.0; 20];
        let mut acc = 0.0;
        for (i, c) in cdf.iter_mut().enumerate() {
            acc += 1.0 / ((i + 1) as f64).powi(2);
            *c = acc;
        }
        for c in &mut cdf {
            *c /= acc;
        }
        SitesPerHosting(cdf)
    }
    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        self.0.iter().position(|&c| u < c).unwrap_or(19) as u64 + 1
    }
}

fn dbs_per_hosting(rng: &mut Rng) -> u64 {
    let u = rng.unit();
    match u {
        _ if u < 0.30 => 0,
        _ if u < 0.70 => 1,
        _ if u < 0.87 => 2,
        _ if u < 0.95 => 3,
        _ => rng.range(4, 11),
    }
}

const SYLLABLES: [&str; 32] = [
    "ba", "lu", "ma", "ro", "ti", "ne", "ka", "zo", "pi", "la", "mo", "ri", "su", "ve", "do", "fi",
    "ga", "ho", "ju", "ke", "li", "na", "po", "qui", "ra", "se", "to", "vi", "wa", "xe", "yo",
    "ze",
];
const TLDS: [&str; 8] = ["fr", "com", "net", "org", "eu", "be", "ch", "de"];
const SUBDOMAINS: [&str; 12] = [
    "blog", "shop", "dev", "preprod", "m", "api", "news", "forum", "old", "static", "pro", "test",
];

/// The account name of hosting `i`: pronounceable, unique (the index is in it).
fn account(i: u64, out: &mut String) {
    out.clear();
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    for _ in 0..2 {
        out.push_str(SYLLABLES[(x & 31) as usize]);
        x >>= 5;
    }
    let _ = write!(out, "{i}");
}

/// One value of a row.
enum V<'a> {
    S(&'a str),
    N(u64),
}

struct Out {
    path: PathBuf,
    w: BufWriter<File>,
    format: Format,
    columns: &'static [&'static str],
    rows: usize,
}

impl Out {
    fn create(
        dir: &Path,
        entity: Entity,
        format: Format,
        columns: &'static [&'static str],
    ) -> Result<Out, InventoryError> {
        let path = dir.join(format!("{}.{}", entity.stem(), format.extension()));
        let file = File::create(&path).map_err(|source| InventoryError::Io {
            path: path.clone(),
            source,
        })?;
        let mut out = Out {
            path,
            w: BufWriter::with_capacity(1 << 20, file),
            format,
            columns,
            rows: 0,
        };
        if format == Format::Csv {
            let header = columns.join(",");
            out.io(|w| writeln!(w, "{header}"))?;
        }
        Ok(out)
    }

    fn io(
        &mut self,
        f: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
    ) -> Result<(), InventoryError> {
        f(&mut self.w).map_err(|source| InventoryError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes one row. Generated values never need CSV quoting or JSON escaping.
    fn row(&mut self, values: &[V<'_>]) -> Result<(), InventoryError> {
        self.rows += 1;
        let format = self.format;
        let columns = self.columns;
        self.io(|w| {
            match format {
                Format::Csv => {
                    for (i, v) in values.iter().enumerate() {
                        if i > 0 {
                            w.write_all(b",")?;
                        }
                        match v {
                            V::S(s) => w.write_all(s.as_bytes())?,
                            V::N(n) => write!(w, "{n}")?,
                        }
                    }
                }
                Format::Jsonl => {
                    w.write_all(b"{")?;
                    for (i, (v, c)) in values.iter().zip(columns).enumerate() {
                        if i > 0 {
                            w.write_all(b",")?;
                        }
                        match v {
                            V::S(s) => write!(w, "\"{c}\":\"{s}\"")?,
                            V::N(n) => write!(w, "\"{c}\":{n}")?,
                        }
                    }
                    w.write_all(b"}")?;
                }
            }
            w.write_all(b"\n")
        })
    }

    fn finish(mut self) -> Result<usize, InventoryError> {
        self.io(|w| w.flush())?;
        Ok(self.rows)
    }
}

fn ip_address(cluster: u64, k: u64) -> String {
    // 198.18.0.0/15 (benchmarking range): 256 addresses per cluster.
    let x = cluster * 256 + k;
    format!("198.{}.{}.{}", 18 + (x >> 16), (x >> 8) & 255, x & 255)
}

fn client_address(k: u64) -> String {
    // Documentation ranges: never a real client.
    if k < 256 {
        format!("203.0.113.{k}")
    } else {
        format!("198.51.100.{}", k & 255)
    }
}

/// Writes a synthetic inventory of `params.sites` sites into `out` (created if
/// missing) and returns what it wrote.
pub fn generate(
    params: &GenerateParams,
    out: &Path,
    progress: &dyn Progress,
) -> Result<Counts, InventoryError> {
    std::fs::create_dir_all(out).map_err(|source| InventoryError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    refuse_other_format(out, params.format)?;
    let shape = Shape::new(params.sites);
    let mut files = HostingFiles::create(out, params.format)?;
    let mut walk = Walk::new(Rng(params.seed ^ 0x5EED_F00D_CAFE_D00D), shape);
    progress.begin("generating inventory", params.sites);
    for c in 0..shape.clusters {
        let quota = shape
            .sites_per_cluster
            .min(params.sites - walk.written_sites);
        walk.cluster(c, quota, &mut files, progress)?;
    }
    progress.advance(walk.since_report);
    progress.end();

    let mut counts = files.finish()?;
    write_topology(out, params.format, &shape, &walk, &mut counts)?;
    Ok(counts)
}

/// Files of one format and of the other would make the directory ambiguous
/// to load, so a directory holding the other format is left alone.
fn refuse_other_format(out: &Path, format: Format) -> Result<(), InventoryError> {
    let other = match format {
        Format::Csv => Format::Jsonl,
        Format::Jsonl => Format::Csv,
    };
    for entity in Entity::ALL {
        if let Some((_, f)) = find_file(out, entity)? {
            if f == other {
                return Err(InventoryError::OtherFormatPresent {
                    dir: out.to_path_buf(),
                    stem: entity.stem(),
                    other: other.extension(),
                });
            }
        }
    }
    Ok(())
}

/// The platform's sizes for `n` sites: how many clusters, filers' capacity,
/// database servers, and how often a shared database crosses filers.
#[derive(Debug, Clone, Copy)]
struct Shape {
    clusters: u64,
    sites_per_cluster: u64,
    max_hostings_per_filer: u64,
    db_servers_per_cluster: u64,
    /// Probability that a shared database's partner is on another filer,
    /// chosen so there are ~CROSS_FILER_SHARES_PER_FILER such shares per filer.
    cross_filer: f64,
}

impl Shape {
    fn new(n: u64) -> Shape {
        let clusters = if n >= 1_000 {
            n.div_ceil(SITES_PER_CLUSTER).max(2)
        } else {
            1
        };
        let sites_per_cluster = n.div_ceil(clusters).max(1);
        let hostings_per_cluster = sites_per_cluster as f64 / MEAN_SITES_PER_HOSTING;
        let max_hostings_per_filer = ((hostings_per_cluster / 10.0) as u64).max(3);
        let db_servers_per_cluster =
            ((hostings_per_cluster * MEAN_DBS_PER_HOSTING / DATABASES_PER_SERVER).ceil() as u64)
                .max(2);
        let expected_filers = (hostings_per_cluster / max_hostings_per_filer.min(3000) as f64)
            .max(1.0)
            * clusters as f64;
        let expected_shared =
            hostings_per_cluster * clusters as f64 * MEAN_DBS_PER_HOSTING * SHARE_PROBABILITY;
        let cross_filer = (CROSS_FILER_SHARES_PER_FILER * expected_filers
            / expected_shared.max(1.0))
        .clamp(0.0, 0.5);
        Shape {
            clusters,
            sites_per_cluster,
            max_hostings_per_filer,
            db_servers_per_cluster,
            cross_filer,
        }
    }
}

/// The files written hosting by hosting (the others are written at the end,
/// from what the walk made).
struct HostingFiles {
    sites: Out,
    hostings: Out,
    databases: Out,
    declared: Out,
    observed: Out,
}

impl HostingFiles {
    fn create(dir: &Path, fmt: Format) -> Result<HostingFiles, InventoryError> {
        Ok(HostingFiles {
            sites: Out::create(dir, Entity::Sites, fmt, &["hostname", "hosting", "ip"])?,
            hostings: Out::create(
                dir,
                Entity::Hostings,
                fmt,
                &["name", "filer", "directory", "files", "bytes"],
            )?,
            databases: Out::create(dir, Entity::Databases, fmt, &["name", "server", "bytes"])?,
            declared: Out::create(dir, Entity::DeclaredUses, fmt, &["hosting", "database"])?,
            observed: Out::create(
                dir,
                Entity::ObservedUses,
                fmt,
                &["database", "hosting", "client"],
            )?,
        })
    }

    fn finish(self) -> Result<Counts, InventoryError> {
        Ok(Counts {
            sites: self.sites.finish()?,
            hostings: self.hostings.finish()?,
            databases: self.databases.finish()?,
            declared_uses: self.declared.finish()?,
            observed_uses: self.observed.finish()?,
            ..Counts::default()
        })
    }
}

/// Where the current cluster's walk stands.
struct ClusterCursor {
    /// The cluster's index (its name is `cluster{index:03}`).
    index: u64,
    /// Sites the cluster gets in all, and written so far.
    quota: u64,
    sites: u64,
    /// Its first hosting and first filer (global indexes).
    first_hosting: u64,
    first_filer: usize,
    /// The filer being filled: its index, first hosting and capacity in hostings.
    filer: u64,
    filer_first_hosting: u64,
    filer_capacity: u64,
}

/// The walk over hostings: every random draw happens here, in one fixed order
/// (the output for a seed depends on it), with reused text buffers so millions
/// of rows allocate almost nothing.
struct Walk {
    rng: Rng,
    shape: Shape,
    sites_per_hosting: SitesPerHosting,
    /// Hostings written so far (the next hosting's index).
    hostings_written: u64,
    written_sites: u64,
    since_report: u64,
    filer_cluster: Vec<u64>,
    /// First hosting of every filer, to find the filers filled just before.
    filer_starts: Vec<u64>,
    ips_per_cluster: Vec<u64>,
    /// The current cluster's IP addresses.
    ip_cache: Vec<String>,
    name: String,
    partner_name: String,
    domain: String,
    host: String,
    db: String,
    server: String,
    text: String,
    filer_name: String,
}

impl Walk {
    fn new(rng: Rng, shape: Shape) -> Walk {
        Walk {
            rng,
            shape,
            sites_per_hosting: SitesPerHosting::new(),
            hostings_written: 0,
            written_sites: 0,
            since_report: 0,
            filer_cluster: Vec::new(),
            filer_starts: Vec::new(),
            ips_per_cluster: Vec::new(),
            ip_cache: Vec::new(),
            name: String::new(),
            partner_name: String::new(),
            domain: String::new(),
            host: String::new(),
            db: String::new(),
            server: String::new(),
            text: String::new(),
            filer_name: String::new(),
        }
    }

    /// Writes hostings of cluster `c` until it holds `quota` sites.
    fn cluster(
        &mut self,
        c: u64,
        quota: u64,
        files: &mut HostingFiles,
        progress: &dyn Progress,
    ) -> Result<(), InventoryError> {
        let mut cur = ClusterCursor {
            index: c,
            quota,
            first_hosting: self.hostings_written,
            first_filer: self.filer_starts.len(),
            sites: 0,
            filer: self.filer_cluster.len() as u64,
            filer_first_hosting: self.hostings_written,
            filer_capacity: 0,
        };
        self.ip_cache.clear();
        while cur.sites < quota {
            let h = self.hostings_written;
            if h - cur.filer_first_hosting >= cur.filer_capacity || h == cur.first_hosting {
                self.open_filer(&mut cur, h);
            }
            self.hostings_written += 1;
            let k = self.hosting(&cur, h, files)?;
            cur.sites += k;
            self.written_sites += k;
            self.since_report += k;
            if self.since_report >= 1 << 16 {
                progress.advance(self.since_report);
                self.since_report = 0;
            }
            self.databases(&cur, h, files)?;
        }
        self.ips_per_cluster.push(self.ip_cache.len() as u64);
        Ok(())
    }

    /// Starts a new filer at hosting `h`, with a random capacity.
    fn open_filer(&mut self, cur: &mut ClusterCursor, h: u64) {
        let c = cur.index;
        cur.filer = self.filer_cluster.len() as u64;
        self.filer_cluster.push(c);
        self.filer_starts.push(h);
        cur.filer_first_hosting = h;
        cur.filer_capacity = self
            .rng
            .range(1500, 4501)
            .min(self.shape.max_hostings_per_filer);
        self.filer_name.clear();
        let _ = write!(self.filer_name, "fs{c:03}-{:04}", cur.filer);
    }

    /// Writes hosting `h` and its sites; returns how many sites.
    fn hosting(
        &mut self,
        cur: &ClusterCursor,
        h: u64,
        files: &mut HostingFiles,
    ) -> Result<u64, InventoryError> {
        account(h, &mut self.name);
        self.domain.clear();
        let tld = TLDS[self.rng.below(TLDS.len() as u64) as usize];
        let _ = write!(self.domain, "{}.{tld}", self.name);
        let k = self
            .sites_per_hosting
            .sample(&mut self.rng)
            .min(cur.quota - cur.sites);
        let bytes = self.rng.lognormal(150e6, 1.6).clamp(1e5, 2e12) as u64;
        let files_count = (bytes as f64 / self.rng.lognormal(40e3, 1.0)).max(1.0) as u64;
        self.text.clear();
        let _ = write!(self.text, "/homez.{}/{}", cur.filer, self.name);
        files.hostings.row(&[
            V::S(&self.name),
            V::S(&self.filer_name),
            V::S(&self.text),
            V::N(files_count),
            V::N(bytes),
        ])?;
        for j in 0..k {
            site_name(j, &self.domain, &mut self.host);
            let ip_index = (cur.sites + j) / SITES_PER_IP;
            while self.ip_cache.len() as u64 <= ip_index {
                self.ip_cache
                    .push(ip_address(cur.index, self.ip_cache.len() as u64));
            }
            files.sites.row(&[
                V::S(&self.host),
                V::S(&self.name),
                V::S(&self.ip_cache[ip_index as usize]),
            ])?;
        }
        Ok(k)
    }

    /// The databases of hosting `h` (whose name is in `self.name`), then the
    /// orphan leftovers of closed accounts, with their uses.
    fn databases(
        &mut self,
        cur: &ClusterCursor,
        h: u64,
        files: &mut HostingFiles,
    ) -> Result<(), InventoryError> {
        let dbs = dbs_per_hosting(&mut self.rng);
        let orphans = u64::from(self.rng.chance(ORPHAN_PROBABILITY * MEAN_DBS_PER_HOSTING));
        for d in 0..dbs + orphans {
            let orphan = d >= dbs;
            self.db.clear();
            self.server.clear();
            let s = self.rng.below(self.shape.db_servers_per_cluster);
            let _ = write!(self.server, "sql{:03}-{s:03}", cur.index);
            if orphan {
                let _ = write!(self.db, "{}_old{d}", self.name);
            } else {
                let _ = write!(self.db, "{}_{d}", self.name);
            }
            let bytes = self
                .rng
                .lognormal(15e6, 2.0)
                .clamp(65_536.0, MAX_DATABASE_BYTES) as u64;
            files
                .databases
                .row(&[V::S(&self.db), V::S(&self.server), V::N(bytes)])?;
            let _ = write!(self.db, "@{}", self.server);
            if !orphan {
                files.declared.row(&[V::S(&self.name), V::S(&self.db)])?;
                if self.rng.chance(DECLARED_ALSO_OBSERVED) {
                    files
                        .observed
                        .row(&[V::S(&self.db), V::S(&self.name), V::S("")])?;
                }
            }
            if self.rng.chance(CLIENT_USE_PROBABILITY) || (orphan && self.rng.chance(0.2)) {
                let addr = client_address(self.rng.below(512));
                files
                    .observed
                    .row(&[V::S(&self.db), V::S(""), V::S(&addr)])?;
            }
            if orphan || !self.rng.chance(SHARE_PROBABILITY) {
                continue;
            }
            let Some(p) = self.partner(cur, h) else {
                continue;
            };
            account(p, &mut self.partner_name);
            if self.rng.chance(UNDECLARED_SHARE) {
                files
                    .observed
                    .row(&[V::S(&self.db), V::S(&self.partner_name), V::S("")])?;
            } else {
                files
                    .declared
                    .row(&[V::S(&self.partner_name), V::S(&self.db)])?;
            }
        }
        Ok(())
    }

    /// The hosting that shares a database of hosting `h`: usually an earlier
    /// one on the same filer, sometimes one on a nearby filer or in an
    /// earlier cluster; none when there is no earlier candidate.
    fn partner(&mut self, cur: &ClusterCursor, h: u64) -> Option<u64> {
        if self.rng.chance(self.shape.cross_filer) {
            if self.rng.chance(CROSS_CLUSTER_SHARE) && cur.first_hosting > 0 {
                Some(self.rng.below(cur.first_hosting))
            } else if cur.filer_first_hosting > cur.first_hosting {
                let nearby = self
                    .filer_starts
                    .len()
                    .saturating_sub(NEARBY_FILERS as usize + 1)
                    .max(cur.first_filer);
                let lo = self.filer_starts[nearby].max(cur.first_hosting);
                Some(self.rng.range(lo, cur.filer_first_hosting))
            } else {
                None
            }
        } else if h > cur.filer_first_hosting {
            Some(self.rng.range(cur.filer_first_hosting, h))
        } else {
            None
        }
    }
}

/// The name of site `j` of a hosting: `www.` first, then the bare domain,
/// then subdomains (numbered once the list is used up).
fn site_name(j: u64, domain: &str, host: &mut String) {
    host.clear();
    match j {
        0 => {
            let _ = write!(host, "www.{domain}");
        }
        1 => host.push_str(domain),
        _ => {
            let s = (j - 2) as usize;
            let sub = SUBDOMAINS[s % SUBDOMAINS.len()];
            match s / SUBDOMAINS.len() {
                0 => {
                    let _ = write!(host, "{sub}.{domain}");
                }
                r => {
                    let _ = write!(host, "{sub}{r}.{domain}");
                }
            }
        }
    }
}

/// Datacenters, clusters, IPs, database servers and filers: what the walk
/// made, written once it is over.
fn write_topology(
    out: &Path,
    fmt: Format,
    shape: &Shape,
    walk: &Walk,
    counts: &mut Counts,
) -> Result<(), InventoryError> {
    let mut dcs = Out::create(out, Entity::Datacenters, fmt, &["name"])?;
    dcs.row(&[V::S("par")])?;
    counts.datacenters = dcs.finish()?;
    let mut cl = Out::create(out, Entity::Clusters, fmt, &["name", "datacenter"])?;
    let mut ips = Out::create(out, Entity::Ips, fmt, &["address", "cluster"])?;
    let mut dbs = Out::create(out, Entity::DbServers, fmt, &["name", "cluster"])?;
    for c in 0..shape.clusters {
        let cname = format!("cluster{c:03}");
        cl.row(&[V::S(&cname), V::S("par")])?;
        for k in 0..walk.ips_per_cluster.get(c as usize).copied().unwrap_or(0) {
            ips.row(&[V::S(&ip_address(c, k)), V::S(&cname)])?;
        }
        for s in 0..shape.db_servers_per_cluster {
            dbs.row(&[V::S(&format!("sql{c:03}-{s:03}")), V::S(&cname)])?;
        }
    }
    counts.clusters = cl.finish()?;
    counts.ips = ips.finish()?;
    counts.db_servers = dbs.finish()?;
    let mut filers = Out::create(out, Entity::Filers, fmt, &["name", "cluster"])?;
    for (f, c) in walk.filer_cluster.iter().enumerate() {
        filers.row(&[
            V::S(&format!("fs{c:03}-{f:04}")),
            V::S(&format!("cluster{c:03}")),
        ])?;
    }
    counts.filers = filers.finish()?;
    Ok(())
}
