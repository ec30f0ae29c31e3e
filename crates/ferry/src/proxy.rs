//! `ferry proxy --config FILE`: run the router until SIGTERM/SIGINT; SIGHUP reloads.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ferry_proxy::Proxy;
use tokio::signal::unix::{signal, SignalKind};

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// The router's TOML configuration (see examples/proxy.toml).
    #[arg(long, short)]
    config: PathBuf,
    /// Check the configuration, print what it defines, and exit (0 valid, 2 invalid).
    #[arg(long)]
    check: bool,
    /// Once listening, write the bound addresses here as JSON (for scripts and
    /// tests that start the router with port 0).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Threads serving traffic (default: one per core). Each runs its own
    /// event loop with its own SO_REUSEPORT socket of every listener, and a
    /// connection stays on the thread that accepted it; the first thread also
    /// runs the admin API, health checks, tunnels and passthrough listeners.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// How long open connections may take to finish at shutdown.
    #[arg(long, default_value = "10s", value_parser = ferry_conf::parse_duration)]
    grace: Duration,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let config = ferry_config::load(&args.config).map_err(Failure::usage)?;
    if args.check {
        // The certificate directory is read as at start: a file that would
        // refuse the start refuses the check, named.
        let certs = match &config.tls {
            Some(t) => {
                let store = ferry_tls::CertStore::open(&ferry_tls::StoreOptions {
                    dir: t.cert_dir.clone(),
                    default_cert: t.default_cert.clone(),
                    key_cache: t.key_cache,
                })
                .map_err(Failure::usage)?;
                format!(", {} certificate(s)", store.len())
            }
            None => String::new(),
        };
        // The sites file is checked whole too: every bad line at file:line.
        let listed = match &config.router.sites_file {
            Some(path) => ferry_config::read_sites_file(path, &config)
                .map_err(Failure::usage)?
                .len(),
            None => 0,
        };
        // Said on the valid line, so nobody runs an open admin API unawares.
        let open_admin = match &config.admin {
            Some(a) if a.insecure_no_auth => format!(
                "; WARNING: admin API on {} without authentication (insecure_no_auth)",
                a.listen
            ),
            _ => String::new(),
        };
        println!(
            "{}: valid: router {}, {} listener(s), {} passthrough listener(s), {} tunnel(s), {} pool(s), {} remote(s), {} site(s){certs}{open_admin}",
            args.config.display(),
            config.router.name,
            config.listeners.len(),
            config.passthroughs.len(),
            config.tunnels.len(),
            config.pools.len(),
            config.remotes.len(),
            config.sites.len() + listed
        );
        return Ok(());
    }
    // Install signal handlers before the router starts so an early SIGHUP or
    // SIGTERM is not lost (the default action would kill the process).
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // systemd starts services with 1024 open files (soft): a router needs
    // one per client and one per upstream connection. The connection cap is
    // derived from the raised limit.
    match ferry_proxy::raise_nofile_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(?before, ?after, "open-file limit raised to the hard limit")
        }
        Ok((limit, _)) => tracing::info!(?limit, "open-file limit (already the hard limit)"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    if let Some(a) = config.admin.as_ref().filter(|a| a.insecure_no_auth) {
        tracing::warn!(listen = %a.listen, "admin API without authentication (insecure_no_auth = true)");
    }
    let threads = match args.threads {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let proxy = Proxy::start_threads(config, Some(args.config.clone()), threads)
        .await
        .map_err(|e| match e {
            ferry_proxy::ProxyError::UnknownPlacement { .. }
            | ferry_proxy::ProxyError::Config(_)
            | ferry_proxy::ProxyError::SitesFile(_) => Failure::usage(e),
            other => Failure::from(other),
        })?;
    if let Some(path) = &args.ready_file {
        let ready = serde_json::json!({
            "pid": std::process::id(),
            "listeners": proxy.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "admin": proxy.admin_addr().map(|a| a.to_string()),
            "passthrough": proxy.passthrough_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        });
        // Write then rename, so a reader never sees half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, ready.to_string())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    }
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match proxy.reload_from_file().await {
                    Ok(r) => tracing::info!(added = r.sites_added, changed = r.sites_changed, removed = r.sites_removed, "SIGHUP: configuration reloaded"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: configuration refused, the running one stays"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    proxy.shutdown(args.grace).await;
    Ok(())
}
