//! `ferry exec`: one command on many agents, output prefixed by server, a
//! summary table, exit 1 if any run failed (3 if an agent refused us).
//! Also the agent side's wiring of ferry-fleet's exec server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use ferry_fleet::{run_all, summary_table, ExecClient, ExecConfig, FleetConfig, Sink, Stream};
use tokio::sync::watch;

use crate::Failure;

mod join_follow;

pub(crate) use join_follow::Counts as FollowCounts;

#[derive(clap::Args)]
pub struct Args {
    /// The fleet: servers with their exec addresses (see docs/update-runbook.md).
    #[arg(long, env = "FERRY_FLEET")]
    fleet: PathBuf,
    /// Run on every server of the fleet.
    #[arg(long, conflicts_with = "servers", required_unless_present = "servers")]
    all: bool,
    /// Run on these servers only (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    servers: Option<Vec<String>>,
    /// Servers running the command at once (default: all).
    #[arg(long)]
    parallel: Option<usize>,
    /// Stop the command on a server after this long, e.g. "90s", "10m".
    #[arg(long, default_value = "10m")]
    timeout: String,
    /// The caller's token (else the fleet file's token or token_file).
    #[arg(long, env = "FERRY_EXEC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The command and its arguments (after `--`); passed as a vector,
    /// never through a shell.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let fleet = FleetConfig::load(&args.fleet).map_err(Failure::usage)?;
    let timeout = ferry_conf::parse_duration(&args.timeout)
        .map_err(|e| Failure::usage(anyhow!("--timeout: {e}")))?;
    if args.parallel == Some(0) {
        return Err(Failure::usage(anyhow!("--parallel: must be at least 1")));
    }
    let targets = fleet
        .targets(if args.all {
            None
        } else {
            args.servers.as_deref()
        })
        .map_err(|e| Failure::usage(anyhow!("--servers: {e}")))?;
    let token = caller_token(args.token, &fleet)?;
    let width = targets.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let sink: Sink = Arc::new(
        move |server: &str, stream: Stream, line: &str| match stream {
            Stream::Stdout => println!("{server:<width$} | {line}"),
            Stream::Stderr => eprintln!("{server:<width$} | {line}"),
        },
    );
    let client = ExecClient::new(token);
    let parallel = args.parallel.unwrap_or(targets.len());
    let outcomes = run_all(&client, &targets, &args.command, parallel, timeout, sink).await;
    println!();
    print!("{}", summary_table(&outcomes));
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(|o| o.server.as_str())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    let e = anyhow!(
        "failed on {} of {} servers: {}",
        failed.len(),
        outcomes.len(),
        failed.join(", ")
    );
    if outcomes.iter().any(|o| o.refused) {
        Err(Failure::refused(e))
    } else {
        Err(e.into())
    }
}

/// The caller's token: the flag or environment first, then the fleet file.
pub(crate) fn caller_token(flag: Option<String>, fleet: &FleetConfig) -> Result<String, Failure> {
    flag.filter(|t| !t.is_empty())
        .or_else(|| fleet.token.clone())
        .ok_or_else(|| {
            Failure::usage(anyhow!(
                "no caller token: --token, FERRY_EXEC_TOKEN, or token/token_file in {}",
                fleet.path.display()
            ))
        })
}

/// `ferry agent --join POOL`: this server registers itself as an extra
/// front server in a pool of every router, and leaves (drained first) when
/// the agent stops.
#[derive(clap::Args, Clone)]
pub struct JoinArgs {
    /// Join this pool of the routers (`--router`) while the agent runs.
    #[arg(long, requires_all = ["join_name", "join_address", "router"])]
    join: Option<String>,
    /// The server's name in the pool.
    #[arg(long)]
    join_name: Option<String>,
    /// IP:port of this server's HTTP instance (where the routers send traffic).
    #[arg(long)]
    join_address: Option<std::net::SocketAddr>,
    /// The pool tier to join at (0 is preferred; higher tiers take traffic
    /// only when every lower tier is unavailable).
    #[arg(long, default_value_t = 0)]
    join_tier: u8,
    #[arg(long, default_value_t = 1)]
    join_weight: u32,
    /// A router's admin API base URL, e.g. http://10.0.0.1:9001 (repeat for each).
    #[arg(long)]
    router: Vec<String>,
    /// The routers' admin token.
    #[arg(long, env = "FERRY_ADMIN_TOKEN", hide_env_values = true)]
    router_token: Option<String>,
    /// Longest wait for the server's requests to finish when leaving.
    #[arg(long, default_value = "30s")]
    leave_timeout: String,
    /// Files first, traffic after: join drained, copy the site's files from
    /// the pool's primary (`ferry://HOST:PORT/VOLUME`, a full sync with
    /// deletions, then the Merkle verification) into --join-files-to, and
    /// only then take traffic. A failed copy leaves the pool: a server whose
    /// files are not verified never gets a request.
    #[arg(long, requires_all = ["join", "join_files_to", "join_key_file"])]
    join_files_from: Option<String>,
    /// The document root the joining server serves from (created if missing).
    #[arg(long, requires = "join_files_from")]
    join_files_to: Option<PathBuf>,
    /// The primary's agent key file (owner-only), for --join-files-from.
    #[arg(long, requires = "join_files_from")]
    join_key_file: Option<PathBuf>,
    /// With --join-files-from: once taking traffic, keep following the
    /// primary into --join-files-to (as `ferry sync --follow`) until the
    /// agent stops, so a file saved at the primary reaches this server
    /// within about a second. A lost primary is retried with back-off.
    #[arg(long, requires = "join_files_from")]
    join_follow: bool,
    /// With --join-follow: a server whose copy has been out of step this
    /// long (the primary lost, a pass failing) is drained; its next
    /// successful pass makes it ready again.
    #[arg(long, default_value = "30s", requires = "join_follow")]
    join_stale_after: String,
}

