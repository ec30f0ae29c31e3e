//! A tunnel in front of a Galera cluster: which node new connections go to.
//!
//! Every `interval` each node (the tunnel's upstream first, then the
//! configured fallbacks) is asked for its `wsrep_%` state with
//! [`galera::galera_state`]; the first node [`galera::usable`] calls
//! usable (Synced, in the primary component, ready; a donor only with
//! `allow_donor`) takes the new connections. One node at a time rather
//! than round robin: writes from several nodes at once meet certification
//! conflicts, which is why HAProxy setups for Galera use one active server
//! and backups. Open connections stay where they are (as with a re-point):
//! a node leaving Synced usually still finishes what it was doing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
// The URL's user and password are percent-encoded like the admin API's
// path segments (everything but RFC 3986's unreserved characters).
use ferry_admin_api::routes::encode;
use ferry_admin_api::tunnels::{Galera, GaleraNode};
use ferry_config::GaleraCheck;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::galera;

/// The last check of one node.
#[derive(Debug, Clone)]
pub(crate) struct NodeHealth {
    pub addr: String,
    pub usable: bool,
    /// `wsrep_local_state_comment`, or why the check failed.
    pub state: String,
    pub checked: Instant,
}

/// The check's results for one tunnel, read by every new connection.
pub(crate) struct GaleraPool {
    /// Where new connections go; `None` when no node is usable.
    chosen: ArcSwapOption<String>,
    nodes: Mutex<Vec<NodeHealth>>,
    /// Becomes true after the first round, so connections arriving at start
    /// wait for a verdict instead of going to an unchecked node.
    checked: watch::Sender<bool>,
    /// Rounds completed, and changes of the chosen node (for metrics).
    pub rounds: std::sync::atomic::AtomicU64,
    pub switches: std::sync::atomic::AtomicU64,
}

impl GaleraPool {
    pub fn new() -> Arc<GaleraPool> {
        Arc::new(GaleraPool {
            chosen: ArcSwapOption::empty(),
            nodes: Mutex::new(Vec::new()),
            checked: watch::channel(false).0,
            rounds: Default::default(),
            switches: Default::default(),
        })
    }

    /// The node for a new connection, after the first round (waited for at
    /// most `wait`); `None` when no node is usable.
    pub async fn pick(&self, wait: Duration) -> Option<Arc<String>> {
        let mut rx = self.checked.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|done| *done)).await;
        self.chosen.load_full()
    }

    /// The check as the admin API shows it (a tunnel's `galera`).
    pub fn view(&self) -> Galera {
        Galera {
            chosen: self.chosen.load().as_deref().cloned(),
            nodes: self
                .nodes
                .lock()
                .iter()
                .map(|n| GaleraNode {
                    addr: n.addr.clone(),
                    usable: n.usable,
                    state: n.state.clone(),
                    checked_ms_ago: n.checked.elapsed().as_millis() as u64,
                })
                .collect(),
        }
    }

    pub fn node_states(&self) -> Vec<NodeHealth> {
        self.nodes.lock().clone()
    }

    /// One round over `order` (preferred first): checks every node (so the
    /// API shows them all), then chooses the first usable one.
    async fn round(&self, order: &[String], check: &GaleraCheck, timeout: Duration) {
        let mut results = Vec::with_capacity(order.len());
        for addr in order {
            let url = format!(
                "mysql://{}:{}@{addr}/",
                encode(&check.user),
                encode(&check.password)
            );
            let checked = Instant::now();
            let health = match tokio::time::timeout(timeout, galera::galera_state(&url)).await {
                Ok(Ok(node)) => NodeHealth {
                    addr: addr.clone(),
                    usable: galera::usable(&node, check.allow_donor),
                    state: format!(
                        "{} ({}, {})",
                        node.state_comment, node.cluster_status, node.cluster_size
                    ),
                    checked,
                },
                Ok(Err(e)) => NodeHealth {
                    addr: addr.clone(),
                    usable: false,
                    state: e.to_string(),
                    checked,
                },
                Err(_) => NodeHealth {
                    addr: addr.clone(),
                    usable: false,
                    state: format!("no answer within {timeout:?}"),
                    checked,
                },
            };
            results.push(health);
        }
        let next = results.iter().find(|n| n.usable).map(|n| n.addr.clone());
        let before = self.chosen.load_full();
        if before.as_deref() != next.as_ref() {
            self.switches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                from = before.as_deref().map(String::as_str).unwrap_or("none"),
                to = next.as_deref().unwrap_or("none"),
                "galera: new connections change node"
            );
        }
        self.chosen.store(next.map(Arc::new));
        *self.nodes.lock() = results;
        self.rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.checked.send_replace(true);
    }

    /// Checks every `interval` until `stop` or `shutdown`; `order` is read
    /// each round (the tunnel's upstream may be re-pointed).
    pub fn spawn(
        self: &Arc<Self>,
        order: impl Fn() -> Option<(Vec<String>, GaleraCheck, Duration)> + Send + 'static,
        mut stop: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                // The tunnel lost its [tunnels.galera] in a reload.
                let Some((nodes, check, timeout)) = order() else {
                    return;
                };
                let interval = check.interval;
                tokio::select! {
                    _ = pool.round(&nodes, &check, timeout) => {}
                    _ = stop.changed() => return,
                    _ = shutdown.changed() => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => return,
                    _ = shutdown.changed() => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer keeps the fields and values routers have always sent.
    #[test]
    fn the_admin_view_keeps_its_wire_shape() {
        let pool = GaleraPool::new();
        assert_eq!(
            serde_json::to_value(pool.view()).unwrap(),
            serde_json::json!({"chosen": null, "nodes": []})
        );
        let checked = Instant::now() - Duration::from_secs(5);
        *pool.nodes.lock() = vec![
            NodeHealth {
                addr: "a:1".into(),
                usable: false,
                state: "Donor/Desynced (Primary, 3)".into(),
                checked,
            },
            NodeHealth {
                addr: "b:1".into(),
                usable: true,
                state: "Synced (Primary, 3)".into(),
                checked,
            },
        ];
        pool.chosen.store(Some(Arc::new("b:1".into())));
        let mut view = serde_json::to_value(pool.view()).unwrap();
        for node in view["nodes"].as_array_mut().unwrap() {
            let ago = node["checked_ms_ago"].take().as_u64().unwrap();
            assert!((5_000..60_000).contains(&ago), "{ago}");
        }
        assert_eq!(
            view,
            serde_json::json!({"chosen": "b:1", "nodes": [
                {"addr": "a:1", "usable": false, "state": "Donor/Desynced (Primary, 3)", "checked_ms_ago": null},
                {"addr": "b:1", "usable": true, "state": "Synced (Primary, 3)", "checked_ms_ago": null},
            ]})
        );
    }

    #[test]
    fn credentials_are_url_safe() {
        assert_eq!(encode("mon"), "mon");
        assert_eq!(encode("p@ss:w/rd%"), "p%40ss%3Aw%2Frd%25");
    }
}
