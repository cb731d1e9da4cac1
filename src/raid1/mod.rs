//! The RAID1 engine: legs, write fan-out, read balance, ordering.

pub mod engine;
pub mod range_lock;
pub mod readahead;
pub mod sync;

pub use engine::{
    ArrayEvents, EngineError, EngineOptions, LegFailure, LegSpec, LegState, Raid1, RecordError,
};
pub use sync::{Region, SpeedLimits, SyncAction, SyncEvents, SyncProgress, Syncer};
