//! A running array: the engine, the superblock keeper and (when given) the
//! write-intent bitmap, served to the FUSE adapter, and its clean stop.

use super::assemble::Assembly;
use super::bitmap_attach::AttachedBitmap;
use super::error::ArrayError;
use super::superblocks::SuperblockKeeper;
use crate::bitmap::{WriteIntent, WriteIntentBitmap};
use crate::fuse_fs::ServedArray;
use crate::raid1::{ArrayEvents, EngineOptions, LegSpec, LegState, Raid1};
use crate::report::mdstat::{render_mdstat, MdstatLeg, MdstatView};
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

pub struct RunningArray {
    // Field order is drop order: the engine (and its legs' locks) goes last
    // but one, after the bitmap has been released by `stop`.
    engine: Raid1,
    keeper: Arc<SuperblockKeeper>,
    bitmap: Option<AttachedBitmap>,
    name: String,
    uuid: String,
    raid_disks: usize,
    leg_names: Vec<String>,
    read_only: bool,
    /// Legs may differ where writes were in flight at an unclean stop; until
    /// a resync, the array must not be recorded clean.
    needs_resync: AtomicBool,
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
        let engine = Raid1::new(legs, asm.array_sectors * 512, intent, sink, &opts.engine)?;
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
        Ok(Arc::new(RunningArray {
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
            engine,
            keeper,
            bitmap,
            name: asm.name.clone(),
            uuid: asm.uuid(),
            raid_disks: asm.raid_disks as usize,
            read_only: opts.read_only,
            needs_resync: AtomicBool::new(!asm.was_clean),
            stopped: AtomicBool::new(false),
        }))
    }

    pub fn engine(&self) -> &Raid1 {
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
            sync: None,
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
