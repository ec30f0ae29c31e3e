//! The tracking server in a real browser (headless Chromium, Debian's
//! `chromium`; `scripts/test.sh` installs it) and its endpoints over plain
//! HTTP. Every test binds port 0 and builds its status by hand. The layout
//! tests measure the page at a phone's width and a desktop's, and leave
//! screenshots under the target directory (`track-page/`, paths printed).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferry_orch::report::{Expected, ExpectedUnit};
use ferry_orch::status::WaveStatus;
use ferry_orch::track::{StatusSource, Tracker};
use ferry_orch::{
    Direction, MigrationStatus, Outcome, RunState, Step, StepRecord, UnitState, UnitStatus,
};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const T0: u64 = 1_795_000_000_000;

fn rec(
    step: Step,
    attempt: u32,
    start: u64,
    end: Option<u64>,
    outcome: Option<Outcome>,
) -> StepRecord {
    StepRecord {
        step,
        attempt,
        direction: Direction::Forward,
        started_at_ms: T0 + start,
        ended_at_ms: end.map(|e| T0 + e),
        outcome,
        epoch: None,
        detail: None,
    }
}

/// A whole forward runbook, its freeze lasting `freeze` ms.
fn done_steps(at: u64, freeze: u64) -> Vec<StepRecord> {
    let ok = Some(Outcome::Ok);
    let mut flip = rec(Step::Flip, 1, at + 3_000, Some(at + 2_000 + freeze), ok);
    flip.epoch = Some(4);
    vec![
        rec(Step::Prepare, 1, at, Some(at + 500), ok),
        rec(Step::PreCopy, 1, at + 500, Some(at + 1_500), ok),
        rec(Step::AwaitWindow, 1, at + 1_500, Some(at + 2_000), ok),
        rec(Step::Freeze, 1, at + 2_000, Some(at + 2_100), ok),
        rec(Step::FinalCopy, 1, at + 2_100, Some(at + 3_000), ok),
        flip,
        rec(
            Step::Unfreeze,
            1,
            at + 2_000 + freeze,
            Some(at + 2_100 + freeze),
            ok,
        ),
        rec(
            Step::PostCheck,
            1,
            at + 2_100 + freeze,
            Some(at + 2_500 + freeze),
            ok,
        ),
    ]
}

fn unit(id: &str, wave: u32, state: UnitState, steps: Vec<StepRecord>) -> UnitStatus {
    UnitStatus {
        id: id.to_string(),
        wave: Some(wave),
        sites: 12,
        filers: vec!["filer-a1".to_string()],
        state,
        direction: Direction::Forward,
        step: steps.last().map(|r| r.step),
        attempt: steps.last().map_or(0, |r| r.attempt),
        epoch: steps.iter().rev().find_map(|r| r.epoch),
        freeze_ms: None,
        message: None,
        steps,
    }
}

/// U1 pending, U2 done (freeze 1.2 s), U3 on its second attempt after an
/// abandoned freeze.
fn fixture() -> MigrationStatus {
    let u1 = unit("U1", 1, UnitState::Pending, vec![]);
    let mut u2 = unit("U2", 1, UnitState::Done, done_steps(0, 1_200));
    u2.freeze_ms = Some(1_200);
    let mut u3_steps = done_steps(5_000, 900);
    u3_steps.truncate(5);
    u3_steps[4].outcome = Some(Outcome::Abandoned);
    u3_steps[4].detail = Some("router r2 did not acknowledge epoch 6".to_string());
    let mut retry = rec(Step::Freeze, 2, 9_000, None, None);
    retry.epoch = Some(7);
    u3_steps.push(retry);
    let mut u3 = unit("U3", 2, UnitState::Running, u3_steps);
    u3.message = Some("retrying the freeze".to_string());
    MigrationStatus {
        source: "dc-paris".to_string(),
        destination: "dc-lyon".to_string(),
        state: RunState::Running,
        started_at_ms: T0,
        updated_at_ms: T0 + 10_000,
        waves: vec![
            WaveStatus {
                night: 1,
                units: vec!["U1".into(), "U2".into()],
                done: 1,
            },
            WaveStatus {
                night: 2,
                units: vec!["U3".into()],
                done: 0,
            },
        ],
        units: vec![u1, u2, u3],
    }
}

