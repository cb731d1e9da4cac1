pub mod bitmap;
pub mod faulty;
pub mod faultyfs;
pub mod kmd;
pub mod loopdev;
pub mod mdfuse;
pub mod workload;
