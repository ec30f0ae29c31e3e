//! The agent side's exec configuration (`ferry agent --exec-config FILE`):
//! where the exec server listens, who may call it (named callers with
//! bearer tokens), what they may run (the allow-list), and where every
//! request is logged. See docs/update-runbook.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::allow::{AllowEntry, Pattern};
use crate::error::{ConfigErrors, FleetError, Result};

/// Shortest caller token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// A checked exec configuration.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    pub listen: SocketAddr,
    /// JSON lines, appended: who ran what, when, and how it ended.
    pub audit_log: PathBuf,
    /// Caller name -> token.
    pub callers: BTreeMap<String, String>,
    pub allow: Vec<AllowEntry>,
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
}

/// Default longest run of a command.
const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Reads a token given inline or in a file (relative to `base`).
pub(crate) fn read_token(
    errs: &ConfigErrors<'_>,
    base: &Path,
    token: &Option<Spanned<String>>,
    token_file: &Option<Spanned<String>>,
    whole: std::ops::Range<usize>,
    what: &str,
) -> Result<String> {
    let t = match (token, token_file) {
        (Some(t), None) => t.get_ref().clone(),
        (None, Some(f)) => {
            let p = base.join(f.get_ref());
            std::fs::read_to_string(&p)
                .map_err(|e| errs.at(f.span(), format!("token_file {}: {e}", p.display())))?
                .trim()
                .to_string()
        }
        (Some(t), Some(_)) => return Err(errs.at(t.span(), "set token or token_file, not both")),
        (None, None) => {
            return Err(errs.at(whole, format!("{what}: missing token (or token_file)")))
        }
    };
    if t.len() < MIN_TOKEN_LEN {
        let span = token
            .as_ref()
            .or(token_file.as_ref())
            .map_or(whole, |s| s.span());
        return Err(errs.at(
            span,
            format!("{what}: the token must be at least {MIN_TOKEN_LEN} characters"),
        ));
    }
    Ok(t)
}

pub(crate) fn duration(
    errs: &ConfigErrors<'_>,
    s: &Spanned<String>,
    what: &str,
) -> Result<Duration> {
    ferry_config::parse_duration(s.get_ref()).map_err(|e| errs.at(s.span(), format!("{what}: {e}")))
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
        let mut callers = BTreeMap::new();
        for (name, c) in &raw.callers {
            let token = read_token(
                &errs,
                base,
                &c.token,
                &c.token_file,
                name.span(),
                &format!("callers.{}", name.get_ref()),
            )?;
            if callers.values().any(|t| *t == token) {
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
        let mut allow = Vec::new();
        for (i, e) in raw.allow.iter().enumerate() {
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
            allow.push(AllowEntry {
                patterns,
                cwd,
                shell: e.shell,
                callers: e.callers.iter().map(|c| c.get_ref().clone()).collect(),
                max_timeout: match &e.max_timeout {
                    Some(s) => duration(&errs, s, &format!("{what}.max_timeout"))?,
                    None => max_default,
                },
            });
        }
        Ok(ExecConfig {
            listen,
            audit_log,
            callers,
            allow,
        })
    }
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
        assert_eq!(c.callers["ops"], "0123456789abcdef0");
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
}
