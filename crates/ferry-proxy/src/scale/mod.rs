//! Scale policies (`[pool.scale]`): servers added to a pool at a traffic
//! peak and removed after.
//!
//! One task per router samples every policy's signal ten times a second
//! (requests in flight on the pool's `ready` servers, divided by their
//! number) and, once a second, hands the mean (or, for `p95_latency`, the
//! 95th percentile of the pool's upstream latency over that second,
//! `latency.rs`) to the pool's [`Decider`]
//! (`decide.rs`, pure: hysteresis between `add_above` and `remove_below`,
//! `hold`, `cooldown`, min/max, back-off after failures). An `add` or
//! `remove` runs as its own task, at most one per pool:
//!
//! - add: the provider's `add_command` (`command.rs`: argv, own process
//!   group, timeout); the new server joins by itself (`ferry agent --join`).
//!   Until it is `ready` (at most `command_timeout` after the command), the
//!   add still counts as in flight: a slow join does not make the policy add
//!   again.
//! - remove (`leave.rs`): the newest server that joined at run time is
//!   drained, its requests in flight reach 0 (bounded by `drain_timeout`),
//!   it is deregistered, then `remove_command` runs with `FERRY_POOL`,
//!   `FERRY_SERVER` and `FERRY_ADDRESS` (retried with back-off).
//!
//! Every decision to act and every result is logged with its numbers,
//! counted in `/metrics` ([`Scaling::render`]) and shown by `GET /v1/pools`
//! ([`Scaling::view`]). The policy is read from the pool set at every
//! tick, so a reload changes it without restarting anything.

mod command;
mod decide;
mod latency;
mod leave;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use ferry_admin_api::pools::{Scale, ScaleAction};
use ferry_config::{ScaleSignal, ScaleSpec};
use ferry_model::ServerState;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::state::Shared;
use decide::{Decider, Decision, Sample};

/// How often the signal is sampled; decisions are taken once a second over
/// the mean of the samples.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const SAMPLES_PER_DECISION: u32 = 10;

/// Every pool's policy state, and the action counters.
#[derive(Default)]
pub(crate) struct Scaling {
    pools: Mutex<HashMap<String, PoolScale>>,
    /// `ferry_scale_actions_total` by (pool, action, result).
    actions: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
}

#[derive(Default)]
struct PoolScale {
    decider: Decider,
    sum: f64,
    samples: u32,
    /// The last second's signal and ready servers.
    signal: f64,
    servers: u32,
    wanted: u32,
    decision: Option<Decision>,
    /// The action in flight, in words (`add`, `remove NAME`).
    in_flight: Option<String>,
    /// After an add command succeeded: the ready servers then, and until
    /// when the new one may take to join. Meanwhile the add still counts
    /// as in flight, so a slow join (an instance booting, files copying)
    /// does not make the policy add again.
    joining: Option<(u32, Instant)>,
    /// Ready servers when the add in flight was decided.
    add_base: u32,
    /// The pool's latency histogram at the last decision (`p95_latency`).
    latency_before: Option<latency::Counts>,
    last: Option<Ended>,
}

impl PoolScale {
    /// An add in flight: its command running, or its server not joined yet.
    fn busy(&mut self, now: Instant, ready: u32) -> bool {
        if let Some((before, until)) = self.joining {
            if ready > before || now >= until {
                if ready <= before {
                    tracing::warn!(servers = ready, "scale: the added server did not join within command_timeout; the policy decides again");
                }
                self.joining = None;
            }
        }
        self.in_flight.is_some() || self.joining.is_some()
    }
}

/// An action that ended.
struct Ended {
    action: &'static str,
    server: Option<String>,
    result: &'static str,
    detail: String,
    at: Instant,
}

/// Starts the scaler; it stops when `shutdown` turns true (an action in
/// flight finishes on its own).
pub(crate) fn spawn(
    shared: Arc<Shared>,
    scaling: Arc<Scaling>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u32 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            scaling.sample(&shared);
            n = n.wrapping_add(1);
            if n.is_multiple_of(SAMPLES_PER_DECISION) {
                scaling.decide(&shared, &scaling, Instant::now());
            }
        }
    })
}

/// Ready servers of a pool and their requests in flight.
fn load_of(pool: &ferry_router::Pool) -> (u32, u64) {
    let ready = pool
        .servers
        .iter()
        .filter(|s| s.state() == ServerState::Ready);
    ready.fold((0, 0), |(n, active), s| {
        (n + 1, active + u64::from(s.active_requests()))
    })
}

