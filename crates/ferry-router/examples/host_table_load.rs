//! Loads millions of generated sites into a [`HostTable`] and measures what the
//! router cares about at that size: load time, memory per site, lookup latency,
//! and how fast a change becomes visible to a reader.
//!
//! ```text
//! cargo run --release -p ferry-router --example host_table_load -- --sites 3000000 [--out results.json]
//! ```
//!
//! `bench/host-table/run.sh` runs it with the numbers the project tracks.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ferry_model::Placement;
use ferry_router::{HostTable, Outcome};

#[allow(dead_code)] // Shared with the criterion bench, which uses other parts.
#[path = "support/sites.rs"]
mod sites;

const USAGE: &str = "\
usage: host_table_load [--sites N] [--lookups N] [--flips N] [--out FILE]

  --sites N     sites to generate and load (default 3000000)
  --lookups N   lookups timed for the mean (default 10000000)
  --flips N     changes timed for visibility (default 1000)
  --out FILE    also write the results as JSON to FILE";

/// Sites per `apply` call while loading.
const BATCH: u64 = 100_000;
/// Lookups timed one by one for the percentiles.
const LATENCY_SAMPLE: usize = 200_000;
/// Distinct hosts the lookup loops cycle through (in random order).
const HOST_SAMPLE: usize = 1 << 20;

const GOAL_LOAD_SECS: f64 = 3.0;
const GOAL_BYTES_PER_SITE: f64 = 200.0;
const GOAL_FLIP_US: f64 = 1_000.0;

