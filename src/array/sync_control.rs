//! Which sync runs, and what its progress means for the superblocks and
//! the bitmap: md's `sync_action` states (frozen, idle, an owed resync or
//! recovery restarted by `md_check_recovery`), the resync checkpoint
//! (md's `recovery_cp`), safe mode, and the sink a running sync reports to.
//!
//! [`SyncMachine`] owns all of this state; the running array calls it with
//! a [`SyncContext`] (its engine, superblocks and bitmap), so nothing here
//! reaches back into the array.

use super::error::ArrayError;
use super::events::{Listeners, MdEvent};
use super::superblocks::SuperblockKeeper;
use crate::bitmap::WriteIntentBitmap;
use crate::raid1::{
    LegState, Raid1, Region, SpeedLimits, SyncAction, SyncEvents, SyncProgress, Syncer,
};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A sync that ended with an error is not restarted before this.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);

/// A resync without a bitmap records its checkpoint this often (md: every
/// 1/16 of the array).
const CHECKPOINTS: u64 = 16;

/// md's default safe_mode_delay: 200 ms.
pub const DEFAULT_SAFE_MODE_DELAY_MS: u64 = 200;

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

/// What the sync machinery works on: the running array's parts, lent for
/// one call.
pub(super) struct SyncContext<'a> {
    pub name: &'a str,
    pub engine: &'a Arc<Raid1>,
    pub keeper: &'a Arc<SuperblockKeeper>,
    pub bitmap: Option<Arc<WriteIntentBitmap>>,
    pub read_only: bool,
    /// The array is stopping: nothing new starts.
    pub stopped: bool,
    /// Who hears that a sync starts and ends, and that a leg joins.
    pub listeners: &'a Arc<Listeners>,
}

/// The state a running sync shares with its thread (through its sink).
struct SyncShared {
    /// md's MD_RECOVERY_FROZEN: nothing starts until `idle` (or a start).
    frozen: AtomicBool,
    /// Legs may differ where writes were in flight at an unclean stop;
    /// until a resync, the array must not be recorded clean.
    needs_resync: AtomicBool,
    /// md's recovery_cp, in bytes: below it the legs are known in sync.
    resync_cp: AtomicU64,
    pending_recovery: Mutex<Vec<PendingRecovery>>,
    last_failure: Mutex<Option<Instant>>,
}

/// The one owner of an array's sync state: the running sync, the last one
/// and the last scrub, the speed limits, frozen, owed resync and
/// recoveries, the resync checkpoint and safe mode's delay.
pub(super) struct SyncMachine {
    syncer: Mutex<Option<Syncer>>,
    last_sync: Mutex<Option<Arc<SyncProgress>>>,
    /// The last resync, check or repair: md resets `mismatch_cnt` when one
    /// starts, not when a recovery does.
    last_scrub: Mutex<Option<Arc<SyncProgress>>>,
    limits: Arc<Mutex<SpeedLimits>>,
    /// Whether sync_speed_min and sync_speed_max were set for this array
    /// ("local") or are the defaults ("system"), as md tells them apart.
    limits_local: Mutex<[bool; 2]>,
    /// md's safe_mode_delay, in milliseconds.
    safe_mode_delay_ms: AtomicU64,
    shared: Arc<SyncShared>,
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
struct SyncSink {
    engine: Arc<Raid1>,
    keeper: Arc<SuperblockKeeper>,
    bitmap: Option<Arc<WriteIntentBitmap>>,
    shared: Arc<SyncShared>,
    listeners: Arc<Listeners>,
    action: SyncAction,
    regions: Vec<Region>,
    /// For a recovery: the leg that joins the array when it completes.
    joining: Option<Joining>,
    /// The last resync checkpoint recorded (bytes).
    checkpoint: AtomicU64,
}

impl SyncSink {
    /// md_do_sync's checkpoint: the position reached becomes recovery_cp;
    /// it is written to the superblocks now only if the array is idle
    /// (recorded clean), since while writes run md's superblocks say
    /// resync_offset 0; safe mode writes it once writes stop.
    fn resync_reached(&self, end: u64) {
        self.shared.resync_cp.fetch_max(end, Ordering::AcqRel);
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
            *self.shared.last_failure.lock() = Some(Instant::now());
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
                self.shared.pending_recovery.lock().push(PendingRecovery {
                    joining: j.clone(),
                    regions: regions_from(&self.regions, done),
                });
            }
        }
        if p.action == SyncAction::Resync && completed {
            self.shared.needs_resync.store(false, Ordering::Release);
            self.shared
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
        self.listeners.tell(MdEvent::RebuildFinished);
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
                self.listeners.tell(MdEvent::SpareActive {
                    leg: j.leg.short_name(),
                });
            }
            Err(e) => log::error!("recovery of {}: {e}", j.leg.path().display()),
        }
    }
}

