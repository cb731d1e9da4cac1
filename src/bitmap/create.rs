//! Creating and loading a bitmap FILE.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::BitmapError;
use crate::format::bitmap::{BitmapSuper, BITMAP_PAGE_SIZE, BITMAP_SUPER_SIZE};
use crate::io::checked_open::CheckedPath;

/// Writes a new bitmap file: the header and all-clear bits, as real data (no
/// fallocate: the block map refuses unwritten extents), exactly
/// `256 + ceil(chunks/8)` bytes long, then fsyncs the file and its directory.
/// An existing file is refused unless `force`.
pub fn create_bitmap_file(path: &Path, sb: &BitmapSuper, force: bool) -> Result<(), BitmapError> {
    let shown = path.display();
    let mut opts = OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut file = opts.open(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
            " (it already exists; use --force to overwrite)"
        } else {
            ""
        };
        BitmapError::io(format!("bitmap FILE {shown}: cannot create{hint}"), e)
    })?;
    let mut content = Vec::with_capacity(sb.file_len() as usize);
    content.extend_from_slice(&sb.to_bytes());
    content.resize(sb.file_len() as usize, 0);
    file.write_all(&content)
        .and_then(|()| file.set_len(sb.file_len()))
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            BitmapError::io(
                format!("bitmap FILE {shown}: writing {} bytes", content.len()),
                e,
            )
        })?;
    sync_parent(path)
}

/// A new bitmap file written and synced beside its final name
/// (`.NAME.mdfuse-new`), not yet in place: [`StagedBitmapFile::commit`]
/// renames it over the final name; dropping it uncommitted removes it.
/// So a create that fails before the commit leaves no bitmap file changed.
#[derive(Debug)]
pub struct StagedBitmapFile {
    staged: PathBuf,
    path: PathBuf,
    committed: bool,
}

/// Stages a new bitmap file for `path` (see [`StagedBitmapFile`]). An
/// existing `path` is refused unless `force`, and even then when it is in
/// use: immutable (a running mdfuse, or one that crashed: `chattr -i`) or
/// locked (a running mdfuse with `--bitmap-file-io`). Nothing at `path` is
/// changed.
pub fn stage_bitmap_file(
    path: &Path,
    sb: &BitmapSuper,
    force: bool,
) -> Result<StagedBitmapFile, BitmapError> {
    let shown = path.display();
    if std::fs::symlink_metadata(path).is_ok() {
        if !force {
            return Err(BitmapError::msg(format!(
                "bitmap FILE {shown} already exists; use --force to overwrite it"
            )));
        }
        check_replaceable(path)?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| BitmapError::msg(format!("bitmap FILE {shown}: not a file name")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut staged_name = std::ffi::OsString::from(".");
    staged_name.push(name);
    staged_name.push(".mdfuse-new");
    let staged = StagedBitmapFile {
        staged: dir.join(staged_name),
        path: path.to_path_buf(),
        committed: false,
    };
    // A leftover of an interrupted create is ours to replace.
    let _ = std::fs::remove_file(&staged.staged);
    create_bitmap_file(&staged.staged, sb, false).map_err(|e| {
        let context = format!(
            "bitmap FILE {shown}: cannot create it (staged as {})",
            staged.staged.display()
        );
        match e {
            BitmapError::Io { source, .. } => BitmapError::io(context, source),
            refused => refused.within(&context),
        }
    })?;
    Ok(staged)
}

/// An existing bitmap file may be overwritten only when no mdfuse uses it.
fn check_replaceable(path: &Path) -> Result<(), BitmapError> {
    let shown = path.display();
    // Opening for writing changes nothing (no truncation) and fails on an
    // immutable file, which is what a running mdfuse makes it.
    let file = OpenOptions::new().write(true).open(path).map_err(|e| {
        let why = if e.raw_os_error() == Some(libc::EPERM) {
            " (it is immutable: an mdfuse is using it, or one crashed; stop that array, or `chattr -i` it)"
        } else {
            ""
        };
        BitmapError::io(format!("bitmap FILE {shown}: cannot overwrite{why}"), e)
    })?;
    // SAFETY: flock on a valid fd; the lock is dropped with the fd.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(BitmapError::msg(format!(
            "bitmap FILE {shown} is in use by another mdfuse (locked); stop that array first"
        )));
    }
    Ok(())
}

