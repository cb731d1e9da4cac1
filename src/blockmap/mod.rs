//! A host file resolved to the device sectors that hold it, verified, and a
//! raw O_DIRECT writer that can only address those sectors.
//!
//! Order of use at mount (the map must not change once verified):
//! [`protect`] (flock + immutable) → [`resolve`] (FIEMAP, FIBMAP fallback) →
//! [`RawWriter::open`] (verifies, then writes only inside the map).

mod error;
mod guard;
mod raw_writer;
mod resolve;
mod sys;
mod verify;

pub use error::BlockMapError;
pub use guard::{protect, FileGuard};
pub use raw_writer::{read_file_direct, RawWriter, DEFAULT_IO_THREADS, PAGE_SIZE};
pub use resolve::{resolve, resolve_with_fibmap, BackingFile, BlockMap, DeviceRun, Extent};
pub use verify::verify;
