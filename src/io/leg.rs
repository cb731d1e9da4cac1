//! One backing leg: a regular file or a block device, opened for direct I/O
//! where it allows it, locked against a second mdfuse; or an export on an
//! NBD server, named by its URI (`nbd://`, `nbd+unix://`).
//!
//! Offsets here are absolute byte offsets on the leg; the RAID1 engine adds
//! the data offset.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, MutexGuard};
use std::sync::atomic::{AtomicU64, Ordering};

use super::checked_open::{kind_name, CheckedPath};
use super::device::{FileDevice, LegDevice};
use super::lock::{lock_exclusive, LockError};
use super::nbd::uri::{is_nbd_uri, NbdUri};
use super::nbd::NbdDevice;

/// How a leg's data is read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// O_DIRECT: aligned buffers, no page cache between the array and the leg.
    Direct,
    /// Through the host's page cache (for filesystems without O_DIRECT, or by choice).
    Buffered,
}

#[derive(Debug, thiserror::Error)]
pub enum LegError {
    #[error("leg {path}: cannot open: {source}{hint}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error(
        "leg {path} is busy: a filesystem is mounted on it, or md, dm or another program holds it \
         (check with `lsblk {path}` and `fuser -v {path}`)"
    )]
    DeviceBusy { path: PathBuf },
    #[error("leg {path} is {kind}: a leg must be a regular file or a block device")]
    NotFileOrDevice { path: PathBuf, kind: &'static str },
    #[error(
        "leg {path} is in use by another mdfuse{holder} (it holds the lock); stop that one first"
    )]
    InUse { path: PathBuf, holder: String },
    #[error(
        "leg {path} is already open in this mdfuse: the same file was given twice (under two names?)"
    )]
    OpenTwice { path: PathBuf },
    #[error("leg {path}: cannot lock: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("leg {path}: {op} of {len} bytes at offset {offset} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        offset: u64,
        len: usize,
        source: std::io::Error,
    },
    #[error("leg {path}: cannot flush to stable storage: {source}")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A flush that nobody could be told of (a background one: safe mode,
    /// the bitmap daemon, a superblock update) failed earlier. The kernel
    /// reports a writeback error once per open file, so the next flush
    /// returns success: this is that error, kept for the next flush whose
    /// caller waits for the answer (fsync on the image).
    #[error(
        "leg {path}: an earlier flush failed ({what}): writes acknowledged before it may not be \
         on stable storage"
    )]
    EarlierFlush {
        path: PathBuf,
        what: String,
        errno: i32,
    },
    /// A leg named by a URI that does not parse (or asks for TLS).
    #[error("leg {source}")]
    Uri {
        path: PathBuf,
        source: super::nbd::uri::UriError,
    },
    /// An NBD leg that cannot be connected to or cannot serve as a leg.
    #[error("leg {source}")]
    Remote {
        path: PathBuf,
        source: super::nbd::client::NbdError,
    },
}

impl LegError {
    /// The OS error number behind this error, for FUSE replies.
    pub fn errno(&self) -> i32 {
        let src = match self {
            LegError::Open { source, .. }
            | LegError::Lock { source, .. }
            | LegError::Io { source, .. }
            | LegError::Sync { source, .. } => source,
            LegError::NotFileOrDevice { .. } => return libc::ENODEV,
            LegError::Uri { .. } => return libc::EINVAL,
            LegError::Remote { source, .. } => {
                return match source {
                    super::nbd::client::NbdError::Connect { source, .. } => {
                        source.raw_os_error().unwrap_or(libc::EIO)
                    }
                    super::nbd::client::NbdError::Unsuitable { .. } => libc::EINVAL,
                    _ => libc::EIO,
                }
            }
            LegError::EarlierFlush { errno, .. } => return *errno,
            LegError::InUse { .. } | LegError::OpenTwice { .. } | LegError::DeviceBusy { .. } => {
                return libc::EBUSY
            }
        };
        src.raw_os_error().unwrap_or(libc::EIO)
    }
}

