//! Opening a path once and checking what it is on the descriptor, never by a
//! stat of the path before (or after) the open: between the two, the name
//! could be pointed at something else.
//!
//! [`CheckedPath::open`] opens the path with `O_PATH` (nothing is read,
//! nothing blocks: a FIFO with no writer, a tape or a watchdog device are
//! not really opened) and `fstat`s that descriptor. Every real open later
//! goes through [`CheckedPath::reopen`], which opens that same inode again
//! (`/proc/self/fd/N`), so no later step looks the name up again.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What a path turned out to be, in words for an error message.
pub fn kind_name(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "an unknown kind of file"
    }
}

/// A path opened once (`O_PATH`) and its `fstat`.
#[derive(Debug)]
pub struct CheckedPath {
    path: PathBuf,
    fd: File,
    meta: Metadata,
}

impl CheckedPath {
    /// Opens `path` without reading it. With `follow` false a symbolic link
    /// is not followed: the result is the link itself (whose kind then says
    /// so).
    pub fn open(path: &Path, follow: bool) -> io::Result<CheckedPath> {
        let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
        let fd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC | nofollow)
            .open(path)?;
        let meta = fd.metadata()?;
        Ok(CheckedPath {
            path: path.to_path_buf(),
            fd,
            meta,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `fstat` of the descriptor opened by [`CheckedPath::open`].
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The `O_PATH` descriptor itself (fstat, fstatfs work on it).
    pub fn fd(&self) -> &File {
        &self.fd
    }

    /// Opens the same inode for I/O (`flags` are extra `open` flags, e.g.
    /// `O_DIRECT`, `O_EXCL`), through `/proc/self/fd`, so the name is not
    /// looked up again. Where `/proc` is missing, opens the name and
    /// refuses it unless the descriptor is the same inode
    /// (`ErrorKind::Other`, "replaced").
    pub fn reopen(&self, write: bool, flags: i32) -> io::Result<File> {
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(flags | libc::O_CLOEXEC | libc::O_NOCTTY)
                .open(p)
        };
        let proc = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let file = match open(&proc) {
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT) && !Path::new("/proc/self").exists() =>
            {
                open(&self.path)?
            }
            other => other?,
        };
        let now = file.metadata()?;
        if (now.dev(), now.ino()) != (self.meta.dev(), self.meta.ino()) {
            return Err(io::Error::other(
                "it was replaced by another file while it was being opened",
            ));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_opened_without_blocking_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let p = CheckedPath::open(&fifo, false).unwrap();
        assert_eq!(kind_name(p.metadata()), "a FIFO (named pipe)");
    }

    #[test]
    fn a_symlink_is_itself_unless_followed_and_reopen_is_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"hello").unwrap();
        let l = dir.path().join("l");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        assert_eq!(
            kind_name(CheckedPath::open(&l, false).unwrap().metadata()),
            "a symbolic link"
        );
        let p = CheckedPath::open(&l, true).unwrap();
        assert!(p.metadata().is_file());
        // The name now points elsewhere: the descriptor still is the first file.
        std::fs::rename(&f, dir.path().join("g")).unwrap();
        std::fs::write(&f, b"other").unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut p.reopen(false, 0).unwrap(), &mut s).unwrap();
        assert_eq!(s, "hello");
    }
}