impl StagedBitmapFile {
    /// The final name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts the staged file in place (rename, then fsync of the directory).
    pub fn commit(mut self) -> Result<(), BitmapError> {
        let shown = self.path.display();
        std::fs::rename(&self.staged, &self.path).map_err(|e| {
            BitmapError::io(
                format!(
                    "bitmap FILE {shown}: cannot rename {} into place",
                    self.staged.display()
                ),
                e,
            )
        })?;
        self.committed = true;
        sync_parent(&self.path)
    }
}

impl Drop for StagedBitmapFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.staged);
            let _ = sync_parent(&self.staged);
        }
    }
}

fn sync_parent(path: &Path) -> Result<(), BitmapError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
        BitmapError::io(
            format!(
                "bitmap FILE {}: fsync of directory {}",
                path.display(),
                dir.display()
            ),
            e,
        )
    })
}

/// Reads a bitmap file: its header and the bits after it (exactly
/// ceil(chunks/8) bytes). Reads with O_DIRECT when the filesystem allows,
/// because raw device writes bypass the page cache, which may be stale;
/// otherwise drops the cached pages (POSIX_FADV_DONTNEED) and reads normally.
/// Only what the header says the file holds is read, never more (see
/// [`load_bitmap_checked`]).
pub fn load_bitmap_file(path: &Path) -> Result<(BitmapSuper, Vec<u8>), BitmapError> {
    let checked = open_following(path)?;
    let sb = read_bitmap_header(&checked)?;
    load_bitmap_checked(&checked, &sb)
}

/// What `mdfuse examine-bitmap` shows of a file (as `mdadm -X`, a symbolic
/// link is followed): the header, and the bytes after it up to what the
/// header covers, as far as the file holds them (never more is read). A
/// FIFO, socket or device is refused before it is opened for reading.
pub fn read_bitmap_for_examine(path: &Path) -> Result<(BitmapSuper, Vec<u8>), BitmapError> {
    let checked = open_following(path)?;
    let sb = read_bitmap_header(&checked)?;
    let bytes = crate::blockmap::read_checked_direct(&checked, 0, Some(sb.file_len()))
        .map_err(|e| BitmapError::msg(format!("bitmap FILE {}: {e}", path.display())))?;
    let bits = bytes[BITMAP_SUPER_SIZE.min(bytes.len())..].to_vec();
    Ok((sb, bits))
}

fn open_following(path: &Path) -> Result<CheckedPath, BitmapError> {
    let checked = CheckedPath::open(path, true)
        .map_err(|e| BitmapError::io(format!("bitmap FILE {}: cannot open", path.display()), e))?;
    if !checked.metadata().is_file() {
        return Err(BitmapError::msg(
            crate::blockmap::BlockMapError::NotRegularFile {
                file: path.to_path_buf(),
                kind: crate::io::checked_open::kind_name(checked.metadata()),
            }
            .to_string(),
        ));
    }
    Ok(checked)
}

/// The header of a bitmap file opened by [`crate::blockmap::open_bitmap_path`]
/// (its first 4096 bytes are read, nothing more).
pub fn read_bitmap_header(checked: &CheckedPath) -> Result<BitmapSuper, BitmapError> {
    let shown = checked.path().display();
    let head = crate::blockmap::read_checked_direct(checked, 0, Some(BITMAP_PAGE_SIZE as u64))
        .map_err(|e| BitmapError::msg(format!("bitmap FILE {shown}: {e}")))?;
    BitmapSuper::parse(&head).map_err(|e| BitmapError::msg(format!("bitmap FILE {shown}: {e}")))
}

