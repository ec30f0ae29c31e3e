//! The agent side's exec configuration (`ferry agent --exec-config FILE`):
//! where the exec server listens, who may call it (named callers with
//! bearer tokens), what they may run (the allow-list), and where every
//! request is logged, and the server's limits (`[limits]`). See
//! docs/update-runbook.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_conf::{SecretKeys, MIN_TOKEN_CHARS};
use ferry_secret::Secret;
use serde::Deserialize;
use toml::Spanned;

use crate::allow::{AllowEntry, Pattern, Wildcards};
use crate::error::{ConfigErrors, FleetError, Result};

/// A checked exec configuration.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    pub listen: SocketAddr,
    /// JSON lines, appended: who ran what, when, and how it ended.
    pub audit_log: PathBuf,
    /// Caller name -> token.
    pub callers: BTreeMap<String, Secret>,
    pub allow: Vec<AllowEntry>,
    pub limits: Limits,
}

/// What the exec server lets any one client hold, and for how long. Every
/// connection, request and command has a bound; the defaults suit a server
/// that runs a few deployment commands at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections; one more is answered 503 and closed at once.
    pub max_connections: usize,
    /// Commands running at once; one more is answered 429.
    pub max_running: usize,
    /// From accept (or the end of the previous response) to a request's
    /// complete head: a half-sent request or an idle keep-alive connection
    /// is closed after it.
    pub header_timeout: Duration,
    /// Reading a request's body (an argument vector, at most 64 KiB).
    pub body_timeout: Duration,
    /// A response write that makes no progress this long closes the
    /// connection (a caller that stopped reading), which stops its command.
    pub write_timeout: Duration,
    /// Unauthenticated requests are counted and written to the audit log
    /// as one record per this interval (not one synced write each).
    pub unauthenticated_every: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            max_running: 8,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            unauthenticated_every: Duration::from_secs(10),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Spanned<String>,
    audit_log: Spanned<String>,
    #[serde(default)]
    max_timeout: Option<Spanned<String>>,
    #[serde(default)]
    callers: BTreeMap<Spanned<String>, RawCaller>,
    #[serde(default)]
    allow: Vec<RawEntry>,
    #[serde(default)]
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<Spanned<i64>>,
    max_running: Option<Spanned<i64>>,
    header_timeout: Option<Spanned<String>>,
    body_timeout: Option<Spanned<String>>,
    write_timeout: Option<Spanned<String>>,
    unauthenticated_every: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    argv: Spanned<Vec<Spanned<String>>>,
    cwd: Option<Spanned<String>>,
    #[serde(default)]
    shell: bool,
    #[serde(default)]
    callers: Vec<Spanned<String>>,
    max_timeout: Option<Spanned<String>>,
    #[serde(default)]
    wildcard_options: bool,
    #[serde(default)]
    wildcard_dotdot: bool,
}

/// Default longest run of a command.
const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// A token (or key) given as `<key>` or `<key>_file`, under ferry-conf's
/// rule, with its minimum length: it authenticates a caller or keys a protocol.
pub(crate) fn token_keys<'a>(
    owner: &'a str,
    key: &'a str,
    inline: &'a Option<Spanned<String>>,
    file: &'a Option<Spanned<String>>,
) -> SecretKeys<'a> {
    SecretKeys {
        owner,
        key,
        inline: inline.as_ref(),
        file: file.as_ref(),
        min_chars: MIN_TOKEN_CHARS,
    }
}

pub(crate) fn duration(
    errs: &ConfigErrors<'_>,
    s: &Spanned<String>,
    what: &str,
) -> Result<Duration> {
    ferry_conf::parse_duration(s.get_ref()).map_err(|e| errs.at(s.span(), format!("{what}: {e}")))
}

