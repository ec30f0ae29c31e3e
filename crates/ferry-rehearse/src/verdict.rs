//! The rehearsal's own check beside the demo's: the traffic mix
//! (downloads, slow readers, uploads, WebSocket sessions) per unit.

use std::collections::BTreeMap;

use ferry_demo::check::Check;

use crate::traffic;
use crate::units::UnitRow;

/// Names of the checks this crate adds to the demo's.
pub const TRAFFIC_MIX: &str = "traffic_mix";

/// The downloads, slow readers, uploads and WebSocket sessions: some of
/// each kind done, none failed outside a freeze; those cut across a freeze
/// are listed (by reason), not failures.
pub(crate) fn check_mix(records: &[traffic::Record], rows: &[UnitRow]) -> Check {
    use traffic::Kind;
    let mixed: Vec<&traffic::Record> = records
        .iter()
        .filter(|r| matches!(r.kind, Kind::Download | Kind::SlowReader))
        .collect();
    let bytes: u64 = mixed.iter().map(|r| r.bytes).sum();
    let mut cut: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failed: BTreeMap<&str, u64> = BTreeMap::new();
    for row in rows {
        for (k, n) in &row.cut {
            *cut.entry(k).or_default() += n;
        }
        for (k, n) in &row.failed {
            *failed.entry(k).or_default() += n;
        }
    }
    let list = |m: &BTreeMap<&str, u64>| {
        m.iter()
            .map(|(k, n)| format!("{n} x {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let slow = mixed
        .iter()
        .filter(|r| r.kind == traffic::Kind::SlowReader)
        .count();
    let mut detail = format!(
        "{} large downloads ({slow} by slow readers), {} MB; all clients: cut across a freeze: {}; failed otherwise: {}",
        mixed.len(),
        bytes / 1_000_000,
        if cut.is_empty() { "none".into() } else { list(&cut) },
        if failed.is_empty() { "none".into() } else { list(&failed) },
    );
    let ok_downloads = mixed.iter().filter(|r| r.failed.is_none()).count();
    detail.push_str(&format!("; {ok_downloads} downloads complete"));
    let done = |kind: Kind| {
        let of_kind = records.iter().filter(|r| r.kind == kind);
        let (mut sent, mut ok, mut bytes) = (0, 0, 0);
        for r in of_kind {
            sent += 1;
            if r.failed.is_none() {
                ok += 1;
                bytes += r.bytes;
            }
        }
        (sent, ok, bytes)
    };
    let (uploads, uploaded, up_bytes) = done(Kind::Upload);
    let (sessions, whole, _) = done(Kind::Websocket);
    detail.push_str(&format!(
        "; {uploaded}/{uploads} uploads acknowledged ({} MB); {whole}/{sessions} WebSocket sessions whole",
        up_bytes / 1_000_000
    ));
    // Some of every kind that ran went through whole.
    let ok = ok_downloads > 0 && (uploads == 0 || uploaded > 0) && whole > 0 && failed.is_empty();
    Check::new(TRAFFIC_MIX, ok, detail)
}
