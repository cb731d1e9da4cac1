//! Attaching the write-intent bitmap file to an assembled array: checks,
//! reading only, that it belongs to the array, does not live on it and can
//! be written raw; then protects it, resolves and verifies its block map, and
//! starts the service over raw device writes (or, only when asked, over
//! ordinary file I/O). A refused attach leaves the file as it was.

use super::assemble::Assembly;
use super::error::ArrayError;
use crate::bitmap::{
    load_bitmap_checked, read_bitmap_header, BitmapOptions, FilePageStore, PageStore, RawPageStore,
    WriteIntentBitmap,
};
use crate::blockmap::{
    check_device_writable, check_protectable, device_stack, fs_type_of_dev, open_bitmap_path,
    protect, recheck, resolve, FileGuard, RawWriter,
};
use crate::format::bitmap::{BitmapSuper, BITMAP_STATE_STALE, BITMAP_SUPER_SIZE};
use crate::io::checked_open::CheckedPath;
use crate::io::completion::Completion;
use crate::report::mdstat::MdstatBitmap;
use crate::report::uuid_string;
use parking_lot::{Condvar, Mutex};
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
    /// A read-only array: the bitmap is read and never written (no
    /// immutable flag, no markers, no pages).
    pub read_only: bool,
    /// Accept a bitmap file whose filesystem sits on a device stack that
    /// cannot be followed to check it is not inside the array
    /// (device-mapper, md, other virtual block devices).
    pub trust_device: bool,
}

/// What attaching a bitmap file needs to know of the array: at assembly
/// ([`ArrayFacts::of`]) or while it runs (a bitmap added by `bitmap/location`).
#[derive(Debug, Clone)]
pub struct ArrayFacts {
    pub set_uuid: [u8; 16],
    pub array_sectors: u64,
    /// The superblocks' events: a bitmap behind them is out of date.
    pub events: u64,
    pub degraded: bool,
    /// The legs' paths (a bitmap file may not live on any of them).
    pub legs: Vec<PathBuf>,
    /// Bits found set mark chunks that may differ (kept until a resync);
    /// false only for a new bitmap whose bits say nothing yet.
    pub loaded_bits_needed: bool,
}

impl ArrayFacts {
    pub fn of(asm: &Assembly) -> ArrayFacts {
        ArrayFacts {
            set_uuid: asm.set_uuid,
            array_sectors: asm.array_sectors,
            events: asm.events,
            degraded: asm.is_degraded(),
            legs: asm.members.iter().map(|m| m.path.clone()).collect(),
            loaded_bits_needed: true,
        }
    }
}

