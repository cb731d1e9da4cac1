//! Keeps the bitmap file still while raw writes address its blocks: an
//! exclusive flock (one mdfuse per file) and the immutable attribute (no
//! writes, truncation, renames or defragmentation through the filesystem).

use super::error::BlockMapError;
use super::sys;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Held for as long as raw writes may target the file; dropping it (or
/// [`FileGuard::release`]) clears the immutable flag if this guard set it,
/// drops the file's page cache (stale after raw writes) and unlocks.
#[derive(Debug)]
pub struct FileGuard {
    file: File,
    path: PathBuf,
    set_immutable: bool,
    was_immutable: bool,
    released: bool,
}

/// A read-only check, for before [`protect`]: the file is a regular file
/// on a filesystem mounted read-write (else setting the immutable flag, and
/// raw writes, would fail). Changes nothing.
pub fn check_protectable(path: &Path) -> Result<(), BlockMapError> {
    let (file, _) = super::open::open_regular(path, libc::O_NOFOLLOW)?;
    if sys::is_read_only_mount(&file).map_err(|e| BlockMapError::io(path, "cannot statvfs", e))? {
        return Err(BlockMapError::ReadOnlyFilesystem {
            file: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Locks `path` exclusively (non-blocking) and makes it immutable. A file
/// that cannot be made immutable is refused: its blocks could move.
/// Call this before [`super::resolve`] so the map cannot change after it is
/// verified.
pub fn protect(path: &Path) -> Result<FileGuard, BlockMapError> {
    let (file, _) = super::open::open_regular(path, libc::O_NOFOLLOW)?;
    if let Err(e) = sys::flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(BlockMapError::Locked {
                file: path.to_path_buf(),
            });
        }
        return Err(BlockMapError::io(path, "cannot lock", e));
    }
    let mut guard = FileGuard {
        file,
        path: path.to_path_buf(),
        set_immutable: false,
        was_immutable: false,
        released: false,
    };
    let unsupported = |source| BlockMapError::ImmutableUnsupported {
        file: path.to_path_buf(),
        source,
    };
    match sys::get_flags(&guard.file) {
        Err(e) if sys::is_unsupported(&e) => return Err(unsupported(e)),
        Err(e) => return Err(BlockMapError::io(path, "cannot read the attributes of", e)),
        Ok(flags) if flags & sys::FS_IMMUTABLE_FL != 0 => {
            // Ours from a run that crashed, or the administrator's: leave it.
            log::warn!(
                "{} is already immutable; leaving the flag as found when released",
                path.display()
            );
            guard.was_immutable = true;
        }
        Ok(flags) => match sys::set_flags(&guard.file, flags | sys::FS_IMMUTABLE_FL) {
            Ok(()) => guard.set_immutable = true,
            Err(e) if sys::is_unsupported(&e) => return Err(unsupported(e)),
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
                return Err(BlockMapError::ReadOnlyFilesystem {
                    file: path.to_path_buf(),
                })
            }
            Err(e) => {
                return Err(BlockMapError::ImmutableDenied {
                    file: path.to_path_buf(),
                    source: e,
                })
            }
        },
    }
    Ok(guard)
}

impl FileGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor the lock and the flag are held through.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// True when this guard made the file immutable (and will undo it).
    pub fn set_immutable(&self) -> bool {
        self.set_immutable
    }

    /// True when the file was immutable before [`protect`] (left as found).
    pub fn was_already_immutable(&self) -> bool {
        self.was_immutable
    }

    /// Treats a flag found set as this guard's own, so release clears it:
    /// for a caller that knows the flag was left by a crashed mdfuse.
    pub fn adopt_immutable(&mut self) {
        if self.was_immutable {
            self.set_immutable = true;
        }
    }

    /// For a file whose raw map is no longer trusted: lifts the immutable
    /// flag if this guard set it (release then leaves the flag alone) and
    /// writes `bytes` at `offset` through the filesystem (pwrite, then
    /// fdatasync), which knows where the file's blocks are now. The lock
    /// stays held.
    pub fn write_through_filesystem(
        &mut self,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), BlockMapError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        if self.set_immutable {
            let cleared = sys::get_flags(&self.file)
                .and_then(|f| sys::set_flags(&self.file, f & !sys::FS_IMMUTABLE_FL));
            cleared.map_err(|e| {
                BlockMapError::io(&self.path, "cannot clear the immutable flag of", e)
            })?;
            self.set_immutable = false;
        }
        // The same inode as the locked descriptor, not whatever the name is now.
        let proc = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let file = File::options()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&proc)
            .map_err(|e| BlockMapError::io(&self.path, "cannot open for writing", e))?;
        file.write_all_at(bytes, offset)
            .and_then(|()| file.sync_data())
            .map_err(|e| BlockMapError::io(&self.path, "cannot write through its filesystem", e))
    }

    /// Releases the file, reporting what went wrong (drop only logs).
    pub fn release(mut self) -> Result<(), BlockMapError> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<(), BlockMapError> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        let mut first_error = None;
        if self.set_immutable {
            let cleared = sys::get_flags(&self.file)
                .and_then(|f| sys::set_flags(&self.file, f & !sys::FS_IMMUTABLE_FL));
            if let Err(e) = cleared {
                first_error = Some(BlockMapError::io(
                    &self.path,
                    "cannot clear the immutable flag (run `chattr -i` on it) of",
                    e,
                ));
            }
        }
        if let Err(e) = sys::drop_page_cache(&self.file) {
            first_error.get_or_insert(BlockMapError::io(
                &self.path,
                "cannot drop the page cache of",
                e,
            ));
        }
        if let Err(e) = sys::flock(&self.file, libc::LOCK_UN) {
            first_error.get_or_insert(BlockMapError::io(&self.path, "cannot unlock", e));
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        if let Err(e) = self.release_inner() {
            log::warn!("{e}");
        }
    }
}
