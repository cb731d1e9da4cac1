//! A running array: the engine, the superblock keeper and (when given) the
//! write-intent bitmap, served to the FUSE adapter, and its clean stop.

use super::assemble::Assembly;
use super::bitmap_attach::AttachedBitmap;
use super::error::ArrayError;
use super::events::{Listener, Listeners, MdEvent};
use super::join::{self, JoinPlan};
use super::md_thread::{MdThread, TICK};
use super::served::{PlannedRead, PlannedWrite, ServedArray};
use super::superblocks::is_recovering;
use super::superblocks::SuperblockKeeper;
use super::sync_control::{dirty_regions, regions_from, Joining, SyncContext, SyncMachine};
use super::write_mostly::{self, WriteMostlyChoice};
use crate::bitmap::WriteIntent;
use crate::format::superblock::{FEATURE_BITMAP_OFFSET, FEATURE_RECOVERY_BITMAP};
use crate::raid1::{
    ArrayEvents, EngineOptions, LegSpec, LegState, Raid1, RecordError, Region, SpeedLimits,
    SyncAction, SyncProgress,
};
use crate::report::mdstat::{render_mdstat, MdstatLeg, MdstatSync, MdstatView};
use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub read_only: bool,
    pub engine: EngineOptions,
    /// How a bitmap added while the array runs is kept (the mount's
    /// bitmap options).
    pub grow: GrowOptions,
    /// Legs the user made write-mostly or read-write at this start; the
    /// others keep what their superblock says.
    pub write_mostly: WriteMostlyChoice,
}

/// How a bitmap added while the array runs (`grow.rs`) is kept: the
/// mount's bitmap options.
#[derive(Debug, Clone, Default)]
pub struct GrowOptions {
    /// `--delay`: idle time before a bit is cleared (also the new header's
    /// daemon_sleep, in whole seconds).
    pub clear_delay: Option<std::time::Duration>,
    /// `--bitmap-file-io`: a bitmap file's pages through ordinary file I/O.
    pub file_io: bool,
    /// `--bitmap-trust-device`.
    pub trust_device: bool,
}

/// The array's bitmap, if any: changed while it runs (`bitmap/location`),
/// read by whoever needs it at that moment.
pub(super) type BitmapSlot = Arc<ArcSwapOption<AttachedBitmap>>;

/// Where the engine's events go: the bitmap first (so no bit is cleared once
/// a leg is gone), then the superblocks.
struct EventSink {
    keeper: Arc<SuperblockKeeper>,
    bitmap: BitmapSlot,
    listeners: Arc<Listeners>,
}

impl ArrayEvents for EventSink {
    fn mark_active(&self) -> Result<(), RecordError> {
        ArrayEvents::mark_active(&*self.keeper)
    }

    fn leg_failed(&self, slot: usize, reason: &str) -> Result<(), RecordError> {
        if let Some(b) = self.bitmap.load().as_ref() {
            b.service().set_degraded(true);
        }
        self.keeper.leg_failed(slot, reason)
    }

    fn take_unwritten(&self) -> Vec<(usize, String)> {
        self.keeper.take_unwritten()
    }

    fn became_faulty(&self, _slot: usize, name: &str, was: LegState) {
        let leg = name.to_string();
        self.listeners.tell(if was == LegState::Recovering {
            MdEvent::FailSpare { leg }
        } else {
            MdEvent::Fail { leg }
        });
    }
}

