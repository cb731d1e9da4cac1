//! Thin I/O primitives shared by every layer: aligned buffers, refcounted
//! completions, and the leg device.

pub mod aligned;
pub mod completion;
pub mod leg;
