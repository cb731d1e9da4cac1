//! The interface a running array offers its transports (FUSE today): its
//! data, status and control files, in errno terms. It lives here, below the
//! transports, so that the array never imports a transport and a new
//! transport is written against this trait alone.

pub use crate::raid1::{
    PlannedRead, PlannedWrite, ReadPiece, WritePiece, MAX_READ_PIECES, MAX_WRITE_TARGETS,
};

/// What a transport serves: the array's data, its status and its control
/// files. Errors are errno values; the implementation logs them with their
/// context.
pub trait ServedArray: Send + Sync + 'static {
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    /// Reads `[offset, offset+len)` (clamped at the end) and passes the
    /// bytes to `out`. `direct`: the reader opened the file with O_DIRECT
    /// (its streams get no readahead from the kernel).
    fn read(
        &self,
        offset: u64,
        len: u64,
        direct: bool,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<(), i32>;
    /// The read of `[offset, offset+len)` planned for a transport that runs
    /// the legs' reads in its own ring, into a buffer aligned for O_DIRECT
    /// (see `raid1::engine::in_ring`); None: serve it with [`Self::read`].
    /// Every planned read is given back to [`Self::finish_read`].
    fn plan_read(&self, _offset: u64, _len: u64, _direct: bool) -> Option<PlannedRead> {
        None
    }
    /// Finishes a planned read once its pieces completed (`results[k]`:
    /// piece k's bytes read or -errno); Ok: `buf[..plan.len()]` holds the
    /// data (errors corrected as on the ordinary path).
    fn finish_read(
        &self,
        _plan: PlannedRead,
        _results: &[i32],
        _buf: &mut [u8],
    ) -> Result<(), i32> {
        Err(libc::EIO)
    }
    /// The write of `len` bytes at `offset` planned for a transport that
    /// runs the legs' writes in its own ring from a buffer aligned for
    /// O_DIRECT (see `raid1::engine::in_ring`): None: serve it with
    /// [`Self::write`]; Some(Err): it fails with that errno. A planned
    /// write is given back to [`Self::finish_write`] once its pieces
    /// completed (it holds its range until then).
    fn plan_write(
        &self,
        _offset: u64,
        _len: u64,
        _durable: bool,
    ) -> Option<Result<PlannedWrite<'_>, i32>> {
        None
    }
    /// Finishes a planned write (`results[k]`: piece k's bytes written or
    /// -errno; `data`: the buffer written): the bytes written, or the errno.
    fn finish_write(
        &self,
        _plan: PlannedWrite<'_>,
        _results: &[i32],
        _data: &[u8],
    ) -> Result<usize, i32> {
        Err(libc::EIO)
    }
    /// Writes `data` at `offset`; `durable`: on every written leg's stable
    /// storage before it returns (an O_DSYNC or O_SYNC write).
    fn write(&self, offset: u64, data: &[u8], durable: bool) -> Result<usize, i32>;
    /// Makes acknowledged writes durable on every in-sync leg.
    fn flush(&self) -> Result<(), i32>;
    /// The status text of `mdstat`.
    fn mdstat(&self) -> String;
    /// The control files, as paths from the mount's root ("md/sync_action",
    /// "md/dev-leg0.img/state") with how they may be used; their
    /// directories are implied. The list may change (legs come and go).
    fn control_files(&self) -> Vec<(String, ControlAccess)>;
    /// A control file's content.
    fn control_read(&self, path: &str) -> Result<String, i32>;
    /// A write to a control file (the written text, one trailing newline removed).
    fn control_write(&self, path: &str, value: &str) -> Result<(), i32>;
}

/// How a control file may be used, as md's sysfs modes say (0444, 0644,
/// and 0200 for `new_dev`, which cannot be opened for reading).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAccess {
    Read,
    ReadWrite,
    Write,
}

impl ControlAccess {
    /// The file mode bits md's sysfs gives such a file.
    pub fn perm(self) -> u16 {
        match self {
            ControlAccess::Read => 0o444,
            ControlAccess::ReadWrite => 0o644,
            ControlAccess::Write => 0o200,
        }
    }

    pub fn readable(self) -> bool {
        self != ControlAccess::Write
    }

    pub fn writable(self) -> bool {
        self != ControlAccess::Read
    }
}