/// The fixture after U1 moved, its freeze lasting 2.5 s.
fn fixture_u1_done() -> MigrationStatus {
    let mut s = fixture();
    let u1 = &mut s.units[0];
    u1.steps = done_steps(10_000, 2_500);
    u1.state = UnitState::Done;
    u1.step = Some(Step::PostCheck);
    u1.attempt = 1;
    u1.epoch = Some(4);
    u1.freeze_ms = Some(2_500);
    s.waves[0].done = 2;
    s.updated_at_ms = T0 + 20_000;
    s
}

struct Server {
    addr: SocketAddr,
    tracker: Tracker,
    status: Arc<Mutex<Option<MigrationStatus>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(status: Option<MigrationStatus>, tracker: Tracker) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cell = Arc::new(Mutex::new(status));
        let source: StatusSource = {
            let cell = Arc::clone(&cell);
            Arc::new(move || cell.lock().clone())
        };
        let (stop, stop_rx) = watch::channel(false);
        let t = tracker.clone();
        let task = tokio::spawn(async move { t.serve(listener, source, stop_rx).await });
        Server {
            addr,
            tracker,
            status: cell,
            stop,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, s: MigrationStatus) {
        *self.status.lock() = Some(s);
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops within 10 s")
            .unwrap()
            .unwrap();
    }
}

struct Reply {
    code: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
async fn http(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf))
        .await
        .expect("reply within 10 s")
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let code = head[9..12].parse().unwrap();
    Reply {
        code,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The opening tag of the element with `id`, as serialized.
fn tag_with_id<'a>(html: &'a str, id: &str) -> &'a str {
    let needle = format!("id=\"{id}\"");
    let at = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no element with {needle} in:\n{html}"));
    let start = html[..at].rfind('<').unwrap();
    let end = at + html[at..].find('>').unwrap();
    &html[start..=end]
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!(" {name}=\"");
    let at = tag.find(&needle)? + needle.len();
    Some(&tag[at..at + tag[at..].find('"')?])
}

fn unit_state<'a>(html: &'a str, id: &str) -> &'a str {
    attr(tag_with_id(html, &format!("unit-{id}")), "data-state").expect("data-state")
}

/// One headless Chromium at a time: the machine has two cores, and a
/// starved browser makes timeouts meaningless.
static BROWSER_SLOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A headless Chromium dumping a page's DOM when it deems the page loaded.
/// Runs in its own process group, killed whole on drop.
struct Browser {
    child: Option<tokio::process::Child>,
    pgid: Option<rustix::process::Pid>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Dumps the DOM (`--dump-dom`) once the page is loaded.
    fn launch(url: &str, extra: &[&str]) -> Browser {
        Browser::spawn(url, extra, "--dump-dom")
    }

