//! A night in lanes against real routers: four units on four filers, two
//! lanes. Freezes overlap (never more than the lanes), a unit that fails
//! leaves the other lane alone, a run killed with two units mid-step
//! resumes to the end state of a run that was not, and the copy jobs of
//! both lanes share one bandwidth budget.

mod common;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_trees_equal, backend, TOKEN};
use ferry_orch::router::{Http, RouterClient};
use ferry_orch::{
    EventRecord, Failpoints, KillMode, Options, Orchestrator, Outcome, Phase, RunInputs, Step,
    UnitState,
};

const UNITS: [&str; 4] = ["U1", "U2", "U3", "U4"];

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The two sites of unit `u` (`u1.example`, `www.u1.example`).
fn sites_of(u: &str) -> Vec<String> {
    let n = u.to_lowercase();
    vec![format!("{n}.example"), format!("www.{n}.example")]
}

fn all_sites() -> Vec<String> {
    UNITS.iter().flat_map(|u| sites_of(u)).collect()
}

/// Par and gra routers, unit `Un` on filer `fs-n` with two sites, a plan of
/// two lanes (U1, U3 on lane 0; U2, U4 on lane 1).
struct Night {
    dir: tempfile::TempDir,
    _par: Arc<ferry_proxy::Proxy>,
    _gra: Arc<ferry_proxy::Proxy>,
    config: PathBuf,
    plan: PathBuf,
    journal: PathBuf,
    /// Bytes of file data in the four filers together.
    bytes: u64,
}

fn router_toml(
    name: &str,
    listen: u16,
    pool: &str,
    backend: SocketAddr,
    remote: &str,
    remote_port: u16,
    sites: &[String],
) -> String {
    let mut c = format!(
        r#"[router]
name = "{name}"
hold_max = "20s"
retry_after = 1

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[[listener]]
listen = "127.0.0.1:{listen}"

[[remote]]
name = "{remote}"
address = "127.0.0.1:{remote_port}"

[[pool]]
name = "{pool}"
[[pool.server]]
name = "{pool}-1"
address = "{backend}"
"#
    );
    for s in sites {
        c.push_str(&format!(
            "\n[[site]]\nhost = \"{s}\"\nplacement = \"pool:{pool}\"\n"
        ));
    }
    c
}

/// Bytes that do not compress or repeat (a small xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A night whose filers hold `file_bytes` of data per unit (two files).
async fn night(file_bytes: usize) -> Night {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let sites = all_sites();
    let (pb, gb) = (backend().await, backend().await);
    let start = |text: String, name: &str| {
        let path = root.join(format!("{name}.toml"));
        std::fs::write(&path, &text).unwrap();
        ferry_config::parse(&text, &path).unwrap()
    };
    // Ports picked free then bound: another process may take one in
    // between under a loaded run; then pick again.
    let mut attempt = 0;
    let (pt, gt, par, gra) = loop {
        attempt += 1;
        let (pt, gt) = (free_port(), free_port());
        let par_cfg = router_toml("par-1", pt, "par-web", pb, "gra", gt, &sites);
        let gra_cfg = router_toml("gra-1", gt, "gra-web", gb, "par", pt, &[]);
        let par = match ferry_proxy::Proxy::start(start(par_cfg, "par"), None).await {
            Ok(p) => p,
            Err(e) if attempt < 5 => {
                eprintln!("starting par-1 on a port taken meanwhile ({e}); again");
                continue;
            }
            Err(e) => panic!("starting par-1: {e}"),
        };
        match ferry_proxy::Proxy::start(start(gra_cfg, "gra"), None).await {
            Ok(gra) => break (pt, gt, par, gra),
            Err(e) if attempt < 5 => {
                eprintln!("starting gra-1 on a port taken meanwhile ({e}); again");
                par.shutdown(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => panic!("starting gra-1: {e}"),
        }
    };
    let mut bytes = 0;
    let mut filers = String::new();
    let mut units = Vec::new();
    for (i, u) in UNITS.iter().enumerate() {
        let n = i + 1;
        let fs = format!("fs-{n}");
        let home = root.join(format!("par/{fs}/homes/{}", u.to_lowercase()));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("index.html"), format!("{u} site\n")).unwrap();
        let half = file_bytes / 2;
        for (j, name) in ["big-1.bin", "big-2.bin"].iter().enumerate() {
            std::fs::write(home.join(name), noise((n * 10 + j) as u64, half)).unwrap();
        }
        bytes += (format!("{u} site\n").len() + 2 * half) as u64;
        filers.push_str(&format!(
            "[filers.{fs}]\nsource = \"par/{fs}\"\ndestination = \"gra/{fs}\"\n\n"
        ));
        let [a, b] = <[String; 2]>::try_from(sites_of(u)).unwrap();
        units.push(format!(
            r#"{{"id":"{u}","status":"scheduled","night":1,"lane":{lane},"order":{i},"filers":["{fs}"],
   "hostings":[{{"name":"{h}","filer":"{fs}","directory":"/homes/{h}","sites":["{a}","{b}"]}}]}}"#,
            lane = i % 2,
            h = u.to_lowercase(),
        ));
    }
    let config = root.join("migrate.toml");
    std::fs::write(
        &config,
        format!(
            r#"source = "par"
destination = "gra"

[datacenters.par]
pool = "par-web"
[datacenters.gra]
pool = "gra-web"

[[routers]]
name = "par-1"
datacenter = "par"
admin = "http://{pa}"
traffic = "http://127.0.0.1:{pt}"
token = "{TOKEN}"

[[routers]]
name = "gra-1"
datacenter = "gra"
admin = "http://{ga}"
traffic = "http://127.0.0.1:{gt}"
token = "{TOKEN}"

{filers}
[check]
via = "gra-1"
path = "/"
timeout = "2s"
"#,
            pa = par.admin_addr().unwrap(),
            ga = gra.admin_addr().unwrap(),
        ),
    )
    .unwrap();
    let plan = root.join("plan.json");
    std::fs::write(
        &plan,
        format!(
            r#"{{"format":"ferry-plan","version":1,"generator":"test",
"parameters":{{"constraints":["filer","declared-db"],"parallel":2}},
"units":[{}]}}"#,
            units.join(",\n")
        ),
    )
    .unwrap();
    Night {
        journal: root.join("journal.db"),
        dir,
        _par: par,
        _gra: gra,
        config,
        plan,
        bytes,
    }
}

