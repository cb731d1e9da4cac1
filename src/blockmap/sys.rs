//! Thin, safe wrappers over the Linux ioctls and calls this layer needs.
//! Numbers come from the kernel's uapi headers (fiemap.h, fs.h, loop.h).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

const FS_IOC_FIEMAP: u64 = 0xC020_660B; // _IOWR('f', 11, struct fiemap)
const FIBMAP: u64 = 1; // _IO(0x00, 1)
const FIGETBSZ: u64 = 2; // _IO(0x00, 2)
const BLKSSZGET: u64 = 0x1268; // _IO(0x12, 104)
const BLKROGET: u64 = 0x125E; // _IO(0x12, 94)
const BLKGETSIZE64: u64 = 0x8008_1272; // _IOR(0x12, 114, size_t)
const FS_IOC_GETFLAGS: u64 = 0x8008_6601; // _IOR('f', 1, long)
const FS_IOC_SETFLAGS: u64 = 0x4008_6602; // _IOW('f', 2, long)
const LOOP_GET_STATUS64: u64 = 0x4C05;

pub const FS_IMMUTABLE_FL: i32 = 0x10;
pub const FS_JOURNAL_DATA_FL: i32 = 0x4000;
pub const EXT4_SUPER_MAGIC: u32 = EXT_MAGIC;

pub const FIEMAP_FLAG_SYNC: u32 = 0x1;
pub const FIEMAP_EXTENT_LAST: u32 = 0x1;
pub const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
pub const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
pub const FIEMAP_EXTENT_ENCODED: u32 = 0x8;
pub const FIEMAP_EXTENT_DATA_ENCRYPTED: u32 = 0x80;
pub const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x100;
pub const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;
pub const FIEMAP_EXTENT_DATA_TAIL: u32 = 0x400;
pub const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
pub const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

fn ioctl_ptr<T>(file: &File, request: u64, arg: *mut T) -> io::Result<libc::c_int> {
    // SAFETY: every caller passes a pointer to a live value of the type the
    // request expects; the kernel reads/writes at most that value.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// True for the errors meaning "this file or filesystem does not do that".
pub fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS)
    )
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapHeader {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct FiemapExtent {
    pub fe_logical: u64,
    pub fe_physical: u64,
    pub fe_length: u64,
    pub fe_reserved64: [u64; 2],
    pub fe_flags: u32,
    pub fe_reserved: [u32; 3],
}

const FIEMAP_BATCH: usize = 128;

#[repr(C)]
struct FiemapRequest {
    header: FiemapHeader,
    extents: [FiemapExtent; FIEMAP_BATCH],
}

/// Every extent the filesystem reports for `[0, len)`, syncing delayed
/// allocations first.
pub fn fiemap(file: &File, len: u64) -> io::Result<Vec<FiemapExtent>> {
    let mut out = Vec::new();
    let mut start = 0u64;
    let mut request = Box::new(FiemapRequest {
        header: FiemapHeader::default(),
        extents: [FiemapExtent::default(); FIEMAP_BATCH],
    });
    while start < len {
        request.header = FiemapHeader {
            fm_start: start,
            fm_length: len - start,
            fm_flags: FIEMAP_FLAG_SYNC,
            fm_mapped_extents: 0,
            fm_extent_count: FIEMAP_BATCH as u32,
            fm_reserved: 0,
        };
        ioctl_ptr(file, FS_IOC_FIEMAP, &mut *request as *mut FiemapRequest)?;
        let mapped = (request.header.fm_mapped_extents as usize).min(FIEMAP_BATCH);
        if mapped == 0 {
            break;
        }
        out.extend_from_slice(&request.extents[..mapped]);
        let last = request.extents[mapped - 1];
        let next = last.fe_logical.saturating_add(last.fe_length);
        if last.fe_flags & FIEMAP_EXTENT_LAST != 0 || next <= start {
            break;
        }
        start = next;
    }
    Ok(out)
}

/// The filesystem block number holding file block `block` (0 = hole).
pub fn fibmap(file: &File, block: u64) -> io::Result<u64> {
    let mut value: libc::c_int =
        libc::c_int::try_from(block).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    ioctl_ptr(file, FIBMAP, &mut value as *mut libc::c_int)?;
    Ok(value as u32 as u64)
}

pub fn figetbsz(file: &File) -> io::Result<u64> {
    let mut value: libc::c_int = 0;
    ioctl_ptr(file, FIGETBSZ, &mut value as *mut libc::c_int)?;
    Ok(value as u64)
}

pub fn logical_block_size(device: &File) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    ioctl_ptr(device, BLKSSZGET, &mut value as *mut libc::c_int)?;
    Ok(value as u32)
}

pub fn is_read_only(device: &File) -> io::Result<bool> {
    let mut value: libc::c_int = 0;
    ioctl_ptr(device, BLKROGET, &mut value as *mut libc::c_int)?;
    Ok(value != 0)
}

pub fn device_size(device: &File) -> io::Result<u64> {
    let mut value: u64 = 0;
    ioctl_ptr(device, BLKGETSIZE64, &mut value as *mut u64)?;
    Ok(value)
}

pub fn get_flags(file: &File) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    ioctl_ptr(file, FS_IOC_GETFLAGS, &mut value as *mut libc::c_int)?;
    Ok(value)
}