impl ExecConfig {
    pub fn load(path: &Path) -> Result<ExecConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FleetError::io("read exec config", path, e))?;
        ExecConfig::parse(&text, path)
    }

    /// Checks config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<ExecConfig> {
        let errs = ConfigErrors { text, path };
        let raw: Raw = toml::from_str(text).map_err(|e| errs.toml(e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let listen: SocketAddr = raw.listen.get_ref().parse().map_err(|e| {
            errs.at(
                raw.listen.span(),
                format!(
                    "listen: {:?} is not an address:port ({e})",
                    raw.listen.get_ref()
                ),
            )
        })?;
        if raw.audit_log.get_ref().is_empty() {
            return Err(errs.at(raw.audit_log.span(), "audit_log: empty path"));
        }
        let audit_log = base.join(raw.audit_log.get_ref());
        let max_default = match &raw.max_timeout {
            Some(s) => duration(&errs, s, "max_timeout")?,
            None => DEFAULT_MAX_TIMEOUT,
        };
        let callers = parse_callers(&errs, base, &raw.callers)?;
        let allow = raw
            .allow
            .iter()
            .enumerate()
            .map(|(i, e)| parse_entry(&errs, base, &callers, max_default, i, e))
            .collect::<Result<Vec<_>>>()?;
        let limits = match &raw.limits {
            Some(l) => parse_limits(&errs, l)?,
            None => Limits::default(),
        };
        Ok(ExecConfig {
            listen,
            audit_log,
            callers,
            allow,
            limits,
        })
    }
}

/// `[callers.NAME]`: each caller's token; two callers may not share one.
fn parse_callers(
    errs: &ConfigErrors<'_>,
    base: &Path,
    raw: &BTreeMap<Spanned<String>, RawCaller>,
) -> Result<BTreeMap<String, Secret>> {
    let mut callers = BTreeMap::new();
    for (name, c) in raw {
        let owner = format!("callers.{}", name.get_ref());
        let token = token_keys(&owner, "token", &c.token, &c.token_file)
            .required(base, name.span())
            .map_err(|e| errs.locate(e))?;
        if callers
            .values()
            .any(|t: &Secret| t.matches(token.expose().as_bytes()))
        {
            return Err(errs.at(
                name.span(),
                format!(
                    "callers.{}: same token as another caller (the audit log could not tell them apart)",
                    name.get_ref()
                ),
            ));
        }
        callers.insert(name.get_ref().clone(), token);
    }
    if callers.is_empty() {
        return Err(errs.at(
            0..0,
            "no [callers.NAME] defined: nobody could call this agent",
        ));
    }
    Ok(callers)
}

/// One `[[allow]]` entry: its argument patterns, who may run it, for how long.
fn parse_entry(
    errs: &ConfigErrors<'_>,
    base: &Path,
    callers: &BTreeMap<String, Secret>,
    max_default: Duration,
    i: usize,
    e: &RawEntry,
) -> Result<AllowEntry> {
    let what = format!("allow[{i}]");
    let args = e.argv.get_ref();
    if args.is_empty() {
        return Err(errs.at(e.argv.span(), format!("{what}: empty argv")));
    }
    let mut patterns = Vec::with_capacity(args.len());
    for (k, a) in args.iter().enumerate() {
        let p = Pattern::parse(a.get_ref(), k + 1 == args.len())
            .map_err(|m| errs.at(a.span(), format!("{what}.argv[{k}]: {m}")))?;
        if k == 0 && !p.is_literal() {
            return Err(errs.at(
                a.span(),
                format!("{what}.argv[0]: the program must be named exactly"),
            ));
        }
        if let Pattern::Prefix(pre) = &p {
            if !e.wildcard_dotdot && pre.split('/').any(|c| c == "..") {
                return Err(errs.at(
                    a.span(),
                    format!("{what}.argv[{k}]: the prefix has a `..` component, which a wildcard never admits; set wildcard_dotdot = true if that is meant"),
                ));
            }
        }
        patterns.push(p);
    }
    if e.shell && !patterns.iter().all(Pattern::is_literal) {
        return Err(errs.at(
            e.argv.span(),
            format!("{what}: a shell entry must be all literals (a caller's argument would reach the shell)"),
        ));
    }
    for c in &e.callers {
        if !callers.contains_key(c.get_ref()) {
            return Err(errs.at(
                c.span(),
                format!("{what}.callers: unknown caller {:?}", c.get_ref()),
            ));
        }
    }
    let cwd = match &e.cwd {
        Some(c) if c.get_ref().is_empty() => {
            return Err(errs.at(c.span(), format!("{what}.cwd: empty path")))
        }
        Some(c) => Some(base.join(c.get_ref())),
        None => None,
    };
    Ok(AllowEntry {
        patterns,
        wildcards: Wildcards {
            options: e.wildcard_options,
            dotdot: e.wildcard_dotdot,
        },
        cwd,
        shell: e.shell,
        callers: e.callers.iter().map(|c| c.get_ref().clone()).collect(),
        max_timeout: match &e.max_timeout {
            Some(s) => duration(errs, s, &format!("{what}.max_timeout"))?,
            None => max_default,
        },
    })
}