/// The bits of the bitmap file whose header is `sb`: refused up front,
/// before anything more is read, when the file is longer than that header
/// can need (the file mdadm makes is `256 + ceil(chunks/8)` bytes; up to the
/// end of its last 4096-byte page is accepted), or shorter.
pub fn load_bitmap_checked(
    checked: &CheckedPath,
    sb: &BitmapSuper,
) -> Result<(BitmapSuper, Vec<u8>), BitmapError> {
    let shown = checked.path().display();
    let need = sb.file_len();
    let max = need.div_ceil(BITMAP_PAGE_SIZE as u64) * BITMAP_PAGE_SIZE as u64;
    crate::blockmap::check_len(checked, max, || {
        format!(
            "its header ({} sectors in {}-byte chunks: {} chunks) needs {need} bytes, \
             at most {max} with its last page; it is not this bitmap's file",
            sb.sync_size,
            sb.chunksize,
            sb.chunks()
        )
    })
    .map_err(|e| BitmapError::msg(format!("bitmap FILE {e}")))?;
    let bytes = crate::blockmap::read_checked_direct(checked, 0, None)
        .map_err(|e| BitmapError::msg(format!("bitmap FILE {e}")))?;
    let sb = BitmapSuper::parse(&bytes)
        .map_err(|e| BitmapError::msg(format!("bitmap FILE {shown}: {e}")))?;
    let need = sb.file_len() as usize;
    if bytes.len() < need {
        return Err(BitmapError::msg(format!(
            "bitmap FILE {shown}: {} bytes, but {} chunks of {} bytes need {need}; the file is truncated",
            bytes.len(),
            sb.chunks(),
            sb.chunksize
        )));
    }
    if bytes.len() as u64 > max {
        return Err(BitmapError::msg(format!(
            "bitmap FILE {shown}: it grew to {} bytes while it was read",
            bytes.len()
        )));
    }
    Ok((sb, bytes[BITMAP_SUPER_SIZE..need].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_roundtrip_and_refuse_existing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("md0.bitmap");
        let sb = BitmapSuper::new_for_array([3; 16], 63488, 65536, 5, 4);
        create_bitmap_file(&path, &sb, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 318);
        let (got, bits) = load_bitmap_file(&path).unwrap();
        assert_eq!(got, sb);
        assert_eq!(bits, vec![0u8; 62]);
        let err = create_bitmap_file(&path, &sb, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        create_bitmap_file(&path, &sb, true).unwrap();
    }

    #[test]
    fn a_staged_file_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("md0.bitmap");
        let sb = BitmapSuper::new_for_array([3; 16], 63488, 65536, 5, 4);
        let staged = stage_bitmap_file(&path, &sb, false).unwrap();
        assert!(!path.exists());
        drop(staged);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "staged file left"
        );
        stage_bitmap_file(&path, &sb, false)
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(load_bitmap_file(&path).unwrap().0, sb);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Existing: refused without force; with force, replaced only at commit.
        assert!(stage_bitmap_file(&path, &sb, false).is_err());
        let other = BitmapSuper::new_for_array([4; 16], 63488, 65536, 5, 4);
        let staged = stage_bitmap_file(&path, &other, true).unwrap();
        assert_eq!(load_bitmap_file(&path).unwrap().0, sb);
        staged.commit().unwrap();
        assert_eq!(load_bitmap_file(&path).unwrap().0, other);
        let missing = dir.path().join("no-such-dir").join("md0.bitmap");
        assert!(stage_bitmap_file(&missing, &sb, false).is_err());
    }

    #[test]
    fn load_refuses_truncated_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let sb = BitmapSuper::new_for_array([3; 16], 63488, 65536, 5, 4);
        std::fs::write(&path, &sb.to_bytes()[..]).unwrap();
        let err = load_bitmap_file(&path).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        std::fs::write(&path, vec![0u8; 400]).unwrap();
        let err = load_bitmap_file(&path).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
    }
}
