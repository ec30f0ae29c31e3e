//! Planning parameters and their text forms (`01:00-05:00`, `10Gbit/s`, `2%/d`).

use std::fmt;

/// A reason to keep entities in the same unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Constraint {
    /// Sites on one public IP move together (lifted by the router).
    Ip,
    /// Hostings on one filer move together (block-mode copy of the volume).
    Filer,
    /// A hosting moves with the databases it declares.
    DeclaredDb,
    /// A hosting moves with the databases the tunnel saw it use (lifted by the
    /// tunnel: an undeclared database left behind stays reachable).
    ObservedDb,
}

impl Constraint {
    pub const ALL: [Constraint; 4] = [
        Constraint::Ip,
        Constraint::Filer,
        Constraint::DeclaredDb,
        Constraint::ObservedDb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Constraint::Ip => "ip",
            Constraint::Filer => "filer",
            Constraint::DeclaredDb => "declared-db",
            Constraint::ObservedDb => "observed-db",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a unit's files are copied, which sets what its freeze costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CopyMode {
    /// A tree walked file by file (`ferry sync --mode file`): the freeze
    /// walks and proves every file of the unit again.
    Files,
    /// A filer's volume copied block by block: the freeze reads the
    /// replicator's record of written blocks. Needs units of whole filers.
    Blocks,
}

impl CopyMode {
    pub fn name(self) -> &'static str {
        match self {
            CopyMode::Files => "files",
            CopyMode::Blocks => "blocks",
        }
    }

    /// `files` or `blocks`.
    pub fn parse(s: &str) -> Result<CopyMode, ParamError> {
        match s.trim() {
            "files" => Ok(CopyMode::Files),
            "blocks" => Ok(CopyMode::Blocks),
            other => Err(ParamError::UnknownCopyMode {
                value: other.to_string(),
            }),
        }
    }
}

impl fmt::Display for CopyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Constraint`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Constraints(u8);

impl Default for Constraints {
    /// filer + declared databases + observed databases: the IP tie is lifted by
    /// the router; the database tunnel would allow lifting observed-db too.
    fn default() -> Constraints {
        Constraints::NONE
            .with(Constraint::Filer)
            .with(Constraint::DeclaredDb)
            .with(Constraint::ObservedDb)
    }
}

impl Constraints {
    pub const NONE: Constraints = Constraints(0);

    pub fn contains(self, c: Constraint) -> bool {
        self.0 & c.bit() != 0
    }
    pub fn with(self, c: Constraint) -> Constraints {
        Constraints(self.0 | c.bit())
    }
    pub fn without(self, c: Constraint) -> Constraints {
        Constraints(self.0 & !c.bit())
    }
    pub fn is_subset_of(self, other: Constraints) -> bool {
        self.0 & !other.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Constraint> {
        Constraint::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }

    /// `ip,filer,declared-db,observed-db` in any order, or `none`.
    pub fn parse(s: &str) -> Result<Constraints, ParamError> {
        let mut set = Constraints::NONE;
        if s.trim() == "none" {
            return Ok(set);
        }
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let c = Constraint::ALL
                .into_iter()
                .find(|c| c.name() == part)
                .ok_or_else(|| ParamError::UnknownConstraint {
                    value: part.to_string(),
                })?;
            set = set.with(c);
        }
        Ok(set)
    }
}

impl fmt::Display for Constraints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Constraint::name).collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// The nightly window, in minutes after midnight; may wrap (`23:00-03:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_minute: u32,
    pub end_minute: u32,
}

impl Window {
    pub fn parse(s: &str) -> Result<Window, ParamError> {
        let bad = || ParamError::BadWindow {
            value: s.to_string(),
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            if h.is_empty() || h.len() > 2 || m.len() != 2 {
                return None;
            }
            let h: u32 = h.parse().ok()?;
            let m: u32 = m.parse().ok()?;
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let w = Window {
            start_minute: minute(a).ok_or_else(bad)?,
            end_minute: minute(b).ok_or_else(bad)?,
        };
        if w.start_minute == w.end_minute {
            return Err(ParamError::EmptyWindow {
                value: s.to_string(),
            });
        }
        Ok(w)
    }

    /// Length in seconds.
    pub fn seconds(self) -> f64 {
        f64::from((self.end_minute + 1440 - self.start_minute) % 1440) * 60.0
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start_minute / 60,
            self.start_minute % 60,
            self.end_minute / 60,
            self.end_minute % 60
        )
    }
}

