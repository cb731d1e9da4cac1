//! Attaching the write-intent bitmap file to an assembled array: checks,
//! reading only, that it belongs to the array, does not live on it and can
//! be written raw; then protects it, resolves and verifies its block map, and
//! starts the service over raw device writes (or, only when asked, over
//! ordinary file I/O). A refused attach leaves the file as it was.

use super::assemble::Assembly;
use super::error::ArrayError;
use crate::bitmap::{
    load_bitmap_file, BitmapOptions, FilePageStore, PageStore, RawPageStore, WriteIntentBitmap,
};
use crate::blockmap::{
    backing_chain, check_device_writable, check_protectable, protect, resolve, FileGuard, RawWriter,
};
use crate::format::bitmap::{BitmapSuper, BITMAP_SUPER_SIZE};
use crate::report::mdstat::MdstatBitmap;
use crate::report::uuid_string;
use parking_lot::Mutex;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How bitmap pages reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitmapIo {
    /// Raw O_DIRECT writes to the block device at the file's verified sectors.
    Raw,
    /// Ordinary writes to the file plus fdatasync: for places without raw
    /// device access (containers). Only when asked for.
    FileIo,
}

#[derive(Debug, Clone)]
pub struct BitmapAttachOptions {
    pub path: PathBuf,
    pub io: BitmapIo,
    /// Overrides the file's daemon_sleep as the idle time before a bit is cleared.
    pub clear_delay: Option<Duration>,
}

const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

pub struct AttachedBitmap {
    service: Arc<WriteIntentBitmap>,
    raw: Option<Arc<RawPageStore>>,
    /// Protection (raw mode: flock + immutable) or the lock alone (file I/O).
    guard: Mutex<Option<Protection>>,
    path: PathBuf,
    note: Option<String>,
}