pub struct AttachedBitmap {
    service: Arc<WriteIntentBitmap>,
    raw: Option<Arc<RawPageStore>>,
    /// Protection (raw mode: flock + immutable) or the lock alone (file I/O).
    guard: Arc<Mutex<Option<Protection>>>,
    /// Why the file was kicked, once its raw map was found changed.
    kicked: Arc<Mutex<Option<String>>>,
    /// Rechecks the raw map while the array runs.
    watch: Mutex<Option<MapWatch>>,
    path: PathBuf,
    note: Option<String>,
    /// The legs' page store of an internal bitmap (None for a file, or a
    /// read-only array).
    internal: Option<Arc<super::internal_bitmap::LegPageStore>>,
    is_internal: bool,
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
/// whose device (`st_dev`), or any device or file under it, however deep
/// (partitions, loop devices over files or over other loop devices), is a
/// leg, or a file served by FUSE (an mdfuse image). A stack that cannot be
/// followed (device-mapper, md, other virtual block devices) is refused
/// unless `trust_device`. Reads only.
fn check_not_on_array(
    path: &Path,
    st_dev: u64,
    array: &ArrayFacts,
    trust_device: bool,
) -> Result<(), ArrayError> {
    let legs: Vec<(PathBuf, u64, u64, u64)> = array
        .legs
        .iter()
        .filter_map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|md| (p.clone(), md.dev(), md.ino(), md.rdev()))
        })
        .collect();
    let stack = device_stack(st_dev);
    for (depth, dev) in stack.devices.iter().enumerate() {
        if let Some(leg) = legs.iter().find(|l| l.3 != 0 && l.3 == dev.rdev) {
            return Err(bitmap_error(
                path,
                if depth == 0 {
                    format!(
                        "it lives on leg {} itself; put it on a filesystem outside the array",
                        leg.0.display()
                    )
                } else {
                    format!(
                        "it lives inside the array: its filesystem's device stack reaches \
                         {}, which is leg {}; put it on a filesystem outside the array",
                        dev.node.display(),
                        leg.0.display()
                    )
                },
            ));
        }
    }
    for (depth, backing) in stack.files.iter().enumerate() {
        if let Some(leg) = legs
            .iter()
            .find(|l| (l.1, l.2) == (backing.st_dev, backing.st_ino))
        {
            let chain: Vec<String> = stack.files[..=depth]
                .iter()
                .map(|b| b.loop_device.display().to_string())
                .collect();
            return Err(bitmap_error(
                path,
                format!(
                    "it lives inside the array: its filesystem is on {}, backed by leg {}; \
                     put it on a filesystem outside the array",
                    chain.join(", over "),
                    leg.0.display()
                ),
            ));
        }
        if fs_type_of_dev(backing.st_dev).is_some_and(|t| t == "fuse" || t.starts_with("fuse.")) {
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
    if let Some(what) = &stack.unfollowable {
        if trust_device {
            log::warn!(
                "bitmap {}: not checked all the way down ({what}); accepted because of \
                 --bitmap-trust-device",
                path.display()
            );
        } else {
            return Err(bitmap_error(
                path,
                format!(
                    "mdfuse cannot tell whether it lives inside the array: {what}; put it on \
                     a filesystem on a plain disk, partition or loop device, or, if you know \
                     that device does not lead into this array, pass --bitmap-trust-device"
                ),
            ));
        }
    }
    Ok(())
}

/// The header must be this array's: its UUID and its size.
fn check_belongs(path: &Path, sb: &BitmapSuper, array: &ArrayFacts) -> Result<(), ArrayError> {
    if sb.uuid != array.set_uuid {
        return Err(bitmap_error(
            path,
            format!(
                "its uuid says it belongs to array {}, not to this array ({}); give this array's bitmap file",
                uuid_string(&sb.uuid),
                uuid_string(&array.set_uuid)
            ),
        ));
    }
    if sb.sync_size != array.array_sectors {
        return Err(bitmap_error(
            path,
            format!(
                "its sync_size is {} sectors but the array has {}; it was made for another size",
                sb.sync_size, array.array_sectors
            ),
        ));
    }
    Ok(())
}

/// The header (first page only), checked to be this array's, then the bits:
/// a file longer than this array's size and the header's chunk need is
/// refused before it is read.
fn load_for_array(
    checked: &CheckedPath,
    array: &ArrayFacts,
) -> Result<(BitmapSuper, Vec<u8>), ArrayError> {
    let sb = read_bitmap_header(checked)?;
    check_belongs(checked.path(), &sb, array)?;
    let (sb, bits) = load_bitmap_checked(checked, &sb)?;
    check_belongs(checked.path(), &sb, array)?;
    Ok((sb, bits))
}

/// An exclusive, non-blocking flock on `file` (one mdfuse per bitmap file).
fn lock(path: &Path, file: &std::fs::File) -> Result<(), ArrayError> {
    // SAFETY: flock on a valid fd.
    if unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } != 0
    {
        return Err(bitmap_error(
            path,
            "it is in use by another mdfuse (locked)",
        ));
    }
    Ok(())
}

/// The page store of a read-only array: it never writes. A read-only array
/// writes no data, so no bit has to reach the disk; the service may still
/// ask (a stale bitmap made all-dirty in memory, the pages at a stop), and
/// each such write is dropped.
pub(super) struct ReadOnlyStore {
    name: String,
}

impl ReadOnlyStore {
    pub(super) fn new(name: String) -> Self {
        ReadOnlyStore { name }
    }
}

impl PageStore for ReadOnlyStore {
    fn submit_page(&self, page_index: usize, _bytes: &[u8]) -> Arc<Completion> {
        log::debug!("{}: page {page_index} not written", self.name);
        let done = Completion::new(1);
        done.finish(Ok(()));
        done
    }

