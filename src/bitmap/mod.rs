//! The write-intent bitmap: a service the RAID1 engine calls before and after
//! each data write (md's startwrite/endwrite).

use std::fmt;

/// Errors of the write-intent service; they carry the file and what was being done.
#[derive(Debug)]
pub struct BitmapError {
    pub context: String,
    pub source: Option<std::io::Error>,
}

impl fmt::Display for BitmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {}", self.context, e),
            None => write!(f, "{}", self.context),
        }
    }
}

impl std::error::Error for BitmapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// What the RAID1 engine needs from a write-intent bitmap. Offsets and
/// lengths are in bytes of the array.
pub trait WriteIntent: Send + Sync {
    /// Called before a data write covering `[offset, offset+len)` is issued to
    /// any leg. Returns once every chunk it touches has its bit durable on disk.
    fn start_write(&self, offset: u64, len: u64) -> Result<(), BitmapError>;

    /// Called when that write has ended on every leg it was sent to.
    /// `all_legs_in_sync` is false when some leg of the array did not get it
    /// (degraded, or a leg failed): the bits must then stay set.
    fn end_write(&self, offset: u64, len: u64, all_legs_in_sync: bool);
}
