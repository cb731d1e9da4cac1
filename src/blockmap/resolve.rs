//! From a host file to the device byte ranges that hold it (md's bmap() per
//! block, done once with FIEMAP, FIBMAP as fallback).

use super::error::BlockMapError;
use super::open::open_regular;
use super::sys;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest filesystem block that fits whole in a 4 KiB bitmap page.
const MAX_BLOCK_SIZE: u64 = 4096;
const SECTOR: u64 = 512;

/// One contiguous piece of the file on the device (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub file_offset: u64,
    pub device_offset: u64,
    pub len: u64,
}

/// A block-aligned file range's piece on the device (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRun {
    pub file_offset: u64,
    pub device_offset: u64,
    pub len: u64,
}

/// A file backing a loop device somewhere under the bitmap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingFile {
    /// The loop device (whole disk, e.g. /dev/loop3).
    pub loop_device: PathBuf,
    /// Path as the kernel recorded it when the loop was set up.
    pub path: PathBuf,
    /// Byte offset of the loop device inside the file.
    pub offset: u64,
    pub st_dev: u64,
    pub st_ino: u64,
}

/// Where a regular file's bytes live on its block device. Only [`resolve`]
/// makes one, so its extents are what the filesystem reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    file: PathBuf,
    device: PathBuf,
    device_rdev: u64,
    fs_block_size: u32,
    device_logical_block: u32,
    file_len: u64,
    extents: Vec<Extent>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Fiemap,
    Fibmap,
}

/// Resolves `path` to its device extents with FIEMAP (FIBMAP if the
/// filesystem lacks FIEMAP). Refuses anything raw writes could not safely
/// address: holes, unwritten/shared/inline/encoded extents, filesystems
/// other than ext2/3/4 and xfs, blocks over 4 KiB.
pub fn resolve(path: &Path) -> Result<BlockMap, BlockMapError> {
    resolve_using(path, Method::Fiemap)
}

/// As [`resolve`] but asking the filesystem block by block with FIBMAP.
pub fn resolve_with_fibmap(path: &Path) -> Result<BlockMap, BlockMapError> {
    resolve_using(path, Method::Fibmap)
}

fn resolve_using(path: &Path, method: Method) -> Result<BlockMap, BlockMapError> {
    let (file, meta) = open_regular(path, 0)?;
    let statfs = sys::fstatfs(&file).map_err(|e| BlockMapError::io(path, "cannot statfs", e))?;
    let fs_magic = statfs.f_type as i64;
    let st_dev = meta.dev();
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    let sysfs = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if sys::fs_without_device_addresses(fs_magic) || !sysfs.exists() {
        return Err(BlockMapError::NotOnBlockDevice {
            file: path.to_path_buf(),
            fs_type: sys::fs_type_name(fs_magic),
            major,
            minor,
        });
    }
    if !sys::fs_keeps_blocks_in_place(fs_magic) {
        return Err(BlockMapError::BlocksMayMove {
            file: path.to_path_buf(),
            fs_type: sys::fs_type_name(fs_magic),
        });
    }
    let device = device_node(path, &sysfs, st_dev)?;
    if fs_magic as u32 == sys::EXT4_SUPER_MAGIC {
        refuse_data_journaling(path, &file, st_dev)?;
    }

    let block_size = match sys::figetbsz(&file) {
        Ok(b) if b > 0 => b,
        _ => statfs.f_bsize as u64,
    };
    if !block_size.is_power_of_two() || !(SECTOR..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(BlockMapError::UnsupportedBlockSize {
            file: path.to_path_buf(),
            block_size,
        });
    }
    let fs_block_size = block_size as u32;

    let device_file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&device)
        .map_err(|e| BlockMapError::DeviceNode {
            file: path.to_path_buf(),
            device: device.clone(),
            major,
            minor,
            problem: format!("cannot be opened: {e}"),
        })?;
    let logical = sys::logical_block_size(&device_file)
        .map_err(|e| BlockMapError::io(&device, "cannot get the logical block size of", e))?;
    if logical as u64 > block_size || logical == 0 {
        return Err(BlockMapError::DeviceBlockTooLarge {
            file: path.to_path_buf(),
            device,
            logical,
            block_size: fs_block_size,
        });
    }
    let device_size = sys::device_size(&device_file)
        .map_err(|e| BlockMapError::io(&device, "cannot get the size of", e))?;

    let file_len = meta.len();
    if file_len == 0 {
        return Err(BlockMapError::EmptyFile {
            file: path.to_path_buf(),
        });
    }
    let mapped_len = file_len.div_ceil(block_size) * block_size;
    let raw = match method {
        Method::Fiemap => match sys::fiemap(&file, mapped_len) {
            Ok(raw) => fiemap_extents(path, raw, block_size, mapped_len)?,
            Err(e) if sys::is_unsupported(&e) => {
                log::info!(
                    "{}: FIEMAP unsupported ({e}); mapping it block by block with FIBMAP",
                    path.display()
                );
                fibmap_extents(path, &file, block_size, mapped_len)?
            }
            Err(e) => return Err(BlockMapError::io(path, "FIEMAP failed on", e)),
        },
        Method::Fibmap => fibmap_extents(path, &file, block_size, mapped_len)?,
    };
    let extents = coalesce(raw);
    if let Some(e) = extents
        .iter()
        .find(|e| e.device_offset.saturating_add(e.len) > device_size)
    {
        return Err(BlockMapError::UnusableExtent {
            file: path.to_path_buf(),
            offset: e.file_offset,
            problem: format!(
                "reported at device byte {} beyond the end of {} ({device_size} bytes)",
                e.device_offset,
                device.display()
            ),
        });
    }
    Ok(BlockMap {
        file: path.to_path_buf(),
        device,
        device_rdev: st_dev,
        fs_block_size,
        device_logical_block: logical,
        file_len,
        extents,
    })
}

