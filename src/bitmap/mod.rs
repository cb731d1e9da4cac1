//! The write-intent bitmap: a service the RAID1 engine calls before and after
//! each data write (md's startwrite/endwrite).
//!
//! - [`service::WriteIntentBitmap`]: counters, group-committed page flushes,
//!   the clearing daemon (md-bitmap.c's design).
//! - [`store`]: where flushed pages go ([`PageStore`]): ordinary file I/O
//!   ([`store::FilePageStore`]) or memory for tests ([`store::MemPageStore`]);
//!   the raw block-map writer is adapted to [`PageStore`] by the integrator.
//! - [`create`]: creating and loading a bitmap FILE.

use std::sync::Arc;

use crate::io::completion::Completion;

pub mod create;
pub mod raw_store;
pub mod service;
pub mod store;

pub use create::{
    create_bitmap_file, load_bitmap_checked, load_bitmap_file, read_bitmap_for_examine,
    read_bitmap_header, stage_bitmap_file, StagedBitmapFile,
};
pub use raw_store::RawPageStore;
pub use service::{BitmapOptions, BitmapStats, DurabilityHook, WriteIntentBitmap};
pub use store::{FilePageStore, MemPageStore};

/// Errors of the write-intent service; they carry the file and what was
/// being done.
#[derive(Debug, thiserror::Error)]
pub enum BitmapError {
    /// An OS call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// What was found or asked cannot be used (a bad header, a file too
    /// small, a stopped service).
    #[error("{context}")]
    Refused { context: String },
}

impl BitmapError {
    /// An error with no OS cause.
    pub fn msg(context: impl Into<String>) -> Self {
        BitmapError::Refused {
            context: context.into(),
        }
    }

    /// An error caused by an OS call.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BitmapError::Io {
            context: context.into(),
            source,
        }
    }

    /// The same error with `outer` said first.
    pub fn within(self, outer: &str) -> Self {
        match self {
            BitmapError::Io { context, source } => BitmapError::Io {
                context: format!("{outer}: {context}"),
                source,
            },
            BitmapError::Refused { context } => BitmapError::Refused {
                context: format!("{outer}: {context}"),
            },
        }
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

/// Where the bitmap's 4096-byte file pages are written.
///
/// `submit_page(page_index, bytes)` writes file bytes
/// `[page_index * 4096, page_index * 4096 + bytes.len())`; `bytes` is the
/// page's whole content within the file (4096 bytes, or less for the last
/// page: the file is exactly 256 + ceil(chunks/8) bytes long). The slice
/// starts 4096-aligned in memory and is followed by zeros up to the next 4096
/// boundary, so a raw writer may write the whole padded block. The returned
/// completion finishes when the bytes are durable (O_DSYNC or flushed).
pub trait PageStore: Send + Sync {
    fn submit_page(&self, page_index: usize, bytes: &[u8]) -> Arc<Completion>;
    /// Makes every completed write durable; a no-op when writes are O_DSYNC.
    fn flush_device(&self) -> Result<(), BitmapError>;
    /// Human name of the target, for errors and logs (path, device).
    fn describe(&self) -> String;
}
