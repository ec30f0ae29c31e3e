//! The step discipline every runbook follows: a step's `begin` is journaled
//! before it acts (so a restart knows it may have acted, and with what), its
//! `end` after, with a typed [`Outcome`]. A step begun and not ended is run
//! again by the runbook with what its `begin` recorded, so every step must
//! be safe to replay. The `<step>:before` and `<step>:after` failpoints sit
//! between the journal writes and the work.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::failpoint::{FailpointError, Failpoints};
use crate::journal::Journal;
use crate::kind::{Kind, Record};

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed,
    /// Given up on purpose and undone (a migration's freeze that a router
    /// did not acknowledge); the runbook may try the step again.
    Abandoned,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Failed, Outcome::Abandoned];

    /// The word stored in journals.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// A step stopped by its journal or by a failpoint.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Journal(#[from] Error),
    #[error(transparent)]
    Failpoint(#[from] FailpointError),
}

/// Called with every event a [`Steps`] journals (logs, progress bars).
pub type OnAppend<'a, E> = &'a (dyn Fn(&Record<E>) + Send + Sync);

/// Runs steps against one journal and one set of failpoints.
pub struct Steps<'a, K: Kind> {
    journal: &'a Journal<K>,
    failpoints: &'a Failpoints,
    on_append: Option<OnAppend<'a, K::Event>>,
}

impl<'a, K: Kind> Steps<'a, K> {
    pub fn new(journal: &'a Journal<K>, failpoints: &'a Failpoints) -> Steps<'a, K> {
        Steps {
            journal,
            failpoints,
            on_append: None,
        }
    }

    /// Calls `f` with each event as soon as it is journaled.
    pub fn on_append(mut self, f: OnAppend<'a, K::Event>) -> Steps<'a, K> {
        self.on_append = Some(f);
        self
    }

    /// Journals `event` now (a note, or an end that bypasses the `after`
    /// failpoint: a failure found by the step itself).
    pub fn record(&self, event: K::Event) -> Result<Record<K::Event>, Error> {
        let rec = self.journal.append(event)?;
        if let Some(f) = self.on_append {
            f(&rec);
        }
        Ok(rec)
    }

    /// Before step `name` acts: its `begin` journaled (None: a replay, the
    /// begin is in the journal already), then the `<name>:before` failpoint.
    pub async fn begin(&self, name: &str, begin: Option<K::Event>) -> Result<(), StepError> {
        // A replayed step journals no begin, so no append would notice a
        // lease that may have ended (etcd): ask before acting.
        self.journal.check_fence()?;
        if let Some(ev) = begin {
            self.record(ev)?;
        }
        self.failpoints.hit(&format!("{name}:before")).await?;
        Ok(())
    }

    /// After step `name` acted: the `<name>:after` failpoint, then its `end`
    /// journaled.
    pub async fn end(&self, name: &str, end: K::Event) -> Result<(), StepError> {
        self.failpoints.hit(&format!("{name}:after")).await?;
        self.record(end)?;
        Ok(())
    }

    /// A whole step: [`Steps::begin`], `act`, then its end: `end(Outcome::Ok, ..)`
    /// through [`Steps::end`], or `end(Outcome::Failed, ..)` journaled at
    /// once (a failure is not the `after` point). Answers what `act` did.
    pub async fn run<T, E, F>(
        &self,
        name: &str,
        begin: Option<K::Event>,
        act: F,
        end: impl FnOnce(Outcome, &Result<T, E>) -> K::Event,
    ) -> Result<Result<T, E>, StepError>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.begin(name, begin).await?;
        let done = act.await;
        if done.is_ok() {
            self.end(name, end(Outcome::Ok, &done)).await?;
        } else {
            self.record(end(Outcome::Failed, &done))?;
        }
        Ok(done)
    }
}
