//! Errors of the block-map layer. Each names the file (and device, sector
//! where it matters) and says what to do about it.

use std::path::PathBuf;

/// What to do when the file's layout is unusable for raw writes.
pub const RECREATE_HINT: &str = "recreate the bitmap file with `mdfuse create --bitmap`, \
     or copy it with `cp --sparse=never` and fsync the copy";

/// What to do when the file is on a filesystem without a block device.
pub const BLOCK_FS_HINT: &str = "put the bitmap file on a filesystem backed by a block device, \
     e.g. ext4 or xfs, or use --bitmap-file-io to accept ordinary file I/O";

#[derive(Debug, thiserror::Error)]
pub enum BlockMapError {
    #[error("{what} {file}: {source}")]
    Io {
        file: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{file} is {kind}, not a regular file: a bitmap file must be a regular file \
         (given by its own name, not through a symbolic link)"
    )]
    NotRegularFile { file: PathBuf, kind: &'static str },

    #[error("{file} is {len} bytes: {why}; refusing to read it")]
    TooLarge {
        file: PathBuf,
        len: u64,
        why: String,
    },

    #[error("{file} is empty: {RECREATE_HINT}")]
    EmptyFile { file: PathBuf },

    #[error(
        "{file} lives on a {fs_type} filesystem (st_dev {major}:{minor}), which has no block \
         device whose sectors hold the file: {BLOCK_FS_HINT}"
    )]
    NotOnBlockDevice {
        file: PathBuf,
        fs_type: String,
        major: u32,
        minor: u32,
    },

    #[error(
        "{file} lives on a {fs_type} filesystem: mdfuse writes bitmap pages raw only on \
         ext2/ext3/ext4 and xfs, where a file's blocks stay where they are while it is \
         immutable and not written; elsewhere (copy-on-write, log-structured or garbage-collected \
         filesystems, or ones without the immutable attribute) they could move and raw writes \
         would land on other data: put the bitmap file on ext4 or xfs, or use --bitmap-file-io"
    )]
    BlocksMayMove { file: PathBuf, fs_type: String },

    #[error(
        "cannot make {file} immutable ({source}): without the flag its filesystem could move \
         or rewrite its blocks under raw writes; put the bitmap file on ext4 or xfs, or use \
         --bitmap-file-io"
    )]
    ImmutableUnsupported {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{file} is on block device {major}:{minor} but {device} {problem}: \
         make the device node available (udev, or mknod) or {BLOCK_FS_HINT}"
    )]
    DeviceNode {
        file: PathBuf,
        device: PathBuf,
        major: u32,
        minor: u32,
        problem: String,
    },

    #[error(
        "{file} is on a filesystem with {block_size}-byte blocks: raw bitmap writes need a \
         power-of-two block size between 512 and 4096 so a 4 KiB page holds whole blocks; \
         put the bitmap file on a filesystem with blocks of at most 4 KiB"
    )]
    UnsupportedBlockSize { file: PathBuf, block_size: u64 },

    #[error(
        "{file}: device {device} has {logical}-byte logical blocks, larger than the \
         filesystem's {block_size}-byte blocks, so one file block cannot be written alone; \
         put the bitmap file on a filesystem whose block size is at least the device's"
    )]
    DeviceBlockTooLarge {
        file: PathBuf,
        device: PathBuf,
        logical: u32,
        block_size: u32,
    },

    #[error(
        "{file} has its data journaled ({why}): the filesystem may later copy old contents \
         from its journal over raw writes; remount without data=journal or run `chattr -j` on it"
    )]
    DataJournaled { file: PathBuf, why: String },

    #[error("{file} has a hole at bytes {offset}..{end} (no device blocks): {RECREATE_HINT}")]
    Hole {
        file: PathBuf,
        offset: u64,
        end: u64,
    },

    #[error("{file}: the extent at file offset {offset} is {problem}: {RECREATE_HINT}")]
    UnusableExtent {
        file: PathBuf,
        offset: u64,
        problem: String,
    },

    #[error(
        "the block map of {file} does not match what {device} holds at sector {sector} \
         (file offset {offset}): refusing raw writes; fsync the file, check the filesystem, \
         or {RECREATE_HINT}"
    )]
    Mismatch {
        file: PathBuf,
        device: PathBuf,
        sector: u64,
        offset: u64,
    },

    #[error(
        "the block map of {file} is wrong: a marker written to {device} at sector {sector} is \
         not what the filesystem reads at file offset {offset}, so raw writes would land \
         elsewhere; the original bytes were written back; refusing raw writes: check the \
         filesystem, or {RECREATE_HINT}"
    )]
    MarkerMissing {
        file: PathBuf,
        device: PathBuf,
        sector: u64,
        offset: u64,
    },

    #[error("{file} changed while it was being checked ({detail}): stop whatever else writes it and retry")]
    FileChanged { file: PathBuf, detail: String },

    #[error(
        "cannot open {device} (holding {file}) for raw writes: {source}; the device must be \
         writable by mdfuse (not a read-only loop device, run as root), or use --bitmap-file-io"
    )]
    DeviceNotWritable {
        file: PathBuf,
        device: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{file}: the range {offset}..{end} is {problem} (file length {file_len}, \
         block size {block_size}); this is a caller bug"
    )]
    BadRange {
        file: PathBuf,
        offset: u64,
        end: u64,
        file_len: u64,
        block_size: u32,
        problem: &'static str,
    },

    #[error("raw write of {file} to {device} failed: {failures}")]
    WriteFailed {
        file: PathBuf,
        device: PathBuf,
        failures: String,
    },

    #[error("raw read of {file} from {device} at sector {sector} failed: {source}")]
    ReadFailed {
        file: PathBuf,
        device: PathBuf,
        sector: u64,
        #[source]
        source: std::io::Error,
    },

    #[error("{file} is in use by another mdfuse (locked): stop that array first")]
    Locked { file: PathBuf },

    #[error(
        "the filesystem holding {file} is read-only (Read-only file system: mounted ro, or on a read-only device): \
         raw bitmap writes need it read-write: remount it read-write, or put the bitmap \
         file on a writable filesystem", file = .file.display()
    )]
    ReadOnlyFilesystem { file: PathBuf },
    #[error(
        "cannot make {file} immutable: {source}; mdfuse needs CAP_LINUX_IMMUTABLE \
         (run it as root) so nothing moves the file under raw writes"
    )]
    ImmutableDenied {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BlockMapError {
    pub(crate) fn io(file: &std::path::Path, what: &'static str, source: std::io::Error) -> Self {
        BlockMapError::Io {
            file: file.to_path_buf(),
            what,
            source,
        }
    }
}
