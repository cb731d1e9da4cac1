//! What the mount serves, whatever carries the requests: a directory
//! holding `array.img` (the array's data), `mdstat` (its status in
//! /proc/mdstat's format) and `md/` (md's sysfs attributes). Every
//! transport (fuser over /dev/fuse in [`super::fuse`], FUSE over io_uring
//! in [`super::ring`]) decodes its requests, calls [`MountCore`] and
//! encodes the answer; nothing here knows how a request came. Errors are
//! errno values, as the kernel wants them.

use crate::array::{ControlAccess, PlannedRead, PlannedWrite, ServedArray};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Who may use `array.img`: its mode and owner. They start from the mount's
/// options and follow chmod/chown for the mount's life (not kept on disk).
#[derive(Debug, Clone, Copy)]
pub struct ImageAccess {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
}

/// What a control path is, now.
enum ControlKind {
    Dir,
    File(ControlAccess),
}

/// The largest request asked of the kernel (it may grant less).
pub const MAX_REQUEST: u32 = 1 << 20;

pub const ROOT: u64 = 1;
pub const IMAGE: u64 = 2;
pub const MDSTAT: u64 = 3;
pub const IMAGE_NAME: &str = "array.img";
pub const MDSTAT_NAME: &str = "mdstat";

/// Control files and directories get inode numbers from here on, one per
/// path, kept for the mount's life.
const FIRST_CONTROL_INO: u64 = 16;

/// File handles: bit 0 says the file was opened for writing (its close
/// flushes the legs); the text files' handles count up from bit 1.
const FH_WRITABLE: u64 = 1;

const TTL: Duration = Duration::from_secs(1);

/// `fuse_open_out.open_flags` bits (include/uapi/linux/fuse.h).
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
pub const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;

/// A file's type, as a directory entry or an attribute gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

impl Kind {
    /// The `S_IF*` bits of `st_mode`.
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::Dir => libc::S_IFDIR,
            Kind::File => libc::S_IFREG,
        }
    }

    /// `d_type` of a directory entry.
    pub fn dirent_type(self) -> u32 {
        u32::from(match self {
            Kind::Dir => libc::DT_DIR,
            Kind::File => libc::DT_REG,
        })
    }
}

/// A file's attributes, and how long the kernel may keep them.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub time: SystemTime,
    pub kind: Kind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
    pub ttl: Duration,
}

/// An opened file: its handle and `FOPEN_*` flags.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    pub flags: u32,
}

/// The answer to statfs.
#[derive(Debug, Clone, Copy)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// The changes a setattr asks for (the rest of it, times, is accepted and
/// not kept).
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
}

/// How long the kernel may keep what it learnt of `ino`. Control files and
/// directories come and go with the legs (a removed leg's `dev-*` must be
/// gone at once, as in md's sysfs): not cached.
fn ttl(ino: u64) -> Duration {
    if ino >= FIRST_CONTROL_INO {
        Duration::ZERO
    } else {
        TTL
    }
}

/// Requests a user other than the mount's owner may make when the mount is
/// not `allow_other` (the kernel sends them without the caller's uid set),
/// as fuser's session has it: the others are refused with EACCES.
pub fn allowed_without_owner(op: Op) -> bool {
    matches!(
        op,
        Op::Read | Op::Write | Op::Fsync | Op::Release | Op::Other
    )
}

/// The kinds of request, for [`allowed_without_owner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Fsync,
    Release,
    /// READDIR, RELEASEDIR, FSYNCDIR, FORGET, DESTROY.
    Other,
    /// Anything else.
    Checked,
}

/// The mount's files and their state, shared by every transport thread.
pub struct MountCore<A: ServedArray> {
    array: Arc<A>,
    writeback_cache: bool,
    /// Control paths by inode (index + FIRST_CONTROL_INO).
    control_inodes: parking_lot::Mutex<Vec<String>>,
    uid: u32,
    gid: u32,
    image: parking_lot::Mutex<ImageAccess>,
    started: SystemTime,
    /// What each open text file (`mdstat`, a control file) showed at its
    /// last read from offset 0: a reader going on from there reads the same
    /// text, not the end of a newer one (sysfs does the same per open).
    texts: parking_lot::Mutex<std::collections::HashMap<u64, Arc<str>>>,
    next_handle: AtomicU64,
}