/// Checks, on the descriptor of a protected file (see [`super::protect`]),
/// that its verified map still holds while raw writes use it: the file is
/// still immutable, as long as it was, and FIEMAP still reports the same
/// extents, none of them shared (a reflink made from it), moved (a defrag),
/// unwritten or otherwise unusable. `Err` says what changed. Reads only.
pub fn recheck(map: &BlockMap, file: &File) -> Result<(), String> {
    match sys::get_flags(file) {
        Ok(flags) if flags & sys::FS_IMMUTABLE_FL == 0 => {
            return Err(
                "its immutable flag was cleared (chattr -i?), so its blocks may move".into(),
            )
        }
        Ok(_) => {}
        Err(e) => return Err(format!("its attributes cannot be read: {e}")),
    }
    let len = file
        .metadata()
        .map_err(|e| format!("it cannot be stat'ed: {e}"))?
        .len();
    if len != map.file_len() {
        return Err(format!(
            "its length changed from {} to {len} bytes",
            map.file_len()
        ));
    }
    let raw = sys::fiemap(file, map.mapped_len()).map_err(|e| format!("FIEMAP failed: {e}"))?;
    let extents = fiemap_extents(&map.file, raw, map.fs_block_size() as u64, map.mapped_len())
        .map_err(|e| format!("its block map is no longer usable ({e})"))?;
    let extents = coalesce(extents);
    if extents != map.extents {
        let at = |v: &[Extent]| {
            v.iter()
                .map(|e| format!("{}+{}@{}", e.file_offset, e.len, e.device_offset))
                .collect::<Vec<_>>()
                .join(" ")
        };
        return Err(format!(
            "its blocks moved (a defrag?): extents were {}, now {}",
            at(&map.extents),
            at(&extents)
        ));
    }
    Ok(())
}

