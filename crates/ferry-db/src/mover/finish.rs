//! The end of a move: the switch to the destination, or the rollback before it.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::endpoint::ident;
use crate::error::{Result, Side, SqlContext};
use crate::state::Phase;
use crate::{accounts, replica};

use super::{Mover, SwitchReport};

impl Mover {
    /// Makes the destination the databases' home: checks it has applied the
    /// freeze position, removes the replication connection, and creates the
    /// accounts with their password hashes and grants (so sites keep their
    /// credentials). The source stays locked.
    pub async fn switch(&mut self) -> Result<SwitchReport> {
        self.need("switch", &[Phase::Frozen, Phase::Switched])?;
        if self.state.phase == Phase::Frozen {
            let gone = !replica::exists(&mut self.dst, &self.cfg.connection).await?;
            if !(gone && self.state.switch_checked) {
                let pos = self.state.frozen_at.clone().unwrap_or_default();
                // Zero timeout: a check, not a wait; a switch never outruns the data.
                replica::wait(&mut self.dst, &self.cfg.connection, &pos, Duration::ZERO).await?;
                // Where the destination's own binary log stands before any
                // site writes there: a move back replays from here.
                self.state.dest_at_switch =
                    Some(replica::binlog_position(&mut self.dst, Side::Destination).await?);
                self.state.switch_checked = true;
                self.save()?;
            }
            replica::remove(&mut self.dst, &self.cfg.connection).await?;
        }
        let users = accounts::users_of(&mut self.src, Side::Source, &self.cfg.databases).await?;
        // Roles first: the accounts' grants name them.
        let roles = accounts::roles_of(&mut self.src, Side::Source, &users).await?;
        accounts::copy_roles(&mut self.src, &mut self.dst, &roles).await?;
        for a in &users {
            let unlock = self.state.locked.contains(a);
            let statements = accounts::recreate_statements(&mut self.src, a, unlock).await?;
            let exists = accounts::show_create(&mut self.dst, Side::Destination, a)
                .await?
                .is_some();
            for (i, s) in statements.iter().enumerate() {
                if i == 0 && exists {
                    continue;
                }
                self.dst
                    .query_drop(s)
                    .await
                    .ctx(Side::Destination, || format!("recreating account {a}"))?;
            }
        }
        // Scheduled events run where the data lives: on at the new home,
        // off at the old one (they were created disabled at the copy, so
        // they never ran twice against replicated rows).
        for e in self.state.events.clone() {
            let name = format!("{}.{}", ident(&e.db), ident(&e.name));
            for (conn, side, what) in [
                (&mut self.src, Side::Source, "DISABLE"),
                (&mut self.dst, Side::Destination, "ENABLE"),
            ] {
                let sql = format!("ALTER EVENT {name} {what}");
                conn.query_drop(&sql).await.ctx(side, || sql.clone())?;
            }
        }
        // A move back: the accounts the forward move locked here are the
        // sites' own again.
        for a in self.state.unlock_at_switch.clone() {
            accounts::set_locked(&mut self.dst, &a, false).await?;
        }
        self.state.phase = Phase::Switched;
        self.save()?;
        Ok(SwitchReport { accounts: users })
    }

    /// Undoes the move before the switch: removes the replication
    /// connection, drops the databases this move created at the
    /// destination, unlocks the accounts this move locked at the source.
    /// The source's data was never written: it is as it was, and writable.
    pub async fn rollback(&mut self) -> Result<()> {
        self.need(
            "rollback",
            &[
                Phase::Prepared,
                Phase::Copying,
                Phase::Copied,
                Phase::CatchingUp,
                Phase::Frozen,
                Phase::RolledBack,
            ],
        )?;
        replica::remove(&mut self.dst, &self.cfg.connection).await?;
        for db in self.state.created.clone() {
            self.dst
                .query_drop(format!("DROP DATABASE IF EXISTS {}", ident(&db)))
                .await
                .ctx(Side::Destination, || format!("dropping {db}"))?;
        }
        self.state.created.clear();
        self.save()?;
        for a in self.state.locked.clone() {
            accounts::set_locked(&mut self.src, &a, false).await?;
        }
        self.state.locked.clear();
        self.state.phase = Phase::RolledBack;
        self.save()
    }
}