/// Why a parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error(
        "unknown constraint {value:?} (choose from ip, filer, declared-db, observed-db, or none)"
    )]
    UnknownConstraint { value: String },
    #[error("invalid window {value:?} (write e.g. 01:00-05:00)")]
    BadWindow { value: String },
    #[error("window {value:?} is empty")]
    EmptyWindow { value: String },
    #[error("invalid rate {value:?} (write e.g. {example})")]
    BadRate {
        value: String,
        example: &'static str,
    },
    #[error("invalid duration {value:?}: {reason}")]
    BadDuration { value: String, reason: String },
    #[error("{what} must be greater than zero")]
    NotPositive { what: &'static str },
    #[error("unknown copy mode {value:?} (choose from files, blocks)")]
    UnknownCopyMode { value: String },
    #[error("--copy-mode blocks needs the filer constraint (a block copy moves whole filers)")]
    BlocksWithoutFiler,
}

fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let n: f64 = s[..end].parse().ok()?;
    n.is_finite().then_some((n, s[end..].trim()))
}

/// A short time in seconds, with a fraction allowed: `60us`, `60µs`,
/// `0.5ms`, `1s` (what one file costs a freeze: `--freeze-per-file`).
pub fn parse_short_duration(s: &str) -> Result<f64, ParamError> {
    let bad = |reason: &str| ParamError::BadDuration {
        value: s.to_string(),
        reason: reason.to_string(),
    };
    let (n, unit) = split_number(s).ok_or_else(|| bad("write e.g. 60us or 0.5ms"))?;
    // Divided, not multiplied: 60us is then exactly the double nearest 6e-5.
    let per_second = match unit {
        "ns" => 1e9,
        "us" | "µs" => 1e6,
        "ms" => 1e3,
        "s" => 1.0,
        "" => return Err(bad("a unit is needed (ns, us, ms, s)")),
        _ => return Err(bad("unknown unit (ns, us, ms, s)")),
    };
    Ok(n / per_second)
}

