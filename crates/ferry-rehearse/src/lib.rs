//! `ferry rehearse`: a whole migration night on one machine. The two
//! datacenters are Linux network namespaces joined by a veth pair shaped
//! with `tc netem` (latency each way, a rate limit); the visitors live in a
//! third namespace, the internet. Each DC has two routers (`ferry proxy`)
//! and two shop servers (ferry-demo's app); each filer has a `ferry agent`
//! on both sides; the orchestrator (`ferry migrate run`, in the destination
//! DC) runs the plan `ferry plan` made of a generated inventory, with the
//! plan's lanes. The demo's clients (keep-alive browsers reading pages and
//! posting orders, some through the old address) run with large downloads
//! and slow readers ([`traffic`]).
//!
//! Afterwards, per unit: predicted against actual freeze and pre-copy time,
//! requests held by the freeze, cut across it (by reason) and failed
//! otherwise; and the demo's proof from the data (every acknowledged write
//! exactly once at the destination, none at the source after its freeze,
//! none at the destination before its flip). [`run`] returns a [`Summary`];
//! the binary prints it and picks the exit code.
//!
//! [`netns`] is the reusable part: namespaces, links with netem, processes
//! and runtimes inside a namespace.

#![forbid(unsafe_code)]

mod control;
mod databases;
mod db_orders;
mod delay;
mod exchange;
mod interactive;
pub mod netns;
mod partition;
mod plan_model;
mod report;
pub mod traffic;
mod units;
mod verdict;
mod world;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_demo::app::AppServer;
use ferry_demo::check::{self, Check};
use ferry_demo::load::{Load, LoadConfig, LoadResult};
use ferry_demo::orch::{self as demo_orch, ChildEnv};
use ferry_demo::topology::{self, Site, DESTINATION, SOURCE};
use ferry_demo::Out;
use ferry_orch::MigrationStatus;

pub use partition::{Partition, PARTITION};
pub use units::UnitRow;
use world::{FreezeSettings, Net, Place};

use ferry_demo::check_orchestrator;
use verdict::check_mix;
pub use verdict::TRAFFIC_MIX;

/// What to rehearse, as checked by the binary's flags.
#[derive(Clone, Debug)]
pub struct Options {
    pub sites: u32,
    pub filers: u32,
    /// Freezes at once (`ferry plan --parallel`).
    pub lanes: u32,
    /// Added each way on the link between the DCs.
    pub latency: Duration,
    /// The link's rate, bytes per second, each way (the plan's bandwidth too).
    pub rate_bytes: u64,
    /// The load runs at least this long (the night runs inside it).
    pub duration: Duration,
    /// The largest media file (bytes); two per filer's first sites.
    pub large_bytes: u64,
    pub report: PathBuf,
    /// The control plane on etcd (3 members split 2+1 across the DCs):
    /// routers watch it, the journal and lease live there.
    pub control_etcd: bool,
    /// Something broken on purpose mid-night (needs `control_etcd`).
    pub partition: Option<Partition>,
    /// Sites with a database on each filer (a MariaDB server per DC);
    /// 0: no database servers. None in the partition scenarios.
    pub databases: u32,
}

impl Options {
    /// Refuses options that cannot run, before anything starts.
    pub fn check(&self) -> Result<(), String> {
        if self.sites < self.filers {
            return Err(format!(
                "--sites {} < --filers {}: every filer needs a site",
                self.sites, self.filers
            ));
        }
        if self.rate_bytes < 125_000 {
            return Err(format!(
                "--rate {} B/s: at least 1 Mbit/s (125000 B/s)",
                self.rate_bytes
            ));
        }
        if self.latency > Duration::from_secs(1) {
            return Err(format!("--latency {:?}: at most 1s each way", self.latency));
        }
        if let (Some(p), false) = (self.partition, self.control_etcd) {
            return Err(format!(
                "--partition {}: needs --control etcd (the scenarios break the control plane)",
                p.as_str()
            ));
        }
        Ok(())
    }
}

