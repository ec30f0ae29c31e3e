//! The migration as an HTML page: run state, waves, a table of units and a
//! timeline of each unit's steps on one shared time axis, with the freeze
//! (freeze sent -> flip applied) highlighted.
//!
//! One renderer serves two uses: the tracking server's live page (`live`:
//! an inline script swaps in the `<main>` fragment the server pushes over
//! server-sent events) and the static report the demo writes to a file.
//! The page is self-contained (inline CSS, no external assets) and every
//! string taken from the status is HTML-escaped.
//!
//! Stable hooks for tests and people: `id="run-state"`, `id="wave-N"`,
//! `id="unit-ID"` (table row, with `data-state`), `id="timeline-ID"`,
//! `class="step step-ok|step-failed|step-abandoned|step-running"` with
//! `data-step`, and `class="step step-freeze"` with `data-freeze-ms`.

use std::fmt::Write as _;

use crate::status::{
    Direction, MigrationStatus, Outcome, RunState, Step, StepRecord, UnitState, UnitStatus,
};

/// The `id` of the `<main>` element; the live script replaces it whole.
pub const MAIN_ID: &str = "migration";

/// The path the live page subscribes to.
pub const EVENTS_PATH: &str = "/v1/migration/events";

/// A whole HTML page for `status`. With `live`, the page follows the
/// tracking server's event stream (and falls back to a 2 s refresh without
/// JavaScript); without, it is a static report.
pub fn render_html(status: &MigrationStatus, title: &str, live: bool) -> String {
    render_page(title, &render_main(status), live)
}

/// A whole page around an already rendered `<main>` fragment (the tracking
/// server uses it for the page shown before any status exists).
pub fn render_page(title: &str, main: &str, live: bool) -> String {
    let mut out = String::with_capacity(main.len() + 8 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
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
    let mut out = String::with_capacity(4096 + status.units.len() * 1024);
    let _ = writeln!(
        out,
        "<main id=\"{MAIN_ID}\" data-state=\"{}\" data-updated=\"{}\">",
        run_state_str(status.state),
        status.updated_at_ms
    );
    summary(&mut out, status);
    waves(&mut out, status);
    units_table(&mut out, status);
    timeline(&mut out, status);
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
                "<li class=\"badge unit-{state}\" data-unit=\"{id}\" data-state=\"{state}\">{id}</li>",
                id = escape(id),
            );
        }
        out.push_str("</ul></div>\n");
    }
    out.push_str("</section>\n");
}

fn units_table(out: &mut String, s: &MigrationStatus) {
    out.push_str("<section id=\"units-section\">\n<h2>Units</h2>\n");
    out.push_str(
        "<table id=\"units\"><thead><tr><th>unit</th><th>wave</th><th>sites</th><th>state</th>\
         <th>step</th><th>attempt</th><th>epoch</th><th>freeze</th><th>message</th></tr></thead>\n<tbody>\n",
    );
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
             <td class=\"col-id\">{id}</td><td class=\"col-wave\">{wave}</td><td class=\"col-sites\">{sites}</td>\
             <td class=\"col-state\"><span class=\"badge unit-{state}\">{state}</span>{dir}</td>\
             <td class=\"col-step\">{step}</td><td class=\"col-attempt\">{attempt}</td>\
             <td class=\"col-epoch\">{epoch}</td><td class=\"col-freeze\">{freeze}</td>\
             <td class=\"col-message\">{message}</td></tr>",
            wave = u.wave.map(|w| w.to_string()).unwrap_or_else(|| "-".into()),
            sites = u.sites,
            step = u.step.map(Step::as_str).unwrap_or("-"),
            attempt = u.attempt,
            epoch = u.epoch.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
            freeze = u.freeze_ms.map(fmt_duration).unwrap_or_else(|| "-".into()),
            message = u.message.as_deref().map(escape).unwrap_or_default(),
        );
    }
    out.push_str("</tbody></table>\n</section>\n");
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

