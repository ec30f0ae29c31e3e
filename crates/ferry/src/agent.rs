//! `ferry agent`: serves named volumes to `ferry sync` over TCP.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use ferry_sync::{AgentConfig, SyncError};

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Agent configuration (TOML: listen, key or key_file, [volumes.NAME] with
    /// path and read_only). See examples/agent.toml.
    #[arg(long)]
    config: PathBuf,
    /// Validate the configuration and exit (2 if invalid).
    #[arg(long)]
    check: bool,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let cfg = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e @ SyncError::Config { .. }) => return Err(Failure::usage(e)),
        Err(e @ SyncError::Io { .. }) => return Err(Failure::usage(e)),
        Err(e) => return Err(e.into()),
    };
    if args.check {
        println!(
            "{}: ok ({} volumes, listen {})",
            args.config.display(),
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
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server =
        tokio::task::spawn_blocking(move || ferry_sync::serve(listener, Arc::new(cfg), stop2));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    stop.store(true, Ordering::Relaxed);
    server.await.context("agent thread")??;
    Ok(())
}
