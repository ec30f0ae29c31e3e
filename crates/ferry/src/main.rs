//! `ferry`: one binary, one subcommand per job. This crate only parses flags,
//! wires the library crates together and maps errors to exit codes.
//!
//! Exit codes: 0 success; 1 runtime failure (I/O, network, a demo check that
//! failed); 2 bad usage or invalid configuration; 3 the router refused the
//! request (4xx from the admin API, e.g. 409 stale epoch), or a sync agent
//! refused us (wrong key, unknown or read-only volume).

#![forbid(unsafe_code)]

mod agent;
mod backend;
mod ctl;
mod db;
mod demo;
mod exec;
mod inventory;
mod metrics_endpoint;
mod migrate;
mod plan;
mod proxy;
mod rehearse;
mod sync;
mod update;

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: the sync agent's frame buffers are
/// allocated on the session thread and freed on the worker threads, and
/// glibc's per-arena lock made those threads wait for each other.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand, ValueEnum};

/// `ferry --version`: the release, the commit it was built from and the
/// cargo features it was built with.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FERRY_COMMIT"),
    ", features: ",
    env!("FERRY_FEATURES"),
    ")"
);

/// Keeps websites up while the infrastructure under them changes.
#[derive(Parser)]
#[command(name = "ferry", version = VERSION, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 ok, 1 failure, 2 bad usage or config, 3 refused by the router."
)]
struct Cli {
    /// Log verbosity (error, warn, info, debug, trace) or a tracing filter
    /// such as "ferry_proxy=debug". RUST_LOG overrides it.
    /// [default: info; warn for `demo`]
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Lines per second from one log statement; more are counted and
    /// summarised in one "suppressed N similar log lines" line (0: no limit).
    /// A peer that makes a statement fire cannot make the log grow faster.
    #[arg(long, global = true, default_value_t = 20, value_name = "N")]
    log_rate: u32,
    /// Write the log to this file instead of stderr, with a size cap: at
    /// --log-max-size it is renamed FILE.1 (older ones shift up to
    /// FILE.<--log-keep>) and a new one is started. Lines that cannot be
    /// written (a full disk) are dropped and counted, never waited for.
    #[arg(long, global = true, value_name = "FILE")]
    log_file: Option<std::path::PathBuf>,
    /// Size at which --log-file is rotated (K, M, G suffixes).
    #[arg(long, global = true, default_value = "100M", value_parser = parse_size, value_name = "SIZE")]
    log_max_size: u64,
    /// Rotated files kept next to --log-file.
    #[arg(long, global = true, default_value_t = 5, value_name = "N")]
    log_keep: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router: listeners, site table, pools, health checks, admin API.
    Proxy(proxy::Args),
    /// Talk to a running router's admin API.
    Ctl(ctl::Args),
    /// Migrate N demo sites from DC par to DC gra on loopback under live read
    /// and write load, then prove nothing was lost and nothing split-brained.
    Demo(demo::Args),
    /// Rehearse a whole migration night on this machine: two datacenters as
    /// network namespaces (latency, rate limit), routers, agents, the plan's
    /// lanes, live traffic; per-unit predicted vs actual, and the write checks.
    Rehearse(rehearse::Args),
    /// Check or generate an inventory (sites, hostings, filers, databases, uses).
    Inventory(inventory::Args),
    /// Compute units and night waves from an inventory; write plan.json.
    Plan(plan::Args),
    /// Copy a tree (file mode) or an image (block mode) in converging passes;
    /// SRC and DST are local paths or ferry://HOST:PORT/VOLUME.
    Sync(sync::Args),
    /// Move a plan's units between datacenters (run, resume, status, rollback).
    Migrate(migrate::Args),
    /// Move MariaDB databases between servers under live writes.
    Db(db::Args),
    /// Serve named volumes to `ferry sync` over TCP (pre-shared key); with
    /// --exec-config, run allow-listed commands for `ferry exec`.
    Agent(agent::Args),
    /// Run a command on every agent of the fleet (allow-listed, audited),
    /// output prefixed by server, then a summary table.
    Exec(exec::Args),
    /// Roll out an application update (levels 1-3) from a primary server:
    /// drain, upgrade steps, sync, purge, spread; journaled, resumable.
    Update(update::Args),
    /// A tiny HTTP server that answers with its name (for demos and tests).
    #[command(hide = true)]
    Backend(backend::Args),
    /// Print shell completions for bash, zsh, fish, elvish or powershell
    /// (e.g. `ferry completions bash > /etc/bash_completion.d/ferry`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (ferry.1 and one per subcommand, ferry-proxy.1 ...)
    /// into DIR.
    Manpages { dir: std::path::PathBuf },
}

