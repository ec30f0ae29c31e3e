//! The agent's allow-list: which argument vectors a caller may run.
//!
//! An entry is a vector of patterns, one per argument:
//! - a literal matches exactly that argument;
//! - `*` matches any one argument;
//! - `prefix*` matches an argument that starts with `prefix`;
//! - `...` as the last pattern matches any number (zero included) of
//!   further arguments.
//!
//! The first entry that matches decides (its `cwd`, `shell`, `callers`,
//! `max_timeout`). A `shell` entry must be all literals: the command line is
//! then handed to `/bin/sh -c` as written in the config, and a pattern would
//! let a caller's argument reach the shell.

use std::path::PathBuf;
use std::time::Duration;

/// One pattern of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Literal(String),
    AnyOne,
    Prefix(String),
    /// `...`: any further arguments; only last.
    Rest,
}

impl Pattern {
    /// Parses one pattern; `last` says whether `...` is allowed here.
    pub fn parse(s: &str, last: bool) -> Result<Pattern, String> {
        match s {
            "" => Err("an empty pattern matches nothing; remove it".into()),
            "*" => Ok(Pattern::AnyOne),
            "..." if last => Ok(Pattern::Rest),
            "..." => Err("`...` (any further arguments) must be the last pattern".into()),
            _ => match s.strip_suffix('*') {
                Some(p) if !p.contains('*') => Ok(Pattern::Prefix(p.to_string())),
                _ if s.contains('*') => Err(format!(
                    "{s:?}: `*` is allowed alone or at the end of a pattern only"
                )),
                _ => Ok(Pattern::Literal(s.to_string())),
            },
        }
    }

    fn matches(&self, arg: &str) -> bool {
        match self {
            Pattern::Literal(l) => l == arg,
            Pattern::AnyOne => true,
            Pattern::Prefix(p) => arg.starts_with(p.as_str()),
            Pattern::Rest => true,
        }
    }

    pub fn is_literal(&self) -> bool {
        matches!(self, Pattern::Literal(_))
    }
}

/// One allow-list entry, checked.
#[derive(Clone, Debug)]
pub struct AllowEntry {
    pub patterns: Vec<Pattern>,
    /// Working directory of the command (the agent's otherwise).
    pub cwd: Option<PathBuf>,
    /// Run through `/bin/sh -c` (all-literal entries only).
    pub shell: bool,
    /// Callers allowed to run it; empty: every authenticated caller.
    pub callers: Vec<String>,
    /// Longest run allowed; a caller's longer timeout is cut to it.
    pub max_timeout: Duration,
}

impl AllowEntry {
    /// Whether `argv` matches this entry's patterns.
    pub fn matches(&self, argv: &[String]) -> bool {
        let mut args = argv.iter();
        for p in &self.patterns {
            if *p == Pattern::Rest {
                return true;
            }
            match args.next() {
                Some(a) if p.matches(a) => {}
                _ => return false,
            }
        }
        args.next().is_none()
    }

    /// The command line as written in the config (for `shell` entries).
    pub fn shell_line(&self) -> String {
        self.patterns
            .iter()
            .filter_map(|p| match p {
                Pattern::Literal(l) => Some(l.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Why a request is not run.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NotAllowed,
    CallerNotAllowed,
}

/// The first entry matching `argv` that `caller` may use.
pub fn decide<'a>(
    entries: &'a [AllowEntry],
    caller: &str,
    argv: &[String],
) -> Result<&'a AllowEntry, Refusal> {
    let mut matched_for_other = false;
    for e in entries.iter().filter(|e| e.matches(argv)) {
        if e.callers.is_empty() || e.callers.iter().any(|c| c == caller) {
            return Ok(e);
        }
        matched_for_other = true;
    }
    Err(if matched_for_other {
        Refusal::CallerNotAllowed
    } else {
        Refusal::NotAllowed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &[&str]) -> AllowEntry {
        let n = p.len();
        AllowEntry {
            patterns: p
                .iter()
                .enumerate()
                .map(|(i, s)| Pattern::parse(s, i + 1 == n).unwrap())
                .collect(),
            cwd: None,
            shell: false,
            callers: vec![],
            max_timeout: Duration::from_secs(60),
        }
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn literal_entries_match_exactly() {
        let e = entry(&["bin/magento", "cache:flush"]);
        assert!(e.matches(&argv(&["bin/magento", "cache:flush"])));
        assert!(!e.matches(&argv(&["bin/magento", "cache:flush", "x"])));
        assert!(!e.matches(&argv(&["bin/magento"])));
        assert!(!e.matches(&argv(&["bin/magento", "cache:clean"])));
    }

    #[test]
    fn wildcards_prefixes_and_rest() {
        let e = entry(&["bin/magento", "setup:*", "..."]);
        assert!(e.matches(&argv(&["bin/magento", "setup:upgrade"])));
        assert!(e.matches(&argv(&["bin/magento", "setup:di:compile", "-v", "--x"])));
        assert!(!e.matches(&argv(&["bin/magento", "admin:user:create"])));
        let e = entry(&["echo", "*"]);
        assert!(e.matches(&argv(&["echo", "anything; rm -rf /"])));
        assert!(!e.matches(&argv(&["echo"])));
        assert!(!e.matches(&argv(&["echo", "a", "b"])));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Pattern::parse("...", false).is_err());
        assert!(Pattern::parse("a*b", true).is_err());
        assert!(Pattern::parse("", true).is_err());
        assert_eq!(
            Pattern::parse("setup:*", false).unwrap(),
            Pattern::Prefix("setup:".into())
        );
    }

    #[test]
    fn callers_restrict_entries() {
        let mut e = entry(&["reboot"]);
        e.callers = vec!["root-ops".into()];
        let entries = vec![e];
        assert!(decide(&entries, "root-ops", &argv(&["reboot"])).is_ok());
        assert_eq!(
            decide(&entries, "deploy", &argv(&["reboot"])).unwrap_err(),
            Refusal::CallerNotAllowed
        );
        assert_eq!(
            decide(&entries, "deploy", &argv(&["halt"])).unwrap_err(),
            Refusal::NotAllowed
        );
    }
}
