//! `ferry demo`: the product's main job on loopback, nothing to install.
//! N sites on F filers in datacenter `par` move to `gra` under live read and
//! write traffic; then the demo proves, from the data itself, that no
//! acknowledged write was lost or doubled and that no site was written in
//! two places (no split brain).
//!
//! [`run`] takes the checked [`Options`] and returns a [`Summary`] whose
//! [`Check`]s say what passed; the binary parses flags and prints.
//!
//! Pieces: `topology` (files, inventory, plan, the two `ferry proxy`
//! children, migrate.toml), `app` (the shop stand-in, in process), `load`
//! (the clients), `orch` (the `ferry migrate` children), `faults` (what
//! `--fault` breaks), `check` (the proof). The `ferry` binary itself is run
//! as the children: [`run`] must be called from it.
//!
//! The pieces are public for `ferry rehearse` (ferry-rehearse), which runs
//! the same shop, clients, orchestrator children and checks across network
//! namespaces instead of loopback.

#![forbid(unsafe_code)]

pub mod app;
pub mod app_db;
pub mod check;
pub mod etcd;
mod faults;
pub mod load;
pub mod orch;
pub mod topology;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_orch::MigrationStatus;

use app::{AppConfig, AppServer};
pub use check::Check;
use load::{Load, LoadConfig, LoadResult};
use orch::{ChildEnv, RunEnd};
use topology::{Router, Site, DESTINATION, GRA_ROUTER, PAR_ROUTER, SOURCE};

/// What to run, as checked by the binary's flags.
#[derive(Clone, Debug)]
pub struct Options {
    /// Sites to migrate (one directory each, on the filers).
    pub sites: u32,
    /// Filers the sites are spread over; each filer is one migration unit.
    pub filers: u32,
    /// How long the load runs at least (the migration runs inside it).
    pub duration: Duration,
    /// Where to write the HTML report (timeline and checks).
    pub report: PathBuf,
    /// Kill -9 the orchestrator at this failpoint, then resume it.
    pub crash_at: Option<String>,
    /// Break something on purpose (the checks must notice).
    pub fault: Option<Fault>,
    /// The control plane on a 3-member etcd cluster (`etcd.rs`): two routers
    /// per datacenter, the journal and lease in etcd.
    pub control_etcd: bool,
}

impl Options {
    /// Refuses options that cannot run together, before anything starts.
    pub fn check(&self) -> Result<(), String> {
        if let Some(name) = &self.crash_at {
            if !ferry_orch::failpoint::names().contains(name) {
                return Err(format!(
                    "--crash-at {name:?}: unknown failpoint (known: {})",
                    ferry_orch::failpoint::names().join(", ")
                ));
            }
        }
        if self.crash_at.is_some() && self.fault.is_some() {
            return Err("--crash-at and --fault do not combine".to_string());
        }
        if self.control_etcd && self.fault == Some(Fault::SkipFreeze) {
            // The orchestrator not sending the freeze to a router breaks
            // nothing on etcd: every router takes it from the shared record.
            return Err(
                "--fault skip-freeze needs the SQLite demo: with --control etcd every router \
                 takes the freeze from etcd, whoever writes it"
                    .to_string(),
            );
        }
        Ok(())
    }
}

/// A fault injected on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The source router is never frozen: the checks must catch the split brain.
    SkipFreeze,
    /// SIGSTOP the source router during the freeze: the freeze is abandoned.
    StopRouter,
}

/// Human output: stdout, or stderr when stdout is reserved for `--json`.
#[derive(Clone)]
pub struct Out {
    json: bool,
    t0: Instant,
    /// `t0` on the wall clock (Unix ms), to place the load's records.
    t0_unix_ms: u64,
}

