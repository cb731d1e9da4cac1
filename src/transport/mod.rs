//! Transports: what serves a running array to its users. The array
//! implements [`ServedArray`](crate::array::ServedArray); a transport only
//! translates its requests into calls on [`core::MountCore`] (the mount's
//! files: `array.img`, `mdstat`, `md/`, over the array) and knows nothing
//! of legs, superblocks or bitmaps. Today's
//! transport is FUSE over /dev/fuse ([`fuse`], mounted and served by
//! [`serve`]); a second one (FUSE over io_uring) serves the same trait
//! without touching `array/` or `raid1/`.

pub mod core;
pub mod fuse;
pub mod serve;