struct Settings {
    sites: u64,
    lookups: u64,
    flips: u64,
    out: Option<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Settings, String> {
    let mut settings = Settings {
        sites: 3_000_000,
        lookups: 10_000_000,
        flips: 1_000,
        out: None,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| {
            v.replace('_', "")
                .parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--sites" => settings.sites = number(value()?)?,
            "--lookups" => settings.lookups = number(value()?)?,
            "--flips" => settings.flips = number(value()?)?,
            "--out" => settings.out = Some(value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if settings.sites == 0 || settings.lookups == 0 || settings.flips == 0 {
        return Err("--sites, --lookups and --flips must be above 0".into());
    }
    Ok(settings)
}

fn main() -> ExitCode {
    let settings = match parse_args(std::env::args().skip(1)) {
        Ok(s) => s,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Results {
    sites: u64,
    wildcards: u64,
    load: Duration,
    generate: Duration,
    rss_delta: i64,
    heap_bytes: usize,
    lookups: u64,
    lookup_mean_ns: f64,
    lookup_p50_ns: u64,
    lookup_p99_ns: u64,
    timer_overhead_ns: u64,
    flips: Vec<Duration>,
}

fn run(settings: &Settings) -> Result<(), String> {
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; numbers mean little without --release");
    }
    let n = settings.sites;
    let table = HostTable::new();

    eprintln!("loading {n} sites in batches of {BATCH}...");
    let rss_before = rss_bytes()?;
    let (mut load, mut generate) = (Duration::ZERO, Duration::ZERO);
    let mut added = 0u64;
    let mut start = 0;
    while start < n {
        let end = (start + BATCH).min(n);
        let t = Instant::now();
        let batch = (start..end)
            .map(|i| sites::site_change(i, sites::placement(i), 1))
            .collect();
        generate += t.elapsed();
        let t = Instant::now();
        let out = table
            .apply(batch, |_| Ok::<(), Infallible>(()))
            .map_err(|e| format!("loading sites {start}..{end}: {e}"))?;
        load += t.elapsed();
        added += out.iter().filter(|(_, o)| *o == Outcome::Added).count() as u64;
        start = end;
    }
    let rss_after = rss_bytes()?;
    if added != n || table.len() as u64 != n {
        return Err(format!(
            "added {added} sites, table holds {}, expected {n}",
            table.len()
        ));
    }
    let wildcards = (0..n).filter(|&i| sites::is_wildcard(i)).count() as u64;

    eprintln!("timing {} lookups...", settings.lookups);
    let hosts: Vec<String> = (0..HOST_SAMPLE as u64)
        .map(|k| sites::request_host(sites::mix(k ^ 0x5eed) % n))
        .collect();
    let (lookup_mean_ns, misses) = mean_lookup_ns(&table, &hosts, settings.lookups);
    if misses > 0 {
        return Err(format!("{misses} lookups of loaded sites missed"));
    }
    let (lookup_p50_ns, lookup_p99_ns, timer_overhead_ns) = lookup_percentiles(&table, &hosts);

    eprintln!("timing {} flips...", settings.flips);
    let flips = flip_visibility(&table, n, settings.flips)?;

    let results = Results {
        sites: n,
        wildcards,
        load,
        generate,
        rss_delta: rss_after as i64 - rss_before as i64,
        heap_bytes: table.heap_bytes(),
        lookups: settings.lookups,
        lookup_mean_ns,
        lookup_p50_ns,
        lookup_p99_ns,
        timer_overhead_ns,
        flips,
    };
    print!("{}", results.table());
    if let Some(path) = &settings.out {
        std::fs::write(path, results.json()).map_err(|e| format!("writing {path}: {e}"))?;
        eprintln!("wrote {path}");
    }
    Ok(())
}

/// Mean time of `count` lookups cycling through `hosts`, and how many missed.
fn mean_lookup_ns(table: &HostTable, hosts: &[String], count: u64) -> (f64, u64) {
    let mask = hosts.len() - 1;
    let mut misses = 0;
    let t = Instant::now();
    for k in 0..count {
        match table.lookup(&hosts[k as usize & mask]) {
            Some(route) => {
                black_box(route);
            }
            None => misses += 1,
        }
    }
    (t.elapsed().as_nanos() as f64 / count as f64, misses)
}

/// p50 and p99 of single lookups, each timed on its own (so including the cost of
/// reading the clock, which is returned third).
fn lookup_percentiles(table: &HostTable, hosts: &[String]) -> (u64, u64, u64) {
    let mut overhead: Vec<u64> = (0..10_000)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            t.elapsed().as_nanos() as u64
        })
        .collect();
    let mut times: Vec<u64> = hosts
        .iter()
        .cycle()
        .take(LATENCY_SAMPLE)
        .map(|h| {
            let t = Instant::now();
            black_box(table.lookup(h));
            t.elapsed().as_nanos() as u64
        })
        .collect();
    (
        percentile(&mut times, 0.50),
        percentile(&mut times, 0.99),
        percentile(&mut overhead, 0.50),
    )
}

fn percentile<T: Copy + Ord>(values: &mut [T], p: f64) -> T {
    values.sort_unstable();
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// Time from the start of `apply()` to a reader spinning on lookups seeing the
/// new epoch, once per flip of one site between two placements.
fn flip_visibility(table: &HostTable, n: u64, flips: u64) -> Result<Vec<Duration>, String> {
    let site = (n / 2..n)
        .chain(0..n / 2)
        .find(|&i| !sites::is_wildcard(i))
        .ok_or("no exact site to flip")?;
    let host = sites::request_host(site);
    let placements = [
        Placement::Pool("blue".into()),
        Placement::Pool("green".into()),
    ];
    let clock = Instant::now();
    let seen_epoch = AtomicU64::new(0);
    let seen_at_ns = AtomicU64::new(0);
    let stop = AtomicBool::new(false);

    thread::scope(|s| {
        s.spawn(|| {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                let epoch = table.lookup(&host).map_or(0, |r| r.epoch.0);
                if epoch != last {
                    // Time first, then epoch: whoever sees the epoch sees its time.
                    seen_at_ns.store(clock.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    seen_epoch.store(epoch, Ordering::Release);
                    last = epoch;
                }
            }
        });
        let result = (|| {
            let mut times = Vec::with_capacity(flips as usize);
            for k in 0..flips {
                let epoch = 2 + k;
                let change = sites::site_change(site, placements[(k % 2) as usize].clone(), epoch);
                let started = clock.elapsed();
                table
                    .apply(vec![change], |_| Ok::<(), Infallible>(()))
                    .map_err(|e| format!("flip to epoch {epoch}: {e}"))?;
                let deadline = Instant::now() + Duration::from_secs(5);
                while seen_epoch.load(Ordering::Acquire) != epoch {
                    if Instant::now() > deadline {
                        return Err(format!("reader never saw epoch {epoch}"));
                    }
                    std::hint::spin_loop();
                }
                let seen = Duration::from_nanos(seen_at_ns.load(Ordering::Relaxed));
                times.push(seen.saturating_sub(started));
            }
            Ok(times)
        })();
        stop.store(true, Ordering::Relaxed);
        result
    })
}

/// Resident memory of this process, from `/proc/self/status`.
fn rss_bytes() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no VmRSS line in /proc/self/status".into())
}

impl Results {
    fn rss_per_site(&self) -> f64 {
        self.rss_delta as f64 / self.sites as f64
    }

    fn heap_per_site(&self) -> f64 {
        self.heap_bytes as f64 / self.sites as f64
    }

    fn flip_us(&self, p: f64) -> f64 {
        let mut us: Vec<Duration> = self.flips.clone();
        percentile(&mut us, p).as_nanos() as f64 / 1_000.0
    }

    fn load_met(&self) -> bool {
        self.load.as_secs_f64() < GOAL_LOAD_SECS
    }

    fn memory_met(&self) -> bool {
        self.rss_per_site() < GOAL_BYTES_PER_SITE && self.heap_per_site() < GOAL_BYTES_PER_SITE
    }

    fn flip_met(&self) -> bool {
        self.flip_us(1.0) < GOAL_FLIP_US
    }

    fn table(&self) -> String {
        let verdict = |met: bool| if met { "ok" } else { "MISSED" };
        let mut s = String::new();
        let mut row = |what: &str, value: String, goal: &str| {
            let _ = writeln!(s, "{what:<28} {value:>14}   {goal}");
        };
        row(
            "sites (wildcards)",
            format!("{} ({})", self.sites, self.wildcards),
            "",
        );
        row(
            "load, apply() total",
            format!("{:.2} s", self.load.as_secs_f64()),
            &format!("goal < {GOAL_LOAD_SECS} s: {}", verdict(self.load_met())),
        );
        row(
            "  (generating records)",
            format!("{:.2} s", self.generate.as_secs_f64()),
            "not counted",
        );
        let memory_goal = format!(
            "goal < {GOAL_BYTES_PER_SITE} B/site: {}",
            verdict(self.memory_met())
        );
        row(
            "memory, RSS delta / site",
            format!("{:.1} B", self.rss_per_site()),
            &memory_goal,
        );
        row(
            "memory, heap_bytes() / site",
            format!("{:.1} B", self.heap_per_site()),
            &memory_goal,
        );
        row(
            "lookup, mean (hits)",
            format!("{:.0} ns", self.lookup_mean_ns),
            &format!("over {} lookups", self.lookups),
        );
        row(
            "lookup, p50 / p99",
            format!("{} / {} ns", self.lookup_p50_ns, self.lookup_p99_ns),
            &format!(
                "{LATENCY_SAMPLE} timed singly, clock read ~{} ns",
                self.timer_overhead_ns
            ),
        );
        row(
            "flip visible, median",
            format!("{:.1} us", self.flip_us(0.5)),
            &format!("over {} flips", self.flips.len()),
        );
        row(
            "flip visible, p99 / max",
            format!("{:.1} / {:.1} us", self.flip_us(0.99), self.flip_us(1.0)),
            &format!(
                "goal max < {GOAL_FLIP_US:.0} us: {}",
                verdict(self.flip_met())
            ),
        );
        s
    }

    /// The results as JSON, written by hand to keep the example free of dependencies.
    fn json(&self) -> String {
        format!(
            r#"{{
  "sites": {sites},
  "wildcards": {wildcards},
  "batch_size": {BATCH},
  "release_build": {release},
  "load": {{ "seconds": {load:.3}, "generate_seconds": {generate:.3}, "goal_seconds": {GOAL_LOAD_SECS}, "met": {load_met} }},
  "memory": {{ "rss_delta_bytes": {rss_delta}, "rss_bytes_per_site": {rss_per_site:.1}, "heap_bytes": {heap}, "heap_bytes_per_site": {heap_per_site:.1}, "goal_bytes_per_site": {GOAL_BYTES_PER_SITE}, "met": {memory_met} }},
  "lookup": {{ "count": {lookups}, "mean_ns": {mean:.1}, "sample": {LATENCY_SAMPLE}, "p50_ns": {p50}, "p99_ns": {p99}, "clock_read_ns": {overhead} }},
  "flip_visibility": {{ "count": {flips}, "median_us": {median:.2}, "p99_us": {fp99:.2}, "max_us": {max:.2}, "goal_max_us": {GOAL_FLIP_US}, "met": {flip_met} }}
}}
"#,
            sites = self.sites,
            wildcards = self.wildcards,
            release = !cfg!(debug_assertions),
            load = self.load.as_secs_f64(),
            generate = self.generate.as_secs_f64(),
            load_met = self.load_met(),
            rss_delta = self.rss_delta,
            rss_per_site = self.rss_per_site(),
            heap = self.heap_bytes,
            heap_per_site = self.heap_per_site(),
            memory_met = self.memory_met(),
            lookups = self.lookups,
            mean = self.lookup_mean_ns,
            p50 = self.lookup_p50_ns,
            p99 = self.lookup_p99_ns,
            overhead = self.timer_overhead_ns,
            flips = self.flips.len(),
            median = self.flip_us(0.5),
            fp99 = self.flip_us(0.99),
            max = self.flip_us(1.0),
            flip_met = self.flip_met(),
        )
    }
}
