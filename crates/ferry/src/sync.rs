//! `ferry sync SRC DST`: one pass, converging passes, verification.
//!
//! Flags are read in two stages (as the rest of the CLI): clap's raw [`Args`],
//! then [`Settings`] with sizes, durations and endpoints parsed, so every usage
//! error is reported (exit 2) before anything is touched.
//!
//! `--follow SRC DST...` (and `--watch` without `--until-converged`) keep
//! running, pushing every change at the source, until Ctrl-C or SIGTERM.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context};
use clap::ValueEnum;
use ferry_sync::{
    ConvergeOptions, Dest, Endpoint, EndpointTree, Event, FollowDest, FollowOptions, Mode,
    OpenOptions, PassSummary, Role, Source, SyncOptions,
};

use crate::Failure;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ModeArg {
    File,
    Block,
}

#[derive(clap::Args)]
pub struct Args {
    /// SRC then DST: local paths or ferry://HOST:PORT/VOLUME. With --follow,
    /// one or more destinations.
    #[arg(required = true, num_args = 2..)]
    paths: Vec<String>,
    /// File mode copies a tree; block mode copies an image file or device.
    #[arg(long, value_enum, default_value_t = ModeArg::File)]
    mode: ModeArg,
    /// Remove destination entries the source does not have.
    #[arg(long)]
    delete: bool,
    /// Compare file content (BLAKE3) instead of size + mtime.
    #[arg(long)]
    checksum: bool,
    /// After the last pass, prove both sides equal (Merkle roots); list the
    /// differing paths (or blocks) and exit 1 if they are not.
    #[arg(long)]
    verify: bool,
    /// Repeat passes until the predicted final pass fits --max-freeze.
    #[arg(long, requires = "max_freeze")]
    until_converged: bool,
    /// Freeze budget for --until-converged, e.g. "5s", "500ms".
    #[arg(long, requires = "until_converged")]
    max_freeze: Option<String>,
    /// Give up converging after this many passes.
    #[arg(long, default_value_t = 30)]
    max_passes: u32,
    /// Limit on data sent, bytes per second (suffixes K, M, G: powers of 1024).
    #[arg(long)]
    bwlimit: Option<String>,
    /// Block size for block mode (default 64K).
    #[arg(long)]
    block_size: Option<String>,
    /// Keep owners (default: when running as root).
    #[arg(long)]
    owners: bool,
    /// One JSON event per line on stdout instead of a progress bar.
    #[arg(long)]
    json: bool,
    /// Record changed paths at the source (inotify) so passes after the first
    /// visit only those. With --until-converged: converging passes; alone:
    /// keep pushing changes to DST until Ctrl-C (as --follow).
    #[arg(long)]
    watch: bool,
    /// After a first pass to every destination, push each change at SRC to
    /// all of them (within about a second) until Ctrl-C; a destination that
    /// is down is retried and catches up when it returns.
    #[arg(long)]
    follow: bool,
    /// Pre-shared key for agents (prefer FERRY_SYNC_KEY or --key-file).
    #[arg(long, env = "FERRY_SYNC_KEY", hide_env_values = true)]
    key: Option<String>,
    /// File holding the pre-shared key for agents.
    #[arg(long, env = "FERRY_SYNC_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// With --follow: publish passes and the predicted final pass (GET
    /// /metrics, as `ferry agent --metrics-listen`).
    #[command(flatten)]
    metrics: crate::metrics_endpoint::MetricsArgs,
}

/// Checked settings.
struct Settings {
    src: Endpoint,
    dst: Endpoint,
    /// Follow mode (`--follow`, or `--watch` without `--until-converged`):
    /// every destination, `dst` first.
    follow: Option<Vec<Endpoint>>,
    mode: Mode,
    opts: SyncOptions,
    converge: Option<ConvergeOptions>,
    verify: bool,
    json: bool,
    key: Option<[u8; 32]>,
    /// Follow mode's metrics endpoint.
    metrics: Option<crate::metrics_endpoint::MetricsSettings>,
}

/// "10M" -> 10 MiB. Plain numbers are bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (write e.g. 10M, 512K, 1G)"))?;
    if n.is_nan() || n <= 0.0 || !n.is_finite() {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok((n * mul as f64) as u64)
}

