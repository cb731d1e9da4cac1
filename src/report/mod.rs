//! Text renderings in md's words: `mdadm --examine`, `--examine-bitmap`,
//! `/proc/mdstat`. Pure: structs in, strings out.
pub mod examine_bitmap;
