//! mdfuse: a userspace RAID1 served through FUSE.
//!
//! Layers, bottom up (see docs/design.md):
//! - [`format`]: md's on-disk formats, bytes to structs and back; no I/O.
//! - [`report`]: text renderings (examine, examine-bitmap, mdstat); no I/O.
//! - [`io`]: aligned buffers, completions, leg devices.
//! - [`blockmap`]: a file resolved to device sectors (FIEMAP/FIBMAP), verified,
//!   and a raw writer confined to it.
//! - [`bitmap`]: the write-intent bitmap service the RAID1 engine calls.
//! - [`raid1`]: the mirror engine: write fan-out, read balance, ordering.
//! - [`array`]: create, assemble and stop an array (superblocks, events).
//! - [`transport`]: what serves the array (the FUSE adapter, its mount and
//!   session); it only translates requests into calls on [`array::ServedArray`].

pub mod array;
pub mod bitmap;
pub mod blockmap;
pub mod format;
pub mod io;
pub mod raid1;
pub mod report;
pub mod transport;