impl Settings {
    fn from_args(a: &Args) -> Result<Settings, Failure> {
        let following = a.follow || (a.watch && !a.until_converged);
        if following {
            let flag = if a.follow { "--follow" } else { "--watch" };
            if a.mode == ModeArg::Block {
                return Err(Failure::usage(anyhow!(
                    "{flag} works in file mode only (block mode has no change record)"
                )));
            }
            if a.until_converged {
                return Err(Failure::usage(anyhow!(
                    "--follow runs until stopped; it does not combine with --until-converged"
                )));
            }
            if a.verify {
                return Err(Failure::usage(anyhow!(
                    "{flag} runs until stopped; run a separate `ferry sync --verify` instead"
                )));
            }
        } else if a.watch && a.mode == ModeArg::Block {
            return Err(Failure::usage(anyhow!(
                "--watch works in file mode only (block mode has no change record)"
            )));
        }
        if !a.follow && a.paths.len() != 2 {
            return Err(Failure::usage(anyhow!(
                "expected exactly SRC and DST ({} paths given; several destinations need --follow)",
                a.paths.len()
            )));
        }
        let src = Endpoint::parse(&a.paths[0]).map_err(Failure::usage)?;
        let dsts = a.paths[1..]
            .iter()
            .map(|p| Endpoint::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Failure::usage)?;
        let dst = dsts[0].clone();
        let mode = match a.mode {
            ModeArg::File => Mode::File,
            ModeArg::Block => Mode::Block,
        };
        let mut opts = SyncOptions {
            delete: a.delete,
            checksum: a.checksum,
            // Owners can only be set by root; elsewhere comparing them would make
            // every pass see changes it cannot apply.
            owners: a.owners || ferry_sync::local::running_as_root(),
            watch: a.watch || a.follow,
            ..Default::default()
        };
        if let Some(b) = &a.bwlimit {
            opts.bwlimit =
                Some(parse_size(b).map_err(|e| Failure::usage(anyhow!("--bwlimit: {e}")))?);
        }
        if let Some(b) = &a.block_size {
            let n = parse_size(b).map_err(|e| Failure::usage(anyhow!("--block-size: {e}")))?;
            opts.block_size =
                u32::try_from(n).map_err(|_| Failure::usage(anyhow!("--block-size: too large")))?;
        }
        let converge = match (&a.max_freeze, a.until_converged) {
            (Some(d), true) => Some(ConvergeOptions {
                max_freeze: ferry_conf::parse_duration(d)
                    .map_err(|e| Failure::usage(anyhow!("--max-freeze: {e}")))?,
                max_passes: a.max_passes.max(1),
            }),
            _ => None,
        };
        let remote = std::iter::once(&src)
            .chain(&dsts)
            .any(|e| matches!(e, Endpoint::Remote { .. }));
        let key = match (&a.key, &a.key_file) {
            (Some(k), _) => Some(ferry_sync::proto::derive_key(k)),
            // Refused when others may read it, as the agent's key_file.
            (None, Some(f)) => {
                Some(ferry_sync::proto::read_key_file("--key-file", f).map_err(Failure::usage)?)
            }
            (None, None) if remote => {
                return Err(Failure::usage(anyhow!(
                    "a ferry:// endpoint needs the agent's key: FERRY_SYNC_KEY, --key-file or --key"
                )))
            }
            (None, None) => None,
        };
        let metrics = a.metrics.settings()?;
        if metrics.is_some() && !following {
            return Err(Failure::usage(anyhow!(
                "--metrics-listen works with --follow (a single run ends before a scrape)"
            )));
        }
        Ok(Settings {
            src,
            dst,
            follow: following.then_some(dsts),
            mode,
            opts,
            converge,
            verify: a.verify,
            json: a.json,
            key,
            metrics,
        })
    }
}

/// What `ferry sync --follow --metrics-listen` publishes: passes, changed
/// bytes, destinations lost, and the predicted final pass (S + R/B) of
/// each destination's last pass, as the largest of them (what a freeze
/// now would cost at worst). No label: one process follows one source.
#[derive(Default)]
struct FollowStats {
    passes: AtomicU64,
    changed_bytes: AtomicU64,
    dest_failures: AtomicU64,
    last_pass_end: AtomicU64,
    predicted: Mutex<std::collections::HashMap<String, f64>>,
}

