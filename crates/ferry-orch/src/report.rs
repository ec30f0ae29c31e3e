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

mod time;
mod timeline;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use time::fmt_clock;
pub use time::{fmt_duration, fmt_utc};
use timeline::{freezes, layout, timeline, Night};

use crate::plan::Plan;
use crate::status::{Direction, MigrationStatus, Outcome, Step, StepRecord, UnitState};

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
        status.state.as_str(),
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
        s.state.as_str(),
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
                .map(|u| u.state.as_str())
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
        let state = u.state.as_str();
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

/// Each unit's steps as the journal recorded them, under `#events-ID`.
fn events(out: &mut String, s: &MigrationStatus) {
    out.push_str("<section id=\"events\">\n<h2>Events by unit</h2>\n");
    let now = s.updated_at_ms;
    for u in &s.units {
        let id = escape(&u.id);
        let state = u.state.as_str();
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

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 * 100.0 / whole as f64).clamp(0.0, 100.0)
}

/// The page's style: phone first (cards for the units table below 640 px,
/// labels above the tracks), dark when the reader's system is.
const CSS: &str = include_str!("report/page.css");

/// Follows the server's event stream: every `status` event carries a fresh
/// `<main>` fragment that replaces the current one.
const LIVE_JS: &str = include_str!("report/live.js");

#[cfg(test)]
mod tests {
    use super::timeline::{freeze_spans, FreezeSpan};
    use super::*;
    use crate::status::{RunState, UnitStatus, WaveStatus};

    #[test]
    fn state_names_are_the_json_names() {
        for s in [RunState::Running, RunState::Finished, RunState::Stopped] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in [
            UnitState::Pending,
            UnitState::Running,
            UnitState::Waiting,
            UnitState::Done,
            UnitState::Failed,
            UnitState::RolledBack,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

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