/// `ferry manpages DIR`: the pages come from the same definitions as
/// `--help`, so they cannot disagree with it.
fn write_manpages(dir: &std::path::Path) -> std::io::Result<usize> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut written = 0;
    let mut write = |name: String, cmd: clap::Command| -> std::io::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.name(name.clone())).render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.1")), out)?;
        written += 1;
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        write(format!("ferry-{}", sub.get_name()), sub.clone())?;
    }
    write("ferry".into(), cmd)?;
    Ok(written)
}

/// An error with the exit code it maps to.
pub(crate) struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn usage(e: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: 2,
            error: e.into(),
        }
    }
    pub fn refused(e: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: 3,
            error: e.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

/// Parses "100M", "64k", "1G" or a plain number of bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("{text:?}: unit must be K, M or G")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n >= 4096)
        .ok_or_else(|| format!("{text:?} is not a size of at least 4096 bytes (e.g. 100M)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The router gives its bulk loads' freed pages back right away.
    ferry_proxy::set_release_freed(ferry_alloc::release_freed);
    // Generated text only: no runtime, no logging.
    if let Some(code) = generated_text(&cli.command) {
        return code;
    }
    let log = match init_logging(&cli) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime_for(&cli.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli.command));
    // Background tasks (connections, health checks) must not keep us alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    // Flush the queued log lines before the last word, so it is the last line.
    drop(log);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("ferry: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

/// `ferry completions` and `ferry manpages`: answered at once (`Some`).
fn generated_text(command: &Command) -> Option<ExitCode> {
    match command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "ferry", &mut std::io::stdout());
            Some(ExitCode::SUCCESS)
        }
        Command::Manpages { dir } => Some(match write_manpages(dir) {
            Ok(n) => {
                println!("{n} man pages written to {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferry: writing man pages to {}: {e}", dir.display());
                ExitCode::from(1)
            }
        }),
        _ => None,
    }
}

fn init_logging(cli: &Cli) -> Result<ferry_log::Guard, ferry_log::LogError> {
    let default_level = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    ferry_log::init(&ferry_log::Options {
        filter: cli
            .log_level
            .clone()
            .unwrap_or_else(|| default_level.into()),
        format: match cli.log_format {
            LogFormat::Text => ferry_log::Format::Text,
            LogFormat::Json => ferry_log::Format::Json,
        },
        rate: cli.log_rate,
        file: cli.log_file.clone(),
        max_size: cli.log_max_size,
        keep: cli.log_keep,
    })
}

/// `ferry proxy` runs on current-thread runtimes, one per `--threads`
/// (the others are started by `ferry_proxy::Proxy::start_threads`): no
/// work-stealing scheduler in the request path.
fn runtime_for(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match command {
        Command::Proxy(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Proxy(a) => proxy::run(a).await,
        Command::Ctl(a) => ctl::run(a).await,
        Command::Demo(a) => demo::run(a).await,
        Command::Rehearse(a) => rehearse::run(a).await,
        Command::Backend(a) => backend::run(a).await,
        Command::Inventory(a) => inventory::run(a).await,
        Command::Plan(a) => plan::run(a).await,
        Command::Sync(a) => sync::run(a).await,
        Command::Agent(a) => agent::run(a).await,
        Command::Exec(a) => exec::run(a).await,
        Command::Update(a) => update::run(a).await,
        Command::Migrate(a) => migrate::run(a).await,
        Command::Db(a) => db::run(a).await,
        // Answered before the runtime started.
        Command::Completions { .. } | Command::Manpages { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse_with_units_and_refuse_nonsense() {
        assert_eq!(super::parse_size("100M"), Ok(100 << 20));
        assert_eq!(super::parse_size("64k"), Ok(64 << 10));
        assert_eq!(super::parse_size("1G"), Ok(1 << 30));
        assert_eq!(super::parse_size("8192"), Ok(8192));
        for bad in ["", "M", "10X", "-1M", "100", "99999999999999G"] {
            assert!(super::parse_size(bad).is_err(), "{bad}");
        }
    }
}