impl FollowStats {
    fn record(&self, e: &Event) {
        match e {
            Event::PassFinished { summary } => {
                self.passes.fetch_add(1, Ordering::Relaxed);
                self.changed_bytes
                    .fetch_add(summary.changed_bytes, Ordering::Relaxed);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.last_pass_end.store(now, Ordering::Relaxed);
                self.predicted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        summary.dest.clone().unwrap_or_default(),
                        summary.predicted_final_secs,
                    );
            }
            Event::DestDown { .. } => {
                self.dest_failures.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn render(&self) -> String {
        let predicted = self
            .predicted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .fold(0.0f64, |a, b| a.max(*b));
        // The exposition format spells infinity "+Inf" (a pass that moved
        // nothing of what changed predicts an endless freeze).
        let predicted = if predicted.is_infinite() {
            "+Inf".to_string()
        } else {
            predicted.to_string()
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        for (name, kind, help, value) in [
            (
                "passes_total",
                "counter",
                "Passes finished, all destinations.",
                load(&self.passes).to_string(),
            ),
            (
                "changed_bytes_total",
                "counter",
                "Changed bytes R of the finished passes.",
                load(&self.changed_bytes).to_string(),
            ),
            (
                "destination_failures_total",
                "counter",
                "Destinations lost (retried with backoff).",
                load(&self.dest_failures).to_string(),
            ),
            (
                "last_pass_end_timestamp_seconds",
                "gauge",
                "Unix time the last pass ended (0: none yet).",
                load(&self.last_pass_end).to_string(),
            ),
            (
                "predicted_final_seconds",
                "gauge",
                "The largest predicted final pass (S + R/B) over the destinations' last passes.",
                predicted,
            ),
        ] {
            out.push_str(&format!(
                "# HELP ferry_sync_follow_{name} {help}\n# TYPE ferry_sync_follow_{name} {kind}\nferry_sync_follow_{name} {value}\n"
            ));
        }
        out
    }
}

/// How this run opens its endpoints (ferry-sync's one way to open a side).
fn open_options(st: &Settings) -> OpenOptions {
    OpenOptions {
        key: st.key,
        mode: st.mode,
        ..OpenOptions::default()
    }
}

/// Opens an endpoint, with its refusals mapped to exit codes: a source
/// that is not there is a usage error (2); an agent refusing the key or
/// the volume is a refusal (3).
fn open(e: &Endpoint, role: Role, st: &Settings) -> Result<EndpointTree, Failure> {
    e.open(role, &open_options(st)).map_err(|e| match e {
        e @ ferry_sync::SyncError::BadSource { .. } => Failure::usage(e),
        e @ (ferry_sync::SyncError::Auth(_) | ferry_sync::SyncError::Remote(_)) => {
            Failure::refused(e)
        }
        e => e.into(),
    })
}

fn human_bytes(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn summary_line(s: &PassSummary) -> String {
    let to = s
        .dest
        .as_ref()
        .map(|d| format!(" to {d}"))
        .unwrap_or_default();
    let what = if s.watched { "visited" } else { "scanned" };
    format!(
        "pass {}{to}: {what} {} entries in {:.3}s (S); changed {} entries, {} (R); sent {} of data, {} on the wire; {:.3}s at {}/s (B); {} deleted; predicted final pass {:.3}s",
        s.pass,
        s.entries,
        s.scan_secs,
        s.changed_entries,
        human_bytes(s.changed_bytes as f64),
        human_bytes(s.data_bytes as f64),
        human_bytes((s.wire_sent + s.wire_received) as f64),
        s.transfer_secs,
        human_bytes(s.rate),
        s.deleted,
        s.predicted_final_secs,
    )
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let settings = Settings::from_args(&args)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let mut work = tokio::task::spawn_blocking(move || run_blocking(settings, &stop2));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    // Ctrl-C or SIGTERM: ask the sync thread to stop and wait for it, so a
    // follow loop ends between passes (a receiver never sees half a file
    // anyway: temporary file + rename).
    let joined = tokio::select! {
        r = &mut work => r,
        _ = tokio::signal::ctrl_c() => { stop.store(true, Ordering::Relaxed); work.await }
        _ = term.recv() => { stop.store(true, Ordering::Relaxed); work.await }
    };
    joined.map_err(|e| anyhow!("sync thread: {e}"))?
}

/// An event shown to a person: the progress bar, or a line per pass.
fn show_event(e: &Event, bar: Option<&indicatif::ProgressBar>) {
    match e {
        Event::PassStarted { pass } => {
            if let Some(b) = bar {
                b.set_prefix(format!("pass {pass}"));
                b.set_position(0);
                b.set_length(0);
                b.set_message("scanning");
            }
        }
        Event::Planned {
            changed_bytes,
            changed_entries,
            ..
        } => {
            if let Some(b) = bar {
                b.set_length(*changed_bytes);
                b.set_message(format!("{changed_entries} entries"));
            }
        }
        Event::Progress { done_bytes, .. } => {
            if let Some(b) = bar {
                b.set_position(*done_bytes);
            }
        }
        Event::PassFinished { summary } => {
            let line = summary_line(summary);
            match bar {
                Some(b) => b.println(line),
                None => println!("{line}"),
            }
        }
        Event::Converged { reason, .. } => match bar {
            Some(b) => b.println(reason),
            None => println!("{reason}"),
        },
        Event::FullWalk { pass, reason } => {
            let line = format!("pass {pass}: walking the whole tree: {reason}");
            match bar {
                Some(b) => b.println(line),
                None => println!("{line}"),
            }
        }
        Event::DestDown {
            dest,
            error,
            retry_in_secs,
        } => eprintln!("{dest}: {error}; retrying in {retry_in_secs:.1}s"),
        Event::Scanned { .. } => {}
    }
}

fn run_blocking(mut st: Settings, stop: &AtomicBool) -> Result<(), Failure> {
    let src = open(&st.src, Role::Source, &st)?;
    let follow_stats = Arc::new(FollowStats::default());
    let metrics = match st.metrics.take() {
        Some(m) => {
            let fs = follow_stats.clone();
            Some(crate::metrics_endpoint::Metrics::start(
                m,
                Arc::new(move || fs.render()),
            )?)
        }
        None => None,
    };
    let json = st.json;
    let bar = if !json && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let out = Mutex::new(std::io::stdout());
    let on_event = |e: &Event| {
        follow_stats.record(e);
        if json {
            if let Ok(line) = serde_json::to_string(e) {
                use std::io::Write;
                let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                let _ = writeln!(o, "{line}");
            }
            return;
        }
        show_event(e, bar.as_ref());
    };
    if let Some(dests) = &st.follow {
        let r = run_follow(&st, src.source(), dests, stop, &on_event);
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        if let Some(m) = metrics {
            m.stop()?;
        }
        return r;
    }
    let dst = open(&st.dst, Role::Dest, &st)?;
    let (s, d) = (src.source(), dst.dest());
    let result = match &st.converge {
        Some(c) => {
            let r = ferry_sync::converge(s, d, &st.opts, st.mode, c, &on_event)?;
            if r.ready {
                Ok(())
            } else {
                Err(anyhow!("{}", r.reason))
            }
        }
        None => {
            match st.mode {
                Mode::File => ferry_sync::run_pass(s, d, &st.opts, 1, &on_event)?,
                Mode::Block => ferry_sync::run_block_pass(s, d, &st.opts, 1, &on_event)?,
            };
            Ok(())
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    result?;
    if st.verify {
        verify(&st, s, d)?;
    }
    Ok(())
}

/// Follow mode: first pass to every destination, then every change, until
/// `stop`. A destination that cannot be reached is retried, not fatal.
fn run_follow(
    st: &Settings,
    src: &dyn Source,
    dests: &[Endpoint],
    stop: &AtomicBool,
    on_event: ferry_sync::OnEvent<'_>,
) -> Result<(), Failure> {
    let opts = open_options(st);
    let follow_dests: Vec<FollowDest<'_>> = dests
        .iter()
        .map(|e| {
            let (e, opts) = (e.clone(), opts.clone());
            FollowDest {
                name: e.to_string(),
                connect: Box::new(move || e.open(Role::Dest, &opts).map(EndpointTree::into_dest)),
            }
        })
        .collect();
    ferry_sync::follow(
        src,
        &follow_dests,
        &st.opts,
        &FollowOptions::default(),
        stop,
        on_event,
    )?;
    if !st.json {
        println!("stopped");
    }
    Ok(())
}

fn verify(st: &Settings, s: &dyn Source, d: &dyn Dest) -> Result<(), Failure> {
    let hex = |d: &[u8; 32]| {
        d.iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let (equal, src_root, dst_root, detail) = match st.mode {
        Mode::File => {
            let v = ferry_sync::verify(s, d, 1000)?;
            let mut list: Vec<String> = v.differing.iter().map(|p| format!("{p:?}")).collect();
            if v.truncated {
                list.push("...".into());
            }
            (v.equal(), v.source_root, v.dest_root, list)
        }
        Mode::Block => {
            let v = ferry_sync::verify_blocks(s, d, st.opts.block_size, 1000)?;
            let list = v.differing.iter().map(|b| format!("block {b}")).collect();
            (v.equal(), v.source_root, v.dest_root, list)
        }
    };
    if st.json {
        let j = serde_json::json!({
            "event": "verified",
            "equal": equal,
            "source_root": src_root.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "dest_root": dst_root.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "differing": detail,
        });
        println!("{j}");
    } else if equal {
        println!("verify: equal (Merkle root {})", hex(&src_root));
    } else {
        println!(
            "verify: DIFFERENT (source root {}, destination root {}); differing:",
            hex(&src_root),
            hex(&dst_root)
        );
        for p in &detail {
            println!("  {p}");
        }
    }
    if equal {
        Ok(())
    } else {
        Err(anyhow!("verification failed: {} differences", detail.len()).into())
    }
}
