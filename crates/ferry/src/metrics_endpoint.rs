//! A bounded `GET /metrics` endpoint for the processes that are not the
//! router: the sync agent, a `--join-follow` follower and `ferry sync
//! --follow` (ferry-sync's std-thread responder). Its own module so that
//! `agent` and `exec` both use it without depending on each other.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use ferry_sync::SyncError;

use crate::Failure;

/// Where to serve `GET /metrics`, for the sync agent and `ferry sync --follow`.
#[derive(clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics (GET /metrics) on this address, e.g.
    /// 127.0.0.1:9102. A non-loopback address needs --metrics-token-file.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// File holding the bearer token scrapes must present (owner-only, as
    /// every Ferry secret file).
    #[arg(long, value_name = "PATH", requires = "metrics_listen")]
    metrics_token_file: Option<PathBuf>,
}

/// A running metrics endpoint; [`Metrics::stop`] ends it.
pub struct Metrics {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), SyncError>>,
}

/// A metrics endpoint's checked settings: where, and the token if any.
pub struct MetricsSettings {
    addr: std::net::SocketAddr,
    token: Option<ferry_secret::Secret>,
}

impl MetricsArgs {
    /// The checked settings, before anything starts: a token file others
    /// may read, or a network address without a token, is a usage error
    /// (exit 2).
    pub fn settings(&self) -> Result<Option<MetricsSettings>, Failure> {
        let Some(addr) = self.metrics_listen else {
            return Ok(None);
        };
        let token = match &self.metrics_token_file {
            Some(p) => {
                Some(ferry_secret::read_file("--metrics-token-file", p).map_err(Failure::usage)?)
            }
            None => None,
        };
        ferry_sync::metrics_http::check_listen(addr, token.as_ref()).map_err(Failure::usage)?;
        Ok(Some(MetricsSettings { addr, token }))
    }
}

impl Metrics {
    /// Binds the address and serves `render` on a thread of its own.
    pub fn start(
        settings: MetricsSettings,
        render: ferry_sync::metrics_http::Render,
    ) -> anyhow::Result<Metrics> {
        let MetricsSettings { addr, token } = settings;
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        tracing::info!(%addr, token = token.is_some(), "serving metrics");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            ferry_sync::metrics_http::serve_metrics(listener, token, render, stop2)
        });
        Ok(Metrics { stop, thread })
    }

    pub fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("metrics thread panicked"))??;
        Ok(())
    }
}
