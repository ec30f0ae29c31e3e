//! `ferry exec`: one command on many agents, output prefixed by server, a
//! summary table, exit 1 if any run failed (3 if an agent refused us).
//! Also the agent side's wiring of ferry-fleet's exec server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use ferry_fleet::{run_all, summary_table, ExecClient, ExecConfig, FleetConfig, Sink, Stream};
use tokio::sync::watch;

use crate::Failure;

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
}

/// What the agent runs next to the sync server: the exec server and the
/// pool membership.
pub(crate) struct Extras {
    exec: Option<ExecServing>,
    joined: Option<Joined>,
}

struct Joined {
    routers: Vec<ferry_fleet::runbook::Router>,
    pool: String,
    name: String,
    leave_timeout: std::time::Duration,
}

pub(crate) async fn start_extras(
    exec: Option<ExecConfig>,
    join: &JoinArgs,
) -> Result<Extras, Failure> {
    let exec = spawn_agent_server(exec).await?;
    let joined = match (&join.join, &join.join_name, join.join_address) {
        (Some(pool), Some(name), Some(address)) => {
            let token = join.router_token.clone().unwrap_or_default();
            let leave_timeout = ferry_conf::parse_duration(&join.leave_timeout)
                .map_err(|e| Failure::usage(anyhow!("--leave-timeout: {e}")))?;
            let mut routers = Vec::new();
            for (i, url) in join.router.iter().enumerate() {
                if !url.starts_with("http://") {
                    return Err(Failure::usage(anyhow!(
                        "--router {url:?}: expected http://HOST:PORT"
                    )));
                }
                routers.push(ferry_fleet::runbook::Router {
                    name: format!("router{} ({url})", i + 1),
                    admin: url.trim_end_matches('/').to_string(),
                    token: token.clone(),
                });
            }
            let http = ferry_orch::router::Http::new();
            for (i, r) in routers.iter().enumerate() {
                let joined = ferry_fleet::routers::join(
                    &http,
                    r,
                    pool,
                    name,
                    &address.to_string(),
                    join.join_tier,
                    join.join_weight,
                )
                .await;
                if let Err(e) = joined {
                    // Half a membership is worse than none: leave the
                    // routers already joined before giving up.
                    for done in &routers[..i] {
                        if let Err(e) =
                            ferry_fleet::routers::leave(&http, done, pool, name, leave_timeout)
                                .await
                        {
                            tracing::error!(error = %e, "leaving after a failed join");
                        }
                    }
                    return Err(Failure::from(e));
                }
                tracing::info!(router = %r.admin, %pool, %name, %address, tier = join.join_tier, "joined the pool");
            }
            Some(Joined {
                routers,
                pool: pool.clone(),
                name: name.clone(),
                leave_timeout,
            })
        }
        _ => None,
    };
    Ok(Extras { exec, joined })
}

impl Extras {
    /// Leaves the pools (drained first), then stops the exec server.
    pub(crate) async fn stop(self) {
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

/// An agent with no volumes: the exec server and/or the pool membership.
pub(crate) async fn serve_agent(
    exec: Option<ExecConfig>,
    join: &JoinArgs,
    check: bool,
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
    let extras = start_extras(exec, join).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    extras.stop().await;
    Ok(())
}
