//! What a leg is stored on: the device seam. A [`Leg`](super::leg::Leg)
//! (its name, I/O mode, lock and flush bookkeeping) does its I/O through a
//! [`LegDevice`]; a new kind of leg (a network block device, say) is one
//! more implementation of this trait and a way to name it
//! ([`Locator`](super::leg::Locator)), nothing else.
//!
//! Implementations here: [`FileDevice`] (a regular file or a block device,
//! what `Leg::open` gives) and [`MemDevice`] (bytes in memory, for the
//! engine's tests, with errors on demand); in `io::nbd`, `NbdDevice` (an
//! export on an NBD server).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;

/// Positional I/O on a leg's storage. Offsets are absolute bytes on the
/// device; errors are plain `std::io::Error`s (the leg adds its name, the
/// operation and the offset).
pub trait LegDevice: Send + Sync + std::fmt::Debug {
    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Writes all of `buf` at `offset` (it may sit in a volatile cache).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Writes all of `buf` at `offset`, on stable storage when it returns
    /// (FUA where the device has it, else a write and a flush).
    fn write_all_at_durable(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Makes every completed write durable (a cache flush).
    fn flush(&self) -> std::io::Result<()>;
    /// Makes `[offset, offset+len)` read as zeros.
    fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()>;
    /// A descriptor io_uring can run this device's reads, writes and
    /// flushes on; None: the fan-out runs them as plain calls.
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
    /// Nothing written is known durable: the device has no flush to give
    /// (an NBD server that advertises none).
    fn is_volatile(&self) -> bool {
        false
    }
    /// The link to a device on another machine, as an operator sees it
    /// (None: a local device).
    fn link_status(&self) -> Option<LinkStatus> {
        None
    }
}

/// A remote device's connection, for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// Why the connection is dead (None: connected).
    pub dead: Option<String>,
    /// The smoothed round trip of small requests and keepalive probes.
    pub rtt: Option<std::time::Duration>,
    /// Since the last successful flush (None: none on this connection).
    pub since_flush: Option<std::time::Duration>,
    /// Since the last reply of any kind.
    pub since_reply: Option<std::time::Duration>,
    /// Requests in flight now.
    pub in_flight: usize,
}

/// A shared device (a test keeps a handle to fail it on demand).
impl<D: LegDevice + ?Sized> LegDevice for std::sync::Arc<D> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        (**self).write_all_at(buf, offset)
    }
    fn write_all_at_durable(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        (**self).write_all_at_durable(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        (**self).flush()
    }
    fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        (**self).zero_range(offset, len)
    }
    fn raw_fd(&self) -> Option<RawFd> {
        (**self).raw_fd()
    }
    fn is_volatile(&self) -> bool {
        (**self).is_volatile()
    }
    fn link_status(&self) -> Option<LinkStatus> {
        (**self).link_status()
    }
}

/// A regular file or a block device, by its open descriptor.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    is_block_device: bool,
}

const BLKZEROOUT: libc::c_ulong = 0x127f;

impl FileDevice {
    pub fn new(file: File, is_block_device: bool) -> FileDevice {
        FileDevice {
            file,
            is_block_device,
        }
    }
}

impl LegDevice for FileDevice {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn write_all_at_durable(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        // RWF_DSYNC: a FUA write on a block device, the write and a flush
        // of what it needs on a file.
        let mut done = 0usize;
        while done < buf.len() {
            let iov = libc::iovec {
                iov_base: buf[done..].as_ptr() as *mut libc::c_void,
                iov_len: buf.len() - done,
            };
            let at = offset + done as u64;
            // SAFETY: one iovec over a live borrowed buffer.
            let n = unsafe {
                libc::pwritev2(self.file.as_raw_fd(), &iov, 1, at as i64, libc::RWF_DSYNC)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "wrote nothing",
                ));
            }
            done += n as usize;
        }
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let fd = self.file.as_raw_fd();
        if self.is_block_device {
            let range: [u64; 2] = [offset, len];
            // SAFETY: BLKZEROOUT reads two u64 from the pointer.
            if unsafe { libc::ioctl(fd, BLKZEROOUT, &range) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            return Ok(());
        }
        let (Ok(at), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
        };
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on a valid fd.
        if unsafe { libc::fallocate(fd, mode, at, n) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(err);
        }
        log::info!("a leg's filesystem cannot punch holes; writing zeros");
        let zeros = super::aligned::AlignedBuf::new(1 << 20);
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(1 << 20) as usize;
            self.file.write_all_at(&zeros.as_slice()[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}

/// A leg in memory: for the engine's tests (no files, no alignment), with
/// I/O errors on demand.
#[derive(Debug)]
pub struct MemDevice {
    bytes: RwLock<Vec<u8>>,
    fail_writes: AtomicBool,
    fail_reads: AtomicBool,
    flushes: AtomicU64,
}

impl MemDevice {
    pub fn new(size: usize) -> MemDevice {
        MemDevice {
            bytes: RwLock::new(vec![0; size]),
            fail_writes: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
        }
    }

    /// From now on every write (and flush) fails with EIO, or none does.
    pub fn fail_writes(&self, on: bool) {
        self.fail_writes.store(on, Ordering::SeqCst);
    }

    /// From now on every read fails with EIO, or none does.
    pub fn fail_reads(&self, on: bool) {
        self.fail_reads.store(on, Ordering::SeqCst);
    }

    /// A copy of `[offset, offset+len)`.
    pub fn contents(&self, offset: usize, len: usize) -> Vec<u8> {
        self.bytes.read()[offset..offset + len].to_vec()
    }

    /// Flushes seen so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    fn range(&self, offset: u64, len: usize) -> std::io::Result<std::ops::Range<usize>> {
        let size = self.bytes.read().len();
        usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(len)?))
            .filter(|r| r.end <= size)
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the device's end")
            })
    }

    fn check(&self, flag: &AtomicBool) -> std::io::Result<()> {
        if flag.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

impl LegDevice for MemDevice {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.check(&self.fail_reads)?;
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes.read()[r]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.check(&self.fail_writes)?;
        let r = self.range(offset, buf.len())?;
        self.bytes.write()[r].copy_from_slice(buf);
        Ok(())
    }

    fn write_all_at_durable(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.write_all_at(buf, offset)?;
        self.flush()
    }

    fn flush(&self) -> std::io::Result<()> {
        self.check(&self.fail_writes)?;
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.check(&self.fail_writes)?;
        let len =
            usize::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        let r = self.range(offset, len)?;
        self.bytes.write()[r].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_device_reads_back_refuses_past_its_end_and_fails_on_demand() {
        let d = MemDevice::new(8192);
        d.write_all_at(&[7; 100], 4000).unwrap();
        let mut b = [0u8; 100];
        d.read_exact_at(&mut b, 4000).unwrap();
        assert_eq!(b, [7; 100]);
        assert!(d.write_all_at(&[1; 10], 8190).is_err());
        assert!(d.read_exact_at(&mut b, u64::MAX).is_err());
        d.fail_writes(true);
        assert_eq!(
            d.write_all_at(&[1], 0).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        assert!(d.flush().is_err());
        d.fail_writes(false);
        d.zero_range(4000, 100).unwrap();
        assert_eq!(d.contents(4000, 100), vec![0; 100]);
    }
}
