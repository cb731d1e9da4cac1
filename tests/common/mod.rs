pub mod bitmap;
pub mod faultyfs;
pub mod io;
pub mod kmd;
pub mod loopdev;
pub mod mdfuse;
pub mod rng;
pub mod workload;