enum Protection {
    Guard(FileGuard),
    Lock(#[allow(dead_code)] std::fs::File),
}

fn bitmap_error(path: &Path, what: impl Into<String>) -> ArrayError {
    ArrayError::BitmapFile {
        path: path.to_owned(),
        what: what.into(),
    }
}

/// Refuses a bitmap file that lives on the array itself: on a filesystem
/// whose device (`st_dev`) is one of the legs or is backed (through loop
/// devices) by one of the legs, or by a file served by FUSE (an mdfuse
/// image). Reads only.
fn check_not_on_array(path: &Path, st_dev: u64, asm: &Assembly) -> Result<(), ArrayError> {
    let legs: Vec<(PathBuf, u64, u64, u64)> = asm
        .members
        .iter()
        .filter_map(|m| {
            std::fs::metadata(&m.path)
                .ok()
                .map(|md| (m.path.clone(), md.dev(), md.ino(), md.rdev()))
        })
        .collect();
    if let Some(leg) = legs.iter().find(|l| l.3 != 0 && l.3 == st_dev) {
        return Err(bitmap_error(
            path,
            format!(
                "it lives on leg {} itself; put it on a filesystem outside the array",
                leg.0.display()
            ),
        ));
    }
    for backing in backing_chain(st_dev) {
        if let Some(leg) = legs.iter().find(|l| {
            (l.1, l.2) == (backing.st_dev, backing.st_ino) || (l.3 != 0 && l.3 == backing.st_dev)
        }) {
            return Err(bitmap_error(
                path,
                format!(
                    "it lives inside the array: its filesystem is on {}, backed by leg {}; \
                     put it on a filesystem outside the array",
                    backing.loop_device.display(),
                    leg.0.display()
                ),
            ));
        }
        if on_fuse(&backing.path) {
            return Err(bitmap_error(
                path,
                format!(
                    "it lives inside a FUSE-served image ({} via {}), such as an mdfuse array; \
                     put it on a filesystem outside any array",
                    backing.path.display(),
                    backing.loop_device.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The header must be this array's: its UUID and its size.
fn check_belongs(path: &Path, sb: &BitmapSuper, asm: &Assembly) -> Result<(), ArrayError> {
    if sb.uuid != asm.set_uuid {
        return Err(bitmap_error(
            path,
            format!(
                "its uuid says it belongs to array {}, not to this array ({}); give this array's bitmap file",
                uuid_string(&sb.uuid),
                asm.uuid()
            ),
        ));
    }
    if sb.sync_size != asm.array_sectors {
        return Err(bitmap_error(
            path,
            format!(
                "its sync_size is {} sectors but the array has {}; it was made for another size",
                sb.sync_size, asm.array_sectors
            ),
        ));
    }
    Ok(())
}

fn on_fuse(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the struct on success.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == FUSE_SUPER_MAGIC }
}

fn lock_only(path: &Path) -> Result<std::fs::File, ArrayError> {
    let f =
        std::fs::File::open(path).map_err(|e| bitmap_error(path, format!("cannot open: {e}")))?;
    // SAFETY: flock on a valid fd.
    if unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } != 0
    {
        return Err(bitmap_error(
            path,
            "it is in use by another mdfuse (locked)",
        ));
    }
    Ok(f)
}

pub fn attach(opts: &BitmapAttachOptions, asm: &Assembly) -> Result<AttachedBitmap, ArrayError> {
    let path = &opts.path;
    // Every read-only check first: a refused mount must leave the file as it
    // was (bytes, attributes, ctime), and protecting it changes its flags.
    let (sb, _) = load_bitmap_file(path)?;
    check_belongs(path, &sb, asm)?;
    // With ordinary file I/O too: a bitmap inside the array would be written
    // through the array it describes.
    let st_dev = std::fs::metadata(path)
        .map_err(|e| bitmap_error(path, format!("cannot stat: {e}")))?
        .dev();
    check_not_on_array(path, st_dev, asm)?;
    let planned = match opts.io {
        BitmapIo::Raw => {
            let map = resolve(path)?;
            check_protectable(path)?;
            check_device_writable(&map)?;
            Some(map)
        }
        BitmapIo::FileIo => None,
    };
    // Then protect, so the map cannot change once verified, and read the
    // file again: what is used is what the protected file holds.
    let protection = match opts.io {
        BitmapIo::Raw => {
            let mut guard = protect(path)?;
            if guard.was_already_immutable() {
                // We hold the lock, so no live mdfuse set it: an earlier one crashed.
                log::warn!(
                    "bitmap {}: immutable flag left set (an earlier mdfuse did not stop cleanly); taking it over",
                    path.display()
                );
                guard.adopt_immutable();
            }
            Protection::Guard(guard)
        }
        BitmapIo::FileIo => Protection::Lock(lock_only(path)?),
    };
    let (sb, bits) = load_bitmap_file(path)?;
    check_belongs(path, &sb, asm)?;
    let (store, raw, note): (
        Arc<dyn PageStore>,
        Option<Arc<RawPageStore>>,
        Option<String>,
    ) = match planned {
        Some(planned) => {
            let map = resolve(path)?;
            if map != planned {
                return Err(bitmap_error(
                    path,
                    "its blocks moved while it was being checked; stop whatever rewrites it and retry",
                ));
            }
            // The proof by markers keeps the header: a crash in it leaves
            // only extra dirty bits.
            let writer = RawWriter::open_keeping(
                map,
                BITMAP_SUPER_SIZE as u64,
                crate::blockmap::DEFAULT_IO_THREADS,
            )?;
            let map = writer.map();
            log::info!(
                "bitmap {}: {} bytes in {} extent(s) on {}, verified; pages are written raw",
                path.display(),
                map.file_len(),
                map.extents().len(),
                map.device().display()
            );
            let raw = Arc::new(RawPageStore::new(writer));
            (raw.clone(), Some(raw), None)
        }
        None => {
            log::warn!(
                "bitmap {}: using ordinary file I/O (--bitmap-file-io), not raw device writes",
                path.display()
            );
            (
                Arc::new(FilePageStore::open(path)?),
                None,
                Some("file I/O".to_string()),
            )
        }
    };
    let mut bopts = BitmapOptions::for_super(&sb);
    if let Some(d) = opts.clear_delay {
        bopts.clear_delay = d;
    }
    bopts.array_events = Some(asm.events);
    let service = Arc::new(WriteIntentBitmap::new(sb, &bits, store, bopts)?);
    if asm.is_degraded() {
        service.set_degraded(true);
    }
    Ok(AttachedBitmap {
        service,
        raw,
        guard: Mutex::new(Some(protection)),
        path: path.clone(),
        note,
    })
}

impl AttachedBitmap {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Set when pages go through ordinary file I/O ("file I/O").
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    pub fn service(&self) -> &Arc<WriteIntentBitmap> {
        &self.service
    }

    /// Ends raw writing and lifts the file's protection: clears the immutable
    /// flag, drops the (possibly stale) page cache, unlocks. The last step of
    /// a stop.
    pub fn release(&self) -> Result<(), ArrayError> {
        if let Some(raw) = &self.raw {
            raw.close();
        }
        match self.guard.lock().take() {
            Some(Protection::Guard(g)) => g.release()?,
            Some(Protection::Lock(_)) | None => {}
        }
        Ok(())
    }
}

impl AttachedBitmap {
    /// What mdstat's `bitmap:` line shows.
    pub fn mdstat(&self) -> MdstatBitmap {
        let s = self.service.stats();
        MdstatBitmap {
            pages_used: s.counter_pages_in_use,
            pages_total: s.counter_pages_total,
            chunk_bytes: s.chunk_size as u64,
            file: self.path.display().to_string(),
            note: self.note.clone(),
        }
    }

    /// Stops the clearing daemon and writes the bitmap as clean as md would
    /// (bits of chunks still owed a resync, or written while degraded, stay
    /// set). The header can still be written afterwards (the final events).
    pub fn write_clean(&self) -> Result<(), ArrayError> {
        self.service.stop_clean().map_err(ArrayError::from)
    }
}

impl Drop for AttachedBitmap {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            log::error!("{e}");
        }
    }
}
