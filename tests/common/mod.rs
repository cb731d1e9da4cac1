pub mod loopdev;
