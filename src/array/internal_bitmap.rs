//! Internal write-intent bitmaps (md's `MD_FEATURE_BITMAP_OFFSET`): the
//! bitmap lives on every leg, `bitmap_offset` signed sectors from that leg's
//! superblock, in the same layout as a bitmap file (256-byte header, then one
//! bit per chunk, in 4 KiB pages).
//!
//! - Reading: as md's `md_bitmap_read_sb`, the copy of the first in-sync
//!   member (by slot) that reads gives the header (the other in-sync
//!   copies add their bits: a superset); it is checked as hostile input
//!   (magic, version, chunk size, this array's uuid and size, and its place
//!   on every leg clear of the superblock, the data and the bad-block log).
//!   The service then trusts it by events/events_cleared as it trusts a file.
//! - Keeping: [`LegPageStore`] writes each page to every in-sync or
//!   recovering leg's copy, FUA, before the page's flush completes; a leg that
//!   does not take it is failed through the engine's fail path, and the page
//!   is good once every leg still in the array has it.
//!
//! The bitmap service knows nothing of legs: the store is built here and
//! handed to it.

use super::error::ArrayError;
use crate::bitmap::{BitmapError, PageStore};
use crate::format::bitmap::{BitmapSuper, BITMAP_MAJOR_CLUSTERED, BITMAP_PAGE_SIZE};
use crate::format::superblock::{Superblock, FEATURE_BITMAP_OFFSET};
use crate::io::aligned::AlignedBuf;
use crate::io::completion::{Completion, OpFailure};
use crate::io::leg::Leg;
use crate::raid1::{LegState, Raid1};
use crate::report::uuid_string;
use parking_lot::Mutex;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Most chunks an internal bitmap may have: its counters live in memory
/// (12 bytes a chunk). mdadm's default stays below 2^20.
pub const MAX_INTERNAL_CHUNKS: u64 = 1 << 24;

pub(super) fn refuse(path: &Path, what: impl Into<String>) -> ArrayError {
    ArrayError::InternalBitmap {
        path: path.to_owned(),
        what: what.into(),
    }
}

/// Bytes an internal bitmap of `sb` occupies on a leg: its file length
/// rounded up to whole 4 KiB pages (every page is written whole).
pub(super) fn on_disk_bytes(sb: &BitmapSuper) -> u64 {
    sb.file_len().div_ceil(BITMAP_PAGE_SIZE as u64) * BITMAP_PAGE_SIZE as u64
}

/// The byte offset of the internal bitmap on the leg of `leg_bytes` whose
/// superblock is `sb`, checked to hold `bytes` clear of the superblock, the
/// data area and the bad-block log.
pub fn place_on_leg(
    path: &Path,
    sb: &Superblock,
    leg_bytes: u64,
    bytes: u64,
) -> Result<u64, ArrayError> {
    let sectors = bytes.div_ceil(512);
    let start = sb
        .internal_bitmap_start(sectors, leg_bytes / 512)
        .map_err(|why| {
            refuse(
                path,
                format!(
                    "bitmap_offset {} from the superblock at sector {} does not fit: {why}",
                    sb.bitmap_offset, sb.super_offset
                ),
            )
        })?;
    Ok(start * 512)
}

/// Reads and checks the internal bitmap on `leg` (superblock `sb`): the
/// header, then the bits. `expect` is the array's (uuid, size in sectors)
/// when known (assembly), None for examine.
pub fn read_from_leg(
    leg: &Leg,
    sb: &Superblock,
    expect: Option<([u8; 16], u64)>,
) -> Result<(BitmapSuper, Vec<u8>), ArrayError> {
    let path = leg.path();
    if !sb.has_feature(FEATURE_BITMAP_OFFSET) {
        return Err(refuse(path, "its superblock has no internal bitmap"));
    }
    let page = BITMAP_PAGE_SIZE as u64;
    let start = place_on_leg(path, sb, leg.size(), page)?;
    let mut head = AlignedBuf::new(BITMAP_PAGE_SIZE);
    leg.read_at(head.as_mut_slice(), start)?;
    let bsb = BitmapSuper::parse(head.as_slice()).map_err(|e| {
        refuse(
            path,
            format!(
                "its header at byte {start} is not usable ({}): {e}",
                e.field()
            ),
        )
    })?;
    if bsb.version == BITMAP_MAJOR_CLUSTERED || bsb.nodes != 0 {
        return Err(refuse(
            path,
            format!(
                "it is a clustered bitmap (version {}, {} nodes); mdfuse serves arrays of one \
                 host only: assemble it with Linux md on a node of its cluster",
                bsb.version, bsb.nodes
            ),
        ));
    }
    if let Some((uuid, sectors)) = expect {
        if bsb.uuid != uuid {
            return Err(refuse(
                path,
                format!(
                    "its uuid {} is not this array's ({}); the leg's bitmap belongs to \
                     another array: recreate it (mdadm --grow --bitmap=none, then =internal)",
                    uuid_string(&bsb.uuid),
                    uuid_string(&uuid)
                ),
            ));
        }
        if bsb.sync_size != sectors {
            return Err(refuse(
                path,
                format!(
                    "its sync_size is {} sectors but the array has {sectors}",
                    bsb.sync_size
                ),
            ));
        }
    }
    let chunks = bsb.chunks();
    if chunks > MAX_INTERNAL_CHUNKS {
        return Err(refuse(
            path,
            format!(
                "it has {chunks} chunks of {} bytes; mdfuse keeps at most {MAX_INTERNAL_CHUNKS}: \
                 use a larger bitmap chunk (mdadm --grow --bitmap-chunk)",
                bsb.chunksize
            ),
        ));
    }
    let bytes = on_disk_bytes(&bsb);
    let start = place_on_leg(path, sb, leg.size(), bytes)?;
    let len = usize::try_from(bytes).map_err(|_| refuse(path, "too large to read"))?;
    let mut all = AlignedBuf::new(len);
    leg.read_at(all.as_mut_slice(), start)?;
    // file_len <= bytes, and at least the header's 256 bytes.
    let file_len = bsb.file_len() as usize;
    let bits = all.as_slice()[crate::format::bitmap::BITMAP_SUPER_SIZE..file_len].to_vec();
    Ok((bsb, bits))
}

