//! The harness the test binaries share (each has `mod common;` and uses a
//! part of it):
//! - `mdfuse`: running the mdfuse binary, legs, created and mounted arrays
//!   (RAII guards), md/ control files, checks on legs;
//! - `bitmap`: the write-intent bitmap file as tests see it;
//! - `faultyfs`: a FUSE filesystem that injects I/O errors and delays;
//! - `fuse_uring`: the kernel's FUSE-over-io_uring switch, set for a test
//!   and put back (RAII);
//! - `loopdev`: loop devices, filesystems and mounts (RAII guards);
//! - `io`: aligned buffers, O_DIRECT and plain positioned reads and writes;
//! - `rng`: deterministic pseudo-random test data;
//! - `workload`: a verified multi-threaded block workload;
//! - `kmd`: the kernel-md rig (Linux md under qemu) and md's fixture sets;
//! - `nbd`: NBD servers (qemu-nbd, nbdkit) as RAII guards.

pub mod bitmap;
pub mod faultyfs;
pub mod fuse_uring;
pub mod io;
pub mod kmd;
pub mod loopdev;
pub mod mdfuse;
pub mod nbd;
pub mod rng;
pub mod workload;
