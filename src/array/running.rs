//! A running array: the engine, the superblock keeper and (when given) the
//! write-intent bitmap, served to the FUSE adapter, and its clean stop.

use super::assemble::Assembly;
use super::bitmap_attach::AttachedBitmap;
use super::error::ArrayError;
use super::md_thread::MdThread;
use super::served::ServedArray;
use super::superblocks::is_recovering;
use super::superblocks::SuperblockKeeper;
use super::sync_control::{regions_from, Joining, PendingRecovery, SyncControl};
use crate::bitmap::{WriteIntent, WriteIntentBitmap};
use crate::format::superblock::{mdadm_layout, MetadataVersion, FEATURE_RECOVERY_BITMAP};
use crate::raid1::{
    ArrayEvents, EngineOptions, LegSpec, LegState, Raid1, RecordError, Region, SpeedLimits,
    SyncAction, SyncProgress, Syncer,
};
use crate::report::mdstat::{render_mdstat, MdstatLeg, MdstatSync, MdstatView};
use crate::report::uuid_string;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub read_only: bool,
    pub engine: EngineOptions,
}

/// Where the engine's events go: the bitmap first (so no bit is cleared once
/// a leg is gone), then the superblocks.
struct EventSink {
    keeper: Arc<SuperblockKeeper>,
    bitmap: Option<Arc<WriteIntentBitmap>>,
}

impl ArrayEvents for EventSink {
    fn mark_active(&self) -> Result<(), RecordError> {
        ArrayEvents::mark_active(&*self.keeper)
    }

    fn leg_failed(&self, slot: usize, reason: &str) -> Result<(), RecordError> {
        if let Some(b) = &self.bitmap {
            b.set_degraded(true);
        }
        self.keeper.leg_failed(slot, reason)
    }

    fn take_unwritten(&self) -> Vec<(usize, String)> {
        self.keeper.take_unwritten()
    }
}

