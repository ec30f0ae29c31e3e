//! The update runbook file (`ferry update --runbook FILE`): the routers and
//! the pool whose servers are the fleet's, the sites a level-3 update puts
//! in maintenance, the upgrade steps (commands run on the primary, each
//! checked by exit code and optionally over HTTP), and the cache purge.
//! Format: docs/update-runbook.md.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{ConfigErrors, FleetError, Result};
use crate::exec_config::{duration, token_keys};

#[derive(Clone, Debug)]
pub struct Router {
    pub name: String,
    /// Base URL of its admin API, e.g. `http://127.0.0.1:9001`.
    pub admin: String,
    pub token: String,
}

#[derive(Clone, Debug)]
pub struct HttpCheck {
    pub url: String,
    pub host: Option<String>,
    pub status: u16,
    pub contains: Option<String>,
}

#[derive(Clone, Debug)]
pub struct UpgradeStep {
    pub name: String,
    pub argv: Vec<String>,
    /// Touches the database: at level 3 every site is in maintenance while
    /// it runs.
    pub database: bool,
    pub timeout: Duration,
    pub check: Option<HttpCheck>,
}

#[derive(Clone, Debug, Default)]
pub struct Purge {
    /// `host:port` of each Varnish.
    pub varnish: Vec<String>,
    /// `PURGE` or `BAN` (what the VCL understands).
    pub method: String,
    pub paths: Vec<String>,
    pub host: Option<String>,
    /// Run on every server after the Varnish purge (e.g. the application's
    /// own cache flush).
    pub command: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
pub struct Runbook {
    pub routers: Vec<Router>,
    pub pool: String,
    pub sites: Vec<String>,
    pub drain_timeout: Duration,
    /// Compare file content (BLAKE3) in the syncs, not size + mtime.
    pub checksum: bool,
    pub steps: Vec<UpgradeStep>,
    pub purge: Purge,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    pool: Spanned<String>,
    #[serde(default)]
    sites: Vec<Spanned<String>>,
    drain_timeout: Option<Spanned<String>>,
    step_timeout: Option<Spanned<String>>,
    #[serde(default)]
    checksum: bool,
    #[serde(default)]
    routers: Vec<RawRouter>,
    #[serde(default)]
    steps: Vec<RawStep>,
    purge: Option<RawPurge>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouter {
    name: Spanned<String>,
    admin: Spanned<String>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Spanned<String>,
    argv: Spanned<Vec<String>>,
    #[serde(default)]
    database: bool,
    timeout: Option<Spanned<String>>,
    check: Option<RawCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    url: Spanned<String>,
    host: Option<String>,
    status: Option<u16>,
    contains: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurge {
    #[serde(default)]
    varnish: Vec<Spanned<String>>,
    method: Option<Spanned<String>>,
    paths: Option<Vec<Spanned<String>>>,
    host: Option<String>,
    command: Option<Spanned<Vec<String>>>,
}

fn http_url(errs: &ConfigErrors<'_>, s: &Spanned<String>, what: &str) -> Result<String> {
    let u = s.get_ref();
    let rest = u
        .strip_prefix("http://")
        .ok_or_else(|| errs.at(s.span(), format!("{what}: {u:?} must start with http://")))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(errs.at(s.span(), format!("{what}: {u:?} has no host")));
    }
    Ok(u.trim_end_matches('/').to_string())
}

impl Runbook {
    pub fn load(path: &Path) -> Result<(Runbook, String)> {
        let text =
            std::fs::read_to_string(path).map_err(|e| FleetError::io("read runbook", path, e))?;
        Ok((Runbook::parse(&text, path)?, text))
    }

