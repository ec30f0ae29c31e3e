//! `ferry rehearse --control etcd --partition NAME`: the night with one
//! thing broken on purpose in the middle of a unit (issue 17's partition
//! scenarios). The orchestrator runs with one lane and pauses at a
//! failpoint; the scenario breaks the world there, lets it go on, repairs
//! what it broke, and resumes the run where it must. The rehearsal's
//! checks then judge the end state exactly as for a night with no fault
//! (every acknowledged write once at the destination, none at the source
//! after its freeze, none at the destination before its flip, requests),
//! and one more check says whether the fault happened as told.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use ferry_demo::check::Check;
use ferry_demo::orch::{self as demo_orch, ChildEnv, RunEnd};
use ferry_demo::Out;
use rustix::process::{kill_process, Pid, Signal};

use crate::control::Members;
use crate::world::{Net, Place, RouterAt};
use crate::Task;

mod cut;
mod excused;

use cut::{release_and_restore, wan_cut_failures, Cut};

pub(crate) use excused::Excused;

/// The check this module adds: the fault happened as the scenario says.
pub const PARTITION: &str = "partition";

/// The runner's lease in etcd (`migrate_store`'s `lease_ttl`): a second
/// runner waits this long at most for a dead one's to expire.
const RUNNER_LEASE: Duration = Duration::from_secs(5);
/// How long a scenario waits for a failpoint to pause the runner.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(180);

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// One destination member killed inside a freeze: the night goes on
    /// with the other two.
    EtcdMember,
    /// Both destination members killed inside a freeze: no quorum
    /// anywhere. Routers serve from what they applied; the runner can
    /// write nothing; the members come back and the run ends.
    EtcdQuorum,
    /// The runner killed (-9) inside a final copy; a second runner in the
    /// source DC resumes the run from the journal in etcd.
    OrchestratorKilled,
    /// The runner stopped (SIGSTOP) inside a freeze; a second runner in
    /// the source DC takes the run over once its lease expired and ends
    /// it; the first, continued (SIGCONT), must exit 4 and change nothing.
    OrchestratorPaused,
    /// The link between the DCs cut (the source's routers lose etcd's
    /// quorum and the orchestrator, their clients still reach them) at one
    /// moment of a unit; restored 8 s later.
    WanCut(CutAt),
    /// One source router (par-1) cut off from etcd and the orchestrator at
    /// one moment of a unit, its clients still reaching it (its etcd
    /// endpoints and admin listener are behind a `Gate`); restored 8 s
    /// later. par-2 and the link stay up.
    RouterCut(CutAt),
    /// A third destination router (gra-3) started inside a freeze: it loads
    /// the sites from etcd, registers, and every later freeze waits for it.
    RouterJoins,
    /// A source router (par-2) killed while a unit is frozen and started
    /// again with the link to the destination cut (no etcd quorum in its
    /// DC): it serves from its local copy, the frozen unit held; the link
    /// comes back 8 s later.
    RouterRestart,
}

/// When a `wan-cut` happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutAt {
    /// Between a unit's first pre-copy pass and its converging ones: the
    /// source's agent is out of reach of the copy.
    PreCopy,
    /// Before the unit's freeze begins: no router of the source can
    /// acknowledge it.
    BeforeFreeze,
    /// The unit frozen, before its final copy.
    FinalCopy,
    /// The unit flipped, before it is unfrozen: the source's routers may
    /// not have the flip yet.
    AfterFlip,
}

