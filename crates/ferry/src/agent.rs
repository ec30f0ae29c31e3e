//! `ferry agent`: serves named volumes to `ferry sync` over TCP, and with
//! `--exec-config` runs allow-listed commands for `ferry exec` / `ferry
//! update` (ferry-fleet's exec server, on its own address). With
//! `--metrics-listen` the sync agent's counters (and a `--join-follow`
//! follower's) are served to Prometheus (`GET /metrics`, ferry-sync's
//! bounded responder).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use ferry_sync::{AgentConfig, SyncError};

use crate::metrics_endpoint::{Metrics, MetricsArgs};
use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Agent configuration (TOML: listen, key or key_file (mode 0600),
    /// limits, [volumes.NAME] with path, read_only and watch). See
    /// examples/agent.toml.
    #[arg(long, required_unless_present_any = ["exec_config", "join"])]
    config: Option<PathBuf>,
    /// Exec server configuration (TOML: listen, audit_log, [callers.NAME],
    /// [[allow]]). See docs/update-runbook.md.
    #[arg(long)]
    exec_config: Option<PathBuf>,
    #[command(flatten)]
    join: crate::exec::JoinArgs,
    /// Validate the configuration and exit (2 if invalid).
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    metrics: MetricsArgs,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let exec = match &args.exec_config {
        Some(p) => Some(ferry_fleet::ExecConfig::load(p).map_err(Failure::usage)?),
        None => None,
    };
    let Some(config) = args.config.clone() else {
        if args.metrics.metrics_listen.is_some() && !args.join.follows() {
            return Err(Failure::usage(anyhow::anyhow!(
                "--metrics-listen serves the sync agent's or the follower's metrics: it needs --config or --join-follow"
            )));
        }
        let metrics = args.metrics.settings()?;
        return crate::exec::serve_agent(exec, &args.join, args.check, metrics).await;
    };
    let cfg = match AgentConfig::load(&config) {
        Ok(c) => c,
        Err(e @ SyncError::Config { .. }) => return Err(Failure::usage(e)),
        Err(e @ SyncError::Io { .. }) => return Err(Failure::usage(e)),
        Err(e) => return Err(e.into()),
    };
    let metrics = args.metrics.settings()?;
    if args.check {
        println!(
            "{}: ok ({} volumes, listen {})",
            config.display(),
            cfg.volumes.len(),
            cfg.listen
        );
        return Ok(());
    }
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    for (name, v) in &cfg.volumes {
        tracing::info!(volume = %name, path = %v.path.display(), read_only = v.read_only, "serving volume");
    }
    tracing::info!(%addr, "ferry agent listening");
    let stats = Arc::new(ferry_sync::AgentStats::default());
    let follow_counts = Arc::new(crate::exec::FollowCounts::default());
    let metrics = match metrics {
        Some(m) => {
            let (stats, counts) = (stats.clone(), follow_counts.clone());
            let follows = args.join.follows();
            Some(Metrics::start(
                m,
                Arc::new(move || {
                    let mut out = stats.render();
                    if follows {
                        out.push_str(&counts.render());
                    }
                    out
                }),
            )?)
        }
        None => None,
    };
    let extras = crate::exec::start_extras(exec, &args.join, follow_counts).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = tokio::task::spawn_blocking(move || {
        ferry_sync::serve_with_stats(listener, Arc::new(cfg), stats, stop2)
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    stop.store(true, Ordering::Relaxed);
    extras.stop().await;
    server.await.context("agent thread")??;
    if let Some(m) = metrics {
        m.stop()?;
    }
    Ok(())
}
