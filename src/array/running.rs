//! A running array: the engine, the superblock keeper and (when given) the
//! write-intent bitmap, served to the FUSE adapter, and its clean stop.

use super::assemble::Assembly;
use super::bitmap_attach::AttachedBitmap;
use super::error::ArrayError;
use super::superblocks::SuperblockKeeper;
use crate::bitmap::{WriteIntent, WriteIntentBitmap};
use crate::fuse_fs::ServedArray;
use crate::raid1::{
    ArrayEvents, EngineOptions, LegSpec, LegState, Raid1, Region, SpeedLimits, SyncAction,
    SyncEvents, SyncProgress, Syncer,
};
use crate::report::mdstat::{render_mdstat, MdstatLeg, MdstatSync, MdstatView};
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
    fn mark_active(&self) -> Result<(), String> {
        ArrayEvents::mark_active(&*self.keeper)
    }

    fn leg_failed(&self, slot: usize, reason: &str) {
        if let Some(b) = &self.bitmap {
            b.set_degraded(true);
        }
        self.keeper.leg_failed(slot, reason);
    }
}

/// What a sync reports back: chunks made identical (their bitmap bits may
/// go), and the end of a resync (the legs are identical everywhere).
struct SyncSink {
    engine: Arc<Raid1>,
    keeper: Arc<SuperblockKeeper>,
    bitmap: Option<Arc<WriteIntentBitmap>>,
    needs_resync: Arc<AtomicBool>,
}

impl SyncEvents for SyncSink {
    fn region_synced(&self, region: Region) {
        let Some(b) = &self.bitmap else { return };
        if self.engine.is_degraded() {
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
        if p.action == SyncAction::Resync && !p.interrupted.load(Ordering::Acquire) {
            self.needs_resync.store(false, Ordering::Release);
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

pub struct RunningArray {
    // Field order is drop order: the engine (and its legs' locks) goes last
    // but one, after the bitmap has been released by `stop`.
    syncer: Mutex<Option<Syncer>>,
    last_sync: Mutex<Option<Arc<SyncProgress>>>,
    sync_limits: Arc<Mutex<SpeedLimits>>,
    engine: Arc<Raid1>,
    keeper: Arc<SuperblockKeeper>,
    bitmap: Option<AttachedBitmap>,
    name: String,
    uuid: String,
    raid_disks: usize,
    leg_names: Vec<String>,
    read_only: bool,
    /// Legs may differ where writes were in flight at an unclean stop; until
    /// a resync, the array must not be recorded clean.
    needs_resync: Arc<AtomicBool>,
    /// Where an interrupted resync without a bitmap resumes (array bytes).
    resync_from: u64,
    stopped: AtomicBool,
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
            asm.members
                .iter()
                .map(|m| (m.leg.clone(), m.sb.clone(), true))
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
        let legs = asm
            .members
            .iter()
            .map(|m| LegSpec {
                leg: m.leg.clone(),
                data_offset: m.sb.data_offset * 512,
                state: LegState::InSync,
            })
            .collect();
        let engine = Arc::new(Raid1::new(
            legs,
            asm.array_sectors * 512,
            intent,
            sink,
            &opts.engine,
        )?);
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
            leg_names: asm
                .members
                .iter()
                .map(|m| {
                    m.path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| m.path.display().to_string())
                })
                .collect(),
            syncer: Mutex::new(None),
            last_sync: Mutex::new(None),
            sync_limits: Arc::new(Mutex::new(SpeedLimits::default())),
            engine,
            keeper,
            bitmap,
            name: asm.name.clone(),
            uuid: asm.uuid(),
            raid_disks: asm.raid_disks as usize,
            read_only: opts.read_only,
            needs_resync: Arc::new(AtomicBool::new(!asm.was_clean)),
            resync_from: asm.resync_from_sectors * 512,
            stopped: AtomicBool::new(false),
        });
        if array.needs_resync.load(Ordering::Acquire) && !opts.read_only {
            array.start_resync()?;
        }
        Ok(array)
    }

