//! The mirror: every write goes to every in-sync leg before it is
//! acknowledged (legs in parallel), reads are balanced across in-sync legs,
//! flushes reach every leg's stable storage.
//!
//! A write, in order (see docs/design.md, "The I/O path"):
//! 1. widen to whole blocks (direct I/O) and take the range lock, so
//!    overlapping writes reach every leg in one order and a read-modify-write
//!    of an edge block cannot tear a neighbouring write;
//! 2. read the partial edge blocks from an in-sync leg, lay the data over;
//! 3. `WriteIntent::start_write`: the chunk's bit is durable before any leg
//!    is written;
//! 4. fan out: every leg's share goes out at once through the fan-out
//!    ([`FanOut`]: the thread's io_uring, or worker threads) and the thread
//!    waits for them all;
//! 5. `WriteIntent::end_write`, release the range.

mod failures;
mod in_ring;
mod read_fix;
mod reads;
mod writes;

pub use self::in_ring::{
    PlannedRead, PlannedWrite, ReadPiece, WritePiece, MAX_READ_PIECES, MAX_WRITE_TARGETS,
};

use self::failures::Record;
use self::read_fix::{RangeHeld, ReadErrors, DEFAULT_MAX_READ_ERRORS};
use super::range_lock::RangeLock;
use super::readahead::{Fetch, ReadAhead, READAHEAD_MIN};
use crate::bitmap::{BitmapError, WriteIntent};
use crate::io::aligned::with_scratch;
use crate::io::fanout::FanOut;
use crate::io::leg::FlushGuard;
use crate::io::leg::{IoMode, Leg, LegError};
use crate::io::uring::LegOp;
use arc_swap::ArcSwapOption;
use parking_lot::{Condvar, Mutex};
use smallvec::SmallVec;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

/// Block size of read-modify-write in direct mode: aligned for O_DIRECT on
/// 512-byte and 4 KiB devices alike.
pub const DIRECT_BLOCK: u64 = 4096;

/// Reads at least this large are split over the in-sync legs (each piece at
/// least half of it).
pub const SPLIT_READ_MIN: u64 = 256 * 1024;

/// Writes at least this large go to the legs in pieces of [`WRITE_PIECE`],
/// each as soon as it is copied into place (see `fan_out_write_staged`).
pub const STAGED_WRITE_MIN: usize = 256 * 1024;
/// A staged write's piece: a multiple of every block size.
pub const WRITE_PIECE: usize = 128 * 1024;

/// A slot's state, in md's words (`dev-*/state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LegState {
    /// Holds the array's data; read and written.
    InSync = 0,
    /// Failed; neither read nor written until removed and re-added.
    Faulty = 1,
    /// No leg in this slot (never given, or removed).
    Missing = 2,
    /// Being recovered: written (so it keeps up) but not read until in sync.
    Recovering = 3,
}

impl LegState {
    fn from_u8(v: u8) -> LegState {
        match v {
            0 => LegState::InSync,
            1 => LegState::Faulty,
            2 => LegState::Missing,
            _ => LegState::Recovering,
        }
    }

    /// The word md's sysfs `dev-*/state` uses (a device being recovered is a
    /// "spare" until it is in sync).
    pub fn md_word(self) -> &'static str {
        match self {
            LegState::InSync => "in_sync",
            LegState::Faulty => "faulty",
            LegState::Missing => "missing",
            LegState::Recovering => "spare",
        }
    }

    /// Receives writes.
    fn is_written(self) -> bool {
        matches!(self, LegState::InSync | LegState::Recovering)
    }
}

/// What the array layer is told by the engine; it keeps the superblocks.
pub trait ArrayEvents: Send + Sync {
    /// Called once before the first write after the array was clean: the
    /// superblocks must say "active" before data changes.
    fn mark_active(&self) -> Result<(), RecordError>;
    /// A leg was failed (an I/O error, or an operator's request): record it
    /// durably on the remaining legs. Writes and flushes that missed the leg
    /// are acknowledged only once this returned Ok (md's
    /// MD_SB_CHANGE_PENDING); an Err (no leg took the record) fails them.
    fn leg_failed(&self, slot: usize, reason: &str) -> Result<(), RecordError>;
    /// Leg `slot` (md's short name `name`) has just become faulty; `was` is
    /// its state before. Told once per failure, before it is recorded.
    fn became_faulty(&self, _slot: usize, _name: &str, _was: LegState) {}
    /// Legs whose superblock could not be written since the last call, with
    /// why: the engine fails them (md: a superblock write error fails its
    /// member, not the update).
    fn take_unwritten(&self) -> Vec<(usize, String)> {
        Vec::new()
    }
}