    pub fn parse(text: &str, path: &Path) -> Result<Runbook> {
        let errs = ConfigErrors { text, path };
        let raw: Raw = toml::from_str(text).map_err(|e| errs.toml(e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if raw.pool.get_ref().is_empty() {
            return Err(errs.at(raw.pool.span(), "pool: empty name"));
        }
        let routers = parse_routers(&errs, base, &raw.routers)?;
        if routers.is_empty() {
            return Err(errs.at(0..0, "no [[routers]]: traffic could not be moved"));
        }
        let steps = parse_steps(&errs, &raw)?;
        let purge = match &raw.purge {
            None => Purge::default(),
            Some(p) => parse_purge(&errs, p)?,
        };
        Ok(Runbook {
            routers,
            pool: raw.pool.get_ref().clone(),
            sites: raw.sites.iter().map(|s| s.get_ref().clone()).collect(),
            drain_timeout: match &raw.drain_timeout {
                Some(s) => duration(&errs, s, "drain_timeout")?,
                None => Duration::from_secs(60),
            },
            checksum: raw.checksum,
            steps,
            purge,
        })
    }
}

/// `[[routers]]`: each router's admin API and token.
fn parse_routers(errs: &ConfigErrors<'_>, base: &Path, raw: &[RawRouter]) -> Result<Vec<Router>> {
    let mut routers = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let what = format!("routers[{i}] ({})", r.name.get_ref());
        if routers.iter().any(|o: &Router| o.name == *r.name.get_ref()) {
            return Err(errs.at(
                r.name.span(),
                format!("{what}: a second router with this name"),
            ));
        }
        routers.push(Router {
            name: r.name.get_ref().clone(),
            admin: http_url(errs, &r.admin, &format!("{what}.admin"))?,
            token: token_keys(&what, "token", &r.token, &r.token_file)
                .required(base, r.name.span())
                .map_err(|e| errs.locate(e))?
                .expose()
                .to_string(),
        });
    }
    Ok(routers)
}

/// `[[steps]]`, with `step_timeout` as their default timeout.
fn parse_steps(errs: &ConfigErrors<'_>, raw: &Raw) -> Result<Vec<UpgradeStep>> {
    let default_timeout = match &raw.step_timeout {
        Some(s) => duration(errs, s, "step_timeout")?,
        None => Duration::from_secs(3600),
    };
    let mut steps = Vec::new();
    for (i, s) in raw.steps.iter().enumerate() {
        let what = format!("steps[{i}]");
        let name = s.name.get_ref();
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(errs.at(
                s.name.span(),
                format!("{what}.name: empty or with control characters"),
            ));
        }
        if steps.iter().any(|o: &UpgradeStep| o.name == *name) {
            return Err(errs.at(
                s.name.span(),
                format!("{what}: a second step named {name:?}"),
            ));
        }
        if s.argv.get_ref().is_empty() {
            return Err(errs.at(s.argv.span(), format!("{what}.argv: empty")));
        }
        let check = match &s.check {
            Some(c) => Some(HttpCheck {
                url: http_url(errs, &c.url, &format!("{what}.check.url"))?,
                host: c.host.clone(),
                status: c.status.unwrap_or(200),
                contains: c.contains.clone(),
            }),
            None => None,
        };
        steps.push(UpgradeStep {
            name: name.clone(),
            argv: s.argv.get_ref().clone(),
            database: s.database,
            timeout: match &s.timeout {
                Some(t) => duration(errs, t, &format!("{what}.timeout"))?,
                None => default_timeout,
            },
            check,
        });
    }
    Ok(steps)
}

/// `[purge]`: the caches emptied after an update.
fn parse_purge(errs: &ConfigErrors<'_>, p: &RawPurge) -> Result<Purge> {
    let method = p
        .method
        .as_ref()
        .map_or("PURGE".to_string(), |m| m.get_ref().clone());
    if method != "PURGE" && method != "BAN" {
        let span = p.method.as_ref().map_or(0..0, |m| m.span());
        return Err(errs.at(
            span,
            format!("purge.method: {method:?} is not PURGE or BAN"),
        ));
    }
    let mut varnish = Vec::new();
    for v in &p.varnish {
        if v.get_ref()
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .is_none()
        {
            return Err(errs.at(
                v.span(),
                format!("purge.varnish: {:?} is not host:port", v.get_ref()),
            ));
        }
        varnish.push(v.get_ref().clone());
    }
    let mut paths = Vec::new();
    for s in p.paths.iter().flatten() {
        if !s.get_ref().starts_with('/') {
            return Err(errs.at(
                s.span(),
                format!("purge.paths: {:?} must start with /", s.get_ref()),
            ));
        }
        paths.push(s.get_ref().clone());
    }
    if paths.is_empty() {
        paths.push("/".into());
    }
    if let Some(c) = &p.command {
        if c.get_ref().is_empty() {
            return Err(errs.at(c.span(), "purge.command: empty"));
        }
    }
    Ok(Purge {
        varnish,
        method,
        paths,
        host: p.host.clone(),
        command: p.command.as_ref().map(|c| c.get_ref().clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
pool = "shop"
sites = ["shop.test"]
[[routers]]
name = "r1"
admin = "http://127.0.0.1:9001/"
token = "0123456789abcdef-r1"
[[steps]]
name = "setup:upgrade"
argv = ["bin/magento", "setup:upgrade"]
database = true
[steps.check]
url = "http://127.0.0.1:8081/"
contains = "v2"
[purge]
varnish = ["127.0.0.1:6081"]
method = "BAN"
"#;

    #[test]
    fn a_valid_runbook() {
        let r = Runbook::parse(OK, Path::new("u.toml")).unwrap();
        assert_eq!(r.routers[0].admin, "http://127.0.0.1:9001");
        assert!(r.steps[0].database);
        assert_eq!(r.steps[0].check.as_ref().unwrap().status, 200);
        assert_eq!(r.purge.paths, vec!["/"]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = Runbook::parse(&OK.replace("\"BAN\"", "\"DELETE\""), Path::new("u.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("u.toml:17:") && e.contains("PURGE or BAN"),
            "{e}"
        );
        let e = Runbook::parse(
            &OK.replace("http://127.0.0.1:8081/", "127.0.0.1:8081"),
            Path::new("u.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("u.toml:13:") && e.contains("http://"), "{e}");
        let e = Runbook::parse(
            &OK.replace("argv = [\"bin/magento\", \"setup:upgrade\"]", "argv = []"),
            Path::new("u.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("steps[0].argv: empty"), "{e}");
    }
}
