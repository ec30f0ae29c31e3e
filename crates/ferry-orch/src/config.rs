//! `migrate.toml` (docs/migrate-config.md): TOML in, a checked
//! [`MigrateConfig`] out. As in `ferry-config`, serde first reads the file
//! into raw structs that keep the span of every value still to be checked
//! (unknown keys refused), then the checker builds the settings, so every
//! error names `file:line:column`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{OrchError, Result};

type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    source: S<String>,
    destination: S<String>,
    #[serde(default)]
    datacenters: BTreeMap<String, S<RawDc>>,
    #[serde(default)]
    routers: Vec<S<RawRouter>>,
    #[serde(default)]
    filers: BTreeMap<String, S<RawFiler>>,
    #[serde(default)]
    db_servers: BTreeMap<String, S<RawDbServer>>,
    db: Option<RawDb>,
    copy: Option<RawCopy>,
    freeze: Option<RawFreeze>,
    window: Option<RawWindow>,
    check: Option<RawCheck>,
    tracking: Option<RawTracking>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDc {
    pool: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouter {
    name: S<String>,
    datacenter: S<String>,
    admin: S<String>,
    traffic: Option<S<String>>,
    token: Option<S<String>>,
    token_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiler {
    source: S<String>,
    destination: S<String>,
    key: Option<S<String>>,
    key_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDbServer {
    source: Option<S<String>>,
    source_file: Option<S<String>>,
    destination: Option<S<String>>,
    destination_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDb {
    verify: Option<bool>,
    dest_binlog: Option<bool>,
    max_lag: Option<S<i64>>,
    workers: Option<S<i64>>,
    catch_up_timeout: Option<S<String>>,
    wait_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCopy {
    mode: Option<S<String>>,
    max_passes: Option<S<i64>>,
    checksum: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFreeze {
    max_freeze: Option<S<String>>,
    drain_timeout: Option<S<String>>,
    retry_after: Option<S<String>>,
    max_attempts: Option<S<i64>>,
    unfreeze_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    start: S<String>,
    end: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    via: Option<S<String>>,
    path: Option<S<String>>,
    timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTracking {
    listen: Option<S<String>>,
}

/// A checked `migrate.toml`.
#[derive(Clone, Debug)]
pub struct MigrateConfig {
    /// The file it was read from (relative paths inside are resolved against
    /// its directory).
    pub path: PathBuf,
    pub source: String,
    pub destination: String,
    pub datacenters: BTreeMap<String, DcSpec>,
    pub routers: Vec<RouterSpec>,
    pub filers: BTreeMap<String, FilerSpec>,
    /// `[db_servers.NAME]`: where each database server of the plan is in
    /// both datacenters.
    pub db_servers: BTreeMap<String, DbServerSpec>,
    pub db: DbSettings,
    pub copy: CopySettings,
    pub freeze: FreezeSettings,
    pub window: Option<Window>,
    pub check: CheckSettings,
    pub tracking: Option<std::net::SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DcSpec {
    pub pool: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterSpec {
    pub name: String,
    pub datacenter: String,
    /// `http://host:port` of the admin API (no trailing slash).
    pub admin: String,
    /// `http://host:port` of a traffic listener, for fingerprints.
    pub traffic: Option<String>,
    pub token: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilerSpec {
    /// A local directory (resolved) or `ferry://HOST:PORT/VOLUME`.
    pub source: String,
    pub destination: String,
    /// The agents' pre-shared key, derived ([`ferry_sync::proto::derive_key`]).
    pub key: Option<[u8; 32]>,
}

/// One database server of the plan (`name@server`), as `mysql://` URLs of
/// the mover's account at the source and at the destination. Checked when
/// loaded; the passwords never show in `Debug`.
#[derive(Clone)]
pub struct DbServerSpec {
    pub source: String,
    pub destination: String,
}

impl std::fmt::Debug for DbServerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Endpoint's Display is user@host:port, never the password.
        let show = |side, url: &str| {
            ferry_db::Endpoint::parse(side, url)
                .map(|e| e.to_string())
                .unwrap_or_else(|_| "?".into())
        };
        f.debug_struct("DbServerSpec")
            .field("source", &show(ferry_db::Side::Source, &self.source))
            .field(
                "destination",
                &show(ferry_db::Side::Destination, &self.destination),
            )
            .finish()
    }
}

/// `[db]`: how the runbook drives the database mover.
#[derive(Clone, Debug)]
pub struct DbSettings {
    /// Prove the databases equal: every chunk on snapshots in the pre-copy,
    /// the rows changed since inside the freeze.
    pub verify: bool,
    /// The first copy goes to the destination's binary log (off: as
    /// myloader's default, faster, for a destination without replicas or
    /// Galera peers).
    pub dest_binlog: bool,
    /// The pre-copy waits until the destination is at most this many
    /// transactions behind before the unit may freeze.
    pub max_lag: u64,
    /// Parallel connections for the first copy and the checksums.
    pub workers: usize,
    /// How long the pre-copy waits for the lag to fall under `max_lag`
    /// (advisory, as the files' convergence: the freeze goes on).
    pub catch_up_timeout: Duration,
    /// How long the final copy waits for the destination to apply the
    /// position read at the freeze.
    pub wait_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct CopySettings {
    pub mode: ferry_sync::Mode,
    pub max_passes: u32,
    pub checksum: bool,
}

#[derive(Clone, Debug)]
pub struct FreezeSettings {
    pub max_freeze: Duration,
    pub drain_timeout: Duration,
    pub retry_after: Duration,
    pub max_attempts: u32,
    /// How long the unfreeze step waits for held requests to reach 0.
    pub unfreeze_timeout: Duration,
}

/// `[window]`: minutes after 00:00 UTC. `end < start` wraps past midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start_min: u32,
    pub end_min: u32,
}

impl Window {
    /// Is `minute` (after 00:00 UTC) inside the window?
    pub fn contains(&self, minute: u32) -> bool {
        if self.start_min <= self.end_min {
            (self.start_min..self.end_min).contains(&minute)
        } else {
            minute >= self.start_min || minute < self.end_min
        }
    }
}

#[derive(Clone, Debug)]
pub struct CheckSettings {
    pub via: String,
    pub path: String,
    pub timeout: Duration,
}

impl MigrateConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<MigrateConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| OrchError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        MigrateConfig::parse(&text, path)
    }

    /// Checks `text`, which came from `origin` (named in errors; its directory
    /// anchors relative paths).
    pub fn parse(text: &str, origin: &Path) -> Result<MigrateConfig> {
        let cx = Cx { text, origin };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            cx.err_at(at, e.message().trim_end().to_string())
        })?;
        cx.check(raw)
    }

    pub fn router(&self, name: &str) -> Option<&RouterSpec> {
        self.routers.iter().find(|r| r.name == name)
    }

    /// The routers of datacenter `dc`, in file order.
    pub fn routers_of<'a>(&'a self, dc: &'a str) -> impl Iterator<Item = &'a RouterSpec> + 'a {
        self.routers.iter().filter(move |r| r.datacenter == dc)
    }

    pub fn pool_of(&self, dc: &str) -> &str {
        self.datacenters.get(dc).map_or("", |d| d.pool.as_str())
    }
}

struct Cx<'a> {
    text: &'a str,
    origin: &'a Path,
}

impl Cx<'_> {
    fn err_at(&self, offset: usize, message: String) -> OrchError {
        let (line, column) = line_col(self.text, offset);
        OrchError::Config {
            path: self.origin.to_path_buf(),
            line,
            column,
            message,
        }
    }

    fn err(&self, span: Range<usize>, message: impl Into<String>) -> OrchError {
        self.err_at(span.start, message.into())
    }

    fn resolve(&self, p: &str) -> PathBuf {
        self.origin.parent().unwrap_or(Path::new("")).join(p)
    }

    fn duration(&self, v: &Option<S<String>>, default: Duration, key: &str) -> Result<Duration> {
        match v {
            None => Ok(default),
            Some(s) => {
                let d = ferry_config::parse_duration(s.get_ref())
                    .map_err(|e| self.err(s.span(), format!("{key}: {e}")))?;
                if d.is_zero() {
                    return Err(self.err(s.span(), format!("{key}: must be more than 0")));
                }
                Ok(d)
            }
        }
    }

    fn count(&self, v: &Option<S<i64>>, default: u32, key: &str) -> Result<u32> {
        match v {
            None => Ok(default),
            Some(n) => match u32::try_from(*n.get_ref()) {
                Ok(x) if x >= 1 => Ok(x),
                _ => Err(self.err(
                    n.span(),
                    format!("{key}: must be between 1 and {}", u32::MAX),
                )),
            },
        }
    }

    fn check(&self, raw: RawConfig) -> Result<MigrateConfig> {
        let source = raw.source.get_ref().clone();
        let destination = raw.destination.get_ref().clone();
        if source == destination {
            return Err(self.err(
                raw.destination.span(),
                format!(
                    "destination {destination:?} is the source: a migration needs two datacenters"
                ),
            ));
        }
        let mut datacenters = BTreeMap::new();
        for (name, dc) in &raw.datacenters {
            let pool = dc.get_ref().pool.get_ref();
            if !valid_name(name) {
                return Err(self.err(
                    dc.span(),
                    format!("datacenter name {name:?}: use [a-z0-9_-]"),
                ));
            }
            if !valid_name(pool) {
                return Err(self.err(
                    dc.get_ref().pool.span(),
                    format!("pool name {pool:?}: use [a-z0-9_.-]"),
                ));
            }
            datacenters.insert(name.clone(), DcSpec { pool: pool.clone() });
        }
        for (key, dc) in [(&raw.source, &source), (&raw.destination, &destination)] {
            if !datacenters.contains_key(dc) {
                return Err(self.err(
                    key.span(),
                    format!("datacenter {dc:?} has no [datacenters.{dc}] table"),
                ));
            }
        }
        let mut routers: Vec<RouterSpec> = Vec::new();
        for r in &raw.routers {
            let rr = r.get_ref();
            let name = rr.name.get_ref().clone();
            if name.is_empty() {
                return Err(self.err(rr.name.span(), "router name is empty"));
            }
            if routers.iter().any(|x| x.name == name) {
                return Err(self.err(rr.name.span(), format!("router {name:?} is defined twice")));
            }
            let dc = rr.datacenter.get_ref().clone();
            if !datacenters.contains_key(&dc) {
                return Err(self.err(
                    rr.datacenter.span(),
                    format!(
                        "router {name:?}: datacenter {dc:?} is not defined (known: {})",
                        datacenters.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            let admin = http_base(rr.admin.get_ref())
                .map_err(|e| self.err(rr.admin.span(), format!("router {name:?}: admin: {e}")))?;
            let traffic =
                match &rr.traffic {
                    None => None,
                    Some(t) => Some(http_base(t.get_ref()).map_err(|e| {
                        self.err(t.span(), format!("router {name:?}: traffic: {e}"))
                    })?),
                };
            let token = match (&rr.token, &rr.token_file) {
                (Some(_), Some(f)) => {
                    return Err(self.err(
                        f.span(),
                        format!("router {name:?}: give token or token_file, not both"),
                    ))
                }
                (Some(t), None) => t.get_ref().clone(),
                (None, Some(f)) => {
                    let p = self.resolve(f.get_ref());
                    // Owner-only (or root's and its group's), as every secret.
                    ferry_secret::read_file("token_file", &p)
                        .map_err(|e| self.err(f.span(), format!("router {name:?}: {e}")))?
                        .expose()
                        .to_string()
                }
                (None, None) => {
                    return Err(self.err(
                        rr.name.span(),
                        format!("router {name:?}: no token (token or token_file)"),
                    ))
                }
            };
            if token.is_empty() {
                return Err(self.err(
                    rr.name.span(),
                    format!("router {name:?}: the token is empty"),
                ));
            }
            routers.push(RouterSpec {
                name,
                datacenter: dc,
                admin,
                traffic,
                token,
            });
        }
        for dc in [&source, &destination] {
            if !routers.iter().any(|r| &r.datacenter == dc) {
                let span = if dc == &source {
                    raw.source.span()
                } else {
                    raw.destination.span()
                };
                return Err(self.err(span, format!("datacenter {dc:?} has no [[routers]] entry: every router that serves the sites must be listed")));
            }
        }
        let mut filers = BTreeMap::new();
        for (name, f) in &raw.filers {
            let ff = f.get_ref();
            let key = match (&ff.key, &ff.key_file) {
                (Some(_), Some(k)) => {
                    return Err(self.err(
                        k.span(),
                        format!("filer {name:?}: give key or key_file, not both"),
                    ))
                }
                (Some(k), None) => Some(k.get_ref().clone()),
                (None, Some(k)) => {
                    let p = self.resolve(k.get_ref());
                    Some(
                        ferry_secret::read_file("key_file", &p)
                            .map_err(|e| self.err(k.span(), format!("filer {name:?}: {e}")))?
                            .expose()
                            .to_string(),
                    )
                }
                (None, None) => None,
            };
            let mut ends = Vec::new();
            for side in [&ff.source, &ff.destination] {
                let v = side.get_ref();
                if v.is_empty() {
                    return Err(self.err(side.span(), format!("filer {name:?}: empty path")));
                }
                let end = if v.starts_with("ferry://") {
                    ferry_sync::Endpoint::parse(v)
                        .map_err(|e| self.err(side.span(), format!("filer {name:?}: {e}")))?;
                    if key.is_none() {
                        return Err(self.err(
                            side.span(),
                            format!("filer {name:?}: a ferry:// endpoint needs key or key_file"),
                        ));
                    }
                    v.clone()
                } else {
                    self.resolve(v).to_string_lossy().into_owned()
                };
                ends.push(end);
            }
            if ends[0] == ends[1] {
                return Err(self.err(
                    ff.destination.span(),
                    format!("filer {name:?}: destination is the source"),
                ));
            }
            let destination = ends.pop().unwrap_or_default();
            let source = ends.pop().unwrap_or_default();
            filers.insert(
                name.clone(),
                FilerSpec {
                    source,
                    destination,
                    key: key.map(|k| ferry_sync::proto::derive_key(&k)),
                },
            );
        }
        let mut db_servers = BTreeMap::new();
        for (name, d) in &raw.db_servers {
            let dd = d.get_ref();
            let url = |side: ferry_db::Side,
                       key: &str,
                       inline: &Option<S<String>>,
                       file: &Option<S<String>>|
             -> Result<String> {
                let text = match (inline, file) {
                    (Some(_), Some(f)) => {
                        return Err(self.err(
                            f.span(),
                            format!("db server {name:?}: give {key} or {key}_file, not both"),
                        ))
                    }
                    (Some(v), None) => v.get_ref().clone(),
                    (None, Some(f)) => {
                        // The URL holds a password.
                        let p = self.resolve(f.get_ref());
                        ferry_secret::read_file(&format!("{key}_file"), &p)
                            .map_err(|e| self.err(f.span(), format!("db server {name:?}: {e}")))?
                            .expose()
                            .to_string()
                    }
                    (None, None) => {
                        return Err(self.err(
                            d.span(),
                            format!("db server {name:?}: no {key} (give {key} or {key}_file)"),
                        ))
                    }
                };
                let span = inline
                    .as_ref()
                    .or(file.as_ref())
                    .map_or(d.span(), |v| v.span());
                if !text.starts_with("mysql://") {
                    return Err(self.err(
                        span,
                        format!(
                            "db server {name:?}: {key}: expected mysql://USER:PASSWORD@HOST:PORT"
                        ),
                    ));
                }
                // The driver's message never repeats the URL (no password in errors).
                ferry_db::Endpoint::parse(side, &text)
                    .map_err(|e| self.err(span, format!("db server {name:?}: {key}: {e}")))?;
                Ok(text)
            };
            let source = url(
                ferry_db::Side::Source,
                "source",
                &dd.source,
                &dd.source_file,
            )?;
            let destination = url(
                ferry_db::Side::Destination,
                "destination",
                &dd.destination,
                &dd.destination_file,
            )?;
            db_servers.insert(
                name.clone(),
                DbServerSpec {
                    source,
                    destination,
                },
            );
        }
        let db = {
            let r = raw.db.as_ref();
            let max_lag = match r.and_then(|r| r.max_lag.as_ref()) {
                None => 100,
                Some(n) => u64::try_from(*n.get_ref())
                    .map_err(|_| self.err(n.span(), "db max_lag: must be 0 or more"))?,
            };
            DbSettings {
                verify: r.and_then(|r| r.verify).unwrap_or(true),
                dest_binlog: r.and_then(|r| r.dest_binlog).unwrap_or(true),
                max_lag,
                workers: self.count(&r.and_then(|r| r.workers.clone()), 4, "db workers")? as usize,
                catch_up_timeout: self.duration(
                    &r.and_then(|r| r.catch_up_timeout.clone()),
                    Duration::from_secs(600),
                    "db catch_up_timeout",
                )?,
                wait_timeout: self.duration(
                    &r.and_then(|r| r.wait_timeout.clone()),
                    Duration::from_secs(30),
                    "db wait_timeout",
                )?,
            }
        };
        let copy = match &raw.copy {
            None => CopySettings {
                mode: ferry_sync::Mode::File,
                max_passes: 10,
                checksum: false,
            },
            Some(c) => CopySettings {
                mode: match &c.mode {
                    None => ferry_sync::Mode::File,
                    Some(m) => match m.get_ref().as_str() {
                        "file" => ferry_sync::Mode::File,
                        "block" => ferry_sync::Mode::Block,
                        other => {
                            return Err(self
                                .err(m.span(), format!("copy mode {other:?}: use file or block")))
                        }
                    },
                },
                max_passes: self.count(&c.max_passes, 10, "max_passes")?,
                checksum: c.checksum.unwrap_or(false),
            },
        };
        let none = RawFreeze {
            max_freeze: None,
            drain_timeout: None,
            retry_after: None,
            max_attempts: None,
            unfreeze_timeout: None,
        };
        let fz = raw.freeze.as_ref().unwrap_or(&none);
        let freeze = FreezeSettings {
            max_freeze: self.duration(&fz.max_freeze, Duration::from_secs(30), "max_freeze")?,
            drain_timeout: self.duration(
                &fz.drain_timeout,
                Duration::from_secs(10),
                "drain_timeout",
            )?,
            retry_after: self.duration(&fz.retry_after, Duration::from_secs(30), "retry_after")?,
            max_attempts: self.count(&fz.max_attempts, 3, "max_attempts")?,
            unfreeze_timeout: self.duration(
                &fz.unfreeze_timeout,
                Duration::from_secs(30),
                "unfreeze_timeout",
            )?,
        };
        let window = match &raw.window {
            None => None,
            Some(w) => {
                let start = hhmm(w.start.get_ref())
                    .map_err(|e| self.err(w.start.span(), format!("window start: {e}")))?;
                let end = hhmm(w.end.get_ref())
                    .map_err(|e| self.err(w.end.span(), format!("window end: {e}")))?;
                if start == end {
                    return Err(self.err(
                        w.end.span(),
                        "window end equals its start: the window would be empty",
                    ));
                }
                Some(Window {
                    start_min: start,
                    end_min: end,
                })
            }
        };
        let check = {
            let c = raw.check.as_ref();
            let via = match c.and_then(|c| c.via.as_ref()) {
                Some(v) => {
                    let Some(r) = routers.iter().find(|r| &r.name == v.get_ref()) else {
                        return Err(self.err(
                            v.span(),
                            format!("check via {:?}: no such router", v.get_ref()),
                        ));
                    };
                    if r.traffic.is_none() {
                        return Err(self.err(
                            v.span(),
                            format!(
                                "check via {:?}: that router has no `traffic` address",
                                v.get_ref()
                            ),
                        ));
                    }
                    r.name.clone()
                }
                None => {
                    let first = routers
                        .iter()
                        .find(|r| r.datacenter == destination && r.traffic.is_some());
                    match first {
                        Some(r) => r.name.clone(),
                        None => return Err(self.err(
                            raw.destination.span(),
                            "no router of the destination datacenter has a `traffic` address for the fingerprints ([check] via)",
                        )),
                    }
                }
            };
            let path = match c.and_then(|c| c.path.as_ref()) {
                Some(p) if !p.get_ref().starts_with('/') => {
                    return Err(self.err(
                        p.span(),
                        format!("check path {:?}: must start with /", p.get_ref()),
                    ))
                }
                Some(p) => p.get_ref().clone(),
                None => "/".to_string(),
            };
            let timeout = match c {
                Some(c) => self.duration(&c.timeout, Duration::from_secs(5), "check timeout")?,
                None => Duration::from_secs(5),
            };
            CheckSettings { via, path, timeout }
        };
        let tracking = match raw.tracking.as_ref().and_then(|t| t.listen.as_ref()) {
            None => None,
            Some(l) => Some(l.get_ref().parse().map_err(|_| {
                self.err(
                    l.span(),
                    format!(
                        "tracking listen {:?}: expected HOST:PORT (an IP address)",
                        l.get_ref()
                    ),
                )
            })?),
        };
        Ok(MigrateConfig {
            path: self.origin.to_path_buf(),
            source,
            destination,
            datacenters,
            routers,
            filers,
            db_servers,
            db,
            copy,
            freeze,
            window,
            check,
            tracking,
        })
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
}

/// `http://host:port` (a trailing `/` allowed) -> the same without the slash.
fn http_base(s: &str) -> std::result::Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .ok_or_else(|| format!("{s:?}: expected http://HOST:PORT"))?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains('/') || hostport.contains('?') || hostport.contains('@') {
        return Err(format!("{s:?}: expected http://HOST:PORT with no path"));
    }
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: no port (expected http://HOST:PORT)"))?;
    if host.is_empty() || host == "[]" {
        return Err(format!("{s:?}: no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("http://{hostport}")),
        _ => Err(format!("{s:?}: port {port:?} is not a port number")),
    }
}

/// "01:30" -> 90.
fn hhmm(s: &str) -> std::result::Result<u32, String> {
    let bad = || format!("{s:?}: expected HH:MM (UTC, 00:00 to 23:59)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}
