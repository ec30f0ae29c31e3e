//! `[router] sites_file`: a bulk list of sites that `ferry proxy` loads at
//! start, before its listeners open (what a map file is to HAProxy). One site
//! a line, fields separated by spaces or tabs:
//!
//! ```text
//! # host          placement    [state]        [epoch]
//! shop.example    pool:web
//! blog.example    pool:web     maintenance    3
//! *.example.org   remote:dc2   active         7
//! ```
//!
//! `state` is `active` (the default), `maintenance` or `frozen`; `epoch`
//! defaults to 0, as for `[[site]]`. Blank lines and lines starting with `#`
//! are skipped. The sites are those of `[[site]]` without extras (no
//! maintenance page, no path rules): a host may not be in both.
//!
//! The file is read whole and checked before anything is applied: every bad
//! line is reported as `file:line:column` (ferry-conf's [`Invalid`]), and one
//! bad line refuses the file. It is read at start only; a reload does not
//! read it again (change sites at run time through the admin API).

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use ferry_conf::Invalid;
use ferry_model::{Epoch, Hostname, Placement, SiteRecord, SiteState};

use crate::Config;

/// At most this many bad lines are listed; the rest are counted.
const MAX_LISTED: usize = 100;

/// Why the sites file was refused. Nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum SitesFileError {
    #[error("sites file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}{}", join_lines(.problems), and_more(*.more))]
    Invalid {
        /// The first bad lines, in file order.
        problems: Vec<Invalid>,
        /// Bad lines beyond those listed.
        more: usize,
    },
}

fn join_lines(problems: &[Invalid]) -> String {
    let lines: Vec<String> = problems.iter().map(Invalid::to_string).collect();
    lines.join("\n")
}

fn and_more(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("\n... and {n} more bad lines")
    }
}

/// Reads the sites file at `path` and checks every line against `config`
/// (placements name its pools or remotes; no host twice, nor in a
/// `[[site]]`). The records come back in host order.
pub fn read_sites_file(path: &Path, config: &Config) -> Result<Vec<SiteRecord>, SitesFileError> {
    let read_err = |source| SitesFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let pools: HashSet<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    let remotes: HashSet<&str> = config.remotes.iter().map(|r| r.name.as_str()).collect();
    let in_config: HashSet<&str> = config.sites.iter().map(|s| s.host.as_str()).collect();
    let mut problems = Vec::new();
    let mut bad = 0usize;
    let mut report = |line: usize, column: usize, message: String| {
        bad += 1;
        if problems.len() < MAX_LISTED {
            problems.push(Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            });
        }
    };
    // (record, line), sorted by host afterwards to find duplicates.
    let mut records: Vec<(SiteRecord, u32)> = Vec::new();
    let mut text = String::new();
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut line_no = 0usize;
    loop {
        text.clear();
        if reader.read_line(&mut text).map_err(read_err)? == 0 {
            break;
        }
        line_no += 1;
        let line = text.trim_end_matches(['\n', '\r']);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(line, &pools, &remotes, &in_config) {
            Ok(record) => records.push((record, line_no as u32)),
            Err((at, message)) => {
                let column = line[..at].chars().count() + 1;
                report(line_no, column, message);
            }
        }
    }
    records.sort_unstable_by(|a, b| a.0.host.cmp(&b.0.host).then(a.1.cmp(&b.1)));
    for pair in records.windows(2) {
        if pair[0].0.host == pair[1].0.host {
            report(
                pair[1].1 as usize,
                1,
                format!(
                    "site {} is listed twice (first at line {})",
                    pair[1].0.host, pair[0].1
                ),
            );
        }
    }
    if bad > 0 {
        // Duplicates were found after the sort: list every problem in file order.
        problems.sort_by_key(|p| p.line);
        return Err(SitesFileError::Invalid {
            more: bad - problems.len(),
            problems,
        });
    }
    Ok(records.into_iter().map(|(r, _)| r).collect())
}

