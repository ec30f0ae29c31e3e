//! The migration as an HTML page, readable on a phone at night: run state,
//! waves, a table of units (cards below 640 px), each unit's freeze as a bar
//! against the plan's prediction, a timeline per night with the units that
//! run at the same time in parallel lanes, and each unit's step events
//! under an anchor (`#events-ID`) that every mention of the unit links to.
//!
//! One renderer serves two uses: the tracking server's live page (`live`:
//! an inline script swaps in the `<main>` fragment the server pushes over
//! server-sent events) and the static report the demo writes to a file.
//! The page is self-contained (inline CSS, no external assets), follows the
//! reader's light or dark scheme, and every string taken from the status is
//! HTML-escaped. What the plan expected ([`Expected`]: lanes and predicted
//! freezes) is optional; without a lane from the plan, lanes are drawn from
//! the steps as they ran.
//!
//! Stable hooks for tests and people: `id="run-state"`, `id="wave-N"`,
//! `id="unit-ID"` (table row, with `data-state`), `id="freeze-ID"` (with
//! `data-freeze-ms`, `data-predicted-ms`), `id="night-N"`, `class="lane"`
//! with `data-lane`, `id="timeline-ID"` (with `data-lane`),
//! `class="step step-ok|step-failed|step-abandoned|step-running"` with
//! `data-step`, `class="step step-freeze"` with `data-freeze-ms`, and
//! `id="events-ID"` (the unit's events, `li` with `data-step`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::plan::Plan;
use crate::status::{
    Direction, MigrationStatus, Outcome, RunState, Step, StepRecord, UnitState, UnitStatus,
};

/// The `id` of the `<main>` element; the live script replaces it whole.
pub const MAIN_ID: &str = "migration";

/// The path the live page subscribes to.
pub const EVENTS_PATH: &str = "/v1/migration/events";

/// What the plan expected of each unit, shown beside what happened.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expected {
    units: BTreeMap<String, ExpectedUnit>,
}

/// What the plan expected of one unit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ExpectedUnit {
    /// Its lane within its night (the planner's `lane`, from 0).
    pub lane: Option<u32>,
    /// The predicted freeze (the planner's `freeze.total_s`), ms.
    pub freeze_ms: Option<u64>,
}

impl Expected {
    /// Lanes and predicted freezes of every unit of `plan`.
    pub fn from_plan(plan: &Plan) -> Expected {
        let mut e = Expected::default();
        for u in &plan.units {
            e.set(
                &u.id,
                ExpectedUnit {
                    lane: u.lane,
                    freeze_ms: u
                        .freeze
                        .as_ref()
                        .filter(|f| f.total_s.is_finite() && f.total_s >= 0.0)
                        .map(|f| (f.total_s * 1000.0).round() as u64),
                },
            );
        }
        e
    }

    pub fn set(&mut self, unit: &str, expected: ExpectedUnit) {
        self.units.insert(unit.to_string(), expected);
    }

    pub fn unit(&self, unit: &str) -> ExpectedUnit {
        self.units.get(unit).copied().unwrap_or_default()
    }
}

/// A whole HTML page for `status`. With `live`, the page follows the
/// tracking server's event stream (and falls back to a 2 s refresh without
/// JavaScript); without, it is a static report.
pub fn render_html(status: &MigrationStatus, title: &str, live: bool) -> String {
    render_html_with(status, &Expected::default(), title, live)
}

/// [`render_html`] with what the plan expected.
pub fn render_html_with(
    status: &MigrationStatus,
    expected: &Expected,
    title: &str,
    live: bool,
) -> String {
    render_page(title, &render_main_with(status, expected), live)
}

