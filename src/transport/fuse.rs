//! The fuser adapter: FUSE requests read from /dev/fuse (INIT, and every
//! request the io_uring transport does not carry: FORGET, INTERRUPT, and
//! all of them when that transport is off) translated into calls on the
//! transport-neutral [`MountCore`], and its answers into fuser's replies.

use super::core::{Attr, Kind, MountCore, SetAttr, MAX_REQUEST};
use crate::array::ServedArray;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::SystemTime;

pub use super::core::{ImageAccess, IMAGE_NAME, MDSTAT_NAME};

/// What the kernel offered and was answered at INIT, for the transport's
/// choice once the session is made.
#[derive(Debug, Clone, Copy, Default)]
pub struct InitSeen {
    /// The kernel offered FUSE_OVER_IO_URING (its `enable_uring` is on).
    pub uring_offered: bool,
    /// We asked for it (the transport is not `dev-fuse`).
    pub uring_requested: bool,
    pub max_write: u32,
    pub max_readahead: u32,
}

pub struct ArrayFs<A: ServedArray> {
    core: Arc<MountCore<A>>,
    /// Ask for FUSE_OVER_IO_URING when the kernel offers it.
    want_uring: bool,
    init: Arc<parking_lot::Mutex<InitSeen>>,
}

impl<A: ServedArray> ArrayFs<A> {
    pub fn new(
        core: Arc<MountCore<A>>,
        want_uring: bool,
        init: Arc<parking_lot::Mutex<InitSeen>>,
    ) -> Self {
        ArrayFs {
            core,
            want_uring,
            init,
        }
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.time,
        mtime: a.time,
        ctime: a.time,
        crtime: a.time,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl<A: ServedArray> Filesystem for ArrayFs<A> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let mut max_write = MAX_REQUEST;
        if let Err(nearest) = config.set_max_write(MAX_REQUEST) {
            max_write = nearest;
            let _ = config.set_max_write(nearest);
        }
        let mut max_readahead = MAX_REQUEST;
        if let Err(nearest) = config.set_max_readahead(MAX_REQUEST) {
            max_readahead = nearest;
            let _ = config.set_max_readahead(nearest);
        }
        // More requests in flight: readahead and async direct I/O.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let mut wanted = InitFlags::FUSE_ASYNC_DIO | InitFlags::FUSE_ASYNC_READ;
        if self.core.writeback_cache() {
            // Buffered writes gather in the kernel's page cache and reach us
            // in large batches; fsync and close still write them back and
            // then flush the legs. But the kernel then owns the file's size:
            // a buffered write past the end is accepted and fails only at
            // writeback. Hence opt-in.
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        let offered = config
            .capabilities()
            .contains(InitFlags::FUSE_OVER_IO_URING);
        if self.want_uring && offered {
            // fuser sends the high half of the flags (flags2) in its reply
            // with FUSE_INIT_EXT, so the kernel sees this bit.
            wanted |= InitFlags::FUSE_OVER_IO_URING;
        }
        let _ = config.add_capabilities(wanted & config.capabilities());
        *self.init.lock() = InitSeen {
            uring_offered: offered,
            uring_requested: self.want_uring && offered,
            max_write,
            max_readahead,
        };
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.core.lookup(parent.0, name.as_bytes()) {
            Ok(a) => reply.entry(&a.ttl, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.core.getattr(ino.0) {
            Ok(a) => reply.attr(&a.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
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
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
        };
        match self.core.setattr(ino.0, set) {
            Ok(a) => reply.attr(&a.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.core.open(ino.0, flags.0) {
            Ok(o) => reply.opened(FileHandle(o.fh), FopenFlags::from_bits_retain(o.flags)),
            Err(e) => reply.error(errno(e)),
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
        let mut reply = Some(reply);
        let result = self
            .core
            .read(ino.0, fh.0, offset, size, flags.0, &mut |bytes| {
                if let Some(r) = reply.take() {
                    r.data(bytes);
                }
            });
        if let Some(r) = reply.take() {
            match result {
                Err(e) => r.error(errno(e)),
                // The core passes the bytes on success; none is an empty read.
                Ok(()) => r.data(&[]),
            }
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
        let from_cache = write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        match self.core.write(ino.0, offset, data, from_cache, flags.0) {
            Ok(n) => reply.written(n),
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
        match self.core.flush(ino.0, fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.core.fsync(ino.0) {
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
        self.core.release(fh.0);
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
        match self.core.readdir(ino.0, offset) {
            Ok(entries) => {
                for (child, next, kind, name) in entries {
                    if reply.add(INodeNo(child), next, file_type(kind), &name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(errno(self.core.xattr_errno()));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(errno(self.core.xattr_errno()));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.core.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
        );
    }
}
