//! A leg that gives real I/O errors: a FUSE filesystem, served by the test
//! process, holding one file (`leg.img`) backed by a real file. Ranges can
//! be made bad: a read touching one fails with EIO, as a disk's unreadable
//! sector does, and a write over it "remaps" it (the range reads again),
//! unless the range is marked to fail writes too. The kernel passes every
//! read and write through (direct I/O), so mdfuse sees the errors as it
//! would from a failing disk. Unmounted when dropped.
//!
//! (The test machine has no device-mapper, so no dm-error/dm-flakey.)

#![allow(dead_code)] // each test binary uses a different subset

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, WriteFlags,
};
use parking_lot::Mutex;
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

const ROOT: u64 = 1;
const LEG: u64 = 2;

#[derive(Debug, Clone, Copy)]
struct Bad {
    start: u64,
    end: u64,
    /// Writes to it fail too (a sector the disk cannot remap).
    writes_fail: bool,
}

/// What the test controls and observes.
#[derive(Debug, Default)]
pub struct Faults {
    bad: Mutex<Vec<Bad>>,
    pub read_errors: AtomicU64,
    pub write_errors: AtomicU64,
    /// Bytes written into a bad range (a rewrite that remapped it).
    pub remapped_bytes: AtomicU64,
}

impl Faults {
    /// Reads of `[start, end)` (leg bytes) fail until it is rewritten.
    pub fn bad_range(&self, start: u64, end: u64) {
        self.bad.lock().push(Bad {
            start,
            end,
            writes_fail: false,
        });
    }

    /// Reads and writes of `[start, end)` fail.
    pub fn dead_range(&self, start: u64, end: u64) {
        self.bad.lock().push(Bad {
            start,
            end,
            writes_fail: true,
        });
    }

    pub fn heal(&self) {
        self.bad.lock().clear();
    }

    /// Bytes still bad.
    pub fn bad_bytes(&self) -> u64 {
        self.bad.lock().iter().map(|b| b.end - b.start).sum()
    }

    fn read_fails(&self, start: u64, end: u64) -> bool {
        self.bad
            .lock()
            .iter()
            .any(|b| b.start < end && start < b.end)
    }

    /// Applies a write: Err when it touches a range whose writes fail;
    /// otherwise the covered parts of bad ranges are good again.
    fn write(&self, start: u64, end: u64) -> Result<(), ()> {
        let mut bad = self.bad.lock();
        if bad
            .iter()
            .any(|b| b.writes_fail && b.start < end && start < b.end)
        {
            return Err(());
        }
        let mut kept = Vec::new();
        for b in bad.drain(..) {
            if !(b.start < end && start < b.end) {
                kept.push(b);
                continue;
            }
            self.remapped_bytes
                .fetch_add(b.end.min(end) - b.start.max(start), Ordering::Relaxed);
            if b.start < start {
                kept.push(Bad { end: start, ..b });
            }
            if end < b.end {
                kept.push(Bad { start: end, ..b });
            }
        }
        *bad = kept;
        Ok(())
    }
}

struct FaultyFs {
    name: String,
    backing: std::fs::File,
    size: u64,
    faults: Arc<Faults>,
}

impl FaultyFs {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            ROOT => (FileType::Directory, 0o755, 0, 2),
            LEG => (FileType::RegularFile, 0o600, self.size, 1),
            _ => return None,
        };
        let t = UNIX_EPOCH + Duration::from_secs(1);
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

const TTL: Duration = Duration::from_secs(1);

impl Filesystem for FaultyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT || name != self.name.as_str() {
            return reply.error(Errno::ENOENT);
        }
        match self.attr(LEG) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 != LEG {
            return reply.error(Errno::EISDIR);
        }
        // Every read and write comes here: no page cache hides an error.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
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
        if ino.0 != LEG {
            return reply.error(Errno::EISDIR);
        }
        let end = (offset + size as u64).min(self.size);
        if offset >= end {
            return reply.data(&[]);
        }
        if self.faults.read_fails(offset, end) {
            self.faults.read_errors.fetch_add(1, Ordering::Relaxed);
            return reply.error(Errno::EIO);
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        match self.backing.read_exact_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino.0 != LEG {
            return reply.error(Errno::EISDIR);
        }
        let end = offset + data.len() as u64;
        if end > self.size {
            return reply.error(Errno::ENOSPC);
        }
        if self.faults.write(offset, end).is_err() {
            self.faults.write_errors.fetch_add(1, Ordering::Relaxed);
            return reply.error(Errno::EIO);
        }
        match self.backing.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(_) => reply.error(Errno::EIO),
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
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.backing.sync_data() {
            Ok(()) => reply.ok(),
            Err(_) => reply.error(Errno::EIO),
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
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (LEG, FileType::RegularFile, self.name.as_str()),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok()
    }
}

/// A FUSE mount at `dir/<name>.mnt` holding the file `name`, backed by
/// `dir/<name>.backing`.
pub struct FaultyLeg {
    session: Option<fuser::BackgroundSession>,
    mnt: PathBuf,
    name: String,
    backing: PathBuf,
    pub faults: Arc<Faults>,
}

impl FaultyLeg {
    /// A new leg of `size` bytes (a sparse backing file).
    pub fn new(dir: &Path, name: &str, size: u64) -> FaultyLeg {
        let backing = dir.join(format!("{name}.backing"));
        super::loopdev::sparse_file(&backing, size).expect("backing file");
        let mnt = dir.join(format!("{name}.mnt"));
        std::fs::create_dir_all(&mnt).expect("faulty leg mountpoint");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&backing)
            .expect("open backing file");
        let faults = Arc::new(Faults::default());
        let fs = FaultyFs {
            name: name.to_string(),
            backing: file,
            size,
            faults: faults.clone(),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("faultyleg".into()),
            fuser::MountOption::RW,
        ];
        let session = fuser::spawn_mount(fs, &mnt, &config).expect("mount the faulty leg");
        FaultyLeg {
            session: Some(session),
            mnt,
            name: name.to_string(),
            backing,
            faults,
        }
    }

    /// The leg's path (inside the FUSE mount).
    pub fn path(&self) -> PathBuf {
        self.mnt.join(&self.name)
    }

    /// The file behind it (read directly, errors bypassed).
    pub fn backing(&self) -> &Path {
        &self.backing
    }
}

impl Drop for FaultyLeg {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if s.umount_and_join().is_err() {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.mnt)
                    .output();
            }
        }
    }
}
