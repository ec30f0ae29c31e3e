//! `[pool.scale]`: a pool's scale policy (signal, thresholds, timings,
//! bounds and the provider's commands).

use std::time::Duration;

use super::{Cx, Result};
use crate::raw::{RawScale, S};
use crate::{ScaleSignal, ScaleSpec, SignalLevel};

const DEFAULT_HOLD: Duration = Duration::from_secs(30);
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(120);
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// A pool of more servers than this is not one a policy should grow to.
const MAX_SERVERS: i64 = 1000;
/// Signal levels are kept in thousandths; above this they are not a load.
const MAX_LEVEL: f64 = 1_000_000.0;

impl Cx<'_> {
    pub(super) fn scale(&self, ctx: &str, s: &RawScale, configured: usize) -> Result<ScaleSpec> {
        let ctx = format!("{ctx}: scale");
        let signal = match &s.signal {
            None => ScaleSignal::default(),
            Some(v) => match v.get_ref().as_str() {
                "inflight_per_server" => ScaleSignal::InflightPerServer,
                "p95_latency" => ScaleSignal::P95Latency,
                "cpu" => {
                    return Err(self.error(
                        v.span(),
                        format!(
                            "{ctx}: signal {:?} is not built yet (use \"inflight_per_server\" or \"p95_latency\")",
                            v.get_ref()
                        ),
                    ))
                }
                other => {
                    return Err(self.error(
                        v.span(),
                        format!("{ctx}: signal {other:?} is unknown (use \"inflight_per_server\" or \"p95_latency\")"),
                    ))
                }
            },
        };
        let add_above = self.level(&format!("{ctx}: add_above"), &s.add_above)?;
        let remove_below = self.level(&format!("{ctx}: remove_below"), &s.remove_below)?;
        // Equal thresholds would add and remove on the same load: the gap is
        // what keeps the pool from flapping.
        if remove_below >= add_above {
            return Err(self.error(
                s.remove_below.span(),
                format!(
                    "{ctx}: remove_below ({}) must be below add_above ({})",
                    s.remove_below.get_ref(),
                    s.add_above.get_ref()
                ),
            ));
        }
        // Default: the configured servers, which the policy never removes.
        let default_min = i64::try_from(configured).unwrap_or(1).clamp(1, MAX_SERVERS);
        let min = self.ranged(
            &format!("{ctx}: min_servers"),
            s.min_servers.as_ref(),
            1..=MAX_SERVERS,
            default_min,
        )?;
        let max = self.ranged(
            &format!("{ctx}: max_servers"),
            Some(&s.max_servers),
            1..=MAX_SERVERS,
            1,
        )?;
        if max < min {
            return Err(self.error(
                s.max_servers.span(),
                format!("{ctx}: max_servers ({max}) is below min_servers ({min})"),
            ));
        }
        Ok(ScaleSpec {
            signal,
            add_above,
            remove_below,
            hold: self.duration(&format!("{ctx}: hold"), s.hold.as_ref(), DEFAULT_HOLD)?,
            cooldown: self.duration(
                &format!("{ctx}: cooldown"),
                s.cooldown.as_ref(),
                DEFAULT_COOLDOWN,
            )?,
            // Both range-checked to 1..=1000 above.
            min_servers: u32::try_from(min).unwrap_or(1),
            max_servers: u32::try_from(max).unwrap_or(1),
            add_command: self.command(&format!("{ctx}: add_command"), &s.add_command)?,
            remove_command: self.command(&format!("{ctx}: remove_command"), &s.remove_command)?,
            command_timeout: self.positive_duration(
                &format!("{ctx}: command_timeout"),
                s.command_timeout.as_ref(),
                DEFAULT_COMMAND_TIMEOUT,
            )?,
            drain_timeout: self.duration(
                &format!("{ctx}: drain_timeout"),
                s.drain_timeout.as_ref(),
                DEFAULT_DRAIN_TIMEOUT,
            )?,
        })
    }

    fn level(&self, what: &str, v: &S<f64>) -> Result<SignalLevel> {
        let x = *v.get_ref();
        if !(0.0..=MAX_LEVEL).contains(&x) {
            return Err(self.error(
                v.span(),
                format!("{what} {x} is out of range 0..={MAX_LEVEL}"),
            ));
        }
        // In range above, so the product fits a u64.
        Ok(SignalLevel((x * 1000.0).round() as u64))
    }

    /// An argument vector: a program (not empty) and its arguments, run
    /// without a shell.
    fn command(&self, what: &str, v: &S<Vec<String>>) -> Result<Vec<String>> {
        match v.get_ref().first() {
            None => Err(self.error(
                v.span(),
                format!("{what} is empty (write the program and its arguments, e.g. [\"/usr/local/bin/add-front\", \"--pool\", \"web\"])"),
            )),
            Some(p) if p.is_empty() => Err(self.error(v.span(), format!("{what}: the program is an empty string"))),
            Some(_) => Ok(v.get_ref().clone()),
        }
    }
}
