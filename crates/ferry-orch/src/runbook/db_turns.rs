//! Database moves take turns per server. The mover allows one move from a
//! source server into a destination at a time: a second replication
//! connection from the same source would share its GTID positions, so it
//! refuses to prepare one (and a catch-up started beside another fails).
//! With lanes, two units whose databases live on the same server would
//! collide; instead a unit takes its servers' turns before its first step
//! and gives them back when it ends (done, rolled back or failed), and a
//! unit that needs a server another unit holds waits for it, with a log
//! line naming both. Units on different servers run side by side as
//! before. Turns live in the process: a resumed run gives them first to the
//! units a stopped run left mid-move ([`DbTurns::try_take`] before the
//! lanes start).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub(super) struct DbTurns {
    servers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Unit -> the turns it holds.
    held: Mutex<HashMap<String, Vec<OwnedMutexGuard<()>>>>,
    /// Server -> the unit holding its turn (for the log line).
    holder: Mutex<HashMap<String, String>>,
}

/// The maps stay whole even if a holder panicked: take them back.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DbTurns {
    fn lock_of(&self, server: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(locked(&self.servers).entry(server.to_string()).or_default())
    }

    fn holds(&self, unit: &str) -> bool {
        locked(&self.held).contains_key(unit)
    }

    fn record(&self, unit: &str, servers: &[String], guards: Vec<OwnedMutexGuard<()>>) {
        let mut holder = locked(&self.holder);
        for s in servers {
            holder.insert(s.clone(), unit.to_string());
        }
        locked(&self.held).insert(unit.to_string(), guards);
    }

    /// Waits until `unit` holds the turn of every server in `servers`
    /// (taken in name order, so two units never wait on each other).
    pub(super) async fn take(&self, unit: &str, servers: &[String]) {
        if servers.is_empty() || self.holds(unit) {
            return;
        }
        let mut sorted = servers.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut guards = Vec::with_capacity(sorted.len());
        for s in &sorted {
            let lock = self.lock_of(s);
            let guard = match Arc::clone(&lock).try_lock_owned() {
                Ok(g) => g,
                Err(_) => {
                    let by = locked(&self.holder).get(s).cloned().unwrap_or_default();
                    tracing::info!(
                        unit,
                        server = %s,
                        held_by = %by,
                        "waiting for the database server's turn (one move from a server at a time)"
                    );
                    lock.lock_owned().await
                }
            };
            guards.push(guard);
        }
        self.record(unit, &sorted, guards);
    }

    /// Takes every turn of `servers` for `unit` if all are free now; false
    /// (nothing taken) otherwise.
    pub(super) fn try_take(&self, unit: &str, servers: &[String]) -> bool {
        if servers.is_empty() || self.holds(unit) {
            return true;
        }
        let mut sorted = servers.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut guards = Vec::with_capacity(sorted.len());
        for s in &sorted {
            match self.lock_of(s).try_lock_owned() {
                Ok(g) => guards.push(g),
                Err(_) => return false,
            }
        }
        self.record(unit, &sorted, guards);
        true
    }

    /// `unit` ended: its turns go to whoever waits.
    pub(super) fn give_back(&self, unit: &str) {
        let Some(guards) = locked(&self.held).remove(unit) else {
            return;
        };
        locked(&self.holder).retain(|_, u| u != unit);
        drop(guards);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn a_unit_waits_for_a_server_another_holds_and_gets_it_when_that_one_ends() {
        let turns = Arc::new(DbTurns::default());
        turns.take("U1", &names(&["sql1"])).await;
        // Another server: no wait.
        turns.take("U3", &names(&["sql2"])).await;
        assert!(!turns.try_take("U4", &names(&["sql2", "sql3"])));
        let t = Arc::clone(&turns);
        let waiter = tokio::spawn(async move { t.take("U2", &names(&["sql1"])).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "U2 must wait while U1 holds sql1");
        // Taking again what one holds does not wait.
        turns.take("U1", &names(&["sql1"])).await;
        turns.give_back("U1");
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("U2 gets the turn once U1 ended")
            .unwrap();
        assert!(turns.holds("U2"));
        turns.give_back("U3");
        assert!(turns.try_take("U4", &names(&["sql2", "sql3"])));
    }
}