pub struct RunningArray {
    // Field order is drop order: the engine (and its legs' locks) goes last
    // but one, after the bitmap has been released by `stop`.
    /// All sync state: the running sync, owed ones, frozen, limits,
    /// checkpoint, safe mode's delay.
    pub(super) sync: SyncMachine,
    pub(super) engine: Arc<Raid1>,
    pub(super) keeper: Arc<SuperblockKeeper>,
    /// The bitmap now (see [`RunningArray::bitmap`]).
    pub(super) bitmap: BitmapSlot,
    /// Held by what changes the array's make-up (a leg added, re-added or
    /// removed, the bitmap changed, a scrub started), one at a time.
    pub(super) config: Mutex<()>,
    /// How a bitmap added while the array runs is kept.
    pub(super) grow_opts: GrowOptions,
    /// The chunk of a bitmap added next (`bitmap/chunksize`), 0: default.
    pub(super) next_chunk: std::sync::atomic::AtomicU64,
    pub(super) name: String,
    pub(super) uuid: String,
    pub(super) raid_disks: usize,
    pub(super) read_only: bool,
    pub(super) md_thread: Mutex<Option<MdThread>>,
    pub(super) stopped: AtomicBool,
    /// Who hears md's events (the daemon's event log).
    pub(super) listeners: Arc<Listeners>,
    /// Faulty remote legs being reconnected (`reconnect.rs`).
    pub(super) reconnects: Mutex<super::reconnect::Reconnects>,
}

impl RunningArray {
    /// Starts the engine on an assembled array. Nothing is written until the
    /// first write (which marks the superblocks active).
    pub fn start(
        asm: Assembly,
        bitmap: Option<AttachedBitmap>,
        opts: &RunOptions,
    ) -> Result<Arc<RunningArray>, ArrayError> {
        let keeper = Arc::new(SuperblockKeeper::new(
            asm.raid_disks as usize,
            asm.members
                .iter()
                .map(|m| (m.slot as usize, m.leg.clone(), m.sb.clone()))
                .collect(),
        ));
        let intent = bitmap
            .as_ref()
            .map(|b| b.service().clone() as Arc<dyn WriteIntent>);
        let slot: BitmapSlot = Arc::new(ArcSwapOption::new(bitmap.map(Arc::new)));
        {
            // The bitmap's header follows the array's events
            // (md_bitmap_update_sb), whichever bitmap the array has then.
            let slot = slot.clone();
            keeper.set_on_events(Box::new(move |events| {
                if let Some(b) = slot.load().as_ref() {
                    if let Err(e) = b.service().update_header(events) {
                        log::error!("{e}");
                    }
                }
            }));
        }
        let listeners = Arc::new(Listeners::default());
        let sink = Arc::new(EventSink {
            keeper: keeper.clone(),
            bitmap: slot.clone(),
            listeners: listeners.clone(),
        });
        let mut legs: Vec<Option<LegSpec>> = (0..asm.raid_disks).map(|_| None).collect();
        // A leg is write-mostly when its superblock says so (md's
        // super_1_validate), unless this start says otherwise.
        let mut flags_changed = Vec::new();
        for m in &asm.members {
            let write_mostly = match opts.write_mostly.said(&m.path) {
                Some(said) => {
                    if said != m.sb.is_write_mostly() {
                        flags_changed.push((m.path.clone(), said));
                    }
                    said
                }
                None => m.sb.is_write_mostly(),
            };
            legs[m.slot as usize] = Some(LegSpec {
                leg: m.leg.clone(),
                data_offset: m.sb.data_offset * 512,
                state: if is_recovering(&m.sb) {
                    LegState::Recovering
                } else {
                    LegState::InSync
                },
                write_mostly,
            });
        }
        let engine = Arc::new(Raid1::new(
            legs,
            asm.array_sectors * 512,
            intent,
            sink,
            &opts.engine,
        )?);
        engine.set_read_only(opts.read_only);
        {
            // Every superblock written carries its leg's flag as the engine
            // has it (md's super_1_sync).
            let weak = Arc::downgrade(&engine);
            keeper.set_write_mostly_source(Box::new(move |slot| {
                let engine = weak.upgrade()?;
                let s = engine.slots().get(slot)?;
                s.io().map(|_| s.is_write_mostly())
            }));
        }
        for (path, on) in &flags_changed {
            log::info!(
                "leg {}: {} as asked",
                path.display(),
                if *on {
                    "write-mostly (read only when no other in-sync leg remains)"
                } else {
                    "read-write (no longer write-mostly)"
                }
            );
        }
        engine
            .start_readahead()
            .map_err(|e| ArrayError::Engine(crate::raid1::EngineError::Threads(e)))?;
        if let Some(b) = slot.load().as_ref() {
            bind_to_engine(b, &engine);
        }
        if !asm.was_clean {
            log::warn!(
                "array {}: it was not stopped cleanly; reads come from the first leg only \
                 and it stays marked active until a resync",
                asm.name
            );
            engine.read_from_first_only(true);
        }
        for l in &asm.left_out {
            log::warn!("leg {} left out: {}", l.path.display(), l.reason);
        }
        if !flags_changed.is_empty() && !opts.read_only {
            // Recorded at once (mdadm --update=writemostly would), once the
            // bitmap's pages know the legs.
            keeper.record_devflags()?;
        }
        let array = Arc::new(RunningArray {
            sync: SyncMachine::new(
                !asm.was_clean,
                if asm.was_clean {
                    asm.array_sectors * 512
                } else {
                    asm.resync_from_sectors * 512
                },
            ),
            engine,
            keeper,
            bitmap: slot,
            config: Mutex::new(()),
            grow_opts: opts.grow.clone(),
            next_chunk: std::sync::atomic::AtomicU64::new(0),
            name: asm.name.clone(),
            uuid: asm.uuid(),
            raid_disks: asm.raid_disks as usize,
            read_only: opts.read_only,
            md_thread: Mutex::new(None),
            stopped: AtomicBool::new(false),
            listeners,
            reconnects: Mutex::new(Default::default()),
        });
        array.resume_recoveries(&asm);
        if array.needs_resync() && !opts.read_only {
            array.sync.start_resync(&array.sync_cx())?;
        }
        let weak = Arc::downgrade(&array);
        let mut idle = None;
        let thread = MdThread::start("md-thread", TICK, move || {
            let Some(array) = weak.upgrade() else {
                return false;
            };
            let idle = idle.get_or_insert_with(|| array.sync.idle_watch(&array.engine));
            // A superblock write that failed elsewhere (a sync's
            // checkpoint, say) fails its leg here.
            array.engine.fail_unwritten();
            let cx = array.sync_cx();
            array.sync.check_recovery(&cx);
            array.sync.safe_mode(&cx, idle);
            array.reconnect_remote_legs(std::time::Instant::now());
            true
        })
        .map_err(|source| ArrayError::Thread {
            what: "the array's thread".into(),
            source,
        })?;
        *array.md_thread.lock() = Some(thread);
        Ok(array)
    }