/// A data rate in bytes per second: `10Gbit/s`, `800Mbit/s`, `1GB/s`, `500MiB/s`.
pub fn parse_byte_rate(s: &str) -> Result<f64, ParamError> {
    let bad = || ParamError::BadRate {
        value: s.to_string(),
        example: "10Gbit/s or 1GB/s",
    };
    let (n, unit) = split_number(s).ok_or_else(bad)?;
    let unit = unit.strip_suffix("/s").ok_or_else(bad)?;
    let (prefix, bits) = if let Some(p) = unit.strip_suffix("bit") {
        (p, true)
    } else if let Some(p) = unit.strip_suffix('B') {
        (p, false)
    } else {
        return Err(bad());
    };
    let scale = match prefix {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = n * scale / if bits { 8.0 } else { 1.0 };
    Ok(bytes)
}

/// A count per second: `5000/s` or `5000files/s`.
pub fn parse_count_rate(s: &str) -> Result<f64, ParamError> {
    let bad = || ParamError::BadRate {
        value: s.to_string(),
        example: "5000/s",
    };
    let (n, unit) = split_number(s).ok_or_else(bad)?;
    match unit {
        "/s" | "files/s" => Ok(n),
        _ => Err(bad()),
    }
}

/// A change rate as a fraction of the data per second: `2%/d`, `0.1%/h`.
pub fn parse_change_rate(s: &str) -> Result<f64, ParamError> {
    let bad = || ParamError::BadRate {
        value: s.to_string(),
        example: "2%/d or 0.1%/h",
    };
    let (n, unit) = split_number(s).ok_or_else(bad)?;
    let per = unit.strip_prefix('%').ok_or_else(bad)?;
    let seconds = match per {
        "/d" | "/day" => 86_400.0,
        "/h" => 3_600.0,
        _ => return Err(bad()),
    };
    Ok(n / 100.0 / seconds)
}

/// A duration in seconds (`15m`, `1h30m`, `90s`).
pub fn parse_duration(s: &str) -> Result<f64, ParamError> {
    ferry_conf::parse_duration(s)
        .map(|d| d.as_secs_f64())
        .map_err(|reason| ParamError::BadDuration {
            value: s.to_string(),
            reason,
        })
}

/// Everything the planner needs besides the inventory. See `docs/plan-format.md`
/// for the model these numbers feed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub constraints: Constraints,
    pub window: Window,
    /// Bytes per second of the link between the datacenters.
    pub bandwidth: f64,
    /// Longest acceptable freeze of one unit, seconds.
    pub max_freeze: f64,
    /// At most this many nights (None: as many as needed).
    pub nights: Option<u32>,
    /// Freezes that may run at once in a night (lanes).
    pub parallel: u32,
    /// Fraction of a unit's file data written per second.
    pub change_rate: f64,
    /// Bytes per second a pre-copy pass reads one filer at (block mode).
    pub scan_rate: f64,
    /// Files per second a walk stats (file mode).
    pub walk_rate: f64,
    /// How units are copied (None: blocks under the `filer` constraint,
    /// files otherwise, as plans made before the choice existed).
    pub copy_mode: Option<CopyMode>,
    /// Seconds a freeze spends per file of the unit in file mode: the final
    /// pass's walk of both sides and the proof at the flip (None: a walk at
    /// `walk_rate`, as plans made before the flag existed). `ferry migrate
    /// check` measures it on the fleet.
    pub freeze_per_file: Option<f64>,
    /// Bytes per second one database server checksums at during the freeze.
    pub db_check_rate: f64,
    /// Fixed cost of every freeze (router acknowledgements, binlog catch-up,
    /// verification, flip), seconds.
    pub freeze_overhead: f64,
    /// Fixed cost of every unit's pre-copy, seconds: the copy sessions with
    /// both agents, their handshakes and the round trips of each pass
    /// (`--precopy-overhead`, default 0: earlier plans unchanged).
    pub precopy_overhead: f64,
    /// Seconds a file-mode pre-copy spends per file of the unit besides its
    /// bytes: the first pass walks and hashes it at both agents, the
    /// converging passes walk it again (`--precopy-per-file`, default 0).
    pub precopy_per_file: f64,
    /// Seconds between the start of pre-copy and the opening of night 1.
    pub lead: f64,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            constraints: Constraints::default(),
            window: Window {
                start_minute: 60,
                end_minute: 300,
            },
            bandwidth: 10e9 / 8.0,
            max_freeze: 15.0 * 60.0,
            nights: None,
            parallel: 4,
            change_rate: 0.02 / 86_400.0,
            scan_rate: 1e9,
            walk_rate: 5_000.0,
            copy_mode: None,
            freeze_per_file: None,
            db_check_rate: 500e6,
            freeze_overhead: 60.0,
            precopy_overhead: 0.0,
            precopy_per_file: 0.0,
            lead: 86_400.0,
        }
    }
}

impl Params {
    /// How the units of a partition made under `constraints` are copied:
    /// `copy_mode`, or what the `filer` constraint implies. Blocks need
    /// whole filers, so a partition without `filer` (the planner's "what
    /// each constraint costs" scenarios) copies files.
    pub fn copy_mode_under(&self, constraints: Constraints) -> CopyMode {
        let by_filer = constraints.contains(Constraint::Filer);
        match self.copy_mode {
            Some(CopyMode::Blocks) | None if by_filer => CopyMode::Blocks,
            _ => CopyMode::Files,
        }
    }

    /// Seconds a file-mode freeze spends on `files` files.
    pub fn freeze_files_s(&self, files: u64) -> f64 {
        match self.freeze_per_file {
            Some(per_file) => files as f64 * per_file,
            // Exactly the earlier model (a walk at walk_rate), so plans made
            // without the flag stay byte for byte the same.
            None => files as f64 / self.walk_rate,
        }
    }

