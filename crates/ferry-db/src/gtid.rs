//! MariaDB GTID positions (`domain-server-seqno`, comma separated), as read
//! from `@@gtid_binlog_pos` and `@@gtid_slave_pos`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A place in the source's binary log: the file and byte offset a reader
/// starts at, and the GTID position it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogMark {
    pub file: String,
    pub offset: u64,
    pub gtid: GtidPos,
}

/// A GTID position: for each replication domain, the last transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct GtidPos {
    /// domain -> (server id, sequence number)
    domains: BTreeMap<u32, (u32, u64)>,
}

impl GtidPos {
    pub fn parse(text: &str) -> Result<GtidPos, String> {
        let mut domains = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.splitn(3, '-');
            let (Some(d), Some(s), Some(n)) = (it.next(), it.next(), it.next()) else {
                return Err(format!("bad GTID {part:?}"));
            };
            let bad = |_| format!("bad GTID {part:?}");
            domains.insert(
                d.parse().map_err(bad)?,
                (s.parse().map_err(bad)?, n.parse().map_err(bad)?),
            );
        }
        Ok(GtidPos { domains })
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Transactions `self` is ahead of `applied`, summed over `self`'s
    /// domains (sequence numbers grow by one per transaction in a domain).
    pub fn transactions_ahead_of(&self, applied: &GtidPos) -> u64 {
        self.domains
            .iter()
            .map(|(d, (_, n))| {
                let done = applied.domains.get(d).map_or(0, |(_, m)| *m);
                n.saturating_sub(done)
            })
            .sum()
    }

    /// The domains this position names.
    pub fn domains(&self) -> impl Iterator<Item = u32> + '_ {
        self.domains.keys().copied()
    }

    /// The server id of this position's last transaction in `domain`.
    pub fn server_in(&self, domain: u32) -> Option<u32> {
        self.domains.get(&domain).map(|(s, _)| *s)
    }

    /// A new catch-up's start: `snapshot` (the source's domains), each
    /// domain taken from `applied` instead where that is at least as far
    /// along. Domains of `applied` that the snapshot does not name belong
    /// to other connections of the destination and are left out.
    pub fn resume_from(snapshot: &GtidPos, applied: &GtidPos) -> GtidPos {
        let mut domains = snapshot.domains.clone();
        for (d, v) in domains.iter_mut() {
            if let Some(a) = applied.domains.get(d) {
                if a.1 >= v.1 {
                    *v = *a;
                }
            }
        }
        GtidPos { domains }
    }

    /// Per domain, whichever of `a` and `b` has the higher sequence number.
    pub fn newest(a: &GtidPos, b: &GtidPos) -> GtidPos {
        let mut domains = a.domains.clone();
        for (d, v) in &b.domains {
            match domains.get(d) {
                Some(old) if old.1 >= v.1 => {}
                _ => {
                    domains.insert(*d, *v);
                }
            }
        }
        GtidPos { domains }
    }

    /// `base` with every domain of `over` replaced by `over`'s entry.
    pub fn overlaid(base: &GtidPos, over: &GtidPos) -> GtidPos {
        let mut domains = base.domains.clone();
        domains.extend(over.domains.iter().map(|(d, v)| (*d, *v)));
        GtidPos { domains }
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (d, (s, n)) in &self.domains {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{d}-{s}-{n}")?;
        }
        Ok(())
    }
}

impl From<GtidPos> for String {
    fn from(p: GtidPos) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for GtidPos {
    type Error = String;
    fn try_from(s: String) -> Result<GtidPos, String> {
        GtidPos::parse(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_print_and_compare() {
        let a = GtidPos::parse("1-1-11,2-2-3").unwrap();
        assert_eq!(a.to_string(), "1-1-11,2-2-3");
        let b = GtidPos::parse("1-1-6").unwrap();
        assert_eq!(a.transactions_ahead_of(&b), 5 + 3);
        assert!(GtidPos::parse("").unwrap().is_empty());
        assert!(GtidPos::parse("1-x-3").is_err());
        assert_eq!(GtidPos::newest(&a, &b).to_string(), "1-1-11,2-2-3");
        let m = GtidPos::overlaid(&a, &b);
        assert_eq!(m.to_string(), "1-1-6,2-2-3");
        // A resumed catch-up: the source's domains only, never rewound.
        let applied = GtidPos::parse("0-1-9,1-1-12,5-7-100").unwrap();
        let r = GtidPos::resume_from(&a, &applied);
        assert_eq!(r.to_string(), "1-1-12,2-2-3");
        assert_eq!(
            GtidPos::resume_from(&applied, &b).to_string(),
            applied.to_string()
        );
        assert_eq!(a.server_in(2), Some(2));
        assert_eq!(a.domains().collect::<Vec<_>>(), vec![1, 2]);
    }
}