    /// `mode`: `--dump-dom` or `--screenshot=PATH`.
    fn spawn(url: &str, extra: &[&str], mode: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let bin = std::env::var("FERRY_CHROMIUM").unwrap_or_else(|_| "chromium".to_string());
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--metrics-recording-only",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(mode)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run {bin} ({e}): install Debian's chromium (scripts/test.sh does)")
        });
        let pgid = child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32));
        Browser {
            child: Some(child),
            pgid,
            _profile: profile,
        }
    }

    /// Waits for the browser to exit successfully; returns what it printed.
    async fn finish(mut self, within: Duration) -> std::process::Output {
        let child = self.child.take().unwrap();
        let out = tokio::time::timeout(within, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("chromium did not finish within {within:?}"))
            .unwrap();
        assert!(
            out.status.success(),
            "chromium failed ({}); stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Waits for the browser to exit and returns the DOM it printed.
    async fn dom(self, within: Duration) -> String {
        let out = self.finish(within).await;
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            dom.contains("</html>"),
            "chromium printed no page; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dom
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser's helpers (zygote, renderer) share its process group.
        if let Some(pgid) = self.pgid {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

#[tokio::test]
async fn page_shows_every_unit_in_a_browser() {
    let srv = Server::start(Some(fixture()), Tracker::new().title("Paris to Lyon")).await;
    let _slot = BROWSER_SLOT.lock().await;
    let dom = Browser::launch(&srv.url("/"), &[])
        .dom(Duration::from_secs(60))
        .await;

    assert!(dom.contains("<title>Paris to Lyon</title>"));
    assert_eq!(
        attr(tag_with_id(&dom, "run-state"), "data-state"),
        Some("running")
    );
    assert!(dom.contains("dc-paris") && dom.contains("dc-lyon"));
    assert_eq!(unit_state(&dom, "U1"), "pending");
    assert_eq!(unit_state(&dom, "U2"), "done");
    assert_eq!(unit_state(&dom, "U3"), "running");
    for id in [
        "timeline-U1",
        "timeline-U2",
        "timeline-U3",
        "wave-1",
        "wave-2",
    ] {
        tag_with_id(&dom, id);
    }
    assert_eq!(attr(tag_with_id(&dom, "wave-1"), "data-done"), Some("1"));
    // U2's freeze: highlighted on its timeline, its length printed.
    let u2 = &dom[dom.find("id=\"timeline-U2\"").unwrap()..dom.find("id=\"timeline-U3\"").unwrap()];
    assert!(
        u2.contains("class=\"step step-freeze freeze-flipped\""),
        "{u2}"
    );
    assert!(u2.contains("data-freeze-ms=\"1200\""), "{u2}");
    assert!(u2.contains("freeze 1.2 s"), "{u2}");
    assert_eq!(u2.matches("class=\"step step-ok\"").count(), 8, "{u2}");
    // U3: the abandoned attempt and the running freeze of the second one.
    let u3 = &dom[dom.find("id=\"timeline-U3\"").unwrap()..];
    assert!(
        u3.contains("class=\"step step-abandoned\" data-step=\"final_copy\""),
        "{u3}"
    );
    assert!(
        u3.contains("class=\"step step-running\" data-step=\"freeze\" data-attempt=\"2\""),
        "{u3}"
    );
    assert!(
        u3.contains("freeze-abandoned") && u3.contains("freeze-open"),
        "{u3}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn page_follows_status_changes_in_a_browser() {
    let srv = Server::start(Some(fixture()), Tracker::new()).await;

    // Control: the server-rendered page shows U1 pending, not done.
    let initial = http(srv.addr, "GET", "/").await;
    assert_eq!(initial.code, 200);
    assert_eq!(unit_state(&initial.body, "U1"), "pending");
    assert!(!initial.body.contains("freeze 2.5 s"));

    let _slot = BROWSER_SLOT.lock().await;
    // Virtual time does not run while a request is open, so this browser
    // dumps its DOM only after the server ends the event stream (shutdown)
    // and the budget then runs out.
    // Opened at U1's events, as from a link: they stay marked after the swap.
    let browser = Browser::launch(&srv.url("/#events-U1"), &["--virtual-time-budget=10000"]);
    let t = srv.tracker.clone();
    wait_until(
        "the browser follows the event stream",
        Duration::from_secs(60),
        || t.subscribers() == 1 && t.events_sent() >= 1,
    )
    .await;
    let sent = t.events_sent();
    srv.set(fixture_u1_done());
    wait_until("the change is sent", Duration::from_secs(10), || {
        t.events_sent() > sent
    })
    .await;
    srv.stop().await;

    let dom = browser.dom(Duration::from_secs(60)).await;
    assert_eq!(unit_state(&dom, "U1"), "done", "{dom}");
    assert!(dom.contains("freeze 2.5 s"), "{dom}");
    assert_eq!(attr(tag_with_id(&dom, "wave-1"), "data-done"), Some("2"));
    // Replaced, not appended: one main, one row per unit.
    assert_eq!(dom.matches("id=\"migration\"").count(), 1);
    assert_eq!(dom.matches("id=\"unit-U1\"").count(), 1);
    assert_eq!(
        attr(tag_with_id(&dom, "events-U1"), "class"),
        Some("unit-events targeted"),
        "{dom}"
    );
    assert_eq!(dom.matches("targeted\"").count(), 1, "{dom}");
}

#[tokio::test]
async fn hostile_strings_are_escaped_in_the_browser() {
    let mut s = fixture();
    s.units[0].message = Some("<script>alert(1)</script>".to_string());
    s.units[2].steps[0].detail = Some("\"><img src=x onerror=alert(2)>".to_string());
    s.source = "dc-<b>paris</b>".to_string();
    let srv = Server::start(Some(s), Tracker::new()).await;

    let raw = http(srv.addr, "GET", "/").await.body;
    assert!(!raw.contains("<script>alert"));
    assert!(!raw.contains("<img"));
    assert!(!raw.contains("<b>"));
    assert!(raw.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    let _slot = BROWSER_SLOT.lock().await;
    let dom = Browser::launch(&srv.url("/"), &[])
        .dom(Duration::from_secs(60))
        .await;
    // Only the page's own script; the message is text.
    assert_eq!(dom.matches("<script").count(), 1, "{dom}");
    assert!(!dom.contains("<img") && !dom.contains("<b>"), "{dom}");
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{dom}"
    );
    assert!(dom.contains("dc-&lt;b&gt;paris&lt;/b&gt;"), "{dom}");
    srv.stop().await;
}

#[tokio::test]
async fn json_health_and_errors() {
    let srv = Server::start(None, Tracker::new()).await;

    let r = http(srv.addr, "GET", "/v1/migration").await;
    assert_eq!(r.code, 503);
    assert!(r.head.contains("content-type: application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["error"].is_string());
    assert_eq!(http(srv.addr, "GET", "/").await.code, 503);

    srv.set(fixture());
    let r = http(srv.addr, "GET", "/v1/migration").await;
    assert_eq!(r.code, 200);
    let back: MigrationStatus = serde_json::from_str(&r.body).unwrap();
    assert_eq!(back, fixture());

    let r = http(srv.addr, "GET", "/").await;
    assert_eq!(r.code, 200);
    assert!(r.head.contains("content-type: text/html"));
    assert!(r.body.contains("new EventSource('/v1/migration/events')"));

    // Prometheus' view of the same status: units by state, no unit labels.
    let r = http(srv.addr, "GET", "/metrics").await;
    assert_eq!(r.code, 200);
    assert!(r.head.contains("content-type: text/plain"), "{}", r.head);
    let units: usize = r
        .body
        .lines()
        .filter(|l| l.starts_with("ferry_migration_units{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(units, fixture().units.len(), "{}", r.body);
    assert!(
        r.body.contains("ferry_migration_freeze_seconds_count"),
        "{}",
        r.body
    );

    let r = http(srv.addr, "GET", "/healthz").await;
    assert_eq!((r.code, r.body.trim()), (200, "{\"ok\":true}"));
    assert_eq!(http(srv.addr, "GET", "/nope").await.code, 404);
    assert_eq!(http(srv.addr, "GET", "/v1/migration/x").await.code, 404);
    let r = http(srv.addr, "POST", "/v1/migration").await;
    assert_eq!(r.code, 405);
    assert!(r.head.contains("allow: get"));
    assert_eq!(http(srv.addr, "DELETE", "/").await.code, 405);
    srv.stop().await;
}

/// Reads from an open event stream until `buf` satisfies `done`.
async fn read_until(c: &mut TcpStream, buf: &mut String, done: impl Fn(&str) -> bool) {
    let mut chunk = [0u8; 16 * 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done(buf) {
            let n = c.read(&mut chunk).await.unwrap();
            assert!(n > 0, "stream ended early:\n{buf}");
            buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out reading the stream:\n{buf}"));
}

#[tokio::test]
async fn event_stream_sends_changes_and_is_bounded() {
    let tracker = Tracker::new()
        .max_subscribers(1)
        .keepalive_every(Duration::from_millis(300));
    let srv = Server::start(Some(fixture()), tracker).await;

    let mut c = TcpStream::connect(srv.addr).await.unwrap();
    c.write_all(b"GET /v1/migration/events HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    read_until(&mut c, &mut buf, |b| b.contains("event: status")).await;
    let head = buf.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{buf}");
    assert!(head.contains("content-type: text/event-stream"), "{buf}");
    assert!(buf.contains("retry: 2000"), "{buf}");
    read_until(&mut c, &mut buf, |b| b.contains("</main>")).await;
    assert!(buf.contains("data: <main id=\"migration\""), "{buf}");
    assert!(
        buf.contains("id=\"unit-U1\" data-state=\"pending\""),
        "{buf}"
    );
    assert_eq!(srv.tracker.subscribers(), 1);

    // Beyond the bound: refused.
    let r = http(srv.addr, "GET", "/v1/migration/events").await;
    assert_eq!(r.code, 503);

    // A change is pushed; no change, no event.
    let seen = buf.len();
    srv.set(fixture_u1_done());
    read_until(&mut c, &mut buf, |b| {
        b[seen..].contains("id=\"unit-U1\" data-state=\"done\"") && b[seen..].contains("</main>")
    })
    .await;
    assert_eq!(buf.matches("event: status").count(), 2);
    let sent = srv.tracker.events_sent();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        srv.tracker.events_sent(),
        sent,
        "unchanged status, no event"
    );
    read_until(&mut c, &mut buf, |b| b.contains(": keepalive\n\n")).await;

    // The client leaves: its slot frees.
    drop(c);
    let t = srv.tracker.clone();
    wait_until("the stream is released", Duration::from_secs(10), || {
        t.subscribers() == 0
    })
    .await;

    // Shutdown ends an open stream.
    let mut c = TcpStream::connect(srv.addr).await.unwrap();
    c.write_all(b"GET /v1/migration/events HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    read_until(&mut c, &mut buf, |b| b.contains("</main>")).await;
    srv.stop().await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest))
        .await
        .expect("the stream ends at shutdown")
        .unwrap();
}

/// A night as an operator sees it on a phone: two lanes of the plan running
/// side by side, one unit over its predicted freeze, one failed with a long
/// message, one waiting after an abandoned freeze, two not started.
fn night_fixture() -> (MigrationStatus, Expected) {
    let mut units = Vec::new();
    let mut expected = Expected::default();
    let mut add = |id: &str, lane: u32, predicted_ms: u64, u: UnitStatus| {
        expected.set(
            id,
            ExpectedUnit {
                lane: Some(lane),
                freeze_ms: Some(predicted_ms),
            },
        );
        units.push(u);
    };
    let mut a = unit("U01", 1, UnitState::Done, done_steps(0, 1_800));
    a.freeze_ms = Some(1_800);
    add("U01", 0, 2_500, a);
    let mut b = unit("U02", 1, UnitState::Done, done_steps(1_000, 4_200));
    b.freeze_ms = Some(4_200);
    add("U02", 1, 3_000, b);
    let mut c = unit("U03", 1, UnitState::Running, done_steps(6_000, 1_000));
    c.steps.truncate(4);
    c.steps.push(rec(Step::FinalCopy, 1, 8_100, None, None));
    c.step = Some(Step::FinalCopy);
    add("U03", 0, 2_000, c);
    let mut d = unit("U04", 1, UnitState::Failed, done_steps(7_500, 0));
    d.steps.truncate(2);
    d.step = Some(Step::PreCopy);
    d.steps[1].outcome = Some(Outcome::Failed);
    d.steps[1].detail = Some(
        "rsync of filer-b7:/export/hosting/very-long-customer-directory-name-that-does-not-wrap-nicely failed: No space left on device (os error 28)"
            .to_string(),
    );
    d.message = Some(
        "pre_copy failed: destination filer-b7 is full; free space and run `ferry migrate resume`"
            .to_string(),
    );
    add("U04", 1, 2_200, d);
    let mut e = unit("U05", 2, UnitState::Waiting, done_steps(12_000, 900));
    e.steps.truncate(5);
    e.step = Some(Step::FinalCopy);
    e.steps[4].outcome = Some(Outcome::Abandoned);
    e.steps[4].detail = Some("router r2 did not acknowledge epoch 6".to_string());
    e.message = Some("freeze abandoned; next attempt at the next window".to_string());
    add("U05", 0, 1_500, e);
    add("U06", 1, 900, unit("U06", 2, UnitState::Pending, vec![]));
    add("U07", 0, 1_100, unit("U07", 2, UnitState::Pending, vec![]));
    let status = MigrationStatus {
        source: "dc-paris-north".to_string(),
        destination: "dc-lyon-south".to_string(),
        state: RunState::Running,
        started_at_ms: T0,
        updated_at_ms: T0 + 15_000,
        waves: vec![
            WaveStatus {
                night: 1,
                units: vec!["U01".into(), "U02".into(), "U03".into(), "U04".into()],
                done: 2,
            },
            WaveStatus {
                night: 2,
                units: vec!["U05".into(), "U06".into(), "U07".into()],
                done: 0,
            },
        ],
        units,
    };
    (status, expected)
}

/// Where screenshots go: under the cargo target directory, kept after the
/// test for people (and CI artifacts) to look at.
fn artifacts() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("track-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headless Chromium will not make a window narrower than 500 px, so a
/// page is laid out at a phone's width inside a frame of that width: a
/// harness page whose `<iframe srcdoc>` holds a copy of the page (same
/// origin as the harness, so its script can measure the frame). The copy
/// is static: its live script, if any, is left out (it could not reach the
/// server from there).
fn harness(html: &str, width: u32, height: u32) -> tempfile::TempDir {
    let page = match (html.find("<script>"), html.rfind("</script>")) {
        (Some(a), Some(b)) => format!("{}{}", &html[..a], &html[b + "</script>".len()..]),
        _ => html.to_string(),
    };
    let dir = tempfile::tempdir().unwrap();
    let doc = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><style>html,body{{margin:0;background:#777}}\
         iframe{{display:block;border:0;width:{width}px;height:{height}px}}</style></head>\
         <body><iframe id=\"f\" srcdoc=\"{}\"></iframe><script>{MEASURE_JS}</script></body></html>",
        ferry_orch::report::escape(&page)
    );
    std::fs::write(dir.path().join("harness.html"), doc).unwrap();
    dir
}

fn harness_url(dir: &tempfile::TempDir) -> String {
    format!("file://{}", dir.path().join("harness.html").display())
}

/// Runs in the harness once the frame has loaded (which the harness's own
/// load, and so `--dump-dom`, waits for): measures the page as laid out
/// and writes the result into the harness (`<pre id="measure">`).
const MEASURE_JS: &str = r##"
(function () {
  var f = document.getElementById('f');
  function measure() {
    var win = f.contentWindow, doc = f.contentDocument, d = doc.documentElement;
    var w = win.innerWidth, wide = [], missing = [], small = [];
    doc.querySelectorAll('body *').forEach(function (e) {
      var box = e.closest('.scroll');
      if (box && box !== e) { return; }
      var r = e.getBoundingClientRect();
      // Text running out of its box counts too (visible overflow).
      var spill = e.clientWidth > 0 && win.getComputedStyle(e).overflowX === 'visible' ? e.scrollWidth - e.clientWidth : 0;
      if (r.right + spill > w + 0.5) { wide.push(e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + '.' + e.className + ' right=' + Math.round(r.right)); }
    });
    doc.querySelectorAll('a[href^="#"]').forEach(function (a) {
      var id = decodeURIComponent(a.getAttribute('href').slice(1));
      if (!doc.getElementById(id)) { missing.push(id); }
    });
    doc.querySelectorAll('main td, main li, main p, main .label, main time').forEach(function (e) {
      var px = parseFloat(win.getComputedStyle(e).fontSize);
      if (px < 12) { small.push(e.tagName.toLowerCase() + '.' + e.className + ' ' + px + 'px'); }
    });
    var o = document.createElement('pre');
    o.id = 'measure';
    o.textContent = JSON.stringify({ scroll_width: d.scrollWidth, inner_width: w, wide: wide.slice(0, 20), missing: missing, small: small.slice(0, 20) });
    document.body.appendChild(o);
  }
  f.addEventListener('load', measure);
})();
"##;

#[derive(Debug, serde::Deserialize)]
struct Measure {
    scroll_width: u32,
    inner_width: u32,
    wide: Vec<String>,
    missing: Vec<String>,
    small: Vec<String>,
}

/// Lays `html` out in Chromium at `width` x `height` and returns what
/// [`MEASURE_JS`] found.
async fn measure(html: &str, width: u32, height: u32) -> Measure {
    let dir = harness(html, width, height);
    let size = format!("--window-size={},{height}", width.max(500));
    let dom = Browser::launch(&harness_url(&dir), &[&size, "--hide-scrollbars"])
        .dom(Duration::from_secs(60))
        .await;
    let start = dom.find("<pre id=\"measure\">").expect("the measurement") + 18;
    let json = &dom[start..start + dom[start..].find("</pre>").unwrap()];
    let json = json
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&json).unwrap()
}

/// Saves a screenshot of `html` laid out at `width` x `height` under
/// [`artifacts`] and prints its path.
async fn screenshot(html: &str, name: &str, width: u32, height: u32, extra: &[&str]) {
    let dir = harness(html, width, height);
    shoot(&harness_url(&dir), name, width, height, extra).await;
}

/// Saves a screenshot of `url` (the top-left `width` x `height`).
async fn shoot(url: &str, name: &str, width: u32, height: u32, extra: &[&str]) {
    let path = artifacts().join(format!("{name}.png"));
    let _ = std::fs::remove_file(&path);
    let size = format!("--window-size={width},{height}");
    let mut args = vec![size.as_str(), "--hide-scrollbars"];
    args.extend_from_slice(extra);
    Browser::spawn(url, &args, &format!("--screenshot={}", path.display()))
        .finish(Duration::from_secs(60))
        .await;
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(
        len > 1000,
        "no screenshot at {} ({len} bytes)",
        path.display()
    );
    println!("screenshot: {}", path.display());
}

/// Every unit links to its events, and the events are there.
fn assert_units_link_to_events(dom: &str, s: &MigrationStatus) {
    for u in &s.units {
        let row = &dom[dom.find(&format!("id=\"unit-{}\"", u.id)).unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(row.contains(&format!("href=\"#events-{}\"", u.id)), "{row}");
        let events = tag_with_id(dom, &format!("events-{}", u.id));
        assert_eq!(attr(events, "data-unit"), Some(u.id.as_str()), "{events}");
        let timeline = &dom[dom.find(&format!("id=\"timeline-{}\"", u.id)).unwrap()..];
        assert!(
            timeline[..timeline.find("class=\"track\"").unwrap()]
                .contains(&format!("href=\"#events-{}\"", u.id)),
            "{timeline}"
        );
    }
    // Each step of a unit is one event line in its section.
    for u in s.units.iter().filter(|u| !u.steps.is_empty()) {
        let at = dom.find(&format!("id=\"events-{}\"", u.id)).unwrap();
        let section = &dom[at..at + dom[at..].find("</section>").unwrap()];
        assert_eq!(section.matches("<li ").count(), u.steps.len(), "{section}");
    }
}

#[tokio::test]
async fn page_fits_a_phone_and_a_desktop() {
    let (status, expected) = night_fixture();
    let tracker = Tracker::new()
        .title("Paris north to Lyon south")
        .expected(expected.clone());
    let srv = Server::start(Some(status.clone()), tracker).await;
    let page = http(srv.addr, "GET", "/").await;
    assert_eq!(page.code, 200);
    std::fs::write(artifacts().join("page.html"), &page.body).unwrap();

    let _slot = BROWSER_SLOT.lock().await;
    // Pictures first: when a check below fails, they show why.
    screenshot(&page.body, "page-375", 375, 800, &[]).await;
    screenshot(&page.body, "page-375-full", 375, 4000, &[]).await;
    screenshot(
        &page.body,
        "page-375-dark",
        375,
        800,
        &["--force-dark-mode"],
    )
    .await;
    screenshot(&page.body, "page-1280-full", 1280, 2200, &[]).await;
    // The live page itself (wide enough for a headless window).
    shoot(&srv.url("/"), "live-1280", 1280, 900, &[]).await;
    for (width, height) in [(375, 800), (1280, 900)] {
        let m = measure(&page.body, width, height).await;
        assert_eq!(m.inner_width, width, "{m:?}");
        assert!(
            m.scroll_width <= m.inner_width && m.wide.is_empty(),
            "the page scrolls sideways at {width} px: {m:?}"
        );
        assert!(m.missing.is_empty(), "links to nothing: {m:?}");
        assert!(m.small.is_empty(), "text too small at {width} px: {m:?}");
    }
    assert_units_link_to_events(&page.body, &status);

    // Lanes: the plan's, one row per unit; U01 and U03 share lane 0.
    let dom = &page.body;
    assert_eq!(
        attr(tag_with_id(dom, "night-1"), "data-lanes"),
        Some("plan")
    );
    assert_eq!(
        attr(tag_with_id(dom, "timeline-U03"), "data-lane"),
        Some("0")
    );
    assert_eq!(
        attr(tag_with_id(dom, "timeline-U02"), "data-lane"),
        Some("1")
    );
    // Freezes against their prediction: U02 froze 4.2 s of 3 s predicted.
    let u02 = tag_with_id(dom, "freeze-U02");
    assert_eq!(attr(u02, "data-freeze-ms"), Some("4200"));
    assert_eq!(attr(u02, "data-predicted-ms"), Some("3000"));
    assert!(u02.contains("fz-over"), "{u02}");
    assert!(!tag_with_id(dom, "freeze-U01").contains("fz-over"));
    assert_eq!(
        attr(tag_with_id(dom, "freeze-U07"), "data-predicted-ms"),
        Some("1100")
    );

    srv.stop().await;
}

#[tokio::test]
async fn report_fits_a_phone() {
    // The static report (the demo's), lanes drawn from the steps as run:
    // U2 and U3 overlap, so they are in two lanes.
    let mut s = fixture();
    s.units[2].wave = Some(1);
    s.units[2].steps.iter_mut().for_each(|r| {
        r.started_at_ms -= 4_000;
        r.ended_at_ms = r.ended_at_ms.map(|e| e - 4_000);
    });
    let html = ferry_orch::report::render_html(&s, "Paris to Lyon, report", false);
    assert!(!html.contains("<script"));
    let _slot = BROWSER_SLOT.lock().await;
    let m = measure(&html, 375, 800).await;
    assert_eq!(m.inner_width, 375, "{m:?}");
    assert!(
        m.scroll_width <= m.inner_width && m.wide.is_empty(),
        "the report scrolls sideways at 375 px: {m:?}"
    );
    assert!(m.missing.is_empty() && m.small.is_empty(), "{m:?}");
    assert_units_link_to_events(&html, &s);
    assert_eq!(
        attr(tag_with_id(&html, "night-1"), "data-lanes"),
        Some("run")
    );
    assert_eq!(
        attr(tag_with_id(&html, "timeline-U2"), "data-lane"),
        Some("0")
    );
    assert_eq!(
        attr(tag_with_id(&html, "timeline-U3"), "data-lane"),
        Some("1")
    );
    assert_eq!(
        attr(tag_with_id(&html, "timeline-U1"), "data-lane"),
        Some("")
    );
    std::fs::write(artifacts().join("report.html"), &html).unwrap();
    screenshot(&html, "report-375-full", 375, 2600, &[]).await;
}
