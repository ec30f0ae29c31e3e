//! A batch of site changes: judged by the epoch rule and checked to fit
//! (under the read lock), split into what really changes, then applied
//! (under the write lock) after the store kept it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ferry_model::{ChangeVerdict, Epoch, SiteRecord};

use super::{
    pack, unpack, ApplyError, Inner, Outcome, SiteChange, SiteExtras, SiteId, MAX_EPOCH, NO_EXTRAS,
};
use crate::RouterError;

/// What [`HostTable::apply`] does with one change of a batch: the slot the
/// site already has (`None` for a new site) and whether it changes anything.
pub(super) type Planned = (Option<u32>, bool);

/// The changes of a batch that really change something, split without
/// copying: the records go to the store as one slice, then are applied from
/// that same slice.
pub(super) struct Batch {
    pub(super) records: Vec<SiteRecord>,
    extras: Vec<Option<SiteExtras>>,
    /// Per record: its slot (`None`: a new site) and its place in `out`.
    targets: Vec<(Option<u32>, usize)>,
    /// The answer, one per change in batch order (ids of new sites are
    /// filled in when they are added).
    out: Vec<(SiteId, Outcome)>,
}

impl Batch {
    pub(super) fn split(changes: Vec<SiteChange>, plan: Vec<Planned>) -> Batch {
        let mut batch = Batch {
            records: Vec::with_capacity(changes.len()),
            extras: Vec::with_capacity(changes.len()),
            targets: Vec::with_capacity(changes.len()),
            out: Vec::with_capacity(changes.len()),
        };
        for (change, (slot, changes_it)) in changes.into_iter().zip(plan) {
            if changes_it {
                batch.targets.push((slot, batch.out.len()));
                batch
                    .out
                    .push((SiteId(slot.unwrap_or(0)), Outcome::Changed));
                batch.records.push(change.record);
                batch.extras.push(change.extras);
            } else {
                batch
                    .out
                    .push((SiteId(slot.unwrap_or(0)), Outcome::Unchanged));
            }
        }
        batch
    }
}

impl Inner {
    /// Judges every change of a batch by the epoch rule and checks that the
    /// batch fits (placements, name arena), changing nothing.
    pub(super) fn plan<E>(&self, changes: &[SiteChange]) -> Result<Vec<Planned>, ApplyError<E>> {
        let mut plan: Vec<Planned> = Vec::with_capacity(changes.len());
        let mut seen = hashbrown::HashSet::with_capacity(changes.len());
        let mut stale = Vec::new();
        let mut new_placements = hashbrown::HashSet::new();
        for change in changes {
            let rec = &change.record;
            if rec.epoch.0 > MAX_EPOCH {
                return Err(ApplyError::Invalid(RouterError::EpochTooLarge {
                    host: rec.host.clone(),
                    epoch: rec.epoch,
                }));
            }
            if !seen.insert(rec.host.as_str()) {
                return Err(ApplyError::Invalid(RouterError::DuplicateInBatch {
                    host: rec.host.clone(),
                }));
            }
            if !self.placement_ids.contains_key(&rec.placement) {
                new_placements.insert(&rec.placement);
            }
            match self.judge(change) {
                Ok(planned) => plan.push(planned),
                Err(current) => stale.push((rec.host.clone(), current, rec.epoch)),
            }
        }
        if !stale.is_empty() {
            return Err(ApplyError::Stale(stale));
        }
        if self.placements.len() + new_placements.len() > usize::from(u16::MAX) {
            return Err(ApplyError::Invalid(RouterError::TooManyPlacements));
        }
        // The batch is persisted before it is applied, so the application
        // must not fail half-way: refuse here what the name arena would.
        let new_names = changes
            .iter()
            .zip(&plan)
            .filter(|(_, (slot, _))| slot.is_none())
            .map(|(c, _)| c.record.host.as_str());
        if !self.has_room_for(new_names) {
            return Err(ApplyError::Invalid(RouterError::TableFull));
        }
        Ok(plan)
    }

    /// One change against the site as the table has it: what to do, or
    /// `Err(current epoch)` when the change is stale.
    fn judge(&self, change: &SiteChange) -> Result<Planned, Epoch> {
        let rec = &change.record;
        let slot = self.find_pattern(&rec.host);
        let current =
            slot.and_then(|id| unpack(self.slots[id as usize].word.load(Ordering::Acquire)));
        let Some((p, state, epoch)) = current else {
            return Ok((None, true));
        };
        let verdict = match rec.epoch.cmp(&epoch) {
            std::cmp::Ordering::Greater => ChangeVerdict::Apply,
            std::cmp::Ordering::Equal
                if *self.placements[p.0 as usize] == rec.placement && state == rec.state =>
            {
                ChangeVerdict::NoOp
            }
            _ => ChangeVerdict::Stale,
        };
        let extras_differ = match (&change.extras, slot) {
            (Some(x), Some(id)) => {
                self.extras
                    .get(&id)
                    .map(|a| a.as_ref())
                    .unwrap_or(&NO_EXTRAS)
                    != x
            }
            _ => false,
        };
        match verdict {
            ChangeVerdict::Stale => Err(epoch),
            ChangeVerdict::NoOp if !extras_differ => Ok((slot, false)),
            _ => Ok((slot, true)),
        }
    }

    /// Applies a planned, persisted batch: one atomic store per existing
    /// site, an insert per new one.
    pub(super) fn apply_batch<E>(
        &mut self,
        batch: Batch,
    ) -> Result<Vec<(SiteId, Outcome)>, ApplyError<E>> {
        let Batch {
            records,
            extras,
            targets,
            mut out,
        } = batch;
        let additions = targets.iter().filter(|(slot, _)| slot.is_none()).count();
        if additions > 0 {
            self.reserve(additions);
        }
        for ((rec, extra), (slot, pos)) in records.iter().zip(extras).zip(targets) {
            let pid = self.intern(&rec.placement);
            let word = pack(pid, rec.state, rec.epoch);
            let id = match slot {
                Some(id) => {
                    self.slots[id as usize].word.store(word, Ordering::Release);
                    id
                }
                None => {
                    // Cannot fail: `has_room_for` accepted every new name in `plan`.
                    let id = self.insert(&rec.host, word).map_err(ApplyError::Invalid)?;
                    out[pos] = (SiteId(id), Outcome::Added);
                    id
                }
            };
            if let Some(x) = extra {
                if x == SiteExtras::default() {
                    self.extras.remove(&id);
                } else {
                    self.extras.insert(id, Arc::new(x));
                }
            }
        }
        Ok(out)
    }
}