pub struct RunningArray {
    // Field order is drop order: the engine (and its legs' locks) goes last
    // but one, after the bitmap has been released by `stop`.
    pub(super) syncer: Mutex<Option<Syncer>>,
    pub(super) last_sync: Mutex<Option<Arc<SyncProgress>>>,
    /// The last resync, check or repair: md resets `mismatch_cnt` when one
    /// starts, not when a recovery does.
    pub(super) last_scrub: Mutex<Option<Arc<SyncProgress>>>,
    pub(super) sync_limits: Arc<Mutex<SpeedLimits>>,
    /// Whether sync_speed_min and sync_speed_max were set for this array
    /// ("local") or are the defaults ("system"), as md tells them apart.
    pub(super) sync_limits_local: Mutex<[bool; 2]>,
    pub(super) engine: Arc<Raid1>,
    pub(super) keeper: Arc<SuperblockKeeper>,
    pub(super) bitmap: Option<AttachedBitmap>,
    pub(super) name: String,
    pub(super) uuid: String,
    pub(super) raid_disks: usize,
    pub(super) read_only: bool,
    /// Frozen, owed resync and recovery, checkpoint, safe mode delay.
    pub(super) control: Arc<SyncControl>,
    pub(super) md_thread: Mutex<Option<MdThread>>,
    pub(super) stopped: AtomicBool,
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
        let service = bitmap.as_ref().map(|b| b.service().clone());
        if let Some(service) = &service {
            // The bitmap's header follows the array's events (md_bitmap_update_sb).
            let service = service.clone();
            keeper.set_on_events(Box::new(move |events| {
                if let Err(e) = service.update_header(events) {
                    log::error!("{e}");
                }
            }));
        }
        let intent = service.clone().map(|s| s as Arc<dyn WriteIntent>);
        let sink = Arc::new(EventSink {
            keeper: keeper.clone(),
            bitmap: service,
        });
        let mut legs: Vec<Option<LegSpec>> = (0..asm.raid_disks).map(|_| None).collect();
        for m in &asm.members {
            legs[m.slot as usize] = Some(LegSpec {
                leg: m.leg.clone(),
                data_offset: m.sb.data_offset * 512,
                state: if is_recovering(&m.sb) {
                    LegState::Recovering
                } else {
                    LegState::InSync
                },
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
        engine
            .start_readahead()
            .map_err(|e| ArrayError::Engine(crate::raid1::EngineError::Threads(e)))?;
        if let Some(b) = &bitmap {
            // A bit is cleared only once its chunk's writes are on the legs'
            // stable storage (the bitmap knows nothing of legs: a hook).
            let weak = Arc::downgrade(&engine);
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
        let array = Arc::new(RunningArray {
            syncer: Mutex::new(None),
            last_sync: Mutex::new(None),
            last_scrub: Mutex::new(None),
            sync_limits: Arc::new(Mutex::new(SpeedLimits::default())),
            sync_limits_local: Mutex::new([false; 2]),
            engine,
            keeper,
            bitmap,
            name: asm.name.clone(),
            uuid: asm.uuid(),
            raid_disks: asm.raid_disks as usize,
            read_only: opts.read_only,
            control: Arc::new(SyncControl::new(
                !asm.was_clean,
                if asm.was_clean {
                    asm.array_sectors * 512
                } else {
                    asm.resync_from_sectors * 512
                },
            )),
            md_thread: Mutex::new(None),
            stopped: AtomicBool::new(false),
        });
        array.resume_recoveries(&asm);
        if array.needs_resync() && !opts.read_only {
            array.start_resync()?;
        }
        let thread =
            MdThread::start(Arc::downgrade(&array)).map_err(|source| ArrayError::Thread {
                what: "the array's thread".into(),
                source,
            })?;
        *array.md_thread.lock() = Some(thread);
        Ok(array)
    }

    /// The bitmap's dirty chunks as regions (what a bitmap-guided resync or
    /// recovery copies).
    pub(super) fn dirty_regions(&self, b: &AttachedBitmap) -> Vec<Region> {
        let size = self.engine.size();
        let chunk = b.service().chunk_size() as u64;
        let mut regions: Vec<Region> = Vec::new();
        for c in b.service().dirty_chunks() {
            let offset = c * chunk;
            let len = chunk.min(size - offset);
            match regions.last_mut() {
                Some(r) if r.offset + r.len == offset => r.len += len,
                _ => regions.push(Region { offset, len }),
            }
        }
        regions
    }

    /// md's `--fail`: the leg becomes faulty, the array goes on degraded.
    pub fn fail(&self, slot: usize) -> Result<(), ArrayError> {
        self.engine.fail_leg(slot, "failed by the operator")?;
        Ok(())
    }

    /// md's `--remove`: a faulty leg leaves the array (its file is closed).
    pub fn remove(&self, slot: usize) -> Result<(), ArrayError> {
        if let Some(p) = self.sync_progress() {
            if p.action == (SyncAction::Recover { target: slot }) {
                self.stop_sync();
            }
        }
        let leg = self.engine.detach(slot)?;
        self.keeper.remove(slot)?;
        if let Some(b) = &self.bitmap {
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
        use crate::format::superblock::{DevRole, Superblock};
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
        let former = match &found {
            Ok(sb) if sb.set_uuid == current.set_uuid => match sb.own_role() {
                DevRole::Active(slot)
                    if (slot as usize) < self.raid_disks
                        && self.engine.slots()[slot as usize].state() == LegState::Missing =>
                {
                    Some((slot as usize, sb.clone()))
                }
                _ => None,
            },
            Ok(sb) => {
                return Err(ArrayError::HasSuperblock {
                    path: path.to_owned(),
                    uuid: uuid_string(&sb.set_uuid),
                    name: sb.name(),
                })
            }
            Err(_) => None,
        };
        if former.is_none() && re_add_only {
            return Err(ArrayError::NotAMember {
                path: path.to_owned(),
                why: "not a former member of this array that can go back into an empty slot; \
                      use add for a new leg"
                    .into(),
            });
        }
        if let Some((_, sb)) = &former {
            super::assemble::check_former_member(path, leg.size(), sb, &current)?;
            if sb.events > current.events {
                return Err(ArrayError::Busy(format!(
                    "{} has newer events ({}) than the array ({}): it was written apart from it; \
                     refusing to overwrite it",
                    path.display(),
                    sb.events,
                    current.events
                )));
            }
        }
        let tracked = former.is_some();
        let (slot, sb, bitmap_guided, how) = match former {
            Some((slot, sb)) => {
                // md's rule; a leg whose own earlier recovery was a full one
                // (no MD_FEATURE_RECOVERY_BITMAP) is not guided by the bitmap.
                // A leg that went on apart from the array (each records
                // the other gone) shares no history the bitmap describes.
                let apart = super::assemble::diverged(&sb, &current);
                let bitmap_guided = !apart
                    && self.bitmap.as_ref().is_some_and(|b| {
                        sb.events >= b.service().header().events_cleared
                            && (!is_recovering(&sb) || sb.has_feature(FEATURE_RECOVERY_BITMAP))
                    });
                let how = if bitmap_guided {
                    "re-added: bitmap-guided recovery"
                } else if apart {
                    "re-added: full recovery (its history diverged from the array's)"
                } else {
                    "re-added: full recovery (its events are older than the bitmap's events_cleared, or no bitmap)"
                };
                (slot, sb, bitmap_guided, how)
            }
            None => {
                let slot = (0..self.raid_disks)
                    .find(|&s| self.engine.slots()[s].state() == LegState::Missing)
                    .ok_or_else(|| {
                        ArrayError::Busy(format!(
                            "no empty slot: all {} slots hold a leg; remove a faulty one first",
                            self.raid_disks
                        ))
                    })?;
                let mut sb: Superblock = current.clone();
                sb.dev_number = self.keeper.free_dev_number();
                sb.device_uuid = super::create::random_uuid()?;
                let needed = (sb.data_offset + sb.size) * 512;
                let too_small = || ArrayError::LegTooSmall {
                    path: path.to_owned(),
                    size: leg.size(),
                    needed,
                };
                // The array's metadata version, placed on this leg as mdadm
                // --add places it (1.0: the superblock at this leg's end).
                let version = MetadataVersion::of_super_offset(current.super_offset);
                let layout = mdadm_layout(version, leg.size() / 512, sb.size, sb.data_offset)
                    .ok_or_else(too_small)?;
                sb.super_offset = layout.super_offset;
                sb.data_size = layout.data_size;
                sb.bblog_size = layout.bblog_size;
                sb.bblog_offset = layout.bblog_offset;
                let _ = sb.set_role(sb.dev_number, DevRole::Spare);
                if sb.data_size < sb.size {
                    return Err(too_small());
                }
                super::create::check_blank(&leg, false)?;
                // Written now as a spare, so it is never taken for a member
                // before its recovery ends.
                super::superblocks::write_superblock(&leg, &sb)?;
                (slot, sb, false, "added: full recovery")
            }
        };
        let leg = Arc::new(leg);
        self.engine.attach(
            slot,
            LegSpec {
                leg: leg.clone(),
                data_offset: sb.data_offset * 512,
                state: LegState::Recovering,
            },
        )?;
        // Writes that chose their legs before the attach do not reach the
        // new leg: let them end (their bits are then set, and kept while
        // degraded) before the dirty chunks are listed. Later writes reach
        // the recovering leg.
        self.engine.wait_for_writes_in_flight();
        let regions = match (&self.bitmap, bitmap_guided) {
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
                let _ = self.keeper.remove(slot);
                return Err(e);
            }
        }
        if let Some(b) = &self.bitmap {
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
            self.control
                .pending_recovery
                .lock()
                .push(PendingRecovery { joining, regions });
            return Ok(format!("{msg} (held: sync_action is frozen)"));
        }
        if self.sync_progress().is_some() {
            // The array's thread started an owed sync meanwhile: the
            // recovery follows it.
            self.control
                .pending_recovery
                .lock()
                .push(PendingRecovery { joining, regions });
            return Ok(format!("{msg} (after the sync running now)"));
        }
        self.start_sync_joining(SyncAction::Recover { target: slot }, regions, Some(joining))?;
        Ok(msg)
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
            let regions = match (&self.bitmap, m.sb.has_feature(FEATURE_RECOVERY_BITMAP)) {
                (Some(b), true) => regions_from(&self.dirty_regions(b), from),
                _ => vec![Region {
                    offset: from,
                    len: size - from,
                }],
            };
            self.control.pending_recovery.lock().push(PendingRecovery {
                joining: Joining {
                    slot: m.slot as usize,
                    leg: m.leg.clone(),
                    sb: m.sb.clone(),
                    tracked: true,
                },
                regions,
            });
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
        let size = self.engine.size();
        // md: a requested check or repair unfreezes.
        self.control.frozen.store(false, Ordering::Release);
        self.start_sync(
            action,
            vec![Region {
                offset: 0,
                len: size,
            }],
        )
    }

    /// Stops a running sync (md: `idle`).
    pub fn stop_sync(&self) {
        if let Some(mut s) = self.syncer.lock().take() {
            s.stop();
        }
    }

    /// The running sync, if any.
    pub fn sync_progress(&self) -> Option<Arc<SyncProgress>> {
        self.syncer
            .lock()
            .as_ref()
            .map(|s| s.progress().clone())
            .filter(|p| !p.finished.load(Ordering::Acquire))
    }

    /// The running sync or, when none runs, the last one.
    pub fn last_sync_progress(&self) -> Option<Arc<SyncProgress>> {
        self.last_sync.lock().clone()
    }

    /// The mismatches the last resync, check or repair found so far, in
    /// sectors (md's mismatch_cnt; a recovery leaves it).
    pub fn mismatch_cnt(&self) -> u64 {
        self.last_scrub
            .lock()
            .as_ref()
            .map(|p| p.mismatch_sectors.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    pub fn sync_limits(&self) -> &Arc<Mutex<SpeedLimits>> {
        &self.sync_limits
    }

    /// True until a resync owed since an unclean stop has completed.
    pub fn needs_resync(&self) -> bool {
        self.control.needs_resync.load(Ordering::Acquire)
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
        self.stop_sync();
        // No leg is read (or, by a read error's correction, written) after
        // the stop is recorded.
        self.engine.stop_readahead();
        let mut first_error = None;
        if let Err(e) = self.engine.flush() {
            log::error!("array {}: final flush: {e}", self.name);
            first_error.get_or_insert(ArrayError::from(e));
        }
        if let Some(b) = &self.bitmap {
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
                let sectors = self.control.resync_cp.load(Ordering::Acquire) / 512;
                if let Err(e) = self.keeper.record_resync_offset(sectors) {
                    first_error.get_or_insert(e);
                }
                log::warn!(
                    "array {}: stopped with a resync owed; it resumes at sector {sectors}",
                    self.name
                );
            }
        }
        if let Some(b) = &self.bitmap {
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
            .map(|s| s.io().map(|io| leg_name(io.leg().path())))
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
                    })
                })
                .collect(),
            bitmap: self.bitmap.as_ref().map(|b| b.mdstat()),
            sync: self.sync_progress().map(|p| MdstatSync {
                action: p.action.mdstat_word().to_string(),
                done_kib: p.done_bytes.load(Ordering::Relaxed) / 1024,
                total_kib: p.total_bytes / 1024,
                speed_kib_per_s: p.speed_kib(),
            }),
        }
    }
}

/// A leg's short name: its file name, or for an NBD URI a file-name-safe
/// name derived from it (host, port, export).
pub fn leg_name(path: &std::path::Path) -> String {
    if let Ok(l @ crate::io::leg::Locator::Nbd(_)) = crate::io::leg::Locator::parse(path) {
        return l.short_name();
    }
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
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
