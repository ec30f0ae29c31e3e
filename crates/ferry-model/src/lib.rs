//! Ferry's domain types, shared by every crate and free of I/O.
//!
//! - [`Hostname`]: a normalised site name (exact or `*.` wildcard), the key of routing.
//! - [`Placement`]: where a site is served from, a local pool or another datacenter.
//! - [`SiteState`] and [`Epoch`]: what a router does with a site's requests, and the
//!   version number that orders every change to it (see `shared/design/cutover.md`).
//! - [`SiteRecord`]: placement, state and epoch together; one change sets all three.
//! - [`ServerState`]: a pool member's administrative state.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest hostname accepted (RFC 1035: 253 characters without the trailing dot).
pub const MAX_HOSTNAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Why a hostname or host pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    #[error("hostname is empty")]
    Empty,
    #[error("hostname is {len} characters long, the limit is {MAX_HOSTNAME_LEN}")]
    TooLong { len: usize },
    #[error("hostname label {label:?} is longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong { label: String },
    #[error("hostname has an empty label")]
    EmptyLabel,
    #[error("hostname contains {ch:?}, which is not a letter, digit, '-', '_' or '.'")]
    BadCharacter { ch: char },
    #[error("a wildcard is only allowed as the whole first label (\"*.example.com\")")]
    MisplacedWildcard,
    #[error("hostname label {label:?} starts or ends with '-'")]
    HyphenAtLabelEdge { label: String },
    #[error("invalid port in host header")]
    BadPort,
}

/// A lowercase hostname without port or trailing dot, or a wildcard pattern
/// `*.example.com` that matches every name below `example.com` (at any depth).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hostname(String);

impl Hostname {
    /// Parses a configured site name: an exact hostname or a `*.` wildcard.
    pub fn parse(raw: &str) -> Result<Hostname, HostnameError> {
        let lowered = raw.trim_end_matches('.').to_ascii_lowercase();
        let body = match lowered.strip_prefix("*.") {
            Some(rest) => rest,
            None => &lowered,
        };
        check_name(body)?;
        if body.contains('*') {
            return Err(HostnameError::MisplacedWildcard);
        }
        Ok(Hostname(lowered))
    }

    /// Normalises the value of a `Host` header or `:authority`: strips the port and a
    /// trailing dot, lowercases. IPv6 literals keep their brackets (`[::1]`).
    /// Never allocates more than [`MAX_HOSTNAME_LEN`] bytes.
    ///
    /// Every request pays for this: the usual name (ASCII, an optional port)
    /// is checked in one pass over its bytes ([`plain_host`]); anything else,
    /// and every refusal, goes the long way, which says what is wrong.
    pub fn from_host_header(raw: &str) -> Result<Hostname, HostnameError> {
        if let Some(end) = plain_host(raw.as_bytes()) {
            return Ok(Hostname(raw[..end].to_ascii_lowercase()));
        }
        Hostname::from_host_header_checked(raw)
    }

    /// [`Hostname::from_host_header`] the long way: the same answer for
    /// every input, and the reason for a refusal.
    fn from_host_header_checked(raw: &str) -> Result<Hostname, HostnameError> {
        if raw.is_empty() {
            return Err(HostnameError::Empty);
        }
        if raw.len() > MAX_HOSTNAME_LEN + 7 {
            return Err(HostnameError::TooLong { len: raw.len() });
        }
        let host = if raw.starts_with('[') {
            let end = raw
                .find(']')
                .ok_or(HostnameError::BadCharacter { ch: '[' })?;
            let rest = &raw[end + 1..];
            if !rest.is_empty() && !valid_port_suffix(rest) {
                return Err(HostnameError::BadPort);
            }
            return Ok(Hostname(raw[..=end].to_ascii_lowercase()));
        } else {
            match raw.rfind(':') {
                Some(i) => {
                    if !valid_port_suffix(&raw[i..]) {
                        return Err(HostnameError::BadPort);
                    }
                    &raw[..i]
                }
                None => raw,
            }
        };
        let lowered = host.trim_end_matches('.').to_ascii_lowercase();
        check_name(&lowered)?;
        if lowered.contains('*') {
            return Err(HostnameError::BadCharacter { ch: '*' });
        }
        Ok(Hostname(lowered))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `*.example.com` patterns.
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    /// For a wildcard, the domain it covers (`example.com` for `*.example.com`).
    pub fn wildcard_domain(&self) -> Option<&str> {
        self.0.strip_prefix("*.")
    }
}

/// The length of the name in `raw` when it is a plain valid host header
/// value: letters, digits, '-', '_' in labels of 1 to 63 bytes that neither
/// start nor end with '-', at most one trailing dot, at most
/// [`MAX_HOSTNAME_LEN`] bytes without it, then nothing, ':' or ':' and up to
/// 5 digits worth at most 65535. `None` for anything else (refused or not,
/// for [`Hostname::from_host_header_checked`] to judge). One pass.
fn plain_host(raw: &[u8]) -> Option<usize> {
    let mut label = 0usize;
    // The byte before the current one; '.' at a label's start.
    let mut prev = b'.';
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => label += 1,
            b'-' if prev != b'.' => label += 1,
            b'.' if prev != b'.' && prev != b'-' && label <= MAX_LABEL_LEN => label = 0,
            b':' => break,
            _ => return None,
        }
        prev = b;
        i += 1;
    }
    // The last label, unless a dot ended it (the trailing dot, dropped).
    let end = if prev == b'.' {
        i.checked_sub(1)?
    } else if prev == b'-' || label > MAX_LABEL_LEN {
        return None;
    } else {
        i
    };
    if end == 0 || end > MAX_HOSTNAME_LEN {
        return None;
    }
    if let Some(port) = raw.get(i + 1..) {
        if port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
        if n > u32::from(u16::MAX) {
            return None;
        }
    }
    Some(end)
}