    /// Refuses values the model cannot use (zero rates would divide by zero).
    pub fn validate(&self) -> Result<(), ParamError> {
        let positive = [
            (self.bandwidth, "--bandwidth"),
            (self.max_freeze, "--max-freeze"),
            (self.scan_rate, "--scan-rate"),
            (self.walk_rate, "--walk-rate"),
            (self.db_check_rate, "--db-check-rate"),
        ];
        for (v, what) in positive {
            if v.is_nan() || v <= 0.0 {
                return Err(ParamError::NotPositive { what });
            }
        }
        if let Some(c) = self.freeze_per_file {
            if c.is_nan() || c < 0.0 {
                return Err(ParamError::NotPositive {
                    what: "--freeze-per-file",
                });
            }
        }
        for (v, what) in [
            (self.precopy_overhead, "--precopy-overhead"),
            (self.precopy_per_file, "--precopy-per-file"),
        ] {
            if v.is_nan() || v < 0.0 {
                return Err(ParamError::NotPositive { what });
            }
        }
        if self.copy_mode == Some(CopyMode::Blocks) && !self.constraints.contains(Constraint::Filer)
        {
            return Err(ParamError::BlocksWithoutFiler);
        }
        if self.parallel == 0 {
            return Err(ParamError::NotPositive { what: "--parallel" });
        }
        if self.nights == Some(0) {
            return Err(ParamError::NotPositive { what: "--nights" });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_durations_parse_with_their_unit() {
        assert_eq!(parse_short_duration("60us").unwrap(), 60e-6);
        assert_eq!(parse_short_duration("60µs").unwrap(), 60e-6);
        assert_eq!(parse_short_duration("0.5ms").unwrap(), 0.5e-3);
        assert_eq!(parse_short_duration("2s").unwrap(), 2.0);
        assert!(parse_short_duration("60").is_err());
        assert!(parse_short_duration("60m").is_err());
    }

    #[test]
    fn the_copy_mode_follows_the_filer_constraint_unless_chosen() {
        let filer = Constraints::default();
        let no_filer = Constraints::parse("declared-db").unwrap();
        let p = Params::default();
        assert_eq!(p.copy_mode_under(filer), CopyMode::Blocks);
        assert_eq!(p.copy_mode_under(no_filer), CopyMode::Files);
        let files = Params {
            copy_mode: Some(CopyMode::Files),
            ..p
        };
        assert_eq!(files.copy_mode_under(filer), CopyMode::Files);
        let blocks = Params {
            copy_mode: Some(CopyMode::Blocks),
            ..p
        };
        // A scenario without whole filers cannot copy blocks.
        assert_eq!(blocks.copy_mode_under(no_filer), CopyMode::Files);
        assert_eq!(CopyMode::parse("files").unwrap(), CopyMode::Files);
        assert!(CopyMode::parse("tar").is_err());
    }

    #[test]
    fn constraints_parse_and_print() {
        let c = Constraints::parse("observed-db, ip").unwrap();
        assert!(c.contains(Constraint::Ip) && c.contains(Constraint::ObservedDb));
        assert!(!c.contains(Constraint::Filer));
        assert_eq!(c.to_string(), "ip,observed-db");
        assert_eq!(Constraints::parse("none").unwrap(), Constraints::NONE);
        assert_eq!(
            Constraints::default().to_string(),
            "filer,declared-db,observed-db"
        );
        assert!(matches!(
            Constraints::parse("filer,dns"),
            Err(ParamError::UnknownConstraint { .. })
        ));
    }

    #[test]
    fn windows() {
        let w = Window::parse("01:00-05:00").unwrap();
        assert_eq!(w.seconds(), 4.0 * 3600.0);
        assert_eq!(w.to_string(), "01:00-05:00");
        let wrap = Window::parse("23:30-02:00").unwrap();
        assert_eq!(wrap.seconds(), 2.5 * 3600.0);
        for bad in [
            "",
            "1-5",
            "25:00-01:00",
            "01:00-01:60",
            "01:00",
            "a:00-b:00",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Window::parse("02:00-02:00"),
            Err(ParamError::EmptyWindow { .. })
        ));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_byte_rate("10Gbit/s").unwrap(), 1.25e9);
        assert_eq!(parse_byte_rate("1GB/s").unwrap(), 1e9);
        assert_eq!(parse_byte_rate("1.5 MB/s").unwrap(), 1.5e6);
        assert_eq!(parse_byte_rate("1KiB/s").unwrap(), 1024.0);
        for bad in ["10", "10Gb", "10Gbit", "fastB/s", "10Xbit/s"] {
            assert!(parse_byte_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_count_rate("5000/s").unwrap(), 5000.0);
        assert!((parse_change_rate("2%/d").unwrap() * 86_400.0 - 0.02).abs() < 1e-12);
        assert!((parse_change_rate("1%/h").unwrap() * 3_600.0 - 0.01).abs() < 1e-12);
        assert!(parse_change_rate("2/d").is_err());
        assert_eq!(parse_duration("15m").unwrap(), 900.0);
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn validate_refuses_zero_rates() {
        let p = Params {
            bandwidth: 0.0,
            ..Params::default()
        };
        assert_eq!(
            p.validate(),
            Err(ParamError::NotPositive {
                what: "--bandwidth"
            })
        );
        assert!(Params::default().validate().is_ok());
    }
}