/// Where a joining server's files come from (`--join-files-from`).
#[derive(Clone)]
struct FilesFirst {
    from: ferry_sync::Endpoint,
    to: PathBuf,
    key: [u8; 32],
    /// `--join-follow`: out of step this long drains the server.
    follow: Option<std::time::Duration>,
}

impl JoinArgs {
    /// Whether the agent follows the primary once joined (`--join-follow`).
    pub(crate) fn follows(&self) -> bool {
        self.join_follow
    }

    /// The checked files-first settings, before anything joins.
    fn files_first(&self) -> Result<Option<FilesFirst>, Failure> {
        let (Some(from), Some(to), Some(key)) = (
            &self.join_files_from,
            &self.join_files_to,
            &self.join_key_file,
        ) else {
            return Ok(None);
        };
        let from = match ferry_sync::Endpoint::parse(from) {
            Ok(e @ ferry_sync::Endpoint::Remote { .. }) => e,
            Ok(ferry_sync::Endpoint::Local(_)) => {
                return Err(Failure::usage(anyhow!(
                    "--join-files-from {from:?}: expected ferry://HOST:PORT/VOLUME"
                )))
            }
            Err(e) => return Err(Failure::usage(anyhow!("--join-files-from: {e}"))),
        };
        let key =
            ferry_sync::proto::read_key_file("--join-key-file", key).map_err(Failure::usage)?;
        let stale_after = ferry_conf::parse_duration(&self.join_stale_after)
            .map_err(|e| Failure::usage(anyhow!("--join-stale-after: {e}")))?;
        Ok(Some(FilesFirst {
            from,
            to: to.clone(),
            key,
            follow: self.join_follow.then_some(stale_after),
        }))
    }
}

/// A full copy of `f.from` into `f.to` (deletions included), proved equal by
/// the Merkle verification (ferry-sync's `full_sync_verified`). Blocking
/// (ferry-sync's engine is synchronous).
fn copy_files(f: &FilesFirst) -> anyhow::Result<String> {
    use ferry_sync::{Endpoint, OpenOptions, Role, SyncOptions};
    let opts = OpenOptions {
        key: Some(f.key),
        ..OpenOptions::default()
    };
    let src = f.from.open(Role::Source, &opts)?;
    if f.follow.is_some() {
        // A primary that cannot be followed (its volume not watched) is
        // found now, before any traffic, not by a drain after the join.
        src.source()
            .changes()
            .with_context(|| format!("--join-follow: {} cannot be followed", f.from))?;
    }
    let dst = Endpoint::Local(f.to.clone()).open(Role::Dest, &opts)?;
    let done = ferry_sync::open::full_sync_verified(&src, &dst, &SyncOptions::default())?;
    if !done.verdict.equal() {
        anyhow::bail!(
            "still different after {} passes: {:?}",
            done.passes,
            done.verdict.differing
        );
    }
    Ok(format!(
        "{} entries copied in {} passes, verified equal",
        done.changed_entries, done.passes
    ))
}

/// What the agent runs next to the sync server: the exec server and the
/// pool membership.
pub(crate) struct Extras {
    exec: Option<ExecServing>,
    joined: Option<Joined>,
    follower: Option<join_follow::Follower>,
}

struct Joined {
    routers: Vec<ferry_fleet::runbook::Router>,
    pool: String,
    name: String,
    leave_timeout: std::time::Duration,
}