/// One site line; on error, the byte offset of the bad field and why.
fn parse_line(
    line: &str,
    pools: &HashSet<&str>,
    remotes: &HashSet<&str>,
    in_config: &HashSet<&str>,
) -> Result<SiteRecord, (usize, String)> {
    let mut fields = fields(line);
    // The caller skips blank lines: there is a first field.
    let (at, raw_host) = fields.next().unwrap_or((0, ""));
    let host =
        Hostname::parse(raw_host).map_err(|e| (at, format!("bad host {raw_host:?}: {e}")))?;
    if in_config.contains(host.as_str()) {
        return Err((at, format!("site {host} is also a [[site]] of the config")));
    }
    let Some((at, raw_placement)) = fields.next() else {
        return Err((
            line.len(),
            format!("site {host}: no placement (pool:NAME or remote:NAME)"),
        ));
    };
    let placement = Placement::parse(raw_placement).ok_or_else(|| {
        (
            at,
            format!("site {host}: bad placement {raw_placement:?} (pool:NAME or remote:NAME)"),
        )
    })?;
    let known = match &placement {
        Placement::Pool(p) => pools.contains(p.as_str()),
        Placement::Remote(r) => remotes.contains(r.as_str()),
    };
    if !known {
        return Err((
            at,
            format!("site {host}: placement {placement} names no configured pool or remote"),
        ));
    }
    let mut state = SiteState::Active;
    let mut epoch = Epoch(0);
    if let Some((at, raw)) = fields.next() {
        state = match raw {
            "active" => SiteState::Active,
            "maintenance" => SiteState::Maintenance,
            "frozen" => SiteState::Frozen,
            _ => {
                return Err((
                    at,
                    format!("site {host}: bad state {raw:?} (active, maintenance or frozen)"),
                ))
            }
        };
    }
    if let Some((at, raw)) = fields.next() {
        epoch = raw.parse().map(Epoch).map_err(|_| {
            (
                at,
                format!("site {host}: bad epoch {raw:?} (a whole number)"),
            )
        })?;
    }
    if let Some((at, raw)) = fields.next() {
        return Err((
            at,
            format!(
                "site {host}: unexpected {raw:?} after the epoch (host placement [state] [epoch])"
            ),
        ));
    }
    Ok(SiteRecord {
        host,
        placement,
        state,
        epoch,
    })
}

/// The whitespace-separated fields of a line with their byte offsets.
fn fields(line: &str) -> impl Iterator<Item = (usize, &str)> {
    line.split([' ', '\t'])
        .scan(0usize, |offset, field| {
            let at = *offset;
            *offset += field.len() + 1;
            Some((at, field))
        })
        .filter(|(_, f)| !f.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = "[router]\nname = \"dc1\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
                    [[pool]]\nname = \"web\"\n[[pool.server]]\nname = \"a\"\naddress = \"127.0.0.1:9\"\n\n\
                    [[remote]]\nname = \"dc2\"\naddress = \"127.0.0.1:10\"\n\n\
                    [[site]]\nhost = \"in-config.example\"\nplacement = \"pool:web\"\n";
        crate::parse(text, Path::new("proxy.toml")).expect("config")
    }

    fn read(text: &str) -> Result<Vec<SiteRecord>, SitesFileError> {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sites.txt");
        std::fs::write(&path, text).expect("write");
        read_sites_file(&path, &config())
    }

    #[test]
    fn sites_come_back_in_host_order_with_defaults() {
        let sites = read(
            "# host placement [state] [epoch]\n\
             \n\
             shop.example\tpool:web\n\
             *.example.org  remote:dc2  active  7\n\
             blog.example pool:web maintenance 3\n",
        )
        .expect("read");
        let got: Vec<(String, String, SiteState, u64)> = sites
            .iter()
            .map(|r| {
                (
                    r.host.to_string(),
                    r.placement.to_string(),
                    r.state,
                    r.epoch.0,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "*.example.org".into(),
                    "remote:dc2".into(),
                    SiteState::Active,
                    7
                ),
                (
                    "blog.example".into(),
                    "pool:web".into(),
                    SiteState::Maintenance,
                    3
                ),
                (
                    "shop.example".into(),
                    "pool:web".into(),
                    SiteState::Active,
                    0
                ),
            ]
        );
    }

    #[test]
    fn every_bad_line_is_named_at_file_line_column_and_nothing_is_returned() {
        let err = read(
            "ok.example pool:web\n\
             bad..host pool:web\n\
             no-placement.example\n\
             a.example pool:nope\n\
             b.example pool:web sleeping\n\
             c.example pool:web active seven\n\
             d.example pool:web active 1 extra\n\
             ok.example pool:web\n\
             in-config.example pool:web\n",
        )
        .expect_err("bad lines");
        let SitesFileError::Invalid { problems, more } = err else {
            panic!("{err}");
        };
        assert_eq!(more, 0);
        let at: Vec<(usize, usize)> = problems.iter().map(|p| (p.line, p.column)).collect();
        assert_eq!(
            at,
            vec![
                (2, 1),
                (3, 21),
                (4, 11),
                (5, 20),
                (6, 27),
                (7, 29),
                (8, 1),
                (9, 1)
            ]
        );
        let text = SitesFileError::Invalid { problems, more }.to_string();
        assert!(text.contains("sites.txt:4:11: site a.example: placement pool:nope names no configured pool or remote"), "{text}");
        assert!(
            text.contains("sites.txt:8:1: site ok.example is listed twice (first at line 1)"),
            "{text}"
        );
        assert!(text.contains("also a [[site]]"), "{text}");
    }

    #[test]
    fn past_a_hundred_bad_lines_the_rest_are_counted() {
        let text: String = (0..150)
            .map(|i| format!("s{i}.example pool:nope\n"))
            .collect();
        let err = read(&text).expect_err("bad");
        assert!(
            matches!(&err, SitesFileError::Invalid { problems, more: 50 } if problems.len() == 100),
            "{err}"
        );
        assert!(err.to_string().ends_with("... and 50 more bad lines"));
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err =
            read_sites_file(Path::new("/nonexistent/sites.txt"), &config()).expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("sites file /nonexistent/sites.txt: "),
            "{err}"
        );
    }
}
