//! File I/O for tests: a 4 KiB-aligned buffer and O_DIRECT reads and
//! writes, so a test sees what is on the device or leg, not a page cache
//! (and array.img's requests reach mdfuse as they were issued); and plain
//! positioned reads and writes that panic, saying where, when they fail.

#![allow(dead_code)] // each test binary uses a different subset

use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// The alignment O_DIRECT wants of buffers, offsets and lengths here.
pub const ALIGN: usize = 4096;

/// A zeroed buffer of `len` bytes at a 4 KiB-aligned address; the
/// allocation is a whole number of 4 KiB pages.
pub struct AlignedVec {
    ptr: *mut u8,
    len: usize,
}

impl AlignedVec {
    pub fn zeroed(len: usize) -> AlignedVec {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout(len)) };
        assert!(!ptr.is_null(), "allocation of {len} bytes failed");
        AlignedVec { ptr, len }
    }

    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.div_ceil(ALIGN).max(1) * ALIGN, ALIGN)
            .expect("layout")
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr holds at least len initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedVec {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.len)) }
    }
}

// SAFETY: plain heap memory owned by the value.
unsafe impl Send for AlignedVec {}

/// Opens `path` with O_DIRECT, for reading and (if `write`) writing; panics
/// if it cannot.
pub fn open_direct(path: &Path, write: bool) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} O_DIRECT: {e}", path.display()))
}

/// Reads `len` bytes at `offset` (4 KiB aligned) with O_DIRECT; returns what
/// was read, short at the end of the file.
pub fn read_direct(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    // Whole pages are read; the caller gets the `len` it asked for.
    let mut buf = AlignedVec::zeroed(len.div_ceil(ALIGN) * ALIGN);
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf.as_mut_slice()[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(buf.as_slice()[..done.min(len)].to_vec())
}

/// Writes `data` (a 4 KiB multiple) at `offset` with O_DIRECT.
pub fn write_direct(path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
    let f = std::fs::File::options()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut buf = AlignedVec::zeroed(data.len());
    buf.as_mut_slice().copy_from_slice(data);
    f.write_all_at(buf.as_slice(), offset)
}

/// Writes `data` at `offset` through the page cache, then fsync.
pub fn write_buffered_fsync(path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
    let f = std::fs::File::options().write(true).open(path)?;
    f.write_all_at(data, offset)?;
    f.sync_all()
}

/// Writes `data` at `offset` of `path` through the page cache (no fsync);
/// panics if it cannot.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.write_all_at(data, offset))
        .unwrap_or_else(|e| {
            panic!(
                "write {} bytes at {offset} of {}: {e}",
                data.len(),
                path.display()
            )
        });
}

/// `len` bytes of `path` at `offset`, read through the page cache; panics
/// if it cannot.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut buf, offset))
        .unwrap_or_else(|e| panic!("read {len} bytes at {offset} of {}: {e}", path.display()));
    buf
}