/// `follow_counts` is where a `--join-follow` follower counts (the agent's
/// metrics serve it).
pub(crate) async fn start_extras(
    exec: Option<ExecConfig>,
    join: &JoinArgs,
    follow_counts: Arc<FollowCounts>,
) -> Result<Extras, Failure> {
    let files_first = join.files_first()?;
    let exec = spawn_agent_server(exec).await?;
    let (Some(pool), Some(name), Some(address)) = (&join.join, &join.join_name, join.join_address)
    else {
        return Ok(Extras {
            exec,
            joined: None,
            follower: None,
        });
    };
    let joined = Joined {
        routers: routers_of(join)?,
        pool: pool.clone(),
        name: name.clone(),
        leave_timeout: ferry_conf::parse_duration(&join.leave_timeout)
            .map_err(|e| Failure::usage(anyhow!("--leave-timeout: {e}")))?,
    };
    let http = ferry_orch::router::Http::new();
    joined
        .join_every_router(&http, address, join, files_first.is_some())
        .await?;
    let follower = match files_first {
        Some(f) => joined.copy_then_ready(&http, f, follow_counts).await?,
        None => None,
    };
    Ok(Extras {
        exec,
        joined: Some(joined),
        follower,
    })
}

/// The routers of `--router`, each with the one `--router-token`.
fn routers_of(join: &JoinArgs) -> Result<Vec<ferry_fleet::runbook::Router>, Failure> {
    let token = join.router_token.clone().unwrap_or_default();
    join.router
        .iter()
        .enumerate()
        .map(|(i, url)| {
            if !url.starts_with("http://") {
                return Err(Failure::usage(anyhow!(
                    "--router {url:?}: expected http://HOST:PORT"
                )));
            }
            Ok(ferry_fleet::runbook::Router {
                name: format!("router{} ({url})", i + 1),
                admin: url.trim_end_matches('/').to_string(),
                token: token.clone(),
            })
        })
        .collect()
}

impl Joined {
    /// Joins the pool at every router (drained when the files come first).
    async fn join_every_router(
        &self,
        http: &ferry_orch::router::Http,
        address: std::net::SocketAddr,
        join: &JoinArgs,
        drained: bool,
    ) -> Result<(), Failure> {
        let (pool, name) = (&self.pool, &self.name);
        for (i, r) in self.routers.iter().enumerate() {
            let joined = if drained {
                join_drained(http, r, pool, name, address, join).await
            } else {
                ferry_fleet::routers::join(
                    http,
                    r,
                    pool,
                    name,
                    &address.to_string(),
                    join.join_tier,
                    join.join_weight,
                )
                .await
            };
            if let Err(e) = joined {
                // Half a membership is worse than none: leave the routers
                // already joined before giving up.
                self.leave(http, &self.routers[..i], "a failed join").await;
                return Err(Failure::from(e));
            }
            tracing::info!(router = %r.admin, %pool, %name, %address, tier = join.join_tier, drained, "joined the pool");
        }
        Ok(())
    }

    /// Files first: copies and verifies the site's files, then takes
    /// traffic at every router, then (`--join-follow`) keeps following the
    /// primary. Any failure leaves every router before it is returned, so
    /// a server whose copy failed never serves.
    async fn copy_then_ready(
        &self,
        http: &ferry_orch::router::Http,
        f: FilesFirst,
        follow_counts: Arc<FollowCounts>,
    ) -> Result<Option<join_follow::Follower>, Failure> {
        let (pool, name) = (&self.pool, &self.name);
        tracing::info!(from = %f.from, to = %f.to.display(), "copying the site's files before taking traffic");
        let copy = f.clone();
        let done = match tokio::task::spawn_blocking(move || copy_files(&copy)).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                self.leave(http, &self.routers, "a failed copy").await;
                return Err(Failure::from(e.context(
                    "files first: the copy failed, the server left the pool without taking traffic",
                )));
            }
            Err(e) => {
                self.leave(http, &self.routers, "a failed copy").await;
                return Err(Failure::from(anyhow!(
                    "files first: the copy task failed: {e}"
                )));
            }
        };
        tracing::info!(%done, "files verified");
        for r in &self.routers {
            if let Err(e) = ferry_fleet::routers::set_server(http, r, pool, name, "ready").await {
                self.leave(http, &self.routers, "a failed ready").await;
                return Err(Failure::from(e));
            }
            tracing::info!(router = %r.admin, %pool, %name, "files verified: taking traffic");
        }
        let Some(stale_after) = f.follow else {
            return Ok(None);
        };
        let m = join_follow::Membership {
            routers: self.routers.clone(),
            pool: pool.clone(),
            name: name.clone(),
        };
        match join_follow::Follower::start(f.from, f.to, f.key, stale_after, m, follow_counts) {
            Ok(started) => Ok(Some(started)),
            Err(e) => {
                self.leave(http, &self.routers, "a failed follower start")
                    .await;
                Err(Failure::from(anyhow!(
                    "--join-follow: cannot start the follower: {e}"
                )))
            }
        }
    }

    /// Leaves the pool at `routers`, logging (not returning) what fails:
    /// it runs on the way out of another failure.
    async fn leave(
        &self,
        http: &ferry_orch::router::Http,
        routers: &[ferry_fleet::runbook::Router],
        why: &str,
    ) {
        for r in routers {
            let left =
                ferry_fleet::routers::leave(http, r, &self.pool, &self.name, self.leave_timeout)
                    .await;
            if let Err(e) = left {
                tracing::error!(error = %e, "leaving after {why}");
            }
        }
    }
}

