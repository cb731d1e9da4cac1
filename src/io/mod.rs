//! Thin I/O primitives shared by every layer: aligned buffers, refcounted
//! completions, the leg and the device seam under it, and parallel leg I/O: the fan-out, on
//! io_uring or worker threads.

pub mod aligned;
pub mod checked_open;
pub mod completion;
pub mod device;
pub mod fanout;
pub mod leg;
pub mod lock;
pub mod mounts;
pub mod nbd;
pub mod uring;
