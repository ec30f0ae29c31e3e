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

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};

use ferry_conf::Invalid;
use ferry_model::{Epoch, Hostname, Placement, SiteRecord, SiteState, MAX_HOSTNAME_LEN};

use crate::Config;

mod quick;

use quick::{quick_line, Memo};

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

/// The checked sites of a sites file, in file order, kept compact: the file's
/// text (hosts lowercased in place) and, per site, where its host is, a small
/// placement index, its state and epoch (16 bytes). No allocation per site.
pub struct SitesList {
    text: String,
    sites: Vec<Listed>,
    placements: Vec<Placement>,
    /// `(position, line)` of each site whose line is not the one after the
    /// previous site's (the first site, and any after a comment or a blank
    /// line): a site's line is its last break's line plus the sites between.
    /// A file of one site a line has one, where a line a site would cost 4
    /// bytes each.
    breaks: Vec<(u32, u32)>,
}

#[derive(Clone, Copy)]
struct Listed {
    start: u32,
    len: u8,
    state: SiteState,
    placement: u16,
    epoch: u64,
}

impl std::fmt::Debug for SitesList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SitesList")
            .field("sites", &self.sites.len())
            .field("placements", &self.placements)
            .finish()
    }
}

/// One site of a [`SitesList`], borrowed.
#[derive(Debug, Clone, Copy)]
pub struct ListedSite<'a> {
    /// Lowercase, checked as [`Hostname::parse`] does.
    pub host: &'a str,
    /// Index into [`SitesList::placements`].
    pub placement: u16,
    pub state: SiteState,
    pub epoch: Epoch,
    /// Line in the file (from 1).
    pub line: u32,
}

impl SitesList {
    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// The placements the sites use (each once).
    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    /// The sites in file order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = ListedSite<'_>> + Clone + '_ {
        Sites {
            list: self,
            at: 0,
            next_break: 0,
            line: 0,
        }
    }

    /// Site `i` (file order).
    pub fn get(&self, i: usize) -> Option<ListedSite<'_>> {
        let s = self.sites.get(i)?;
        // The last break at or before `i` (the first site always has one).
        let k = self.breaks.partition_point(|&(at, _)| at as usize <= i);
        let (at, line) = self.breaks.get(k.checked_sub(1)?).copied()?;
        Some(self.site(s, line + (i - at as usize) as u32))
    }

    /// Site `i` as an owned record (allocates its host and placement).
    pub fn record(&self, i: usize) -> Option<SiteRecord> {
        let s = self.get(i)?;
        Some(SiteRecord {
            // Checked when the file was read.
            host: Hostname::parse(s.host).ok()?,
            placement: self.placements[usize::from(s.placement)].clone(),
            state: s.state,
            epoch: s.epoch,
        })
    }

    /// `(position, position of its first occurrence)` of every site whose
    /// host came earlier in the list, in order (one hash table of the hosts).
    pub fn repeated(&self) -> Vec<(usize, usize)> {
        let mut first: HashMap<&str, usize, Fast64> =
            HashMap::with_capacity_and_hasher(self.len(), Default::default());
        let mut twice = Vec::new();
        for (i, s) in self.iter().enumerate() {
            match first.entry(s.host) {
                std::collections::hash_map::Entry::Occupied(e) => twice.push((i, *e.get())),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                }
            }
        }
        twice
    }

    fn site(&self, s: &Listed, line: u32) -> ListedSite<'_> {
        let start = s.start as usize;
        ListedSite {
            // ASCII, checked when the file was read.
            host: self
                .text
                .get(start..start + usize::from(s.len))
                .unwrap_or(""),
            placement: s.placement,
            state: s.state,
            epoch: Epoch(s.epoch),
            line,
        }
    }
}

/// [`SitesList::iter`]: the sites in order, each line found from the breaks
/// as the walk passes them (no search a site).
#[derive(Clone)]
struct Sites<'a> {
    list: &'a SitesList,
    at: usize,
    next_break: usize,
    line: u32,
}

impl<'a> Iterator for Sites<'a> {
    type Item = ListedSite<'a>;