    fn flush_device(&self) -> Result<(), crate::bitmap::BitmapError> {
        Ok(())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

pub fn attach(opts: &BitmapAttachOptions, asm: &Assembly) -> Result<AttachedBitmap, ArrayError> {
    attach_to(opts, &ArrayFacts::of(asm))
}

/// [`attach`] to an array described by `array` (assembled, or running).
pub fn attach_to(
    opts: &BitmapAttachOptions,
    array: &ArrayFacts,
) -> Result<AttachedBitmap, ArrayError> {
    let path = &opts.path;
    // Opened once, not following a symlink, and checked on the descriptor:
    // a FIFO, socket or device is refused here, before anything reads it.
    let checked = open_bitmap_path(path)?;
    // Every read-only check first: a refused mount must leave the file as it
    // was (bytes, attributes, ctime), and protecting it changes its flags.
    let (sb, bits) = load_for_array(&checked, array)?;
    // With ordinary file I/O too: a bitmap inside the array would be written
    // through the array it describes.
    check_not_on_array(path, checked.metadata().dev(), array, opts.trust_device)?;
    let reopen = |write: bool| {
        checked
            .reopen(write, 0)
            .map_err(|e| bitmap_error(path, format!("cannot open: {e}")))
    };
    if opts.read_only {
        // Nothing is written: no flag, no marker, no page. The lock only
        // keeps a read-write mdfuse (or a create --force) off the file.
        let file = reopen(false)?;
        lock(path, &file)?;
        log::info!(
            "bitmap {}: read-only array: the bitmap is read, never written",
            path.display()
        );
        let store: Arc<dyn PageStore> = Arc::new(ReadOnlyStore {
            name: format!("bitmap FILE {} (read-only array)", path.display()),
        });
        return finish(
            opts,
            array,
            sb,
            &bits,
            store,
            None,
            Protection::Lock(file),
            Some("read-only".to_string()),
        );
    }
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
    let (protection, file) = match opts.io {
        BitmapIo::Raw => {
            let mut guard = protect(path)?;
            let now = guard
                .file()
                .metadata()
                .map_err(|e| bitmap_error(path, format!("cannot stat: {e}")))?;
            let first = checked.metadata();
            if (now.dev(), now.ino()) != (first.dev(), first.ino()) {
                return Err(bitmap_error(
                    path,
                    "it was replaced by another file while it was being checked; retry",
                ));
            }
            if guard.was_already_immutable() {
                // We hold the lock, so no live mdfuse set it: an earlier one crashed.
                log::warn!(
                    "bitmap {}: immutable flag left set (an earlier mdfuse did not stop cleanly); taking it over",
                    path.display()
                );
                guard.adopt_immutable();
            }
            (Protection::Guard(guard), None)
        }
        BitmapIo::FileIo => {
            // The one read-write descriptor pages are written through.
            let file = reopen(true)?;
            lock(path, &file)?;
            let lock_fd = file
                .try_clone()
                .map_err(|e| bitmap_error(path, format!("cannot duplicate its descriptor: {e}")))?;
            (Protection::Lock(lock_fd), Some(file))
        }
    };
    let (sb, bits) = load_for_array(&checked, array)?;
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
            let Some(file) = file else {
                return Err(bitmap_error(path, "no descriptor for file I/O (bug)"));
            };
            (
                Arc::new(FilePageStore::from_file(file, path)),
                None,
                Some("file I/O".to_string()),
            )
        }
    };
    finish(opts, array, sb, &bits, store, raw, protection, note)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    opts: &BitmapAttachOptions,
    array: &ArrayFacts,
    sb: BitmapSuper,
    bits: &[u8],
    store: Arc<dyn PageStore>,
    raw: Option<Arc<RawPageStore>>,
    protection: Protection,
    note: Option<String>,
) -> Result<AttachedBitmap, ArrayError> {
    let mut bopts = BitmapOptions::for_super(&sb);
    if let Some(d) = opts.clear_delay {
        bopts.clear_delay = d;
    }
    bopts.array_events = Some(array.events);
    bopts.loaded_bits_needed = array.loaded_bits_needed;
    let service = Arc::new(WriteIntentBitmap::new(sb, bits, store, bopts)?);
    if array.degraded {
        service.set_degraded(true);
    }
    let mut attached = AttachedBitmap {
        service,
        raw,
        guard: Arc::new(Mutex::new(Some(protection))),
        kicked: Arc::new(Mutex::new(None)),
        watch: Mutex::new(None),
        path: opts.path.clone(),
        note,
        internal: None,
        is_internal: false,
    };
    if attached.raw.is_some() {
        *attached.watch.get_mut() = Some(MapWatch::start(&attached)?);
    }
    Ok(attached)
}