fn valid_port_suffix(s: &str) -> bool {
    // ":" followed by 1-5 digits; an empty port (":") is tolerated by browsers.
    let Some(digits) = s.strip_prefix(':') else {
        return false;
    };
    digits.is_empty()
        || (digits.bytes().all(|b| b.is_ascii_digit()) && digits.parse::<u16>().is_ok())
}

fn check_name(name: &str) -> Result<(), HostnameError> {
    if name.is_empty() {
        return Err(HostnameError::Empty);
    }
    if name.len() > MAX_HOSTNAME_LEN {
        return Err(HostnameError::TooLong { len: name.len() });
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostnameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostnameError::LabelTooLong {
                label: label.to_string(),
            });
        }
        // RFC 1123: a label neither starts nor ends with a hyphen.
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostnameError::HyphenAtLabelEdge {
                label: label.to_string(),
            });
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '*'))
        {
            return Err(HostnameError::BadCharacter { ch });
        }
    }
    Ok(())
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Hostname {
    type Error = HostnameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Hostname::parse(&s)
    }
}

impl From<Hostname> for String {
    fn from(h: Hostname) -> String {
        h.0
    }
}

/// The version of a site's routing state. The orchestrator raises it on every
/// change; a router applies a change only with a greater epoch (or the same epoch
/// and the same content, which is a no-op so replays are harmless).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a router does with a site's requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteState {
    /// Requests go to the placement.
    #[default]
    Active,
    /// Requests get 503 with `Retry-After` and the maintenance page, except from
    /// operator networks.
    Maintenance,
    /// Requests are held (up to `hold_max`) and released when the site changes again.
    Frozen,
}

impl SiteState {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteState::Active => "active",
            SiteState::Maintenance => "maintenance",
            SiteState::Frozen => "frozen",
        }
    }
}

impl fmt::Display for SiteState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a site's requests go: a pool of this datacenter, or the router of another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// A pool defined in this router's config, by name.
    Pool(String),
    /// Another datacenter, by name; its router address is in the config.
    Remote(String),
}

impl Placement {
    /// `pool:NAME` or `remote:NAME`, the compact form used in logs and the CLI.
    pub fn parse(s: &str) -> Option<Placement> {
        let (kind, name) = s.split_once(':')?;
        if name.is_empty() {
            return None;
        }
        match kind {
            "pool" => Some(Placement::Pool(name.to_string())),
            "remote" => Some(Placement::Remote(name.to_string())),
            _ => None,
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Pool(p) => write!(f, "pool:{p}"),
            Placement::Remote(r) => write!(f, "remote:{r}"),
        }
    }
}

/// A site's routing state: the triple every change sets at once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SiteRecord {
    pub host: Hostname,
    pub placement: Placement,
    #[serde(default)]
    pub state: SiteState,
    #[serde(default)]
    pub epoch: Epoch,
}

/// How an incoming change relates to the state a router holds (cutover.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeVerdict {
    /// Greater epoch: apply it.
    Apply,
    /// Same epoch, same content: a replay, nothing to do.
    NoOp,
    /// Lower epoch, or same epoch with other content: refuse (409).
    Stale,
}

impl SiteRecord {
    /// Judges `incoming` against `self` by the epoch rule of the cutover protocol.
    pub fn judge(&self, incoming: &SiteRecord) -> ChangeVerdict {
        use std::cmp::Ordering::*;
        match incoming.epoch.cmp(&self.epoch) {
            Greater => ChangeVerdict::Apply,
            Equal if incoming.placement == self.placement && incoming.state == self.state => {
                ChangeVerdict::NoOp
            }
            _ => ChangeVerdict::Stale,
        }
    }
}