/// What the rehearsal found.
pub struct Summary {
    /// The demo's checks, then this crate's; the report last.
    pub checks: Vec<Check>,
    pub units: Vec<UnitRow>,
    /// Lanes the plan asked for, and the most freezes seen at once.
    pub parallel: u64,
    pub max_overlap: usize,
    /// Per kind of client: (sent, failed).
    pub requests: BTreeMap<&'static str, (u64, u64)>,
    /// The namespaces used (all deleted when `run` returns).
    pub namespaces: Vec<String>,
    /// The link between the DCs: what shapes it and its measured round trip.
    pub link: LinkInfo,
    /// Seconds: building the world, and the night (`ferry migrate run`).
    pub setup_s: f64,
    pub night_s: f64,
    pub report: PathBuf,
}

/// The wan as this kernel could shape it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LinkInfo {
    /// netem (latency and rate), tbf (rate only: no netem in this kernel).
    pub qdisc: String,
    pub delay_ms_each_way: f64,
    pub rate_bits: Option<u64>,
    /// TCP connect time across it (fastest of five), in ms.
    pub rtt_ms: Option<f64>,
}

/// Milliseconds since the Unix epoch (the journal's clock).
/// Prints the failed requests (after a scenario's documented ones were
/// taken out) with when they were sent, the first 12: what an operator
/// reads first when `requests` fails.
fn list_failures(
    out: &Out,
    load: &ferry_demo::load::LoadResult,
    mixed: &[traffic::Record],
    sites: &[ferry_demo::topology::Site],
) {
    let load_failed = load
        .log
        .iter()
        .filter_map(|r| Some(("browser", r.site, r.sent_at_ms, r.took, r.failed.as_ref()?)));
    let mix_failed = mixed.iter().filter_map(|r| {
        Some((
            r.kind.name(),
            r.site,
            r.sent_at_ms,
            r.took,
            r.failed.as_ref()?,
        ))
    });
    let mut failed: Vec<_> = load_failed.chain(mix_failed).collect();
    failed.sort_by_key(|f| f.2);
    for (kind, site, sent_at_ms, took, reason) in failed.iter().take(12) {
        let host = sites.get(*site).map_or("?", |s| s.host.as_str());
        out.progress(&format!(
            "failed: {kind} to {host} sent at {}, after {} ms: {reason}",
            out.stamp(*sent_at_ms),
            took.as_millis()
        ));
    }
    if failed.len() > 12 {
        out.progress(&format!("failed: {} more", failed.len() - 12));
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Aborts a task when dropped (an error or Ctrl-C elsewhere).
pub(crate) struct Task<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the rehearsal in `work` (a fresh directory the caller owns). Must
/// run as root, from the `ferry` binary (its children are this binary), on
/// a multi-thread runtime. Dropping the future stops every process and
/// deletes every namespace it created.
pub async fn run(opts: &Options, work: &Path, out: &Out) -> anyhow::Result<Summary> {
    if !netns::is_root() {
        return Err(netns::NetnsError::NotRoot.into());
    }
    let exe = std::env::current_exe().context("finding the ferry binary")?;
    let t0 = Instant::now();
    out.say(&format!(
        "ferry rehearse: {} sites on {} filer(s) move from {SOURCE} to {DESTINATION}; {} lane(s); link {} ms each way, {} Mbit/s",
        opts.sites,
        opts.filers,
        opts.lanes,
        opts.latency.as_millis(),
        opts.rate_bytes * 8 / 1_000_000
    ));
    let net = open_net(opts, out).await?;
    let namespaces = net.names();
    let mut members = match opts.control_etcd {
        false => None,
        true => {
            let m =
                tokio::task::block_in_place(|| control::Members::start(&net, &work.join("etcd")))?;
            out.progress(&format!(
                "etcd up: m0, m1 in {DESTINATION}, m2 in {SOURCE} ({})",
                m.endpoints().join(", ")
            ));
            Some(m)
        }
    };
    let etcd = members.as_ref().map(control::Members::endpoints_toml);
    let files = write_files(&exe, opts, work, out).await?;
    let dbs = match files.with_db.is_empty() {
        true => None,
        false => {
            let d = databases::Databases::start(
                &net,
                work,
                &files.sites,
                opts.filers,
                files.with_db.clone(),
            )
            .await?;
            out.progress(&format!(
                "databases: {} mariadbd in {SOURCE} and in {DESTINATION} (one a filer); {} site databases at {SOURCE}, {DESTINATION} busy with its own",
                opts.filers,
                d.sites.len()
            ));
            Some(d)
        }
    };
    let db_by_host = dbs.as_ref().map(|d| d.by_host(&files.sites));
    let mut up = start_services(
        &exe,
        &net,
        work,
        (&files.sites, db_by_host.as_ref()),
        opts,
        etcd.as_deref(),
        out,
    )
    .await?;
    let link = measure_link(&net, out);
    let migrate_toml = work.join("migrate.toml");
    std::fs::write(
        &migrate_toml,
        world::migrate_config(
            &net,
            &up.routers,
            opts.filers,
            &FreezeSettings {
                max_freeze: Duration::from_secs(10),
                drain_timeout: Duration::from_secs(5),
            },
            etcd.as_deref(),
            dbs.as_ref().map(|_| {
                databases::migrate_section(opts.filers, |port| {
                    world::source_port_for_orchestrator(&net, etcd.is_some(), port)
                })
            }),
        ),
    )?;
    let sites = Arc::new(files.sites);
    let with_db: Vec<usize> = files.with_db.iter().map(|(i, _)| *i).collect();
    let (load, mix) = start_traffic(&net, &up.routers, &sites, files.large, with_db, opts).await?;
    out.progress(&format!(
        "traffic: 16 browsers (2 via the old address), 3 downloads (1 old), 2 slow readers (1 old), 2 uploaders, 2 WebSocket clients{}",
        if dbs.is_some() { ", 2 database writers (1 old)" } else { "" }
    ));
    let warm_up = (opts.duration / 4).min(Duration::from_secs(10));
    tokio::time::sleep(warm_up).await;
    let setup_s = t0.elapsed().as_secs_f64();

    let journal = work.join("journal.db");
    // Where `ferry migrate status` and `resume` find the run.
    let run_at: Vec<String> = match &members {
        None => vec!["--journal".into(), journal.display().to_string()],
        Some(m) => ferry_demo::etcd::status_args(&m.endpoints()),
    };
    let night_t0 = Instant::now();
    let run_args = night_args(&migrate_toml, &files.plan_path, &journal);
    let mut partition_check = None;
    let end = match (opts.partition, members.as_mut()) {
        (Some(p), Some(m)) => {
            let night = partition::Night {
                exe: &exe,
                net: &net,
                work,
                run_args,
                run_at: run_at.clone(),
                out,
                sites: sites.as_slice(),
                gra_pool: &up.gra_pool,
                endpoints: etcd.as_deref().unwrap_or_default(),
            };
            let ended = partition::run(p, &night, m, &mut up.routers).await?;
            partition_check = Some((ended.check, ended.excused));
            ended.end
        }
        _ => run_night(&exe, &net, work, run_args, out).await?,
    };
    let night_s = night_t0.elapsed().as_secs_f64();

    // The load runs its duration, then drains.
    while load.elapsed() < opts.duration {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out.progress("stopping the traffic");
    let (mut load, mix_end) = tokio::join!(load.finish(), mix.finish());
    let traffic::MixEnd {
        records: mut mixed,
        uploads,
        db_orders,
    } = mix_end;
    let partition_check = partition_check.map(|(mut check, excused)| {
        for e in excused {
            check.detail.push_str(&e.apply(&mut load, &mut mixed));
        }
        check
    });
    list_failures(out, &load, &mixed, &sites);
    drop(up);

    let status = {
        let (exe, run_at) = (exe.clone(), run_at.clone());
        // In the destination DC: the run may live in etcd there.
        match net
            .handle(Place::Gra)
            .spawn(async move { demo_orch::status_with(&exe, &run_at).await })
            .await
        {
            Ok(s) => s,
            Err(e) => Err(anyhow::anyhow!("the status task: {e}")),
        }
    };
    drop(members);
    let judged = judge(load, mixed, &files.plan, &sites, work, &status).await?;
    let db_checks = match dbs {
        Some(d) => {
            d.check(&net, &sites, db_orders, status.as_ref().ok().cloned())
                .await
        }
        None => Vec::new(),
    };
    let uploads_check = {
        let (s, w) = (Arc::clone(&sites), work.to_path_buf());
        tokio::task::spawn_blocking(move || interactive::check_uploads(&uploads, &s, &w)).await?
    };
    let mut checks = judged.checks;
    checks.push(uploads_check);
    checks.extend(db_checks);
    checks.push(check_orchestrator(&end));
    checks.extend(partition_check);
    let report = std::path::absolute(&opts.report).unwrap_or_else(|_| opts.report.clone());
    let mut summary = Summary {
        checks,
        units: judged.rows,
        parallel: files.parallel,
        max_overlap: judged.overlap,
        requests: judged.requests,
        namespaces,
        link,
        setup_s,
        night_s,
        report: report.clone(),
    };
    let written = report::write(&report, status.as_ref().ok(), &summary, opts);
    summary.checks.push(match written {
        Ok(bytes) => Check::new(
            check::REPORT,
            true,
            format!("{} ({bytes} bytes)", report.display()),
        ),
        Err(e) => Check::new(check::REPORT, false, format!("{}: {e:#}", report.display())),
    });
    drop(net);
    Ok(summary)
}

/// The namespaces and the shaped wan, after removing those of dead runs.
async fn open_net(opts: &Options, out: &Out) -> anyhow::Result<Net> {
    let stale = tokio::task::block_in_place(|| netns::remove_stale(world::PREFIX))?;
    if !stale.is_empty() {
        out.progress(&format!(
            "removed namespaces of dead runs: {}",
            stale.join(", ")
        ));
    }
    let netem = netns::Netem {
        delay: opts.latency,
        rate_bits: Some(opts.rate_bytes * 8),
        loss_percent: 0.0,
    };
    let db_ports: Vec<u16> = (0..opts.filers).map(databases::port).collect();
    let net = Net::create(&netem, opts.filers, &db_ports).await?;
    out.progress(&format!("namespaces: {}", net.names().join(", ")));
    Ok(net)
}

/// The sites' files, the inventory and the plan made of it.
struct Files {
    sites: Vec<Site>,
    large: Vec<world::LargeFile>,
    plan_path: PathBuf,
    plan: serde_json::Value,
    /// Lanes the plan laid out.
    parallel: u64,
    /// The sites with a database, and it.
    with_db: Vec<(usize, ferry_demo::app_db::SiteDb)>,
}

async fn write_files(exe: &Path, opts: &Options, work: &Path, out: &Out) -> anyhow::Result<Files> {
    let (sites, large) = {
        let (w, o) = (work.to_path_buf(), opts.clone());
        tokio::task::spawn_blocking(move || {
            world::write_sites(&w, o.sites, o.filers, o.large_bytes)
        })
        .await??
    };
    let inventory = work.join("inventory");
    {
        let (inv, s, f, root) = (
            inventory.clone(),
            sites.clone(),
            opts.filers,
            work.join(SOURCE),
        );
        tokio::task::spawn_blocking(move || topology::write_inventory(&inv, &s, f, &root))
            .await??;
    }
    let per_filer = if opts.partition.is_some() {
        0
    } else {
        opts.databases
    };
    let with_db = databases::pick(&sites, opts.filers, per_filer);
    if !with_db.is_empty() {
        databases::write_inventory(&inventory, &sites, opts.filers, &with_db)?;
    }
    let plan_path = work.join("plan.json");
    plan_model::run_plan(exe, opts, &inventory, &plan_path, &work.join("plan.log")).await?;
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plan_path)?).context("reading plan.json")?;
    let parallel = plan["parameters"]["parallel"].as_u64().unwrap_or(1);
    out.progress(&format!(
        "{} sites written ({} large files); ferry plan: {} unit(s), {parallel} lane(s)",
        sites.len(),
        large.len(),
        plan["units"].as_array().map_or(0, Vec::len)
    ));
    Ok(Files {
        sites,
        large,
        plan_path,
        plan,
        parallel,
        with_db,
    })
}

/// Everything that runs in the DCs; dropping it stops them all.
struct Services {
    routers: Vec<world::RouterAt>,
    /// The destination's shop servers (a router that joins later uses them).
    gra_pool: world::Pool,
    _apps: Vec<AppServer>,
    _agents: Vec<world::Proc>,
}

async fn start_services(
    exe: &Path,
    net: &Net,
    work: &Path,
    (sites, db): (
        &[Site],
        Option<&std::collections::HashMap<String, ferry_demo::app_db::SiteDb>>,
    ),
    opts: &Options,
    etcd: Option<&str>,
    out: &Out,
) -> anyhow::Result<Services> {
    let agents = tokio::task::block_in_place(|| world::start_agents(exe, net, work, opts.filers))?;
    // par-1 behind gates, for a scenario that cuts it off alone.
    let gate_par_1 = matches!(opts.partition, Some(Partition::RouterCut(_)));
    let (apps, par_pool, gra_pool) = world::start_shops(net, work, sites, db).await?;
    let routers = tokio::task::block_in_place(|| {
        world::start_routers(
            exe,
            net,
            work,
            sites,
            (&par_pool, &gra_pool),
            etcd,
            gate_par_1,
        )
    })?;
    out.progress(&format!(
        "up: {} agents, 4 shop servers, routers {}",
        agents.len(),
        routers
            .iter()
            .map(|r| format!("{} (pid {})", r.name, r.router.pid))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(Services {
        routers,
        gra_pool,
        _apps: apps,
        _agents: agents,
    })
}

/// The wan as shaped, with the round trip of a request across it.
fn measure_link(net: &Net, out: &Out) -> LinkInfo {
    let link = LinkInfo {
        qdisc: if net.relay_delay.is_zero() {
            net.applied.qdisc.to_string()
        } else {
            format!(
                "{} + delay relays (no netem in this kernel)",
                net.applied.qdisc
            )
        },
        delay_ms_each_way: (net.applied.delay + net.relay_delay).as_secs_f64() * 1000.0,
        rate_bits: net.applied.rate_bits,
        rtt_ms: tokio::task::block_in_place(|| net.wan_rtt()).map(|d| d.as_secs_f64() * 1000.0),
    };
    out.progress(&format!(
        "wan: {}, {} ms each way, round trip of a request {}",
        if link.qdisc.is_empty() {
            "unshaped"
        } else {
            &link.qdisc
        },
        link.delay_ms_each_way,
        link.rtt_ms
            .map_or("unmeasured".into(), |ms| format!("{ms:.2} ms"))
    ));
    link
}

/// The visitors, from the internet: the demo's browsers on one public
/// router of each DC, the mix (downloads, slow readers) on the other.
async fn start_traffic(
    net: &Net,
    routers: &[world::RouterAt],
    sites: &Arc<Vec<Site>>,
    large: Vec<world::LargeFile>,
    with_db: Vec<usize>,
    opts: &Options,
) -> anyhow::Result<(Load, traffic::Mix)> {
    let (gra_1, gra_2) = (routers[2].public(), routers[3].public());
    let (par_1, par_2) = (routers[0].public(), routers[1].public());
    let inet = net.handle(Place::Inet);
    let load = {
        let sites = Arc::clone(sites);
        let max_run = opts.duration + Duration::from_secs(600);
        inet.spawn(async move {
            Load::start(LoadConfig {
                entry: gra_1,
                stale_entry: par_1,
                clients: 16,
                stale_clients: 2,
                sites,
                max_run,
            })
        })
        .await?
    };
    let mix = {
        let config = traffic::MixConfig {
            sites: Arc::clone(sites),
            large: Arc::new(large),
            entry: gra_2,
            stale_entry: par_2,
            downloads: 3,
            slow_readers: 2,
            slow_chunk: 16 * 1024,
            // Not in the partition scenarios: with the router's lingering
            // close, uploads cut by a wan cut or a router restart still
            // end as connection errors 4-12 ms after they are sent, not
            // as the 502 other requests get (docs/control-plane.md).
            uploads: if opts.partition.is_some() { 0 } else { 2 },
            websockets: 2,
            db_writers: if with_db.is_empty() { 0 } else { 2 },
            with_db,
        };
        inet.spawn(async move { traffic::Mix::start(config) })
            .await?
    };
    Ok((load, mix))
}

/// `ferry migrate run` of the plan (the journal file is ignored when
/// migrate.toml keeps the run in etcd).
fn night_args(migrate_toml: &Path, plan_path: &Path, journal: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--config".into(),
        migrate_toml.display().to_string(),
        "--plan".into(),
        plan_path.display().to_string(),
        "--journal".into(),
        journal.display().to_string(),
        "--now".into(),
    ]
}

/// `ferry migrate run` of the plan, in the destination DC.
async fn run_night(
    exe: &Path,
    net: &Net,
    work: &Path,
    args: Vec<String>,
    out: &Out,
) -> anyhow::Result<demo_orch::RunEnd> {
    let (exe, log, o) = (exe.to_path_buf(), work.join("migrate.log"), out.clone());
    let mut task = Task(net.handle(Place::Gra).spawn(async move {
        demo_orch::run(&exe, &args, &ChildEnv::default(), &log, |l| {
            o.progress(&format!("migrate: {l}"))
        })
        .await
    }));
    match (&mut task.0).await {
        Ok(r) => r,
        Err(e) => bail!("the orchestrator task: {e}"),
    }
}

/// The checks that need the traffic's records and the journal, and the
/// per-unit rows.
struct Judged {
    checks: Vec<Check>,
    rows: Vec<UnitRow>,
    overlap: usize,
    requests: BTreeMap<&'static str, (u64, u64)>,
}

async fn judge(
    mut load: LoadResult,
    mixed: Vec<traffic::Record>,
    plan: &serde_json::Value,
    sites: &Arc<Vec<Site>>,
    work: &Path,
    status: &anyhow::Result<MigrationStatus>,
) -> anyhow::Result<Judged> {
    let mut checks = vec![check::check_requests(&load)];
    let mut records: Vec<traffic::Record> = load
        .log
        .drain(..)
        .map(|r| traffic::Record {
            kind: traffic::Kind::Browser,
            site: r.site,
            sent_at_ms: r.sent_at_ms,
            took: r.took,
            failed: r.failed,
            bytes: 0,
        })
        .collect();
    records.extend(mixed);
    let mut requests: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    for r in &records {
        let e = requests.entry(r.kind.name()).or_default();
        e.0 += 1;
        e.1 += u64::from(r.failed.is_some());
    }
    let (rows, overlap) = match status {
        Ok(s) => {
            checks.push(check::check_units(s));
            let rows = units::rows(plan, s, sites, &records);
            let overlap = units::max_overlap(&rows);
            (rows, overlap)
        }
        Err(e) => {
            checks.push(Check::new(
                check::UNITS_DONE,
                false,
                format!("no status: {e:#}").replace('\n', " "),
            ));
            (Vec::new(), 0)
        }
    };
    checks.push(check_mix(&records, &rows));
    {
        let (s, w, st) = (
            Arc::clone(sites),
            work.to_path_buf(),
            status.as_ref().ok().cloned(),
        );
        let acked = std::mem::take(&mut load.acked);
        let data =
            tokio::task::spawn_blocking(move || check::check_data(&s, &w, &acked, st.as_ref()))
                .await?;
        checks.extend(data);
    }
    checks.push(match status {
        Ok(s) => check::check_verified(s),
        Err(_) => Check::new(check::VERIFIED, false, "no migration status"),
    });
    Ok(Judged {
        checks,
        rows,
        overlap,
        requests,
    })
}
