//! Which sync runs, and what its progress means for the superblocks and
//! the bitmap: md's `sync_action` states (frozen, idle, an owed resync or
//! recovery restarted by `md_check_recovery`), the resync checkpoint
//! (md's `recovery_cp`), safe mode, and the sink a running sync reports to.

use super::error::ArrayError;
use super::md_thread::IdleWatch;
use super::running::RunningArray;
use super::superblocks::SuperblockKeeper;
use crate::bitmap::WriteIntentBitmap;
use crate::raid1::{LegState, Raid1, Region, SyncAction, SyncEvents, SyncProgress, Syncer};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A sync that ended with an error is not restarted before this.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);

/// A resync without a bitmap records its checkpoint this often (md: every
/// 1/16 of the array).
const CHECKPOINTS: u64 = 16;

/// A leg being recovered into `slot`, with the superblock it will carry.
#[derive(Clone)]
pub(super) struct Joining {
    pub slot: usize,
    pub leg: Arc<crate::io::leg::Leg>,
    pub sb: crate::format::superblock::Superblock,
    /// A former member whose own superblock records its recovery_offset.
    pub tracked: bool,
}

/// A recovery that was stopped (idle, frozen) and is owed.
pub(super) struct PendingRecovery {
    pub joining: Joining,
    pub regions: Vec<Region>,
}

/// The array's sync state beyond the running sync itself.
pub(super) struct SyncControl {
    /// md's MD_RECOVERY_FROZEN: nothing starts until `idle` (or a start).
    pub frozen: AtomicBool,
    /// Legs may differ where writes were in flight at an unclean stop;
    /// until a resync, the array must not be recorded clean.
    pub needs_resync: AtomicBool,
    /// md's recovery_cp, in bytes: below it the legs are known in sync.
    pub resync_cp: AtomicU64,
    pub pending_recovery: Mutex<Vec<PendingRecovery>>,
    pub last_failure: Mutex<Option<Instant>>,
    /// md's safe_mode_delay, in milliseconds.
    pub safe_mode_delay_ms: AtomicU64,
}

impl SyncControl {
    pub(super) fn new(needs_resync: bool, resync_cp: u64) -> SyncControl {
        SyncControl {
            frozen: AtomicBool::new(false),
            needs_resync: AtomicBool::new(needs_resync),
            resync_cp: AtomicU64::new(resync_cp),
            pending_recovery: Mutex::new(Vec::new()),
            last_failure: Mutex::new(None),
            safe_mode_delay_ms: AtomicU64::new(super::md_thread::DEFAULT_SAFE_MODE_DELAY_MS),
        }
    }
}

/// The regions of `regions` from array byte `from` on.
pub fn regions_from(regions: &[Region], from: u64) -> Vec<Region> {
    regions
        .iter()
        .filter(|r| r.offset + r.len > from)
        .map(|r| {
            let start = r.offset.max(from);
            Region {
                offset: start,
                len: r.offset + r.len - start,
            }
        })
        .collect()
}

/// What a sync reports back: chunks made identical (their bitmap bits may
/// go), resync checkpoints, and its end.
pub(super) struct SyncSink {
    pub engine: Arc<Raid1>,
    pub keeper: Arc<SuperblockKeeper>,
    pub bitmap: Option<Arc<WriteIntentBitmap>>,
    pub control: Arc<SyncControl>,
    pub action: SyncAction,
    pub regions: Vec<Region>,
    /// For a recovery: the leg that joins the array when it completes.
    pub joining: Option<Joining>,
    /// The last resync checkpoint recorded (bytes).
    pub checkpoint: AtomicU64,
}

impl SyncSink {
    /// md_do_sync's checkpoint: the position reached becomes recovery_cp;
    /// it is written to the superblocks now only if the array is idle
    /// (recorded clean), since while writes run md's superblocks say
    /// resync_offset 0; safe mode writes it once writes stop.
    fn resync_reached(&self, end: u64) {
        self.control.resync_cp.fetch_max(end, Ordering::AcqRel);
        let every = (self.engine.size() / CHECKPOINTS).max(1);
        if end < self.checkpoint.load(Ordering::Acquire) + every {
            return;
        }
        self.checkpoint.store(end, Ordering::Release);
        self.engine.if_idle(|| {
            if let Err(e) = self.keeper.record_resync_offset(end / 512) {
                log::error!("recording the resync checkpoint: {e}");
            }
        });
    }
}

impl SyncSink {
    /// md_update_sb's recovery_offset: how far a former member's recovery
    /// got is written to its own superblock every 1/16 of the array.
    fn recovery_reached(&self, j: &Joining, end: u64) {
        let every = (self.engine.size() / CHECKPOINTS).max(1);
        if end < self.checkpoint.load(Ordering::Acquire) + every {
            return;
        }
        self.checkpoint.store(end, Ordering::Release);
        if let Err(e) = self.keeper.record_recovery_offset(j.slot, end / 512) {
            log::error!("recording the recovery offset: {e}");
        }
    }
}