/// A pool member's administrative state, settable at run time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Takes new requests (when healthy).
    #[default]
    Ready,
    /// Takes no new requests; those in flight finish.
    Drain,
    /// Out of service.
    Maint,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Ready => "ready",
            ServerState::Drain => "drain",
            ServerState::Maint => "maint",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_is_normalised() {
        fn h(s: &str) -> Result<String, HostnameError> {
            Hostname::from_host_header(s).map(|h| h.0)
        }
        assert_eq!(h("WWW.Example.COM").unwrap(), "www.example.com");
        assert_eq!(h("www.example.com.:8080").unwrap(), "www.example.com");
        assert_eq!(h("[::1]:80").unwrap(), "[::1]");
        assert_eq!(h("").unwrap_err(), HostnameError::Empty);
        assert_eq!(h("a.com:http").unwrap_err(), HostnameError::BadPort);
        assert_eq!(h("a.com:99999").unwrap_err(), HostnameError::BadPort);
        assert_eq!(h("a.com:").unwrap(), "a.com");
        assert!(matches!(
            h("-bad-.test").unwrap_err(),
            HostnameError::HyphenAtLabelEdge { .. }
        ));
        assert!(matches!(
            h("a b.com").unwrap_err(),
            HostnameError::BadCharacter { ch: ' ' }
        ));
        assert!(matches!(
            h(&"a".repeat(10_000)).unwrap_err(),
            HostnameError::TooLong { .. }
        ));
        assert!(h("*.example.com").is_err());
    }

    /// The one-pass check and the long way agree, value and error, on every
    /// string of up to 5 characters of an alphabet with each kind of byte the
    /// check looks at, and on long names built of labels around the limits.
    #[test]
    fn host_header_fast_path_agrees_with_the_long_way() {
        fn agree(raw: &str) {
            assert_eq!(
                Hostname::from_host_header(raw),
                Hostname::from_host_header_checked(raw),
                "{raw:?}"
            );
        }
        let alphabet = [
            "a", "Z", "0", "9", ".", "-", "_", "*", ":", "[", "]", "é", " ",
        ];
        let mut accepted = 0;
        let mut idx = Vec::new();
        for len in 0..=5 {
            idx.clear();
            idx.resize(len, 0usize);
            loop {
                let raw: String = idx.iter().map(|&i| alphabet[i]).collect();
                agree(&raw);
                accepted += usize::from(plain_host(raw.as_bytes()).is_some());
                // The next string of this length (odometer order).
                let Some(pos) = idx.iter().rposition(|&i| i + 1 < alphabet.len()) else {
                    break;
                };
                idx[pos] += 1;
                idx[pos + 1..].fill(0);
            }
        }
        assert!(accepted > 10_000, "the fast path took only {accepted}");

        // Long names: labels and ports around the bounds, in random order
        // (a fixed xorshift, so every run checks the same strings).
        let labels = [
            "a".repeat(62),
            "B".repeat(63),
            "c".repeat(64),
            "x-y".to_string(),
            "-x".to_string(),
            "x-".to_string(),
            "x_9".to_string(),
            "*".to_string(),
            "é".to_string(),
            String::new(),
            "w".repeat(20),
        ];
        let ports = [
            "", "", ":", ":0", ":80", ":65535", ":65536", ":99999", ":000080", ":123456", ":+80",
            ":8a", "::80", ":80:",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut long_accepted = 0;
        for _ in 0..200_000 {
            let mut raw = String::new();
            for k in 0..1 + next(6) {
                if k > 0 {
                    raw.push('.');
                }
                raw.push_str(&labels[next(labels.len())]);
            }
            if next(4) == 0 {
                raw.push('.');
            }
            raw.push_str(ports[next(ports.len())]);
            agree(&raw);
            long_accepted += usize::from(plain_host(raw.as_bytes()).is_some_and(|end| end > 190));
        }
        assert!(long_accepted > 100, "{long_accepted} long names taken");
    }

    #[test]
    fn patterns_parse() {
        let w = Hostname::parse("*.Example.com.").unwrap();
        assert!(w.is_wildcard());
        assert_eq!(w.wildcard_domain(), Some("example.com"));
        assert_eq!(
            Hostname::parse("a.*.com").unwrap_err(),
            HostnameError::MisplacedWildcard
        );
        assert_eq!(
            Hostname::parse("a..com").unwrap_err(),
            HostnameError::EmptyLabel
        );
    }

    #[test]
    fn epoch_rule() {
        let rec = |p: &str, s, e| SiteRecord {
            host: Hostname::parse("a.com").unwrap(),
            placement: Placement::parse(p).unwrap(),
            state: s,
            epoch: Epoch(e),
        };
        let cur = rec("pool:a", SiteState::Active, 5);
        assert_eq!(
            cur.judge(&rec("pool:b", SiteState::Frozen, 6)),
            ChangeVerdict::Apply
        );
        assert_eq!(
            cur.judge(&rec("pool:a", SiteState::Active, 5)),
            ChangeVerdict::NoOp
        );
        assert_eq!(
            cur.judge(&rec("pool:b", SiteState::Active, 5)),
            ChangeVerdict::Stale
        );
        assert_eq!(
            cur.judge(&rec("pool:a", SiteState::Active, 4)),
            ChangeVerdict::Stale
        );
    }
}