/// The bitmap's dirty chunks as regions (what a bitmap-guided resync or
/// recovery copies), over an array of `size` bytes.
pub(super) fn dirty_regions(bitmap: &WriteIntentBitmap, size: u64) -> Vec<Region> {
    let chunk = bitmap.chunk_size() as u64;
    let mut regions: Vec<Region> = Vec::new();
    for c in bitmap.dirty_chunks() {
        let offset = c * chunk;
        let len = chunk.min(size - offset);
        match regions.last_mut() {
            Some(r) if r.offset + r.len == offset => r.len += len,
            _ => regions.push(Region { offset, len }),
        }
    }
    regions
}

impl SyncMachine {
    /// `needs_resync` after an unclean stop; below `resync_cp` (bytes) the
    /// legs are known in sync.
    pub(super) fn new(needs_resync: bool, resync_cp: u64) -> SyncMachine {
        SyncMachine {
            syncer: Mutex::new(None),
            last_sync: Mutex::new(None),
            last_scrub: Mutex::new(None),
            limits: Arc::new(Mutex::new(SpeedLimits::default())),
            limits_local: Mutex::new([false; 2]),
            safe_mode_delay_ms: AtomicU64::new(DEFAULT_SAFE_MODE_DELAY_MS),
            shared: Arc::new(SyncShared {
                frozen: AtomicBool::new(false),
                needs_resync: AtomicBool::new(needs_resync),
                resync_cp: AtomicU64::new(resync_cp),
                pending_recovery: Mutex::new(Vec::new()),
                last_failure: Mutex::new(None),
            }),
        }
    }

    /// A recovery owed: md_check_recovery starts it when nothing else runs.
    pub(super) fn owe_recovery(&self, joining: Joining, regions: Vec<Region>) {
        self.shared
            .pending_recovery
            .lock()
            .push(PendingRecovery { joining, regions });
    }

    /// After an unclean stop: copy from the first leg to the others what may
    /// differ: the chunks whose bits are set, or (without a bitmap) the whole
    /// array from the checkpoint reached (md's recovery_cp).
    pub(super) fn start_resync(&self, cx: &SyncContext) -> Result<(), ArrayError> {
        let size = cx.engine.size();
        let regions = match &cx.bitmap {
            Some(b) => dirty_regions(b, size),
            None => {
                let from = self.shared.resync_cp.load(Ordering::Acquire).min(size);
                vec![Region {
                    offset: from,
                    len: size - from,
                }]
            }
        };
        let bytes: u64 = regions.iter().map(|r| r.len).sum();
        let first = cx
            .engine
            .slots()
            .iter()
            .find_map(|s| s.io().map(|io| io.leg().short_name()))
            .unwrap_or_default();
        log::warn!(
            "array {}: not stopped cleanly: resyncing {bytes} bytes in {} region(s) from leg {first}",
            cx.name,
            regions.len(),
        );
        self.start(cx, SyncAction::Resync, regions, None)
    }