/// Why a state change (the array active, a leg's failure) could not be
/// recorded in the superblocks: the array layer's error, kept whole.
pub type RecordError = Box<dyn std::error::Error + Send + Sync>;

/// A leg's failed share of a request: its slot and the leg's own error
/// (which names the leg, the operation, the offset and the length).
#[derive(Debug)]
pub struct LegFailure {
    pub slot: usize,
    pub error: LegError,
}

impl std::fmt::Display for LegFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("request at offset {offset} (+{len}) is beyond the array's end ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("no in-sync leg is left to serve the array")]
    NoInSyncLeg,
    #[error("{op} at array offset {offset} failed on every leg: {}", join(.failures))]
    AllLegsFailed {
        op: &'static str,
        offset: u64,
        failures: Vec<LegFailure>,
    },
    #[error("write-intent bitmap: {0}")]
    Bitmap(#[from] BitmapError),
    #[error("cannot mark the array active: {0}")]
    MarkActive(#[source] RecordError),
    #[error("{0}")]
    Leg(#[from] LegError),
    #[error("cannot start I/O threads: {0}")]
    Threads(std::io::Error),
    #[error("leg {slot} cannot be failed: {why}")]
    CannotFail { slot: usize, why: &'static str },
    #[error("slot {slot}: {why}")]
    BadSlot { slot: usize, why: &'static str },
    #[error(
        "{op} at array offset {offset} missed leg {slot}, whose failure cannot be recorded on \
         any other leg ({why}): it is not acknowledged, as the legs could disagree after a crash"
    )]
    FailureNotRecorded {
        op: &'static str,
        offset: u64,
        slot: usize,
        why: String,
    },
}

fn join(failures: &[LegFailure]) -> String {
    failures
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl EngineError {
    /// The errno a FUSE reply carries for this error.
    pub fn errno(&self) -> i32 {
        match self {
            EngineError::OutOfRange { .. } => libc::ENOSPC,
            EngineError::AllLegsFailed { failures, .. } => failures
                .first()
                .map(|f| f.error.errno())
                .unwrap_or(libc::EIO),
            EngineError::Leg(e) => e.errno(),
            EngineError::CannotFail { .. } | EngineError::BadSlot { .. } => libc::EBUSY,
            EngineError::FailureNotRecorded { .. } => libc::EIO,
            _ => libc::EIO,
        }
    }
}

/// The I/O side of a leg in a slot: the open leg and where the data starts.
pub struct SlotIo {
    leg: Arc<Leg>,
    /// Where the array's data starts on this leg, in bytes.
    data_offset: u64,
}

impl SlotIo {
    pub fn leg(&self) -> &Arc<Leg> {
        &self.leg
    }
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
}

/// One slot (md's role) of the array, with or without a leg in it.
pub struct LegSlot {
    /// Swapped at attach/detach; requests load it without a lock.
    io: ArcSwapOption<SlotIo>,
    state: AtomicU8,
    /// End of the last read sent here: a read starting there is sequential.
    next_read: AtomicU64,
    pending_reads: AtomicU32,
    /// md's corrected_errors: sectors of read errors corrected (or met
    /// while read-only) without failing the leg.
    pub(super) errors: AtomicU64,
    /// md's read_errors, checked against max_read_errors.
    pub(super) read_errors: ReadErrors,
    reads: AtomicU64,
    /// md's WriteMostly: read only when no other in-sync leg can serve
    /// (see `reads.rs`); written as any leg.
    write_mostly: AtomicBool,
}

impl LegSlot {
    pub fn state(&self) -> LegState {
        LegState::from_u8(self.state.load(Ordering::Acquire))
    }
    /// The leg in this slot, if any.
    pub fn io(&self) -> Option<Arc<SlotIo>> {
        self.io.load_full()
    }
    /// Sectors of read errors corrected on this leg (md's `errors`).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Reads this leg has served.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
    /// md's WriteMostly flag: the leg is read only as a last resort.
    pub fn is_write_mostly(&self) -> bool {
        self.write_mostly.load(Ordering::Acquire)
    }
}

/// A leg handed to the engine.
pub struct LegSpec {
    pub leg: Arc<Leg>,
    pub data_offset: u64,
    pub state: LegState,
    /// md's WriteMostly: read only when no other in-sync leg remains.
    pub write_mostly: bool,
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// I/O threads per leg where io_uring is not available (they carry the
    /// legs' shares of requests; see [`FanOut`]).
    pub workers_per_leg: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            workers_per_leg: 16,
        }
    }
}

#[derive(Debug, Default)]
pub struct EngineStats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    /// Reads served from a read-ahead buffer.
    pub readahead_hits: AtomicU64,
}

impl EngineStats {
    /// Reads and writes served so far (a sync throttles while this moves).
    pub fn total_requests(&self) -> u64 {
        self.reads.load(Ordering::Relaxed) + self.writes.load(Ordering::Relaxed)
    }
}

/// The bitmap the engine calls (a sized holder, for the atomic swap).
struct Intent(Arc<dyn WriteIntent>);

pub struct Raid1 {
    slots: Vec<LegSlot>,
    array_size: u64,
    /// Request alignment the legs need (1 when every leg is buffered).
    block: u64,
    ranges: RangeLock,
    /// The write-intent bitmap, if any: swapped while every write is held
    /// back ([`Raid1::with_writes_held`]), so a write's start and end reach
    /// the same one (md's mddev_suspend around a bitmap change).
    intent: ArcSwapOption<Intent>,
    events: Arc<dyn ArrayEvents>,
    active: AtomicBool,
    activating: Mutex<()>,
    rotate: AtomicUsize,
    /// Runs the legs' shares of a request at once (io_uring or threads).
    pub(super) fanout: FanOut,
    /// After an unclean stop the legs may differ where writes were in flight:
    /// read only the first in-sync leg until they are resynced (md does the
    /// same for the region not yet resynced).
    first_only: AtomicBool,
    /// md does not rewrite a read-only array's legs to correct read errors.
    read_only: AtomicBool,
    pub(super) max_read_errors: AtomicU32,
    stats: EngineStats,
    /// Read-ahead of sequential O_DIRECT streams, once started.
    readahead: OnceLock<ReadAhead>,
    readahead_threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// By slot: whether the slot's failure is on record (see [`Record`]).
    records: Mutex<Vec<Record>>,
    recorded: Condvar,
}

impl Raid1 {
    /// `legs[slot]` is the leg in each slot of the array (`None`: missing).
    pub fn new(
        legs: Vec<Option<LegSpec>>,
        array_size: u64,
        intent: Option<Arc<dyn WriteIntent>>,
        events: Arc<dyn ArrayEvents>,
        opts: &EngineOptions,
    ) -> Result<Raid1, EngineError> {
        let direct = legs
            .iter()
            .flatten()
            .any(|l| l.leg.mode() == IoMode::Direct);
        let mut engine = Raid1 {
            slots: Vec::with_capacity(legs.len()),
            array_size,
            block: if direct { DIRECT_BLOCK } else { 1 },
            ranges: RangeLock::new(),
            intent: ArcSwapOption::new(intent.map(|i| Arc::new(Intent(i)))),
            events,
            active: AtomicBool::new(false),
            activating: Mutex::new(()),
            rotate: AtomicUsize::new(0),
            first_only: AtomicBool::new(false),
            read_only: AtomicBool::new(false),
            max_read_errors: AtomicU32::new(DEFAULT_MAX_READ_ERRORS),
            fanout: FanOut::new(opts.workers_per_leg.saturating_mul(legs.len()))
                .map_err(EngineError::Threads)?,
            stats: EngineStats::default(),
            readahead: OnceLock::new(),
            readahead_threads: Mutex::new(Vec::new()),
            records: Mutex::new(vec![Record::Done; legs.len()]),
            recorded: Condvar::new(),
        };
        for spec in legs {
            let (io, state, write_mostly) = match spec {
                Some(spec) => (
                    Some(Self::slot_io(spec.leg, spec.data_offset)),
                    spec.state,
                    spec.write_mostly,
                ),
                None => (None, LegState::Missing, false),
            };
            engine.slots.push(LegSlot {
                io: ArcSwapOption::new(io),
                state: AtomicU8::new(state as u8),
                next_read: AtomicU64::new(u64::MAX),
                pending_reads: AtomicU32::new(0),
                errors: AtomicU64::new(0),
                read_errors: ReadErrors::default(),
                reads: AtomicU64::new(0),
                write_mostly: AtomicBool::new(write_mostly),
            });
        }
        Ok(engine)
    }

    fn slot_io(leg: Arc<Leg>, data_offset: u64) -> Arc<SlotIo> {
        Arc::new(SlotIo { leg, data_offset })
    }

    /// Puts `leg` into the empty slot `slot`, in `state` (Recovering for a
    /// leg that must be brought up to date first).
    pub fn attach(&self, slot: usize, spec: LegSpec) -> Result<(), EngineError> {
        let _one = self.activating.lock();
        let s = self.slots.get(slot).ok_or(EngineError::BadSlot {
            slot,
            why: "no such slot",
        })?;
        if s.state() != LegState::Missing {
            return Err(EngineError::BadSlot {
                slot,
                why: "the slot holds a leg; remove it first",
            });
        }
        if (spec.leg.mode() == IoMode::Direct) != (self.block == DIRECT_BLOCK) {
            return Err(EngineError::BadSlot {
                slot,
                why: "the leg's I/O mode (direct or buffered) differs from the array's",
            });
        }
        s.io.store(Some(Self::slot_io(spec.leg, spec.data_offset)));
        s.write_mostly.store(spec.write_mostly, Ordering::Release);
        self.records.lock()[slot] = Record::Done;
        s.errors.store(0, Ordering::Relaxed);
        s.read_errors.reset();
        s.state.store(spec.state as u8, Ordering::Release);
        Ok(())
    }

    /// Takes the leg out of a faulty (or recovering) slot; the slot is then
    /// missing. Returns the leg so the caller can close it.
    pub fn detach(&self, slot: usize) -> Result<Arc<Leg>, EngineError> {
        let _one = self.activating.lock();
        let s = self.slots.get(slot).ok_or(EngineError::BadSlot {
            slot,
            why: "no such slot",
        })?;
        match s.state() {
            LegState::Faulty | LegState::Recovering => {}
            LegState::InSync => {
                return Err(EngineError::BadSlot {
                    slot,
                    why: "an in-sync leg cannot be removed; fail it first",
                })
            }
            LegState::Missing => {
                return Err(EngineError::BadSlot {
                    slot,
                    why: "the slot is already empty",
                })
            }
        }
        s.state.store(LegState::Missing as u8, Ordering::Release);
        let io = s.io.swap(None).ok_or(EngineError::BadSlot {
            slot,
            why: "the slot has no leg",
        })?;
        Ok(io.leg.clone())
    }

    /// Returns once every write that took its range before this call has
    /// ended (a barrier over the whole array; later writes wait only while
    /// it is held, which is not at all once this returns).
    pub fn wait_for_writes_in_flight(&self) {
        if self.array_size > 0 {
            drop(self.ranges.lock(0, self.array_size));
        }
    }

    /// A recovered leg becomes in sync: it is read from now on.
    pub fn set_in_sync(&self, slot: usize) -> Result<(), EngineError> {
        let _one = self.activating.lock();
        let s = self.slots.get(slot).ok_or(EngineError::BadSlot {
            slot,
            why: "no such slot",
        })?;
        if s.state() != LegState::Recovering {
            return Err(EngineError::BadSlot {
                slot,
                why: "only a recovering leg becomes in sync",
            });
        }
        s.state.store(LegState::InSync as u8, Ordering::Release);
        Ok(())
    }

    /// Sets or clears md's WriteMostly on the leg in `slot` (md's
    /// `writemostly` / `-writemostly` to `dev-*/state`); returns what it
    /// was. Reads already on their way finish where they are.
    pub fn set_write_mostly(&self, slot: usize, on: bool) -> Result<bool, EngineError> {
        let s = self.slots.get(slot).ok_or(EngineError::BadSlot {
            slot,
            why: "no such slot",
        })?;
        if s.io().is_none() {
            return Err(EngineError::BadSlot {
                slot,
                why: "the slot has no leg",
            });
        }
        Ok(s.write_mostly.swap(on, Ordering::AcqRel))
    }

    /// The in-sync leg a resync or recovery copies from, and the one reads
    /// go to while reads are held to one leg: the first in-sync leg that is
    /// not write-mostly, else the first in-sync one (md's raid1
    /// `sync_request` read_disk, and read_balance in md's resync window).
    pub fn primary_leg(&self) -> Option<usize> {
        let in_sync = |i: &usize| self.slots[*i].state() == LegState::InSync;
        (0..self.slots.len())
            .filter(in_sync)
            .find(|&i| !self.slots[i].is_write_mostly())
            .or_else(|| (0..self.slots.len()).find(in_sync))
    }

    pub fn size(&self) -> u64 {
        self.array_size
    }

    pub fn slots(&self) -> &[LegSlot] {
        &self.slots
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn in_sync_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state() == LegState::InSync)
            .count()
    }

    /// Some slot is not in sync (missing, faulty or recovering).
    pub fn is_degraded(&self) -> bool {
        self.in_sync_count() < self.slots.len()
    }

    /// Some slot holds a leg being recovered (md counts it as degraded for
    /// the bitmap's events_cleared).
    pub fn has_recovering_leg(&self) -> bool {
        self.slots.iter().any(|s| s.state() == LegState::Recovering)
    }

    /// Some slot has no working leg at all (missing or faulty): writes miss
    /// it, so the write-intent bitmap must keep their bits.
    pub fn has_absent_leg(&self) -> bool {
        self.slots.iter().any(|s| !s.state().is_written())
    }

    pub(super) fn range_lock(&self) -> &RangeLock {
        &self.ranges
    }

    /// The write-intent bitmap now; a write loads it once, under its
    /// range lock, and keeps it to its end.
    pub(super) fn intent(&self) -> Option<Arc<dyn WriteIntent>> {
        self.intent.load().as_ref().map(|i| i.0.clone())
    }

    /// Runs `f` with every write held back: once the writes in flight have
    /// ended, no write (nor a sync's region) starts until `f` returns (a
    /// range lock over the whole array, md's mddev_suspend).
    pub fn with_writes_held<R>(&self, f: impl FnOnce() -> R) -> R {
        let _all = (self.array_size > 0).then(|| self.ranges.lock(0, self.array_size));
        f()
    }

    /// Changes the write-intent bitmap (None: none). Only inside
    /// [`Raid1::with_writes_held`]: a write in flight must end on the
    /// bitmap it started on.
    pub fn set_intent(&self, intent: Option<Arc<dyn WriteIntent>>) {
        self.intent.store(intent.map(|i| Arc::new(Intent(i))));
    }

    pub(super) fn slot_io_of(&self, slot: usize) -> Result<Arc<SlotIo>, EngineError> {
        self.slots[slot].io().ok_or(EngineError::BadSlot {
            slot,
            why: "the slot has no leg",
        })
    }

    /// The leg's path, for log lines.
    pub(super) fn leg_label(&self, slot: usize) -> String {
        self.slots[slot]
            .io()
            .map(|io| io.leg.path().display().to_string())
            .unwrap_or_else(|| format!("in slot {slot}"))
    }

    /// A read-only array corrects no read error (it is not written).
    pub fn set_read_only(&self, on: bool) {
        self.read_only.store(on, Ordering::Release);
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    /// Reads go to the first in-sync leg only (until a resync), or are balanced again.
    pub fn read_from_first_only(&self, on: bool) {
        self.first_only.store(on, Ordering::Release);
    }

    /// True once the array has been written since it was clean.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    fn aligned(&self, offset: u64, len: u64) -> (u64, u64) {
        let start = offset - offset % self.block;
        let end = (offset + len).div_ceil(self.block) * self.block;
        (start, end)
    }

    /// Cuts a request at the array's end. A read at or past the end reads
    /// nothing (end of file); a write there fails with ENOSPC, as on a disk.
    fn clamp(&self, offset: u64, len: u64, writing: bool) -> Result<u64, EngineError> {
        if len == 0 {
            return Ok(0);
        }
        if offset >= self.array_size {
            return if writing {
                Err(EngineError::OutOfRange {
                    offset,
                    len,
                    size: self.array_size,
                })
            } else {
                Ok(0)
            };
        }
        Ok(len.min(self.array_size - offset))
    }
}