fn timeline(out: &mut String, s: &MigrationStatus) {
    out.push_str("<section id=\"timeline\">\n<h2>Timeline</h2>\n");
    let now = s.updated_at_ms;
    let mut t0 = s.started_at_ms;
    let mut t1 = now;
    for r in s.units.iter().flat_map(|u| &u.steps) {
        t0 = t0.min(r.started_at_ms);
        t1 = t1.max(r.ended_at_ms.unwrap_or(r.started_at_ms));
    }
    let span = t1.saturating_sub(t0).max(1);
    let pos = |t: u64| percent(t.saturating_sub(t0), span);
    let _ = writeln!(
        out,
        "<div class=\"axis\" data-start=\"{t0}\" data-end=\"{t1}\"><span>{}</span><span>{}</span><span>{}</span></div>",
        fmt_utc(t0),
        fmt_duration(span / 2),
        fmt_duration(span),
    );
    for u in &s.units {
        let id = escape(&u.id);
        let _ = write!(
            out,
            "<div class=\"timeline-row\" id=\"timeline-{id}\" data-state=\"{}\">\
             <div class=\"label\">{id}</div><div class=\"track\">",
            unit_state_str(u.state)
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
            let class = step_class(r);
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
            let _ = write!(
                out,
                "<div class=\"step {class}\" data-step=\"{step}\" data-attempt=\"{a}\" \
                 style=\"left:{l:.3}%;width:{w:.3}%\" title=\"{title}\"></div>",
                step = r.step.as_str(),
                a = r.attempt,
                l = pos(r.started_at_ms),
                w = (pos(end) - pos(r.started_at_ms)).max(0.2),
                title = escape(&title),
            );
        }
        out.push_str("</div>");
        let freeze = u
            .freeze_ms
            .map(|ms| format!("freeze {}", fmt_duration(ms)))
            .unwrap_or_default();
        let _ = writeln!(out, "<div class=\"freeze-total\">{freeze}</div></div>");
    }
    out.push_str(
        "<p class=\"legend\"><span class=\"key step-ok\"></span>ok \
         <span class=\"key step-running\"></span>running \
         <span class=\"key step-failed\"></span>failed \
         <span class=\"key step-abandoned\"></span>abandoned \
         <span class=\"key step-freeze\"></span>freeze (freeze sent &rarr; flip applied)</p>\n",
    );
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

const CSS: &str = "
:root{--ok:#2e8b57;--failed:#c0392b;--abandoned:#e67e22;--running:#2f6fd6;--unknown:#999;--freeze:rgba(142,68,173,.22);--freeze-line:#8e44ad}
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{display:flex;align-items:baseline;gap:1em;padding:.6em 1.2em;background:#1f2a36;color:#fff}
header h1{font-size:1.2em;margin:0}
#live{font-size:.8em;padding:.1em .5em;border-radius:.6em;background:#555}
#live[data-live=open]{background:var(--ok)}#live[data-live=error]{background:var(--failed)}
main{padding:.4em 1.2em 2em}
h2{font-size:1.05em;margin:1.2em 0 .4em}h3{font-size:.95em;margin:.2em 0}
.badge{display:inline-block;padding:0 .45em;border-radius:.5em;background:#ddd;font-size:.9em}
.run-running,.unit-running{background:#d6e4fb}.run-finished,.unit-done{background:#cdebd8}
.run-stopped,.unit-failed{background:#f6d3cf}.unit-waiting{background:#fbe3cc}.unit-rolled_back{background:#e8daef}
.dc{font-weight:600}.meta{color:#555}
.wave{display:inline-block;vertical-align:top;min-width:14em;margin:0 1em .8em 0;padding:.4em .6em;background:#fff;border:1px solid #ddd;border-radius:4px}
.progress{height:6px;background:#eee;border-radius:3px;overflow:hidden}.progress-bar{height:100%;background:var(--ok)}
.wave-units{list-style:none;padding:0;margin:.4em 0 0}.wave-units li{margin:0 .2em .2em 0}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #ddd;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.col-message{max-width:40em;overflow-wrap:anywhere}
.axis{display:flex;justify-content:space-between;margin-left:10em;margin-right:8em;color:#777;font-size:.8em}
.timeline-row{display:flex;align-items:center;margin:.15em 0}
.timeline-row .label{width:10em;flex:none;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.track{position:relative;flex:1;height:18px;background:#fff;border:1px solid #e3e3e3}
.freeze-total{width:8em;flex:none;padding-left:.5em;font-size:.85em;color:var(--freeze-line)}
.step{position:absolute;top:3px;height:12px;border-radius:2px}
.step-ok{background:var(--ok)}.step-failed{background:var(--failed)}.step-abandoned{background:var(--abandoned)}
.step-running{background:var(--running)}.step-unknown{background:var(--unknown)}
.track .step-freeze{top:0;height:100%;border-radius:0;background:var(--freeze);border-left:2px solid var(--freeze-line);border-right:2px solid var(--freeze-line);box-sizing:border-box;z-index:1;pointer-events:none}
.freeze-len{position:absolute;bottom:100%;left:0;font-size:.7em;color:var(--freeze-line);white-space:nowrap}
.legend .key{display:inline-block;width:1.2em;height:.8em;margin:0 .3em 0 1em;vertical-align:middle}
.legend .key.step-freeze{background:var(--freeze);border:1px solid var(--freeze-line)}
.empty{color:#777}
";

/// Follows the server's event stream: every `status` event carries a fresh
/// `<main>` fragment that replaces the current one.
const LIVE_JS: &str = "
(function () {
  var live = document.getElementById('live');
  function mark(state) { if (live) { live.setAttribute('data-live', state); live.textContent = state; } }
  if (!window.EventSource) { mark('no EventSource'); return; }
  var es = new EventSource('{EVENTS}');
  es.onopen = function () { mark('open'); };
  es.onerror = function () { mark('error'); };
  es.addEventListener('status', function (e) {
    var old = document.getElementById('{MAIN}');
    if (!old) { return; }
    var t = document.createElement('template');
    t.innerHTML = e.data;
    var fresh = t.content.getElementById('{MAIN}');
    if (fresh) { old.replaceWith(fresh); }
  });
})();
";

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