/// ext4 can journal file data and write it home later (checkpoint), which
/// would put stale bytes over raw writes: refuse a file whose data is
/// journaled, by inode flag or by mount option.
fn refuse_data_journaling(path: &Path, file: &File, st_dev: u64) -> Result<(), BlockMapError> {
    let refuse = |why: String| {
        Err(BlockMapError::DataJournaled {
            file: path.to_path_buf(),
            why,
        })
    };
    if let Ok(flags) = sys::get_flags(file) {
        if flags & sys::FS_JOURNAL_DATA_FL != 0 {
            return refuse("the file has the journal-data attribute".into());
        }
    }
    let wanted = format!("{}:{}", libc::major(st_dev), libc::minor(st_dev));
    for m in crate::io::mounts::mountinfo() {
        if m.dev == wanted && m.super_options.split(',').any(|o| o == "data=journal") {
            return refuse("its filesystem is mounted with data=journal".into());
        }
    }
    Ok(())
}

/// /dev/NAME for the kernel's name of st_dev, checked to be that block device.
fn device_node(file: &Path, sysfs: &Path, st_dev: u64) -> Result<PathBuf, BlockMapError> {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    let uevent = std::fs::read_to_string(sysfs.join("uevent")).unwrap_or_default();
    let name = uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::to_string)
        .or_else(|| {
            std::fs::canonicalize(sysfs)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        });
    let Some(name) = name else {
        return Err(BlockMapError::DeviceNode {
            file: file.to_path_buf(),
            device: sysfs.to_path_buf(),
            major,
            minor,
            problem: "has no kernel name in sysfs".into(),
        });
    };
    let device = Path::new("/dev").join(name);
    let problem = match std::fs::metadata(&device) {
        Err(e) => format!("cannot be found: {e}"),
        Ok(m) if !m.file_type().is_block_device() => "is not a block device".into(),
        Ok(m) if m.rdev() != st_dev => format!(
            "is device {}:{}, not {major}:{minor}",
            libc::major(m.rdev()),
            libc::minor(m.rdev())
        ),
        Ok(_) => return Ok(device),
    };
    Err(BlockMapError::DeviceNode {
        file: file.to_path_buf(),
        device,
        major,
        minor,
        problem,
    })
}

/// Checks FIEMAP's extents cover `[0, mapped_len)` with plain, aligned,
/// written, unshared blocks and turns them into [`Extent`]s.
fn fiemap_extents(
    file: &Path,
    raw: Vec<sys::FiemapExtent>,
    block_size: u64,
    mapped_len: u64,
) -> Result<Vec<Extent>, BlockMapError> {
    let refused: [(u32, &str); 9] = [
        (sys::FIEMAP_EXTENT_UNKNOWN, "of unknown location"),
        (
            sys::FIEMAP_EXTENT_DELALLOC,
            "not yet allocated (delayed allocation)",
        ),
        (
            sys::FIEMAP_EXTENT_UNWRITTEN,
            "unwritten (preallocated, reads as zeros)",
        ),
        (sys::FIEMAP_EXTENT_DATA_INLINE, "stored inline in metadata"),
        (
            sys::FIEMAP_EXTENT_DATA_TAIL,
            "packed with other files' tails",
        ),
        (sys::FIEMAP_EXTENT_NOT_ALIGNED, "not block aligned"),
        (sys::FIEMAP_EXTENT_ENCODED, "encoded (compressed)"),
        (sys::FIEMAP_EXTENT_DATA_ENCRYPTED, "encrypted"),
        (
            sys::FIEMAP_EXTENT_SHARED,
            "shared with another file (reflinked)",
        ),
    ];
    let mut out = Vec::new();
    let mut covered = 0u64;
    for e in raw {
        if e.fe_logical >= mapped_len || e.fe_length == 0 {
            continue;
        }
        if let Some((_, why)) = refused.iter().find(|(flag, _)| e.fe_flags & flag != 0) {
            return Err(BlockMapError::UnusableExtent {
                file: file.to_path_buf(),
                offset: e.fe_logical,
                problem: (*why).to_string(),
            });
        }
        if e.fe_logical % block_size != 0
            || e.fe_physical % block_size != 0
            || e.fe_length % block_size != 0
        {
            return Err(BlockMapError::UnusableExtent {
                file: file.to_path_buf(),
                offset: e.fe_logical,
                problem: format!("not aligned to the {block_size}-byte block"),
            });
        }
        if e.fe_logical > covered {
            return Err(BlockMapError::Hole {
                file: file.to_path_buf(),
                offset: covered,
                end: e.fe_logical,
            });
        }
        if e.fe_logical < covered {
            return Err(BlockMapError::UnusableExtent {
                file: file.to_path_buf(),
                offset: e.fe_logical,
                problem: "reported overlapping another extent".into(),
            });
        }
        let len = e.fe_length.min(mapped_len - e.fe_logical);
        out.push(Extent {
            file_offset: e.fe_logical,
            device_offset: e.fe_physical,
            len,
        });
        covered = e.fe_logical + len;
    }
    if covered < mapped_len {
        return Err(BlockMapError::Hole {
            file: file.to_path_buf(),
            offset: covered,
            end: mapped_len,
        });
    }
    Ok(out)
}

