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
    let other = match params.format {
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
    let fmt = params.format;
    let mut rng = Rng(params.seed ^ 0x5EED_F00D_CAFE_D00D);
    let n = params.sites;
    let clusters = if n >= 1_000 {
        n.div_ceil(SITES_PER_CLUSTER).max(2)
    } else {
        1
    };
    let sites_per_cluster = n.div_ceil(clusters).max(1);
    let hostings_per_cluster = sites_per_cluster as f64 / MEAN_SITES_PER_HOSTING;
    let max_hostings_per_filer = ((hostings_per_cluster / 10.0) as u64).max(3);
    let db_servers_per_cluster =
        ((hostings_per_cluster * MEAN_DBS_PER_HOSTING / DATABASES_PER_SERVER).ceil() as u64).max(2);
    let expected_filers =
        (hostings_per_cluster / max_hostings_per_filer.min(3000) as f64).max(1.0) * clusters as f64;
    let expected_shared =
        hostings_per_cluster * clusters as f64 * MEAN_DBS_PER_HOSTING * SHARE_PROBABILITY;
    let cross_filer =
        (CROSS_FILER_SHARES_PER_FILER * expected_filers / expected_shared.max(1.0)).clamp(0.0, 0.5);

    let mut sites = Out::create(out, Entity::Sites, fmt, &["hostname", "hosting", "ip"])?;
    let mut hostings = Out::create(
        out,
        Entity::Hostings,
        fmt,
        &["name", "filer", "directory", "files", "bytes"],
    )?;
    let mut databases = Out::create(out, Entity::Databases, fmt, &["name", "server", "bytes"])?;
    let mut declared = Out::create(out, Entity::DeclaredUses, fmt, &["hosting", "database"])?;
    let mut observed = Out::create(
        out,
        Entity::ObservedUses,
        fmt,
        &["database", "hosting", "client"],
    )?;

    let sph = SitesPerHosting::new();
    // Hostings written so far (the next hosting's index).
    let mut hostings_written = 0u64;
    let mut filer_cluster: Vec<u64> = Vec::new();
    // First hosting of every filer, to find the filers filled just before.
    let mut filer_starts: Vec<u64> = Vec::new();
    let mut ips_per_cluster: Vec<u64> = Vec::new();
    let mut name = String::new();
    let mut partner_name = String::new();
    let mut domain = String::new();
    let mut host = String::new();
    let mut db = String::new();
    let mut server = String::new();
    let mut text = String::new();
    let mut filer_name = String::new();
    let mut ip_cache: Vec<String> = Vec::new();
    let mut written_sites = 0u64;
    let mut since_report = 0u64;
    progress.begin("generating inventory", n);

    for c in 0..clusters {
        let quota = sites_per_cluster.min(n - written_sites);
        let cluster_first_hosting = hostings_written;
        let cluster_first_filer = filer_starts.len();
        let mut cluster_sites = 0u64;
        let mut filer_first_hosting = cluster_first_hosting;
        let mut filer_capacity = 0u64;
        let mut filer = filer_cluster.len() as u64;
        ip_cache.clear();
        while cluster_sites < quota {
            let h = hostings_written;
            if h - filer_first_hosting >= filer_capacity || h == cluster_first_hosting {
                filer = filer_cluster.len() as u64;
                filer_cluster.push(c);
                filer_starts.push(h);
                filer_first_hosting = h;
                filer_capacity = rng.range(1500, 4501).min(max_hostings_per_filer);
                filer_name.clear();
                let _ = write!(filer_name, "fs{c:03}-{filer:04}");
            }
            hostings_written += 1;
            account(h, &mut name);
            domain.clear();
            let _ = write!(
                domain,
                "{name}.{}",
                TLDS[rng.below(TLDS.len() as u64) as usize]
            );
            let k = sph.sample(&mut rng).min(quota - cluster_sites);
            let bytes = rng.lognormal(150e6, 1.6).clamp(1e5, 2e12) as u64;
            let files = (bytes as f64 / rng.lognormal(40e3, 1.0)).max(1.0) as u64;
            text.clear();
            let _ = write!(text, "/homez.{filer}/{name}");
            hostings.row(&[
                V::S(&name),
                V::S(&filer_name),
                V::S(&text),
                V::N(files),
                V::N(bytes),
            ])?;
            for j in 0..k {
                host.clear();
                match j {
                    0 => {
                        let _ = write!(host, "www.{domain}");
                    }
                    1 => host.push_str(&domain),
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
                let ip_index = (cluster_sites + j) / SITES_PER_IP;
                while ip_cache.len() as u64 <= ip_index {
                    ip_cache.push(ip_address(c, ip_cache.len() as u64));
                }
                sites.row(&[V::S(&host), V::S(&name), V::S(&ip_cache[ip_index as usize])])?;
            }
            cluster_sites += k;
            written_sites += k;
            since_report += k;
            if since_report >= 1 << 16 {
                progress.advance(since_report);
                since_report = 0;
            }

            // Databases of this hosting, then the orphan leftovers of closed accounts.
            let dbs = dbs_per_hosting(&mut rng);
            let orphans = u64::from(rng.chance(ORPHAN_PROBABILITY * MEAN_DBS_PER_HOSTING));
            for d in 0..dbs + orphans {
                let orphan = d >= dbs;
                db.clear();
                server.clear();
                let s = rng.below(db_servers_per_cluster);
                let _ = write!(server, "sql{c:03}-{s:03}");
                if orphan {
                    let _ = write!(db, "{name}_old{d}");
                } else {
                    let _ = write!(db, "{name}_{d}");
                }
                let bytes = rng.lognormal(15e6, 2.0).clamp(65_536.0, MAX_DATABASE_BYTES) as u64;
                databases.row(&[V::S(&db), V::S(&server), V::N(bytes)])?;
                let _ = write!(db, "@{server}");
                if !orphan {
                    declared.row(&[V::S(&name), V::S(&db)])?;
                    if rng.chance(DECLARED_ALSO_OBSERVED) {
                        observed.row(&[V::S(&db), V::S(&name), V::S("")])?;
                    }
                }
                if rng.chance(CLIENT_USE_PROBABILITY) || (orphan && rng.chance(0.2)) {
                    let addr = client_address(rng.below(512));
                    observed.row(&[V::S(&db), V::S(""), V::S(&addr)])?;
                }
                if orphan || !rng.chance(SHARE_PROBABILITY) {
                    continue;
                }
                let partner = if rng.chance(cross_filer) {
                    if rng.chance(CROSS_CLUSTER_SHARE) && cluster_first_hosting > 0 {
                        Some(rng.below(cluster_first_hosting))
                    } else if filer_first_hosting > cluster_first_hosting {
                        let nearby = filer_starts
                            .len()
                            .saturating_sub(NEARBY_FILERS as usize + 1)
                            .max(cluster_first_filer);
                        let lo = filer_starts[nearby].max(cluster_first_hosting);
                        Some(rng.range(lo, filer_first_hosting))
                    } else {
                        None
                    }
                } else if h > filer_first_hosting {
                    Some(rng.range(filer_first_hosting, h))
                } else {
                    None
                };
                let Some(p) = partner else { continue };
                account(p, &mut partner_name);
                if rng.chance(UNDECLARED_SHARE) {
                    observed.row(&[V::S(&db), V::S(&partner_name), V::S("")])?;
                } else {
                    declared.row(&[V::S(&partner_name), V::S(&db)])?;
                }
            }
        }
        ips_per_cluster.push(ip_cache.len() as u64);
    }
    progress.advance(since_report);
    progress.end();

    let mut counts = Counts {
        sites: sites.finish()?,
        hostings: hostings.finish()?,
        databases: databases.finish()?,
        declared_uses: declared.finish()?,
        observed_uses: observed.finish()?,
        ..Counts::default()
    };

    let mut dcs = Out::create(out, Entity::Datacenters, fmt, &["name"])?;
    dcs.row(&[V::S("par")])?;
    counts.datacenters = dcs.finish()?;
    let mut cl = Out::create(out, Entity::Clusters, fmt, &["name", "datacenter"])?;
    let mut ips = Out::create(out, Entity::Ips, fmt, &["address", "cluster"])?;
    let mut dbs = Out::create(out, Entity::DbServers, fmt, &["name", "cluster"])?;
    for c in 0..clusters {
        let cname = format!("cluster{c:03}");
        cl.row(&[V::S(&cname), V::S("par")])?;
        for k in 0..ips_per_cluster.get(c as usize).copied().unwrap_or(0) {
            ips.row(&[V::S(&ip_address(c, k)), V::S(&cname)])?;
        }
        for s in 0..db_servers_per_cluster {
            dbs.row(&[V::S(&format!("sql{c:03}-{s:03}")), V::S(&cname)])?;
        }
    }
    counts.clusters = cl.finish()?;
    counts.ips = ips.finish()?;
    counts.db_servers = dbs.finish()?;
    let mut filers = Out::create(out, Entity::Filers, fmt, &["name", "cluster"])?;
    for (f, c) in filer_cluster.iter().enumerate() {
        filers.row(&[
            V::S(&format!("fs{c:03}-{f:04}")),
            V::S(&format!("cluster{c:03}")),
        ])?;
    }
    counts.filers = filers.finish()?;
    Ok(counts)
}