impl<A: ServedArray> MountCore<A> {
    /// `uid`/`gid` own the mount's files; `image` is who may use `array.img`.
    pub fn new(
        array: Arc<A>,
        uid: u32,
        gid: u32,
        image: ImageAccess,
        writeback_cache: bool,
    ) -> Self {
        MountCore {
            array,
            writeback_cache,
            control_inodes: parking_lot::Mutex::new(Vec::new()),
            uid,
            gid,
            image: parking_lot::Mutex::new(image),
            started: SystemTime::now(),
            texts: parking_lot::Mutex::new(std::collections::HashMap::new()),
            next_handle: AtomicU64::new(1),
        }
    }

    pub fn writeback_cache(&self) -> bool {
        self.writeback_cache
    }

    /// The mount's owner.
    pub fn owner(&self) -> u32 {
        self.uid
    }

    /// A handle of its own for an open text file.
    fn text_handle(&self, writing: bool) -> u64 {
        let n = self.next_handle.fetch_add(1, Ordering::Relaxed);
        n << 1 | if writing { FH_WRITABLE } else { 0 }
    }

    /// The part of a text file at `offset`, passed to `out`: made anew by
    /// `make` at offset 0, else the text this handle read last.
    fn text_of(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        out: &mut dyn FnMut(&[u8]),
        make: impl FnOnce() -> Result<String, i32>,
    ) -> Result<(), i32> {
        let kept = (offset > 0)
            .then(|| self.texts.lock().get(&fh).cloned())
            .flatten();
        let text = match kept {
            Some(t) => t,
            None => {
                let t: Arc<str> = make()?.into();
                self.texts.lock().insert(fh, t.clone());
                t
            }
        };
        let bytes = text.as_bytes();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        out(&bytes[start..end]);
        Ok(())
    }

    pub fn attr(&self, ino: u64) -> Option<Attr> {
        let (mut uid, mut gid) = (self.uid, self.gid);
        let (kind, perm, size, nlink) = match ino {
            ROOT => (Kind::Dir, 0o755, 0, 2),
            IMAGE => {
                let image = *self.image.lock();
                (uid, gid) = (image.uid, image.gid);
                // A read-only array's image has no write bits, whatever its mode.
                let mode = if self.array.read_only() {
                    image.mode & !0o222
                } else {
                    image.mode
                };
                (Kind::File, mode, self.array.size(), 1)
            }
            // Served with direct I/O, so the size is only a hint for tools.
            MDSTAT => (Kind::File, 0o444, 4096, 1),
            _ => match self.control_kind(&self.control_path(ino)?)? {
                ControlKind::Dir => (Kind::Dir, 0o755, 0, 2),
                ControlKind::File(access) => (Kind::File, access.perm(), 4096, 1),
            },
        };
        Some(Attr {
            ino,
            size,
            blocks: size.div_ceil(512),
            time: self.started,
            kind,
            perm,
            nlink,
            uid,
            gid,
            blksize: 4096,
            ttl: ttl(ino),
        })
    }

    fn control_path(&self, ino: u64) -> Option<String> {
        let index = usize::try_from(ino.checked_sub(FIRST_CONTROL_INO)?).ok()?;
        self.control_inodes.lock().get(index).cloned()
    }

    fn control_ino(&self, path: &str) -> u64 {
        let mut inodes = self.control_inodes.lock();
        let index = match inodes.iter().position(|p| p == path) {
            Some(i) => i,
            None => {
                inodes.push(path.to_string());
                inodes.len() - 1
            }
        };
        FIRST_CONTROL_INO + index as u64
    }

