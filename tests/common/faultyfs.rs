//! A fault-injecting FUSE filesystem for the tests, served by threads of the
//! test process (the `fuser` crate, as mdfuse itself uses it).
//!
//! It exposes regular backing files (in a temporary directory) as files of a
//! FUSE mount and passes reads, writes and fsyncs through to them, until the
//! test says otherwise: [`FaultyFs::fail_reads`] and [`FaultyFs::fail_writes`]
//! fail requests that touch a byte range with EIO, [`FaultyFs::fail_all`]
//! fails every read, write and fsync of a file,
//! [`FaultyFs::fail_reads_until_written`] makes bad sectors that a write
//! remaps (and [`FaultyFs::bad_bytes_left`] counts what is still bad),
//! [`FaultyFs::heal`] ends all of it, [`FaultyFs::delay_writes`] makes a
//! file a slow disk, and [`FaultyFs::hold_writes`] keeps writes waiting until
//! [`FaultyFs::release_writes`] lets them land or drops them (a power cut
//! before the disk got them). Counters say what was seen. (The test machines have no
//! device-mapper, so no dm-error or dm-flakey: this is the failing disk.)
//!
//! [`FaultyFs::volatile`] mounts the files as disks with a **volatile write
//! cache**, for power cuts: a write is acknowledged into the file's cache
//! (reads see it, as a disk's cache serves them) and reaches stable storage
//! (the backing file) only when an fsync of that file arrives, or at once
//! when it is a FUA write. A FUA write is a WRITE request whose
//! `fuse_write_in.flags` carry `O_DSYNC`: the kernel sets that for a file
//! opened with O_DSYNC or O_SYNC and for a `pwritev2(RWF_DSYNC)` on any file
//! (`fuse_write_flags`), and on a `FOPEN_DIRECT_IO` file (every file here)
//! it sends no FSYNC after such a write: the server must honour the flag
//! (`tests/powercut.rs`, `dsync_writes_reach_the_fuse_server_as_fua`, shows
//! it). A loop device over one of the files turns its flushes
//! (REQ_PREFLUSH, and FUA, which loop emulates with a flush) into FSYNCs of
//! the file. [`FaultyFs::cut`] (or a trigger armed with
//! [`FaultyFs::arm_cut`], which cuts right after the request it names) is
//! the power cut: from that instant every request fails with EIO.
//! [`FaultyFs::restore_power`] then decides what each unflushed write left
//! on the disk ([`Survival`]: each kept or dropped at random, torn at 512
//! bytes, the kept ones applied in random order) and serves again.
//!
//! Every open is answered with `FOPEN_DIRECT_IO`: no page cache sits between
//! a client and the injector, so every request reaches it (and O_DIRECT opens,
//! which mdfuse's legs use, work as on a disk).
//!
//! A [`FaultyFs`] is an RAII guard: dropping it unmounts and joins the serving
//! threads, also while the test panics. If the mount is still busy (a client
//! keeps a file open), the FUSE connection is aborted first (fusectl), so the
//! drop never hangs. Drop it after every client of it (declare it first).

#![allow(dead_code)] // each test binary uses a different subset

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, SessionACL, TimeOrNow,
    WriteFlags,
};
use std::ffi::OsStr;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::rng::Rng;

const ROOT: u64 = 1;
const FIRST_FILE: u64 = 2;
const TTL: Duration = Duration::from_secs(1);
/// The largest request asked of the kernel (as mdfuse's own mount).
const MAX_REQUEST: u32 = 1 << 20;
const SERVING_THREADS: usize = 4;
/// The unit a disk remaps: a write remaps the bad sectors it covers whole.
const SECTOR: u64 = 512;
/// md v1.2's superblock offset: its writes are counted apart.
const SUPERBLOCK_AT: u64 = 4096;

/// What one file has seen since the mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub opens: u64,
    /// Opens with O_DIRECT.
    pub direct_opens: u64,
    pub reads: u64,
    pub writes: u64,
    pub fsyncs: u64,
    pub failed_reads: u64,
    pub failed_writes: u64,
    pub failed_fsyncs: u64,
    /// Writes carrying O_DSYNC (FUA in volatile mode).
    pub dsync_writes: u64,
    /// Writes at byte 4096 (where md v1.2 keeps its superblock).
    pub superblock_writes: u64,
}

