//! md's on-disk formats: pure conversions between bytes and structs.

pub mod bitmap;
pub mod signatures;
pub mod superblock;