impl Night {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn start(&self, opts: Options) -> Orchestrator {
        let inputs = RunInputs::load(&self.config, &self.plan, None).unwrap();
        Orchestrator::start(inputs, &self.journal, opts).unwrap()
    }

    fn client(&self, name: &str) -> RouterClient {
        let cfg = ferry_orch::MigrateConfig::load(&self.config).unwrap();
        RouterClient::new(
            cfg.router(name).unwrap().clone(),
            Http::new(),
            Duration::from_secs(5),
        )
    }

    /// Every site as each router has it: (router, host, placement, state, epoch).
    async fn routing(&self) -> Vec<(String, String, String, String, u64)> {
        let mut out = Vec::new();
        for r in ["par-1", "gra-1"] {
            for s in self.client(r).query(&all_sites()).await.unwrap() {
                out.push((r.to_string(), s.host, s.placement, s.state, s.epoch));
            }
        }
        out
    }

    /// Unit `u` moved: both routers send its sites to gra, its tree copied.
    async fn assert_moved(&self, u: &str) {
        let sites = sites_of(u);
        for s in self.client("gra-1").query(&sites).await.unwrap() {
            assert_eq!(
                (s.placement.as_str(), s.state.as_str()),
                ("pool:gra-web", "active"),
                "{u}: {s:?}"
            );
        }
        for s in self.client("par-1").query(&sites).await.unwrap() {
            assert_eq!(
                (s.placement.as_str(), s.state.as_str()),
                ("remote:gra", "active"),
                "{u}: {s:?}"
            );
        }
        let fs = filer_of(u);
        assert_trees_equal(
            &self.path(&format!("par/{fs}")),
            &self.path(&format!("gra/{fs}")),
        );
    }
}

fn filer_of(u: &str) -> String {
    format!("fs-{}", &u[1..])
}

fn now_opts(parallel: usize) -> Options {
    Options {
        now: true,
        parallel: Some(parallel),
        ..Options::default()
    }
}