impl Partition {
    pub const ALL: [Partition; 13] = [
        Partition::EtcdMember,
        Partition::EtcdQuorum,
        Partition::OrchestratorKilled,
        Partition::OrchestratorPaused,
        Partition::WanCut(CutAt::PreCopy),
        Partition::WanCut(CutAt::BeforeFreeze),
        Partition::WanCut(CutAt::FinalCopy),
        Partition::WanCut(CutAt::AfterFlip),
        Partition::RouterCut(CutAt::BeforeFreeze),
        Partition::RouterCut(CutAt::FinalCopy),
        Partition::RouterCut(CutAt::AfterFlip),
        Partition::RouterJoins,
        Partition::RouterRestart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Partition::EtcdMember => "etcd-member",
            Partition::EtcdQuorum => "etcd-quorum",
            Partition::OrchestratorKilled => "orchestrator-killed",
            Partition::OrchestratorPaused => "orchestrator-paused",
            Partition::WanCut(CutAt::PreCopy) => "wan-cut-pre-copy",
            Partition::WanCut(CutAt::BeforeFreeze) => "wan-cut-before-freeze",
            Partition::WanCut(CutAt::FinalCopy) => "wan-cut",
            Partition::WanCut(CutAt::AfterFlip) => "wan-cut-after-flip",
            Partition::RouterCut(CutAt::PreCopy) => "router-cut-pre-copy",
            Partition::RouterCut(CutAt::BeforeFreeze) => "router-cut-before-freeze",
            Partition::RouterCut(CutAt::FinalCopy) => "router-cut-frozen",
            Partition::RouterCut(CutAt::AfterFlip) => "router-cut-after-flip",
            Partition::RouterJoins => "router-joins",
            Partition::RouterRestart => "router-restart",
        }
    }

    /// The failpoint the first runner stops at.
    fn failpoint(self) -> &'static str {
        match self {
            Partition::EtcdMember
            | Partition::EtcdQuorum
            | Partition::OrchestratorPaused
            | Partition::RouterJoins => "freeze:inside=pause",
            Partition::OrchestratorKilled => "final_copy:inside=kill",
            Partition::WanCut(at) | Partition::RouterCut(at) => at.failpoint(),
            Partition::RouterRestart => "final_copy:before=pause",
        }
    }
}

impl CutAt {
    fn failpoint(self) -> &'static str {
        match self {
            CutAt::PreCopy => "pre_copy:inside=pause",
            CutAt::BeforeFreeze => "freeze:before=pause",
            CutAt::FinalCopy => "final_copy:before=pause",
            CutAt::AfterFlip => "flip:after=pause",
        }
    }

    fn when(self) -> &'static str {
        match self {
            CutAt::PreCopy => "inside a unit's pre-copy",
            CutAt::BeforeFreeze => "before a unit's freeze",
            CutAt::FinalCopy => "from a frozen unit's final copy",
            CutAt::AfterFlip => "after a unit's flip",
        }
    }
}

impl FromStr for Partition {
    type Err = String;
    fn from_str(s: &str) -> Result<Partition, String> {
        Partition::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Partition::ALL.iter().map(|p| p.as_str()).collect();
                format!("unknown partition {s:?} (known: {})", names.join(", "))
            })
    }
}

/// What a scenario needs of the rehearsal.
pub(crate) struct Night<'a> {
    pub exe: &'a Path,
    pub net: &'a Net,
    pub work: &'a Path,
    /// `run --config ... --plan ... --now` (one lane is added here).
    pub run_args: Vec<String>,
    /// Where `status` and `resume` find the run in etcd.
    pub run_at: Vec<String>,
    pub out: &'a Out,
    pub sites: &'a [ferry_demo::topology::Site],
    /// The destination's shop servers and etcd's endpoints (TOML), for a
    /// router that joins.
    pub gra_pool: &'a crate::world::Pool,
    pub endpoints: &'a str,
}

/// What a scenario ended with: how its last runner ended, its check, and
/// the failures it caused on purpose.
pub(crate) struct Ended {
    pub end: RunEnd,
    pub check: Check,
    pub excused: Vec<Excused>,
}

/// Runs the night through `p`.
pub(crate) async fn run(
    p: Partition,
    night: &Night<'_>,
    members: &mut Members,
    routers: &mut [RouterAt],
) -> anyhow::Result<Ended> {
    let (end, check, excused) = run_scenario(p, night, members, routers).await?;
    Ok(Ended {
        end,
        check,
        excused,
    })
}

type Outcome = (RunEnd, Check, Vec<Excused>);