impl SyncEvents for SyncSink {
    fn region_synced(&self, region: Region) {
        if self.action == SyncAction::Resync && self.bitmap.is_none() {
            self.resync_reached(region.offset + region.len);
        }
        if let Some(j) = self.joining.as_ref().filter(|j| j.tracked) {
            self.recovery_reached(j, region.offset + region.len);
        }
        let Some(b) = &self.bitmap else { return };
        if self.engine.has_absent_leg() {
            // The bits are what a re-added leg will be recovered from.
            return;
        }
        // Regions are worked through in order from a chunk's start, so a
        // chunk whose end falls inside this step is now wholly in sync.
        let chunk = b.chunk_size() as u64;
        let first = region.offset / chunk;
        let last = (region.offset + region.len - 1) / chunk;
        for c in first..=last {
            let end = ((c + 1) * chunk).min(self.engine.size());
            if end > region.offset && end <= region.offset + region.len {
                b.mark_chunk_synced(c);
            }
        }
    }

    fn finished(&self, p: &SyncProgress) {
        let completed = !p.interrupted.load(Ordering::Acquire);
        if p.failed.load(Ordering::Acquire) {
            *self.control.last_failure.lock() = Some(Instant::now());
        }
        if let Some(j) = &self.joining {
            if completed {
                self.join(j);
            } else if self.engine.slots()[j.slot].state() == LegState::Recovering {
                let done = p.done_bytes.load(Ordering::Acquire);
                if j.tracked {
                    if let Err(e) = self.keeper.record_recovery_offset(j.slot, done / 512) {
                        log::error!("recording the recovery offset: {e}");
                    }
                }
                // Owed: md_check_recovery starts it again (unless frozen).
                self.control.pending_recovery.lock().push(PendingRecovery {
                    joining: j.clone(),
                    regions: regions_from(&self.regions, done),
                });
            }
        }
        if p.action == SyncAction::Resync && completed {
            self.control.needs_resync.store(false, Ordering::Release);
            self.control
                .resync_cp
                .store(self.engine.size(), Ordering::Release);
            self.engine.read_from_first_only(false);
            // As md: a finished resync on an idle array is recorded at once.
            self.engine.if_idle(|| {
                if let Err(e) = self.keeper.mark_clean() {
                    log::error!("recording the resync done: {e}");
                }
            });
        }
    }
}

impl SyncSink {
    fn join(&self, j: &Joining) {
        match self.engine.set_in_sync(j.slot) {
            Ok(()) => {
                if let Err(e) = self.keeper.join(j.slot, j.leg.clone(), j.sb.clone()) {
                    log::error!("recording leg {} in sync: {e}", j.leg.path().display());
                }
                if let Some(b) = &self.bitmap {
                    b.set_degraded(self.engine.has_absent_leg());
                    b.set_recovering(self.engine.has_recovering_leg());
                }
                log::info!(
                    "leg {} recovered: in sync in slot {}",
                    j.leg.path().display(),
                    j.slot
                );
            }
            Err(e) => log::error!("recovery of {}: {e}", j.leg.path().display()),
        }
    }
}

impl RunningArray {
    /// After an unclean stop: copy from the first leg to the others what may
    /// differ: the chunks whose bits are set, or (without a bitmap) the whole
    /// array from the checkpoint reached (md's recovery_cp).
    pub(super) fn start_resync(&self) -> Result<(), ArrayError> {
        let size = self.engine.size();
        let regions = match &self.bitmap {
            Some(b) => self.dirty_regions(b),
            None => {
                let from = self.control.resync_cp.load(Ordering::Acquire).min(size);
                vec![Region {
                    offset: from,
                    len: size - from,
                }]
            }
        };
        let bytes: u64 = regions.iter().map(|r| r.len).sum();
        log::warn!(
            "array {}: not stopped cleanly: resyncing {bytes} bytes in {} region(s) from leg {}",
            self.name,
            regions.len(),
            self.leg_names()
                .into_iter()
                .flatten()
                .next()
                .unwrap_or_default()
        );
        self.start_sync(SyncAction::Resync, regions)
    }

    /// Starts a sync in the background (one at a time, as md).
    pub fn start_sync(&self, action: SyncAction, regions: Vec<Region>) -> Result<(), ArrayError> {
        self.start_sync_joining(action, regions, None)
    }

    pub(super) fn start_sync_joining(
        &self,
        action: SyncAction,
        regions: Vec<Region>,
        joining: Option<Joining>,
    ) -> Result<(), ArrayError> {
        let mut slot = self.syncer.lock();
        if slot
            .as_ref()
            .is_some_and(|s| !s.progress().finished.load(Ordering::Acquire))
        {
            return Err(ArrayError::Busy("a sync is already running".into()));
        }
        let sink = Arc::new(SyncSink {
            engine: self.engine.clone(),
            keeper: self.keeper.clone(),
            bitmap: self.bitmap.as_ref().map(|b| b.service().clone()),
            control: self.control.clone(),
            action,
            regions: regions.clone(),
            joining,
            checkpoint: AtomicU64::new(regions.first().map_or(0, |r| r.offset)),
        });
        let syncer = Syncer::start(
            self.engine.clone(),
            action,
            regions,
            self.sync_limits.clone(),
            sink,
        )
        .map_err(|source| ArrayError::Thread {
            what: format!("the {}", action.md_word()),
            source,
        })?;
        *self.last_sync.lock() = Some(syncer.progress().clone());
        // md resets mismatch_cnt when a resync, check or repair starts, not
        // when a recovery does.
        if !matches!(action, SyncAction::Recover { .. }) {
            *self.last_scrub.lock() = Some(syncer.progress().clone());
        }
        *slot = Some(syncer);
        Ok(())
    }

