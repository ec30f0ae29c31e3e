//! The freeze (accounts locked at the source), the wait for its position,
//! the checksums, and the unfreeze of an abandoned attempt.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::checksum::{Scope, VerifyReport};
use crate::endpoint::Session;
use crate::error::{Error, Result, Side, SqlContext};
use crate::gtid::GtidPos;
use crate::state::Phase;
use crate::{accounts, binlog, checksum, copy, replica};

use super::{FreezeReport, Mover};

/// Changed rows of one table the freeze re-checks by key; past this, the
/// whole table by chunk (as fast, and fewer statements).
const KEY_LIMIT: usize = 100_000;

impl Mover {
    /// Blocks writes to the databases at the source, then (only then) reads
    /// the source position. The block: every account with privileges on the
    /// databases is locked (`ALTER USER .. ACCOUNT LOCK`: new logins are
    /// refused) and its sessions are killed, and we wait until they are
    /// gone. Locking rather than revoking: grants stay exactly as they were
    /// (rollback is one `ACCOUNT UNLOCK`, nothing to reconstruct), the lock
    /// is stored in the grant tables so it survives a crash of the mover or
    /// a restart of the server (a freeze that fails closed), and it answers
    /// clients with a clear "account is locked". A global read lock would
    /// also stop every other database on the server, and hold only as long
    /// as our connection.
    pub async fn freeze(&mut self) -> Result<FreezeReport> {
        self.need("freeze", &[Phase::CatchingUp, Phase::Frozen])?;
        let users = accounts::users_of(&mut self.src, Side::Source, &self.cfg.databases).await?;
        let mut locked_now = Vec::new();
        for a in &users {
            if self.state.locked.contains(a) {
                continue;
            }
            let create = accounts::show_create(&mut self.src, Side::Source, a).await?;
            if create.as_deref().is_none_or(accounts::is_locked) {
                // Locked before us (or gone): not ours to unlock later.
                continue;
            }
            // Recorded before the lock: a crash in between leaves an
            // account rollback unlocks, never one it forgets.
            self.state.locked.push(a.clone());
            self.save()?;
            accounts::set_locked(&mut self.src, a, true).await?;
            locked_now.push(a.clone());
        }
        let sessions_ended =
            accounts::end_sessions(&mut self.src, &users, self.cfg.kill_wait).await?;
        let position = replica::source_position(&mut self.src).await?;
        let not_blocked = accounts::global_writers(&mut self.src, Side::Source).await?;
        self.state.frozen_at = Some(position.clone());
        self.state.phase = Phase::Frozen;
        self.save()?;
        Ok(FreezeReport {
            position,
            locked: locked_now,
            sessions_ended,
            not_blocked,
        })
    }

    /// Waits until the destination has applied `position` (MASTER_GTID_WAIT);
    /// [`Error::WaitTimeout`] after `timeout`, [`Error::Replication`] if the
    /// catch-up stopped on an error.
    pub async fn wait_applied(&mut self, position: &GtidPos, timeout: Duration) -> Result<()> {
        self.need("wait", &[Phase::CatchingUp, Phase::Frozen])?;
        replica::wait(&mut self.dst, &self.cfg.connection, position, timeout).await?;
        self.state.applied = Some(position.clone());
        self.save()
    }

