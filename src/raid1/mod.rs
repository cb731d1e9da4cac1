//! The RAID1 engine: legs, write fan-out, read balance, ordering.

pub mod engine;
pub mod range_lock;
pub mod readahead;
pub mod sync;

pub use engine::{
    ArrayEvents, EngineError, EngineOptions, LegFailure, LegSpec, LegState, PlannedRead,
    PlannedWrite, Raid1, ReadPiece, RecordError, WritePiece, MAX_READ_PIECES, MAX_WRITE_TARGETS,
};
pub use sync::{Region, SpeedLimits, SyncAction, SyncEvents, SyncProgress, Syncer};
