//! Thin I/O primitives shared by every layer: aligned buffers, refcounted
//! completions, the leg device, and parallel leg I/O: the fan-out, on
//! io_uring or worker threads.

pub mod aligned;
pub mod checked_open;
pub mod completion;
pub mod fanout;
pub mod leg;
pub mod lock;
pub mod uring;
