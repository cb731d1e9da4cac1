//! Text renderings in md's words: `mdadm --examine`, `--examine-bitmap`,
//! `/proc/mdstat`. Pure: structs in, strings out.

pub mod examine;
pub mod examine_bitmap;
pub mod mdstat;

pub use examine::format_uuid as uuid_string;
