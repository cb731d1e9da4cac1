//! Failing a leg: marking it faulty, having the array layer record it,
//! and holding back what missed the leg until that record is durable (md's
//! MD_SB_CHANGE_PENDING).

use super::*;

/// Whether a leg's failure is on record in the other legs' superblocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Record {
    /// Recorded (or nothing to record).
    Done,
    /// The superblocks are being written.
    Pending,
    /// No leg took the record: what misses the leg fails until one does.
    Unwritten,
}

impl Raid1 {
    /// Returns once the failure of every slot outside `reached` (the slots
    /// an operation did not reach) is on record, so the operation may be
    /// acknowledged: were the power cut before, the legs would assemble as
    /// equals and a resync could copy a stale leg over the acknowledged
    /// data. A record no leg took is tried again; if it still fails, so
    /// does the operation.
    pub(super) fn await_failures_recorded(
        &self,
        op: &'static str,
        offset: u64,
        reached: u64,
    ) -> Result<(), EngineError> {
        let missed = |slot: usize| reached & (1 << slot) == 0;
        let mut records = self.records.lock();
        loop {
            while records
                .iter()
                .enumerate()
                .any(|(i, r)| missed(i) && *r == Record::Pending)
            {
                self.recorded.wait(&mut records);
            }
            let Some(slot) =
                (0..records.len()).find(|&i| missed(i) && records[i] == Record::Unwritten)
            else {
                return Ok(());
            };
            records[slot] = Record::Pending;
            drop(records);
            let again = {
                let _one = self.activating.lock();
                self.events
                    .leg_failed(slot, "its failure was not yet on record")
            };
            records = self.records.lock();
            records[slot] = if again.is_ok() {
                Record::Done
            } else {
                Record::Unwritten
            };
            self.recorded.notify_all();
            if let Err(why) = again {
                return Err(EngineError::FailureNotRecorded {
                    op,
                    offset,
                    slot,
                    why: why.to_string(),
                });
            }
        }
    }

    /// Fails the legs whose superblock could not be written (each failure
    /// records itself in the others' superblocks, which may queue more).
    pub fn fail_unwritten(&self) {
        loop {
            let unwritten = self.events.take_unwritten();
            if unwritten.is_empty() {
                return;
            }
            for (slot, why) in unwritten {
                self.fail_after_error(slot, &format!("its superblock cannot be written: {why}"));
            }
        }
    }

    /// Fails leg `slot` after an I/O error, unless it is the last in-sync leg
    /// (then the error goes to the user instead, as md does).
    pub(in crate::raid1) fn fail_after_error(&self, slot: usize, reason: &str) {
        if let Err(e) = self.fail_leg(slot, reason) {
            log::warn!("{e}; the error goes to the caller");
        }
    }

    /// Marks leg `slot` faulty: it is no longer read or written.
    pub fn fail_leg(&self, slot: usize, reason: &str) -> Result<(), EngineError> {
        let s = self.slots.get(slot).ok_or(EngineError::CannotFail {
            slot,
            why: "no such leg",
        })?;
        // Serialize failures so two racing errors cannot fail the last two legs.
        let one = self.activating.lock();
        let was = s.state();
        match was {
            LegState::InSync if self.in_sync_count() <= 1 => {
                return Err(EngineError::CannotFail {
                    slot,
                    why: "it is the last in-sync leg",
                })
            }
            LegState::InSync | LegState::Recovering => {}
            LegState::Faulty | LegState::Missing => return Ok(()),
        }
        // Pending before faulty: a write that misses the leg from now on
        // waits until its failure is on record.
        self.records.lock()[slot] = Record::Pending;
        s.state.store(LegState::Faulty as u8, Ordering::Release);
        log::error!(
            "leg {} ({}) is now faulty: {reason}; the array goes on degraded",
            slot,
            s.io()
                .map(|io| io.leg.path().display().to_string())
                .unwrap_or_default()
        );
        let name = s.io().map(|io| io.leg.short_name()).unwrap_or_default();
        self.events.became_faulty(slot, &name, was);
        let recorded = self.events.leg_failed(slot, reason);
        if let Err(e) = &recorded {
            log::error!(
                "leg {slot}: its failure could not be recorded on any leg ({e}); \
                 writes that miss it fail until it is"
            );
        }
        self.records.lock()[slot] = if recorded.is_ok() {
            Record::Done
        } else {
            Record::Unwritten
        };
        self.recorded.notify_all();
        drop(one);
        self.fail_unwritten();
        Ok(())
    }
}