#[derive(Default)]
struct AtomicCounters {
    opens: AtomicU64,
    direct_opens: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    fsyncs: AtomicU64,
    failed_reads: AtomicU64,
    failed_writes: AtomicU64,
    failed_fsyncs: AtomicU64,
    dsync_writes: AtomicU64,
    superblock_writes: AtomicU64,
}

impl AtomicCounters {
    fn snapshot(&self) -> Counters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            opens: g(&self.opens),
            direct_opens: g(&self.direct_opens),
            reads: g(&self.reads),
            writes: g(&self.writes),
            fsyncs: g(&self.fsyncs),
            failed_reads: g(&self.failed_reads),
            failed_writes: g(&self.failed_writes),
            failed_fsyncs: g(&self.failed_fsyncs),
            dsync_writes: g(&self.dsync_writes),
            superblock_writes: g(&self.superblock_writes),
        }
    }
}

/// The faults armed on one file.
#[derive(Debug, Default, Clone)]
struct Faults {
    reads: Vec<Range<u64>>,
    /// Read faults whose sectors a write remaps (see [`remap`]).
    reads_until_written: Vec<Range<u64>>,
    writes: Vec<Range<u64>>,
    all: bool,
    write_delay: Duration,
    /// Writes wait (unapplied) while this is set.
    hold: bool,
    /// What released writes do: land (true) or fail unapplied (false).
    apply_held: bool,
    /// This many next fsyncs fail (a flush the disk could not do); in
    /// volatile mode the failed flush loses the file's unflushed writes.
    fail_fsyncs: u64,
}

fn overlaps(ranges: &[Range<u64>], offset: u64, len: u64) -> bool {
    let end = offset.saturating_add(len.max(1));
    ranges.iter().any(|r| r.start < end && offset < r.end)
}

/// `ranges` less the whole sectors of `[offset, end)`: a written sector is
/// good again (the disk remapped it); one written in part stays bad.
fn remap(ranges: &mut Vec<Range<u64>>, offset: u64, end: u64) {
    let (start, end) = (offset.next_multiple_of(SECTOR), end / SECTOR * SECTOR);
    if start >= end {
        return;
    }
    let mut kept = Vec::new();
    for r in ranges.drain(..) {
        if r.end <= start || end <= r.start {
            kept.push(r);
            continue;
        }
        if r.start < start {
            kept.push(r.start..start);
        }
        if end < r.end {
            kept.push(end..r.end);
        }
    }
    *ranges = kept;
}

/// A write in a volatile cache, not yet on stable storage.
#[derive(Debug, Clone)]
struct Cached {
    offset: u64,
    data: Vec<u8>,
}

impl Cached {
    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }

    /// The parts of this write outside `[start, end)` (none, one or two).
    fn outside(self, start: u64, end: u64) -> Vec<Cached> {
        if self.end() <= start || end <= self.offset {
            return vec![self];
        }
        let mut v = Vec::new();
        if self.offset < start {
            let n = (start - self.offset) as usize;
            v.push(Cached {
                offset: self.offset,
                data: self.data[..n].to_vec(),
            });
        }
        if end < self.end() {
            let n = (end - self.offset) as usize;
            v.push(Cached {
                offset: end,
                data: self.data[n..].to_vec(),
            });
        }
        v
    }

    /// Its pieces at 512-byte sector boundaries (of the file).
    fn sectors(&self) -> Vec<Cached> {
        let mut v = Vec::new();
        let mut at = self.offset;
        while at < self.end() {
            let next = ((at / SECTOR) + 1) * SECTOR;
            let stop = next.min(self.end());
            let (a, b) = ((at - self.offset) as usize, (stop - self.offset) as usize);
            v.push(Cached {
                offset: at,
                data: self.data[a..b].to_vec(),
            });
            at = stop;
        }
        v
    }
}

struct FaultyFile {
    name: String,
    backing_path: PathBuf,
    backing: File,
    faults: Mutex<Faults>,
    /// Volatile mode: the writes acknowledged and not yet flushed, oldest
    /// first. Its lock also orders every request against a cut.
    cache: Mutex<Vec<Cached>>,
    counters: AtomicCounters,
}

impl FaultyFile {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        // A panicking test thread must not make the filesystem panic too.
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> MutexGuard<'_, Vec<Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the cached writes to stable storage, oldest first.
    fn persist(&self, cache: &mut Vec<Cached>) -> std::io::Result<()> {
        for c in cache.drain(..) {
            self.backing.write_all_at(&c.data, c.offset)?;
        }
        Ok(())
    }
}

