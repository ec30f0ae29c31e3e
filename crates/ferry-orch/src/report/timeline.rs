//! The freezes against their prediction, and the timeline: per night, the
//! units in lanes, each unit's steps on the night's time axis.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{escape, fmt_duration, fmt_utc, percent, step_class, unit_link, Expected};
use crate::status::{Direction, MigrationStatus, Outcome, Step, StepRecord, UnitState, UnitStatus};

/// One freeze window of one attempt, as drawn on the timeline.
#[derive(Debug, PartialEq)]
pub(super) struct FreezeSpan {
    pub(super) attempt: u32,
    pub(super) start: u64,
    pub(super) end: u64,
    /// "flipped" (the flip ended), "abandoned", "failed", or "open" (still frozen).
    pub(super) kind: &'static str,
}

/// Freeze start -> flip end for each attempt (and direction) that froze.
pub(super) fn freeze_spans(u: &UnitStatus, now: u64) -> Vec<FreezeSpan> {
    let mut spans = Vec::new();
    for f in u.steps.iter().filter(|r| r.step == Step::Freeze) {
        let same = |r: &&StepRecord| r.attempt == f.attempt && r.direction == f.direction;
        let flip = u
            .steps
            .iter()
            .filter(same)
            .find(|r| r.step == Step::Flip && r.ended_at_ms.is_some());
        let (end, kind) = if let Some(flip) = flip {
            let kind = match flip.outcome {
                Some(Outcome::Ok) | None => "flipped",
                Some(Outcome::Abandoned) => "abandoned",
                Some(Outcome::Failed) => "failed",
            };
            (flip.ended_at_ms.unwrap_or(now), kind)
        } else {
            // No flip: the freeze ended with the last step of the attempt
            // that gave it up, or is still open.
            let attempt: Vec<&StepRecord> = u
                .steps
                .iter()
                .filter(same)
                .filter(|r| r.started_at_ms >= f.started_at_ms)
                .collect();
            let running = attempt.iter().any(|r| r.ended_at_ms.is_none());
            let last_end = attempt.iter().filter_map(|r| r.ended_at_ms).max();
            let gave_up = attempt.iter().find_map(|r| match r.outcome {
                Some(Outcome::Abandoned) => Some("abandoned"),
                Some(Outcome::Failed) => Some("failed"),
                _ => None,
            });
            match (running, gave_up, last_end) {
                (false, Some(kind), Some(end)) => (end, kind),
                _ => (now.max(f.started_at_ms), "open"),
            }
        };
        spans.push(FreezeSpan {
            attempt: f.attempt,
            start: f.started_at_ms,
            end: end.max(f.started_at_ms),
            kind,
        });
    }
    spans
}