/// How often the raw map is checked again while the array runs.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A thread that checks the raw map again every [`RECHECK_INTERVAL`]
/// ([`recheck`]: the immutable flag, FIEMAP with its flags) and kicks the
/// bitmap file at the first change.
struct MapWatch {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MapWatch {
    fn start(b: &AttachedBitmap) -> Result<MapWatch, ArrayError> {
        let path = b.path.clone();
        let (Some(raw), Some(map)) = (b.raw.clone(), b.raw.as_ref().and_then(|r| r.map())) else {
            return Err(bitmap_error(&path, "no raw writer to watch (bug)"));
        };
        let file = match b.guard.lock().as_ref() {
            Some(Protection::Guard(g)) => g.file().try_clone(),
            _ => return Err(bitmap_error(&path, "not protected (bug)")),
        }
        .map_err(|e| bitmap_error(&path, format!("cannot duplicate its descriptor: {e}")))?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (service, guard, kicked) = (b.service.clone(), b.guard.clone(), b.kicked.clone());
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bitmap-watch".into())
            .spawn(move || {
                let (lock, wake) = &*stop2;
                let mut stopped = lock.lock();
                loop {
                    wake.wait_for(&mut stopped, RECHECK_INTERVAL);
                    if *stopped {
                        return;
                    }
                    if let Err(why) = recheck(&map, &file) {
                        kick(&path, &why, &raw, &service, &guard, &kicked);
                        return;
                    }
                }
            })
            .map_err(|e| bitmap_error(&b.path, format!("cannot start its watch thread: {e}")))?;
        Ok(MapWatch {
            stop,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// md's md_bitmap_file_kick: the file is no longer reliable, so it is no
/// longer written, and it is marked stale so that the next assembly does a
/// full resync. Raw writes stop first; the stale mark goes through the
/// filesystem (which knows where the blocks are now); pages waiting meanwhile
/// complete once it is on disk. The array goes on without a bitmap on disk
/// (the service keeps its bits in memory). If the mark cannot be written,
/// the bitmap turns faulty and array writes fail rather than go on without
/// a record.
fn kick(
    path: &Path,
    why: &str,
    raw: &RawPageStore,
    service: &WriteIntentBitmap,
    guard: &Mutex<Option<Protection>>,
    kicked: &Mutex<Option<String>>,
) {
    log::error!(
        "bitmap {}: {why}: raw writes to it are no longer safe; kicking failed bitmap file {} \
         from array: it is no longer written and the array goes on without a bitmap on disk",
        path.display(),
        path.display()
    );
    let outcome = raw.kick(|| {
        let mut sb = service.header();
        sb.state |= BITMAP_STATE_STALE;
        match guard.lock().as_mut() {
            Some(Protection::Guard(g)) => g
                .write_through_filesystem(0, &sb.to_bytes())
                .map_err(|e| e.to_string()),
            _ => Err("its protection was already released".into()),
        }
    });
    match &outcome {
        Some(Ok(())) => log::error!(
            "bitmap {}: marked stale (through its filesystem): the next assembly resyncs \
             the whole array; recreate the bitmap file or mount without it",
            path.display()
        ),
        Some(Err(e)) => log::error!(
            "bitmap {}: cannot mark it stale ({e}): the bitmap is faulty and array writes \
             are refused until the array is reassembled",
            path.display()
        ),
        None => {}
    }
    *kicked.lock() = Some(why.to_string());
}

impl AttachedBitmap {
    /// An internal bitmap's service and (read-write) its legs' store.
    pub(super) fn internal(
        service: Arc<WriteIntentBitmap>,
        store: Option<Arc<super::internal_bitmap::LegPageStore>>,
    ) -> Self {
        AttachedBitmap {
            service,
            raw: None,
            guard: Arc::new(Mutex::new(None)),
            kicked: Arc::new(Mutex::new(None)),
            watch: Mutex::new(None),
            path: PathBuf::new(),
            note: None,
            internal: store,
            is_internal: true,
        }
    }

    /// The legs' page store, when the bitmap is internal and written.
    pub(super) fn leg_store(&self) -> Option<&Arc<super::internal_bitmap::LegPageStore>> {
        self.internal.as_ref()
    }

    /// The bitmap lives on the legs (md's internal bitmap).
    pub fn is_internal(&self) -> bool {
        self.is_internal
    }

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
        if let Some(mut w) = self.watch.lock().take() {
            w.stop();
        }
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
            note: if self.kicked.lock().is_some() {
                Some("kicked: not written".to_string())
            } else {
                self.note.clone()
            },
        }
    }

    /// Why the bitmap file was kicked (its raw map changed), if it was.
    pub fn kicked(&self) -> Option<String> {
        self.kicked.lock().clone()
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