    /// The full check without a freeze, VDiff-style: the destination's
    /// applier is held, a snapshot is taken on the source (with its binary
    /// log position), the applier runs up to exactly that position and
    /// stops, snapshots are taken on the destination, and the applier runs
    /// again; then every chunk is compared between the two sets of
    /// snapshots while both servers go on. Equal: the position is recorded
    /// and [`Mover::verify_frozen`] needs only re-check the rows changed
    /// after it. `wait` bounds the destination's run up to the position.
    pub async fn verify_online(&mut self, wait: Duration) -> Result<VerifyReport> {
        self.need("online verify", &[Phase::CatchingUp])?;
        let workers = self.cfg.workers.max(1);
        let name = self.cfg.connection.clone();
        replica::stop_applier(&mut self.dst, &name).await?;
        let held = async {
            let snap = copy::snapshot(&self.cfg.source, workers, self.cfg.lock_wait).await?;
            replica::apply_until(&mut self.dst, &name, &snap.position, wait).await?;
            let mut dest = Vec::with_capacity(workers + 1);
            for _ in 0..=workers {
                let mut c = self.cfg.dest.connect(Session::Data).await?;
                for sql in [
                    "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                    "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                ] {
                    c.query_drop(sql)
                        .await
                        .ctx(Side::Destination, || sql.into())?;
                }
                dest.push(c);
            }
            Ok::<_, Error>((snap, dest))
        }
        .await;
        let resumed = replica::resume_applier(&mut self.dst, &name).await;
        let (snap, mut dest) = held?;
        resumed?;
        let mark = snap.binlog.clone();
        let lister = dest.pop().expect("workers + 1 connections");
        let pairs = snap.workers.into_iter().zip(dest).collect();
        let report = checksum::verify_snapshots(
            checksum::SnapshotPair {
                source_walker: snap.coordinator,
                dest_lister: lister,
                pairs,
                at: snap.position,
            },
            &self.cfg.databases,
            self.cfg.chunk_rows,
        )
        .await?;
        self.state.verified_at = report.equal().then_some(mark);
        self.save()?;
        Ok(report)
    }

    /// The check inside the freeze, once the destination has applied the
    /// freeze position: after an equal [`Mover::verify_online`], only the
    /// rows the source's binary log shows changed since its snapshot (and
    /// in full the tables whose changes cannot be narrowed to rows); without
    /// one, or if the binary log cannot be read from there, everything.
    pub async fn verify_frozen(&self) -> Result<VerifyReport> {
        self.need("verify", &[Phase::Frozen])?;
        let Some(mark) = &self.state.verified_at else {
            let mut r = self.verify().await?;
            r.scope = Scope::FullBecause("no snapshot check before the freeze".into());
            return Ok(r);
        };
        let changes =
            match binlog::changes_since(&self.cfg.source, mark, &self.cfg.databases, KEY_LIMIT)
                .await
            {
                Ok(c) => c,
                Err(e) => binlog::Changes {
                    everything: Some(format!(
                        "the binary log since {} could not be read: {e}",
                        mark.gtid
                    )),
                    ..Default::default()
                },
            };
        checksum::verify_changes(
            &self.cfg.source,
            &self.cfg.dest,
            &self.cfg.databases,
            self.cfg.chunk_rows,
            self.cfg.workers.max(1),
            &mark.gtid,
            changes,
        )
        .await
    }

    /// Per-table, per-chunk checksums on both servers, compared: every row.
    /// Meaningful once frozen and applied.
    pub async fn verify(&self) -> Result<VerifyReport> {
        checksum::verify(
            &self.cfg.source,
            &self.cfg.dest,
            &self.cfg.databases,
            self.cfg.chunk_rows,
            self.cfg.workers.max(1),
        )
        .await
    }

    /// Undoes a freeze whose cutover was abandoned (a router did not
    /// acknowledge, or the orchestrator gave up on this attempt): unlocks
    /// exactly the accounts this move locked and goes back to catching up,
    /// so the next attempt freezes again without a new first copy. The
    /// replication connection is left running: the destination keeps
    /// following the source's writes, which resume now.
    pub async fn unfreeze(&mut self) -> Result<()> {
        self.need("unfreeze", &[Phase::CatchingUp, Phase::Frozen])?;
        for a in self.state.locked.clone() {
            accounts::set_locked(&mut self.src, &a, false).await?;
            // Forgotten one at a time, after its unlock: a crash in between
            // leaves an account unlocked twice (harmless), never one left
            // locked with no record.
            self.state.locked.retain(|x| x != &a);
            self.save()?;
        }
        self.state.frozen_at = None;
        self.state.switch_checked = false;
        self.state.phase = Phase::CatchingUp;
        self.save()
    }

    /// The source position read by the last [`freeze`](Mover::freeze).
    pub fn frozen_at(&self) -> Option<&GtidPos> {
        self.state.frozen_at.as_ref()
    }
}