async fn run_scenario(
    p: Partition,
    night: &Night<'_>,
    members: &mut Members,
    routers: &mut [RouterAt],
) -> anyhow::Result<Outcome> {
    let fp = night.work.join("fp");
    std::fs::create_dir_all(&fp)?;
    let pid = Arc::new(AtomicU32::new(0));
    let env = ChildEnv {
        failpoints: Some(p.failpoint().into()),
        failpoint_dir: Some(fp.clone()),
        pid: Some(Arc::clone(&pid)),
        ..ChildEnv::default()
    };
    // One lane: the fault hits the unit the failpoint stopped, and no
    // other unit's freeze shares it.
    let mut args = night.run_args.clone();
    args.extend(["--parallel".to_string(), "1".to_string()]);
    night.out.progress(&format!(
        "partition {}: the orchestrator stops at {}",
        p.as_str(),
        p.failpoint()
    ));
    let mut first = spawn_runner(night, Place::Gra, args, env, "migrate-1.log");
    if p == Partition::OrchestratorKilled {
        let end = join(&mut first).await?;
        let killed = end.killed_by_sigkill();
        let last = resume(night, Place::Par, 2).await?;
        let ok = killed && last.status.success();
        let how = if killed {
            "killed (SIGKILL)".to_string()
        } else {
            format!("was not killed: {}", end.describe())
        };
        let check = Check::new(
            PARTITION,
            ok,
            format!(
                "runner 1 (destination) {how} inside a final copy; runner 2 in the source DC resumed the run from etcd: {}",
                last.describe()
            ),
        );
        return Ok((last, check, Vec::new()));
    }
    let pause = fp.join(p.failpoint().replace(':', "_").replace("=pause", ".paused"));
    if !wait_for(&pause, &first).await {
        let end = join(&mut first).await?;
        let check = Check::new(
            PARTITION,
            false,
            format!(
                "{} never paused the orchestrator ({}): nothing was broken",
                p.failpoint(),
                end.describe()
            ),
        );
        return Ok((end, check, Vec::new()));
    }
    match p {
        Partition::EtcdMember => {
            block(|| members.kill(1));
            night
                .out
                .progress("partition: etcd m1 (destination) killed inside the freeze");
            let _ = std::fs::remove_file(&pause);
            let end = join(&mut first).await?;
            let ok = end.status.success();
            Ok((
                end.clone(),
                Check::new(
                    PARTITION,
                    ok,
                    format!(
                        "m1 killed inside a freeze; the night went on with m0 and m2: {}",
                        end.describe()
                    ),
                ),
                Vec::new(),
            ))
        }
        Partition::EtcdQuorum => {
            block(|| {
                members.kill(1);
                members.kill(0);
            });
            night.out.progress(
                "partition: etcd m0 and m1 killed inside the freeze (m2 alone: no quorum)",
            );
            let _ = std::fs::remove_file(&pause);
            // Twice the runner's lease with no quorum: it can renew nothing.
            tokio::time::sleep(2 * RUNNER_LEASE).await;
            let first_done = first.0.is_finished();
            block(|| -> anyhow::Result<()> {
                members.restart(night.net, 0)?;
                members.restart(night.net, 1)?;
                members.wait_healthy(night.net, 0)?;
                members.wait_healthy(night.net, 1)
            })?;
            night
                .out
                .progress("partition: m0 and m1 back; quorum again");
            let last = finish(night, &mut first).await?;
            let ok = last.status.success();
            Ok((
                last.clone(),
                Check::new(
                    PARTITION,
                    ok,
                    format!(
                        "no quorum for {:?} inside a freeze; the first runner {} meanwhile; the night ended: {}",
                        2 * RUNNER_LEASE,
                        if first_done { "stopped" } else { "waited" },
                        last.describe()
                    ),
                ),
                Vec::new(),
            ))
        }
        Partition::OrchestratorPaused => {
            let first_pid = pid.load(Ordering::Relaxed);
            signal(first_pid, Signal::STOP)?;
            // From here on runner 1 gets SIGCONT on every path.
            let cont = Cont(first_pid);
            let _ = std::fs::remove_file(&pause);
            night.out.progress(&format!(
                "partition: runner 1 (pid {first_pid}) stopped (SIGSTOP) inside the freeze"
            ));
            tokio::time::sleep(RUNNER_LEASE).await;
            let second = resume(night, Place::Par, 2).await?;
            drop(cont);
            night
                .out
                .progress("partition: runner 1 continued (SIGCONT) after runner 2 ended");
            let end = join(&mut first).await?;
            let fenced = end.status.code() == Some(4);
            let ok = fenced && second.status.success();
            Ok((
                second.clone(),
                Check::new(
                    PARTITION,
                    ok,
                    format!(
                        "runner 1 stopped inside a freeze; runner 2 in the source DC took the run over: {}; runner 1, continued: {} (4: lost its lease, changed nothing)",
                        second.describe(),
                        end.describe()
                    ),
                ),
                Vec::new(),
            ))
        }
        Partition::WanCut(at) | Partition::RouterCut(at) => {
            cut::run(p, at, night, routers, &mut first, &pause).await
        }
        Partition::RouterJoins => {
            let joined = block(|| {
                crate::world::join_router(
                    night.exe,
                    night.net,
                    night.work,
                    JOINED_N,
                    night.gra_pool,
                    night.endpoints,
                )
            })?;
            night.out.progress(&format!(
                "partition: {} joined inside the freeze (pid {})",
                joined.name, joined.router.pid
            ));
            let joined_at = crate::unix_ms();
            let _ = std::fs::remove_file(&pause);
            let end = join(&mut first).await?;
            let waited = freezes_listing(night, &joined.name, joined_at).await;
            let served = block(|| serves_every_site(night, JOINED_N));
            drop(joined);
            let ok =
                end.status.success() && waited.as_ref().is_ok_and(|n| *n > 0) && served.is_ok();
            let detail = format!(
                "gra-{JOINED_N} joined inside a freeze; freezes begun after that acknowledged by it: {}; it serves: {}; the night ended: {}",
                match &waited {
                    Ok(n) => n.to_string(),
                    Err(e) => format!("unknown ({e:#})"),
                },
                match &served {
                    Ok(n) => format!("{n} sites, 200 each"),
                    Err(e) => format!("{e:#}"),
                },
                end.describe()
            );
            Ok((end, Check::new(PARTITION, ok, detail), Vec::new()))
        }
        Partition::RouterRestart => {
            // par-2: the second router of the source.
            let at = routers
                .iter()
                .position(|r| r.dc == ferry_demo::topology::SOURCE && r.n == 2)
                .ok_or_else(|| anyhow::anyhow!("no router par-2"))?;
            let killed_ms = crate::unix_ms();
            routers[at].router.signal(Signal::KILL)?;
            block(|| night.net.wan.set_up(false))?;
            night.out.progress(
                "partition: par-2 killed (SIGKILL) inside a freeze; the wan is cut (par: no etcd quorum)",
            );
            let dir = night.work.join("routers").join(&routers[at].name);
            let conf = std::fs::read_to_string(dir.join("proxy.toml"))?;
            // The dead router's ready file would answer for the new one.
            let _ = std::fs::remove_file(dir.join("ready.json"));
            let restarted = block(|| {
                crate::world::start_router(
                    night.exe,
                    night.net,
                    night.work,
                    ferry_demo::topology::SOURCE,
                    2,
                    &conf,
                )
            });
            let ready_ms = crate::unix_ms();
            let started = match restarted {
                // Dropping the dead one reaps it.
                Ok(r) => {
                    routers[at] = r;
                    Ok(ready_ms - killed_ms)
                }
                Err(e) => Err(e),
            };
            night.out.progress(&match &started {
                Ok(ms) => format!("partition: par-2 started again from its local copy in {ms} ms"),
                Err(e) => format!("partition: par-2 did not start again: {e:#}"),
            });
            let to_ms = release_and_restore(night, &pause, &Cut::Wan).await?;
            let last = finish(night, &mut first).await?;
            let ok = last.status.success() && started.is_ok();
            let check = Check::new(
                PARTITION,
                ok,
                format!(
                    "par-2 killed inside a freeze and started again with etcd out of reach: {}; the night ended: {}",
                    match &started {
                        Ok(ms) => format!("ready from its local copy in {ms} ms"),
                        Err(e) => format!("{e:#}"),
                    },
                    last.describe()
                ),
            );
            let down = Excused {
                from_ms: killed_ms,
                to_ms: ready_ms + 1_000,
                reasons: &["connect error", "connection error", "websocket cut"],
                why: "at par-2 while it was down",
            };
            Ok((last, check, vec![down, wan_cut_failures(killed_ms, to_ms)]))
        }
        Partition::OrchestratorKilled => unreachable!("handled above"),
    }
}