    /// md_check_recovery: with no sync running and the array not frozen,
    /// starts an owed recovery, else an owed resync.
    pub(super) fn check_recovery(&self) {
        let c = &self.control;
        if self.read_only
            || self.stopped.load(Ordering::Acquire)
            || c.frozen.load(Ordering::Acquire)
            || self.sync_progress().is_some()
            || c.last_failure
                .lock()
                .is_some_and(|t| t.elapsed() < RETRY_AFTER_ERROR)
        {
            return;
        }
        let pending = c.pending_recovery.lock().pop();
        if let Some(p) = pending {
            let slot = &self.engine.slots()[p.joining.slot];
            let same_leg = slot
                .io()
                .is_some_and(|io| Arc::ptr_eq(io.leg(), &p.joining.leg));
            if same_leg && slot.state() == LegState::Recovering {
                let bytes: u64 = p.regions.iter().map(|r| r.len).sum();
                log::info!(
                    "recovery of {} resumes: {bytes} bytes left",
                    p.joining.leg.path().display()
                );
                let slot = p.joining.slot;
                if let Err(e) = self.start_sync_joining(
                    SyncAction::Recover { target: slot },
                    p.regions,
                    Some(p.joining),
                ) {
                    log::error!("restarting the recovery: {e}");
                }
                return;
            }
        }
        if c.needs_resync.load(Ordering::Acquire) {
            if let Err(e) = self.start_resync() {
                log::error!("restarting the resync: {e}");
            }
        }
    }

    /// md's sync_action writes `idle` and `frozen`: the running sync stops;
    /// `idle` lets an owed resync or recovery start again, `frozen` holds
    /// everything until `idle` (or a start) is written.
    pub fn set_sync_idle(&self, frozen: bool) {
        self.control.frozen.store(frozen, Ordering::Release);
        self.stop_sync();
        if !frozen {
            self.check_recovery();
        }
    }

    /// md's `resync` and `recover` writes: unfreeze; an owed sync starts.
    pub fn request_owed_sync(&self) -> Result<(), ArrayError> {
        if self.sync_progress().is_some() {
            return Err(ArrayError::Busy("a sync is already running".into()));
        }
        self.control.frozen.store(false, Ordering::Release);
        *self.control.last_failure.lock() = None;
        self.check_recovery();
        Ok(())
    }

    pub fn is_frozen(&self) -> bool {
        self.control.frozen.load(Ordering::Acquire)
    }

    pub(super) fn idle_watch(&self) -> IdleWatch {
        IdleWatch::new(self.engine.stats().writes.load(Ordering::Relaxed))
    }

    /// md's safe mode: writes idle for safe_mode_delay: flush the legs and
    /// record the superblocks clean (or, with a resync owed, its checkpoint).
    pub(super) fn safe_mode(&self, idle: &mut IdleWatch) {
        let writes = self.engine.stats().writes.load(Ordering::Relaxed);
        let delay = Duration::from_millis(self.control.safe_mode_delay_ms.load(Ordering::Relaxed));
        let now = Instant::now();
        if !idle.idle_for(writes, delay, now)
            || self.read_only
            || self.stopped.load(Ordering::Acquire)
            || !self.engine.is_active()
        {
            return;
        }
        let recorded = self.engine.mark_clean_when_quiet(|| self.record_in_sync());
        if recorded {
            log::debug!("array {}: safe mode: recorded clean", self.name);
        } else {
            idle.restart(now);
        }
    }

    /// Writes the superblocks as md does when the array is in_sync: clean,
    /// or the resync checkpoint when a resync is owed.
    pub(super) fn record_in_sync(&self) -> bool {
        let c = &self.control;
        let r = if c.needs_resync.load(Ordering::Acquire) {
            self.keeper
                .record_resync_offset(c.resync_cp.load(Ordering::Acquire) / 512)
        } else {
            self.keeper.mark_clean()
        };
        match r {
            Ok(_) => true,
            Err(e) => {
                log::error!("array {}: recording the array clean: {e}", self.name);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_from_cuts_at_the_point_reached() {
        let r = |offset, len| Region { offset, len };
        let regions = vec![r(0, 100), r(200, 100), r(400, 50)];
        assert_eq!(regions_from(&regions, 0), regions);
        assert_eq!(regions_from(&regions, 250), vec![r(250, 50), r(400, 50)]);
        assert_eq!(regions_from(&regions, 300), vec![r(400, 50)]);
        assert_eq!(regions_from(&regions, 450), vec![]);
    }
}