    /// What the sync machinery works on, lent for one call.
    pub(super) fn sync_cx(&self) -> SyncContext<'_> {
        SyncContext {
            name: &self.name,
            engine: &self.engine,
            keeper: &self.keeper,
            bitmap: self.bitmap().map(|b| b.service().clone()),
            read_only: self.read_only,
            stopped: self.stopped.load(Ordering::Acquire),
            listeners: &self.listeners,
        }
    }

    /// From now on, md's events of this array are told to `listener` (None:
    /// to nobody).
    pub fn set_listener(&self, listener: Option<Listener>) {
        self.listeners.set(listener);
    }

    /// The array's bitmap now (it may change while the array runs).
    pub fn bitmap(&self) -> Option<Arc<AttachedBitmap>> {
        self.bitmap.load_full()
    }

    /// The bitmap's dirty chunks as regions (what a bitmap-guided resync or
    /// recovery copies).
    fn dirty_regions(&self, b: &AttachedBitmap) -> Vec<Region> {
        dirty_regions(b.service(), self.engine.size())
    }

    /// md's `--fail`: the leg becomes faulty, the array goes on degraded.
    pub fn fail(&self, slot: usize) -> Result<(), ArrayError> {
        self.engine.fail_leg(slot, "failed by the operator")?;
        Ok(())
    }

    /// md's `--remove`: a faulty leg leaves the array (its file is closed).
    pub fn remove(&self, slot: usize) -> Result<(), ArrayError> {
        let _config = self.config.lock();
        self.remove_locked(slot)
    }

    fn remove_locked(&self, slot: usize) -> Result<(), ArrayError> {
        if let Some(p) = self.sync_progress() {
            if p.action == (SyncAction::Recover { target: slot }) {
                self.stop_sync();
            }
        }
        let leg = self.engine.detach(slot)?;
        let bitmap = self.bitmap();
        if let Some(store) = bitmap.as_ref().and_then(|b| b.leg_store()) {
            store.remove_leg(slot);
        }
        self.keeper.remove(slot)?;
        if let Some(b) = &bitmap {
            b.service().set_degraded(true);
            b.service().set_recovering(self.engine.has_recovering_leg());
        }
        log::info!("leg {} removed from slot {slot}", leg.path().display());
        Ok(())
    }

    /// md's `--add` / `--re-add`: puts a leg into an empty slot and recovers
    /// it in the background. A former member whose events allow it (at least
    /// the bitmap's events_cleared) gets only the bitmap's dirty chunks
    /// copied; any other leg a full recovery. `re_add_only` refuses a leg
    /// that is not a former member.
    pub fn add_leg(&self, path: &std::path::Path, re_add_only: bool) -> Result<String, ArrayError> {
        let _config = self.config.lock();
        self.add_leg_locked(path, re_add_only)
    }

    fn add_leg_locked(
        &self,
        path: &std::path::Path,
        re_add_only: bool,
    ) -> Result<String, ArrayError> {
        use crate::io::leg::{IoMode, Leg};
        if self.read_only {
            return Err(ArrayError::ReadOnly);
        }
        if self.sync_progress().is_some() {
            return Err(ArrayError::Busy(
                "a sync is running; wait for it (mdfuse wait) or stop it (idle)".into(),
            ));
        }
        let mode = self
            .engine
            .slots()
            .iter()
            .find_map(|s| s.io().map(|io| io.leg().mode()))
            .unwrap_or(IoMode::Direct);
        let leg = Leg::open(path, mode, true, true)?;
        let others: Vec<std::path::PathBuf> = self
            .engine
            .slots()
            .iter()
            .filter_map(|s| s.io().map(|io| io.leg().path().to_path_buf()))
            .collect();
        super::create::check_unique_names(others.iter().map(|p| p.as_path()).chain([path]))?;
        let current = self.keeper.current().ok_or(ArrayError::NoMemberLeft)?;
        let found = super::superblocks::read_superblock(&leg)?;
        let states: Vec<LegState> = self.engine.slots().iter().map(|s| s.state()).collect();
        let bitmap = self.bitmap();
        let view = join::ArrayView {
            current: &current,
            slots: &states,
            bitmap_events_cleared: bitmap.as_ref().map(|b| b.service().header().events_cleared),
        };
        let (slot, sb, bitmap_guided, tracked, how) =
            match join::plan(path, leg.size(), &found, &view, re_add_only)? {
                JoinPlan::Former {
                    slot,
                    sb,
                    bitmap_guided,
                    how,
                } => {
                    let mut sb = *sb;
                    // The array's bitmap, which may have changed while the
                    // leg was away (`bitmap/location`), is its bitmap too.
                    sb.feature_map = (sb.feature_map & !FEATURE_BITMAP_OFFSET)
                        | (current.feature_map & FEATURE_BITMAP_OFFSET);
                    sb.bitmap_offset = current.bitmap_offset;
                    (slot, sb, bitmap_guided, true, how)
                }
                JoinPlan::New { slot } => {
                    let mut sb = join::spare_superblock(
                        path,
                        &leg,
                        &current,
                        self.keeper.free_dev_number(),
                    )?;
                    // A new remote leg is write-mostly while a local leg
                    // in sync is there to read from.
                    sb.set_write_mostly(write_mostly::default_for(
                        path,
                        self.has_local_in_sync_leg(),
                    ));
                    super::create::check_blank(&leg, false)?;
                    // Written now as a spare, so it is never taken for a
                    // member before its recovery ends.
                    super::superblocks::write_superblock(&leg, &sb)?;
                    (slot, sb, false, false, "added: full recovery")
                }
            };
        let leg = Arc::new(leg);
        if let Some(b) = &bitmap {
            if let Some(store) = b.leg_store() {
                // Its copy of the internal bitmap, before it takes any write.
                store.add_leg(slot, leg.clone(), &sb, &b.service().header())?;
            }
        }
        self.engine.attach(
            slot,
            LegSpec {
                leg: leg.clone(),
                data_offset: sb.data_offset * 512,
                state: LegState::Recovering,
                // A former member keeps the flag its superblock has.
                write_mostly: sb.is_write_mostly(),
            },
        )?;
        // Writes that chose their legs before the attach do not reach the
        // new leg: let them end (their bits are then set, and kept while
        // degraded) before the dirty chunks are listed. Later writes reach
        // the recovering leg.
        self.engine.wait_for_writes_in_flight();
        let regions = match (&bitmap, bitmap_guided) {
            (Some(b), true) => self.dirty_regions(b),
            _ => vec![Region {
                offset: 0,
                len: self.engine.size(),
            }],
        };
        if tracked {
            // Recorded recovering on its own disk before anything is copied.
            if let Err(e) = self
                .keeper
                .begin_recovery(slot, leg.clone(), sb.clone(), bitmap_guided)
            {
                let _ = self.engine.detach(slot);
                if let Some(store) = bitmap.as_ref().and_then(|b| b.leg_store()) {
                    store.remove_leg(slot);
                }
                let _ = self.keeper.remove(slot);
                return Err(e);
            }
        }
        if let Some(b) = &bitmap {
            b.service().set_degraded(self.engine.has_absent_leg());
            b.service().set_recovering(self.engine.has_recovering_leg());
        }
        let bytes: u64 = regions.iter().map(|r| r.len).sum();
        let msg = format!(
            "leg {} {how} of {bytes} bytes into slot {slot}",
            path.display()
        );
        log::info!("{msg}");
        let joining = Joining {
            slot,
            leg,
            sb,
            tracked,
        };
        if self.is_frozen() {
            // md: nothing starts while frozen; `idle` lets it run.
            self.sync.owe_recovery(joining, regions);
            return Ok(format!("{msg} (held: sync_action is frozen)"));
        }
        if self.sync_progress().is_some() {
            // The array's thread started an owed sync meanwhile: the
            // recovery follows it.
            self.sync.owe_recovery(joining, regions);
            return Ok(format!("{msg} (after the sync running now)"));
        }
        self.sync.start(
            &self.sync_cx(),
            SyncAction::Recover { target: slot },
            regions,
            Some(joining),
        )?;
        Ok(msg)
    }

    /// Some in-sync leg is local (a file or a block device here).
    fn has_local_in_sync_leg(&self) -> bool {
        self.engine.slots().iter().any(|s| {
            s.state() == LegState::InSync
                && s.io().is_some_and(|io| !io.leg().locator().is_remote())
        })
    }

    /// md's `writemostly` / `-writemostly` to `dev-*/state`: the leg in
    /// `slot` is read only when no other in-sync leg remains (or as any
    /// leg again), and every member's superblock records it (md_update_sb).
    /// Refused while a resync is owed: reads are held to the leg the resync
    /// copies from, which the flag would change under them.
    pub fn set_write_mostly(&self, slot: usize, on: bool) -> Result<(), ArrayError> {
        if self.read_only {
            return Err(ArrayError::ReadOnly);
        }
        if self.needs_resync() {
            return Err(ArrayError::Busy(
                "a resync is owed (reads come from the leg it copies from until it ends); \
                 wait for it (mdfuse wait) and try again"
                    .into(),
            ));
        }
        let was = self.engine.set_write_mostly(slot, on)?;
        if was == on {
            return Ok(());
        }
        let name = self
            .leg_names()
            .get(slot)
            .cloned()
            .flatten()
            .unwrap_or_default();
        if let Err(e) = self.keeper.record_devflags() {
            let _ = self.engine.set_write_mostly(slot, was);
            return Err(e);
        }
        log::info!(
            "leg {name}: {}",
            if on {
                "write-mostly (read only when no other in-sync leg remains)"
            } else {
                "no longer write-mostly"
            }
        );
        Ok(())
    }

    /// Members assembled half-recovered resume their recovery (once a
    /// resync owed runs, by the array's thread): from their recovery_offset
    /// when the array was stopped clean, else from the start (writes in
    /// flight at the crash may have missed them below it).
    fn resume_recoveries(&self, asm: &Assembly) {
        let size = self.engine.size();
        for m in asm.members.iter().filter(|m| is_recovering(&m.sb)) {
            let from = if asm.was_clean {
                (m.sb.recovery_offset * 512).min(size)
            } else {
                0
            };
            let regions = match (self.bitmap(), m.sb.has_feature(FEATURE_RECOVERY_BITMAP)) {
                (Some(b), true) => regions_from(&self.dirty_regions(&b), from),
                _ => vec![Region {
                    offset: from,
                    len: size - from,
                }],
            };
            self.sync.owe_recovery(
                Joining {
                    slot: m.slot as usize,
                    leg: m.leg.clone(),
                    sb: m.sb.clone(),
                    tracked: true,
                },
                regions,
            );
        }
    }

    /// Checks, before anything is removed, that the faulty leg in `slot`
    /// can go out and come back (`dev-*/state` = `re-add`): the array is
    /// writable, no sync runs, and the leg's own superblock says it is this
    /// array's member of this slot with no newer events than the array.
    pub fn check_re_add(&self, slot: usize) -> Result<std::path::PathBuf, ArrayError> {
        use crate::format::superblock::DevRole;
        if self.read_only {
            return Err(ArrayError::ReadOnly);
        }
        if self.sync_progress().is_some() {
            return Err(ArrayError::Busy(
                "a sync is running; wait for it (mdfuse wait) or stop it (idle)".into(),
            ));
        }
        let s = &self.engine.slots()[slot];
        let io = s
            .io()
            .ok_or_else(|| ArrayError::Busy(format!("slot {slot} holds no leg")))?;
        let path = io.leg().path().to_path_buf();
        if s.state() != LegState::Faulty {
            return Err(ArrayError::Busy(format!(
                "{} is {}: only a faulty leg can be re-added",
                path.display(),
                s.state().md_word()
            )));
        }
        let current = self.keeper.current().ok_or(ArrayError::NoMemberLeft)?;
        // A remote leg's connection died with it: its superblock is read
        // over a new one (the server may be back).
        let probe;
        let leg = if io.leg().locator().is_remote() {
            probe = crate::io::leg::Leg::open(&path, io.leg().mode(), false, false)?;
            &probe
        } else {
            io.leg()
        };
        let sb = super::superblocks::read_superblock(leg)?.map_err(|source| {
            ArrayError::BadSuperblock {
                path: path.clone(),
                source,
            }
        })?;
        if sb.set_uuid != current.set_uuid || sb.own_role() != DevRole::Active(slot as u16) {
            return Err(ArrayError::NotAMember {
                path: path.clone(),
                why: format!("not this array's member of slot {slot} by its superblock"),
            });
        }
        if sb.events > current.events {
            return Err(ArrayError::Busy(format!(
                "{} has newer events ({}) than the array ({})",
                path.display(),
                sb.events,
                current.events
            )));
        }
        Ok(path)
    }

    /// A check or repair of the whole array.
    pub fn start_scrub(&self, action: SyncAction) -> Result<(), ArrayError> {
        let _config = self.config.lock();
        self.sync.start_scrub(&self.sync_cx(), action)
    }

    /// Starts a sync of `regions` in the background (one at a time, as md).
    pub fn start_sync(&self, action: SyncAction, regions: Vec<Region>) -> Result<(), ArrayError> {
        self.sync.start(&self.sync_cx(), action, regions, None)
    }

    /// md's sync_action writes `idle` and `frozen`: the running sync stops;
    /// `idle` lets an owed resync or recovery start again, `frozen` holds
    /// everything until `idle` (or a start) is written.
    pub fn set_sync_idle(&self, frozen: bool) {
        self.sync.set_idle(&self.sync_cx(), frozen)
    }

    /// md's `resync` and `recover` writes: unfreeze; an owed sync starts.
    pub fn request_owed_sync(&self) -> Result<(), ArrayError> {
        self.sync.request_owed(&self.sync_cx())
    }

    pub fn is_frozen(&self) -> bool {
        self.sync.is_frozen()
    }

    /// Stops a running sync (md: `idle`).
    pub fn stop_sync(&self) {
        self.sync.stop()
    }

    /// The running sync, if any.
    pub fn sync_progress(&self) -> Option<Arc<SyncProgress>> {
        self.sync.progress()
    }

    /// The running sync or, when none runs, the last one.
    pub fn last_sync_progress(&self) -> Option<Arc<SyncProgress>> {
        self.sync.last_progress()
    }

    /// The mismatches the last resync, check or repair found so far, in
    /// sectors (md's mismatch_cnt; a recovery leaves it).
    pub fn mismatch_cnt(&self) -> u64 {
        self.sync.mismatch_cnt()
    }

    pub fn sync_limits(&self) -> &Arc<Mutex<SpeedLimits>> {
        self.sync.limits()
    }

    /// True until a resync owed since an unclean stop has completed.
    pub fn needs_resync(&self) -> bool {
        self.sync.needs_resync()
    }

    pub fn engine(&self) -> &Arc<Raid1> {
        &self.engine
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Stops the array: flushes every leg, writes the bitmap and the
    /// superblocks clean (unless a resync is owed or the array is degraded,
    /// as md does). Safe to call more than once.
    pub fn stop(&self) -> Result<(), ArrayError> {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(mut t) = self.md_thread.lock().take() {
            t.stop();
        }
        // No bitmap change runs on, nor starts.
        let _config = self.config.lock();
        self.stop_sync();
        // No leg is read (or, by a read error's correction, written) after
        // the stop is recorded.
        self.engine.stop_readahead();
        let mut first_error = None;
        if let Err(e) = self.engine.flush() {
            log::error!("array {}: final flush: {e}", self.name);
            first_error.get_or_insert(ArrayError::from(e));
        }
        let bitmap = self.bitmap();
        if let Some(b) = &bitmap {
            if let Err(e) = b.write_clean() {
                log::error!("array {}: {e}", self.name);
                first_error.get_or_insert(e);
            }
        }
        if !self.read_only {
            if first_error.is_some() {
                log::warn!(
                    "array {}: stopped, but left marked active: the final flush failed",
                    self.name
                );
            } else if !self.needs_resync() && self.recorded_clean() {
                // md writes no superblock at a stop when nothing changed
                // since they last said clean (no write, or safe mode came
                // first).
                log::info!(
                    "array {}: stopped clean (events {})",
                    self.name,
                    self.keeper.events()
                );
            } else if !self.needs_resync() {
                // Also brings the bitmap header's events along (md_update_sb order).
                match self.keeper.mark_clean() {
                    Ok(events) => {
                        log::info!("array {}: stopped clean (events {events})", self.name)
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            } else {
                // Below the checkpoint the legs are in sync: resume there.
                let sectors = self.sync.resync_cp() / 512;
                if let Err(e) = self.keeper.record_resync_offset(sectors) {
                    first_error.get_or_insert(e);
                }
                log::warn!(
                    "array {}: stopped with a resync owed; it resumes at sector {sectors}",
                    self.name
                );
            }
        }
        if let Some(b) = &bitmap {
            if let Err(e) = b.release() {
                log::error!("array {}: {e}", self.name);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The superblocks already say clean and nothing was written since.
    fn recorded_clean(&self) -> bool {
        !self.engine.is_active()
            && self
                .keeper
                .current()
                .is_some_and(|sb| sb.resync_offset == crate::format::superblock::MAX_SECTOR)
    }

    /// Each slot's leg name (its file name, as md shows a device's kernel
    /// name), or None for an empty slot.
    pub fn leg_names(&self) -> Vec<Option<String>> {
        self.engine
            .slots()
            .iter()
            .map(|s| s.io().map(|io| io.leg().short_name()))
            .collect()
    }

    pub fn mdstat_view(&self) -> MdstatView {
        MdstatView {
            name: self.name.clone(),
            read_only: self.read_only,
            size_kib: self.engine.size() / 1024,
            raid_disks: self.raid_disks,
            legs: self
                .engine
                .slots()
                .iter()
                .zip(self.leg_names())
                .enumerate()
                .filter_map(|(i, (s, name))| {
                    Some(MdstatLeg {
                        name: name?,
                        slot: i,
                        faulty: s.state() == LegState::Faulty,
                        in_sync: s.state() == LegState::InSync,
                        volatile: s.io().is_some_and(|io| io.leg().is_volatile()),
                        write_mostly: s.is_write_mostly(),
                    })
                })
                .collect(),
            bitmap: self.bitmap().map(|b| b.mdstat()),
            sync: self.sync_progress().map(|p| MdstatSync {
                action: p.action.mdstat_word().to_string(),
                done_kib: p.done_bytes.load(Ordering::Relaxed) / 1024,
                total_kib: p.total_bytes / 1024,
                speed_kib_per_s: p.speed_kib(),
            }),
        }
    }
}

/// Ties a bitmap to the engine: an internal bitmap's pages go to the legs
/// the engine has in the array (a leg that refuses one is failed through
/// it), and a bit is cleared only once its chunk's writes are on the legs'
/// stable storage (the bitmap knows nothing of legs: a hook).
pub(super) fn bind_to_engine(b: &AttachedBitmap, engine: &Arc<Raid1>) {
    if let Some(store) = b.leg_store() {
        store.bind_engine(engine);
    }
    let weak = Arc::downgrade(engine);
    b.service()
        .set_durability_hook(Arc::new(move || match weak.upgrade() {
            // A flush that missed a leg (it failed, or was absent)
            // vouches for nothing there: no bit may be cleared.
            Some(engine) => match engine.flush_background() {
                Ok(true) => Ok(()),
                Ok(false) => Err("a leg missed the flush (the array is degraded)".into()),
                Err(e) => Err(e.into()),
            },
            None => Err("the array has stopped".into()),
        }));
}

fn log_errno(what: &str, e: &crate::raid1::EngineError) -> i32 {
    log::error!("{what}: {e}");
    e.errno()
}

impl ServedArray for RunningArray {
    fn size(&self) -> u64 {
        self.engine.size()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(
        &self,
        offset: u64,
        len: u64,
        direct: bool,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<(), i32> {
        let r = if direct {
            self.engine.read_direct(offset, len, |b| out(b))
        } else {
            self.engine.read(offset, len, |b| out(b))
        };
        r.map_err(|e| log_errno("read", &e))
    }

    fn plan_read(&self, offset: u64, len: u64, direct: bool) -> Option<PlannedRead> {
        self.engine.plan_read(offset, len, direct)
    }

    fn finish_read(&self, plan: PlannedRead, results: &[i32], buf: &mut [u8]) -> Result<(), i32> {
        self.engine
            .finish_read(plan, results, buf)
            .map_err(|e| log_errno("read", &e))
    }

    fn plan_write(
        &self,
        offset: u64,
        len: u64,
        durable: bool,
    ) -> Option<Result<PlannedWrite<'_>, i32>> {
        if self.read_only {
            return Some(Err(libc::EROFS));
        }
        self.engine
            .plan_write(offset, len, durable)
            .map(|r| r.map_err(|e| log_errno("write", &e)))
    }

    fn finish_write(
        &self,
        plan: PlannedWrite<'_>,
        results: &[i32],
        data: &[u8],
    ) -> Result<usize, i32> {
        self.engine
            .finish_write(plan, results, data)
            .map_err(|e| log_errno("write", &e))
    }

    fn write(&self, offset: u64, data: &[u8], durable: bool) -> Result<usize, i32> {
        if self.read_only {
            return Err(libc::EROFS);
        }
        self.engine
            .write(offset, data, durable)
            .map_err(|e| log_errno("write", &e))
    }

    fn flush(&self) -> Result<(), i32> {
        self.engine.flush().map_err(|e| log_errno("flush", &e))
    }

    fn mdstat(&self) -> String {
        render_mdstat(&self.mdstat_view())
    }

    fn control_files(&self) -> Vec<(String, super::served::ControlAccess)> {
        self.control_file_list()
    }

    fn control_read(&self, path: &str) -> Result<String, i32> {
        self.control_read_value(path).ok_or(libc::ENOENT)
    }

    fn control_write(&self, path: &str, value: &str) -> Result<(), i32> {
        self.control_write_value(path, value)
    }
}
