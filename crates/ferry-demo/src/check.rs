//! The checker: what the demo proves after the run, read from the data itself
//! (every `orders.log` at the source and at the destination), the load
//! generator's record of acknowledged writes, and the orchestrator's journal
//! (`ferry migrate status --json`). Each check can fail; the broken-fence
//! fault (`--fault skip-freeze`) shows that it does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use ferry_orch::{Direction, MigrationStatus, Outcome, Step, StepRecord, UnitState, UnitStatus};

use super::load::LoadResult;
use super::topology::{Site, DESTINATION, SOURCE};

/// Stable names: tests and `--json` readers match on them.
pub const REQUESTS: &str = "requests";
pub const UNITS_DONE: &str = "units_done";
pub const NOTHING_LOST: &str = "writes_exactly_once";
pub const NO_SPLIT_BRAIN: &str = "no_split_brain";
pub const NO_EARLY_WRITES: &str = "no_early_destination_writes";
pub const VERIFIED: &str = "verified_at_flip";
pub const REPORT: &str = "report";
pub const FAILPOINT: &str = "failpoint_reached";
pub const ABANDONED: &str = "freeze_abandoned";
pub const ORCHESTRATOR: &str = "orchestrator";

#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok,
            detail: detail.into(),
        }
    }
}

/// One line of an orders.log: `<seq> <dc> <server> <unix_micros>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Order {
    seq: u64,
    dc: String,
    micros: u64,
    line: String,
}

struct Log {
    orders: Vec<Order>,
    malformed: usize,
}

fn read_log(path: &Path) -> Log {
    parse_log(&std::fs::read_to_string(path).unwrap_or_default())
}

/// Orders as `<seq> <dc> <server> <unix_micros>` lines, each ended by a newline.
fn parse_log(text: &str) -> Log {
    let mut log = Log {
        orders: Vec::new(),
        malformed: 0,
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let parsed = (f.len() == 4)
            .then(|| Some((f[0].parse().ok()?, f[3].parse().ok()?)))
            .flatten();
        match parsed {
            Some((seq, micros)) => log.orders.push(Order {
                seq,
                dc: f[1].to_string(),
                micros,
                line: line.to_string(),
            }),
            None => log.malformed += 1,
        }
    }
    // A torn last line (no newline) would also be a broken write.
    if !text.is_empty() && !text.ends_with('\n') {
        log.malformed += 1;
    }
    log
}

fn forward_steps(u: &UnitStatus, step: Step) -> impl Iterator<Item = &StepRecord> {
    u.steps
        .iter()
        .filter(move |s| s.step == step && s.direction == Direction::Forward)
}

/// When the fence of the attempt that went on to flip was complete: the end
/// of the last freeze that every router acknowledged (in-flight 0).
fn fenced_at_ms(u: &UnitStatus) -> Option<u64> {
    forward_steps(u, Step::Freeze)
        .filter(|s| s.outcome == Some(Outcome::Ok))
        .filter_map(|s| s.ended_at_ms)
        .max()
}

/// When the flip began: no destination write may be older.
fn flip_started_ms(u: &UnitStatus) -> Option<u64> {
    forward_steps(u, Step::Flip).map(|s| s.started_at_ms).min()
}

/// At most a few examples in a detail line.
fn examples(list: &[String]) -> String {
    let mut s = list.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if list.len() > 3 {
        let _ = write!(s, ", ... ({} in all)", list.len());
    }
    s
}

pub fn check_requests(load: &LoadResult) -> Check {
    let mut detail = format!(
        "{} sent ({} reads, {} writes acknowledged), {} failed",
        load.sent, load.reads, load.writes, load.failed
    );
    if !load.reasons.is_empty() {
        let reasons: Vec<String> = load
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} x {r}"))
            .collect();
        let _ = write!(detail, ": {}", reasons.join(", "));
    }
    let _ = write!(detail, "; slowest {} ms", load.slowest.as_millis());
    Check::new(REQUESTS, load.sent > 0 && load.failed == 0, detail)
}