/// Each unit's freeze (the one that flipped, else the latest attempt's) as
/// a bar, with the plan's prediction as a mark on the same scale.
pub(super) fn freezes(out: &mut String, s: &MigrationStatus, expected: &Expected) {
    let now = s.updated_at_ms;
    // (unit, its freeze and how it ended, the prediction)
    type FreezeRow<'a> = (&'a UnitStatus, Option<(u64, &'static str)>, Option<u64>);
    let rows: Vec<FreezeRow> = s
        .units
        .iter()
        .map(|u| {
            let actual = match u.freeze_ms {
                Some(ms) => Some((ms, "flipped")),
                None => freeze_spans(u, now)
                    .last()
                    .map(|f| (f.end - f.start, f.kind)),
            };
            (u, actual, expected.unit(&u.id).freeze_ms)
        })
        .filter(|(_, a, p)| a.is_some() || p.is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    out.push_str("<section id=\"freezes\">\n<h2>Freezes</h2>\n");
    let scale = rows
        .iter()
        .map(|(_, a, p)| a.map_or(0, |a| a.0).max(p.unwrap_or(0)))
        .max()
        .unwrap_or(0)
        .max(1);
    for (u, actual, predicted) in &rows {
        let id = escape(&u.id);
        let over = matches!((actual, predicted), (Some((a, _)), Some(p)) if a > p);
        let _ = write!(
            out,
            "<div class=\"fz-row{over}\" id=\"freeze-{id}\" data-freeze-ms=\"{ms}\" data-predicted-ms=\"{pms}\">\
             {link}<div class=\"fz-track\">",
            over = if over { " fz-over" } else { "" },
            ms = actual.map(|a| a.0.to_string()).unwrap_or_default(),
            pms = predicted.map(|p| p.to_string()).unwrap_or_default(),
            link = unit_link(&u.id, "label"),
        );
        if let Some((ms, kind)) = actual {
            let _ = write!(
                out,
                "<div class=\"fz-bar fz-{kind}\" style=\"width:{:.3}%\"></div>",
                percent(*ms, scale).max(0.5)
            );
        }
        if let Some(p) = predicted {
            let _ = write!(
                out,
                "<div class=\"fz-pred\" style=\"left:{:.3}%\" title=\"predicted {}\"></div>",
                percent(*p, scale),
                fmt_duration(*p)
            );
        }
        // How the freeze ended, when it did not flip.
        let so_far = match actual.map(|(_, kind)| kind) {
            Some("open") => " so far",
            Some("abandoned") => " (abandoned)",
            Some("failed") => " (failed)",
            _ => "",
        };
        let text = match (actual, predicted) {
            (Some((a, _)), Some(p)) => format!(
                "{}{so_far}, predicted {}",
                fmt_duration(*a),
                fmt_duration(*p)
            ),
            (Some((a, _)), None) => format!("{}{so_far}", fmt_duration(*a)),
            (None, Some(p)) => format!("predicted {}", fmt_duration(*p)),
            (None, None) => String::new(),
        };
        let _ = writeln!(out, "</div><div class=\"fz-text\">{text}</div></div>");
    }
    out.push_str(
        "<p class=\"legend\"><span class=\"item\"><span class=\"key fz-flipped\"></span>freeze sent &rarr; \
         flip applied</span> <span class=\"item\"><span class=\"key fz-open\"></span>still frozen</span> \
         <span class=\"item\"><span class=\"key fz-abandoned\"></span>abandoned</span>",
    );
    if rows.iter().any(|(_, _, p)| p.is_some()) {
        out.push_str(
            " <span class=\"item\"><span class=\"key fz-over\"></span>longer than predicted</span> \
             <span class=\"item\"><span class=\"key pred\"></span>the plan's prediction</span>",
        );
    }
    out.push_str("</p>\n</section>\n");
}

/// One night of the timeline: its units by lane.
pub(super) struct Night<'a> {
    pub(super) night: Option<u32>,
    /// Whether the lanes are the plan's (else drawn from the steps).
    pub(super) planned: bool,
    /// Sorted by lane (units not started last), then start.
    pub(super) rows: Vec<Row<'a>>,
}

pub(super) struct Row<'a> {
    pub(super) unit: &'a UnitStatus,
    pub(super) lane: Option<u32>,
    /// When it ran ([`active_span`]).
    pub(super) span: Option<(u64, u64)>,
}

/// When a unit ran: its first step's start to its last step's end (`now`
/// while one runs); None before it starts.
fn active_span(u: &UnitStatus, now: u64) -> Option<(u64, u64)> {
    let start = u.steps.iter().map(|r| r.started_at_ms).min()?;
    let end = u
        .steps
        .iter()
        .map(|r| r.ended_at_ms.unwrap_or(now.max(r.started_at_ms)))
        .max()?;
    Some((start, end.max(start)))
}

/// The units by night, each night's units in lanes: the plan's when it gives
/// one for every unit of the night, else the first lane free when the unit
/// started (units that ran at the same time get parallel lanes).
pub(super) fn layout<'a>(s: &'a MigrationStatus, expected: &Expected) -> Vec<Night<'a>> {
    let now = s.updated_at_ms;
    // Nights in order, units the plan did not schedule last.
    let mut by_night: BTreeMap<(bool, u32), Vec<&UnitStatus>> = BTreeMap::new();
    for u in &s.units {
        let key = (u.wave.is_none(), u.wave.unwrap_or(0));
        by_night.entry(key).or_default().push(u);
    }
    let mut nights = Vec::new();
    for units in by_night.into_values() {
        let planned = units.iter().all(|u| expected.unit(&u.id).lane.is_some());
        let mut rows: Vec<Row> = units
            .iter()
            .map(|u| Row {
                unit: u,
                lane: None,
                span: active_span(u, now),
            })
            .collect();
        if planned {
            for r in &mut rows {
                r.lane = expected.unit(&r.unit.id).lane;
            }
        } else {
            rows.sort_by_key(|r| r.span.map(|(start, _)| start));
            // The end of the last unit placed in each lane.
            let mut lane_ends: Vec<u64> = Vec::new();
            for r in rows.iter_mut() {
                let Some((start, end)) = r.span else { continue };
                let lane = match lane_ends.iter().position(|e| *e <= start) {
                    Some(l) => l,
                    None => {
                        lane_ends.push(0);
                        lane_ends.len() - 1
                    }
                };
                lane_ends[lane] = end;
                r.lane = Some(lane as u32);
            }
        }
        // By lane, each lane in the order its units ran, units not started last.
        rows.sort_by_key(|r| {
            (
                r.lane.is_none(),
                r.lane,
                r.span.map_or(u64::MAX, |(start, _)| start),
            )
        });
        nights.push(Night {
            night: units[0].wave,
            planned,
            rows,
        });
    }
    nights
}

