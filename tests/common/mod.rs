pub mod bitmap;
pub mod kmd;
pub mod loopdev;
pub mod mdfuse;
