//! Arrays: create one, assemble one from its legs, run it, stop it clean.
//! This layer owns the superblocks and md's rules about them.

pub mod assemble;
pub mod bitmap_attach;
mod control;
pub mod create;
pub mod error;
pub mod events;
pub mod internal_bitmap;
mod join;
pub mod md_thread;
pub mod running;
pub mod served;
pub mod superblocks;
pub mod sync_control;

pub use assemble::{assemble, AssembleOptions, Assembly};
pub use bitmap_attach::{attach as attach_bitmap, AttachedBitmap, BitmapAttachOptions, BitmapIo};
pub use create::{create, CreateOptions, Created, NewBitmap};
pub use error::ArrayError;
pub use events::{Listener, MdEvent};
pub use internal_bitmap::{attach_internal, has_internal_bitmap, InternalBitmapOptions};
pub use running::{RunOptions, RunningArray};
pub use served::{ControlAccess, ServedArray};