/// Each unit's frozen span from its journal: freeze begun -> flip ended
/// (the flip is the unfreeze), one per freeze attempt that flipped or
/// was abandoned (then the abandon's end).
fn frozen_spans(events: &[EventRecord]) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let mut open: std::collections::HashMap<String, u64> = Default::default();
    for e in events {
        let ev = &e.event;
        match (ev.step, ev.phase, ev.outcome) {
            (Some(Step::Freeze), Phase::Begin, _) => {
                open.entry(ev.unit.clone()).or_insert(e.at_ms);
            }
            (Some(Step::Flip), Phase::End, _)
            | (
                Some(Step::Freeze | Step::FinalCopy),
                Phase::End,
                Some(Outcome::Abandoned | Outcome::Failed),
            ) => {
                if let Some(start) = open.remove(&ev.unit) {
                    out.push((ev.unit.clone(), start, e.at_ms));
                }
            }
            _ => {}
        }
    }
    out
}

/// The most spans open at one instant (ends before starts at a tie: a
/// span that ends when another begins does not overlap it).
fn most_at_once(spans: &[(String, u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for (_, a, b) in spans {
        edges.push((*a, 1));
        edges.push((*b, -1));
    }
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// The failpoint's pause file (`$dir/<name, ':' -> '_'>.paused`).
fn pause_flag(dir: &Path, point: &str) -> PathBuf {
    dir.join(format!("{}.paused", point.replace(':', "_")))
}

/// Waits (bounded: a hang fails the test) until `cond` holds, checking
/// every 20 ms; `what` names it in the failure.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The units with a step begun and not ended.
fn mid_step(events: &[EventRecord]) -> Vec<(String, Step)> {
    let mut open: std::collections::BTreeMap<String, Step> = Default::default();
    for e in events {
        let ev = &e.event;
        match (ev.phase, ev.step) {
            (Phase::Begin, Some(s)) => {
                open.insert(ev.unit.clone(), s);
            }
            (Phase::End, Some(_)) => {
                open.remove(&ev.unit);
            }
            _ => {}
        }
    }
    open.into_iter().collect()
}

/// (a) Four units, two lanes: two units are frozen at the same time (the
/// first to reach its flip is held there until the other lane has frozen
/// its unit), and never more than two; each lane in plan order; the
/// journal's steps name their lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lanes_freeze_two_units_at_once_and_never_more() {
    let n = night(8 * 1024).await;
    let pauses = n.path("pauses");
    std::fs::create_dir_all(&pauses).unwrap();
    let fp = Failpoints::parse("flip:before=pause", KillMode::Interrupt)
        .unwrap()
        .with_pause_dir(pauses.clone());
    let o = Arc::new(n.start(Options {
        failpoints: Arc::new(fp),
        ..now_opts(2)
    }));
    assert_eq!(
        o.lanes()
            .iter()
            .map(|l| (l.index, l.units.clone()))
            .collect::<Vec<_>>(),
        vec![
            (0, vec!["U1".to_string(), "U3".to_string()]),
            (1, vec!["U2".to_string(), "U4".to_string()])
        ]
    );
    let o2 = o.clone();
    let run = tokio::spawn(async move { o2.run().await });
    let flag = pause_flag(&pauses, "flip:before");
    wait_for("a unit held before its flip", || flag.exists()).await;
    // Held frozen; the other lane freezes its unit meanwhile.
    let j = o.journal();
    wait_for("two units frozen", || {
        let ev = j.events().unwrap();
        let frozen: std::collections::BTreeSet<String> = ev
            .iter()
            .filter(|e| e.event.step == Some(Step::Freeze) && e.event.phase == Phase::End)
            .map(|e| e.event.unit.clone())
            .collect();
        frozen.len() >= 2
    })
    .await;
    std::fs::remove_file(&flag).unwrap();
    let s = run.await.unwrap().unwrap();
    assert!(s.ok(), "{s:?}");
    let events = j.events().unwrap();
    let spans = frozen_spans(&events);
    assert_eq!(spans.len(), 4, "{spans:?}");
    assert_eq!(most_at_once(&spans), 2, "{spans:?}");
    // Each lane's freezes back to back, in plan order.
    let start = |u: &str| spans.iter().find(|s| s.0 == u).unwrap();
    assert!(start("U1").2 <= start("U3").1, "{spans:?}");
    assert!(start("U2").2 <= start("U4").1, "{spans:?}");
    for u in UNITS {
        n.assert_moved(u).await;
    }
    // The journal names the lanes: the session note lists them, each begin
    // carries its unit's lane.
    let session = events
        .iter()
        .find(|e| e.event.unit.is_empty())
        .map(|e| ferry_orch::journal::detail_line(&e.event.detail).unwrap_or_default())
        .unwrap();
    assert!(
        session.contains("2 lanes: lane 0: U1 U3; lane 1: U2 U4"),
        "{session}"
    );
    for e in events.iter().filter(|e| e.event.phase == Phase::Begin) {
        let lane = e.event.detail.to_json()["lane"].as_u64();
        let want = if ["U1", "U3"].contains(&e.event.unit.as_str()) {
            0
        } else {
            1
        };
        assert_eq!(lane, Some(want), "{:?}", e.event);
    }
    // The status shows every unit done, and the page every lane live.
    let st = j.status().unwrap().unwrap();
    assert!(st.units.iter().all(|u| u.state == UnitState::Done));
    let mut expected = ferry_orch::report::Expected::default();
    for l in o.lanes() {
        for u in &l.units {
            expected.set(
                u,
                ferry_orch::report::ExpectedUnit {
                    lane: Some(l.index),
                    freeze_ms: None,
                },
            );
        }
    }
    let page = ferry_orch::report::render_html_with(&st, &expected, "t", false);
    let lane_done = "<span class=\"lane-progress\" data-done=\"2\" data-units=\"2\" data-running=\"\">2/2 done</span>";
    assert_eq!(page.matches(lane_done).count(), 2, "{page}");
}

/// (b) A unit whose verification fails (its destination changed between
/// the final copy and the check, held there by a failpoint) ends failed and
/// back at the source; every other unit, in its lane and in the other one,
/// moves. The first lane to start is held at its first prepare meanwhile,
/// so the unit held in its final copy is the other lane's, and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_unit_does_not_stop_the_other_lane() {
    let n = night(8 * 1024).await;
    let pauses = n.path("pauses");
    std::fs::create_dir_all(&pauses).unwrap();
    let fp = Failpoints::parse(
        "prepare:before=pause,final_copy:inside=pause",
        KillMode::Interrupt,
    )
    .unwrap()
    .with_pause_dir(pauses.clone());
    let o = Arc::new(n.start(Options {
        failpoints: Arc::new(fp),
        ..now_opts(2)
    }));
    let o2 = o.clone();
    let run = tokio::spawn(async move { o2.run().await });
    let held_prepare = pause_flag(&pauses, "prepare:before");
    let flag = pause_flag(&pauses, "final_copy:inside");
    wait_for("a unit held between copy and check", || flag.exists()).await;
    assert!(held_prepare.exists());
    let j = o.journal();
    let open = mid_step(&j.events().unwrap());
    let held: Vec<String> = open
        .iter()
        .filter(|(_, s)| *s == Step::FinalCopy)
        .map(|(u, _)| u.clone())
        .collect();
    assert_eq!(held.len(), 1, "{open:?}");
    let held = held[0].clone();
    let fs = filer_of(&held);
    std::fs::write(
        n.path(&format!(
            "gra/{fs}/homes/{}/index.html",
            held.to_lowercase()
        )),
        "tampered\n",
    )
    .unwrap();
    std::fs::remove_file(&flag).unwrap();
    std::fs::remove_file(&held_prepare).unwrap();
    let s = run.await.unwrap().unwrap();
    assert!(!s.ok());
    for (u, state) in &s.units {
        if *u == held {
            assert_eq!(*state, UnitState::Failed, "{s:?}");
        } else {
            assert_eq!(*state, UnitState::Done, "{s:?}");
            n.assert_moved(u).await;
        }
    }
    for s in n.client("par-1").query(&sites_of(&held)).await.unwrap() {
        assert_eq!(
            (s.placement.as_str(), s.state.as_str()),
            ("pool:par-web", "active"),
            "{held}: {s:?}"
        );
    }
    let st = j.status().unwrap().unwrap();
    let failed = st.units.iter().find(|u| u.id == held).unwrap();
    assert_eq!(failed.state, UnitState::Failed);
    assert!(
        failed
            .message
            .as_deref()
            .unwrap_or("")
            .contains("index.html"),
        "{:?}",
        failed.message
    );
}

/// (c) Killed with two units mid-step (one held in its final copy, the
/// other lane's held before its flip, both frozen), then resumed: the same
/// end state as a night that was never stopped, site by site (placement,
/// state and epoch on both routers) and file by file; each step's end
/// journaled once per unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_night_resumes_to_the_same_end_state() {
    // The night nobody stopped.
    let clean = night(8 * 1024).await;
    let s = clean.start(now_opts(2)).run().await.unwrap();
    assert!(s.ok(), "{s:?}");
    let want = clean.routing().await;

    let n = night(8 * 1024).await;
    let pauses = n.path("pauses");
    std::fs::create_dir_all(&pauses).unwrap();
    let fp = Failpoints::parse(
        "final_copy:inside=pause,flip:before=pause",
        KillMode::Interrupt,
    )
    .unwrap()
    .with_pause_dir(pauses.clone());
    let o = Arc::new(n.start(Options {
        failpoints: Arc::new(fp),
        ..now_opts(2)
    }));
    let o2 = o.clone();
    let run = tokio::spawn(async move { o2.run().await });
    let j = o.journal();
    wait_for("two units held mid-step", || {
        pause_flag(&pauses, "final_copy:inside").exists()
            && pause_flag(&pauses, "flip:before").exists()
    })
    .await;
    // The lanes' next units pre-copy beside the held ones: let them finish
    // that stage, so no copy thread outlives the kill.
    wait_for("the next units pre-copied", || {
        let ev = j.events().unwrap();
        ["U3", "U4"].iter().all(|u| {
            ev.iter().any(|e| {
                e.event.unit == *u
                    && e.event.step == Some(Step::PreCopy)
                    && e.event.phase == Phase::End
            })
        })
    })
    .await;
    let open = mid_step(&j.events().unwrap());
    assert_eq!(open.len(), 2, "{open:?}");
    assert!(open.iter().any(|(_, s)| *s == Step::FinalCopy), "{open:?}");
    assert!(open.iter().any(|(_, s)| *s == Step::Flip), "{open:?}");
    // kill -9, in process: the run stops between two awaits, nothing more
    // is journaled, the journal's lock goes with the last handle.
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    drop((o, j));

    let r = Orchestrator::resume(&n.journal, now_opts(2)).unwrap();
    let s = r.run().await.unwrap();
    assert!(s.ok(), "{s:?}");
    for u in UNITS {
        n.assert_moved(u).await;
    }
    assert_eq!(n.routing().await, want);
    let st = r.journal().status().unwrap().unwrap();
    for u in &st.units {
        assert_eq!(u.state, UnitState::Done, "{}", u.id);
        let steps: Vec<Step> = u.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, Step::ALL.to_vec(), "{}", u.id);
    }
    let ends = r
        .journal()
        .events()
        .unwrap()
        .iter()
        .filter(|e| e.event.phase == Phase::End)
        .count();
    assert_eq!(ends, 4 * Step::ALL.len());
}

