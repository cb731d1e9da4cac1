//! Creating and loading a bitmap FILE.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::BitmapError;
use crate::format::bitmap::{BitmapSuper, BITMAP_SUPER_SIZE};

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
        match e.source {
            Some(source) => BitmapError::io(context, source),
            None => BitmapError::msg(format!("{context}: {}", e.context)),
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
pub fn load_bitmap_file(path: &Path) -> Result<(BitmapSuper, Vec<u8>), BitmapError> {
    let shown = path.display();
    let bytes = match crate::blockmap::read_file_direct(path) {
        Ok(b) => b,
        Err(e) => {
            log::debug!(
                "bitmap FILE {shown}: O_DIRECT read failed ({e}); reading through the page cache"
            );
            read_uncached(path)
                .map_err(|e| BitmapError::io(format!("bitmap FILE {shown}: reading"), e))?
        }
    };
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
    Ok((sb, bytes[BITMAP_SUPER_SIZE..need].to_vec()))
}

fn read_uncached(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = File::open(path)?;
    // SAFETY: plain advice on an open descriptor.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let len = file.metadata()?.len() as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
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