    fn next(&mut self) -> Option<ListedSite<'a>> {
        let s = self.list.sites.get(self.at)?;
        match self.list.breaks.get(self.next_break) {
            Some(&(at, line)) if at as usize == self.at => {
                self.line = line;
                self.next_break += 1;
            }
            _ => self.line += 1,
        }
        self.at += 1;
        Some(self.list.site(s, self.line))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.list.sites.len() - self.at;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Sites<'_> {}

/// Reads the sites file at `path` and checks every line against `config`
/// (placements name its pools or remotes; no host twice, nor in a
/// `[[site]]`). The sites come back in file order.
///
/// The file is read whole into one buffer and split in place; a line in the
/// usual form (`host placement [state] [epoch]`, ASCII, no uppercase in the
/// state) is checked without allocating, any other goes through the general
/// parser, which names what is wrong. Duplicates are found with one hash
/// table of the hosts ([`SitesList::repeated`]).
pub fn read_sites_file(path: &Path, config: &Config) -> Result<SitesList, SitesFileError> {
    read_sites_file_with(path, config, SitesList::repeated)
}

/// [`read_sites_file`] with the duplicate check done by `repeated`, which
/// returns what [`SitesList::repeated`] does: for a caller that indexes the
/// hosts anyway (the router's table, filled as it checks). It is called only
/// when every line is valid; otherwise the list's own check runs, so the
/// error names every bad line.
pub fn read_sites_file_with(
    path: &Path,
    config: &Config,
    repeated: impl FnOnce(&SitesList) -> Vec<(usize, usize)>,
) -> Result<SitesList, SitesFileError> {
    let mut text = std::fs::read(path).map_err(|source| SitesFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if text.len() > u32::MAX as usize {
        return Err(SitesFileError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "larger than 4 GiB, the most a sites file may hold",
            ),
        });
    }
    let vocab = Vocabulary::of(config);
    let mut problems = Problems::new(path);
    let mut sites: Vec<Listed> = Vec::with_capacity(text.len() / 24 + 1);
    let mut used: Vec<Option<u16>> = vec![None; vocab.placements.len()];
    let mut placements = Vec::new();
    let mut breaks = Vec::new();
    let (mut line_no, mut last_site_line) = (0u32, 0u32);
    let mut at = 0usize;
    let mut memo = Memo::default();
    while at < text.len() {
        line_no += 1;
        let (parsed, end) = match quick_line(&mut text[at..], &vocab, &mut memo) {
            Some((site, len)) => (Some(site), at + len),
            None => {
                let end = text[at..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(text.len(), |n| at + n);
                let mut stop = end;
                while stop > at && text[stop - 1] == b'\r' {
                    stop -= 1;
                }
                let line = &mut text[at..stop];
                let parsed = match fast_line(line, &vocab) {
                    Fast::Skip => None,
                    Fast::Site(s) => Some(s),
                    Fast::Slow => match slow_line(line, &vocab) {
                        Ok(s) => s,
                        Err((column, message)) => {
                            problems.report(line_no as usize, column, message);
                            None
                        }
                    },
                };
                if let Some(s) = &parsed {
                    // The host, lowercase and without trailing dots, in place.
                    let host = s.start as usize..s.start as usize + usize::from(s.len);
                    line[host].make_ascii_lowercase();
                }
                (parsed, end)
            }
        };
        if let Some(mut s) = parsed {
            s.start += at as u32;
            if sites.is_empty() || line_no != last_site_line + 1 {
                breaks.push((sites.len() as u32, line_no));
            }
            last_site_line = line_no;
            let index = &mut used[usize::from(s.placement)];
            s.placement = *index.get_or_insert_with(|| {
                placements.push(vocab.placements[usize::from(s.placement)].clone());
                (placements.len() - 1) as u16
            });
            sites.push(s);
        }
        at = end + 1;
        if line_no == u32::MAX {
            problems.report(line_no as usize, 1, "too many lines".to_string());
            break;
        }
    }
    let list = SitesList {
        text: utf8(text),
        sites,
        placements,
        breaks,
    };
    // Hosts that are also a [[site]] of the config.
    if !config.sites.is_empty() {
        for (i, s) in list.iter().enumerate() {
            if vocab.in_config.contains(s.host) {
                let start = list.sites[i].start as usize;
                let line_start = list.text[..start].rfind('\n').map_or(0, |n| n + 1);
                let column = list.text[line_start..start].chars().count() + 1;
                problems.report(
                    s.line as usize,
                    column,
                    format!("site {} is also a [[site]] of the config", s.host),
                );
            }
        }
    }
    // Hosts listed twice.
    let twice = if problems.bad == 0 {
        repeated(&list)
    } else {
        list.repeated()
    };
    for (i, first) in twice {
        if let (Some(s), Some(f)) = (list.get(i), list.get(first)) {
            problems.report(
                s.line as usize,
                1,
                format!("site {} is listed twice (first at line {})", s.host, f.line),
            );
        }
    }
    problems.finish()?;
    Ok(list)
}

/// The file's text as a `String`. The sites' lines are ASCII once checked;
/// bytes that are not UTF-8 can only be in comments, and become `?`.
fn utf8(mut text: Vec<u8>) -> String {
    let mut from = 0;
    loop {
        match std::str::from_utf8(&text[from..]) {
            Ok(_) => break,
            Err(e) => {
                let bad = from + e.valid_up_to();
                let n = e.error_len().unwrap_or(text.len() - bad);
                text[bad..bad + n].fill(b'?');
                from = bad + n;
            }
        }
    }
    String::from_utf8(text).unwrap_or_default()
}

/// The bad lines found so far.
struct Problems<'a> {
    path: &'a Path,
    listed: Vec<Invalid>,
    bad: usize,
}

