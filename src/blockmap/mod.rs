//! A host file resolved to the device sectors that hold it, verified, and a
//! raw O_DIRECT writer that can only address those sectors.
//!
//! Order of use at mount (nothing changes the file before every read-only
//! check has passed, and the map must not change once verified):
//! [`resolve`], [`check_protectable`] and [`check_device_writable`] as
//! read-only checks →
//! [`protect`] (flock + immutable) → [`resolve`] again, the map used →
//! [`RawWriter::open`] (verifies, proves the map with markers written raw
//! and read back through the filesystem, then writes only inside the map).

mod error;
mod guard;
mod open;
mod raw_writer;
mod resolve;
mod stack;
mod sys;
mod verify;

pub use error::BlockMapError;
pub use guard::{check_protectable, protect, FileGuard};
pub use open::{check_len, open_bitmap_path, read_checked_direct, read_file_direct};
pub use raw_writer::{check_device_writable, HaltGate, RawWriter, DEFAULT_IO_THREADS, PAGE_SIZE};
pub use resolve::{
    backing_chain, recheck, resolve, resolve_with_fibmap, BackingFile, BlockMap, DeviceRun, Extent,
};
pub use stack::{device_stack, fs_type_of_dev, DeviceStack, StackDevice};
pub use verify::verify;
