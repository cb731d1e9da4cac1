pub mod bitmap;
pub mod loopdev;
