//! Arrays: create one, assemble one from its legs, run it, stop it clean.
//! This layer owns the superblocks and md's rules about them.

pub mod assemble;
pub mod bitmap_attach;
mod control;
pub mod create;
pub mod error;
pub mod events;
pub mod grow;
mod internal_attach;
pub mod internal_bitmap;
mod join;
pub mod md_thread;
mod reconnect;
pub mod running;
pub mod served;
pub mod superblocks;
pub mod sync_control;
pub mod write_mostly;

pub use assemble::{assemble, AssembleOptions, Assembly};
pub use bitmap_attach::{attach as attach_bitmap, AttachedBitmap, BitmapAttachOptions, BitmapIo};
pub use create::{create, CreateOptions, Created, NewBitmap};
pub use error::ArrayError;
pub use events::{Listener, MdEvent};
pub use grow::BitmapChange;
pub use internal_attach::{attach_internal, has_internal_bitmap, InternalBitmapOptions};
pub use running::{GrowOptions, RunOptions, RunningArray};
pub use served::{
    ControlAccess, PlannedRead, PlannedWrite, ReadPiece, ServedArray, WritePiece, MAX_READ_PIECES,
    MAX_WRITE_TARGETS,
};
pub use write_mostly::WriteMostlyChoice;

/// What the array layer's unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::format::superblock::{NewMember, Superblock};

    /// A member of a 2-leg array (set UUID 7s, name "t", 32 MiB legs, 16
    /// MiB array) with device number `dev_number`, at events 10.
    pub fn member(dev_number: u32) -> Superblock {
        let mut sb = Superblock::new_raid1_member(&NewMember {
            set_uuid: [7; 16],
            name: "t",
            raid_disks: 2,
            dev_number,
            device_uuid: [dev_number as u8; 16],
            device_sectors: 1 << 16,
            array_sectors: 1 << 15,
            data_offset: None,
            ctime: Default::default(),
        })
        .expect("superblock");
        sb.events = 10;
        sb
    }
}
