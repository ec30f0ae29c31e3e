//! The agent's allow-list: which argument vectors a caller may run.
//!
//! An entry is a vector of patterns, matched one argument at a time:
//! - a literal matches exactly that argument;
//! - `*` matches any one argument;
//! - `prefix*` matches an argument that starts with `prefix`;
//! - `...` as the last pattern matches any number (zero included) of
//!   further arguments.
//!
//! What a wildcard (`*`, `prefix*`, `...`) admits is narrowed by default,
//! because a prefix is not a directory and a flag is not a word:
//! - no argument it admits has a `..` path component (`cat /srv/www/*` must
//!   not reach `/srv/www/../../etc/shadow`), unless the entry says
//!   `wildcard_dotdot = true`;
//! - no argument it admits starts with `-` (`bin/magento cache:* ...` must
//!   not reach `cache:clean --help`, nor `setup:* ...` `setup:uninstall -n`),
//!   unless the entry says `wildcard_options = true`. A `-` written in the
//!   config (`--level=*`, a literal `-f`) is the author's, and allowed.
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

    fn matches(&self, arg: &str, w: Wildcards) -> bool {
        match self {
            Pattern::Literal(l) => l == arg,
            Pattern::AnyOne | Pattern::Rest => w.admits(arg, ""),
            Pattern::Prefix(p) => arg.starts_with(p.as_str()) && w.admits(arg, p),
        }
    }

    pub fn is_literal(&self) -> bool {
        matches!(self, Pattern::Literal(_))
    }
}

/// What an entry lets its wildcards admit beyond plain words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wildcards {
    /// Arguments starting with `-` (options).
    pub options: bool,
    /// Arguments with a `..` path component.
    pub dotdot: bool,
}

impl Wildcards {
    /// Whether a wildcard may stand for `arg`, whose literal start
    /// `prefix` the config wrote. The `..` check looks at the whole
    /// argument: a prefix ending in `.` plus a matched `./x` makes one.
    fn admits(self, arg: &str, prefix: &str) -> bool {
        if !self.options && arg.starts_with('-') && !prefix.starts_with('-') {
            return false;
        }
        self.dotdot || !arg.split('/').any(|c| c == "..")
    }
}

/// One allow-list entry, checked.
#[derive(Clone, Debug)]
pub struct AllowEntry {
    pub patterns: Vec<Pattern>,
    /// What the wildcards may admit beyond plain words (see the module doc).
    pub wildcards: Wildcards,
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
    /// Whether `argv` matches this entry's patterns, argument by argument.
    pub fn matches(&self, argv: &[String]) -> bool {
        let mut args = argv.iter();
        for p in &self.patterns {
            if *p == Pattern::Rest {
                return args.all(|a| p.matches(a, self.wildcards));
            }
            match args.next() {
                Some(a) if p.matches(a, self.wildcards) => {}
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
            wildcards: Wildcards::default(),
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
        assert!(e.matches(&argv(&[
            "bin/magento",
            "setup:di:compile",
            "en_US",
            "de_DE"
        ])));
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

    /// Issue 15 #13: `cat /srv/www/*` admitted
    /// `cat /srv/www/../../../etc/shadow`.
    #[test]
    fn a_prefix_wildcard_does_not_climb_out_with_dotdot() {
        let e = entry(&["cat", "/srv/www/*"]);
        assert!(e.matches(&argv(&["cat", "/srv/www/index.html"])));
        assert!(e.matches(&argv(&["cat", "/srv/www/a..b/..c/d.."])));
        for bad in [
            "/srv/www/../../../etc/shadow",
            "/srv/www/..",
            "/srv/www/a/../../etc",
            "/srv/www/./../x",
        ] {
            assert!(!e.matches(&argv(&["cat", bad])), "{bad}");
        }
        // A prefix ending in `.` plus a matched `./x` is a `..` component.
        let e = entry(&["cat", "/srv/www/.*"]);
        assert!(!e.matches(&argv(&["cat", "/srv/www/../etc/shadow"])));
        assert!(e.matches(&argv(&["cat", "/srv/www/.htaccess"])));
        // `*` and `...` are wildcards too.
        let e = entry(&["ls", "*", "..."]);
        assert!(!e.matches(&argv(&["ls", ".."])));
        assert!(!e.matches(&argv(&["ls", "a", "b/../../c"])));
        let mut e = entry(&["cat", "/srv/www/*"]);
        e.wildcards.dotdot = true;
        assert!(e.matches(&argv(&["cat", "/srv/www/../x"])));
    }

    /// Issue 15 #13: the documented `setup:* ...` admitted
    /// `setup:uninstall -n`; a wildcard no longer admits an option.
    #[test]
    fn a_wildcard_does_not_admit_an_option() {
        let e = entry(&["bin/magento", "setup:*", "..."]);
        assert!(!e.matches(&argv(&["bin/magento", "setup:uninstall", "-n"])));
        assert!(!e.matches(&argv(&["bin/magento", "setup:upgrade", "--help"])));
        let e = entry(&["rm", "*"]);
        assert!(!e.matches(&argv(&["rm", "-rf"])));
        assert!(!e.matches(&argv(&["rm", "-"])));
        // A `-` the config wrote is the author's.
        let e = entry(&[
            "bin/magento",
            "setup:static-content:deploy",
            "-f",
            "--jobs=*",
        ]);
        assert!(e.matches(&argv(&[
            "bin/magento",
            "setup:static-content:deploy",
            "-f",
            "--jobs=4"
        ])));
        assert!(!e.matches(&argv(&[
            "bin/magento",
            "setup:static-content:deploy",
            "-f",
            "-x"
        ])));
        let mut e = entry(&["echo", "..."]);
        assert!(!e.matches(&argv(&["echo", "-e", "x"])));
        e.wildcards.options = true;
        assert!(e.matches(&argv(&["echo", "-e", "x"])));
        assert!(!e.matches(&argv(&["echo", "../x"])));
    }
}