/// A whole page around an already rendered `<main>` fragment (the tracking
/// server uses it for the page shown before any status exists).
pub fn render_page(title: &str, main: &str, live: bool) -> String {
    let mut out = String::with_capacity(main.len() + 12 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<meta name=\"color-scheme\" content=\"light dark\">\n");
    if live {
        out.push_str("<noscript><meta http-equiv=\"refresh\" content=\"2\"></noscript>\n");
    }
    let _ = writeln!(out, "<title>{}</title>", escape(title));
    out.push_str("<style>");
    out.push_str(CSS);
    out.push_str("</style>\n</head>\n<body>\n<header>");
    let _ = write!(out, "<h1>{}</h1>", escape(title));
    if live {
        out.push_str("<span id=\"live\" data-live=\"connecting\">connecting</span>");
    }
    out.push_str("</header>\n");
    out.push_str(main);
    out.push('\n');
    if live {
        out.push_str("<script>");
        out.push_str(
            &LIVE_JS
                .replace("{EVENTS}", EVENTS_PATH)
                .replace("{MAIN}", MAIN_ID),
        );
        out.push_str("</script>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// The `<main id="migration">` fragment: everything the status shows. The
/// tracking server sends exactly this over its event stream.
pub fn render_main(status: &MigrationStatus) -> String {
    render_main_with(status, &Expected::default())
}

/// [`render_main`] with what the plan expected.
pub fn render_main_with(status: &MigrationStatus, expected: &Expected) -> String {
    let mut out = String::with_capacity(8192 + status.units.len() * 3072);
    let _ = writeln!(
        out,
        "<main id=\"{MAIN_ID}\" data-state=\"{}\" data-updated=\"{}\">",
        run_state_str(status.state),
        status.updated_at_ms
    );
    let nights = layout(status, expected);
    summary(&mut out, status);
    waves(&mut out, status);
    units_table(&mut out, status, &nights);
    freezes(&mut out, status, expected);
    timeline(&mut out, status, &nights);
    events(&mut out, status);
    out.push_str("</main>");
    out
}

/// The `<main>` fragment shown while there is no status to show.
pub fn render_empty_main(message: &str) -> String {
    format!(
        "<main id=\"{MAIN_ID}\" data-state=\"none\"><p class=\"empty\">{}</p></main>",
        escape(message)
    )
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// A link to the unit's events.
fn unit_link(id: &str, class: &str) -> String {
    let id = escape(id);
    format!("<a class=\"{class}\" href=\"#events-{id}\">{id}</a>")
}

fn summary(out: &mut String, s: &MigrationStatus) {
    let total = s.units.len();
    let done = s
        .units
        .iter()
        .filter(|u| u.state == UnitState::Done)
        .count();
    let elapsed = s.updated_at_ms.saturating_sub(s.started_at_ms);
    out.push_str("<section id=\"summary\">\n");
    let _ = writeln!(
        out,
        "<p><span id=\"run-state\" class=\"badge run-{0}\" data-state=\"{0}\">{0}</span> \
         <span id=\"route\"><span class=\"dc\">{1}</span> &rarr; <span class=\"dc\">{2}</span></span></p>",
        run_state_str(s.state),
        escape(&s.source),
        escape(&s.destination),
    );
    let _ = writeln!(
        out,
        "<p class=\"meta\">{done}/{total} units done &middot; started {} &middot; updated {} \
         &middot; elapsed {}</p>",
        fmt_utc(s.started_at_ms),
        fmt_utc(s.updated_at_ms),
        fmt_duration(elapsed),
    );
    out.push_str("</section>\n");
}

fn waves(out: &mut String, s: &MigrationStatus) {
    if s.waves.is_empty() {
        return;
    }
    out.push_str("<section id=\"waves\">\n<h2>Waves</h2>\n");
    for w in &s.waves {
        let total = w.units.len();
        let pct = percent(w.done as u64, total as u64);
        let _ = writeln!(
            out,
            "<div class=\"wave\" id=\"wave-{n}\" data-done=\"{d}\" data-total=\"{total}\">\
             <h3>Night {n} <span class=\"count\">{d}/{total}</span></h3>\
             <div class=\"progress\"><div class=\"progress-bar\" style=\"width:{pct:.1}%\"></div></div>",
            n = w.night,
            d = w.done,
        );
        out.push_str("<ul class=\"wave-units\">");
        for id in &w.units {
            let state = s
                .units
                .iter()
                .find(|u| &u.id == id)
                .map(|u| unit_state_str(u.state))
                .unwrap_or("unknown");
            let _ = write!(
                out,
                "<li class=\"badge unit-{state}\" data-unit=\"{id}\" data-state=\"{state}\">{link}</li>",
                id = escape(id),
                link = unit_link(id, "unit-link"),
            );
        }
        out.push_str("</ul></div>\n");
    }
    out.push_str("</section>\n");
}

fn units_table(out: &mut String, s: &MigrationStatus, nights: &[Night]) {
    out.push_str("<section id=\"units-section\">\n<h2>Units</h2>\n<div class=\"scroll\">");
    out.push_str(
        "<table id=\"units\"><thead><tr><th>unit</th><th>night</th><th>lane</th><th>sites</th>\
         <th>state</th><th>step</th><th>attempt</th><th>epoch</th><th>freeze</th><th>message</th>\
         </tr></thead>\n<tbody>\n",
    );
    let lane_of = |id: &str| {
        nights
            .iter()
            .flat_map(|n| &n.rows)
            .find(|r| r.unit.id == id)
            .and_then(|r| r.lane)
    };
    for u in &s.units {
        let id = escape(&u.id);
        let state = unit_state_str(u.state);
        let dir = if u.direction == Direction::Reverse {
            " <span class=\"reverse\">(reverse)</span>"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<tr id=\"unit-{id}\" data-state=\"{state}\" class=\"unit\">\
             <td class=\"col-id\" data-label=\"unit\">{link}</td>\
             <td class=\"col-wave\" data-label=\"night\">{wave}</td>\
             <td class=\"col-lane\" data-label=\"lane\">{lane}</td>\
             <td class=\"col-sites\" data-label=\"sites\">{sites}</td>\
             <td class=\"col-state\" data-label=\"state\"><span><span class=\"badge unit-{state}\">{state}</span>{dir}</span></td>\
             <td class=\"col-step\" data-label=\"step\">{step}</td>\
             <td class=\"col-attempt\" data-label=\"attempt\">{attempt}</td>\
             <td class=\"col-epoch\" data-label=\"epoch\">{epoch}</td>\
             <td class=\"col-freeze\" data-label=\"freeze\">{freeze}</td>\
             <td class=\"col-message\" data-label=\"message\">{message}</td></tr>",
            link = unit_link(&u.id, "unit-link"),
            wave = u.wave.map(|w| w.to_string()).unwrap_or_else(|| "-".into()),
            lane = lane_of(&u.id).map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            sites = u.sites,
            step = u.step.map(Step::as_str).unwrap_or("-"),
            attempt = u.attempt,
            epoch = u.epoch.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
            freeze = u.freeze_ms.map(fmt_duration).unwrap_or_else(|| "-".into()),
            message = u.message.as_deref().map(escape).unwrap_or_default(),
        );
    }
    out.push_str("</tbody></table></div>\n</section>\n");
}

/// One freeze window of one attempt, as drawn on the timeline.
#[derive(Debug, PartialEq)]
struct FreezeSpan {
    attempt: u32,
    start: u64,
    end: u64,
    /// "flipped" (the flip ended), "abandoned", "failed", or "open" (still frozen).
    kind: &'static str,
}

/// Freeze start -> flip end for each attempt (and direction) that froze.
fn freeze_spans(u: &UnitStatus, now: u64) -> Vec<FreezeSpan> {
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
fn freezes(out: &mut String, s: &MigrationStatus, expected: &Expected) {
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
         <span class=\"item\"><span class=\"key fz-abandoned\"></span>abandoned</span> \
         <span class=\"item\"><span class=\"key fz-over\"></span>longer than predicted</span> \
         <span class=\"item\"><span class=\"key pred\"></span>the plan's prediction</span></p>\n</section>\n",
    );
}

/// One night of the timeline: its units by lane.
struct Night<'a> {
    night: Option<u32>,
    /// Whether the lanes are the plan's (else drawn from the steps).
    planned: bool,
    /// Sorted by lane (units not started last), then start.
    rows: Vec<Row<'a>>,
}

struct Row<'a> {
    unit: &'a UnitStatus,
    lane: Option<u32>,
    /// When it ran ([`active_span`]).
    span: Option<(u64, u64)>,
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
fn layout<'a>(s: &'a MigrationStatus, expected: &Expected) -> Vec<Night<'a>> {
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

fn timeline(out: &mut String, s: &MigrationStatus, nights: &[Night]) {
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
                            "<div class=\"lane\" data-lane=\"{l}\"><div class=\"lane-name\">lane {l}</div>"
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

/// One unit's steps on its night's axis (`t0`, `span` ms wide).
fn timeline_row(out: &mut String, row: &Row, now: u64, t0: u64, span: u64) {
    let u = row.unit;
    let pos = |t: u64| percent(t.saturating_sub(t0), span);
    let _ = write!(
        out,
        "<div class=\"timeline-row\" id=\"timeline-{id}\" data-state=\"{}\" data-lane=\"{}\">\
         {link}<div class=\"track\">",
        unit_state_str(u.state),
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

/// Each unit's steps as the journal recorded them, under `#events-ID`.
fn events(out: &mut String, s: &MigrationStatus) {
    out.push_str("<section id=\"events\">\n<h2>Events by unit</h2>\n");
    let now = s.updated_at_ms;
    for u in &s.units {
        let id = escape(&u.id);
        let state = unit_state_str(u.state);
        let _ = write!(
            out,
            "<section class=\"unit-events\" id=\"events-{id}\" data-unit=\"{id}\">\
             <h3>{id} <span class=\"badge unit-{state}\">{state}</span>\
             <a class=\"up\" href=\"#unit-{id}\">unit &uarr;</a></h3>",
        );
        if u.steps.is_empty() {
            out.push_str("<p class=\"empty\">no events yet</p></section>\n");
            continue;
        }
        out.push_str("<ol class=\"events\">");
        for r in &u.steps {
            let end = r.ended_at_ms.unwrap_or(now).max(r.started_at_ms);
            let outcome = match (r.outcome, r.ended_at_ms) {
                (Some(Outcome::Ok), _) => "ok",
                (Some(Outcome::Failed), _) => "failed",
                (Some(Outcome::Abandoned), _) => "abandoned",
                (None, None) => "running",
                (None, Some(_)) => "ended",
            };
            let mut facts = format!("{outcome} after {}", fmt_duration(end - r.started_at_ms));
            if r.direction == Direction::Reverse {
                facts.push_str(" &middot; reverse");
            }
            if let Some(e) = r.epoch {
                let _ = write!(facts, " &middot; epoch {e}");
            }
            let _ = write!(
                out,
                "<li class=\"ev ev-{class}\" data-step=\"{step}\" data-attempt=\"{a}\">\
                 <time title=\"{utc}\">{clock}</time><span class=\"ev-step\">{step}</span> #{a} &middot; {facts}",
                class = step_class(r).trim_start_matches("step-"),
                step = r.step.as_str(),
                a = r.attempt,
                utc = fmt_utc(r.started_at_ms),
                clock = fmt_clock(r.started_at_ms),
            );
            if let Some(d) = &r.detail {
                let _ = write!(out, "<div class=\"detail\">{}</div>", escape(d));
            }
            out.push_str("</li>");
        }
        out.push_str("</ol></section>\n");
    }
    out.push_str("</section>\n");
}

fn step_class(r: &StepRecord) -> &'static str {
    match (r.outcome, r.ended_at_ms) {
        (Some(Outcome::Ok), _) => "step-ok",
        (Some(Outcome::Failed), _) => "step-failed",
        (Some(Outcome::Abandoned), _) => "step-abandoned",
        (None, None) => "step-running",
        (None, Some(_)) => "step-unknown",
    }
}

fn run_state_str(s: RunState) -> &'static str {
    match s {
        RunState::Running => "running",
        RunState::Finished => "finished",
        RunState::Stopped => "stopped",
    }
}

fn unit_state_str(s: UnitState) -> &'static str {
    match s {
        UnitState::Pending => "pending",
        UnitState::Running => "running",
        UnitState::Waiting => "waiting",
        UnitState::Done => "done",
        UnitState::Failed => "failed",
        UnitState::RolledBack => "rolled_back",
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 * 100.0 / whole as f64).clamp(0.0, 100.0)
}

/// `850 ms`, `12.3 s`, `4m05s`, `2h03m`.
pub fn fmt_duration(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn fmt_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The time of day of `ms` since the Unix epoch, `HH:MM:SS` (UTC).
fn fmt_clock(ms: u64) -> String {
    let rem = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", rem / 3600, (rem / 60) % 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date, counting in
/// 400-year eras of 146,097 days whose years start on March 1st (so the
/// leap day is the last day of the year).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of March-based year
    let mp = (5 * doy + 2) / 153; // March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The page's style: phone first (cards for the units table below 640 px,
/// labels above the tracks), dark when the reader's system is.
const CSS: &str = include_str!("report/page.css");

/// Follows the server's event stream: every `status` event carries a fresh
/// `<main>` fragment that replaces the current one.
const LIVE_JS: &str = include_str!("report/live.js");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::WaveStatus;

    fn rec(
        step: Step,
        attempt: u32,
        start: u64,
        end: Option<u64>,
        o: Option<Outcome>,
    ) -> StepRecord {
        StepRecord {
            step,
            attempt,
            direction: Direction::Forward,
            started_at_ms: start,
            ended_at_ms: end,
            outcome: o,
            epoch: None,
            detail: None,
        }
    }

    fn unit(id: &str, state: UnitState, steps: Vec<StepRecord>) -> UnitStatus {
        UnitStatus {
            id: id.into(),
            wave: Some(1),
            sites: 3,
            filers: vec![],
            state,
            direction: Direction::Forward,
            step: steps.last().map(|r| r.step),
            attempt: 1,
            epoch: Some(7),
            freeze_ms: None,
            message: None,
            steps,
        }
    }

    fn status(units: Vec<UnitStatus>) -> MigrationStatus {
        MigrationStatus {
            source: "dc-a".into(),
            destination: "dc-b".into(),
            state: RunState::Running,
            started_at_ms: 1_000_000,
            updated_at_ms: 1_010_000,
            waves: vec![WaveStatus {
                night: 1,
                units: units.iter().map(|u| u.id.clone()).collect(),
                done: 0,
            }],
            units,
        }
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x" onclick='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn hostile_strings_never_reach_the_page_raw() {
        let mut u = unit(
            "U<1>",
            UnitState::Failed,
            vec![rec(
                Step::Prepare,
                1,
                1_000_000,
                Some(1_001_000),
                Some(Outcome::Failed),
            )],
        );
        u.message = Some("<script>alert(1)</script>".into());
        u.steps[0].detail = Some("\"><img src=x onerror=alert(2)>".into());
        let mut s = status(vec![u]);
        s.source = "<b>src</b>".into();
        let html = render_html(&s, "t<i>", true);
        assert!(!html.contains("<script>alert"));
        assert!(!html.contains("<img"));
        assert!(!html.contains("<b>src"));
        assert!(!html.contains("<i>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("id=\"unit-U&lt;1&gt;\""));
    }

    #[test]
    fn freeze_span_runs_from_freeze_to_flip_end() {
        let u = unit(
            "U1",
            UnitState::Done,
            vec![
                rec(
                    Step::Freeze,
                    1,
                    1_002_000,
                    Some(1_002_100),
                    Some(Outcome::Ok),
                ),
                rec(
                    Step::FinalCopy,
                    1,
                    1_002_100,
                    Some(1_003_000),
                    Some(Outcome::Ok),
                ),
                rec(Step::Flip, 1, 1_003_000, Some(1_003_400), Some(Outcome::Ok)),
            ],
        );
        assert_eq!(
            freeze_spans(&u, 1_010_000),
            vec![FreezeSpan {
                attempt: 1,
                start: 1_002_000,
                end: 1_003_400,
                kind: "flipped"
            }]
        );
    }

    #[test]
    fn abandoned_and_open_freezes() {
        let u = unit(
            "U1",
            UnitState::Running,
            vec![
                rec(
                    Step::Freeze,
                    1,
                    1_002_000,
                    Some(1_002_100),
                    Some(Outcome::Ok),
                ),
                rec(
                    Step::FinalCopy,
                    1,
                    1_002_100,
                    Some(1_002_900),
                    Some(Outcome::Abandoned),
                ),
                rec(
                    Step::Freeze,
                    2,
                    1_004_000,
                    Some(1_004_100),
                    Some(Outcome::Ok),
                ),
                rec(Step::FinalCopy, 2, 1_004_100, None, None),
            ],
        );
        let spans = freeze_spans(&u, 1_005_000);
        assert_eq!(spans[0].kind, "abandoned");
        assert_eq!(spans[0].end, 1_002_900);
        assert_eq!(spans[1].kind, "open");
        assert_eq!(spans[1].end, 1_005_000);
    }

    #[test]
    fn page_has_stable_hooks() {
        let mut u = unit(
            "U1",
            UnitState::Done,
            vec![
                rec(
                    Step::Freeze,
                    1,
                    1_002_000,
                    Some(1_002_100),
                    Some(Outcome::Ok),
                ),
                rec(Step::Flip, 1, 1_002_100, Some(1_003_250), Some(Outcome::Ok)),
                rec(Step::PostCheck, 1, 1_003_250, None, None),
            ],
        );
        u.freeze_ms = Some(1_250);
        let html = render_html(&status(vec![u]), "Ferry", false);
        assert!(html.contains("<tr id=\"unit-U1\" data-state=\"done\""));
        assert!(html.contains("id=\"timeline-U1\""));
        assert!(html.contains("class=\"step step-freeze freeze-flipped\""));
        assert!(html.contains("data-freeze-ms=\"1250\""));
        assert!(html.contains("class=\"step step-running\" data-step=\"post_check\""));
        assert!(html.contains("freeze 1.2 s") || html.contains("freeze 1.3 s"));
        assert!(html.contains("id=\"wave-1\""));
        assert!(!html.contains("EventSource"));
        assert!(!html.contains("http-equiv"));
        let live = render_html(&status(vec![]), "Ferry", true);
        assert!(live.contains("new EventSource('/v1/migration/events')"));
        assert!(live.contains("<noscript><meta http-equiv=\"refresh\" content=\"2\"></noscript>"));
    }

    #[test]
    fn expected_comes_from_the_plan() {
        let json = br#"{"format": "ferry-plan", "version": 1, "units": [
            {"id": "U1", "status": "scheduled", "night": 1, "lane": 2, "order": 0,
             "freeze": {"total_s": 65.3, "overhead_s": 60}},
            {"id": "U2", "status": "impossible", "night": null, "lane": null, "order": null}]}"#;
        let plan = Plan::from_bytes(json, std::path::Path::new("plan.json")).unwrap();
        let e = Expected::from_plan(&plan);
        assert_eq!(
            e.unit("U1"),
            ExpectedUnit {
                lane: Some(2),
                freeze_ms: Some(65_300)
            }
        );
        assert_eq!(e.unit("U2"), ExpectedUnit::default());
        assert_eq!(e.unit("U9"), ExpectedUnit::default());
    }

    #[test]
    fn lanes_follow_the_plan_or_the_steps() {
        let ok = Some(Outcome::Ok);
        let a = unit(
            "A",
            UnitState::Done,
            vec![rec(Step::Prepare, 1, 1_000_000, Some(1_005_000), ok)],
        );
        let b = unit(
            "B",
            UnitState::Done,
            vec![rec(Step::Prepare, 1, 1_002_000, Some(1_003_000), ok)],
        );
        let c = unit(
            "C",
            UnitState::Done,
            vec![rec(Step::Prepare, 1, 1_006_000, Some(1_007_000), ok)],
        );
        let d = unit("D", UnitState::Pending, vec![]);
        let s = status(vec![a, b, c, d]);
        let lanes = |nights: &[Night]| -> Vec<(String, Option<u32>)> {
            nights[0]
                .rows
                .iter()
                .map(|r| (r.unit.id.clone(), r.lane))
                .collect()
        };
        // As run: B overlaps A, C starts after both ended.
        let run = layout(&s, &Expected::default());
        assert!(!run[0].planned);
        assert_eq!(
            lanes(&run),
            [
                ("A".into(), Some(0)),
                ("C".into(), Some(0)),
                ("B".into(), Some(1)),
                ("D".into(), None)
            ]
        );
        // The plan's, when it has a lane for every unit of the night.
        let mut e = Expected::default();
        for (id, lane) in [("A", 1), ("B", 0), ("C", 1), ("D", 0)] {
            e.set(
                id,
                ExpectedUnit {
                    lane: Some(lane),
                    freeze_ms: None,
                },
            );
        }
        let planned = layout(&s, &e);
        assert!(planned[0].planned);
        assert_eq!(
            lanes(&planned),
            [
                ("B".into(), Some(0)),
                ("D".into(), Some(0)),
                ("A".into(), Some(1)),
                ("C".into(), Some(1))
            ]
        );
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_duration(850), "850 ms");
        assert_eq!(fmt_duration(12_340), "12.3 s");
        assert_eq!(fmt_duration(245_000), "4m05s");
        assert_eq!(fmt_duration(7_380_000), "2h03m");
        assert_eq!(fmt_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(fmt_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(fmt_utc(1_795_457_920_000), "2026-11-23 18:18:40 UTC");
    }
}
