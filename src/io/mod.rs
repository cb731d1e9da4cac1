//! Thin I/O primitives shared by every layer: aligned buffers, refcounted
//! completions, the leg device, and parallel leg I/O through io_uring.

pub mod aligned;
pub mod checked_open;
pub mod completion;
pub mod leg;
pub mod lock;
pub mod uring;