pub(super) fn timeline(out: &mut String, s: &MigrationStatus, nights: &[Night]) {
    out.push_str("<section id=\"timeline\">\n<h2>Timeline</h2>\n");
    let now = s.updated_at_ms;
    for night in nights {
        let (id, name) = match night.night {
            Some(n) => (format!("night-{n}"), format!("Night {n}")),
            None => ("night-none".to_string(), "Not in a night".to_string()),
        };
        let lanes_from = if night.planned {
            "lanes of the plan"
        } else {
            "lanes as run"
        };
        let _ = writeln!(
            out,
            "<div class=\"night\" id=\"{id}\" data-lanes=\"{}\"><h3>{name} <span class=\"count\">{} units, {lanes_from}</span></h3>",
            if night.planned { "plan" } else { "run" },
            night.rows.len(),
        );
        let spans: Vec<(u64, u64)> = night.rows.iter().filter_map(|r| r.span).collect();
        let t0 = spans.iter().map(|s| s.0).min();
        let t1 = spans.iter().map(|s| s.1).max();
        let (t0, t1) = match (t0, t1) {
            (Some(a), Some(b)) => (a, b),
            _ => (now, now),
        };
        let span = t1.saturating_sub(t0).max(1);
        if spans.is_empty() {
            out.push_str("<p class=\"note\">not started</p>\n");
        } else {
            let _ = writeln!(
                out,
                "<div class=\"axis\" data-start=\"{t0}\" data-end=\"{t1}\"><span>{}</span><span>+{}</span><span>+{}</span></div>",
                fmt_utc(t0),
                fmt_duration(span / 2),
                fmt_duration(span),
            );
        }
        let mut open_lane: Option<Option<u32>> = None;
        for row in &night.rows {
            if open_lane != Some(row.lane) {
                if open_lane.is_some() {
                    out.push_str("</div>\n");
                }
                match row.lane {
                    Some(l) => {
                        let _ = write!(
                            out,
                            "<div class=\"lane\" data-lane=\"{l}\"><div class=\"lane-name\">lane {l} {}</div>",
                            lane_progress(night, l)
                        );
                    }
                    None => out.push_str(
                        "<div class=\"lane\" data-lane=\"\"><div class=\"lane-name\">not started</div>",
                    ),
                }
                open_lane = Some(row.lane);
            }
            timeline_row(out, row, now, t0, span);
        }
        if open_lane.is_some() {
            out.push_str("</div>\n");
        }
        out.push_str("</div>\n");
    }
    out.push_str(
        "<p class=\"legend\"><span class=\"item\"><span class=\"key step-ok\"></span>ok</span> \
         <span class=\"item\"><span class=\"key step-running\"></span>running</span> \
         <span class=\"item\"><span class=\"key step-failed\"></span>failed</span> \
         <span class=\"item\"><span class=\"key step-abandoned\"></span>abandoned</span> \
         <span class=\"item\"><span class=\"key step-freeze\"></span>freeze (freeze sent &rarr; \
         flip applied)</span></p>\n",
    );
    out.push_str("</section>\n");
}

