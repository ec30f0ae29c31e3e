//! `ferry inventory check DIR` and `ferry inventory generate`: validate an
//! inventory (every problem with file:line, exit 2) or write a synthetic one.
//! Also home of the progress bars the planner shares.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use ferry_inventory::{Format, Inventory, InventoryError, Progress};
use ferry_plan::{human, summary};
use parking_lot::Mutex;

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Load and check an inventory directory; every problem is listed with its
    /// file and line (exit 2 if there is any).
    Check {
        /// Directory with one file per entity (sites.csv or sites.jsonl, ...).
        dir: PathBuf,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write a realistic synthetic inventory (deterministic for a given seed);
    /// its shape is documented in the README.
    Generate {
        /// Number of sites.
        #[arg(long)]
        sites: u64,
        /// Random seed: the same seed and size always give the same files.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory (created if missing; files are overwritten).
        #[arg(long)]
        out: PathBuf,
        /// File format.
        #[arg(long, value_enum, default_value_t = FormatArg::Csv)]
        format: FormatArg,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Csv,
    Jsonl,
}

/// Progress bars on stderr when it is a terminal; nothing otherwise.
pub(crate) struct Bars {
    enabled: bool,
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

impl Bars {
    pub(crate) fn new() -> Bars {
        Bars {
            enabled: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }
}

impl Progress for Bars {
    fn begin(&self, stage: &str, total: u64) {
        if !self.enabled {
            return;
        }
        let bar = indicatif::ProgressBar::new(total);
        let template = "{msg:24} [{bar:40}] {percent:>3}% {elapsed_precise} (eta {eta})";
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(stage.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        if let Some(old) = self.bar.lock().replace(bar) {
            old.finish_and_clear();
        }
    }
    fn advance(&self, n: u64) {
        if let Some(bar) = &*self.bar.lock() {
            bar.inc(n);
        }
    }
    fn end(&self) {
        if let Some(bar) = self.bar.lock().take() {
            bar.finish_and_clear();
        }
    }
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
pub(crate) fn emit(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow!("writing to stdout: {e}").into())
        }
        _ => Ok(()),
    }
}

pub async fn run(args: Args) -> Result<(), Failure> {
    match args.command {
        Command::Check { dir, json } => check(&dir, json),
        Command::Generate {
            sites,
            seed,
            out,
            format,
        } => generate(sites, seed, &out, format),
    }
}

/// Loads an inventory; a bad one is a usage failure (exit 2) whose message
/// lists the problems, an unreadable one a runtime failure (exit 1).
pub(crate) fn load(dir: &Path, bars: &Bars) -> Result<Inventory, Failure> {
    ferry_inventory::load_dir(dir, bars).map_err(|e| load_failure(dir, e))
}

fn load_failure(dir: &Path, e: InventoryError) -> Failure {
    match e {
        InventoryError::Invalid {
            problems,
            count,
            follow_on,
        } => {
            const SHOWN: usize = 20;
            let mut msg = format!(
                "{}: the inventory has {count} problem(s){}:",
                dir.display(),
                follow_on_text(follow_on)
            );
            for p in problems.iter().take(SHOWN) {
                msg.push_str(&format!("\n  {p}"));
            }
            if count > SHOWN {
                msg.push_str(&format!(
                    "\n  ... and {} more (`ferry inventory check` lists up to {})",
                    count - SHOWN,
                    ferry_inventory::MAX_PROBLEMS
                ));
            }
            Failure::usage(anyhow!(msg))
        }
        e if e.is_bad_input() => Failure::usage(e),
        e => Failure::from(e),
    }
}

fn follow_on_text(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" (and {n} follow-on unknown references to refused rows, not listed)")
    }
}

fn check(dir: &Path, json: bool) -> Result<(), Failure> {
    use std::fmt::Write as _;
    let bars = Bars::new();
    let started = Instant::now();
    let mut text = String::new();
    let result = match ferry_inventory::load_dir(dir, &bars) {
        Ok(inv) => {
            let c = inv.counts();
            if json {
                let files: Vec<_> = inv
                    .files()
                    .iter()
                    .map(|f| {
                        serde_json::json!({"name": f.name, "rows": f.rows, "bytes": f.bytes, "digest": f.digest})
                    })
                    .collect();
                let doc =
                    serde_json::json!({"ok": true, "counts": c, "files": files, "problems": []});
                let _ = writeln!(text, "{doc}");
            } else {
                let _ = writeln!(
                    text,
                    "{}: ok ({:.2} s)",
                    dir.display(),
                    started.elapsed().as_secs_f64()
                );
                for f in inv.files() {
                    let _ = writeln!(
                        text,
                        "  {:<20} {:>12} rows  {:>9}  digest {}",
                        f.name,
                        human::count(f.rows),
                        human::bytes(f.bytes as f64),
                        f.digest
                    );
                }
                let clients = inv
                    .observed_uses()
                    .iter()
                    .filter(|o| matches!(o.user, ferry_inventory::User::Client(_)))
                    .count();
                let _ = writeln!(text, "  {}", summary::inventory_counts(&c));
                let _ = writeln!(
                    text,
                    "  {} declared uses, {} observed uses ({} by client addresses outside the inventory)",
                    human::count(c.declared_uses as u64),
                    human::count(c.observed_uses as u64),
                    human::count(clients as u64)
                );
            }
            Ok(())
        }
        Err(InventoryError::Invalid {
            problems,
            count,
            follow_on,
        }) => {
            if json {
                let list: Vec<_> = problems
                    .iter()
                    .map(|p| serde_json::json!({"file": p.file, "line": p.line, "message": p.error.to_string()}))
                    .collect();
                let doc = serde_json::json!({"ok": false, "problem_count": count, "follow_on_problems": follow_on, "problems": list});
                let _ = writeln!(text, "{doc}");
            } else {
                for p in &problems {
                    let _ = writeln!(text, "{p}");
                }
                if count > problems.len() {
                    let _ = writeln!(text, "... and {} more", count - problems.len());
                }
            }
            Err(Failure::usage(anyhow!(
                "{}: the inventory has {count} problem(s){}",
                dir.display(),
                follow_on_text(follow_on)
            )))
        }
        Err(e) => Err(load_failure(dir, e)),
    };
    emit(&text)?;
    result
}

fn generate(sites: u64, seed: u64, out: &Path, format: FormatArg) -> Result<(), Failure> {
    let bars = Bars::new();
    let started = Instant::now();
    let params = ferry_inventory::GenerateParams {
        sites,
        seed,
        format: match format {
            FormatArg::Csv => Format::Csv,
            FormatArg::Jsonl => Format::Jsonl,
        },
    };
    let c = ferry_inventory::generate(&params, out, &bars).map_err(|e| match e {
        e @ InventoryError::OtherFormatPresent { .. } => Failure::usage(e),
        e => Failure::from(e),
    })?;
    emit(&format!(
        "{}: {}; {} declared and {} observed uses (seed {seed}, {:.2} s)\n",
        out.display(),
        summary::inventory_counts(&c),
        human::count(c.declared_uses as u64),
        human::count(c.observed_uses as u64),
        started.elapsed().as_secs_f64()
    ))
}
