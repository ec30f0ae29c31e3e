//! Pools of servers in priority tiers, and the choice of a server for a request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use ferry_model::ServerState;

/// How a server is chosen inside the best tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
}

/// A server's configured identity and its live state.
#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub address: SocketAddr,
    pub tier: u8,
    pub weight: u32,
    admin: AtomicU8,
    healthy: AtomicBool,
    /// Consecutive successful / failed active checks, for rise and fall.
    check_ok_run: AtomicU32,
    check_fail_run: AtomicU32,
    /// Consecutive connection failures seen by real traffic (passive check).
    conn_fail_run: AtomicU32,
    active: AtomicU32,
    served: AtomicU64,
}

impl Server {
    pub fn new(
        name: String,
        address: SocketAddr,
        tier: u8,
        weight: u32,
        state: ServerState,
    ) -> Server {
        Server {
            name,
            address,
            tier,
            weight: weight.max(1),
            admin: AtomicU8::new(encode_state(state)),
            healthy: AtomicBool::new(true),
            check_ok_run: AtomicU32::new(0),
            check_fail_run: AtomicU32::new(0),
            conn_fail_run: AtomicU32::new(0),
            active: AtomicU32::new(0),
            served: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> ServerState {
        decode_state(self.admin.load(Ordering::Acquire))
    }

    pub fn set_state(&self, s: ServerState) {
        self.admin.store(encode_state(s), Ordering::Release);
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Ready and healthy: may take a new request.
    pub fn is_eligible(&self) -> bool {
        self.state() == ServerState::Ready && self.is_healthy()
    }

    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Records an active health check result. Returns `Some(new_health)` when the
    /// server changes health: up after `rise` successes, down after `fall` failures.
    pub fn record_check(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.check_fail_run.store(0, Ordering::Release);
            let run = self.check_ok_run.fetch_add(1, Ordering::AcqRel) + 1;
            if !self.is_healthy() && run >= rise {
                self.conn_fail_run.store(0, Ordering::Release);
                self.healthy.store(true, Ordering::Release);
                return Some(true);
            }
        } else {
            self.check_ok_run.store(0, Ordering::Release);
            let run = self.check_fail_run.fetch_add(1, Ordering::AcqRel) + 1;
            if self.is_healthy() && run >= fall {
                self.healthy.store(false, Ordering::Release);
                return Some(false);
            }
        }
        None
    }

    /// Records the outcome of connecting to the server for real traffic.
    /// `fall` consecutive failures mark it down (0 disables the passive check).
    /// Returns `Some(false)` when this call marked it down.
    pub fn record_connect(&self, ok: bool, fall: u32) -> Option<bool> {
        if ok {
            self.conn_fail_run.store(0, Ordering::Release);
            return None;
        }
        let run = self.conn_fail_run.fetch_add(1, Ordering::AcqRel) + 1;
        if fall > 0 && run >= fall && self.is_healthy() {
            self.healthy.store(false, Ordering::Release);
            self.check_ok_run.store(0, Ordering::Release);
            return Some(false);
        }
        None
    }

    /// Forces health (used when carrying state across a reload, and in tests).
    pub fn set_healthy(&self, h: bool) {
        self.healthy.store(h, Ordering::Release);
    }
}

fn encode_state(s: ServerState) -> u8 {
    match s {
        ServerState::Ready => 0,
        ServerState::Drain => 1,
        ServerState::Maint => 2,
    }
}

fn decode_state(v: u8) -> ServerState {
    match v {
        0 => ServerState::Ready,
        1 => ServerState::Drain,
        _ => ServerState::Maint,
    }
}

/// A named pool: servers sorted by tier, plus the pool's path rules.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub balance: Balance,
    pub servers: Vec<Arc<Server>>,
    /// (prefix, pool name); longest prefix wins.
    pub rules: Vec<(String, String)>,
    cursor: AtomicU64,
}

/// A server picked for one request; counts it as active until dropped.
#[derive(Debug)]
pub struct Pick {
    pub server: Arc<Server>,
    pub index: usize,
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.server.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    pub fn new(
        name: String,
        balance: Balance,
        mut servers: Vec<Arc<Server>>,
        rules: Vec<(String, String)>,
    ) -> Pool {
        servers.sort_by_key(|s| s.tier);
        Pool {
            name,
            balance,
            servers,
            rules,
            cursor: AtomicU64::new(0),
        }
    }

    pub fn server(&self, name: &str) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The best tier that has an eligible server, if any.
    pub fn serving_tier(&self) -> Option<u8> {
        self.servers
            .iter()
            .find(|s| s.is_eligible())
            .map(|s| s.tier)
    }

