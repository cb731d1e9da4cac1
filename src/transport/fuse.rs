//! The FUSE adapter: a directory holding `array.img` (the array's data) and
//! `mdstat` (its status in /proc/mdstat's format). It only translates FUSE
//! requests into calls on a [`ServedArray`]; it knows nothing of legs,
//! superblocks or bitmaps.

use crate::array::{ControlAccess, ServedArray};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
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

const ROOT: u64 = 1;
const IMAGE: u64 = 2;
const MDSTAT: u64 = 3;
pub const IMAGE_NAME: &str = "array.img";
pub const MDSTAT_NAME: &str = "mdstat";

/// Control files and directories get inode numbers from here on, one per
/// path, kept for the mount's life.
const FIRST_CONTROL_INO: u64 = 16;

/// File handles: bit 0 says the file was opened for writing (its close
/// flushes the legs); the text files' handles count up from bit 1.
const FH_WRITABLE: u64 = 1;

const TTL: Duration = Duration::from_secs(1);

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

pub struct ArrayFs<A: ServedArray> {
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
    next_handle: std::sync::atomic::AtomicU64,
}

impl<A: ServedArray> ArrayFs<A> {
    /// `uid`/`gid` own the mount's files; `image` is who may use `array.img`.
    pub fn new(
        array: Arc<A>,
        uid: u32,
        gid: u32,
        image: ImageAccess,
        writeback_cache: bool,
    ) -> Self {
        ArrayFs {
            array,
            writeback_cache,
            control_inodes: parking_lot::Mutex::new(Vec::new()),
            uid,
            gid,
            image: parking_lot::Mutex::new(image),
            started: SystemTime::now(),
            texts: parking_lot::Mutex::new(std::collections::HashMap::new()),
            next_handle: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// A handle of its own for an open text file.
    fn text_handle(&self, writing: bool) -> FileHandle {
        let n = self
            .next_handle
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        FileHandle(n << 1 | if writing { FH_WRITABLE } else { 0 })
    }

    /// Replies with the part of a text file at `offset`: made anew by
    /// `make` at offset 0, else the text this handle read last.
    fn reply_text_of(
        &self,
        fh: FileHandle,
        offset: u64,
        size: u32,
        reply: ReplyData,
        make: impl FnOnce() -> Result<String, i32>,
    ) {
        let kept = (offset > 0)
            .then(|| self.texts.lock().get(&fh.0).cloned())
            .flatten();
        let text = match kept {
            Some(t) => t,
            None => match make() {
                Ok(t) => {
                    let t: Arc<str> = t.into();
                    self.texts.lock().insert(fh.0, t.clone());
                    t
                }
                Err(e) => return reply.error(errno(e)),
            },
        };
        reply_text(&text, offset, size, reply);
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (mut uid, mut gid) = (self.uid, self.gid);
        let (kind, perm, size, nlink) = match ino {
            ROOT => (FileType::Directory, 0o755, 0, 2),
            IMAGE => {
                let image = *self.image.lock();
                (uid, gid) = (image.uid, image.gid);
                // A read-only array's image has no write bits, whatever its mode.
                let mode = if self.array.read_only() {
                    image.mode & !0o222
                } else {
                    image.mode
                };
                (FileType::RegularFile, mode, self.array.size(), 1)
            }
            // Served with direct I/O, so the size is only a hint for tools.
            MDSTAT => (FileType::RegularFile, 0o444, 4096, 1),
            _ => match self.control_kind(&self.control_path(ino)?)? {
                ControlKind::Dir => (FileType::Directory, 0o755, 0, 2),
                ControlKind::File(access) => (FileType::RegularFile, access.perm(), 4096, 1),
            },
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
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl<A: ServedArray> ArrayFs<A> {
    fn control_path(&self, ino: u64) -> Option<String> {
        let index = ino.checked_sub(FIRST_CONTROL_INO)? as usize;
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
    fn control_children(&self, dir: &str) -> Vec<(String, FileType)> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out: Vec<(String, FileType)> = Vec::new();
        for (p, _) in self.array.control_files() {
            let Some(rest) = p.strip_prefix(&prefix) else {
                continue;
            };
            let (name, kind) = match rest.split_once('/') {
                Some((d, _)) => (d, FileType::Directory),
                None => (rest, FileType::RegularFile),
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
}

/// Replies with the part of `text` at `offset`.
fn reply_text(text: &str, offset: u64, size: u32, reply: ReplyData) {
    let bytes = text.as_bytes();
    let start = (offset as usize).min(bytes.len());
    let end = (start + size as usize).min(bytes.len());
    reply.data(&bytes[start..end]);
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl<A: ServedArray> Filesystem for ArrayFs<A> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_REQUEST) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(MAX_REQUEST) {
            let _ = config.set_max_readahead(nearest);
        }
        // More requests in flight: readahead and async direct I/O.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let mut wanted = InitFlags::FUSE_ASYNC_DIO | InitFlags::FUSE_ASYNC_READ;
        if self.writeback_cache {
            // Buffered writes gather in the kernel's page cache and reach us
            // in large batches; fsync and close still write them back and
            // then flush the legs. But the kernel then owns the file's size:
            // a buffered write past the end is accepted and fails only at
            // writeback. Hence opt-in.
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = match (parent.0, name.to_str()) {
            (ROOT, Some(IMAGE_NAME)) => IMAGE,
            (ROOT, Some(MDSTAT_NAME)) => MDSTAT,
            (parent, Some(name)) => match self.child_path(parent, name) {
                Some(path) if self.control_kind(&path).is_some() => self.control_ino(&path),
                _ => return reply.error(Errno::ENOENT),
            },
            _ => return reply.error(Errno::ENOENT),
        };
        match self.attr(ino) {
            Some(a) => reply.entry(&ttl(ino), &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&ttl(ino.0), &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
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
        if mode.is_some() || uid.is_some() || gid.is_some() {
            if ino.0 != IMAGE {
                return reply.error(Errno::EPERM);
            }
            // The kernel has checked who may (default_permissions): the
            // owner for chmod, root for chown.
            let mut image = self.image.lock();
            if let Some(m) = mode {
                image.mode = (m & 0o7777) as u16;
            }
            image.uid = uid.unwrap_or(image.uid);
            image.gid = gid.unwrap_or(image.gid);
            log::info!(
                "{IMAGE_NAME}: mode {:04o}, owner {}:{} (until the array stops)",
                image.mode,
                image.uid,
                image.gid
            );
        }
        let control_file = matches!(
            self.control_path(ino.0).and_then(|p| self.control_kind(&p)),
            Some(ControlKind::File(access)) if access.writable()
        );
        if let Some(size) = size.filter(|_| !control_file) {
            if ino.0 != IMAGE || size != self.array.size() {
                log::warn!(
                    "refused to resize {IMAGE_NAME} to {size} bytes: it has the array's fixed size \
                     ({} bytes); write into it without truncating (e.g. dd conv=notrunc)",
                    self.array.size()
                );
                return reply.error(Errno::EPERM);
            }
        }
        // Times are not kept; accept touch-like updates.
        match self.attr(ino.0) {
            Some(a) => reply.attr(&ttl(ino.0), &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writing = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        match ino.0 {
            IMAGE => {
                if writing && self.array.read_only() {
                    return reply.error(Errno::EROFS);
                }
                let fh = if writing { FH_WRITABLE } else { 0 };
                // O_DIRECT opens bypass the page cache (and the inode lock
                // the cached path holds), so direct writes run in parallel.
                let open_flags = if flags.0 & libc::O_DIRECT != 0 {
                    FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
                } else {
                    FopenFlags::FOPEN_KEEP_CACHE
                };
                reply.opened(FileHandle(fh), open_flags)
            }
            MDSTAT => {
                if writing {
                    return reply.error(Errno::EACCES);
                }
                reply.opened(self.text_handle(false), FopenFlags::FOPEN_DIRECT_IO)
            }
            ROOT => reply.error(Errno::EISDIR),
            _ => match self.control_path(ino.0).and_then(|p| self.control_kind(&p)) {
                Some(ControlKind::File(access)) => {
                    let reading = !matches!(flags.acc_mode(), OpenAccMode::O_WRONLY);
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
                            self.control_path(ino.0).unwrap_or_default()
                        );
                        return reply.error(Errno::EACCES);
                    }
                    reply.opened(self.text_handle(writing), FopenFlags::FOPEN_DIRECT_IO)
                }
                Some(ControlKind::Dir) => reply.error(Errno::EISDIR),
                None => reply.error(Errno::ENOENT),
            },
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match ino.0 {
            IMAGE => {
                let mut reply = Some(reply);
                let direct = flags.0 & libc::O_DIRECT != 0;
                let result = self.array.read(offset, size as u64, direct, &mut |bytes| {
                    if let Some(r) = reply.take() {
                        r.data(bytes);
                    }
                });
                if let (Err(e), Some(r)) = (result, reply.take()) {
                    r.error(errno(e));
                }
            }
            MDSTAT => self.reply_text_of(fh, offset, size, reply, || Ok(self.array.mdstat())),
            ROOT => reply.error(Errno::EISDIR),
            other => match self.control_path(other) {
                Some(path) => {
                    self.reply_text_of(fh, offset, size, reply, || self.array.control_read(&path))
                }
                None => reply.error(Errno::ENOENT),
            },
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino.0 != IMAGE {
            let Some(path) = self.control_path(ino.0) else {
                return reply.error(Errno::EACCES);
            };
            let Ok(text) = std::str::from_utf8(data) else {
                log::warn!("{path}: refused a write that is not text");
                return reply.error(Errno::EINVAL);
            };
            // One trailing newline, as md's sysfs words may have (md.c's
            // cmd_match); a second one is part of the value.
            let value = text.strip_suffix('\n').unwrap_or(text);
            return match self.array.control_write(&path, value) {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(errno(e)),
            };
        }
        // The kernel fsyncs after an O_DSYNC write only when it went
        // through its page cache; a direct-I/O write (FOPEN_DIRECT_IO, or an
        // O_DIRECT open) carries O_DSYNC (from the open, O_SYNC, or
        // RWF_DSYNC) in its flags and must be durable when acknowledged.
        let durable =
            flags.0 & libc::O_DSYNC != 0 && !write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        match self.array.write(offset, data, durable) {
            // The kernel's writeback ignores a short count and would drop
            // the bytes past the image's end without a word: an error makes
            // the next fsync or close report it (the bytes inside the image
            // are written).
            Ok(n) if n < data.len() && self.writeback_cache => {
                log::warn!(
                    "a written-back page reaches past the image's end ({} bytes at offset {offset}, \
                     {} past the end): the excess is refused with ENOSPC",
                    data.len(),
                    data.len() - n
                );
                reply.error(Errno::ENOSPC)
            }
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Closing a file that was written makes its writes durable, so a
        // writer that closes without fsync still finds its data after a crash.
        if ino.0 == IMAGE && fh.0 & FH_WRITABLE != 0 {
            if let Err(e) = self.array.flush() {
                return reply.error(errno(e));
            }
        }
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino.0 != IMAGE {
            return reply.ok();
        }
        match self.array.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.texts.lock().remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (dir, mut entries) = if ino.0 == ROOT {
            (
                String::new(),
                vec![
                    (IMAGE_NAME.to_string(), FileType::RegularFile),
                    (MDSTAT_NAME.to_string(), FileType::RegularFile),
                ],
            )
        } else {
            match self.control_path(ino.0) {
                Some(p) if matches!(self.control_kind(&p), Some(ControlKind::Dir)) => {
                    (p, Vec::new())
                }
                _ => return reply.error(Errno::ENOTDIR),
            }
        };
        entries.extend(self.control_children(&dir));
        let mut all = vec![
            (ino.0, FileType::Directory, ".".to_string()),
            (ROOT, FileType::Directory, "..".to_string()),
        ];
        for (name, kind) in entries {
            let child = match name.as_str() {
                IMAGE_NAME if ino.0 == ROOT => IMAGE,
                MDSTAT_NAME if ino.0 == ROOT => MDSTAT,
                _ => self.control_ino(&self.child_path(ino.0, &name).unwrap_or_default()),
            };
            all.push((child, kind, name));
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
        // No extended attributes. Only ENOSYS makes the kernel stop asking
        // (ENOTSUP would cost a round trip before every write).
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.array.size() / 4096;
        reply.statfs(blocks, 0, 0, 3, 0, 4096, 255, 4096);
    }
}