    /// After an unclean stop: copy from the first leg to the others what may
    /// differ: the chunks whose bits are set, or (without a bitmap) the whole
    /// array from where an interrupted resync stopped.
    fn start_resync(&self) -> Result<(), ArrayError> {
        let size = self.engine.size();
        let regions = match &self.bitmap {
            Some(b) => {
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
            None => vec![Region {
                offset: self.resync_from.min(size),
                len: size - self.resync_from.min(size),
            }],
        };
        let bytes: u64 = regions.iter().map(|r| r.len).sum();
        log::warn!(
            "array {}: not stopped cleanly: resyncing {bytes} bytes in {} region(s) from leg {}",
            self.name,
            regions.len(),
            self.leg_names.first().map(String::as_str).unwrap_or("?")
        );
        self.start_sync(SyncAction::Resync, regions)
    }

    /// Starts a sync in the background (one at a time, as md).
    pub fn start_sync(&self, action: SyncAction, regions: Vec<Region>) -> Result<(), ArrayError> {
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
            needs_resync: self.needs_resync.clone(),
        });
        let syncer = Syncer::start(
            self.engine.clone(),
            action,
            regions,
            self.sync_limits.clone(),
            sink,
        )
        .map_err(|e| ArrayError::Busy(format!("cannot start the {}: {e}", action.md_word())))?;
        *self.last_sync.lock() = Some(syncer.progress().clone());
        *slot = Some(syncer);
        Ok(())
    }

    /// A check or repair of the whole array.
    pub fn start_scrub(&self, action: SyncAction) -> Result<(), ArrayError> {
        let size = self.engine.size();
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

    /// The last sync's mismatch count, in sectors (md's mismatch_cnt).
    pub fn mismatch_cnt(&self) -> u64 {
        self.last_sync
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
        self.needs_resync.load(Ordering::Acquire)
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
        let interrupted = self.sync_progress();
        self.stop_sync();
        let mut first_error = None;
        if let Err(e) = self.engine.flush() {
            log::error!("array {}: final flush: {e}", self.name);
            first_error.get_or_insert(ArrayError::from(e));
        }
        let in_sync = !self.needs_resync.load(Ordering::Acquire) && first_error.is_none();
        if let Some(b) = &self.bitmap {
            if let Err(e) = b.write_clean() {
                log::error!("array {}: {e}", self.name);
                first_error.get_or_insert(e);
            }
        }
        if !self.read_only {
            if in_sync {
                // Also brings the bitmap header's events along (md_update_sb order).
                match self.keeper.mark_clean() {
                    Ok(events) => {
                        log::info!("array {}: stopped clean (events {events})", self.name)
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            } else if let (None, Some(p)) = (
                &self.bitmap,
                interrupted.filter(|p| p.action == SyncAction::Resync),
            ) {
                // Everything below the point reached is in sync: resume there.
                let sectors = p.done_bytes.load(Ordering::Relaxed) / 512;
                if let Err(e) = self.keeper.record_resync_offset(sectors) {
                    first_error.get_or_insert(e);
                }
                log::warn!(
                    "array {}: stopped during resync; it resumes at sector {sectors}",
                    self.name
                );
            } else {
                log::warn!(
                    "array {}: stopped, but left marked active: a resync is owed",
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
                .enumerate()
                .map(|(i, s)| MdstatLeg {
                    name: self.leg_names[i].clone(),
                    slot: i,
                    faulty: s.state() == LegState::Faulty,
                    in_sync: s.state() == LegState::InSync,
                })
                .collect(),
            bitmap: self.bitmap.as_ref().map(|b| b.mdstat()),
            sync: self.sync_progress().map(|p| MdstatSync {
                action: p.action.md_word().to_string(),
                done_kib: p.done_bytes.load(Ordering::Relaxed) / 1024,
                total_kib: p.total_bytes / 1024,
                speed_kib_per_s: p.speed_kib(),
            }),
        }
    }
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

    fn read(&self, offset: u64, len: u64, out: &mut dyn FnMut(&[u8])) -> Result<(), i32> {
        self.engine
            .read(offset, len, |b| out(b))
            .map_err(|e| log_errno("read", &e))
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<usize, i32> {
        if self.read_only {
            return Err(libc::EROFS);
        }
        self.engine
            .write(offset, data)
            .map_err(|e| log_errno("write", &e))
    }

    fn flush(&self) -> Result<(), i32> {
        self.engine.flush().map_err(|e| log_errno("flush", &e))
    }

    fn mdstat(&self) -> String {
        render_mdstat(&self.mdstat_view())
    }
}
