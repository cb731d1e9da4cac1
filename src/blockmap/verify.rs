//! Proof that the map is right: the file read through its filesystem and
//! the mapped sectors read straight from the device hold the same bytes.

use super::error::BlockMapError;
use super::open::read_file_direct;
use super::resolve::BlockMap;
use super::sys;
use crate::io::aligned::AlignedBuf;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

const SECTOR: u64 = 512;

/// Compares the file's bytes `[0, file_len)` as the filesystem serves them
/// with the bytes at the mapped device sectors; refuses on any difference.
///
/// The file is fsynced first so everything the filesystem wrote is on the
/// device, its clean page cache is dropped (stale pages could be left by an
/// earlier raw writer), and it is read with O_DIRECT so the filesystem's own
/// block mapping, not a cache, supplies its side of the comparison.
pub fn verify(map: &BlockMap) -> Result<(), BlockMapError> {
    let path = map.file();
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| BlockMapError::io(path, "cannot open", e))?;
    file.sync_all()
        .map_err(|e| BlockMapError::io(path, "cannot fsync", e))?;
    if let Err(e) = sys::drop_page_cache(&file) {
        log::warn!("{}: cannot drop its page cache: {e}", path.display());
    }
    let through_fs = read_file_direct(path)?;
    if through_fs.len() as u64 != map.file_len() {
        return Err(BlockMapError::FileChanged {
            file: path.to_path_buf(),
            detail: format!(
                "length {} when mapped, {} now",
                map.file_len(),
                through_fs.len()
            ),
        });
    }
    let device = open_device_for_reading(map)?;
    let through_device = read_mapped(&device, map, 0, map.mapped_len())?;
    if let Some(offset) = through_fs
        .iter()
        .zip(&through_device)
        .position(|(a, b)| a != b)
    {
        let offset = offset as u64;
        let bs = map.fs_block_size() as u64;
        let block = offset / bs * bs;
        let sector = map
            .device_runs(block, bs)
            .ok()
            .and_then(|r| {
                r.first()
                    .map(|r| (r.device_offset + offset - block) / SECTOR)
            })
            .unwrap_or(0);
        return Err(BlockMapError::Mismatch {
            file: path.to_path_buf(),
            device: map.device().to_path_buf(),
            sector,
            offset,
        });
    }
    Ok(())
}

/// The map's device, read-only, O_DIRECT, checked to still be the same device.
pub(super) fn open_device_for_reading(map: &BlockMap) -> Result<File, BlockMapError> {
    let device = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(map.device())
        .map_err(|e| BlockMapError::io(map.device(), "cannot open device", e))?;
    check_same_device(map, &device)?;
    Ok(device)
}

pub(super) fn check_same_device(map: &BlockMap, device: &File) -> Result<(), BlockMapError> {
    let rdev = device
        .metadata()
        .map_err(|e| BlockMapError::io(map.device(), "cannot stat device", e))?
        .rdev();
    if rdev != map.device_rdev() {
        return Err(BlockMapError::FileChanged {
            file: map.file().to_path_buf(),
            detail: format!(
                "{} is now device {}:{}, not the one the file was mapped on",
                map.device().display(),
                libc::major(rdev),
                libc::minor(rdev)
            ),
        });
    }
    Ok(())
}

/// Reads the block-aligned file range through the device at the mapped
/// sectors (whole blocks, aligned buffers).
pub(super) fn read_mapped(
    device: &File,
    map: &BlockMap,
    file_offset: u64,
    len: u64,
) -> Result<Vec<u8>, BlockMapError> {
    let runs = map.device_runs(file_offset, len)?;
    let mut out = Vec::with_capacity(len as usize);
    for run in runs {
        let mut buf = AlignedBuf::new(run.len as usize);
        let slice = &mut buf.as_mut_slice()[..run.len as usize];
        let mut done = 0usize;
        while done < slice.len() {
            let at = run.device_offset + done as u64;
            match device.read_at(&mut slice[done..], at) {
                Ok(0) => {
                    return Err(BlockMapError::ReadFailed {
                        file: map.file().to_path_buf(),
                        device: map.device().to_path_buf(),
                        sector: at / SECTOR,
                        source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(BlockMapError::ReadFailed {
                        file: map.file().to_path_buf(),
                        device: map.device().to_path_buf(),
                        sector: at / SECTOR,
                        source: e,
                    })
                }
            }
        }
        out.extend_from_slice(slice);
    }
    Ok(out)
}