fn fibmap_extents(
    path: &Path,
    file: &File,
    block_size: u64,
    mapped_len: u64,
) -> Result<Vec<Extent>, BlockMapError> {
    // FIBMAP does not flush delayed allocation; fsync does.
    file.sync_all()
        .map_err(|e| BlockMapError::io(path, "cannot fsync", e))?;
    let mut out = Vec::new();
    for block in 0..mapped_len / block_size {
        let physical =
            sys::fibmap(file, block).map_err(|e| BlockMapError::io(path, "FIBMAP failed on", e))?;
        if physical == 0 {
            return Err(BlockMapError::Hole {
                file: path.to_path_buf(),
                offset: block * block_size,
                end: (block + 1) * block_size,
            });
        }
        out.push(Extent {
            file_offset: block * block_size,
            device_offset: physical * block_size,
            len: block_size,
        });
    }
    Ok(out)
}

fn coalesce(extents: Vec<Extent>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
    for e in extents {
        match out.last_mut() {
            Some(prev)
                if prev.file_offset + prev.len == e.file_offset
                    && prev.device_offset + prev.len == e.device_offset =>
            {
                prev.len += e.len
            }
            _ => out.push(e),
        }
    }
    out
}

impl BlockMap {
    pub fn file(&self) -> &Path {
        &self.file
    }
    pub fn device(&self) -> &Path {
        &self.device
    }
    pub fn device_rdev(&self) -> u64 {
        self.device_rdev
    }
    pub fn fs_block_size(&self) -> u32 {
        self.fs_block_size
    }
    pub fn device_logical_block(&self) -> u32 {
        self.device_logical_block
    }
    pub fn file_len(&self) -> u64 {
        self.file_len
    }
    /// `file_len` rounded up to whole filesystem blocks: what the map covers.
    pub fn mapped_len(&self) -> u64 {
        let bs = self.fs_block_size as u64;
        self.file_len.div_ceil(bs) * bs
    }
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// The device byte runs holding the block-aligned file range
    /// `[file_offset, file_offset+len)`, contiguous runs merged, in file order.
    pub fn device_runs(&self, file_offset: u64, len: u64) -> Result<Vec<DeviceRun>, BlockMapError> {
        let bs = self.fs_block_size as u64;
        let end = file_offset.checked_add(len);
        let bad = |problem| BlockMapError::BadRange {
            file: self.file.clone(),
            offset: file_offset,
            end: end.unwrap_or(u64::MAX),
            file_len: self.file_len,
            block_size: self.fs_block_size,
            problem,
        };
        let Some(end) = end else {
            return Err(bad("overflowing"));
        };
        if len == 0 {
            return Err(bad("empty"));
        }
        if !file_offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(bad("not aligned to the filesystem block"));
        }
        if end > self.mapped_len() {
            return Err(bad("beyond the end of the file"));
        }
        let mut runs: Vec<DeviceRun> = Vec::new();
        for e in &self.extents {
            let lo = file_offset.max(e.file_offset);
            let hi = end.min(e.file_offset + e.len);
            if lo >= hi {
                continue;
            }
            let run = DeviceRun {
                file_offset: lo,
                device_offset: e.device_offset + (lo - e.file_offset),
                len: hi - lo,
            };
            match runs.last_mut() {
                Some(prev)
                    if prev.file_offset + prev.len == run.file_offset
                        && prev.device_offset + prev.len == run.device_offset =>
                {
                    prev.len += run.len
                }
                _ => runs.push(run),
            }
        }
        // resolve() guarantees full coverage; a gap here is a broken map.
        let total: u64 = runs.iter().map(|r| r.len).sum();
        if total != len {
            return Err(bad("not fully mapped"));
        }
        Ok(runs)
    }

    /// A copy with other extents, as no filesystem reported them: for tests
    /// that a wrong map is caught ([`super::RawWriter::open`] proves a map
    /// before any use).
    #[doc(hidden)]
    pub fn with_extents_unchecked(&self, extents: Vec<Extent>) -> BlockMap {
        BlockMap {
            extents,
            ..self.clone()
        }
    }

    /// True when `[dev_off, dev_off+len)` lies inside one extent of the map.
    pub fn contains_device_range(&self, dev_off: u64, len: u64) -> bool {
        let Some(end) = dev_off.checked_add(len) else {
            return false;
        };
        len > 0
            && self
                .extents
                .iter()
                .any(|e| dev_off >= e.device_offset && end <= e.device_offset + e.len)
    }

    /// The files backing the loop device(s) under this file, outermost
    /// first: the loop holding the file's filesystem, then, if that loop's
    /// file itself lives on a loop device, that one, and so on.
    pub fn backing_chain(&self) -> Vec<BackingFile> {
        backing_chain(self.device_rdev)
    }
}