/// A request a cut may be armed to follow ([`FaultyFs::arm_cut`]).
#[derive(Debug)]
pub enum Event<'a> {
    /// A write acknowledged (into the cache, or stable if `fua`).
    Write {
        file: &'a str,
        offset: u64,
        data: &'a [u8],
        fua: bool,
    },
    /// An fsync done: the file's cache is on stable storage.
    Flush { file: &'a str },
}

type Trigger = Box<dyn FnMut(&Event) -> bool + Send>;

/// The power of a volatile-mode filesystem.
#[derive(Default)]
struct Power {
    /// Files have volatile write caches.
    volatile: bool,
    /// The power is off: every request fails.
    cut: std::sync::atomic::AtomicBool,
    trigger: Mutex<Option<Trigger>>,
}

/// What becomes of the unflushed writes at a power cut.
pub enum Survival<'a> {
    /// Each is kept or dropped at random (even odds); a kept one is torn
    /// (each of its 512-byte sectors kept or dropped) one time in four; the
    /// kept ones land in random order.
    Random(&'a mut Rng),
    /// None lands.
    DropAll,
    /// Every one lands, in order (a clean power-off).
    KeepAll,
    /// Those for which `f(file, offset, len)` is true land (in order), the
    /// others are dropped: a chosen worst case.
    Keep(&'a dyn Fn(&str, u64, usize) -> bool),
}

/// What [`FaultyFs::restore_power`] did with the unflushed writes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CutOutcome {
    pub unflushed: u64,
    pub kept: u64,
    pub torn: u64,
    pub dropped: u64,
}

struct Shared {
    files: Vec<FaultyFile>,
    uid: u32,
    gid: u32,
    started: SystemTime,
    power: Power,
}

impl Shared {
    fn is_cut(&self) -> bool {
        self.power.cut.load(Ordering::SeqCst)
    }

    /// Runs the armed trigger on `event`; cuts the power if it fires.
    fn after(&self, event: &Event) {
        let mut t = self.power.trigger.lock().unwrap_or_else(|p| p.into_inner());
        if t.as_mut().is_some_and(|f| f(event)) {
            *t = None;
            self.power.cut.store(true, Ordering::SeqCst);
        }
    }

    fn file(&self, ino: u64) -> Option<&FaultyFile> {
        self.files.get(ino.checked_sub(FIRST_FILE)? as usize)
    }