/// Where a leg is, parsed once from what the user gave: a path (a file or
/// a block device), an NBD URI, or, for tests, a name in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    Path(PathBuf),
    Memory(String),
    Nbd(NbdUri),
}

impl Locator {
    /// What the user gave as a leg: an `nbd*://` URI (refused when it does
    /// not parse or asks for TLS), else a path.
    pub fn parse(given: &Path) -> Result<Locator, LegError> {
        match given.to_str() {
            Some(s) if is_nbd_uri(s) => {
                NbdUri::parse(s)
                    .map(Locator::Nbd)
                    .map_err(|source| LegError::Uri {
                        path: given.to_owned(),
                        source,
                    })
            }
            _ => Ok(Locator::Path(given.to_owned())),
        }
    }

    /// Names the same leg as `other`: equal paths, or URIs naming the same
    /// export on the same server (whatever their options).
    pub fn same_leg(&self, other: &Locator) -> bool {
        match (self, other) {
            (Locator::Nbd(a), Locator::Nbd(b)) => a.addr == b.addr && a.export == b.export,
            (a, b) => a == b,
        }
    }

    /// A leg on another machine (or behind a socket): not a file here.
    pub fn is_remote(&self) -> bool {
        matches!(self, Locator::Nbd(_))
    }

    /// The leg's short name (md's `dev-NAME`): a file's name, or a safe
    /// name derived from a URI.
    pub fn short_name(&self) -> String {
        match self {
            Locator::Path(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
            Locator::Memory(name) => format!("mem:{name}"),
            Locator::Nbd(u) => u.safe_name(),
        }
    }
}

/// True when `given` names a leg by an NBD URI (a network leg: no file to
/// stat, lock or canonicalize).
pub fn is_remote_name(given: &Path) -> bool {
    given.to_str().is_some_and(is_nbd_uri)
}

impl std::fmt::Display for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Locator::Path(p) => write!(f, "{}", p.display()),
            Locator::Memory(name) => write!(f, "mem:{name}"),
            Locator::Nbd(u) => write!(f, "{u}"),
        }
    }
}

/// The short name of the leg given as `given` (a path or a URI): see
/// [`Locator::short_name`].
pub fn short_name(given: &Path) -> String {
    match Locator::parse(given) {
        Ok(l) => l.short_name(),
        Err(_) => Locator::Path(given.to_owned()).short_name(),
    }
}

#[derive(Debug)]
pub struct Leg {
    /// The leg's name in messages and md's files (its path, or `mem:NAME`).
    path: PathBuf,
    locator: Locator,
    device: Box<dyn LegDevice>,
    stats: LegIoStats,
    mode: IoMode,
    is_block_device: bool,
    size: u64,
    /// Held while the leg is flushed (flushes of a leg are serialized, so
    /// one that starts after a failed one learns of it); holds the failure
    /// of a background flush until a reported flush takes it.
    flushes: Mutex<Option<FailedFlush>>,
}

/// A leg's I/O since it was opened, as a block device's `stat` counts it:
/// requests and bytes read and written, flushes (md's `dev-*/block/stat`
/// shows them).
#[derive(Debug, Default)]
pub struct LegIoStats {
    pub read_ios: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_ios: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
}

