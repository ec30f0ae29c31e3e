//! `[[pool]]`: servers, health checks, path rules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use super::{Cx, Result};
use crate::raw::{RawHealth, RawPool, RawRule, RawServer};
use crate::{HealthSpec, PathRule, PoolSpec, ServerSpec};

const DEFAULT_PASSIVE_FALL: u32 = 3;
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIER: i64 = 15;
const MAX_WEIGHT: i64 = 256;

impl Cx<'_> {
    pub(super) fn pools(&self, raw: Vec<RawPool>) -> Result<Vec<PoolSpec>> {
        // Rules name pools, possibly ones defined further down: collect names first.
        let mut seen: HashMap<&str, Range<usize>> = HashMap::new();
        for p in &raw {
            self.name("pool", &p.name)?;
            if let Some(first) = seen.get(p.name.get_ref().as_str()) {
                return Err(self.error(
                    p.name.span(),
                    format!(
                        "pool {:?} is defined twice (first at line {})",
                        p.name.get_ref(),
                        self.line_of(first)
                    ),
                ));
            }
            seen.insert(p.name.get_ref(), p.name.span());
        }
        let names: Vec<&str> = raw.iter().map(|p| p.name.get_ref().as_str()).collect();
        raw.iter().map(|p| self.pool(p, &names)).collect()
    }

    fn pool(&self, p: &RawPool, pool_names: &[&str]) -> Result<PoolSpec> {
        let name = p.name.get_ref().clone();
        let ctx = format!("pool {name:?}");
        if p.servers.is_empty() {
            return Err(self.error(
                p.name.span(),
                format!("{ctx} has no servers (add a [[pool.server]])"),
            ));
        }
        let mut servers = Vec::with_capacity(p.servers.len());
        let mut names: HashMap<&str, Range<usize>> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, &str> = HashMap::new();
        for s in &p.servers {
            let server = self.server(&ctx, s)?;
            if let Some(first) = names.get(server.name.as_str()) {
                return Err(self.error(
                    s.name.span(),
                    format!(
                        "{ctx}: server {:?} is defined twice (first at line {})",
                        server.name,
                        self.line_of(first)
                    ),
                ));
            }
            if let Some(other) = addrs.get(&server.address) {
                return Err(self.error(
                    s.address.span(),
                    format!(
                        "{ctx}: server {:?} has the same address as server {other:?} ({})",
                        server.name, server.address
                    ),
                ));
            }
            names.insert(s.name.get_ref(), s.name.span());
            addrs.insert(server.address, s.name.get_ref());
            servers.push(server);
        }
        let health = match &p.health {
            Some(h) => Some(self.health(&ctx, h)?),
            None => None,
        };
        Ok(PoolSpec {
            name,
            balance: p.balance,
            health,
            passive_fall: p.passive_fall.unwrap_or(DEFAULT_PASSIVE_FALL),
            servers,
            rules: self.rules(&ctx, &p.rules, pool_names)?,
            scale: match &p.scale {
                Some(s) => Some(self.scale(&ctx, s, p.servers.len())?),
                None => None,
            },
        })
    }

    fn server(&self, ctx: &str, s: &RawServer) -> Result<ServerSpec> {
        let name = self.name(&format!("{ctx}: server"), &s.name)?;
        let ctx = format!("{ctx}: server {name:?}");
        let address = self.socket_addr(&format!("{ctx}: address"), &s.address)?;
        let tier = self.ranged(&format!("{ctx}: tier"), s.tier.as_ref(), 0..=MAX_TIER, 0)?;
        let weight = self.ranged(
            &format!("{ctx}: weight"),
            s.weight.as_ref(),
            1..=MAX_WEIGHT,
            1,
        )?;
        Ok(ServerSpec {
            name,
            address,
            // Both were range-checked just above, so the conversions cannot fail.
            tier: u8::try_from(tier).unwrap_or(u8::MAX),
            weight: u32::try_from(weight).unwrap_or(1),
            state: s.state,
        })
    }

    fn health(&self, ctx: &str, h: &RawHealth) -> Result<HealthSpec> {
        let ctx = format!("{ctx}: health");
        let path = match &h.path {
            None => "/".to_string(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                return Err(self.error(
                    p.span(),
                    format!("{ctx}: path {:?} must start with '/'", p.get_ref()),
                ))
            }
        };
        let expect_status = self.ranged(
            &format!("{ctx}: expect_status"),
            h.expect_status.as_ref(),
            100..=599,
            200,
        )?;
        let rise = self.ranged(&format!("{ctx}: rise"), h.rise.as_ref(), 1..=1000, 2)?;
        let fall = self.ranged(&format!("{ctx}: fall"), h.fall.as_ref(), 1..=1000, 3)?;
        Ok(HealthSpec {
            path,
            // Range-checked above; the fallbacks are unreachable.
            expect_status: u16::try_from(expect_status).unwrap_or(200),
            interval: self.positive_duration(
                &format!("{ctx}: interval"),
                h.interval.as_ref(),
                DEFAULT_HEALTH_INTERVAL,
            )?,
            timeout: self.positive_duration(
                &format!("{ctx}: timeout"),
                h.timeout.as_ref(),
                DEFAULT_HEALTH_TIMEOUT,
            )?,
            rise: u32::try_from(rise).unwrap_or(2),
            fall: u32::try_from(fall).unwrap_or(3),
        })
    }

    pub(super) fn rules(
        &self,
        ctx: &str,
        raw: &[RawRule],
        pool_names: &[&str],
    ) -> Result<Vec<PathRule>> {
        let mut seen: HashMap<&str, Range<usize>> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            let prefix = r.prefix.get_ref();
            if !prefix.starts_with('/') {
                return Err(self.error(
                    r.prefix.span(),
                    format!("{ctx}: rule prefix {prefix:?} must start with '/'"),
                ));
            }
            // Two rules with one prefix would leave the longest-match choice to chance.
            if let Some(first) = seen.get(prefix.as_str()) {
                return Err(self.error(
                    r.prefix.span(),
                    format!(
                        "{ctx}: rule prefix {prefix:?} is given twice (first at line {})",
                        self.line_of(first)
                    ),
                ));
            }
            seen.insert(prefix, r.prefix.span());
            let pool = r.pool.get_ref();
            if !pool_names.contains(&pool.as_str()) {
                return Err(self.error(
                    r.pool.span(),
                    format!("{ctx}: rule {prefix:?} names pool {pool:?}, which is not defined"),
                ));
            }
            out.push(PathRule {
                prefix: prefix.clone(),
                pool: pool.clone(),
            });
        }
        Ok(out)
    }
}
