//! Opening a bitmap file: once, by a descriptor checked to be a regular
//! file before anything reads it (a FIFO, socket or device given as a
//! bitmap file is refused at once, not opened: opening a FIFO for reading
//! waits for a writer, and opening a device can act on it).

use super::error::BlockMapError;
use super::sys;
use crate::io::aligned::{round_up, AlignedBuf, BUF_ALIGN};
use crate::io::checked_open::{kind_name, CheckedPath};
use std::fs::{File, Metadata};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Opens `path` without following a final symbolic link (`O_PATH |
/// O_NOFOLLOW`) and checks on the descriptor that it is a regular file.
/// Every later open of the file goes through [`CheckedPath::reopen`].
pub fn open_bitmap_path(path: &Path) -> Result<CheckedPath, BlockMapError> {
    open_checked(path, false)
}

fn open_checked(path: &Path, follow: bool) -> Result<CheckedPath, BlockMapError> {
    let checked =
        CheckedPath::open(path, follow).map_err(|e| BlockMapError::io(path, "cannot open", e))?;
    if !checked.metadata().is_file() {
        return Err(BlockMapError::NotRegularFile {
            file: path.to_path_buf(),
            kind: kind_name(checked.metadata()),
        });
    }
    Ok(checked)
}

/// Opens `path` for reading (with `extra_flags`; `O_NOFOLLOW` among them
/// refuses a symbolic link) once it is known to be a regular file.
pub(super) fn open_regular(
    path: &Path,
    extra_flags: i32,
) -> Result<(File, Metadata), BlockMapError> {
    let checked = open_checked(path, extra_flags & libc::O_NOFOLLOW == 0)?;
    let file = checked
        .reopen(false, extra_flags & !libc::O_NOFOLLOW)
        .map_err(|e| BlockMapError::io(path, "cannot open", e))?;
    let meta = file
        .metadata()
        .map_err(|e| BlockMapError::io(path, "cannot stat", e))?;
    Ok((file, meta))
}

/// Reads a whole (small) file with O_DIRECT through its filesystem, so a
/// page cache made stale by raw writes is not what is read. Falls back to a
/// cache-dropped buffered read where the filesystem refuses O_DIRECT. A
/// symbolic link is followed; what it leads to must be a regular file.
pub fn read_file_direct(path: &Path) -> Result<Vec<u8>, BlockMapError> {
    read_checked_direct(&open_checked(path, true)?, 0, None)
}

/// As [`read_file_direct`], for a file opened by [`open_bitmap_path`]:
/// bytes from `offset` (a multiple of 4096) to the end of the file, or at
/// most `limit` of them. Refuses nothing by size: see [`check_len`].
pub fn read_checked_direct(
    checked: &CheckedPath,
    offset: u64,
    limit: Option<u64>,
) -> Result<Vec<u8>, BlockMapError> {
    let path = checked.path();
    let (file, is_direct) = match checked.reopen(false, libc::O_DIRECT) {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            log::info!(
                "{}: O_DIRECT unsupported; reading it buffered after dropping its cache",
                path.display()
            );
            let f = checked
                .reopen(false, 0)
                .map_err(|e| BlockMapError::io(path, "cannot open", e))?;
            let _ = sys::drop_page_cache(&f);
            (f, false)
        }
        Err(e) => return Err(BlockMapError::io(path, "cannot open", e)),
    };
    let len = file
        .metadata()
        .map_err(|e| BlockMapError::io(path, "cannot stat", e))?
        .len();
    let want = len.saturating_sub(offset);
    let (want, spare) = match limit {
        Some(l) if l <= want => (l, 0),
        // One spare block so a file that grew is noticed by the caller's length check.
        _ => (want, BUF_ALIGN),
    };
    let want = usize::try_from(want).map_err(|_| BlockMapError::TooLarge {
        file: path.to_path_buf(),
        len,
        why: "more than this machine can address".into(),
    })?;
    let mut buf = AlignedBuf::new(round_up(want, BUF_ALIGN) + spare);
    let slice = &mut buf.as_mut_slice()[..round_up(want, BUF_ALIGN) + spare];
    let mut done = 0usize;
    loop {
        if done == slice.len() {
            break;
        }
        // O_DIRECT reads stay aligned: `done` moves in whole blocks except
        // at the end of the file, where the loop stops.
        match file.read_at(&mut slice[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                if is_direct && !done.is_multiple_of(BUF_ALIGN) {
                    break; // end of file
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BlockMapError::io(path, "cannot read", e)),
        }
    }
    let done = if spare == 0 { done.min(want) } else { done };
    Ok(slice[..done].to_vec())
}

/// Refuses a file longer than `max` bytes before it is read (`why` says
/// where the bound comes from).
pub fn check_len(
    checked: &CheckedPath,
    max: u64,
    why: impl Fn() -> String,
) -> Result<(), BlockMapError> {
    let len = checked.metadata().len();
    if len > max {
        return Err(BlockMapError::TooLarge {
            file: checked.path().to_path_buf(),
            len,
            why: why(),
        });
    }
    Ok(())
}