/// One leg's copy of the internal bitmap.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) slot: usize,
    pub(super) leg: Arc<Leg>,
    /// Byte offset of the copy's page 0 on the leg.
    pub(super) start: u64,
}

/// Writes bitmap pages to every in-sync or recovering leg's copy (md's
/// write_sb_page over the array's non-faulty rdevs), each FUA: a page's
/// completion means it is durable on every leg still in the array.
pub struct LegPageStore {
    targets: Mutex<Vec<Target>>,
    engine: Mutex<Option<Weak<Raid1>>>,
    /// The bitmap's length on disk, for a leg that joins.
    bytes: u64,
}

impl LegPageStore {
    /// A store writing a bitmap of `bytes` to each of `targets` (the
    /// in-sync legs' copies) once it is bound to the engine.
    pub(super) fn new(targets: Vec<Target>, bytes: u64) -> LegPageStore {
        LegPageStore {
            targets: Mutex::new(targets),
            engine: Mutex::new(None),
            bytes,
        }
    }

    /// Pages go to the engine's legs in these slots once it is bound; a leg
    /// whose slot is neither in sync nor recovering is skipped.
    pub fn bind_engine(&self, engine: &Arc<Raid1>) {
        *self.engine.lock() = Some(Arc::downgrade(engine));
    }

    /// A leg joins (add or re-add): its copy is written first with every
    /// bit set (a superset of any later image, so never too few), then it
    /// takes every later page.
    pub fn add_leg(
        &self,
        slot: usize,
        leg: Arc<Leg>,
        sb: &Superblock,
        header: &BitmapSuper,
    ) -> Result<(), ArrayError> {
        let start = place_on_leg(leg.path(), sb, leg.size(), self.bytes)?;
        let len = usize::try_from(self.bytes).map_err(|_| refuse(leg.path(), "too large"))?;
        let mut image = AlignedBuf::new(len);
        image.as_mut_slice().fill(0xff);
        let file_len = header.file_len() as usize;
        image.as_mut_slice()[file_len..].fill(0);
        image.as_mut_slice()[..crate::format::bitmap::BITMAP_SUPER_SIZE]
            .copy_from_slice(&header.to_bytes());
        leg.write_at_durable(image.as_slice(), start)?;
        let mut t = self.targets.lock();
        t.retain(|x| x.slot != slot);
        t.push(Target { slot, leg, start });
        Ok(())
    }

    /// A leg leaves the array (md's --remove): its copy is no longer
    /// written and the leg is let go (its file closed with the engine's).
    pub fn remove_leg(&self, slot: usize) {
        self.targets.lock().retain(|x| x.slot != slot);
    }

    /// Fails `slot` through the engine (md_error) from another thread:
    /// recording the failure updates the bitmap's header, whose page may be
    /// the one this store is writing, and the caller may hold the engine's
    /// activation lock (a header written while the array is marked active).
    /// Waits a moment for the leg to turn faulty (later writes then miss it
    /// and wait for its record, as after a data write error) or for the
    /// engine's refusal (the last in-sync leg: an error). A leg that turns
    /// faulty later is covered at the next assembly, which takes the union
    /// of the in-sync legs' copies.
    fn fail(engine: &Arc<Raid1>, slot: usize, reason: String) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let e = engine.clone();
        let spawned = std::thread::Builder::new()
            .name("bitmap-fail".into())
            .spawn(move || {
                let r = e.fail_leg(slot, &reason).map_err(|e| e.to_string());
                if let Err(why) = &r {
                    log::error!("leg {slot}: its internal bitmap copy is not written: {why}");
                }
                let _ = tx.send(r);
            });
        if let Err(e) = spawned {
            return Err(format!("cannot start a thread to fail the leg: {e}"));
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(50);
        while std::time::Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(1)) {
                Ok(r) => return r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if engine
                        .slots()
                        .get(slot)
                        .is_some_and(|s| s.state() == LegState::Faulty)
                    {
                        return Ok(());
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the failing thread ended without an answer".into())
                }
            }
        }
        Ok(())
    }
}

