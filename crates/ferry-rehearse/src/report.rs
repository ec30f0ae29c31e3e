//! The HTML report: the orchestrator's timeline page, then the setup, the
//! per-unit table (predicted against actual, held, cut, failed) and the checks.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use ferry_orch::report::escape;
use ferry_orch::MigrationStatus;

use crate::{units, Options, Summary};

fn ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{v} ms"))
}

fn reasons(m: &std::collections::BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "0".into();
    }
    m.iter()
        .map(|(k, n)| format!("{n} x {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The per-unit table and the setup, as an HTML section.
fn section(summary: &Summary, opts: &Options) -> String {
    let mut h = String::from("<section id=\"rehearsal\"><h2>The rehearsal</h2>\n");
    let _ = writeln!(
        h,
        "<p>{} sites on {} filers; link asked {} ms each way at {} Mbit/s, got {} (round trip {}); {} lane(s) planned, at most {} freeze(s) at once; namespaces {}; set-up {:.1} s, night {:.1} s.</p>",
        opts.sites,
        opts.filers,
        opts.latency.as_millis(),
        opts.rate_bytes * 8 / 1_000_000,
        escape(&summary.link.qdisc),
        summary.link.rtt_ms.map_or("unmeasured".into(), |ms| format!("{ms:.2} ms")),
        summary.parallel,
        summary.max_overlap,
        escape(&summary.namespaces.join(", ")),
        summary.setup_s,
        summary.night_s
    );
    h.push_str("<table>\n<tr><th>unit</th><th>night/lane</th><th>sites</th><th>state</th><th>attempts</th><th>freeze predicted</th><th>freeze</th><th>deviation</th><th>pre-copy predicted</th><th>pre-copy</th><th>deviation</th><th>held</th><th>cut</th><th>failed</th></tr>\n");
    for r in &summary.units {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.id),
            r.night.map_or("-".into(), |n| n.to_string()),
            r.lane.map_or("-".into(), |n| n.to_string()),
            r.sites,
            escape(&r.state),
            r.attempts,
            ms(r.predicted_freeze_ms),
            ms(r.freeze_ms),
            units::deviation_percent(r).map_or("-".into(), |d| format!("{d:+.0} %")),
            ms(r.predicted_precopy_ms),
            ms(r.precopy_ms),
            units::precopy_deviation_percent(r).map_or("-".into(), |d| format!("{d:+.0} %")),
            r.held,
            escape(&reasons(&r.cut)),
            escape(&reasons(&r.failed)),
        );
    }
    h.push_str("</table>\n<p>Requests by client:");
    for (kind, (sent, failed)) in &summary.requests {
        let _ = write!(h, " {kind}: {sent} sent, {failed} failed;");
    }
    h.push_str("</p></section>\n");
    h
}

/// Writes the report; its size in bytes.
pub fn write(
    path: &Path,
    status: Option<&MigrationStatus>,
    summary: &Summary,
    opts: &Options,
) -> anyhow::Result<usize> {
    let title = format!(
        "ferry rehearse: {} sites, {} filers, {} lane(s)",
        opts.sites, opts.filers, summary.parallel
    );
    let body = section(summary, opts) + &ferry_demo::check::checks_html(&summary.checks);
    let page = match status {
        Some(s) => {
            let page = ferry_orch::report::render_html(s, &title, false);
            match page.rfind("</main>") {
                Some(i) => format!("{}{body}{}", &page[..i], &page[i..]),
                None => page + &body,
            }
        }
        None => format!(
            "<!doctype html><meta charset=\"utf-8\"><title>{t}</title><h1>{t}</h1><p>No migration status was available.</p>{body}",
            t = escape(&title)
        ),
    };
    std::fs::write(path, &page).with_context(|| format!("writing {}", path.display()))?;
    Ok(page.len())
}