pub fn set_flags(file: &File, flags: i32) -> io::Result<()> {
    let mut value: libc::c_int = flags;
    ioctl_ptr(file, FS_IOC_SETFLAGS, &mut value as *mut libc::c_int)?;
    Ok(())
}

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// (st_dev, st_ino, offset) of the file backing a loop device.
pub fn loop_backing(device: &File) -> io::Result<(u64, u64, u64)> {
    // SAFETY: LoopInfo64 is plain integers and byte arrays; all-zero is valid.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    ioctl_ptr(device, LOOP_GET_STATUS64, &mut info as *mut LoopInfo64)?;
    Ok((info.lo_device, info.lo_inode, info.lo_offset))
}

pub fn fstatfs(file: &File) -> io::Result<libc::statfs> {
    // SAFETY: statfs is plain data; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(st)
    }
}

/// True when the file's filesystem is mounted read-only.
pub fn is_read_only_mount(file: &File) -> io::Result<bool> {
    // SAFETY: statvfs is plain data; fstatvfs fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_flag & libc::ST_RDONLY != 0)
}

/// Drops the file's clean page-cache pages.
pub fn drop_page_cache(file: &File) -> io::Result<()> {
    drop_page_cache_range(file, 0, 0)
}

/// Drops the clean page-cache pages of file bytes `[offset, offset+len)`
/// (`len` 0: to the end).
pub fn drop_page_cache_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: plain syscall on an owned fd.
    let rc =
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        Err(io::Error::from_raw_os_error(rc))
    } else {
        Ok(())
    }
}

pub fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall on an owned fd.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

const EXT_MAGIC: u32 = 0xEF53;
const XFS_MAGIC: u32 = 0x5846_5342;

/// Names of filesystem magic numbers, for messages.
pub fn fs_type_name(magic: i64) -> String {
    let name = match magic as u32 {
        0x0102_1994 => "tmpfs",
        0x8584_58f6 => "ramfs",
        0x794c_7630 => "overlay",
        0x6573_5546 => "fuse",
        0x9123_683E => "btrfs",
        0x6969 => "nfs",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x2fc1_2fc1 => "zfs",
        0x0102_1997 => "9p",
        0x00c3_6400 => "ceph",
        0x7371_7368 => "squashfs",
        EXT_MAGIC => "ext2/3/4",
        XFS_MAGIC => "xfs",
        0xF2F5_2010 => "f2fs",
        0x3434 => "nilfs2",
        0x4d44 => "vfat",
        0x2011_BAB0 => "exfat",
        0x5346_544e => "ntfs",
        0xca45_1a4e => "bcachefs",
        0x5265_4973 => "reiserfs",
        0x3153_464a => "jfs",
        0x482b => "hfsplus",
        0x1501_3346 => "udf",
        0x7461_636f => "ocfs2",
        0x0116_1970 => "gfs2",
        0xE0F5_E1E2 => "erofs",
        0x9660 => "iso9660",
        0x6264_6576 => "bdev",
        _ => return format!("unknown (f_type 0x{:x})", magic as u32),
    };
    name.to_string()
}

/// Filesystems whose FIEMAP addresses are not offsets on st_dev's device:
/// their refusal says "no block device".
pub fn fs_without_device_addresses(magic: i64) -> bool {
    matches!(
        magic as u32,
        0x0102_1994
            | 0x8584_58f6
            | 0x794c_7630
            | 0x6573_5546
            | 0x9123_683E
            | 0x6969
            | 0xFF53_4D42
            | 0xFE53_4D42
            | 0x2fc1_2fc1
            | 0x0102_1997
            | 0x00c3_6400
            | 0x7371_7368
    )
}

/// The filesystems under which a bitmap file may be written raw: those whose
/// file blocks stay put while the file is immutable and not written, so the
/// addresses read once at mount stay the file's.
///
/// - ext2, ext3, ext4: data is overwritten in place; blocks are allocated or
///   freed only by writes and truncation, and moved only by online defrag
///   (EXT4_IOC_MOVE_EXT), which needs the file open for writing, which an
///   immutable file refuses. No copy-on-write, no garbage collection.
///   (`data=journal` is refused separately: the journal rewrites data.)
/// - xfs: data is overwritten in place; copy-on-write happens only for
///   shared (reflinked) extents, which are refused; online defrag (xfs_fsr's
///   extent swap, exchange-range) needs the file open for writing too.
///
/// Everything else is refused: copy-on-write (btrfs, bcachefs, zfs),
/// log-structured or garbage-collected (f2fs's GC moves any file's blocks,
/// nilfs2), no immutable attribute (vfat, exfat), or simply not examined.
pub fn fs_keeps_blocks_in_place(magic: i64) -> bool {
    matches!(magic as u32, EXT_MAGIC | XFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ext_and_xfs_are_allowed() {
        for (magic, name) in [(0xEF53i64, "ext2/3/4"), (0x5846_5342, "xfs")] {
            assert!(fs_keeps_blocks_in_place(magic), "{name}");
            assert_eq!(fs_type_name(magic), name);
        }
        for (magic, name) in [
            (0xF2F5_2010i64, "f2fs"),
            (0x3434, "nilfs2"),
            (0x4d44, "vfat"),
            (0x2011_BAB0, "exfat"),
            (0x9123_683E, "btrfs"),
            (0xca45_1a4e, "bcachefs"),
            (0xE0F5_E1E2, "erofs"),
            (0x0102_1994, "tmpfs"),
            (0x1234_5678, "unknown (f_type 0x12345678)"),
        ] {
            assert!(!fs_keeps_blocks_in_place(magic), "{name} allowed");
            assert_eq!(fs_type_name(magic), name);
        }
    }
}