impl Extras {
    /// Leaves the pools (drained first), then stops the follower (which
    /// kept the copy fresh for the requests still in flight) and the exec
    /// server.
    pub(crate) async fn stop(self) {
        if let Some(f) = &self.follower {
            f.stop_keeper();
        }
        if let Some(j) = &self.joined {
            let http = ferry_orch::router::Http::new();
            for r in &j.routers {
                match ferry_fleet::routers::leave(&http, r, &j.pool, &j.name, j.leave_timeout).await
                {
                    Ok(()) => {
                        tracing::info!(router = %r.admin, pool = %j.pool, name = %j.name, "left the pool")
                    }
                    Err(e) => tracing::error!(error = %e, "leaving the pool failed"),
                }
            }
        }
        if let Some(f) = self.follower {
            f.stop().await;
        }
        if let Some(e) = self.exec {
            e.stop().await;
        }
    }
}

/// A running exec server.
pub(crate) struct ExecServing {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ExecServing {
    /// Stops accepting, then waits while the server stops its running
    /// commands and records their end (bounded by the server).
    async fn stop(self) {
        self.stop.send_replace(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "exec server task failed");
        }
    }
}

/// Starts the exec server when configured.
pub(crate) async fn spawn_agent_server(
    exec: Option<ExecConfig>,
) -> Result<Option<ExecServing>, Failure> {
    let Some(cfg) = exec else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("exec server: cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        callers = cfg.callers.len(),
        allowed = cfg.allow.len(),
        audit_log = %cfg.audit_log.display(),
        max_connections = cfg.limits.max_connections,
        max_running = cfg.limits.max_running,
        "exec server listening"
    );
    let srv = ferry_fleet::ExecServer::new(cfg)?;
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(ferry_fleet::serve(listener, srv, rx));
    Ok(Some(ExecServing { stop, task }))
}

/// An agent with no volumes: the exec server and/or the pool membership,
/// and with `--join-follow` the follower's metrics (`metrics`).
pub(crate) async fn serve_agent(
    exec: Option<ExecConfig>,
    join: &JoinArgs,
    check: bool,
    metrics: Option<crate::metrics_endpoint::MetricsSettings>,
) -> Result<(), Failure> {
    if check {
        if let Some(c) = &exec {
            println!(
                "exec config: ok ({} callers, {} allow entries, listen {})",
                c.callers.len(),
                c.allow.len(),
                c.listen
            );
        }
        return Ok(());
    }
    let counts = Arc::new(FollowCounts::default());
    let metrics = match metrics {
        Some(m) => {
            let c = counts.clone();
            Some(crate::metrics_endpoint::Metrics::start(
                m,
                Arc::new(move || c.render()),
            )?)
        }
        None => None,
    };
    let extras = start_extras(exec, join, counts).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    extras.stop().await;
    if let Some(m) = metrics {
        m.stop()?;
    }
    Ok(())
}

/// Joins `r`'s pool in state `drain` (no traffic until the files are
/// verified); a membership left by an earlier run is drained too.
async fn join_drained(
    http: &ferry_orch::router::Http,
    r: &ferry_fleet::runbook::Router,
    pool: &str,
    name: &str,
    address: std::net::SocketAddr,
    join: &JoinArgs,
) -> Result<(), ferry_fleet::FleetError> {
    use ferry_admin_api::pools::{NewServer, ServerState};
    let client = ferry_admin_api::AdminClient::new(r.name.clone(), &r.admin, Some(&r.token))
        .with_http(http.clone())
        .with_timeout(std::time::Duration::from_secs(10));
    let server = NewServer {
        name: name.to_string(),
        address,
        tier: join.join_tier,
        weight: join.join_weight,
        state: ServerState::Drain,
    };
    match client.add_server(pool, &server).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_conflict() => {
            ferry_fleet::routers::set_server(http, r, pool, name, "drain").await
        }
        Err(e) => Err(ferry_fleet::FleetError::Router {
            router: e.router().to_string(),
            message: e.detail(),
        }),
    }
}