impl<'a> Problems<'a> {
    fn new(path: &'a Path) -> Problems<'a> {
        Problems {
            path,
            listed: Vec::new(),
            bad: 0,
        }
    }

    fn report(&mut self, line: usize, column: usize, message: String) {
        self.bad += 1;
        if self.listed.len() < MAX_LISTED {
            self.listed.push(Invalid {
                path: self.path.to_path_buf(),
                line,
                column,
                message,
            });
        } else if let Some(last) = self.listed.iter().map(|p| p.line).max() {
            // Keep the first MAX_LISTED lines of the file, whatever order the
            // checks found them in.
            if line < last {
                if let Some(i) = self.listed.iter().position(|p| p.line == last) {
                    self.listed[i] = Invalid {
                        path: self.path.to_path_buf(),
                        line,
                        column,
                        message,
                    };
                }
            }
        }
    }

    fn finish(mut self) -> Result<(), SitesFileError> {
        if self.bad == 0 {
            return Ok(());
        }
        self.listed.sort_by_key(|p| p.line);
        Err(SitesFileError::Invalid {
            more: self.bad - self.listed.len(),
            problems: self.listed,
        })
    }
}

/// The placements a config offers (`pool:NAME` for each pool, `remote:NAME`
/// for each remote), found by name without allocating.
struct Vocabulary<'a> {
    placements: Vec<Placement>,
    pools: HashMap<&'a [u8], u16, Fast64>,
    remotes: HashMap<&'a [u8], u16, Fast64>,
    /// Hosts of the config's `[[site]]`s.
    in_config: HashSet<&'a str, Fast64>,
}