    fn control_kind(&self, path: &str) -> Option<ControlKind> {
        let files = self.array.control_files();
        if let Some((_, access)) = files.iter().find(|(p, _)| p == path) {
            return Some(ControlKind::File(*access));
        }
        let dir = format!("{path}/");
        files
            .iter()
            .any(|(p, _)| p.starts_with(&dir))
            .then_some(ControlKind::Dir)
    }

    /// The entries of a control directory ("" is the root's control part).
    fn control_children(&self, dir: &str) -> Vec<(String, Kind)> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out: Vec<(String, Kind)> = Vec::new();
        for (p, _) in self.array.control_files() {
            let Some(rest) = p.strip_prefix(&prefix) else {
                continue;
            };
            let (name, kind) = match rest.split_once('/') {
                Some((d, _)) => (d, Kind::Dir),
                None => (rest, Kind::File),
            };
            if !out.iter().any(|(n, _)| n == name) {
                out.push((name.to_string(), kind));
            }
        }
        out
    }

    /// The path of `name` in directory `parent`, if the parent is the root
    /// or a control directory.
    fn child_path(&self, parent: u64, name: &str) -> Option<String> {
        if parent == ROOT {
            return Some(name.to_string());
        }
        Some(format!("{}/{name}", self.control_path(parent)?))
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, i32> {
        let ino = match (parent, std::str::from_utf8(name).ok()) {
            (ROOT, Some(IMAGE_NAME)) => IMAGE,
            (ROOT, Some(MDSTAT_NAME)) => MDSTAT,
            (parent, Some(name)) => match self.child_path(parent, name) {
                Some(path) if self.control_kind(&path).is_some() => self.control_ino(&path),
                _ => return Err(libc::ENOENT),
            },
            _ => return Err(libc::ENOENT),
        };
        self.attr(ino).ok_or(libc::ENOENT)
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, i32> {
        self.attr(ino).ok_or(libc::ENOENT)
    }

    pub fn setattr(&self, ino: u64, set: SetAttr) -> Result<Attr, i32> {
        if set.mode.is_some() || set.uid.is_some() || set.gid.is_some() {
            if ino != IMAGE {
                return Err(libc::EPERM);
            }
            // The kernel has checked who may (default_permissions): the
            // owner for chmod, root for chown.
            let mut image = self.image.lock();
            if let Some(m) = set.mode {
                image.mode = (m & 0o7777) as u16;
            }
            image.uid = set.uid.unwrap_or(image.uid);
            image.gid = set.gid.unwrap_or(image.gid);
            log::info!(
                "{IMAGE_NAME}: mode {:04o}, owner {}:{} (until the array stops)",
                image.mode,
                image.uid,
                image.gid
            );
        }
        let control_file = matches!(
            self.control_path(ino).and_then(|p| self.control_kind(&p)),
            Some(ControlKind::File(access)) if access.writable()
        );
        if let Some(size) = set.size.filter(|_| !control_file) {
            if ino != IMAGE || size != self.array.size() {
                log::warn!(
                    "refused to resize {IMAGE_NAME} to {size} bytes: it has the array's fixed size \
                     ({} bytes); write into it without truncating (e.g. dd conv=notrunc)",
                    self.array.size()
                );
                return Err(libc::EPERM);
            }
        }
        // Times are not kept; accept touch-like updates.
        self.attr(ino).ok_or(libc::ENOENT)
    }

    /// `flags`: the open(2) flags.
    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened, i32> {
        let acc = flags & libc::O_ACCMODE;
        let writing = acc != libc::O_RDONLY;
        match ino {
            IMAGE => {
                if writing && self.array.read_only() {
                    return Err(libc::EROFS);
                }
                let fh = if writing { FH_WRITABLE } else { 0 };
                // O_DIRECT opens bypass the page cache (and the inode lock
                // the cached path holds), so direct writes run in parallel.
                let flags = if flags & libc::O_DIRECT != 0 {
                    FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES
                } else {
                    FOPEN_KEEP_CACHE
                };
                Ok(Opened { fh, flags })
            }
            MDSTAT => {
                if writing {
                    return Err(libc::EACCES);
                }
                Ok(Opened {
                    fh: self.text_handle(false),
                    flags: FOPEN_DIRECT_IO,
                })
            }
            ROOT => Err(libc::EISDIR),
            _ => match self.control_path(ino).and_then(|p| self.control_kind(&p)) {
                Some(ControlKind::File(access)) => {
                    let reading = acc != libc::O_WRONLY;
                    let refused = if writing && !access.writable() {
                        Some(("writing", "read-only"))
                    } else if reading && !access.readable() {
                        Some(("reading", "write-only"))
                    } else {
                        None
                    };
                    if let Some((how, what)) = refused {
                        log::warn!(
                            "md control: refused opening {} for {how}: it is {what}",
                            self.control_path(ino).unwrap_or_default()
                        );
                        return Err(libc::EACCES);
                    }
                    Ok(Opened {
                        fh: self.text_handle(writing),
                        flags: FOPEN_DIRECT_IO,
                    })
                }
                Some(ControlKind::Dir) => Err(libc::EISDIR),
                None => Err(libc::ENOENT),
            },
        }
    }

    /// Reads `size` bytes at `offset`; the bytes go to `out` (once, or not
    /// at all on an error). `flags`: the file's open(2) flags.
    pub fn read(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        flags: i32,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<(), i32> {
        match ino {
            IMAGE => {
                let direct = flags & libc::O_DIRECT != 0;
                self.array.read(offset, u64::from(size), direct, out)
            }
            MDSTAT => self.text_of(fh, offset, size, out, || Ok(self.array.mdstat())),
            ROOT => Err(libc::EISDIR),
            other => match self.control_path(other) {
                Some(path) => {
                    self.text_of(fh, offset, size, out, || self.array.control_read(&path))
                }
                None => Err(libc::ENOENT),
            },
        }
    }

    /// A read of `array.img` the caller may run in its own ring (see
    /// [`ServedArray::plan_read`]); None for any other file or when the
    /// ordinary [`MountCore::read`] must serve it.
    pub fn plan_read(&self, ino: u64, offset: u64, size: u32, flags: i32) -> Option<PlannedRead> {
        if ino != IMAGE {
            return None;
        }
        self.array
            .plan_read(offset, u64::from(size), flags & libc::O_DIRECT != 0)
    }

    /// Finishes a read from [`MountCore::plan_read`] (see
    /// [`ServedArray::finish_read`]).
    pub fn finish_read(
        &self,
        plan: PlannedRead,
        results: &[i32],
        buf: &mut [u8],
    ) -> Result<(), i32> {
        self.array.finish_read(plan, results, buf)
    }

    /// A write of `len` bytes to `array.img` the caller may run in its own
    /// ring (see [`ServedArray::plan_write`]); None for any other file or
    /// when the ordinary [`MountCore::write`] must serve it. `from_cache`
    /// and `flags` as for [`MountCore::write`].
    pub fn plan_write(
        &self,
        ino: u64,
        offset: u64,
        len: u32,
        from_cache: bool,
        flags: i32,
    ) -> Option<Result<PlannedWrite<'_>, i32>> {
        if ino != IMAGE {
            return None;
        }
        // As `write`: an O_DSYNC write not from the page cache is durable.
        let durable = flags & libc::O_DSYNC != 0 && !from_cache;
        self.array.plan_write(offset, u64::from(len), durable)
    }

    /// Finishes a write from [`MountCore::plan_write`]: the count written.
    pub fn finish_write(
        &self,
        plan: PlannedWrite<'_>,
        results: &[i32],
        data: &[u8],
    ) -> Result<u32, i32> {
        let n = self.array.finish_write(plan, results, data)?;
        u32::try_from(n).map_err(|_| libc::EIO)
    }

    /// Writes `data` at `offset`; the count written. `from_cache`: the
    /// kernel's writeback (FUSE_WRITE_CACHE); `flags`: the open(2) flags.
    pub fn write(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        from_cache: bool,
        flags: i32,
    ) -> Result<u32, i32> {
        let len = u32::try_from(data.len()).map_err(|_| libc::EINVAL)?;
        if ino != IMAGE {
            let Some(path) = self.control_path(ino) else {
                return Err(libc::EACCES);
            };
            let Ok(text) = std::str::from_utf8(data) else {
                log::warn!("{path}: refused a write that is not text");
                return Err(libc::EINVAL);
            };
            // One trailing newline, as md's sysfs words may have (md.c's
            // cmd_match); a second one is part of the value.
            let value = text.strip_suffix('\n').unwrap_or(text);
            return self.array.control_write(&path, value).map(|()| len);
        }
        // The kernel fsyncs after an O_DSYNC write only when it went
        // through its page cache; a direct-I/O write (FOPEN_DIRECT_IO, or an
        // O_DIRECT open) carries O_DSYNC (from the open, O_SYNC, or
        // RWF_DSYNC) in its flags and must be durable when acknowledged.
        let durable = flags & libc::O_DSYNC != 0 && !from_cache;
        match self.array.write(offset, data, durable)? {
            // The kernel's writeback ignores a short count and would drop
            // the bytes past the image's end without a word: an error makes
            // the next fsync or close report it (the bytes inside the image
            // are written).
            n if n < data.len() && self.writeback_cache => {
                log::warn!(
                    "a written-back page reaches past the image's end ({} bytes at offset {offset}, \
                     {} past the end): the excess is refused with ENOSPC",
                    data.len(),
                    data.len() - n
                );
                Err(libc::ENOSPC)
            }
            n => u32::try_from(n).map_err(|_| libc::EIO),
        }
    }

    pub fn flush(&self, ino: u64, fh: u64) -> Result<(), i32> {
        // Closing a file that was written makes its writes durable, so a
        // writer that closes without fsync still finds its data after a crash.
        if ino == IMAGE && fh & FH_WRITABLE != 0 {
            self.array.flush()?;
        }
        Ok(())
    }

    pub fn fsync(&self, ino: u64) -> Result<(), i32> {
        if ino != IMAGE {
            return Ok(());
        }
        self.array.flush()
    }

    pub fn release(&self, fh: u64) {
        self.texts.lock().remove(&fh);
    }

    /// The entries of directory `ino` from `offset` on: (inode, offset of
    /// the next one, type, name).
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<(u64, u64, Kind, String)>, i32> {
        let (dir, mut entries) = if ino == ROOT {
            (
                String::new(),
                vec![
                    (IMAGE_NAME.to_string(), Kind::File),
                    (MDSTAT_NAME.to_string(), Kind::File),
                ],
            )
        } else {
            match self.control_path(ino) {
                Some(p) if matches!(self.control_kind(&p), Some(ControlKind::Dir)) => {
                    (p, Vec::new())
                }
                _ => return Err(libc::ENOTDIR),
            }
        };
        entries.extend(self.control_children(&dir));
        let mut all = vec![
            (ino, Kind::Dir, ".".to_string()),
            (ROOT, Kind::Dir, "..".to_string()),
        ];
        for (name, kind) in entries {
            let child = match name.as_str() {
                IMAGE_NAME if ino == ROOT => IMAGE,
                MDSTAT_NAME if ino == ROOT => MDSTAT,
                _ => self.control_ino(&self.child_path(ino, &name).unwrap_or_default()),
            };
            all.push((child, kind, name));
        }
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        Ok(all
            .into_iter()
            .enumerate()
            .skip(skip)
            .map(|(i, (child, kind, name))| (child, i as u64 + 1, kind, name))
            .collect())
    }

    pub fn statfs(&self) -> Statfs {
        Statfs {
            blocks: self.array.size() / 4096,
            bfree: 0,
            bavail: 0,
            files: 3,
            ffree: 0,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
        }
    }

    /// No extended attributes. Only ENOSYS makes the kernel stop asking
    /// (ENOTSUP would cost a round trip before every write).
    pub fn xattr_errno(&self) -> i32 {
        libc::ENOSYS
    }
}
