//! The write-intent bitmap as tests see it, on the shared harness
//! (`common::mdfuse`): arrays created with a bitmap file, the bits of a
//! bitmap file image, `mdfuse examine-bitmap` and `mdadm -X` output, the
//! file's protection (immutable flag) and its extents on the device (FIEMAP
//! through `filefrag -v`), read back raw from there.

#![allow(dead_code)] // each test binary uses a different subset

use super::io::read_direct;
use super::loopdev::run;
use super::mdfuse::{create, examine_field, mdfuse_stdout, path_str, Created, Legs};
use std::path::Path;

/// `mdfuse create --force --bitmap BITMAP EXTRA LEGS` (forced: the legs may
/// carry an earlier array of the test's).
pub fn create_with_bitmap(legs: &Legs, bitmap: &Path, extra: &[&str]) -> Created {
    let mut args = vec!["--force", "--bitmap", path_str(bitmap)];
    args.extend_from_slice(extra);
    create(legs, &args)
}

/// Chunks whose bit is set in `bits` (the bytes after the 256-byte header).
pub fn set_bits(bits: &[u8], nchunks: u64) -> Vec<u64> {
    (0..nchunks)
        .filter(|&c| {
            bits.get((c / 8) as usize)
                .is_some_and(|b| b & (1 << (c % 8)) != 0)
        })
        .collect()
}

/// The number of chunks in a bitmap file image (header fields).
pub fn header_chunks(file: &[u8]) -> u64 {
    let u32_at = |o: usize| u32::from_le_bytes(file[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(file[o..o + 8].try_into().unwrap());
    let sync_size = u64_at(40);
    let chunk_sectors = u32_at(52) as u64 / 512;
    sync_size.div_ceil(chunk_sectors)
}

/// Dirty chunks of a bitmap file image.
pub fn dirty_in_image(file: &[u8]) -> Vec<u64> {
    set_bits(&file[256..], header_chunks(file))
}

/// Bytes of array the chunks cover (the last one cut at the array's end).
pub fn chunk_bytes(chunks: &[u64], chunk: u64, array_bytes: u64) -> u64 {
    chunks
        .iter()
        .map(|&c| ((c + 1) * chunk).min(array_bytes) - c * chunk)
        .sum()
}

/// The bitmap file's chunk size (its header, read with O_DIRECT).
pub fn bitmap_chunk(bitmap: &Path) -> u64 {
    let b = read_direct(bitmap, 0, 4096).expect("read bitmap header");
    u32::from_le_bytes(b[52..56].try_into().expect("4 bytes")) as u64
}

/// The bitmap's dirty chunks as on disk now (O_DIRECT).
pub fn dirty_on_disk(bitmap: &Path) -> Vec<u64> {
    let len = std::fs::metadata(bitmap).expect("bitmap").len() as usize;
    dirty_in_image(&read_direct(bitmap, 0, len).expect("read bitmap"))
}

/// `N dirty` from a `Bitmap : X bits (chunks), N dirty (..)` line.
pub fn dirty_count(text: &str) -> u64 {
    let b = examine_field(text, "Bitmap").unwrap_or_else(|| panic!("no Bitmap line in {text}"));
    b.split(", ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {b:?}"))
}

/// `mdfuse examine-bitmap --chunks FILE`: (text, dirty chunks).
pub fn examine_bitmap(file: &Path) -> (String, Vec<u64>) {
    let text = mdfuse_stdout(&["examine-bitmap", "--chunks", path_str(file)]);
    let list = examine_field(&text, "Dirty Chunks").expect("Dirty Chunks line");
    let chunks = parse_ranges(&list);
    (text, chunks)
}

/// Expands "0,80-81,319-320,480" (or "-") to chunk numbers.
pub fn parse_ranges(list: &str) -> Vec<u64> {
    let list = list.trim();
    if list == "-" || list.is_empty() {
        return Vec::new();
    }
    list.split(',')
        .flat_map(|part| {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (u64, u64) = (
                a.trim().parse().expect("chunk number"),
                b.trim().parse().expect("chunk number"),
            );
            a..=b
        })
        .collect()
}

/// Whether the file's immutable flag (`chattr +i`) is set (FS_IOC_GETFLAGS).
pub fn is_immutable(path: &Path) -> bool {
    const FS_IOC_GETFLAGS: u64 = 0x8008_6601;
    const FS_IMMUTABLE_FL: i32 = 0x10;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            FS_IOC_GETFLAGS as _,
            &mut flags,
        )
    };
    assert_eq!(
        rc,
        0,
        "FS_IOC_GETFLAGS {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    flags & FS_IMMUTABLE_FL != 0
}

/// One extent from `filefrag -v`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileExtent {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
}

/// The file's extents (FIEMAP through `filefrag -v`), in bytes.
pub fn extents(path: &Path) -> Vec<FileExtent> {
    let out = run("filefrag", &["-v", path_str(path)]).expect("filefrag");
    // "File size of F is N (K block(s) of BS bytes)"
    let bs: u64 = out
        .split(" bytes)")
        .next()
        .and_then(|t| t.rsplit(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no block size in {out}"));
    let mut v = Vec::new();
    for l in out.lines() {
        let cols: Vec<&str> = l.split(':').map(str::trim).collect();
        if cols.len() < 4 || cols[0].parse::<u64>().is_err() {
            continue;
        }
        let range = |c: &str| -> u64 {
            c.split("..")
                .next()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or_else(|| panic!("bad filefrag column {c:?} in {l:?}"))
        };
        v.push(FileExtent {
            logical: range(cols[1]) * bs,
            physical: range(cols[2]) * bs,
            len: cols[3].parse::<u64>().expect("length") * bs,
        });
    }
    v
}

/// Reads the file's bytes [0, len) straight from the block device at the
/// FIEMAP-mapped addresses (O_DIRECT, whole 4 KiB device pages).
pub fn read_via_device(file: &Path, device: &Path, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    for e in extents(file) {
        if e.logical >= len {
            continue;
        }
        let take = e.len.min(len - e.logical);
        let start = e.physical / 4096 * 4096;
        let skip = e.physical - start;
        let bytes = read_direct(device, start, (skip + take) as usize).expect("device read");
        out[e.logical as usize..(e.logical + take) as usize]
            .copy_from_slice(&bytes[skip as usize..(skip + take) as usize]);
    }
    out
}

/// A pattern of 4 KiB identifying (offset, tag).
pub fn pattern(offset: u64, tag: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(4096);
    for i in 0..512u64 {
        v.extend_from_slice(&(offset ^ (tag << 40) ^ i.wrapping_mul(0x9E37_79B9)).to_le_bytes());
    }
    v
}

/// The file's modification time (to show that raw writes leave it alone).
pub fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("mtime")
}