    /// Chooses a server from the best tier with an eligible one, skipping the
    /// servers in `exclude` (already tried for this request).
    pub fn pick(&self, exclude: &[usize]) -> Option<Pick> {
        let eligible = |i: usize, s: &Server| s.is_eligible() && !exclude.contains(&i);
        let tier = self
            .servers
            .iter()
            .enumerate()
            .find(|(i, s)| eligible(*i, s))
            .map(|(_, s)| s.tier)?;
        let candidates = self
            .servers
            .iter()
            .enumerate()
            .filter(|(i, s)| s.tier == tier && eligible(*i, s));
        let index = match self.balance {
            Balance::RoundRobin => {
                let total: u64 = candidates.clone().map(|(_, s)| u64::from(s.weight)).sum();
                let mut n = self.cursor.fetch_add(1, Ordering::Relaxed) % total.max(1);
                let mut chosen = None;
                for (i, s) in candidates {
                    let w = u64::from(s.weight);
                    if n < w {
                        chosen = Some(i);
                        break;
                    }
                    n -= w;
                }
                chosen?
            }
            Balance::LeastConn => {
                candidates
                    .min_by_key(|(_, s)| {
                        // Compare active/weight without floats: scale by a common factor.
                        u64::from(s.active_requests()) * 65_536 / u64::from(s.weight)
                    })?
                    .0
            }
        };
        let server = Arc::clone(&self.servers[index]);
        server.active.fetch_add(1, Ordering::AcqRel);
        server.served.fetch_add(1, Ordering::Relaxed);
        Some(Pick { server, index })
    }
}

/// Longest matching prefix among `rules`, returning the target pool name.
/// A prefix matches at a path-segment boundary: `/admin` matches `/admin` and
/// `/admin/x` but not `/administrator`, unless the prefix itself ends in `/`.
pub fn match_rule<'a>(rules: &'a [(String, String)], path: &str) -> Option<&'a str> {
    rules
        .iter()
        .filter(|(prefix, _)| {
            path.starts_with(prefix.as_str())
                && (prefix.ends_with('/')
                    || path.len() == prefix.len()
                    || matches!(path.as_bytes()[prefix.len()], b'/' | b'?'))
        })
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, pool)| pool.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, port: u16, tier: u8, weight: u32) -> Arc<Server> {
        Arc::new(Server::new(
            name.into(),
            SocketAddr::from(([127, 0, 0, 1], port)),
            tier,
            weight,
            ServerState::Ready,
        ))
    }

    #[test]
    fn best_tier_serves_and_lower_only_on_failure() {
        let pool = Pool::new(
            "web".into(),
            Balance::RoundRobin,
            vec![
                server("remote", 3, 2, 1),
                server("local", 1, 0, 1),
                server("dc", 2, 1, 1),
            ],
            vec![],
        );
        for _ in 0..10 {
            assert_eq!(pool.pick(&[]).unwrap().server.name, "local");
        }
        pool.server("local").unwrap().set_healthy(false);
        assert_eq!(pool.pick(&[]).unwrap().server.name, "dc");
        pool.server("dc").unwrap().set_state(ServerState::Drain);
        assert_eq!(pool.pick(&[]).unwrap().server.name, "remote");
        pool.server("remote").unwrap().set_state(ServerState::Maint);
        assert!(pool.pick(&[]).is_none());
        pool.server("local").unwrap().set_healthy(true);
        assert_eq!(pool.serving_tier(), Some(0));
    }

    #[test]
    fn weighted_round_robin_and_exclusion() {
        let pool = Pool::new(
            "web".into(),
            Balance::RoundRobin,
            vec![server("a", 1, 0, 3), server("b", 2, 0, 1)],
            vec![],
        );
        let mut a = 0;
        for _ in 0..400 {
            if pool.pick(&[]).unwrap().server.name == "a" {
                a += 1;
            }
        }
        assert_eq!(a, 300);
        let first = pool.pick(&[]).unwrap();
        let other = pool.pick(&[first.index]).unwrap();
        assert_ne!(first.index, other.index);
        assert!(pool.pick(&[0, 1]).is_none());
    }

    #[test]
    fn least_conn_prefers_idle() {
        let pool = Pool::new(
            "web".into(),
            Balance::LeastConn,
            vec![server("a", 1, 0, 1), server("b", 2, 0, 1)],
            vec![],
        );
        let p1 = pool.pick(&[]).unwrap();
        let p2 = pool.pick(&[]).unwrap();
        assert_ne!(p1.server.name, p2.server.name);
        drop(p1);
        assert_eq!(pool.pick(&[]).unwrap().server.name, pool.servers[0].name);
    }

    #[test]
    fn rise_and_fall() {
        let s = server("a", 1, 0, 1);
        assert_eq!(s.record_check(false, 2, 3), None);
        assert_eq!(s.record_check(false, 2, 3), None);
        assert_eq!(s.record_check(false, 2, 3), Some(false));
        assert_eq!(s.record_check(true, 2, 3), None);
        assert_eq!(s.record_check(true, 2, 3), Some(true));
        assert_eq!(s.record_connect(false, 2), None);
        assert_eq!(s.record_connect(false, 2), Some(false));
        assert!(!s.is_eligible());
    }

    #[test]
    fn rules_match_longest_prefix_at_boundaries() {
        let rules = vec![
            ("/admin".to_string(), "bo".to_string()),
            ("/static/".to_string(), "static".to_string()),
            ("/admin/api".to_string(), "api".to_string()),
        ];
        assert_eq!(match_rule(&rules, "/admin"), Some("bo"));
        assert_eq!(match_rule(&rules, "/admin/x"), Some("bo"));
        assert_eq!(match_rule(&rules, "/admin?x=1"), Some("bo"));
        assert_eq!(match_rule(&rules, "/administrator"), None);
        assert_eq!(match_rule(&rules, "/admin/api/v1"), Some("api"));
        assert_eq!(match_rule(&rules, "/static/a.css"), Some("static"));
        assert_eq!(match_rule(&rules, "/"), None);
    }
}
