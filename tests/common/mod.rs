pub mod loopdev;
pub mod mdfuse;