/// (d) Both lanes copy at once and share one budget: the file data of the
/// whole night over the whole run stays under `--bwlimit` (with room only
/// upward: the bucket's burst, a busy machine; nothing asserts a minimum
/// speed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lanes_share_one_bandwidth_budget() {
    // 4 units x 768 KiB at 1 MiB/s: about 3 s at the limit.
    let n = night(768 * 1024).await;
    let limit: u64 = 1024 * 1024;
    let o = n.start(Options {
        bwlimit: Some(limit),
        ..now_opts(2)
    });
    let t0 = Instant::now();
    let s = o.run().await.unwrap();
    let took = t0.elapsed().as_secs_f64();
    assert!(s.ok(), "{s:?}");
    for u in UNITS {
        n.assert_moved(u).await;
    }
    let rate = n.bytes as f64 / took;
    eprintln!(
        "{} bytes in {took:.2} s: {rate:.0} B/s for a limit of {limit} B/s",
        n.bytes
    );
    // Each lane alone at the limit would make twice the limit.
    assert!(
        rate <= limit as f64 * 1.3,
        "{rate:.0} B/s over the whole run, limit {limit} B/s"
    );
}

/// Not a check: the same night (4 units of 4 MiB) with one lane and with
/// two, timed. `cargo test -p ferry-orch --test lanes -- --ignored
/// --nocapture night_times`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn night_times() {
    for parallel in [1, 2] {
        let n = night(4 * 1024 * 1024).await;
        let o = n.start(now_opts(parallel));
        let t0 = Instant::now();
        let s = o.run().await.unwrap();
        let took = t0.elapsed();
        assert!(s.ok(), "{s:?}");
        let spans = frozen_spans(&o.journal().events().unwrap());
        let frozen: u64 = spans.iter().map(|(_, a, b)| b - a).sum();
        eprintln!(
            "4 units x 4 MiB, parallel {parallel}: night {:.2} s, frozen {frozen} ms in all, at most {} frozen at once",
            took.as_secs_f64(),
            most_at_once(&spans)
        );
    }
}