    /// Starts a sync in the background (one at a time, as md); a recovery
    /// names the leg that joins the array when it completes.
    pub(super) fn start(
        &self,
        cx: &SyncContext,
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
            engine: cx.engine.clone(),
            keeper: cx.keeper.clone(),
            bitmap: cx.bitmap.clone(),
            shared: self.shared.clone(),
            listeners: cx.listeners.clone(),
            action,
            regions: regions.clone(),
            joining,
            checkpoint: AtomicU64::new(regions.first().map_or(0, |r| r.offset)),
        });
        // Told before the sync's thread starts: a short sync can end (and
        // tell RebuildFinished) before Syncer::start returns.
        cx.listeners.tell(MdEvent::RebuildStarted);
        let syncer = Syncer::start(
            cx.engine.clone(),
            action,
            regions,
            self.limits.clone(),
            sink,
        )
        .map_err(|source| {
            cx.listeners.tell(MdEvent::RebuildFinished);
            ArrayError::Thread {
                what: format!("the {}", action.md_word()),
                source,
            }
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

    /// A check or repair of the whole array (md: a requested one unfreezes).
    pub(super) fn start_scrub(
        &self,
        cx: &SyncContext,
        action: SyncAction,
    ) -> Result<(), ArrayError> {
        self.shared.frozen.store(false, Ordering::Release);
        let len = cx.engine.size();
        self.start(cx, action, vec![Region { offset: 0, len }], None)
    }

    /// md_check_recovery: with no sync running and the array not frozen,
    /// starts an owed recovery, else an owed resync.
    pub(super) fn check_recovery(&self, cx: &SyncContext) {
        let c = &self.shared;
        if cx.read_only
            || cx.stopped
            || c.frozen.load(Ordering::Acquire)
            || self.progress().is_some()
            || c.last_failure
                .lock()
                .is_some_and(|t| t.elapsed() < RETRY_AFTER_ERROR)
        {
            return;
        }
        let pending = c.pending_recovery.lock().pop();
        if let Some(p) = pending {
            let slot = &cx.engine.slots()[p.joining.slot];
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
                if let Err(e) = self.start(
                    cx,
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
            if let Err(e) = self.start_resync(cx) {
                log::error!("restarting the resync: {e}");
            }
        }
    }

    /// Stops a running sync (md: `idle`).
    pub(super) fn stop(&self) {
        if let Some(mut s) = self.syncer.lock().take() {
            s.stop();
        }
    }

    /// md's sync_action writes `idle` and `frozen`: the running sync stops;
    /// `idle` lets an owed resync or recovery start again, `frozen` holds
    /// everything until `idle` (or a start) is written.
    pub(super) fn set_idle(&self, cx: &SyncContext, frozen: bool) {
        self.shared.frozen.store(frozen, Ordering::Release);
        self.stop();
        if !frozen {
            self.check_recovery(cx);
        }
    }

    /// md's `resync` and `recover` writes: unfreeze; an owed sync starts.
    pub(super) fn request_owed(&self, cx: &SyncContext) -> Result<(), ArrayError> {
        if self.progress().is_some() {
            return Err(ArrayError::Busy("a sync is already running".into()));
        }
        self.shared.frozen.store(false, Ordering::Release);
        *self.shared.last_failure.lock() = None;
        self.check_recovery(cx);
        Ok(())
    }

    pub(super) fn is_frozen(&self) -> bool {
        self.shared.frozen.load(Ordering::Acquire)
    }

    /// True until a resync owed since an unclean stop has completed.
    pub(super) fn needs_resync(&self) -> bool {
        self.shared.needs_resync.load(Ordering::Acquire)
    }

    /// md's recovery_cp, in bytes.
    pub(super) fn resync_cp(&self) -> u64 {
        self.shared.resync_cp.load(Ordering::Acquire)
    }

    /// The running sync, if any.
    pub(super) fn progress(&self) -> Option<Arc<SyncProgress>> {
        self.syncer
            .lock()
            .as_ref()
            .map(|s| s.progress().clone())
            .filter(|p| !p.finished.load(Ordering::Acquire))
    }

    /// The running sync or, when none runs, the last one.
    pub(super) fn last_progress(&self) -> Option<Arc<SyncProgress>> {
        self.last_sync.lock().clone()
    }

    /// The mismatches the last resync, check or repair found so far, in
    /// sectors (md's mismatch_cnt; a recovery leaves it).
    pub(super) fn mismatch_cnt(&self) -> u64 {
        self.last_scrub
            .lock()
            .as_ref()
            .map(|p| p.mismatch_sectors.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    pub(super) fn limits(&self) -> &Arc<Mutex<SpeedLimits>> {
        &self.limits
    }

    /// `sync_speed_min` (`is_max` false) or `sync_speed_max` in KiB/s, and
    /// whether it was set for this array.
    pub(super) fn limit(&self, is_max: bool) -> (u64, bool) {
        let l = *self.limits.lock();
        let local = self.limits_local.lock()[is_max as usize];
        (if is_max { l.max_kib } else { l.min_kib }, local)
    }

    /// Sets `sync_speed_min` or `sync_speed_max` (KiB/s), or back to md's
    /// default with None.
    pub(super) fn set_limit(&self, is_max: bool, kib: Option<u64>) {
        let d = SpeedLimits::default();
        let mut l = self.limits.lock();
        if is_max {
            l.max_kib = kib.unwrap_or(d.max_kib);
        } else {
            l.min_kib = kib.unwrap_or(d.min_kib);
        }
        self.limits_local.lock()[is_max as usize] = kib.is_some();
    }

    pub(super) fn safe_mode_delay_ms(&self) -> u64 {
        self.safe_mode_delay_ms.load(Ordering::Relaxed)
    }

    pub(super) fn set_safe_mode_delay_ms(&self, ms: u64) {
        self.safe_mode_delay_ms.store(ms, Ordering::Relaxed);
    }

    pub(super) fn idle_watch(&self, engine: &Raid1) -> IdleWatch {
        IdleWatch::new(engine.stats().writes.load(Ordering::Relaxed))
    }

    /// md's safe mode: writes idle for safe_mode_delay: flush the legs and
    /// record the superblocks clean (or, with a resync owed, its checkpoint).
    pub(super) fn safe_mode(&self, cx: &SyncContext, idle: &mut IdleWatch) {
        let writes = cx.engine.stats().writes.load(Ordering::Relaxed);
        let delay = Duration::from_millis(self.safe_mode_delay_ms());
        let now = Instant::now();
        if !idle.idle_for(writes, delay, now)
            || cx.read_only
            || cx.stopped
            || !cx.engine.is_active()
        {
            return;
        }
        let recorded = cx.engine.mark_clean_when_quiet(|| self.record_in_sync(cx));
        if recorded {
            log::debug!("array {}: safe mode: recorded clean", cx.name);
        } else {
            idle.restart(now);
        }
    }

    /// Writes the superblocks as md does when the array is in_sync: clean,
    /// or the resync checkpoint when a resync is owed.
    pub(super) fn record_in_sync(&self, cx: &SyncContext) -> bool {
        let r = if self.needs_resync() {
            cx.keeper.record_resync_offset(self.resync_cp() / 512)
        } else {
            cx.keeper.mark_clean()
        };
        match r {
            Ok(_) => true,
            Err(e) => {
                log::error!("array {}: recording the array clean: {e}", cx.name);
                false
            }
        }
    }
}

/// What safe mode has seen of the writes.
pub(super) struct IdleWatch {
    writes_seen: u64,
    since: Instant,
}

impl IdleWatch {
    pub(super) fn new(writes: u64) -> IdleWatch {
        IdleWatch {
            writes_seen: writes,
            since: Instant::now(),
        }
    }

    /// True once `writes` (the count of writes ended) has not moved for
    /// `delay`.
    pub(super) fn idle_for(&mut self, writes: u64, delay: Duration, now: Instant) -> bool {
        if writes != self.writes_seen {
            self.writes_seen = writes;
            self.since = now;
            return false;
        }
        now.saturating_duration_since(self.since) >= delay
    }

    /// Starts the wait again (after a failed attempt).
    pub(super) fn restart(&mut self, now: Instant) {
        self.since = now;
    }
}

/// md's safe_mode_delay as its sysfs file shows it: seconds, 3 decimals.
pub fn format_delay(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
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

    #[test]
    fn delays_print_as_md() {
        assert_eq!(format_delay(200), "0.200");
        assert_eq!(format_delay(1500), "1.500");
    }

    #[test]
    fn idle_only_after_the_delay_without_writes() {
        let t0 = Instant::now();
        let mut w = IdleWatch::new(5);
        let d = Duration::from_millis(200);
        assert!(!w.idle_for(6, d, t0));
        assert!(!w.idle_for(6, d, t0 + Duration::from_millis(150)));
        assert!(w.idle_for(6, d, t0 + Duration::from_millis(250)));
        assert!(!w.idle_for(7, d, t0 + Duration::from_millis(300)));
        w.restart(t0 + Duration::from_millis(600));
        assert!(!w.idle_for(7, d, t0 + Duration::from_millis(700)));
        assert!(w.idle_for(7, d, t0 + Duration::from_millis(800)));
    }
}