pub fn check_units(status: &MigrationStatus) -> Check {
    let parts: Vec<String> = status
        .units
        .iter()
        .map(|u| {
            let freeze = u.freeze_ms.map_or("-".into(), |ms| format!("{ms} ms"));
            let state = serde_json::to_value(u.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            format!("{} {state}, freeze {freeze}, attempt {}", u.id, u.attempt)
        })
        .collect();
    let done = status
        .units
        .iter()
        .filter(|u| u.state == UnitState::Done)
        .count();
    Check::new(
        UNITS_DONE,
        !status.units.is_empty() && done == status.units.len(),
        format!("{done}/{} done: {}", status.units.len(), parts.join("; ")),
    )
}

/// The names of checks (c), (d), (e) and what they count: the orders in
/// files or in databases.
pub struct OrderChecks {
    pub exactly_once: &'static str,
    pub no_split_brain: &'static str,
    pub no_early_writes: &'static str,
    /// "lines", "rows".
    pub noun: &'static str,
}

/// The demo's orders: one line a write in each site's `orders.log`.
pub const FILE_ORDERS: OrderChecks = OrderChecks {
    exactly_once: NOTHING_LOST,
    no_split_brain: NO_SPLIT_BRAIN,
    no_early_writes: NO_EARLY_WRITES,
    noun: "lines",
};

/// (c), (d), (e): everything that needs the orders.log files.
pub fn check_data(
    sites: &[Site],
    work: &Path,
    acked_writes: &[Vec<u64>],
    status: Option<&MigrationStatus>,
) -> Vec<Check> {
    let (src_root, dst_root) = (work.join(SOURCE), work.join(DESTINATION));
    check_orders(&FILE_ORDERS, sites, acked_writes, status, |_, site| {
        (
            read_log(&site.dir(&src_root).join("orders.log")),
            read_log(&site.dir(&dst_root).join("orders.log")),
        )
    })
}

/// (c), (d), (e) over orders kept elsewhere: `orders` gives site i's orders
/// at the source and at the destination as `<seq> <dc> <server>
/// <unix_micros>` lines (each ended by a newline).
pub fn check_order_lines(
    names: &OrderChecks,
    sites: &[Site],
    acked_writes: &[Vec<u64>],
    status: Option<&MigrationStatus>,
    orders: impl Fn(usize, &Site) -> (String, String),
) -> Vec<Check> {
    check_orders(names, sites, acked_writes, status, |i, site| {
        let (src, dst) = orders(i, site);
        (parse_log(&src), parse_log(&dst))
    })
}

fn check_orders(
    names: &OrderChecks,
    sites: &[Site],
    acked_writes: &[Vec<u64>],
    status: Option<&MigrationStatus>,
    logs: impl Fn(usize, &Site) -> (Log, Log),
) -> Vec<Check> {
    let units: HashMap<&str, &UnitStatus> = status
        .map(|s| {
            s.units
                .iter()
                .flat_map(|u| u.filers.iter().map(move |f| (f.as_str(), u)))
                .collect()
        })
        .unwrap_or_default();
    let mut tally = Tally::default();
    for (i, site) in sites.iter().enumerate() {
        let (src, dst) = logs(i, site);
        tally.malformed += src.malformed + dst.malformed;
        tally.src_lines += src.orders.len();
        tally.dst_lines += dst.orders.len();
        let unit = units.get(site.filer.as_str()).copied();
        let flipped = unit.and_then(flip_started_ms);
        tally.exactly_once(site, &acked_writes[i], &dst);
        tally.fenced(site, unit.and_then(fenced_at_ms), flipped, &src, &dst);
        tally.not_early(site, flipped, &dst);
    }
    tally.into_checks(names, status.is_some())
}

/// What the orders.log files of every site showed, as counts and examples.
#[derive(Default)]
struct Tally {
    acked: usize,
    lost: Vec<String>,
    doubled: Vec<String>,
    unacked_landed: usize,
    split: Vec<String>,
    missing_copy: Vec<String>,
    early: Vec<String>,
    malformed: usize,
    src_lines: usize,
    dst_lines: usize,
    gra_writes: usize,
}

impl Tally {
    /// (c) every acknowledged write exactly once at the destination.
    fn exactly_once(&mut self, site: &Site, acked_writes: &[u64], dst: &Log) {
        let mut count: BTreeMap<u64, usize> = BTreeMap::new();
        for o in &dst.orders {
            *count.entry(o.seq).or_default() += 1;
        }
        let acked_here: HashSet<u64> = acked_writes.iter().copied().collect();
        for &seq in acked_writes {
            self.acked += 1;
            if !count.contains_key(&seq) {
                self.lost.push(format!("{} #{seq}", site.host));
            }
        }
        for (&seq, &n) in &count {
            if n > 1 {
                self.doubled.push(format!("{} #{seq} x{n}", site.host));
            }
            if !acked_here.contains(&seq) {
                self.unacked_landed += 1;
            }
        }
    }

    /// (d) nothing written at the source once the fence held, and all that
    /// was written there reached the destination.
    fn fenced(
        &mut self,
        site: &Site,
        fenced: Option<u64>,
        flipped: Option<u64>,
        src: &Log,
        dst: &Log,
    ) {
        if let Some(ms) = fenced {
            // Micros of a write are taken before its answer, the fence ends
            // after every answer: a write in the same millisecond is before it.
            let limit = (ms + 1) * 1000;
            for o in src.orders.iter().filter(|o| o.micros >= limit) {
                self.split.push(format!(
                    "{} #{} at the source {} ms after the freeze",
                    site.host,
                    o.seq,
                    (o.micros - ms * 1000) / 1000
                ));
            }
        }
        if flipped.is_some() {
            let at_dst: HashSet<&str> = dst.orders.iter().map(|o| o.line.as_str()).collect();
            for o in &src.orders {
                if !at_dst.contains(o.line.as_str()) {
                    self.missing_copy.push(format!("{} #{}", site.host, o.seq));
                }
            }
        }
    }

    /// (e) nothing written at the destination before the flip.
    fn not_early(&mut self, site: &Site, flipped: Option<u64>, dst: &Log) {
        for o in dst.orders.iter().filter(|o| o.dc == DESTINATION) {
            self.gra_writes += 1;
            let before = match flipped {
                Some(ms) => o.micros < ms * 1000,
                None => true,
            };
            if before {
                self.early.push(format!("{} #{}", site.host, o.seq));
            }
        }
    }

    /// The three checks; (d) needs the migration status to mean anything.
    fn into_checks(self, names: &OrderChecks, have_status: bool) -> Vec<Check> {
        let Tally {
            acked,
            lost,
            doubled,
            unacked_landed,
            split,
            missing_copy,
            early,
            malformed,
            src_lines,
            dst_lines,
            gra_writes,
        } = self;
        let mut c_detail = format!(
            "{acked} acknowledged writes; {} lost, {} doubled; {dst_lines} {} at {DESTINATION}",
            lost.len(),
            doubled.len(),
            names.noun
        );
        if unacked_landed > 0 {
            let _ = write!(
                c_detail,
                " ({unacked_landed} landed without an answer: allowed)"
            );
        }
        if malformed > 0 {
            let _ = write!(c_detail, "; {malformed} malformed {}", names.noun);
        }
        if !lost.is_empty() {
            let _ = write!(c_detail, "; lost: {}", examples(&lost));
        }
        if !doubled.is_empty() {
            let _ = write!(c_detail, "; doubled: {}", examples(&doubled));
        }
        let mut d_detail = format!(
            "{src_lines} writes at {SOURCE}: {} after the freeze, {} not at {DESTINATION}",
            split.len(),
            missing_copy.len()
        );
        if !split.is_empty() {
            let _ = write!(d_detail, "; {}", examples(&split));
        }
        if !missing_copy.is_empty() {
            let _ = write!(d_detail, "; missing: {}", examples(&missing_copy));
        }
        if !have_status {
            d_detail.push_str("; no migration status to compare with");
        }
        let mut e_detail = format!(
            "{} writes at {DESTINATION} before their site's flip",
            early.len()
        );
        let _ = write!(e_detail, " ({gra_writes} writes there in all)");
        if !early.is_empty() {
            let _ = write!(e_detail, "; {}", examples(&early));
        }
        vec![
            Check::new(
                names.exactly_once,
                acked > 0 && lost.is_empty() && doubled.is_empty() && malformed == 0,
                c_detail,
            ),
            Check::new(
                names.no_split_brain,
                have_status && split.is_empty() && missing_copy.is_empty(),
                d_detail,
            ),
            Check::new(names.no_early_writes, early.is_empty(), e_detail),
        ]
    }
}

/// (f): the flipping attempt of every unit verified its copy (the final copy
/// step, which ends with the Merkle comparison, ended ok).
pub fn check_verified(status: &MigrationStatus) -> Check {
    let mut parts = Vec::new();
    let mut bad = Vec::new();
    for u in &status.units {
        let attempts: Vec<u32> = {
            let mut a: Vec<u32> = forward_steps(u, Step::Flip).map(|s| s.attempt).collect();
            a.dedup();
            a
        };
        for a in attempts {
            let ok = forward_steps(u, Step::FinalCopy)
                .any(|s| s.attempt == a && s.outcome == Some(Outcome::Ok));
            if ok {
                parts.push(format!("{} attempt {a}", u.id));
            } else {
                bad.push(format!(
                    "{} attempt {a} flipped without a verified copy",
                    u.id
                ));
            }
        }
    }
    let detail = if bad.is_empty() {
        format!(
            "roots equal at {} flip(s): {}",
            parts.len(),
            parts.join(", ")
        )
    } else {
        bad.join("; ")
    };
    Check::new(VERIFIED, bad.is_empty() && !parts.is_empty(), detail)
}

/// The stop-router fault: the freeze that the stopped router could not
/// acknowledge was abandoned, and recorded.
pub fn check_abandoned(status: &MigrationStatus) -> Check {
    let abandoned: Vec<String> = status
        .units
        .iter()
        .flat_map(|u| {
            forward_steps(u, Step::Freeze)
                .filter(|s| s.outcome == Some(Outcome::Abandoned))
                .map(move |s| {
                    format!(
                        "{} attempt {} ({})",
                        u.id,
                        s.attempt,
                        s.detail.as_deref().unwrap_or("no detail")
                    )
                })
        })
        .collect();
    Check::new(
        ABANDONED,
        !abandoned.is_empty(),
        if abandoned.is_empty() {
            "no abandoned freeze in the journal".to_string()
        } else {
            abandoned.join("; ")
        },
    )
}

/// The checks as an HTML section, appended to the timeline page.
pub fn checks_html(checks: &[Check]) -> String {
    let mut h = String::from(
        "<section id=\"demo-checks\"><h2>What the demo checked</h2>\n<table>\n<tr><th>check</th><th>result</th><th>detail</th></tr>\n",
    );
    for c in checks {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td style=\"color:{}\">{}</td><td>{}</td></tr>",
            ferry_orch::report::escape(c.name),
            if c.ok { "green" } else { "red" },
            if c.ok { "pass" } else { "FAIL" },
            ferry_orch::report::escape(&c.detail)
        );
    }
    h.push_str("</table></section>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_orders_and_counts_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("orders.log");
        std::fs::write(
            &p,
            "1 par par-web-1 100\nbad line\n2 gra gra-web-2 200\n3 par",
        )
        .unwrap();
        let log = read_log(&p);
        assert_eq!(log.orders.len(), 2);
        assert_eq!(log.orders[1].dc, "gra");
        // "bad line" and the torn "3 par" (counted as malformed and as torn).
        assert_eq!(log.malformed, 3);
    }

    fn record(step: Step, attempt: u32, start: u64, end: u64, outcome: Outcome) -> StepRecord {
        StepRecord {
            step,
            attempt,
            direction: Direction::Forward,
            started_at_ms: start,
            ended_at_ms: Some(end),
            outcome: Some(outcome),
            epoch: None,
            detail: None,
        }
    }

    /// One unit on filer-1: freeze held at t=1000 ms, flip started at 1500.
    fn status() -> MigrationStatus {
        MigrationStatus {
            source: SOURCE.into(),
            destination: DESTINATION.into(),
            state: ferry_orch::RunState::Finished,
            started_at_ms: 0,
            updated_at_ms: 2000,
            waves: Vec::new(),
            units: vec![UnitStatus {
                id: "U1".into(),
                wave: Some(1),
                sites: 1,
                filers: vec!["filer-1".into()],
                state: UnitState::Done,
                direction: Direction::Forward,
                step: Some(Step::Done),
                attempt: 1,
                epoch: Some(2),
                freeze_ms: Some(600),
                message: None,
                steps: vec![
                    record(Step::Freeze, 1, 900, 1000, Outcome::Ok),
                    record(Step::FinalCopy, 1, 1000, 1400, Outcome::Ok),
                    record(Step::Flip, 1, 1500, 1510, Outcome::Ok),
                ],
            }],
        }
    }

    /// Writes the two copies of one site's orders.log and runs the data checks.
    fn data(src: &str, dst: &str, acked: &[u64]) -> Vec<Check> {
        let work = tempfile::tempdir().unwrap();
        let site = Site {
            host: "site-1.demo.test".into(),
            filer: "filer-1".into(),
            assets: Vec::new(),
        };
        for (dc, text) in [(SOURCE, src), (DESTINATION, dst)] {
            let dir = site.dir(&work.path().join(dc));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("orders.log"), text).unwrap();
        }
        check_data(&[site], work.path(), &[acked.to_vec()], Some(&status()))
    }

    fn ok(checks: &[Check], name: &str) -> bool {
        checks.iter().find(|c| c.name == name).unwrap().ok
    }

    #[test]
    fn a_clean_move_passes() {
        let src = "1 par par-web-1 500000\n";
        let dst = "1 par par-web-1 500000\n2 gra gra-web-1 1600000\n";
        let c = data(src, dst, &[1, 2]);
        assert!(c.iter().all(|c| c.ok), "{c:?}");
    }

    #[test]
    fn each_data_check_can_fail() {
        // A write at the source after the fence, never copied: split brain
        // and a lost acknowledged write.
        let src = "1 par par-web-1 500000\n2 par par-web-2 1200000\n";
        let dst = "1 par par-web-1 500000\n";
        let c = data(src, dst, &[1, 2]);
        assert!(!ok(&c, NO_SPLIT_BRAIN) && !ok(&c, NOTHING_LOST), "{c:?}");
        // A doubled line.
        let c = data(
            "",
            "1 gra gra-web-1 1600000\n1 gra gra-web-1 1600000\n",
            &[1],
        );
        assert!(!ok(&c, NOTHING_LOST), "{c:?}");
        // A destination write before the flip.
        let c = data("", "1 gra gra-web-1 1400000\n", &[1]);
        assert!(!ok(&c, NO_EARLY_WRITES) && ok(&c, NOTHING_LOST), "{c:?}");
    }

    #[test]
    fn a_flip_without_a_verified_copy_fails() {
        let mut s = status();
        assert!(check_verified(&s).ok);
        s.units[0].steps[1].outcome = Some(Outcome::Failed);
        assert!(!check_verified(&s).ok);
        assert!(!check_abandoned(&s).ok);
    }
}