impl Scaling {
    /// Adds one sample of every policy's signal; forgets pools that lost
    /// their policy.
    fn sample(&self, shared: &Shared) {
        let set = shared.pools.load();
        let mut pools = self.pools.lock();
        pools.retain(|name, p| {
            p.in_flight.is_some() || set.pools.get(name).is_some_and(|e| e.spec.scale.is_some())
        });
        for (name, entry) in &set.pools {
            if entry.spec.scale.is_none() {
                continue;
            }
            let (ready, active) = load_of(&entry.pool);
            let p = pools.entry(name.clone()).or_default();
            p.sum += active as f64 / f64::from(ready.max(1));
            p.samples += 1;
        }
    }

    /// Takes every pool's decision over the samples since the last one and
    /// starts the actions decided.
    fn decide(&self, shared: &Arc<Shared>, me: &Arc<Scaling>, now: Instant) {
        let set = shared.pools.load();
        let mut pools = self.pools.lock();
        for (name, entry) in &set.pools {
            let Some(policy) = &entry.spec.scale else {
                continue;
            };
            let Some(p) = pools.get_mut(name) else {
                continue;
            };
            let (ready, _) = load_of(&entry.pool);
            let signal = match policy.signal {
                ScaleSignal::InflightPerServer if p.samples == 0 => p.signal,
                ScaleSignal::InflightPerServer => p.sum / f64::from(p.samples),
                ScaleSignal::P95Latency => {
                    let now_counts = entry.histogram.counts();
                    let before = p.latency_before.replace(now_counts.clone());
                    before.map_or(0.0, |b| latency::p95_ms(&b, &now_counts))
                }
            };
            let signal = round3(signal);
            p.sum = 0.0;
            p.samples = 0;
            p.signal = signal;
            p.servers = ready;
            let sample = Sample {
                signal,
                servers: ready,
            };
            let busy = p.busy(now, ready);
            let d = p.decider.decide(policy, now, sample, busy);
            p.decision = Some(d);
            if !busy {
                p.wanted = ready.clamp(policy.min_servers, policy.max_servers);
            }
            match d {
                Decision::Add => {
                    p.wanted = ready + 1;
                    tracing::info!(
                        pool = %name, action = "add", signal, servers = ready, wanted = p.wanted,
                        add_above = policy.add_above.get(), hold_s = policy.hold.as_secs_f64(),
                        min_servers = policy.min_servers, max_servers = policy.max_servers,
                        "scale decision: add a server"
                    );
                    p.in_flight = Some("add".into());
                    p.add_base = ready;
                    tokio::spawn(add(Arc::clone(me), name.clone(), policy.clone(), ready));
                }
                Decision::Remove => {
                    let configured: Vec<&str> =
                        entry.spec.servers.iter().map(|s| s.name.as_str()).collect();
                    // The newest server that joined at run time; configured
                    // servers are the pool's own and never leave.
                    let leaving = entry.pool.servers.iter().rev().find(|s| {
                        s.state() == ServerState::Ready && !configured.contains(&s.name.as_str())
                    });
                    let Some(server) = leaving else {
                        tracing::debug!(pool = %name, signal, servers = ready, "scale: below remove_below, but no server joined at run time to remove");
                        continue;
                    };
                    p.wanted = ready.saturating_sub(1);
                    tracing::info!(
                        pool = %name, action = "remove", server = %server.name, address = %server.address,
                        signal, servers = ready, wanted = p.wanted,
                        remove_below = policy.remove_below.get(), hold_s = policy.hold.as_secs_f64(),
                        min_servers = policy.min_servers, max_servers = policy.max_servers,
                        "scale decision: remove a server"
                    );
                    p.in_flight = Some(format!("remove {}", server.name));
                    tokio::spawn(leave::leave(
                        Arc::clone(shared),
                        Arc::clone(me),
                        name.clone(),
                        policy.clone(),
                        Arc::clone(server),
                    ));
                }
                Decision::Hold(_) => {}
            }
        }
    }

    /// Records the end of a pool's action: counted, logged by the caller,
    /// and the decider told (cooldown, or back-off after a failure).
    fn ended(
        &self,
        pool: &str,
        policy: &ScaleSpec,
        action: &'static str,
        server: Option<String>,
        result: &'static str,
        detail: String,
    ) -> Duration {
        *self
            .actions
            .lock()
            .entry((pool.to_string(), action, result))
            .or_default() += 1;
        let now = Instant::now();
        let mut pools = self.pools.lock();
        let p = pools.entry(pool.to_string()).or_default();
        p.in_flight = None;
        if action == "add" && result == "ok" {
            p.joining = Some((p.add_base, now + policy.command_timeout));
        }
        let quiet = p.decider.finished(policy, now, result == "ok");
        p.last = Some(Ended {
            action,
            server,
            result,
            detail,
            at: now,
        });
        quiet
    }