/// `[limits]`: each key optional, defaults from [`Limits::default`].
fn parse_limits(errs: &ConfigErrors<'_>, raw: &RawLimits) -> Result<Limits> {
    let mut l = Limits::default();
    let count = |v: &Option<Spanned<i64>>, what: &str, max: i64, out: &mut usize| -> Result<()> {
        if let Some(v) = v {
            let n = *v.get_ref();
            if !(1..=max).contains(&n) {
                return Err(errs.at(
                    v.span(),
                    format!("limits.{what}: {n} is not between 1 and {max}"),
                ));
            }
            *out = n as usize;
        }
        Ok(())
    };
    count(
        &raw.max_connections,
        "max_connections",
        65_536,
        &mut l.max_connections,
    )?;
    count(&raw.max_running, "max_running", 4_096, &mut l.max_running)?;
    let time = |v: &Option<Spanned<String>>, what: &str, out: &mut Duration| -> Result<()> {
        if let Some(v) = v {
            let d = duration(errs, v, &format!("limits.{what}"))?;
            if d.is_zero() {
                return Err(errs.at(
                    v.span(),
                    format!("limits.{what}: must be longer than 0 (a bound that never waits would refuse everything)"),
                ));
            }
            *out = d;
        }
        Ok(())
    };
    time(&raw.header_timeout, "header_timeout", &mut l.header_timeout)?;
    time(&raw.body_timeout, "body_timeout", &mut l.body_timeout)?;
    time(&raw.write_timeout, "write_timeout", &mut l.write_timeout)?;
    time(
        &raw.unauthenticated_every,
        "unauthenticated_every",
        &mut l.unauthenticated_every,
    )?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ExecConfig> {
        ExecConfig::parse(text, Path::new("/etc/ferry/exec.toml"))
    }

    const OK: &str = r#"
listen = "127.0.0.1:7801"
audit_log = "audit.jsonl"
[callers.ops]
token = "0123456789abcdef0"
[[allow]]
argv = ["bin/magento", "setup:*", "..."]
cwd = "/srv/shop"
"#;

    #[test]
    fn a_valid_config() {
        let c = parse(OK).unwrap();
        assert_eq!(c.audit_log, Path::new("/etc/ferry/audit.jsonl"));
        assert_eq!(c.allow.len(), 1);
        assert!(c.callers["ops"].matches(b"0123456789abcdef0"));
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn limits_and_wildcard_keys() {
        let c = parse(&format!(
            "{OK}wildcard_options = true\n[limits]\nmax_running = 2\nheader_timeout = \"1s\"\n"
        ))
        .unwrap();
        assert_eq!(c.limits.max_running, 2);
        assert_eq!(c.limits.header_timeout, Duration::from_secs(1));
        assert_eq!(c.limits.max_connections, 64);
        assert!(c.allow[0].wildcards.options && !c.allow[0].wildcards.dotdot);
        let e = parse(&format!("{OK}[limits]\nmax_running = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":10:") && e.contains("limits.max_running"),
            "{e}"
        );
        let e = parse(&format!("{OK}[limits]\nbody_timeout = \"0s\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.body_timeout"), "{e}");
        let dotdot = OK.replace("\"setup:*\"", "\"../*\"");
        let e = parse(&dotdot).unwrap_err().to_string();
        assert!(e.contains(":7:") && e.contains("wildcard_dotdot"), "{e}");
    }

    #[test]
    fn a_token_file_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("ops.token");
        std::fs::write(&tok, "0123456789abcdef0\n").unwrap();
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = OK.replace(
            "token = \"0123456789abcdef0\"",
            "token_file = \"ops.token\"",
        );
        let path = dir.path().join("exec.toml");
        let e = ExecConfig::parse(&text, &path).unwrap_err().to_string();
        assert!(
            e.contains(":5:") && e.contains("0644") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = ExecConfig::parse(&text, &path).unwrap();
        assert!(c.callers["ops"].matches(b"0123456789abcdef0"));
    }

    #[test]
    fn errors_name_the_line() {
        let bad = OK.replace(r#""setup:*", "...""#, r#""...", "setup:*""#);
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.starts_with("/etc/ferry/exec.toml:7:"), "{e}");
        assert!(e.contains("must be the last"), "{e}");
        let shell = OK.replace("cwd =", "shell = true\ncwd =");
        let e = parse(&shell).unwrap_err().to_string();
        assert!(e.contains("all literals"), "{e}");
        let short = OK.replace("0123456789abcdef0", "short");
        let e = parse(&short).unwrap_err().to_string();
        assert!(e.contains(":5:") && e.contains("at least 16"), "{e}");
        let unknown = OK.replace("cwd =", "callers = [\"nobody\"]\ncwd =");
        let e = parse(&unknown).unwrap_err().to_string();
        assert!(e.contains("unknown caller \"nobody\""), "{e}");
        let e = parse("listen = 3").unwrap_err().to_string();
        assert!(e.contains(":1:"), "{e}");
    }

    /// Columns are characters, as editors count them (ferry-conf's rule),
    /// and both ways of giving a token at once are refused.
    #[test]
    fn columns_are_characters_and_one_token_source_is_allowed() {
        let text = "listen = \"127.0.0.1:7801\"\naudit_log = \"a.jsonl\"\n\
                    callers = { \"é\" = { token = \"short\" } }\n";
        let e = parse(text).unwrap_err().to_string();
        // Byte 30, character 29.
        assert!(
            e.contains(":3:29: callers.é: the token must be at least 16"),
            "{e}"
        );
        let both = OK.replace(
            "token = \"0123456789abcdef0\"",
            "token = \"0123456789abcdef0\"\ntoken_file = \"ops.token\"",
        );
        let e = parse(&both).unwrap_err().to_string();
        assert!(
            e.contains(":6:") && e.contains("token and token_file are mutually exclusive"),
            "{e}"
        );
    }

    /// examples/exec.toml stays a valid config whose limits are the
    /// defaults it claims (token files replaced by inline tokens).
    #[test]
    fn the_example_parses() {
        let text = include_str!("../../../examples/exec.toml")
            .replace(
                "token_file = \"/etc/ferry/deploy.token\"",
                "token = \"deploy-token-0123456789\"",
            )
            .replace(
                "token_file = \"/etc/ferry/oncall.token\"",
                "token = \"oncall-token-0123456789\"",
            );
        let c = ExecConfig::parse(&text, Path::new("/etc/ferry/exec.toml")).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.callers.len(), 2);
        assert_eq!(c.allow.len(), 5);
    }
}