/// Where lane `lane` of `night` stands, live: its units done (of all),
/// and the unit it runs now with its step (`class="lane-progress"`, with
/// `data-done`, `data-units` and `data-running`).
fn lane_progress(night: &Night, lane: u32) -> String {
    let rows: Vec<&Row> = night.rows.iter().filter(|r| r.lane == Some(lane)).collect();
    let done = rows
        .iter()
        .filter(|r| matches!(r.unit.state, UnitState::Done | UnitState::RolledBack))
        .count();
    let failed = rows
        .iter()
        .filter(|r| r.unit.state == UnitState::Failed)
        .count();
    // The unit in its freeze stage (window .. done) first; else the one
    // pre-copying.
    let active = |r: &&&Row| matches!(r.unit.state, UnitState::Running | UnitState::Waiting);
    let running = rows
        .iter()
        .filter(active)
        .find(|r| r.unit.step.is_some_and(|s| s >= Step::AwaitWindow))
        .or_else(|| rows.iter().find(active));
    let mut text = format!("{done}/{} done", rows.len());
    if failed > 0 {
        let _ = write!(text, ", {failed} failed");
    }
    if let Some(r) = running {
        let _ = write!(
            text,
            " &middot; {} {}",
            escape(&r.unit.id),
            r.unit.step.map_or("", |s| s.as_str())
        );
    }
    format!(
        "<span class=\"lane-progress\" data-done=\"{done}\" data-units=\"{}\" data-running=\"{}\">{text}</span>",
        rows.len(),
        running.map(|r| escape(&r.unit.id)).unwrap_or_default()
    )
}

/// One unit's steps on its night's axis (`t0`, `span` ms wide).
fn timeline_row(out: &mut String, row: &Row, now: u64, t0: u64, span: u64) {
    let u = row.unit;
    let pos = |t: u64| percent(t.saturating_sub(t0), span);
    let _ = write!(
        out,
        "<div class=\"timeline-row\" id=\"timeline-{id}\" data-state=\"{}\" data-lane=\"{}\">\
         {link}<div class=\"track\">",
        u.state.as_str(),
        row.lane.map(|l| l.to_string()).unwrap_or_default(),
        id = escape(&u.id),
        link = unit_link(&u.id, "label"),
    );
    for f in freeze_spans(u, now) {
        let len = f.end - f.start;
        let _ = write!(
            out,
            "<div class=\"step step-freeze freeze-{kind}\" data-attempt=\"{a}\" data-freeze-ms=\"{len}\" \
             style=\"left:{l:.3}%;width:{w:.3}%\" title=\"freeze, attempt {a}: {d} ({kind})\">\
             <span class=\"freeze-len\">freeze {d}</span></div>",
            kind = f.kind,
            a = f.attempt,
            l = pos(f.start),
            w = (pos(f.end) - pos(f.start)).max(0.2),
            d = fmt_duration(len),
        );
    }
    for r in &u.steps {
        let end = r.ended_at_ms.unwrap_or(now).max(r.started_at_ms);
        let _ = write!(
            out,
            "<div class=\"step {class}\" data-step=\"{step}\" data-attempt=\"{a}\" \
             style=\"left:{l:.3}%;width:{w:.3}%\" title=\"{title}\"></div>",
            class = step_class(r),
            step = r.step.as_str(),
            a = r.attempt,
            l = pos(r.started_at_ms),
            w = (pos(end) - pos(r.started_at_ms)).max(0.2),
            title = escape(&step_title(r, now)),
        );
    }
    out.push_str("</div>");
    let freeze = u
        .freeze_ms
        .map(|ms| format!("freeze {}", fmt_duration(ms)))
        .unwrap_or_default();
    let _ = writeln!(out, "<div class=\"freeze-total\">{freeze}</div></div>");
}

/// `freeze (attempt 2): 1.2 s, epoch 7: detail`.
fn step_title(r: &StepRecord, now: u64) -> String {
    let end = r.ended_at_ms.unwrap_or(now).max(r.started_at_ms);
    let mut title = format!(
        "{} (attempt {}): {}",
        r.step.as_str(),
        r.attempt,
        fmt_duration(end - r.started_at_ms)
    );
    if r.ended_at_ms.is_none() {
        title.push_str(", running");
    }
    if r.direction == Direction::Reverse {
        title.push_str(", reverse");
    }
    if let Some(e) = r.epoch {
        let _ = write!(title, ", epoch {e}");
    }
    if let Some(d) = &r.detail {
        title.push_str(": ");
        title.push_str(d);
    }
    title
}