impl Out {
    /// `json`: progress goes to stderr (stdout carries one JSON object).
    pub fn new(json: bool) -> Out {
        Out {
            json,
            t0: Instant::now(),
            t0_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// A wall-clock time (Unix ms) as the progress lines stamp it, to the
    /// tenth of a second: `00:06.2`.
    pub fn stamp(&self, unix_ms: u64) -> String {
        let ms = unix_ms.saturating_sub(self.t0_unix_ms);
        let (s, tenth) = (ms / 1000, (ms % 1000) / 100);
        format!("{:02}:{:02}.{tenth}", s / 60, s % 60)
    }

    pub fn say(&self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// A progress line stamped with the time since the start.
    pub fn progress(&self, line: &str) {
        let s = self.t0.elapsed().as_secs();
        self.say(&format!("  [{:02}:{:02}] {line}", s / 60, s % 60));
    }
}

/// What the demo found.
pub struct Summary {
    /// In the order of the story; the report last.
    pub checks: Vec<Check>,
    /// Requests sent by the load, and those that failed.
    pub sent: u64,
    pub failed: u64,
    /// Each unit's id and how long its freeze lasted (ms), if it froze.
    pub units: Vec<(String, Option<u64>)>,
    /// The HTML report's absolute path.
    pub report: PathBuf,
}

/// Runs the demo in `work` (a fresh directory the caller owns and removes).
/// Dropping the future kills every child and server it started.
pub async fn run(opts: &Options, work: &Path, out: &Out) -> anyhow::Result<Summary> {
    let exe = std::env::current_exe().context("finding the ferry binary")?;
    let demo = Demo {
        opts,
        exe: &exe,
        work,
        out,
    };
    out.say(&format!(
        "ferry demo: {} sites on {} filer(s) move from {SOURCE} to {DESTINATION} under load, all on loopback",
        opts.sites, opts.filers
    ));
    let (sites, plan) = demo.world_before_the_move().await?;
    let (apps, pools) = demo.start_shops(&sites).await?;
    let cluster = match opts.control_etcd {
        true => Some(demo.start_etcd()?),
        false => None,
    };
    let (par, gra, more) = match &cluster {
        None => {
            let (par, gra) = demo.start_routers(&sites, &pools)?;
            (par, gra, Vec::new())
        }
        Some(c) => demo.start_etcd_routers(&sites, &pools, c)?,
    };
    let migrate_toml = work.join("migrate.toml");
    let routers: Vec<&Router> = [&par, &gra].into_iter().chain(&more).collect();
    let mut toml = topology::migrate_config(work, &routers, opts.filers);
    if let Some(c) = &cluster {
        toml.push_str(&etcd::migrate_store(&c.endpoints_toml()));
    }
    std::fs::write(&migrate_toml, toml)?;
    let load = demo.start_load(&sites, &par, &gra);
    // A warm-up first, so the source takes writes the move must carry over.
    let warm_up = (opts.duration / 4).min(Duration::from_secs(10));
    tokio::time::sleep(warm_up).await;

    let journal = demo.journal();
    // Where `ferry migrate status` and `resume` find the run.
    let run_at: Vec<String> = match &cluster {
        None => vec!["--journal".into(), journal.display().to_string()],
        Some(c) => etcd::status_args(&c.endpoints()),
    };
    let mut checks = Vec::new();
    let final_run = demo
        .migrate(&migrate_toml, &plan, &run_at, &load, &par, &mut checks)
        .await?;
    checks.push(check_orchestrator(&final_run));

    let mut load = demo.drain(load).await;
    drop((par, gra, more));
    drop(apps);

    let status = orch::status_with(&exe, &run_at).await;
    drop(cluster);
    demo.check_outcome(&sites, &mut load, &status, &mut checks)
        .await?;
    let report = std::path::absolute(&opts.report).unwrap_or_else(|_| opts.report.clone());
    checks.push(report_check(
        &report,
        write_report(&report, status.as_ref().ok(), &checks, opts),
    ));
    print_checks(out, &checks, &report);
    let units = status
        .as_ref()
        .map(|s| {
            s.units
                .iter()
                .map(|u| (u.id.clone(), u.freeze_ms))
                .collect()
        })
        .unwrap_or_default();
    Ok(Summary {
        checks,
        sent: load.sent,
        failed: load.failed,
        units,
        report,
    })
}

/// Every shop server's name and address, by datacenter.
type Pools = HashMap<&'static str, Vec<(String, SocketAddr)>>;

/// What every step of the demo needs.
struct Demo<'a> {
    opts: &'a Options,
    /// The `ferry` binary: routers, the planner and the orchestrator are its children.
    exe: &'a Path,
    work: &'a Path,
    out: &'a Out,
}

impl Demo<'_> {
    /// The run's SQLite journal (unused with `--control etcd`).
    fn journal(&self) -> PathBuf {
        self.work.join("journal.db")
    }

    fn source_root(&self) -> PathBuf {
        self.work.join(SOURCE)
    }

    /// The world before the move: files at the source, the inventory, the
    /// plan (its path is returned).
    async fn world_before_the_move(&self) -> anyhow::Result<(Arc<Vec<Site>>, PathBuf)> {
        let par_root = self.source_root();
        let sites = {
            let (root, n, f) = (par_root.clone(), self.opts.sites, self.opts.filers);
            tokio::task::spawn_blocking(move || topology::generate_sites(&root, n, f)).await??
        };
        let inventory = self.work.join("inventory");
        topology::write_inventory(&inventory, &sites, self.opts.filers, &par_root)?;
        let plan = self.work.join("plan.json");
        topology::run_plan(self.exe, &inventory, &plan, &self.work.join("plan.log"))?;
        self.out.progress(&format!(
            "{} sites written to {SOURCE}'s filers; ferry plan: one unit per filer",
            sites.len()
        ));
        Ok((Arc::new(sites), plan))
    }

    /// Two shop servers per DC, each serving its own DC's copy of the filers.
    async fn start_shops(&self, sites: &[Site]) -> anyhow::Result<(Vec<AppServer>, Pools)> {
        let mut apps = Vec::new();
        let mut pools = Pools::new();
        let gra_root = self.work.join(DESTINATION);
        for (dc, root) in [(SOURCE, &self.source_root()), (DESTINATION, &gra_root)] {
            for n in 1..=2 {
                let name = format!("{dc}-web-{n}");
                let config = Arc::new(AppConfig {
                    dc: dc.to_string(),
                    name: name.clone(),
                    sites: sites
                        .iter()
                        .map(|s| (s.host.clone(), s.dir(root)))
                        .collect(),
                    db: None,
                });
                let app = AppServer::start(config).await?;
                pools.entry(dc).or_default().push((name, app.addr));
                apps.push(app);
            }
        }
        Ok((apps, pools))
    }

    /// The routers: par serves the sites from its pool; gra, where the public
    /// IP now points, forwards them to par until the flip.
    fn start_routers(&self, sites: &[Site], pools: &Pools) -> anyhow::Result<(Router, Router)> {
        let (par_port, gra_port) = (topology::free_port()?, topology::free_port()?);
        let par_conf = topology::router_config(
            PAR_ROUTER,
            par_port,
            "par-web",
            &pools[SOURCE],
            (DESTINATION, gra_port),
            sites,
            "pool:par-web",
        );
        let gra_conf = topology::router_config(
            GRA_ROUTER,
            gra_port,
            "gra-web",
            &pools[DESTINATION],
            (SOURCE, par_port),
            sites,
            &format!("remote:{SOURCE}"),
        );
        let work = self.work;
        let (par, gra) = tokio::task::block_in_place(|| -> anyhow::Result<(Router, Router)> {
            let par = Router::start(self.exe, &work.join("routers/par"), PAR_ROUTER, &par_conf)?;
            let gra = Router::start(self.exe, &work.join("routers/gra"), GRA_ROUTER, &gra_conf)?;
            Ok((par, gra))
        })?;
        self.out.progress(&format!(
            "routers up: {PAR_ROUTER} on {} (pid {}), {GRA_ROUTER} on {} (pid {}); 2 shop servers per DC",
            par.traffic, par.pid, gra.traffic, gra.pid
        ));
        Ok((par, gra))
    }

    /// `--control etcd`: three members under the work directory.
    fn start_etcd(&self) -> anyhow::Result<etcd::Cluster> {
        let dir = self.work.join("etcd");
        let c = tokio::task::block_in_place(|| etcd::Cluster::start(&dir))?;
        self.out.progress(&format!(
            "etcd up: 3 members ({}); routers and the orchestrator keep their state there",
            c.endpoints().join(" ")
        ));
        Ok(c)
    }

    /// `--control etcd`: two routers per DC on one record per site. par-1
    /// writes the sites to etcd (`pool:par-web`); the others load them. Each
    /// router's remote is a router of the other DC, crosswise, so all four
    /// carry traffic: gra-1 (the public IP) forwards to par-2 until the flip,
    /// the stale clients' par-1 forwards to gra-2 after it.
    fn start_etcd_routers(
        &self,
        sites: &[Site],
        pools: &Pools,
        cluster: &etcd::Cluster,
    ) -> anyhow::Result<(Router, Router, Vec<Router>)> {
        // Each router's clients' port, then its peers' port.
        let ports: Vec<u16> = (0..8)
            .map(|_| topology::free_port())
            .collect::<anyhow::Result<_>>()?;
        let [par1, par2, gra1, gra2] = [0, 1, 2, 3].map(|i| (ports[2 * i], ports[2 * i + 1]));
        let eps = cluster.endpoints_toml();
        let conf = |name, (listen, peers), dc: &str, remote: (&str, u16, &str), seeds| {
            let pool = if dc == SOURCE { "par-web" } else { "gra-web" };
            let lo = |port| SocketAddr::from(([127, 0, 0, 1], port));
            let (name_of_remote, remote_peers, remote_pool) = remote;
            etcd::router_config(
                &etcd::EtcdRouter {
                    name,
                    listen: lo(listen),
                    peers: lo(peers),
                    admin: lo(0),
                    pool,
                    servers: &pools[dc],
                    remote: (name_of_remote, lo(remote_peers), remote_pool),
                    seeds,
                },
                &eps,
            )
        };
        let plan = [
            (
                PAR_ROUTER,
                par1,
                SOURCE,
                (DESTINATION, gra2.1, "gra-web"),
                sites,
            ),
            (
                "par-2",
                par2,
                SOURCE,
                (DESTINATION, gra1.1, "gra-web"),
                &[][..],
            ),
            (
                GRA_ROUTER,
                gra1,
                DESTINATION,
                (SOURCE, par2.1, "par-web"),
                &[][..],
            ),
            (
                "gra-2",
                gra2,
                DESTINATION,
                (SOURCE, par1.1, "par-web"),
                &[][..],
            ),
        ];
        let mut up = tokio::task::block_in_place(|| -> anyhow::Result<Vec<Router>> {
            let mut up = Vec::new();
            for (name, listen, dc, remote, seeds) in plan {
                let text = conf(name, listen, dc, remote, seeds);
                let dir = self.work.join("routers").join(name);
                up.push(Router::start(self.exe, &dir, name, &text)?);
            }
            Ok(up)
        })?;
        self.out.progress(&format!(
            "routers up on etcd: {}; one record per site, 2 shop servers per DC",
            up.iter()
                .map(|r| format!("{} on {} (pid {})", r.name, r.traffic, r.pid))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let gra = up.remove(2);
        let par = up.remove(0);
        Ok((par, gra, up))
    }

    /// The load: most clients come in through gra (the public IP); two still
    /// reach par (a stale DNS answer), which is what makes a router that
    /// ignores the freeze able to write at the source.
    fn start_load(&self, sites: &Arc<Vec<Site>>, par: &Router, gra: &Router) -> Load {
        let load = Load::start(LoadConfig {
            entry: gra.traffic,
            stale_entry: par.traffic,
            clients: 16,
            stale_clients: 2,
            sites: Arc::clone(sites),
            max_run: self.opts.duration + Duration::from_secs(600),
        });
        self.out
            .progress("load started: 16 clients (2 via the old address), 70% reads, 30% orders");
        load
    }

    /// Runs `ferry migrate` as `--crash-at` and `--fault` ask; returns how
    /// its last run ended. A fault that could not be injected adds a check.
    async fn migrate(
        &self,
        migrate_toml: &Path,
        plan: &Path,
        run_at: &[String],
        load: &Load,
        par: &Router,
        checks: &mut Vec<Check>,
    ) -> anyhow::Result<RunEnd> {
        let run_args: Vec<String> = vec![
            "run".into(),
            "--config".into(),
            migrate_toml.display().to_string(),
            "--plan".into(),
            plan.display().to_string(),
            // Ignored with the run in etcd (migrate.toml's [store]).
            "--journal".into(),
            self.journal().display().to_string(),
            "--now".into(),
        ];
        match (&self.opts.crash_at, self.opts.fault) {
            (Some(point), _) => {
                self.crash_and_resume(&run_args, run_at, point, checks)
                    .await
            }
            (None, Some(Fault::SkipFreeze)) => self.skip_freeze(&run_args, load).await,
            (None, Some(Fault::StopRouter)) => {
                self.stop_router(&run_args, run_at, par, checks).await
            }
            (None, None) => {
                let log = self.work.join("migrate-1.log");
                orch::run(self.exe, &run_args, &ChildEnv::default(), &log, self.show()).await
            }
        }
    }

    /// The orchestrator's output lines, as progress.
    fn show(&self) -> impl Fn(&str) + '_ {
        move |l: &str| self.out.progress(&format!("migrate: {l}"))
    }

    /// `--crash-at`: the orchestrator dies (SIGKILL) at the failpoint, then
    /// `ferry migrate resume` finishes from the journal (`run_at`: its file,
    /// or the run in etcd, taken over once the dead runner's lease expired).
    async fn crash_and_resume(
        &self,
        run_args: &[String],
        run_at: &[String],
        point: &str,
        checks: &mut Vec<Check>,
    ) -> anyhow::Result<RunEnd> {
        let env = ChildEnv {
            failpoints: Some(format!("{point}=kill")),
            ..ChildEnv::default()
        };
        self.out
            .progress(&format!("orchestrator armed to die (SIGKILL) at {point}"));
        let log = self.work.join("migrate-1.log");
        let first = orch::run(self.exe, run_args, &env, &log, self.show()).await?;
        let killed = first.killed_by_sigkill();
        checks.push(Check::new(
            check::FAILPOINT,
            killed,
            if killed {
                format!("killed by SIGKILL at {point}, then resumed")
            } else {
                format!(
                    "failpoint never reached: the orchestrator ended with {}",
                    first.describe()
                )
            },
        ));
        self.out.progress(&format!(
            "orchestrator ended: {}; resuming from the journal",
            first.describe()
        ));
        let resume_args: Vec<String> = ["resume"]
            .into_iter()
            .map(String::from)
            .chain(run_at.iter().cloned())
            .chain(["--now".to_string()])
            .collect();
        // In etcd the dead runner's lease lives up to its TTL: until then a
        // resume is refused (exit 3, naming the holder).
        let end = Instant::now() + Duration::from_secs(60);
        let mut n = 2;
        loop {
            let log = self.work.join(format!("migrate-{n}.log"));
            let r = orch::run(
                self.exe,
                &resume_args,
                &ChildEnv::default(),
                &log,
                self.show(),
            )
            .await?;
            if r.status.code() != Some(3) || Instant::now() > end {
                return Ok(r);
            }
            self.out
                .progress("the dead runner's lease still holds the run; resuming again in 1s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            n += 1;
        }
    }

    /// `--fault skip-freeze`. The freeze of a small unit lasts a few
    /// milliseconds: held open (paused before the final copy) until the load
    /// has done some requests, so the broken fence lets writes through every
    /// time.
    async fn skip_freeze(&self, run_args: &[String], load: &Load) -> anyhow::Result<RunEnd> {
        let fp = self.work.join("fp");
        std::fs::create_dir_all(&fp)?;
        let env = ChildEnv {
            faults: Some(format!("skip-freeze:{PAR_ROUTER}")),
            failpoints: Some("final_copy:before=pause".into()),
            failpoint_dir: Some(fp.clone()),
            pid: None,
        };
        self.out.progress(&format!(
            "fault: the orchestrator never freezes {PAR_ROUTER} (a broken fence)"
        ));
        // One lane: the router is stopped for the unit the failpoint paused,
        // and no other unit is frozen meanwhile (with two lanes the other
        // unit's flip would wait on the stopped router too, and its held
        // requests outlive hold_max: 503s that belong to another story).
        let mut run_args = run_args.to_vec();
        run_args.extend(["--parallel".to_string(), "1".to_string()]);
        let done = AtomicBool::new(false);
        let run = async {
            let log = self.work.join("migrate-1.log");
            let r = orch::run(self.exe, &run_args, &env, &log, self.show()).await;
            done.store(true, Ordering::Relaxed);
            r
        };
        let hold = faults::hold_freeze_open(&fp, &load.done, &done, self.out);
        let (r, ()) = tokio::join!(run, hold);
        r
    }

    /// `--fault stop-router`: the source router is stopped inside the freeze.
    async fn stop_router(
        &self,
        run_args: &[String],
        run_at: &[String],
        par: &Router,
        checks: &mut Vec<Check>,
    ) -> anyhow::Result<RunEnd> {
        let fp = self.work.join("fp");
        std::fs::create_dir_all(&fp)?;
        let env = ChildEnv {
            failpoints: Some("freeze:inside=pause".into()),
            failpoint_dir: Some(fp.clone()),
            ..ChildEnv::default()
        };
        // One lane: the router is stopped for the unit the failpoint paused,
        // and no other unit is frozen meanwhile (with two lanes the other
        // unit's flip would wait on the stopped router too, and its held
        // requests outlive hold_max: 503s that belong to another story).
        let mut run_args = run_args.to_vec();
        run_args.extend(["--parallel".to_string(), "1".to_string()]);
        let done = AtomicBool::new(false);
        let run = async {
            let log = self.work.join("migrate-1.log");
            let r = orch::run(self.exe, &run_args, &env, &log, self.show()).await;
            done.store(true, Ordering::Relaxed);
            r
        };
        let stop = faults::stop_router(self.exe, run_at, &fp, par, &done, self.out);
        let (r, stopped) = tokio::join!(run, stop);
        if !stopped {
            checks.push(Check::new(
                check::ABANDONED,
                false,
                "the freeze:inside failpoint never paused: the router was not stopped",
            ));
        }
        r
    }

    /// The load runs for --duration at least, then drains (held requests finish).
    async fn drain(&self, load: Load) -> LoadResult {
        let mut last = Instant::now();
        while load.elapsed() < self.opts.duration {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if last.elapsed() >= Duration::from_secs(5) {
                last = Instant::now();
                self.out.progress(&format!(
                    "load: {} requests so far",
                    load.done.load(Ordering::Relaxed)
                ));
            }
        }
        self.out.progress("stopping the load");
        load.finish().await
    }

    /// The proof, from the requests, the journal and the data on both sides;
    /// the checks end in the order the story goes (fault/crash lines last).
    async fn check_outcome(
        &self,
        sites: &Arc<Vec<Site>>,
        load: &mut LoadResult,
        status: &anyhow::Result<MigrationStatus>,
        checks: &mut Vec<Check>,
    ) -> anyhow::Result<()> {
        checks.push(check::check_requests(load));
        match status {
            Ok(s) => checks.push(check::check_units(s)),
            Err(e) => checks.push(Check::new(
                check::UNITS_DONE,
                false,
                format!("no status: {e:#}").replace('\n', " "),
            )),
        }
        let (sites, work, st) = (
            Arc::clone(sites),
            self.work.to_path_buf(),
            status.as_ref().ok().cloned(),
        );
        let acked = std::mem::take(&mut load.acked);
        let data = tokio::task::spawn_blocking(move || {
            check::check_data(&sites, &work, &acked, st.as_ref())
        })
        .await?;
        checks.extend(data);
        match status {
            Err(_) => checks.push(Check::new(check::VERIFIED, false, "no migration status")),
            Ok(s) => {
                checks.push(check::check_verified(s));
                if self.opts.fault == Some(Fault::StopRouter)
                    && !checks.iter().any(|c| c.name == check::ABANDONED)
                {
                    checks.push(check::check_abandoned(s));
                }
            }
        }
        let order = [
            check::REQUESTS,
            check::UNITS_DONE,
            check::NOTHING_LOST,
            check::NO_SPLIT_BRAIN,
            check::NO_EARLY_WRITES,
            check::VERIFIED,
            check::ORCHESTRATOR,
            check::FAILPOINT,
            check::ABANDONED,
        ];
        checks.sort_by_key(|c| order.iter().position(|n| *n == c.name));
        Ok(())
    }
}

/// Passes when `ferry migrate` exited 0; else says how it ended (the
/// rehearsal's check too).
pub fn check_orchestrator(end: &RunEnd) -> Check {
    Check::new(
        check::ORCHESTRATOR,
        end.status.success(),
        if end.status.success() {
            "ferry migrate finished (exit 0)".to_string()
        } else {
            format!(
                "ferry migrate ended with {}: {}",
                end.describe(),
                end.stderr_tail
            )
        },
    )
}

fn report_check(report: &Path, written: anyhow::Result<usize>) -> Check {
    match written {
        Ok(bytes) => Check::new(
            check::REPORT,
            true,
            format!("{} ({bytes} bytes)", report.display()),
        ),
        Err(e) => Check::new(check::REPORT, false, format!("{}: {e:#}", report.display())),
    }
}

fn print_checks(out: &Out, checks: &[Check], report: &Path) {
    out.say("");
    out.say("Checks");
    for c in checks {
        out.say(&format!(
            "  {}  {:<28} {}",
            if c.ok { "pass" } else { "FAIL" },
            c.name,
            c.detail
        ));
    }
    out.say(&format!("Report: {}", report.display()));
}

/// The report: the orchestrator's timeline page with the checks appended.
fn write_report(
    path: &Path,
    status: Option<&MigrationStatus>,
    checks: &[Check],
    opts: &Options,
) -> anyhow::Result<usize> {
    let title = format!(
        "ferry demo: {} sites, {SOURCE} to {DESTINATION}",
        opts.sites
    );
    let checks_html = check::checks_html(checks);
    let page = match status {
        Some(s) => {
            let page = ferry_orch::report::render_html(s, &title, false);
            // Inside <main>, so the checks share the page's layout.
            match page.rfind("</main>") {
                Some(i) => format!("{}{checks_html}{}", &page[..i], &page[i..]),
                None => page + &checks_html,
            }
        }
        None => format!(
            "<!doctype html><meta charset=\"utf-8\"><title>{t}</title><h1>{t}</h1><p>No migration status was available.</p>{checks_html}",
            t = ferry_orch::report::escape(&title)
        ),
    };
    std::fs::write(path, &page).with_context(|| format!("writing {}", path.display()))?;
    Ok(page.len())
}
