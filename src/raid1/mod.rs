//! The RAID1 engine: legs, write fan-out, read balance, ordering.

pub mod engine;
mod leg_workers;
pub mod range_lock;

pub use engine::{ArrayEvents, EngineError, EngineOptions, LegSpec, LegState, Raid1};