impl<'a> Vocabulary<'a> {
    fn of(config: &'a Config) -> Vocabulary<'a> {
        let mut v = Vocabulary {
            placements: Vec::new(),
            pools: HashMap::default(),
            remotes: HashMap::default(),
            in_config: config.sites.iter().map(|s| s.host.as_str()).collect(),
        };
        // A config with more than 65,535 pools and remotes is refused by the
        // table anyway; placements past that are not offered.
        for p in &config.pools {
            if let Ok(i) = u16::try_from(v.placements.len()) {
                v.placements.push(Placement::Pool(p.name.clone()));
                v.pools.entry(p.name.as_bytes()).or_insert(i);
            }
        }
        for r in &config.remotes {
            if let Ok(i) = u16::try_from(v.placements.len()) {
                v.placements.push(Placement::Remote(r.name.clone()));
                v.remotes.entry(r.name.as_bytes()).or_insert(i);
            }
        }
        // `pool:NAME` of a pool in a remote's datacenter: the router resolves
        // it when it forwards (see RemoteSpec::pools).
        for pool in config.remotes.iter().flat_map(|r| &r.pools) {
            if let Ok(i) = u16::try_from(v.placements.len()) {
                v.placements.push(Placement::Pool(pool.clone()));
                v.pools.entry(pool.as_bytes()).or_insert(i);
            }
        }
        v
    }

    fn find(&self, raw: &[u8]) -> Option<u16> {
        if let Some(name) = raw.strip_prefix(b"pool:") {
            self.pools.get(name).copied()
        } else if let Some(name) = raw.strip_prefix(b"remote:") {
            self.remotes.get(name).copied()
        } else {
            None
        }
    }
}

enum Fast {
    /// Blank or a comment.
    Skip,
    Site(Listed),
    /// Anything else: the general parser decides, and names what is wrong.
    Slow,
}

/// A line in the usual form, checked in place; `Fast::Slow` for anything
/// unusual or wrong. `start` and `len` of the site are within the line;
/// `placement` indexes the vocabulary.
fn fast_line(line: &[u8], vocab: &Vocabulary) -> Fast {
    let mut fields = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|f| !f.is_empty());
    let Some(host) = fields.next() else {
        return Fast::Skip;
    };
    if host[0] == b'#' {
        return Fast::Skip;
    }
    let start = host.as_ptr() as usize - line.as_ptr() as usize;
    let Some(len) = host_len(host) else {
        return Fast::Slow;
    };
    let Some(placement) = fields.next().and_then(|p| vocab.find(p)) else {
        return Fast::Slow;
    };
    let state = match fields.next() {
        None | Some(b"active") => SiteState::Active,
        Some(b"maintenance") => SiteState::Maintenance,
        Some(b"frozen") => SiteState::Frozen,
        Some(_) => return Fast::Slow,
    };
    let epoch = match fields.next() {
        None => 0,
        Some(digits) => match parse_u64(digits) {
            Some(e) => e,
            None => return Fast::Slow,
        },
    };
    if fields.next().is_some() {
        return Fast::Slow;
    }
    Fast::Site(Listed {
        start: start as u32,
        len,
        state,
        placement,
        epoch,
    })
}