impl LegIoStats {
    pub(crate) fn count_read(&self, bytes: u64) {
        self.read_ios.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(crate) fn count_write(&self, bytes: u64) {
        self.write_ios.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(crate) fn count_flush(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// The leg's line in the layout of the kernel's block `stat` file
    /// (Documentation/block/stat.rst): 17 fields, each right-aligned in 8;
    /// times, merges, requests in flight and discards are 0 (not kept).
    pub fn block_stat_line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let fields: [u64; 17] = [
            g(&self.read_ios),
            0,
            g(&self.read_bytes) / 512,
            0,
            g(&self.write_ios),
            0,
            g(&self.write_bytes) / 512,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            g(&self.flushes),
            0,
        ];
        fields
            .iter()
            .map(|v| format!("{v:>8}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A failed flush whose caller could not tell the user.
#[derive(Debug, Clone)]
pub struct FailedFlush {
    what: String,
    errno: i32,
}

/// The right to flush a leg (see [`Leg::flush_guard`]): flushes of one leg
/// run one at a time, and the failure of one nobody was told of waits here
/// for the next one whose caller tells the user.
pub struct FlushGuard<'a> {
    leg: &'a Leg,
    noted: MutexGuard<'a, Option<FailedFlush>>,
}

impl FlushGuard<'_> {
    /// Settles the outcome of the flush run under this guard. `reported`:
    /// its caller hands the result to the user (fsync on the image, an
    /// O_DSYNC write), so a failure noted by an earlier background flush is
    /// returned now, and forgotten. Otherwise a failure is noted for the
    /// next reported flush (and still returned, so the caller can fail the
    /// leg).
    pub fn settle(&mut self, result: Result<(), LegError>, reported: bool) -> Result<(), LegError> {
        if reported {
            let earlier = self.noted.take();
            return match (result, earlier) {
                (Err(e), _) => Err(e),
                (Ok(()), Some(f)) => Err(LegError::EarlierFlush {
                    path: self.leg.path.clone(),
                    what: f.what,
                    errno: f.errno,
                }),
                (Ok(()), None) => Ok(()),
            };
        }
        if let Err(e) = &result {
            if self.noted.is_none() {
                *self.noted = Some(FailedFlush {
                    what: e.to_string(),
                    errno: e.errno(),
                });
            }
        }
        result
    }

    /// fdatasync under this guard, settled (see [`FlushGuard::settle`]).
    pub fn sync_data(&mut self, reported: bool) -> Result<(), LegError> {
        let r = self.leg.fdatasync();
        self.settle(r, reported)
    }
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl Leg {
    /// Opens a leg. With `IoMode::Direct` a filesystem that refuses O_DIRECT
    /// (tmpfs, some FUSE filesystems) makes the leg fall back to buffered I/O,
    /// with a log line saying so. `lock` takes an exclusive flock so a second
    /// mdfuse cannot use the leg at the same time.
    pub fn open(path: &Path, mode: IoMode, writable: bool, lock: bool) -> Result<Leg, LegError> {
        if let Locator::Nbd(uri) = Locator::parse(path)? {
            return Leg::open_nbd(uri, mode, writable);
        }
        let checked = open_checked(path)?;
        let meta = checked.metadata();
        let is_block_device = meta.file_type().is_block_device();
        // A block device we write is opened exclusively, as mdadm opens
        // members: the kernel then refuses it while a filesystem is mounted
        // on it or md, dm or another program holds it (and them while we do).
        let exclusive = if is_block_device && writable && lock {
            libc::O_EXCL
        } else {
            0
        };
        // The inode checked above, not whatever the name points to by now.
        let open_with = |flags: i32| checked.reopen(writable, flags | exclusive);
        let (file, mode) = match mode {
            IoMode::Buffered => (open_with(0), IoMode::Buffered),
            IoMode::Direct => match open_with(libc::O_DIRECT) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    log::warn!(
                        "leg {}: its filesystem refuses O_DIRECT; using buffered I/O for it",
                        path.display()
                    );
                    (open_with(0), IoMode::Buffered)
                }
                other => (other, IoMode::Direct),
            },
        };
        let file = file.map_err(|source| {
            if exclusive != 0 && source.raw_os_error() == Some(libc::EBUSY) {
                return LegError::DeviceBusy {
                    path: path.to_owned(),
                };
            }
            LegError::Open {
                path: path.to_owned(),
                hint: if source.raw_os_error() == Some(libc::EACCES)
                    || source.raw_os_error() == Some(libc::EROFS)
                {
                    " (mdfuse needs read-write access to every leg)"
                } else {
                    ""
                },
                source,
            }
        })?;
        if lock {
            match lock_exclusive(&file) {
                Ok(()) => {}
                Err(LockError::Held { holder }) => {
                    return Err(LegError::InUse {
                        path: path.to_owned(),
                        holder: holder
                            .map(|p| format!(" (process {p})"))
                            .unwrap_or_default(),
                    })
                }
                Err(LockError::HeldHere) => {
                    return Err(LegError::OpenTwice {
                        path: path.to_owned(),
                    })
                }
                Err(LockError::Io(source)) => {
                    return Err(LegError::Lock {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
        let size = if is_block_device {
            let mut bytes: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut bytes) };
            if rc != 0 {
                return Err(LegError::Open {
                    path: path.to_owned(),
                    source: std::io::Error::last_os_error(),
                    hint: " (BLKGETSIZE64)",
                });
            }
            bytes
        } else {
            file.metadata()
                .map_err(|source| LegError::Open {
                    path: path.to_owned(),
                    source,
                    hint: " (fstat)",
                })?
                .len()
        };
        Ok(Leg {
            path: path.to_owned(),
            locator: Locator::Path(path.to_owned()),
            device: Box::new(FileDevice::new(file, is_block_device)),
            mode,
            is_block_device,
            size,
            stats: LegIoStats::default(),
            flushes: Mutex::new(None),
        })
    }

    /// A leg on an NBD server: connected and handshaken. Its I/O needs no
    /// alignment of its own beyond the server's minimum block (at most
    /// 4 KiB, which direct mode's alignment satisfies), so it keeps the
    /// mode asked for. No lock: the server decides who may connect
    /// (qemu-nbd serves one client unless told `--shared`).
    fn open_nbd(uri: NbdUri, mode: IoMode, writable: bool) -> Result<Leg, LegError> {
        let path = PathBuf::from(uri.to_string());
        let device = NbdDevice::open(&uri, writable).map_err(|source| LegError::Remote {
            path: path.clone(),
            source,
        })?;
        Ok(Leg {
            path,
            size: device.size(),
            locator: Locator::Nbd(uri),
            device: Box::new(device),
            mode,
            is_block_device: false,
            stats: LegIoStats::default(),
            flushes: Mutex::new(None),
        })
    }

    /// Closes this handle (releasing its lock) and opens the leg again in `mode`.
    pub fn reopen(self, mode: IoMode, writable: bool) -> Result<Leg, LegError> {
        let path = self.path.clone();
        drop(self);
        Leg::open(&path, mode, writable, true)
    }

    /// A leg in memory (`mem:NAME`) on `device`, for tests of the engine:
    /// buffered (no alignment), not locked.
    pub fn in_memory(name: &str, device: Box<dyn LegDevice>, size: u64) -> Leg {
        let locator = Locator::Memory(name.to_owned());
        Leg {
            path: PathBuf::from(locator.to_string()),
            locator,
            device,
            mode: IoMode::Buffered,
            is_block_device: false,
            size,
            stats: LegIoStats::default(),
            flushes: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the leg is, as parsed.
    /// md's name for this leg (see [`Locator::short_name`]).
    pub fn short_name(&self) -> String {
        self.locator.short_name()
    }

    pub fn locator(&self) -> &Locator {
        &self.locator
    }

    pub fn mode(&self) -> IoMode {
        self.mode
    }

    /// Nothing written to the leg is known to be durable: an NBD server
    /// that advertises no flush.
    pub fn is_volatile(&self) -> bool {
        self.device.is_volatile()
    }

    /// A remote leg's connection (None: a local leg).
    pub fn link_status(&self) -> Option<super::device::LinkStatus> {
        self.device.link_status()
    }

    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    /// Size of the leg in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads exactly `buf.len()` bytes at `offset`. In direct mode `buf`,
    /// `offset` and the length must be 4 KiB aligned.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), LegError> {
        self.device
            .read_exact_at(buf, offset)
            .map_err(|source| self.io_error("read", offset, buf.len(), source))?;
        self.stats.count_read(buf.len() as u64);
        Ok(())
    }

    /// What the leg has read, written and flushed since it was opened.
    pub fn io_stats(&self) -> &LegIoStats {
        &self.stats
    }

    /// Writes all of `buf` at `offset` (same alignment rules as `read_at`).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), LegError> {
        self.device
            .write_all_at(buf, offset)
            .map_err(|source| self.io_error("write", offset, buf.len(), source))?;
        self.stats.count_write(buf.len() as u64);
        Ok(())
    }

    /// Writes all of `buf` at `offset` and makes it durable before returning
    /// (FUA: RWF_DSYNC on a file or block device).
    pub fn write_at_durable(&self, buf: &[u8], offset: u64) -> Result<(), LegError> {
        self.device
            .write_all_at_durable(buf, offset)
            .map_err(|source| self.io_error("write", offset, buf.len(), source))?;
        // A FUA write counts as a write, not a flush, as the kernel's
        // block stat counts it (and as the ring's completions do).
        self.stats.count_write(buf.len() as u64);
        Ok(())
    }

    /// Makes every completed write durable (fdatasync: data and the metadata
    /// needed to read it back; for a block device, a cache flush). Its
    /// caller cannot tell the user of a failure (a superblock update, a
    /// sync): the failure is also kept for the next reported flush (see
    /// [`FlushGuard`]).
    pub fn sync_data(&self) -> Result<(), LegError> {
        self.flush_guard().sync_data(false)
    }

    /// Waits for the flushes of this leg in progress and returns the right
    /// to run the next one.
    pub fn flush_guard(&self) -> FlushGuard<'_> {
        FlushGuard {
            leg: self,
            noted: self.flushes.lock(),
        }
    }

    /// A flush with no bookkeeping: for callers holding the leg's
    /// [`FlushGuard`] (the engine's fan-out).
    pub(crate) fn fdatasync(&self) -> Result<(), LegError> {
        self.device.flush().map_err(|source| LegError::Sync {
            path: self.path.clone(),
            source,
        })?;
        self.stats.count_flush();
        Ok(())
    }

    /// Makes `[offset, offset+len)` read as zeros: punches a hole in a file
    /// leg (writes zeros where the filesystem cannot punch), BLKZEROOUT on a
    /// block device.
    pub fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.device.zero_range(offset, len)
    }

    /// The descriptor io_uring may use for this leg's I/O (None: the
    /// fan-out runs it as plain calls).
    pub fn raw_fd(&self) -> Option<std::os::unix::io::RawFd> {
        self.device.raw_fd()
    }

    /// A failed read or write, named with the leg, offset and length.
    pub(crate) fn io_error(
        &self,
        op: &'static str,
        offset: u64,
        len: usize,
        source: std::io::Error,
    ) -> LegError {
        let source = if source.kind() == std::io::ErrorKind::UnexpectedEof {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "end of leg reached (the leg is smaller than its superblock says)",
            )
        } else {
            source
        };
        LegError::Io {
            path: self.path.clone(),
            op,
            offset,
            len,
            source,
        }
    }
}

/// Opens `path` once (following symlinks: a leg may be named by one) without
/// reading it, and checks on that descriptor that it is a regular file or a
/// block device; the leg is then opened from it ([`CheckedPath::reopen`]),
/// so no stat of the name precedes the open. A FIFO, socket or character
/// device is refused here, before any open that could block or act.
fn open_checked(path: &Path) -> Result<CheckedPath, LegError> {
    let checked = CheckedPath::open(path, true).map_err(|source| LegError::Open {
        path: path.to_owned(),
        hint: if source.kind() == std::io::ErrorKind::NotFound {
            " (check the path; a leg must exist: create a file with `truncate -s SIZE FILE`)"
        } else {
            ""
        },
        source,
    })?;
    let meta = checked.metadata();
    if !meta.file_type().is_block_device() && !meta.is_file() {
        return Err(LegError::NotFileOrDevice {
            path: path.to_owned(),
            kind: kind_name(meta),
        });
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::aligned::AlignedBuf;

    #[test]
    fn direct_roundtrip_on_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leg");
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        let leg = Leg::open(&p, IoMode::Direct, true, true).unwrap();
        assert_eq!(leg.size(), 1 << 20);
        let mut b = AlignedBuf::new(8192);
        b.as_mut_slice().fill(0xab);
        leg.write_at(&b.as_slice()[..8192], 4096).unwrap();
        let mut r = AlignedBuf::new(8192);
        leg.read_at(&mut r.as_mut_slice()[..8192], 4096).unwrap();
        assert!(r.as_slice().iter().all(|&x| x == 0xab));
        leg.sync_data().unwrap();
    }

    #[test]
    fn a_background_flush_failure_is_returned_to_the_next_reported_flush() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leg");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let leg = Leg::open(&p, IoMode::Buffered, true, true).unwrap();
        let eio = || {
            Err(LegError::Sync {
                path: p.clone(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            })
        };
        // A background flush fails: its caller sees it, and it is kept.
        assert!(leg.flush_guard().settle(eio(), false).is_err());
        // The kernel would say 0 to the next fdatasync; the leg does not.
        let err = leg.flush_guard().sync_data(true).unwrap_err();
        assert!(matches!(err, LegError::EarlierFlush { .. }), "{err}");
        assert_eq!(err.errno(), libc::EIO);
        assert!(err.to_string().contains("an earlier flush failed"), "{err}");
        // Told once, as the kernel does.
        leg.flush_guard().sync_data(true).unwrap();
        // A reported failure is not kept for later.
        assert!(leg.flush_guard().settle(eio(), true).is_err());
        leg.flush_guard().sync_data(true).unwrap();
    }

    #[test]
    fn a_durable_write_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leg");
        std::fs::write(&p, vec![0u8; 1 << 16]).unwrap();
        let leg = Leg::open(&p, IoMode::Direct, true, true).unwrap();
        let mut b = AlignedBuf::new(8192);
        b.as_mut_slice().fill(0x5a);
        leg.write_at_durable(&b.as_slice()[..8192], 8192).unwrap();
        let mut r = AlignedBuf::new(8192);
        leg.read_at(&mut r.as_mut_slice()[..8192], 8192).unwrap();
        assert!(r.as_slice()[..8192].iter().all(|&x| x == 0x5a));
    }

    #[test]
    fn second_open_with_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leg");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let _first = Leg::open(&p, IoMode::Buffered, true, true).unwrap();
        let err = Leg::open(&p, IoMode::Buffered, true, true).unwrap_err();
        assert!(matches!(err, LegError::OpenTwice { .. }), "{err}");
        assert!(err.to_string().contains("given twice"), "{err}");
    }

    #[test]
    fn nbd_uris_are_located_once_and_compared_as_legs() {
        let a = Locator::parse(Path::new("nbd://Host/x")).unwrap();
        let b = Locator::parse(Path::new("nbd://host:10809/x?x-timeout=5")).unwrap();
        assert!(a.is_remote() && a.same_leg(&b) && a != b);
        assert_eq!(a.short_name(), "nbd-host-10809-x");
        assert_eq!(a.to_string(), "nbd://host:10809/x");
        let p = Locator::parse(Path::new("/srv/nbd:leg")).unwrap();
        assert_eq!(p, Locator::Path("/srv/nbd:leg".into()));
        assert!(!p.is_remote() && !p.same_leg(&a));
        assert_eq!(p.short_name(), "nbd:leg");
        let e = Leg::open(Path::new("nbds://h/x"), IoMode::Direct, true, true).unwrap_err();
        assert!(matches!(e, LegError::Uri { .. }), "{e}");
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(e.to_string().contains("TLS"), "{e}");
        // Nothing listens there: a connect error, named with the URI.
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("nbd+unix:///x?socket={}/none.sock", dir.path().display());
        let e = Leg::open(Path::new(&uri), IoMode::Direct, true, true).unwrap_err();
        assert!(matches!(e, LegError::Remote { .. }), "{e}");
        assert!(e.to_string().contains("cannot connect"), "{e}");
        assert_eq!(e.errno(), libc::ENOENT);
    }

    #[test]
    fn missing_leg_is_named() {
        let err =
            Leg::open(Path::new("/nonexistent/leg0"), IoMode::Direct, true, true).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/leg0"), "{msg}");
    }
}