    /// A pool's policy state for `GET /v1/pools`.
    pub fn view(&self, pool: &str, policy: &ScaleSpec) -> Scale {
        let pools = self.pools.lock();
        let p = pools.get(pool);
        Scale {
            signal: policy.signal.as_str().to_string(),
            value: p.map_or(0.0, |p| round3(p.signal)),
            add_above: policy.add_above.get(),
            remove_below: policy.remove_below.get(),
            servers: p.map_or(0, |p| p.servers),
            wanted: p.map_or(0, |p| p.wanted),
            min_servers: policy.min_servers,
            max_servers: policy.max_servers,
            decision: p
                .and_then(|p| p.decision)
                .map_or("starting", Decision::as_str)
                .to_string(),
            in_flight: p.and_then(|p| match (&p.in_flight, p.joining) {
                (Some(a), _) => Some(a.clone()),
                (None, Some(_)) => Some("add (waiting for the server to join)".to_string()),
                (None, None) => None,
            }),
            failures: p.map_or(0, |p| p.decider.failures()),
            last_action: p.and_then(|p| p.last.as_ref()).map(|e| ScaleAction {
                action: e.action.to_string(),
                server: e.server.clone(),
                result: e.result.to_string(),
                detail: e.detail.clone(),
                ended_secs_ago: e.at.elapsed().as_secs(),
            }),
        }
    }

    /// The scale metrics in the Prometheus text format. Pool names come
    /// from the config (plain names), so they are safe label values.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP ferry_scale_actions_total Scale actions ended, by pool, action (add, remove) and result.\n# TYPE ferry_scale_actions_total counter");
        for ((pool, action, result), n) in self.actions.lock().iter() {
            let _ = writeln!(
                out,
                "ferry_scale_actions_total{{pool=\"{pool}\",action=\"{action}\",result=\"{result}\"}} {n}"
            );
        }
        let pools = self.pools.lock();
        let mut names: Vec<&String> = pools.keys().collect();
        names.sort();
        let _ = writeln!(out, "# HELP ferry_scale_signal The scale policy's signal over the last second (inflight_per_server: requests in flight per ready server; p95_latency: milliseconds).\n# TYPE ferry_scale_signal gauge");
        for n in &names {
            let _ = writeln!(
                out,
                "ferry_scale_signal{{pool=\"{n}\"}} {}",
                round3(pools[*n].signal)
            );
        }
        let _ = writeln!(out, "# HELP ferry_scale_servers Servers taking traffic (ready) in a pool with a scale policy.\n# TYPE ferry_scale_servers gauge");
        for n in &names {
            let _ = writeln!(
                out,
                "ferry_scale_servers{{pool=\"{n}\"}} {}",
                pools[*n].servers
            );
        }
        let _ = writeln!(out, "# HELP ferry_scale_servers_wanted Servers the scale policy wants in the pool.\n# TYPE ferry_scale_servers_wanted gauge");
        for n in &names {
            let _ = writeln!(
                out,
                "ferry_scale_servers_wanted{{pool=\"{n}\"}} {}",
                pools[*n].wanted
            );
        }
        let _ = writeln!(out, "# HELP ferry_scale_actions_in_flight Scale actions running (0 or 1 per pool).\n# TYPE ferry_scale_actions_in_flight gauge");
        for n in &names {
            let _ = writeln!(
                out,
                "ferry_scale_actions_in_flight{{pool=\"{n}\"}} {}",
                u8::from(pools[*n].in_flight.is_some() || pools[*n].joining.is_some())
            );
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs the add command once; the decider backs off if it fails.
async fn add(scaling: Arc<Scaling>, pool: String, policy: ScaleSpec, servers: u32) {
    let env = [
        ("FERRY_POOL", pool.clone()),
        ("FERRY_SERVERS", servers.to_string()),
        ("FERRY_WANTED", (servers + 1).to_string()),
    ];
    let run = command::run(&policy.add_command, &env, policy.command_timeout).await;
    let result = run.outcome.label();
    let detail = run.outcome.to_string();
    let quiet = scaling.ended(&pool, &policy, "add", None, result, detail.clone());
    if run.outcome.is_ok() {
        tracing::info!(
            %pool, action = "add", result, took_ms = run.took.as_millis() as u64,
            cooldown_s = quiet.as_secs_f64(), stdout = %run.stdout, stderr = %run.stderr,
            "scale action ended"
        );
    } else {
        tracing::warn!(
            %pool, action = "add", result, %detail, took_ms = run.took.as_millis() as u64,
            back_off_s = quiet.as_secs_f64(), stdout = %run.stdout, stderr = %run.stderr,
            "scale action failed"
        );
    }
}