/// The length of `raw` as a hostname once its trailing dots are dropped, if
/// it is one [`Hostname::parse`] accepts (letters of either case, digits,
/// `-`, `_`, labels of 1-63 bytes not starting or ending with `-`, at most
/// 253 bytes, `*.` only in front).
fn host_len(raw: &[u8]) -> Option<u8> {
    let mut end = raw.len();
    while end > 0 && raw[end - 1] == b'.' {
        end -= 1;
    }
    let name = &raw[..end];
    let body = name.strip_prefix(b"*.").unwrap_or(name);
    if body.is_empty() || body.len() > MAX_HOSTNAME_LEN {
        return None;
    }
    for label in body.split(|&b| b == b'.') {
        let (&first, &last) = (label.first()?, label.last()?);
        if label.len() > 63 || first == b'-' || last == b'-' {
            return None;
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
    }
    u8::try_from(name.len()).ok()
}

/// Digits only (what `u64::from_str` accepts, less a leading `+`).
fn parse_u64(digits: &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

/// The general parser for a line the fast one passed on: `Ok(None)` for a
/// blank line or a comment; on error, the column (from 1) and why.
fn slow_line(line: &[u8], vocab: &Vocabulary) -> Result<Option<Listed>, (usize, String)> {
    let Ok(line) = std::str::from_utf8(line) else {
        let valid = match std::str::from_utf8(line) {
            Err(e) => e.valid_up_to(),
            Ok(_) => 0,
        };
        let column = String::from_utf8_lossy(&line[..valid]).chars().count() + 1;
        return Err((column, "the line is not UTF-8 text".to_string()));
    };
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    match parse_line(line, vocab) {
        Ok((start, record)) => {
            let placement = match &record.placement {
                Placement::Pool(n) => vocab.pools.get(n.as_bytes()),
                Placement::Remote(n) => vocab.remotes.get(n.as_bytes()),
            };
            let (Some(&placement), Ok(len)) = (placement, u8::try_from(record.host.as_str().len()))
            else {
                return Err((start + 1, format!("site {}: not loadable", record.host)));
            };
            Ok(Some(Listed {
                start: start as u32,
                len,
                state: record.state,
                placement,
                epoch: record.epoch.0,
            }))
        }
        Err((at, message)) => Err((line[..at].chars().count() + 1, message)),
    }
}

/// One site line; its host's byte offset and the record, or on error, the
/// byte offset of the bad field and why.
fn parse_line(line: &str, vocab: &Vocabulary) -> Result<(usize, SiteRecord), (usize, String)> {
    let mut fields = fields(line);
    // The caller skips blank lines: there is a first field.
    let (host_at, raw_host) = fields.next().unwrap_or((0, ""));
    let host =
        Hostname::parse(raw_host).map_err(|e| (host_at, format!("bad host {raw_host:?}: {e}")))?;
    if vocab.in_config.contains(host.as_str()) {
        return Err((
            host_at,
            format!("site {host} is also a [[site]] of the config"),
        ));
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
        Placement::Pool(p) => vocab.pools.contains_key(p.as_bytes()),
        Placement::Remote(r) => vocab.remotes.contains_key(r.as_bytes()),
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
    Ok((
        host_at,
        SiteRecord {
            host,
            placement,
            state,
            epoch,
        },
    ))
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

type Fast64 = BuildHasherDefault<Fold>;

/// A fast hash for the duplicate check (64-bit words, multiply and rotate;
/// the hosts come from the operator's file, not from the network).
#[derive(Default)]
struct Fold(u64);

impl Hasher for Fold {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0 ^ u64::from_le_bytes(w))
                .wrapping_mul(K)
                .rotate_left(29);
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        self.0 = (self.0 ^ u64::from_le_bytes(w) ^ rest.len() as u64)
            .wrapping_mul(K)
            .rotate_left(29);
    }

    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 32)
    }
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

    fn read(text: &str) -> Result<SitesList, SitesFileError> {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sites.txt");
        std::fs::write(&path, text).expect("write");
        read_sites_file(&path, &config())
    }

    /// (host, placement, state, epoch) of every site, in file order.
    fn sites(list: &SitesList) -> Vec<(String, String, SiteState, u64)> {
        list.iter()
            .map(|s| {
                (
                    s.host.to_string(),
                    list.placements()[usize::from(s.placement)].to_string(),
                    s.state,
                    s.epoch.0,
                )
            })
            .collect()
    }

    #[test]
    fn sites_come_back_in_file_order_with_defaults() {
        let list = read(
            "# host placement [state] [epoch]\n\
             \n\
             shop.example\tpool:web\n\
             *.example.org  remote:dc2  active  7\n\
             blog.example pool:web maintenance 3\n",
        )
        .expect("read");
        assert_eq!(
            sites(&list),
            vec![
                (
                    "shop.example".into(),
                    "pool:web".into(),
                    SiteState::Active,
                    0
                ),
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
            ]
        );
        let lines: Vec<u32> = list.iter().map(|s| s.line).collect();
        assert_eq!(lines, [3, 4, 5]);
        assert_eq!(list.placements().len(), 2, "each placement once");
        assert_eq!(
            list.record(1).expect("record").host.as_str(),
            "*.example.org"
        );
    }

    #[test]
    fn each_site_knows_its_line_across_comments_blank_and_bad_lines() {
        // Sites on lines 1, 2, 5, 6, 7 and 10: the lines come from the breaks
        // (the first site, and each after a gap), walking or by position.
        let list = read(
            "a.example pool:web\n\
             b.example pool:web\n\
             # a comment\n\
             \n\
             C.Example. pool:web frozen 2\n\
             d.example pool:web\n\
             e.example pool:web\n\
             \t\n\
             # another\n\
             f.example remote:dc2\n",
        )
        .expect("read");
        let walked: Vec<(String, u32)> = list.iter().map(|s| (s.host.into(), s.line)).collect();
        let hosts = ["a", "b", "c", "d", "e", "f"].map(|h| format!("{h}.example"));
        let lines = [1, 2, 5, 6, 7, 10];
        assert_eq!(walked, hosts.iter().cloned().zip(lines).collect::<Vec<_>>());
        for (i, line) in lines.into_iter().enumerate() {
            assert_eq!(list.get(i).map(|s| s.line), Some(line), "site {i}");
        }
        assert!(list.get(6).is_none());
        assert_eq!(list.iter().len(), 6);
        assert_eq!(list.iter().skip(4).len(), 2);
        // A host listed twice names both lines, past a gap.
        let err = read("a.example pool:web\n#\nb.example pool:web\na.example pool:web\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sites.txt:4:1: site a.example is listed twice (first at line 1)"),
            "{err}"
        );
    }

    #[test]
    fn hosts_are_normalised_in_place_and_odd_lines_take_the_general_parser() {
        // Uppercase, trailing dots, CRLF, leading blanks, a "+" epoch (which
        // u64 parsing takes), a form feed before a comment, a comment that is
        // not UTF-8: all accepted as before.
        let mut text = Vec::new();
        text.extend_from_slice(b"  Shop.EXAMPLE.. pool:web\r\n");
        text.extend_from_slice(b"b.example pool:web frozen +4\n");
        text.extend_from_slice(b"\x0c# comment\n");
        text.extend_from_slice(b"# caf\xe9\n");
        text.extend_from_slice(b"\t\t\n");
        text.extend_from_slice(b"C.example remote:dc2 maintenance 18446744073709551615");
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sites.txt");
        std::fs::write(&path, &text).expect("write");
        let list = read_sites_file(&path, &config()).expect("read");
        assert_eq!(
            sites(&list),
            vec![
                (
                    "shop.example".into(),
                    "pool:web".into(),
                    SiteState::Active,
                    0
                ),
                ("b.example".into(), "pool:web".into(), SiteState::Frozen, 4),
                (
                    "c.example".into(),
                    "remote:dc2".into(),
                    SiteState::Maintenance,
                    u64::MAX
                ),
            ]
        );
        // A duplicate spelled differently is still a duplicate.
        let err = read("a.example pool:web\nA.Example. pool:web\n").expect_err("twice");
        assert!(
            err.to_string()
                .contains("sites.txt:2:1: site a.example is listed twice (first at line 1)"),
            "{err}"
        );
        // A site line that is not UTF-8 is named.
        std::fs::write(&path, b"ok.example pool:web\nb\xe9.example pool:web\n").expect("write");
        let err = read_sites_file(&path, &config()).expect_err("not UTF-8");
        assert!(
            err.to_string()
                .contains("sites.txt:2:2: the line is not UTF-8 text"),
            "{err}"
        );
    }

    #[test]
    fn the_one_pass_reader_takes_only_what_the_general_path_reads_the_same() {
        let config = config();
        let vocab = Vocabulary::of(&config);
        let lines = [
            "a.example pool:web",
            "a.example pool:web\nnext pool:web",
            "A-b_c.Example9  \tremote:dc2 \t",
            "a.example pool:web maintenance",
            "a.example pool:web frozen 18446744073709551615 ",
            "a.example pool:web active 18446744073709551616",
            "a.example pool:web active 7 extra",
            "a.example pool:web active +7",
            "a.example pool:web Active",
            "a.example pool:web\r",
            "a.example pool:web active\r\n",
            "a.example pool:nope",
            "a.example web",
            "a.example",
            "a.example ",
            "a.example\n",
            "*.a.example pool:web",
            "a.example. pool:web",
            "a..example pool:web",
            ".a.example pool:web",
            "-a.example pool:web",
            "a-.example pool:web",
            " a.example pool:web",
            "# a.example pool:web",
            "caf\u{e9}.example pool:web",
            "a.example\u{a0}pool:web",
            "",
        ];
        let long_label = format!("{}.example pool:web", "a".repeat(64));
        let long_host = format!("{}a pool:web", "abcdefghi.".repeat(26));
        let (mut quick, mut memo) = (0, Memo::default());
        for line in lines.iter().copied().chain([&*long_label, &*long_host]) {
            let mut bytes = line.as_bytes().to_vec();
            let Some((site, len)) = quick_line(&mut bytes, &vocab, &mut memo) else {
                assert_eq!(bytes, line.as_bytes(), "{line:?} untouched");
                continue;
            };
            quick += 1;
            let own = &line.as_bytes()[..len];
            assert!(!own.contains(&b'\n') && line.as_bytes().get(len).is_none_or(|&b| b == b'\n'));
            let mut general = own.to_vec();
            let Fast::Site(s) = fast_line(&general, &vocab) else {
                panic!("{line:?}: only the one-pass reader takes it");
            };
            general[..usize::from(s.len)].make_ascii_lowercase();
            assert_eq!(
                (site.start, site.len, site.state, site.placement, site.epoch),
                (s.start, s.len, s.state, s.placement, s.epoch),
                "{line:?}"
            );
            assert_eq!(&bytes[..len], &general[..], "{line:?}");
        }
        assert_eq!(quick, 5, "the usual lines take the one pass");
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
