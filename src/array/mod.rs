//! Arrays: create one, assemble one from its legs, run it, stop it clean.
//! This layer owns the superblocks and md's rules about them.

pub mod assemble;
pub mod bitmap_attach;
mod control;
pub mod create;
pub mod error;
pub mod md_thread;
mod reconnect;
pub mod running;
pub mod served;
pub mod superblocks;
pub mod sync_control;

pub use assemble::{assemble, AssembleOptions, Assembly};
pub use bitmap_attach::{attach as attach_bitmap, AttachedBitmap, BitmapAttachOptions, BitmapIo};
pub use create::{create, CreateOptions, Created, NewBitmap};
pub use error::ArrayError;
pub use running::{RunOptions, RunningArray};
pub use served::{ControlAccess, ServedArray};
