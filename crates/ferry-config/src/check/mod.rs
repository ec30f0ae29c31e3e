//! Turns the raw TOML form into a checked [`Config`], naming the line of every
//! refused value. One file per section of the config; this one holds the
//! checks every section shares and the order sections are checked in.

mod listeners;
mod passthroughs;
mod pools;
mod router;
mod scale;
mod sites;
mod store;
mod tunnels;

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_conf::{parse_duration, SecretKeys, Source};
use ipnet::IpNet;

use crate::raw::{RawConfig, S};
use crate::{Config, ConfigError, RouterSettings};

const MAX_NAME_LEN: usize = 63;
const MAX_CONNECTIONS: std::ops::RangeInclusive<i64> = 1..=10_000_000;

type Result<T> = std::result::Result<T, ConfigError>;

pub(crate) fn parse(text: &str, origin: &Path) -> Result<Config> {
    let cx = Cx {
        src: Source { path: origin, text },
        base: origin.parent().unwrap_or(Path::new("")),
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| cx.src.toml(&e))?;
    cx.config(raw)
}

/// What every check needs to report a position and to resolve a path.
struct Cx<'a> {
    src: Source<'a>,
    /// Directory of the config file: relative paths inside it are relative to it,
    /// not to the process's working directory, so the config means the same thing
    /// wherever `ferry` is started from.
    base: &'a Path,
}

impl From<ferry_conf::Invalid> for ConfigError {
    fn from(e: ferry_conf::Invalid) -> ConfigError {
        ConfigError::Invalid {
            path: e.path,
            line: e.line,
            column: e.column,
            message: e.message,
        }
    }
}

impl Cx<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        self.src.error(span, message).into()
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        self.src.line_of(span)
    }

    /// A secret given as `<key>` or `<key>_file` (ferry-conf's rule).
    fn secret(&self, keys: SecretKeys<'_>) -> Result<Option<ferry_secret::Secret>> {
        keys.optional(self.base)
            .map_err(|e| self.src.locate(e).into())
    }

    fn resolve(&self, path: &str) -> PathBuf {
        // `join` keeps an absolute `path` as it is.
        self.base.join(path)
    }

    /// Reads a file named by the config (key `what`), reporting the key's line if
    /// it cannot: a missing maintenance page must stop the start, not show up as
    /// an empty 503 later.
    fn read_named_file(&self, what: &str, name: &S<String>) -> Result<String> {
        ferry_conf::read_named_file(self.base, what, name).map_err(|e| self.src.locate(e).into())
    }

    fn duration(
        &self,
        what: &str,
        value: Option<&S<String>>,
        default: Duration,
    ) -> Result<Duration> {
        match value {
            None => Ok(default),
            Some(v) => parse_duration(v.get_ref())
                .map_err(|e| self.error(v.span(), format!("{what}: {e}"))),
        }
    }

    fn positive_duration(
        &self,
        what: &str,
        value: Option<&S<String>>,
        default: Duration,
    ) -> Result<Duration> {
        let d = self.duration(what, value, default)?;
        match value {
            Some(v) if d.is_zero() => Err(self.error(v.span(), format!("{what} must be above 0"))),
            _ => Ok(d),
        }
    }

    fn ranged(
        &self,
        what: &str,
        value: Option<&S<i64>>,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> Result<i64> {
        match value {
            None => Ok(default),
            Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(self.error(
                v.span(),
                format!(
                    "{what} {} is out of range {}..={}",
                    v.get_ref(),
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    /// Names of routers, pools, remotes and servers end up in placements
    /// (`pool:NAME`), admin API paths and metric labels, so they stay plain.
    fn name(&self, kind: &str, name: &S<String>) -> Result<String> {
        let n = name.get_ref();
        let plain = n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if n.is_empty() || n.len() > MAX_NAME_LEN || !plain {
            return Err(self.error(
                name.span(),
                format!(
                    "{kind} name {n:?} must be 1 to {MAX_NAME_LEN} characters among a-z, 0-9, '-' and '_'"
                ),
            ));
        }
        Ok(n.clone())
    }

    fn socket_addr(&self, what: &str, value: &S<String>) -> Result<SocketAddr> {
        let v = value.get_ref();
        v.parse().map_err(|_| {
            let names_a_host = v.rsplit_once(':').is_some_and(|(host, _)| {
                !host.starts_with('[')
                    && host.parse::<IpAddr>().is_err()
                    && host.bytes().any(|b| b.is_ascii_alphabetic())
            });
            let hint = if names_a_host {
                " (host names are not accepted: write an IP address, e.g. \"127.0.0.1:8081\" or \"[::1]:80\")"
            } else {
                " (expected IP:PORT, e.g. \"127.0.0.1:8081\" or \"[::1]:80\")"
            };
            self.error(value.span(), format!("{what} {v:?} is not a socket address{hint}"))
        })
    }

    fn config(&self, raw: RawConfig) -> Result<Config> {
        // Sections are checked in the order they usually appear in the file, so
        // the first error reported is the first one a reader meets.
        let router = self.router(&raw.router)?;
        let raw_listener_tls: Vec<Range<usize>> = raw
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref().filter(|t| *t.get_ref()).map(|t| t.span()))
            .collect();
        let listeners = self.listeners(raw.listeners)?;
        let admin = match raw.admin {
            Some(a) => Some(self.admin(a, &listeners)?),
            None => None,
        };
        let pools = self.pools(raw.pools)?;
        let pool_names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        let remotes = self.remotes(raw.remotes, &router.name, &listeners, &pool_names)?;
        let sites = self.sites(raw.sites, &pool_names, &remotes)?;
        let (store, etcd) = self.store(
            raw.store.as_ref(),
            raw.router.store.as_ref().zip(router.store.clone()),
        )?;
        let router = RouterSettings {
            default_site: self.default_site(raw.router.default_site.as_ref(), &sites)?,
            store,
            ..router
        };
        let tunnels = self.tunnels(raw.tunnels, &listeners, admin.as_ref())?;
        let passthroughs =
            self.passthroughs(raw.passthroughs, &listeners, admin.as_ref(), &tunnels)?;
        let tls = self.tls(raw.tls.as_ref(), &raw_listener_tls)?;
        Ok(Config {
            router,
            admin,
            listeners,
            pools,
            remotes,
            sites,
            tunnels,
            passthroughs,
            tls,
            etcd,
        })
    }

    /// An optional connection cap (`None` when not set).
    fn connection_cap(&self, what: &str, value: Option<&S<i64>>) -> Result<Option<usize>> {
        match value {
            None => Ok(None),
            // Range-checked to 1..=10,000,000: fits any usize.
            Some(v) => Ok(Some(
                self.ranged(what, Some(v), MAX_CONNECTIONS, 0)? as usize
            )),
        }
    }

    /// A network (`10.0.0.0/8`) or one address, for `what`.
    fn network_of(&self, what: &str, net: &S<String>) -> Result<IpNet> {
        let s = net.get_ref();
        if let Ok(n) = s.parse::<IpNet>() {
            return Ok(n);
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(IpNet::from(ip));
        }
        Err(self.error(
            net.span(),
            format!(
                "{what}: {s:?} is neither a network (\"10.0.0.0/8\", \"2001:db8::/32\") nor an IP address"
            ),
        ))
    }
}

/// Shared with the admin API and etcd endpoints (ferry-conf).
pub use ferry_conf::check_host_port;