/// The joining router's number (gra-3: ports 8083, 8093, 9103).
const JOINED_N: u16 = 3;

/// How many freeze steps begun after `since_ms` ended ok listing `router`
/// among the routers in etcd that acknowledged.
async fn freezes_listing(night: &Night<'_>, router: &str, since_ms: u64) -> anyhow::Result<usize> {
    let status = run_status(night).await?;
    Ok(status
        .units
        .iter()
        .flat_map(|u| &u.steps)
        .filter(|r| {
            r.step == ferry_orch::Step::Freeze
                && r.started_at_ms > since_ms
                && r.outcome == Some(ferry_orch::Outcome::Ok)
                && r.detail.as_deref().is_some_and(|d| d.contains(router))
        })
        .count())
}

/// The run's status, read in the destination DC (where etcd has quorum).
async fn run_status(night: &Night<'_>) -> anyhow::Result<ferry_orch::MigrationStatus> {
    let (exe, run_at) = (night.exe.to_path_buf(), night.run_at.clone());
    night
        .net
        .handle(Place::Gra)
        .spawn(async move { demo_orch::status_with(&exe, &run_at).await })
        .await?
}

/// GET / of every site (the first 500) through the joined router, in the
/// destination: each must answer 200. Returns how many were asked.
fn serves_every_site(night: &Night<'_>, n: u16) -> anyhow::Result<usize> {
    use std::io::{Read, Write};
    let sites: Vec<String> = night
        .sites
        .iter()
        .take(500)
        .map(|s| s.host.clone())
        .collect();
    let port = 8080 + n;
    night.net.gra.run(|| -> anyhow::Result<usize> {
        for host in &sites {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
            c.set_read_timeout(Some(Duration::from_secs(35)))?;
            write!(
                c,
                "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            )?;
            let mut head = [0u8; 12];
            c.read_exact(&mut head)?;
            if &head[9..12] != b"200" {
                bail!("{host}: {}", String::from_utf8_lossy(&head));
            }
        }
        Ok(sites.len())
    })?
}

/// `ferry migrate ARGS` in `place`'s namespace (its runtime spawns the
/// child there).
fn spawn_runner(
    night: &Night<'_>,
    place: Place,
    args: Vec<String>,
    env: ChildEnv,
    log: &str,
) -> Task<anyhow::Result<RunEnd>> {
    let (exe, log, out) = (
        night.exe.to_path_buf(),
        night.work.join(log),
        night.out.clone(),
    );
    Task(night.net.handle(place).spawn(async move {
        demo_orch::run(&exe, &args, &env, &log, |l| {
            out.progress(&format!("migrate: {l}"))
        })
        .await
    }))
}

async fn join(t: &mut Task<anyhow::Result<RunEnd>>) -> anyhow::Result<RunEnd> {
    match (&mut t.0).await {
        Ok(r) => r,
        Err(e) => bail!("the orchestrator task: {e}"),
    }
}

/// How the night ended once the world is whole again: the first runner's
/// end, or (it stopped: a lost lease) a `resume` in the destination's.
async fn finish(
    night: &Night<'_>,
    first: &mut Task<anyhow::Result<RunEnd>>,
) -> anyhow::Result<RunEnd> {
    let end = join(first).await?;
    if end.status.success() {
        return Ok(end);
    }
    night.out.progress(&format!(
        "the first runner ended with {}; resuming",
        end.describe()
    ));
    resume(night, Place::Gra, 2).await
}

/// `ferry migrate resume` in `place`, again while a dead or stopped
/// runner's lease still holds the run (exit 3), for a bounded time.
async fn resume(night: &Night<'_>, place: Place, mut n: u32) -> anyhow::Result<RunEnd> {
    let args: Vec<String> = ["resume".to_string()]
        .into_iter()
        .chain(night.run_at.iter().cloned())
        .chain(["--now".to_string()])
        .collect();
    let end = Instant::now() + 6 * RUNNER_LEASE;
    loop {
        let log = format!("migrate-{n}.log");
        let mut t = spawn_runner(night, place, args.clone(), ChildEnv::default(), &log);
        let r = join(&mut t).await?;
        if r.status.code() != Some(3) || Instant::now() > end {
            return Ok(r);
        }
        night
            .out
            .progress("the run's lease is still held; resuming again in 1s");
        tokio::time::sleep(Duration::from_secs(1)).await;
        n += 1;
    }
}

/// Waits until the pause file exists; false if the runner ended first or
/// it never came.
async fn wait_for(pause: &Path, runner: &Task<anyhow::Result<RunEnd>>) -> bool {
    let end = Instant::now() + PAUSE_TIMEOUT;
    while Instant::now() < end {
        if pause.exists() {
            return true;
        }
        if runner.0.is_finished() {
            return false;
        }
        // The failpoint writes a file and nothing else: polling it is the
        // only signal there is.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn signal(pid: u32, sig: Signal) -> anyhow::Result<()> {
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        bail!("the orchestrator's pid is unknown ({pid})");
    };
    kill_process(p, sig)?;
    Ok(())
}

/// Sends SIGCONT when dropped.
struct Cont(u32);

impl Drop for Cont {
    fn drop(&mut self) {
        let _ = signal(self.0, Signal::CONT);
    }
}