impl PageStore for LegPageStore {
    fn submit_page(&self, page_index: usize, bytes: &[u8]) -> Arc<Completion> {
        let done = Completion::new(1);
        let fail = |what: String, errno: i32| OpFailure {
            target: page_index,
            what,
            errno,
        };
        let mut buf = AlignedBuf::new(BITMAP_PAGE_SIZE);
        let len = bytes.len().min(BITMAP_PAGE_SIZE);
        buf.as_mut_slice()[..len].copy_from_slice(&bytes[..len]);
        let page_off = page_index as u64 * BITMAP_PAGE_SIZE as u64;
        if page_off + BITMAP_PAGE_SIZE as u64 > self.bytes {
            done.finish(Err(fail(
                format!("internal bitmap page {page_index} is beyond the bitmap"),
                libc::EINVAL,
            )));
            return done;
        }
        let engine = self.engine.lock().as_ref().and_then(Weak::upgrade);
        let targets = self.targets.lock().clone();
        // Pages taken by in-sync legs: with none, the page fails (a
        // recovering leg's copy is never the one read).
        let mut written = 0usize;
        for t in targets {
            let mut in_sync = true;
            if let Some(engine) = &engine {
                let state = engine
                    .slots()
                    .get(t.slot)
                    .filter(|s| s.io().is_some_and(|io| Arc::ptr_eq(io.leg(), &t.leg)))
                    .map(|s| s.state());
                match state {
                    Some(LegState::InSync) => {}
                    Some(LegState::Recovering) => in_sync = false,
                    _ => continue,
                }
            }
            let at = t.start + page_off;
            let Err(e) = t.leg.write_at_durable(buf.as_slice(), at) else {
                written += usize::from(in_sync);
                continue;
            };
            self.targets.lock().retain(|x| !Arc::ptr_eq(&x.leg, &t.leg));
            let reason = format!("its internal bitmap page {page_index} cannot be written: {e}");
            let failed = match &engine {
                Some(engine) => Self::fail(engine, t.slot, reason),
                None => Err("the array is not running".into()),
            };
            if let Err(why) = failed {
                done.finish(Err(fail(
                    format!(
                        "internal bitmap page {page_index} on leg {} (byte {at}): {e}; the leg \
                         cannot be failed: {why}",
                        t.leg.path().display()
                    ),
                    e.errno(),
                )));
                return done;
            }
        }
        if written == 0 {
            done.finish(Err(fail(
                format!("internal bitmap page {page_index}: no in-sync leg took it"),
                libc::EIO,
            )));
            return done;
        }
        done.finish(Ok(()));
        done
    }

    fn flush_device(&self) -> Result<(), BitmapError> {
        // Every page write is FUA.
        Ok(())
    }

    fn describe(&self) -> String {
        "internal bitmap (on the legs)".to_string()
    }
}

/// The internal bitmap of the leg at `path`, for `mdfuse examine-bitmap`:
/// None when the leg has no md superblock with an internal bitmap.
/// Read with O_DIRECT where the leg allows it: a running array's FUA
/// writes bypass the page cache.
pub fn examine_leg(path: &Path) -> Option<Result<(BitmapSuper, Vec<u8>), ArrayError>> {
    use crate::io::leg::IoMode;
    let open = |mode| Leg::open(path, mode, false, false).ok();
    let buffered = open(IoMode::Buffered)?;
    let sb = super::superblocks::read_superblock(&buffered).ok()?.ok()?;
    if !sb.has_feature(FEATURE_BITMAP_OFFSET) {
        return None;
    }
    if let Some(direct) = open(IoMode::Direct) {
        if let Ok(r) = read_from_leg(&direct, &sb, None) {
            return Some(Ok(r));
        }
    }
    Some(read_from_leg(&buffered, &sb, None))
}

/// Writes a new internal bitmap (header `bsb`, every bit clear: the legs are
/// created identical) to `leg` at its superblock's place. Before the
/// superblock, so no superblock ever names a bitmap that is not there.
pub fn write_new(leg: &Leg, sb: &Superblock, bsb: &BitmapSuper) -> Result<(), ArrayError> {
    let bytes = on_disk_bytes(bsb);
    let start = place_on_leg(leg.path(), sb, leg.size(), bytes)?;
    let len = usize::try_from(bytes).map_err(|_| refuse(leg.path(), "too large"))?;
    let mut image = AlignedBuf::new(len);
    image.as_mut_slice()[..crate::format::bitmap::BITMAP_SUPER_SIZE]
        .copy_from_slice(&bsb.to_bytes());
    leg.write_at_durable(image.as_slice(), start)?;
    Ok(())
}