/// The files backing the loop device(s) under block device `dev` (a file's
/// `st_dev`), outermost first; empty when `dev` is no loop device.
pub fn backing_chain(dev: u64) -> Vec<BackingFile> {
    let mut chain = Vec::new();
    let mut dev = dev;
    // A loop cannot (usefully) nest deeper; the bound stops cycles.
    for _ in 0..16 {
        let Some(link) = loop_backing(dev) else {
            break;
        };
        dev = link.st_dev;
        chain.push(link);
    }
    chain
}

/// The file behind block device `dev` if it is a loop device or a partition
/// of one.
pub(super) fn loop_backing(dev: u64) -> Option<BackingFile> {
    let sysfs = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    let mut disk = std::fs::canonicalize(&sysfs).ok()?;
    if disk.join("partition").exists() {
        disk = disk.parent()?.to_path_buf();
    }
    let loop_dir = disk.join("loop");
    if !loop_dir.is_dir() {
        return None;
    }
    let name = disk.file_name()?.to_string_lossy().into_owned();
    let loop_device = Path::new("/dev").join(&name);
    let path = std::fs::read_to_string(loop_dir.join("backing_file"))
        .map(|s| PathBuf::from(s.trim_end_matches('\n')))
        .unwrap_or_default();
    let status = File::open(&loop_device)
        .and_then(|f| sys::loop_backing(&f))
        .map_err(|e| {
            log::warn!(
                "cannot ask {} for its backing file: {e}",
                loop_device.display()
            )
        })
        .ok();
    let (st_dev, st_ino, offset) = match status {
        Some(s) => s,
        None => {
            // Fall back to sysfs and a stat of the recorded path.
            let meta = std::fs::metadata(&path).ok()?;
            let offset = std::fs::read_to_string(loop_dir.join("offset"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            (meta.dev(), meta.ino(), offset)
        }
    };
    Some(BackingFile {
        loop_device,
        path,
        offset,
        st_dev,
        st_ino,
    })
}

#[cfg(test)]
pub(crate) fn test_map(
    file: &Path,
    device: &Path,
    block: u32,
    file_len: u64,
    extents: Vec<Extent>,
) -> BlockMap {
    BlockMap {
        file: file.to_path_buf(),
        device: device.to_path_buf(),
        device_rdev: 0,
        fs_block_size: block,
        device_logical_block: 512,
        file_len,
        extents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_1k() -> BlockMap {
        // 4 KiB file on 1 KiB blocks: blocks 0,1 together, 2 apart, 3 apart.
        test_map(
            Path::new("f"),
            Path::new("d"),
            1024,
            4000,
            coalesce(vec![
                Extent {
                    file_offset: 0,
                    device_offset: 10 * 1024,
                    len: 1024,
                },
                Extent {
                    file_offset: 1024,
                    device_offset: 11 * 1024,
                    len: 1024,
                },
                Extent {
                    file_offset: 2048,
                    device_offset: 50 * 1024,
                    len: 1024,
                },
                Extent {
                    file_offset: 3072,
                    device_offset: 20 * 1024,
                    len: 1024,
                },
            ]),
        )
    }

    #[test]
    fn coalesces_and_maps_a_page_to_several_runs() {
        let m = map_1k();
        assert_eq!(m.extents().len(), 3);
        let runs = m.device_runs(0, 4096).unwrap();
        assert_eq!(
            runs,
            vec![
                DeviceRun {
                    file_offset: 0,
                    device_offset: 10240,
                    len: 2048
                },
                DeviceRun {
                    file_offset: 2048,
                    device_offset: 51200,
                    len: 1024
                },
                DeviceRun {
                    file_offset: 3072,
                    device_offset: 20480,
                    len: 1024
                },
            ]
        );
        assert_eq!(m.device_runs(1024, 1024).unwrap()[0].device_offset, 11264);
    }

    #[test]
    fn rejects_bad_ranges() {
        let m = map_1k();
        assert!(m.device_runs(0, 100).is_err());
        assert!(m.device_runs(512, 1024).is_err());
        assert!(m.device_runs(4096, 1024).is_err());
        assert!(m.device_runs(0, 0).is_err());
        assert!(m.device_runs(u64::MAX - 1023, 1024).is_err());
    }

    #[test]
    fn containment_is_per_extent() {
        let m = map_1k();
        assert!(m.contains_device_range(10240, 2048));
        assert!(m.contains_device_range(11264, 1024));
        assert!(!m.contains_device_range(10240, 3072));
        assert!(!m.contains_device_range(0, 512));
        assert!(!m.contains_device_range(10240, 0));
        assert!(!m.contains_device_range(u64::MAX, 2));
    }

    #[test]
    fn fiemap_checks_refuse_flags_and_holes() {
        let ext = |l: u64, p: u64, n: u64, f: u32| sys::FiemapExtent {
            fe_logical: l,
            fe_physical: p,
            fe_length: n,
            fe_flags: f,
            ..Default::default()
        };
        let p = Path::new("f");
        assert!(fiemap_extents(
            p,
            vec![ext(0, 4096, 8192, sys::FIEMAP_EXTENT_LAST)],
            4096,
            8192
        )
        .is_ok());
        let r = fiemap_extents(
            p,
            vec![ext(0, 4096, 4096, 0), ext(8192, 0, 4096, 0)],
            4096,
            12288,
        );
        assert!(matches!(
            r,
            Err(BlockMapError::Hole {
                offset: 4096,
                end: 8192,
                ..
            })
        ));
        let r = fiemap_extents(p, vec![ext(0, 4096, 4096, 0)], 4096, 8192);
        assert!(matches!(r, Err(BlockMapError::Hole { offset: 4096, .. })));
        for flag in [
            sys::FIEMAP_EXTENT_UNWRITTEN,
            sys::FIEMAP_EXTENT_SHARED,
            sys::FIEMAP_EXTENT_DELALLOC,
            sys::FIEMAP_EXTENT_DATA_INLINE,
        ] {
            let r = fiemap_extents(p, vec![ext(0, 4096, 4096, flag)], 4096, 4096);
            assert!(
                matches!(r, Err(BlockMapError::UnusableExtent { .. })),
                "flag {flag:#x}"
            );
        }
        let r = fiemap_extents(p, vec![ext(0, 4097, 4096, 0)], 4096, 4096);
        assert!(matches!(r, Err(BlockMapError::UnusableExtent { .. })));
    }
}