    fn by_name(&self, name: &str) -> &FaultyFile {
        self.files
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("faultyfs has no file {name:?}"))
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = if ino == ROOT {
            (FileType::Directory, 0o755, 0, 2)
        } else {
            let f = self.file(ino)?;
            let size = f.backing.metadata().map(|m| m.len()).unwrap_or(0);
            (FileType::RegularFile, 0o600, size, 1)
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

/// The fuser filesystem: translates requests into backing-file I/O unless a
/// fault says otherwise.
struct FaultyFsImpl(Arc<Shared>);

impl Filesystem for FaultyFsImpl {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_REQUEST) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(MAX_REQUEST) {
            let _ = config.set_max_readahead(nearest);
        }
        let wanted = fuser::InitFlags::FUSE_ASYNC_DIO | fuser::InitFlags::FUSE_ASYNC_READ;
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = (parent.0 == ROOT)
            .then(|| {
                self.0
                    .files
                    .iter()
                    .position(|f| OsStr::new(&f.name) == name)
            })
            .flatten();
        match found.and_then(|i| self.0.attr(FIRST_FILE + i as u64)) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let (Some(size), Some(f)) = (size, self.0.file(ino.0)) {
            if let Err(e) = f.backing.set_len(size) {
                return reply.error(io_errno(&e));
            }
        }
        match self.0.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(f) = self.0.file(ino.0) else {
            return reply.error(if ino.0 == ROOT {
                Errno::EISDIR
            } else {
                Errno::ENOENT
            });
        };
        f.counters.opens.fetch_add(1, Ordering::Relaxed);
        if flags.0 & libc::O_DIRECT != 0 {
            f.counters.direct_opens.fetch_add(1, Ordering::Relaxed);
        }
        // Direct I/O for every open: no cache hides a request from the faults.
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
        )
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(f) = self.0.file(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        f.counters.reads.fetch_add(1, Ordering::Relaxed);
        let fail = {
            let faults = f.faults();
            faults.all
                || overlaps(&faults.reads, offset, size as u64)
                || overlaps(&faults.reads_until_written, offset, size as u64)
        };
        if fail {
            f.counters.failed_reads.fetch_add(1, Ordering::Relaxed);
            return reply.error(Errno::EIO);
        }
        // Volatile mode: the cache's lock is held over the read, so a cut
        // falls before or after it.
        let cache = self.0.power.volatile.then(|| f.cache());
        if self.0.is_cut() {
            f.counters.failed_reads.fetch_add(1, Ordering::Relaxed);
            return reply.error(Errno::EIO);
        }
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match f.backing.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(io_errno(&e)),
            }
        }
        let end = offset + done as u64;
        for c in cache.iter().flat_map(|c| c.iter()) {
            let (a, b) = (c.offset.max(offset), c.end().min(end));
            if a < b {
                buf[(a - offset) as usize..(b - offset) as usize]
                    .copy_from_slice(&c.data[(a - c.offset) as usize..(b - c.offset) as usize]);
            }
        }
        reply.data(&buf[..done])
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(f) = self.0.file(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        f.counters.writes.fetch_add(1, Ordering::Relaxed);
        // O_SYNC includes O_DSYNC's bit.
        let fua = flags.0 & libc::O_DSYNC != 0;
        if fua {
            f.counters.dsync_writes.fetch_add(1, Ordering::Relaxed);
        }
        if offset == SUPERBLOCK_AT {
            f.counters.superblock_writes.fetch_add(1, Ordering::Relaxed);
        }
        let (fail, delay) = {
            let faults = f.faults();
            (
                faults.all || overlaps(&faults.writes, offset, data.len() as u64),
                faults.write_delay,
            )
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let fail = loop {
            let faults = f.faults();
            if !faults.hold {
                break fail;
            }
            drop(faults);
            std::thread::sleep(Duration::from_millis(2));
            let faults = f.faults();
            if !faults.hold {
                break fail || !faults.apply_held;
            }
        };
        if fail {
            f.counters.failed_writes.fetch_add(1, Ordering::Relaxed);
            return reply.error(Errno::EIO);
        }
        if self.0.power.volatile {
            return self.write_volatile(f, offset, data, fua, reply);
        }
        match f.backing.write_all_at(data, offset) {
            Ok(()) => {
                let end = offset + data.len() as u64;
                remap(&mut f.faults().reads_until_written, offset, end);
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(f) = self.0.file(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        f.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        let fail = {
            let mut faults = f.faults();
            let once = faults.fail_fsyncs > 0;
            faults.fail_fsyncs = faults.fail_fsyncs.saturating_sub(1);
            faults.all || once
        };
        if self.0.power.volatile {
            let mut cache = f.cache();
            if fail || self.0.is_cut() {
                f.counters.failed_fsyncs.fetch_add(1, Ordering::Relaxed);
                if fail {
                    // The disk could not write its cache out: what it held is lost.
                    cache.clear();
                }
                return reply.error(Errno::EIO);
            }
            if let Err(e) = f.persist(&mut cache) {
                return reply.error(io_errno(&e));
            }
            self.0.after(&Event::Flush { file: &f.name });
            return reply.ok();
        }
        if fail {
            f.counters.failed_fsyncs.fetch_add(1, Ordering::Relaxed);
            return reply.error(Errno::EIO);
        }
        let r = if datasync {
            f.backing.sync_data()
        } else {
            f.backing.sync_all()
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let mut all = vec![
            (ROOT, FileType::Directory, ".".to_string()),
            (ROOT, FileType::Directory, "..".to_string()),
        ];
        for (i, f) in self.0.files.iter().enumerate() {
            all.push((FIRST_FILE + i as u64, FileType::RegularFile, f.name.clone()));
        }
        for (i, (child, kind, name)) in all.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 20, 1 << 19, 1 << 19, 16, 0, 4096, 255, 4096);
    }
}

impl FaultyFsImpl {
    /// A write into `f`'s volatile cache, or (FUA) straight to stable
    /// storage, where it supersedes what the cache held of its bytes.
    fn write_volatile(
        &self,
        f: &FaultyFile,
        offset: u64,
        data: &[u8],
        fua: bool,
        reply: ReplyWrite,
    ) {
        let mut cache = f.cache();
        if self.0.is_cut() {
            f.counters.failed_writes.fetch_add(1, Ordering::Relaxed);
            return reply.error(Errno::EIO);
        }
        let end = offset + data.len() as u64;
        if fua {
            let older = std::mem::take(&mut *cache);
            *cache = older
                .into_iter()
                .flat_map(|c| c.outside(offset, end))
                .collect();
            if let Err(e) = f.backing.write_all_at(data, offset) {
                return reply.error(io_errno(&e));
            }
        } else {
            cache.push(Cached {
                offset,
                data: data.to_vec(),
            });
        }
        self.0.after(&Event::Write {
            file: &f.name,
            offset,
            data,
            fua,
        });
        reply.written(data.len() as u32)
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

/// One FUSE session serving the files.
struct Served {
    mountpoint: PathBuf,
    /// "MAJOR:MINOR" of the mount, for aborting its connection.
    device: Option<String>,
    session: Option<JoinHandle<std::io::Result<()>>>,
}

/// A mounted fault-injecting filesystem (see the module's documentation).
pub struct FaultyFs {
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    /// The mount at `mountpoint`, then those of [`FaultyFs::open_detached`].
    served: Vec<Served>,
    dir: tempfile::TempDir,
}

impl FaultyFs {
    /// Sparse backing files `name` of `size` bytes, mounted at a fresh
    /// mountpoint. Panics if the mount fails.
    pub fn new(files: &[(&str, u64)]) -> FaultyFs {
        Self::mount(files, false)
    }

    /// Like [`FaultyFs::new`], the files being disks with volatile write
    /// caches (see the module's documentation).
    pub fn volatile(files: &[(&str, u64)]) -> FaultyFs {
        Self::mount(files, true)
    }

    fn mount(files: &[(&str, u64)], volatile: bool) -> FaultyFs {
        let dir = tempfile::Builder::new()
            .prefix("mdfuse-faultyfs")
            .tempdir()
            .expect("tempdir for faultyfs");
        let backing_dir = dir.path().join("backing");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir_all(&backing_dir).expect("backing dir");
        std::fs::create_dir_all(&mountpoint).expect("faultyfs mountpoint");
        let mut entries = Vec::new();
        for &(name, size) in files {
            assert!(
                !name.contains('/') && !name.is_empty(),
                "bad faultyfs file name {name:?}"
            );
            let backing_path = backing_dir.join(name);
            let backing = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&backing_path)
                .unwrap_or_else(|e| panic!("backing file {}: {e}", backing_path.display()));
            backing.set_len(size).expect("size the backing file");
            entries.push(FaultyFile {
                name: name.to_string(),
                backing_path,
                backing,
                faults: Mutex::new(Faults::default()),
                cache: Mutex::new(Vec::new()),
                counters: AtomicCounters::default(),
            });
        }
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let shared = Arc::new(Shared {
            files: entries,
            uid,
            gid,
            started: SystemTime::now(),
            power: Power {
                volatile,
                ..Power::default()
            },
        });
        let mut fs = FaultyFs {
            shared,
            mountpoint: mountpoint.clone(),
            served: Vec::new(),
            dir,
        };
        fs.serve(&mountpoint);
        fs
    }

    /// Mounts the files (once more) at `mountpoint` and serves them there.
    fn serve(&mut self, mountpoint: &Path) {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("faultyfs".into()),
            MountOption::Subtype("faultyfs".into()),
            MountOption::RW,
            MountOption::NoSuid,
            MountOption::NoDev,
        ];
        config.acl = SessionACL::Owner;
        config.n_threads = Some(SERVING_THREADS);
        config.clone_fd = true;
        let session = fuser::Session::new(FaultyFsImpl(self.shared.clone()), mountpoint, &config)
            .unwrap_or_else(|e| panic!("mounting faultyfs at {}: {e}", mountpoint.display()));
        let device = mount_device(mountpoint);
        let session = std::thread::Builder::new()
            .name("faultyfs".into())
            .spawn(move || session.run())
            .expect("faultyfs session thread");
        self.served.push(Served {
            mountpoint: mountpoint.to_owned(),
            device,
            session: Some(session),
        });
    }

    /// `name` opened (read-write) through a second mount of these files
    /// that is then detached: the open file works as any other (faults,
    /// cache and power apply), but no path leads to it, so a loop device
    /// made over `/proc/<pid>/fd/<fd>` of it reports as its backing file a
    /// path on no FUSE filesystem. For what mdfuse refuses to put a bitmap
    /// on (an image served by FUSE, where mdfuse's own would deadlock),
    /// which this filesystem, served by the test, is not. Drop the file
    /// (and the loop devices over it) before the [`FaultyFs`].
    pub fn open_detached(&mut self, name: &str) -> File {
        self.shared.by_name(name);
        let mountpoint = self
            .dir
            .path()
            .join(format!("detached{}", self.served.len()));
        std::fs::create_dir_all(&mountpoint).expect("faultyfs second mountpoint");
        self.serve(&mountpoint);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(mountpoint.join(name))
            .unwrap_or_else(|e| panic!("open {name} on the second mount: {e}"));
        umount2(&mountpoint, libc::MNT_DETACH).expect("detaching the second mount");
        f
    }

    /// The file `name` as seen through the mount (where faults apply).
    pub fn path(&self, name: &str) -> PathBuf {
        self.shared.by_name(name);
        self.mountpoint.join(name)
    }

    /// The regular file behind `name` (no faults; for checks).
    pub fn backing(&self, name: &str) -> PathBuf {
        self.shared.by_name(name).backing_path.clone()
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Reads touching `range` (bytes of the file) fail with EIO.
    pub fn fail_reads(&self, name: &str, range: Range<u64>) {
        self.shared.by_name(name).faults().reads.push(range);
    }

    /// Reads touching `range` fail with EIO until its sectors are written:
    /// bad sectors that the disk remaps when they are written (a write
    /// remaps the sectors it covers whole, and only those).
    pub fn fail_reads_until_written(&self, name: &str, range: Range<u64>) {
        self.shared
            .by_name(name)
            .faults()
            .reads_until_written
            .push(range);
    }

    /// The ranges of `name` armed by [`Self::fail_reads_until_written`] that
    /// no write has remapped yet.
    pub fn unwritten_read_faults(&self, name: &str) -> Vec<Range<u64>> {
        self.shared
            .by_name(name)
            .faults()
            .reads_until_written
            .clone()
    }

    /// Bytes of those ranges (0 once every bad sector was rewritten).
    pub fn bad_bytes_left(&self, name: &str) -> u64 {
        self.unwritten_read_faults(name)
            .iter()
            .map(|r| r.end - r.start)
            .sum()
    }

    /// Writes touching `range` fail with EIO (nothing is written).
    pub fn fail_writes(&self, name: &str, range: Range<u64>) {
        self.shared.by_name(name).faults().writes.push(range);
    }

    /// Every read, write and fsync of `name` fails with EIO.
    pub fn fail_all(&self, name: &str) {
        self.shared.by_name(name).faults().all = true;
    }

    /// Every write of `name` waits `delay` first (a slow disk); zero ends it.
    pub fn delay_writes(&self, name: &str, delay: Duration) {
        self.shared.by_name(name).faults().write_delay = delay;
    }

    /// Writes of `name` wait, unapplied, until [`FaultyFs::release_writes`].
    pub fn hold_writes(&self, name: &str) {
        let mut f = self.shared.by_name(name).faults();
        f.hold = true;
        f.apply_held = true;
    }

    /// Ends [`FaultyFs::hold_writes`]: the writes waiting land (`apply`), or
    /// fail with EIO leaving the file as it was (a power cut before the disk
    /// got them); later writes go through.
    pub fn release_writes(&self, name: &str, apply: bool) {
        let mut f = self.shared.by_name(name).faults();
        f.apply_held = apply;
        f.hold = false;
    }

    /// Ends every fault and delay of `name`.
    pub fn heal(&self, name: &str) {
        *self.shared.by_name(name).faults() = Faults::default();
    }

    pub fn counters(&self, name: &str) -> Counters {
        self.shared.by_name(name).counters.snapshot()
    }

    /// The next `n` fsyncs of `name` fail with EIO (a flush the disk could
    /// not do: in volatile mode the file's unflushed writes are lost).
    pub fn fail_next_fsyncs(&self, name: &str, n: u64) {
        self.shared.by_name(name).faults().fail_fsyncs = n;
    }

    /// Volatile mode: writes of `name` acknowledged and not yet flushed.
    pub fn unflushed_writes(&self, name: &str) -> usize {
        self.shared.by_name(name).cache().len()
    }

    /// Volatile mode: every file's cache to stable storage now, as a clean
    /// power-off would (for a test's setup, which is not under test).
    pub fn persist_all(&self) {
        for f in &self.shared.files {
            let mut cache = f.cache();
            f.persist(&mut cache)
                .unwrap_or_else(|e| panic!("persisting {}: {e}", f.name));
        }
    }

    /// Cuts the power: from now every request fails with EIO. Returns once
    /// every request that began before is over.
    pub fn cut(&self) {
        self.shared.power.cut.store(true, Ordering::SeqCst);
        for f in &self.shared.files {
            drop(f.cache());
        }
    }

    pub fn is_cut(&self) -> bool {
        self.shared.is_cut()
    }

    /// Arms a cut right after the first request for which `trigger` says
    /// true (it sees every acknowledged write and done fsync, under the
    /// file's lock: keep it quick). Replaces an armed one.
    pub fn arm_cut(&self, trigger: impl FnMut(&Event) -> bool + Send + 'static) {
        *self
            .shared
            .power
            .trigger
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Box::new(trigger));
    }

    /// Disarms [`FaultyFs::arm_cut`]; true if it had not fired.
    pub fn disarm_cut(&self) -> bool {
        self.shared
            .power
            .trigger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some()
    }

    /// Waits up to `timeout` for the power to be cut (by a trigger).
    pub fn wait_cut(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_cut() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// After a cut: decides what each file's unflushed writes left on its
    /// stable storage (see [`Survival`]), empties the caches, ends every
    /// fault, and serves again. Call it only once nothing can still send a
    /// request that began before (its client dead, its loop device
    /// detached): a late one would land after the power came back.
    pub fn restore_power(&self, survival: Survival) -> CutOutcome {
        assert!(self.is_cut(), "restore_power without a cut");
        self.disarm_cut();
        let mut survival = survival;
        let mut out = CutOutcome::default();
        for f in &self.shared.files {
            let mut cache = f.cache();
            out.unflushed += cache.len() as u64;
            let mut landing: Vec<Cached> = Vec::new();
            for c in cache.drain(..) {
                match &mut survival {
                    Survival::DropAll => out.dropped += 1,
                    Survival::KeepAll => {
                        out.kept += 1;
                        landing.push(c);
                    }
                    Survival::Keep(keep) => {
                        if keep(&f.name, c.offset, c.data.len()) {
                            out.kept += 1;
                            landing.push(c);
                        } else {
                            out.dropped += 1;
                        }
                    }
                    Survival::Random(rng) => {
                        if rng.below(2) == 0 {
                            out.dropped += 1;
                        } else if rng.below(4) == 0 {
                            out.torn += 1;
                            let sectors = c.sectors();
                            landing.extend(sectors.into_iter().filter(|_| rng.below(2) == 0));
                        } else {
                            out.kept += 1;
                            landing.push(c);
                        }
                    }
                }
            }
            if let Survival::Random(rng) = &mut survival {
                // Fisher-Yates: the disk wrote its cache in any order.
                for i in (1..landing.len()).rev() {
                    landing.swap(i, rng.below(i as u64 + 1) as usize);
                }
            }
            f.persist(&mut landing)
                .unwrap_or_else(|e| panic!("restoring {}: {e}", f.name));
            *f.faults() = Faults::default();
        }
        self.shared.power.cut.store(false, Ordering::SeqCst);
        out
    }

    /// Tells the kernel to end the FUSE connection: every pending and
    /// future request fails and the serving threads stop.
    fn abort_connection(&self, device: Option<&str>) {
        let Some(minor) = device.and_then(|d| d.split(':').nth(1)) else {
            return;
        };
        let mut abort_file = PathBuf::from(format!("/sys/fs/fuse/connections/{minor}/abort"));
        // fusectl may not be mounted on this host; mount a private instance.
        let private = (!abort_file.exists()).then(|| {
            let d = self.dir.path().join("fusectl");
            let _ = std::fs::create_dir_all(&d);
            let ok = std::process::Command::new("mount")
                .args(["-t", "fusectl", "fusectl"])
                .arg(&d)
                .status()
                .is_ok_and(|s| s.success());
            abort_file = d.join(minor).join("abort");
            (d, ok)
        });
        if let Err(e) = std::fs::write(&abort_file, "1") {
            eprintln!(
                "warning: faultyfs: cannot abort {}: {e}",
                abort_file.display()
            );
        }
        if let Some((d, true)) = private {
            let _ = std::process::Command::new("umount").arg(&d).status();
        }
    }
}

/// "MAJOR:MINOR" of the mount at `mountpoint` (the last one there).
fn mount_device(mountpoint: &Path) -> Option<String> {
    let want = mountpoint.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let point = f.get(4)?.replace("\\040", " ");
            (Path::new(&point) == want).then(|| f.get(2).map(|d| d.to_string()))?
        })
        .next_back()
}

fn umount2(path: &Path, flags: i32) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    // SAFETY: c is a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for FaultyFs {
    fn drop(&mut self) {
        for mut served in std::mem::take(&mut self.served) {
            self.end(&mut served);
        }
    }
}

impl FaultyFs {
    /// Unmounts one mount (a detached one ends with its last open file)
    /// and joins its threads.
    fn end(&self, served: &mut Served) {
        if let Err(e) = umount2(&served.mountpoint, 0) {
            if e.raw_os_error() != Some(libc::EINVAL) {
                // Busy (a client still has a file open): end the connection
                // so nothing waits on us, then detach.
                eprintln!(
                    "warning: faultyfs at {} did not unmount ({e}); aborting it",
                    served.mountpoint.display()
                );
                self.abort_connection(served.device.as_deref());
                let _ = umount2(&served.mountpoint, libc::MNT_DETACH);
            }
        }
        let Some(session) = served.session.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !session.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !session.is_finished() {
            eprintln!("warning: faultyfs threads still run 10 s after the unmount; aborting");
            self.abort_connection(served.device.as_deref());
            let deadline = Instant::now() + Duration::from_secs(10);
            while !session.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if session.is_finished() {
            match session.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("warning: faultyfs session ended with {e}"),
                Err(_) => eprintln!("warning: a faultyfs thread panicked"),
            }
        } else {
            eprintln!("warning: faultyfs threads left running");
        }
    }
}

// ------------------------------------------------ an array with a faulty leg

use super::mdfuse::{self as h, tempdir, Legs, MountedArray};

/// Legs `leg0.img` (a plain sparse file in `dir`) and `leg1.img` (on a new
/// [`FaultyFs`]), each `size` bytes, not yet made into an array.
pub fn leg1_faulty(dir: &Path, size: u64) -> (FaultyFs, Legs) {
    let good = dir.join("leg0.img");
    super::loopdev::sparse_file(&good, size).expect("leg0");
    let faulty = FaultyFs::new(&[(BAD_LEG, size)]);
    let legs = Legs::from_paths(vec![good, faulty.path(BAD_LEG)]);
    (faulty, legs)
}

/// The faulty leg's file name on its [`FaultyFs`].
pub const BAD_LEG: &str = "leg1.img";

/// A plain leg file `leg0.img` and a faulty leg `leg1.img` (on a
/// [`FaultyFs`]), made into an array (no bitmap).
pub struct FaultyArray {
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
    pub legs: Legs,
    // Declared last: the FUSE leg outlives the mount that uses it.
    pub faulty: FaultyFs,
}

impl FaultyArray {
    pub fn new(size: u64, create_args: &[&str]) -> FaultyArray {
        let tmp = tempdir("mdfuse-faulty-array-");
        let dir = tmp.path().to_path_buf();
        let (faulty, legs) = leg1_faulty(&dir, size);
        h::create(&legs, create_args);
        FaultyArray {
            _dir: tmp,
            dir,
            legs,
            faulty,
        }
    }

    /// Bad sectors on leg1 at leg bytes `[at, at + len)`: reads fail until
    /// they are rewritten.
    pub fn bad_range(&self, at: u64, len: u64) {
        self.faulty.fail_reads_until_written(BAD_LEG, at..at + len);
    }

    /// Reads of leg1 that failed (EIO) so far.
    pub fn failed_reads(&self) -> u64 {
        self.faulty.counters(BAD_LEG).failed_reads
    }

    /// Bytes of leg1's bad ranges not rewritten yet.
    pub fn bad_bytes_left(&self) -> u64 {
        self.faulty.bad_bytes_left(BAD_LEG)
    }

    /// After reads over leg1's bad range: a read failed there (`unseen`
    /// says why the test proves nothing otherwise), md rewrote the range
    /// from leg0, and leg1 stays in sync.
    pub fn assert_corrected(&self, m: &MountedArray, unseen: &str) {
        assert!(self.failed_reads() >= 1, "{unseen}");
        assert_eq!(self.bad_bytes_left(), 0, "the bad range was rewritten");
        assert_eq!(m.md("dev-leg1.img/state"), "in_sync", "{}", m.log());
    }

    pub fn mount(&self, extra: &[&str]) -> MountedArray {
        MountedArray::mount(&self.legs, &self.dir.join("mnt"), extra)
    }

    /// Leg bytes of array offset `offset`.
    pub fn leg_offset(&self, offset: u64) -> u64 {
        h::data_offset(self.legs.path(0)) + offset
    }
}
