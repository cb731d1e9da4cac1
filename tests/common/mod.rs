pub mod kmd;
pub mod loopdev;
