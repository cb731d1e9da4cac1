pub mod bitmap;
pub mod loopdev;
pub mod mdfuse;
