//! The interface a running array offers its transports (FUSE today): its
//! data, status and control files, in errno terms. It lives here, below the
//! transports, so that the array never imports a transport and a new
//! transport is written against this trait alone.

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
