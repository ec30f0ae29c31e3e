//! The checker: raw `migrate.toml` -> [`MigrateConfig`], section by section,
//! every refusal at `file:line:column`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawConfig, RawFreeze, RawRouter, S};
use super::{
    CheckSettings, CopySettings, DbServerSpec, DbSettings, DcSpec, FilerSpec, FreezeSettings,
    MigrateConfig, RouterSpec, Window,
};
use crate::error::{OrchError, Result};

pub(super) struct Cx<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a Path,
}

impl Cx<'_> {
    pub(super) fn source(&self) -> ferry_conf::Source<'_> {
        ferry_conf::Source {
            path: self.origin,
            text: self.text,
        }
    }

    pub(super) fn err(&self, span: Range<usize>, message: impl Into<String>) -> OrchError {
        self.source().error(span, message).into()
    }

    /// The config file's directory: relative paths inside are relative to it.
    pub(super) fn base(&self) -> &Path {
        self.origin.parent().unwrap_or(Path::new(""))
    }

    fn resolve(&self, p: &str) -> PathBuf {
        self.base().join(p)
    }

    /// A secret given as `<key>` or `<key>_file` (ferry-conf's one rule).
    fn secret(&self, keys: ferry_conf::SecretKeys<'_>) -> Result<Option<String>> {
        let secret = keys
            .optional(self.base())
            .map_err(|e| OrchError::from(self.source().locate(e)))?;
        Ok(secret.map(|s| s.expose().to_string()))
    }

    pub(super) fn duration(
        &self,
        v: &Option<S<String>>,
        default: Duration,
        key: &str,
    ) -> Result<Duration> {
        match v {
            None => Ok(default),
            Some(s) => {
                let d = ferry_conf::parse_duration(s.get_ref())
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

    /// The whole file, section by section.
    pub(super) fn check(&self, raw: RawConfig) -> Result<MigrateConfig> {
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
        let datacenters = self.datacenters(&raw)?;
        let routers = self.routers(&raw, &datacenters)?;
        let check = self.check_settings(&raw, &routers)?;
        Ok(MigrateConfig {
            path: self.origin.to_path_buf(),
            source,
            destination,
            datacenters,
            routers,
            filers: self.filers(&raw)?,
            db_servers: self.db_servers(&raw)?,
            db: self.db(&raw)?,
            copy: self.copy(&raw)?,
            freeze: self.freeze(&raw)?,
            window: self.window(&raw)?,
            check,
            tracking: self.tracking(&raw)?,
            store: self.store(raw.store.as_ref())?,
        })
    }

    /// `[datacenters.NAME]`; the source and the destination must be among them.
    fn datacenters(&self, raw: &RawConfig) -> Result<BTreeMap<String, DcSpec>> {
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
        for key in [&raw.source, &raw.destination] {
            let dc = key.get_ref();
            if !datacenters.contains_key(dc) {
                return Err(self.err(
                    key.span(),
                    format!("datacenter {dc:?} has no [datacenters.{dc}] table"),
                ));
            }
        }
        Ok(datacenters)
    }

    /// `[[routers]]`: every router that serves the sites, at least one per side.
    fn routers(
        &self,
        raw: &RawConfig,
        datacenters: &BTreeMap<String, DcSpec>,
    ) -> Result<Vec<RouterSpec>> {
        let mut routers: Vec<RouterSpec> = Vec::new();
        for r in &raw.routers {
            let spec = self.router(r.get_ref(), datacenters)?;
            if routers.iter().any(|x| x.name == spec.name) {
                return Err(self.err(
                    r.get_ref().name.span(),
                    format!("router {:?} is defined twice", spec.name),
                ));
            }
            routers.push(spec);
        }
        for key in [&raw.source, &raw.destination] {
            let dc = key.get_ref();
            if !routers.iter().any(|r| &r.datacenter == dc) {
                return Err(self.err(key.span(), format!("datacenter {dc:?} has no [[routers]] entry: every router that serves the sites must be listed")));
            }
        }
        Ok(routers)
    }

    fn router(&self, rr: &RawRouter, datacenters: &BTreeMap<String, DcSpec>) -> Result<RouterSpec> {
        let name = rr.name.get_ref().clone();
        if name.is_empty() {
            return Err(self.err(rr.name.span(), "router name is empty"));
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
        let traffic = match &rr.traffic {
            None => None,
            Some(t) => Some(
                http_base(t.get_ref())
                    .map_err(|e| self.err(t.span(), format!("router {name:?}: traffic: {e}")))?,
            ),
        };
        let owner = format!("router {name:?}");
        let keys = ferry_conf::SecretKeys {
            owner: &owner,
            key: "token",
            inline: rr.token.as_ref(),
            file: rr.token_file.as_ref(),
            // Admin tokens of any length are accepted for now (ferry-conf's doc).
            min_chars: 0,
        };
        let Some(token) = self.secret(keys)? else {
            return Err(self.err(
                rr.name.span(),
                format!("{owner}: no token: set token or token_file"),
            ));
        };
        Ok(RouterSpec {
            name,
            datacenter: dc,
            admin,
            traffic,
            token,
        })
    }

    /// `[filers.NAME]`: both ends, and the agents' key for `ferry://` ends.
    fn filers(&self, raw: &RawConfig) -> Result<BTreeMap<String, FilerSpec>> {
        let mut filers = BTreeMap::new();
        for (name, f) in &raw.filers {
            let ff = f.get_ref();
            let owner = format!("filer {name:?}");
            let key = self.secret(ferry_conf::SecretKeys {
                owner: &owner,
                key: "key",
                inline: ff.key.as_ref(),
                file: ff.key_file.as_ref(),
                // The agents refuse shorter keys: a shorter one could never match.
                min_chars: ferry_conf::MIN_TOKEN_CHARS,
            })?;
            let mut ends = Vec::new();
            for side in [&ff.source, &ff.destination] {
                let v = side.get_ref();
                if v.is_empty() {
                    return Err(self.err(side.span(), format!("{owner}: empty path")));
                }
                let end = if v.starts_with("ferry://") {
                    ferry_sync::Endpoint::parse(v)
                        .map_err(|e| self.err(side.span(), format!("{owner}: {e}")))?;
                    if key.is_none() {
                        return Err(self.err(
                            side.span(),
                            format!("{owner}: a ferry:// endpoint needs key or key_file"),
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
                    format!("{owner}: destination is the source"),
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
        Ok(filers)
    }

    /// `[db_servers.NAME]`: the mover's `mysql://` URL on each side (they
    /// hold a password: inline or in a file, as every secret).
    fn db_servers(&self, raw: &RawConfig) -> Result<BTreeMap<String, DbServerSpec>> {
        let mut db_servers = BTreeMap::new();
        for (name, d) in &raw.db_servers {
            let dd = d.get_ref();
            let source = self.db_url(
                name,
                d.span(),
                ferry_db::Side::Source,
                "source",
                (&dd.source, &dd.source_file),
            )?;
            let destination = self.db_url(
                name,
                d.span(),
                ferry_db::Side::Destination,
                "destination",
                (&dd.destination, &dd.destination_file),
            )?;
            db_servers.insert(
                name.clone(),
                DbServerSpec {
                    source,
                    destination,
                },
            );
        }
        Ok(db_servers)
    }

    fn db_url(
        &self,
        name: &str,
        whole: Range<usize>,
        side: ferry_db::Side,
        key: &str,
        (inline, file): (&Option<S<String>>, &Option<S<String>>),
    ) -> Result<String> {
        let owner = format!("db server {name:?}");
        let keys = ferry_conf::SecretKeys {
            owner: &owner,
            key,
            inline: inline.as_ref(),
            file: file.as_ref(),
            // Another system's password: not Ferry's to judge.
            min_chars: 0,
        };
        let Some(text) = self.secret(keys)? else {
            return Err(self.err(
                whole,
                format!("{owner}: no {key} (give {key} or {key}_file)"),
            ));
        };
        let span = inline
            .as_ref()
            .or(file.as_ref())
            .map_or(whole, |v| v.span());
        if !text.starts_with("mysql://") {
            return Err(self.err(
                span,
                format!("{owner}: {key}: expected mysql://USER:PASSWORD@HOST:PORT"),
            ));
        }
        // The driver's message never repeats the URL (no password in errors).
        ferry_db::Endpoint::parse(side, &text)
            .map_err(|e| self.err(span, format!("{owner}: {key}: {e}")))?;
        Ok(text)
    }

    fn db(&self, raw: &RawConfig) -> Result<DbSettings> {
        let r = raw.db.as_ref();
        let max_lag = match r.and_then(|r| r.max_lag.as_ref()) {
            None => 100,
            Some(n) => u64::try_from(*n.get_ref())
                .map_err(|_| self.err(n.span(), "db max_lag: must be 0 or more"))?,
        };
        Ok(DbSettings {
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
        })
    }

    fn copy(&self, raw: &RawConfig) -> Result<CopySettings> {
        let Some(c) = &raw.copy else {
            return Ok(CopySettings {
                mode: ferry_sync::Mode::File,
                max_passes: 10,
                checksum: false,
            });
        };
        Ok(CopySettings {
            mode: match &c.mode {
                None => ferry_sync::Mode::File,
                Some(m) => match m.get_ref().as_str() {
                    "file" => ferry_sync::Mode::File,
                    "block" => ferry_sync::Mode::Block,
                    other => {
                        return Err(
                            self.err(m.span(), format!("copy mode {other:?}: use file or block"))
                        )
                    }
                },
            },
            max_passes: self.count(&c.max_passes, 10, "max_passes")?,
            checksum: c.checksum.unwrap_or(false),
        })
    }

    fn freeze(&self, raw: &RawConfig) -> Result<FreezeSettings> {
        let none = RawFreeze {
            max_freeze: None,
            drain_timeout: None,
            retry_after: None,
            max_attempts: None,
            unfreeze_timeout: None,
        };
        let fz = raw.freeze.as_ref().unwrap_or(&none);
        Ok(FreezeSettings {
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
        })
    }

    fn window(&self, raw: &RawConfig) -> Result<Option<Window>> {
        let Some(w) = &raw.window else {
            return Ok(None);
        };
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
        Ok(Some(Window {
            start_min: start,
            end_min: end,
        }))
    }

    /// `[check]`: the router the fingerprints go through (by default the
    /// destination's first with a traffic address), the path, the timeout.
    fn check_settings(&self, raw: &RawConfig, routers: &[RouterSpec]) -> Result<CheckSettings> {
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
                let destination = raw.destination.get_ref();
                let first = routers
                    .iter()
                    .find(|r| &r.datacenter == destination && r.traffic.is_some());
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
        Ok(CheckSettings { via, path, timeout })
    }

    fn tracking(&self, raw: &RawConfig) -> Result<Option<std::net::SocketAddr>> {
        let Some(l) = raw.tracking.as_ref().and_then(|t| t.listen.as_ref()) else {
            return Ok(None);
        };
        let addr = l.get_ref().parse().map_err(|_| {
            self.err(
                l.span(),
                format!(
                    "tracking listen {:?}: expected HOST:PORT (an IP address)",
                    l.get_ref()
                ),
            )
        })?;
        Ok(Some(addr))
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
