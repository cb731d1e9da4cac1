pub mod bitmap;
pub mod faulty;
pub mod kmd;
pub mod loopdev;
pub mod mdfuse;
