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

use super::range_lock::RangeLock;
use super::read_fix::{RangeHeld, ReadErrors, DEFAULT_MAX_READ_ERRORS};
use super::readahead::{Fetch, ReadAhead, READAHEAD_MIN};
use crate::bitmap::{BitmapError, WriteIntent};
use crate::io::aligned::with_scratch;
use crate::io::completion::OpFailure;
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
    fn mark_active(&self) -> Result<(), String>;
    /// A leg was failed (an I/O error, or an operator's request): record it
    /// durably on the remaining legs. Writes and flushes that missed the leg
    /// are acknowledged only once this returned Ok (md's
    /// MD_SB_CHANGE_PENDING); an Err (no leg took the record) fails them.
    fn leg_failed(&self, slot: usize, reason: &str) -> Result<(), RecordError>;
    /// Legs whose superblock could not be written since the last call, with
    /// why: the engine fails them (md: a superblock write error fails its
    /// member, not the update).
    fn take_unwritten(&self) -> Vec<(usize, String)> {
        Vec::new()
    }
}

/// Why a leg's failure could not be recorded.
pub type RecordError = Box<dyn std::error::Error + Send + Sync>;

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
        failures: Vec<OpFailure>,
    },
    #[error("write-intent bitmap: {0}")]
    Bitmap(#[from] BitmapError),
    #[error("cannot mark the array active: {0}")]
    MarkActive(String),
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

fn join(failures: &[OpFailure]) -> String {
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
            EngineError::AllLegsFailed { failures, .. } => {
                failures.first().map(|f| f.errno).unwrap_or(libc::EIO)
            }
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
}

/// A leg handed to the engine.
pub struct LegSpec {
    pub leg: Arc<Leg>,
    pub data_offset: u64,
    pub state: LegState,
}

/// What a fan-out does on each leg.
#[derive(Clone, Copy)]
enum Share<'a> {
    /// Write `buf` at array offset `at`; `durable`: on stable storage
    /// before the share completes (RWF_DSYNC).
    Write {
        buf: &'a [u8],
        at: u64,
        durable: bool,
    },
    /// fdatasync every leg. `reported`: the result goes to the user (fsync
    /// on the image), who is then also told of a background flush that
    /// failed since (see [`FlushGuard`]).
    Flush { reported: bool },
}

/// Whether a leg's failure is on record in the other legs' superblocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// Recorded (or nothing to record).
    Done,
    /// The superblocks are being written.
    Pending,
    /// No leg took the record: what misses the leg fails until one does.
    Unwritten,
}

/// The flush guards of a flush's targets, by target index (None for other
/// shares), taken in slot order so that two flushes cannot deadlock.
fn flush_guards<'t>(
    targets: &'t [(usize, Arc<SlotIo>, bool)],
    share: Share<'_>,
) -> SmallVec<[Option<FlushGuard<'t>>; 4]> {
    let mut guards: SmallVec<[Option<FlushGuard<'t>>; 4]> = targets.iter().map(|_| None).collect();
    if let Share::Flush { .. } = share {
        let mut order: SmallVec<[usize; 4]> = (0..targets.len()).collect();
        order.sort_by_key(|&k| targets[k].0);
        for k in order {
            guards[k] = Some(targets[k].1.leg.flush_guard());
        }
    }
    guards
}

/// A leg's failed share, as the fan-out reports it.
fn leg_failure(slot: usize, e: LegError) -> OpFailure {
    OpFailure {
        target: slot,
        errno: e.errno(),
        what: e.to_string(),
    }
}

impl<'a> Share<'a> {
    /// This share on one leg, done from the calling thread.
    fn op(self, io: &'a SlotIo) -> LegOp<'a> {
        match self {
            Share::Write { buf, at, durable } => LegOp::Write {
                leg: &io.leg,
                buf,
                offset: io.data_offset + at,
                durable,
            },
            Share::Flush { .. } => LegOp::SyncData { leg: &io.leg },
        }
    }
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

pub struct Raid1 {
    slots: Vec<LegSlot>,
    array_size: u64,
    /// Request alignment the legs need (1 when every leg is buffered).
    block: u64,
    ranges: RangeLock,
    intent: Option<Arc<dyn WriteIntent>>,
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
            intent,
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
            let (io, state) = match spec {
                Some(spec) => (Some(Self::slot_io(spec.leg, spec.data_offset)), spec.state),
                None => (None, LegState::Missing),
            };
            engine.slots.push(LegSlot {
                io: ArcSwapOption::new(io),
                state: AtomicU8::new(state as u8),
                next_read: AtomicU64::new(u64::MAX),
                pending_reads: AtomicU32::new(0),
                errors: AtomicU64::new(0),
                read_errors: ReadErrors::default(),
                reads: AtomicU64::new(0),
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

    pub(super) fn intent(&self) -> Option<&Arc<dyn WriteIntent>> {
        self.intent.as_ref()
    }

    /// Reads array bytes from one leg for a sync, under the sync's range
    /// lock; a read error is corrected from another in-sync leg (md's
    /// fix_read_error), so `buf` then holds the good data.
    pub(super) fn read_leg(
        &self,
        slot: usize,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), EngineError> {
        let io = self.slot_io_of(slot)?;
        match io.leg.read_at(buf, io.data_offset + offset) {
            Ok(()) => Ok(()),
            Err(e) => self.fix_read_error(slot, offset, buf, e, RangeHeld::Yes),
        }
    }

    /// Writes array bytes to one leg (for a sync); an error fails the leg
    /// unless it is the last in-sync one.
    pub(super) fn write_leg(
        &self,
        slot: usize,
        offset: u64,
        data: &[u8],
    ) -> Result<(), EngineError> {
        let io = self.slot_io_of(slot)?;
        let r = io.leg.write_at(data, io.data_offset + offset);
        self.forget_read_ahead(offset, offset + data.len() as u64);
        r.map_err(|e| {
            self.fail_after_error(slot, &e.to_string());
            EngineError::Leg(e)
        })
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

    /// Picks the leg for a read at `offset`: the leg whose last read ended
    /// there (a sequential stream stays on one leg), else the least busy,
    /// ties broken in rotation so parallel readers spread.
    fn choose_read_leg(&self, offset: u64, tried: u64) -> Option<usize> {
        let n = self.slots.len();
        if self.first_only.load(Ordering::Relaxed) {
            return (0..n)
                .find(|&i| tried & (1 << i) == 0 && self.slots[i].state() == LegState::InSync);
        }
        let candidates = || {
            (0..n).filter(move |&i| {
                tried & (1 << i) == 0 && self.slots[i].state() == LegState::InSync
            })
        };
        // u64::MAX: no stream to continue (it is also a fresh leg's next_read).
        if let Some(i) = candidates().find(|&i| {
            offset != u64::MAX && self.slots[i].next_read.load(Ordering::Relaxed) == offset
        }) {
            return Some(i);
        }
        let start = self.rotate.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| candidates().any(|c| c == i))
            .min_by_key(|&i| self.slots[i].pending_reads.load(Ordering::Relaxed))
    }

    /// Reads `[offset, offset+len)` of the array and hands the bytes to `f`
    /// (they live in this thread's scratch buffer). Returns `f`'s result.
    /// A leg that fails a read is failed (unless it is the last in-sync one)
    /// and the read is retried on another.
    pub fn read<R>(
        &self,
        offset: u64,
        len: u64,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, EngineError> {
        self.read_for(offset, len, false, f)
    }

    /// [`Raid1::read`] for a reader that bypasses the page cache (O_DIRECT):
    /// a sequential stream of large reads is read ahead (see
    /// [`super::readahead`]), once [`Raid1::start_readahead`] ran.
    pub fn read_direct<R>(
        &self,
        offset: u64,
        len: u64,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, EngineError> {
        self.read_for(offset, len, true, f)
    }

    fn read_for<R>(
        &self,
        offset: u64,
        len: u64,
        direct_reader: bool,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, EngineError> {
        let len = self.clamp(offset, len, false)?;
        if len == 0 {
            return Ok(f(&[]));
        }
        let (start, end) = self.aligned(offset, len);
        let span = (end - start) as usize;
        let head = (offset - start) as usize;
        let ra = self
            .readahead
            .get()
            .filter(|_| direct_reader && self.block > 1 && span as u64 >= READAHEAD_MIN);
        if let Some(ra) = ra {
            let ahead = ra.take(start, span);
            // The next range is on its way while this reply travels.
            ra.follow(start, span, self.aligned(0, self.array_size).1);
            if let Some(buf) = ahead {
                self.stats.readahead_hits.fetch_add(1, Ordering::Relaxed);
                self.count_read(len);
                let r = f(&buf.as_slice()[head..head + len as usize]);
                ra.recycle(buf);
                return Ok(r);
            }
        }
        with_scratch(span, |buf| {
            self.read_span(start, &mut buf.as_mut_slice()[..span], offset, offset + len)?;
            self.count_read(len);
            Ok(f(&buf.as_slice()[head..head + len as usize]))
        })
    }

    fn count_read(&self, len: u64) {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.read_bytes.fetch_add(len, Ordering::Relaxed);
    }

    /// Reads the block-aligned range at `start` into `buf`, from one leg or
    /// split over the in-sync legs, correcting read errors from another leg.
    /// `from` is the reader's own offset and `stream_end` where its stream
    /// would continue: a leg that served a stream serves its next read.
    fn read_span(
        &self,
        start: u64,
        buf: &mut [u8],
        from: u64,
        stream_end: u64,
    ) -> Result<(), EngineError> {
        if let Some(split) = self.read_split(start, buf) {
            return split;
        }
        let mut tried = 0u64;
        loop {
            let Some(i) = self.choose_read_leg(from, tried) else {
                return Err(EngineError::NoInSyncLeg);
            };
            tried |= 1 << i;
            let slot = &self.slots[i];
            let Some(io) = slot.io() else { continue };
            slot.next_read.store(stream_end, Ordering::Relaxed);
            slot.pending_reads.fetch_add(1, Ordering::Relaxed);
            let r = io.leg.read_at(buf, io.data_offset + start);
            slot.pending_reads.fetch_sub(1, Ordering::Relaxed);
            return match r {
                Ok(()) => {
                    slot.reads.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                // md's fix_read_error: the good copy comes from another leg
                // and is written back over the bad range.
                Err(e) => self.fix_read_error(i, start, buf, e, RangeHeld::No),
            };
        }
    }

    /// Starts the read-ahead thread for sequential O_DIRECT streams (see
    /// [`super::readahead`]). It holds the engine weakly and ends with it.
    pub fn start_readahead(self: &Arc<Self>) -> std::io::Result<()> {
        if self.block == 1 {
            // Buffered legs: the host's page cache reads ahead.
            return Ok(());
        }
        if std::env::var_os("MDFUSE_READAHEAD").is_some_and(|v| v == "off") {
            log::info!("read-ahead of O_DIRECT streams is off (MDFUSE_READAHEAD=off)");
            return Ok(());
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Fetch>();
        if self.readahead.set(ReadAhead::new(tx)).is_err() {
            return Ok(());
        }
        for t in 0..super::readahead::DEPTH {
            let engine: Weak<Raid1> = Arc::downgrade(self);
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("readahead{t}"))
                .spawn(move || {
                    for mut fetch in rx {
                        let Some(engine) = engine.upgrade() else {
                            break;
                        };
                        let buf = &mut fetch.buf.as_mut_slice()[..fetch.len];
                        let end = fetch.start + fetch.len as u64;
                        // A panic must not leave the range in flight for
                        // ever: its reader would wait for it.
                        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            engine.read_span(fetch.start, buf, fetch.start, end)
                        }));
                        let ok = match read {
                            Ok(Ok(())) => true,
                            Ok(Err(e)) => {
                                log::debug!("read-ahead at byte {}: {e}", fetch.start);
                                false
                            }
                            Err(_) => {
                                log::error!("read-ahead at byte {} panicked", fetch.start);
                                false
                            }
                        };
                        if let Some(ra) = engine.readahead.get() {
                            ra.landed(fetch.id, fetch.buf, ok);
                        }
                    }
                })?;
            self.readahead_threads.lock().push(handle);
        }
        Ok(())
    }

    /// Ends read-ahead and waits for the reads in flight (the array is
    /// stopping: no leg is read after its stop is recorded).
    pub fn stop_readahead(&self) {
        if let Some(ra) = self.readahead.get() {
            ra.close();
        }
        let threads = std::mem::take(&mut *self.readahead_threads.lock());
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }

    /// Drops what was read ahead of `[start, end)`: every write calls it
    /// once its leg writes completed, before it is acknowledged.
    pub(super) fn forget_read_ahead(&self, start: u64, end: u64) {
        if let Some(ra) = self.readahead.get() {
            ra.invalidate(start, end);
        }
    }

    /// A large read (at least [`SPLIT_READ_MIN`]) from direct-mode legs is
    /// split into one contiguous piece per in-sync leg, all read at once
    /// through io_uring: a mirror has every leg's bandwidth to offer, and a
    /// single large request would use one. A piece that fails is corrected
    /// as any read error. None: not split (too small, one leg, buffered
    /// legs whose readahead wants whole streams, reads held to the first
    /// leg after an unclean stop, or no io_uring).
    fn read_split(&self, start: u64, buf: &mut [u8]) -> Option<Result<(), EngineError>> {
        if (buf.len() as u64) < SPLIT_READ_MIN
            || self.block == 1
            || self.first_only.load(Ordering::Relaxed)
        {
            return None;
        }
        let legs: SmallVec<[(usize, Arc<SlotIo>); 4]> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state() == LegState::InSync)
            .filter_map(|(i, s)| s.io().map(|io| (i, io)))
            .collect();
        if legs.len() < 2 {
            return None;
        }
        let block = self.block as usize;
        let pieces = legs.len().min(buf.len() / (SPLIT_READ_MIN as usize / 2));
        let piece = buf.len().div_ceil(pieces).div_ceil(block) * block;
        let mut failed: SmallVec<[(usize, LegError); 2]> = SmallVec::new();
        {
            let ops: SmallVec<[LegOp<'_>; 4]> = buf
                .chunks_mut(piece)
                .zip(&legs)
                .enumerate()
                .map(|(k, (p, (_, io)))| {
                    LegOp::read(&io.leg, p, io.data_offset + start + (k * piece) as u64)
                })
                .collect();
            for (i, _) in legs.iter().take(ops.len()) {
                self.slots[*i].pending_reads.fetch_add(1, Ordering::Relaxed);
            }
            self.fanout.run_all(&ops, |k, r| {
                if let Err(e) = r {
                    failed.push((k, e));
                }
            });
            for (k, (i, _)) in legs.iter().take(ops.len()).enumerate() {
                let slot = &self.slots[*i];
                slot.pending_reads.fetch_sub(1, Ordering::Relaxed);
                slot.reads.fetch_add(1, Ordering::Relaxed);
                // Where this leg's piece ended: a stream continuing there
                // finds it.
                slot.next_read
                    .store(start + ((k + 1) * piece) as u64, Ordering::Relaxed);
            }
        }
        for (k, err) in failed {
            let from = k * piece;
            let to = (from + piece).min(buf.len());
            let r = self.fix_read_error(
                legs[k].0,
                start + from as u64,
                &mut buf[from..to],
                err,
                RangeHeld::No,
            );
            if let Err(e) = r {
                return Some(Err(e));
            }
        }
        Some(Ok(()))
    }

    /// Writes `data` at `offset`; returns the bytes written (short only at
    /// the array's end). Returns once every in-sync leg has the data, on
    /// its stable storage when `durable` (an O_DSYNC write).
    pub fn write(&self, offset: u64, data: &[u8], durable: bool) -> Result<usize, EngineError> {
        let len = self.clamp(offset, data.len() as u64, true)?;
        if len == 0 {
            return Ok(0);
        }
        let data = &data[..len as usize];
        let (start, end) = self.aligned(offset, len);
        let span = (end - start) as usize;
        let head = (offset - start) as usize;
        let _range = self.ranges.lock(start, end);
        // Under the range lock, so safe mode's barrier (all ranges) either
        // sees this write end or comes first and this write marks active.
        self.ensure_active()?;
        with_scratch(span, |buf| {
            let buf = &mut buf.as_mut_slice()[..span];
            if self.block > 1 {
                let b = self.block as usize;
                if head != 0 {
                    self.read_block_for_merge(start, &mut buf[..b])?;
                }
                let tail_start = span - b;
                if !(offset + len).is_multiple_of(self.block) && (head == 0 || tail_start != 0) {
                    self.read_block_for_merge(end - self.block, &mut buf[tail_start..])?;
                }
            }
            let staged = span >= STAGED_WRITE_MIN;
            if !staged {
                buf[head..head + data.len()].copy_from_slice(data);
            }
            if let Some(intent) = &self.intent {
                intent.start_write(start, end - start)?;
            }
            let result = if staged {
                self.fan_out_write_staged(start, buf, head, data, durable)
            } else {
                self.fan_out_write(start, buf, durable)
            };
            self.forget_read_ahead(start, end);
            if let Some(intent) = &self.intent {
                let everywhere = matches!(result, Ok(true));
                intent.end_write(start, end - start, everywhere);
            }
            result?;
            self.stats.writes.fetch_add(1, Ordering::Relaxed);
            self.stats.write_bytes.fetch_add(len, Ordering::Relaxed);
            Ok(len as usize)
        })
    }

    /// Reads one block for a read-modify-write, under the caller's range lock.
    /// A read error is corrected from another leg, as for any read.
    fn read_block_for_merge(&self, array_offset: u64, out: &mut [u8]) -> Result<(), EngineError> {
        let mut tried = 0u64;
        while let Some(i) = self.choose_read_leg(u64::MAX, tried) {
            tried |= 1 << i;
            let Some(io) = self.slots[i].io() else {
                continue;
            };
            return match io.leg.read_at(out, io.data_offset + array_offset) {
                Ok(()) => Ok(()),
                Err(e) => self.fix_read_error(i, array_offset, out, e, RangeHeld::Yes),
            };
        }
        Err(EngineError::NoInSyncLeg)
    }

    /// Writes `buf` at array offset `start` on every written leg (in sync or
    /// recovering) in parallel. Ok(true): every slot of the array has it;
    /// Ok(false): some slot did not (degraded, or a leg failed and was failed
    /// out); Err: no in-sync leg has it.
    fn fan_out_write(&self, start: u64, buf: &[u8], durable: bool) -> Result<bool, EngineError> {
        let share = Share::Write {
            buf,
            at: start,
            durable,
        };
        self.fan_out("write", start, share)
    }

    /// Makes every acknowledged write durable on every written leg, for a
    /// user who is told the result (fsync): a background flush that failed
    /// since the last one is reported now.
    pub fn flush(&self) -> Result<(), EngineError> {
        self.fan_out("flush", 0, Share::Flush { reported: true })
            .map(|_| ())
    }

    /// [`Raid1::flush`] for a caller who cannot tell the user (safe mode,
    /// the bitmap daemon): a leg that fails it is failed, and when it is the
    /// last in-sync leg its failure is kept for the user's next flush.
    /// Ok(true): every slot of the array took the flush.
    pub fn flush_background(&self) -> Result<bool, EngineError> {
        self.fan_out("flush", 0, Share::Flush { reported: false })
    }

    /// Writes `data` into `buf` at `head` and `buf` at array offset
    /// `start` on every written leg, like [`Self::fan_out_write`], but piece
    /// by piece: each piece goes to the legs as soon as it is copied into
    /// place, so the copy of a large write overlaps its I/O (and the legs
    /// see a few requests at once instead of one large one).
    fn fan_out_write_staged(
        &self,
        start: u64,
        buf: &mut [u8],
        head: usize,
        data: &[u8],
        durable: bool,
    ) -> Result<bool, EngineError> {
        self.fan_out_with("write", start, |targets, note| {
            let mut pieces = buf.chunks_mut(WRITE_PIECE).enumerate();
            let mut next_stage = || {
                let (k, piece) = pieces.next()?;
                let lo = k * WRITE_PIECE;
                // The part of `data` that lands in this piece (the rest of
                // the piece holds the merged head or tail block).
                let from = head.max(lo);
                let to = (head + data.len()).min(lo + piece.len());
                if from < to {
                    piece[from - lo..to - lo].copy_from_slice(&data[from - head..to - head]);
                }
                let piece: &[u8] = piece;
                let at = start + lo as u64;
                Some(
                    targets
                        .iter()
                        .map(|(_, io, _)| {
                            Share::Write {
                                buf: piece,
                                at,
                                durable,
                            }
                            .op(io)
                        })
                        .collect::<SmallVec<[LegOp<'_>; 4]>>(),
                )
            };
            // Every stage lists the targets in order, so operation i is
            // target i % targets.len()'s.
            self.fanout.run_staged(&mut next_stage, |i, r| {
                if let Err(e) = r {
                    note(leg_failure(targets[i % targets.len()].0, e));
                }
            });
        })
    }

    /// Runs one operation on every written leg at once, through the
    /// fan-out (one submission and one wait on the thread's io_uring, or
    /// the worker pool with the calling thread doing one share). Legs that
    /// fail are failed out while an in-sync leg succeeded; if every in-sync
    /// leg failed, the error goes to the caller (and the last in-sync leg
    /// stays). Ok(true) when every slot of the array took part and succeeded.
    fn fan_out(
        &self,
        op: &'static str,
        offset: u64,
        share: Share<'_>,
    ) -> Result<bool, EngineError> {
        self.fan_out_with(op, offset, |targets, note| {
            // A flush holds every target's flush guard (taken in slot order)
            // and settles each leg's result under it.
            let mut guards = flush_guards(targets, share);
            let mut results: SmallVec<[Result<(), LegError>; 4]> =
                targets.iter().map(|_| Ok(())).collect();
            #[cfg(feature = "failpoints")]
            if let Share::Write { .. } = share {
                fail::fail_point!("between-leg-writes", |_| {
                    // The first leg has the data, the others never get it.
                    let _ = share.op(&targets[0].1).run_blocking();
                    panic!("failpoint between-leg-writes: stopping between two legs' writes");
                });
            }
            let ops: SmallVec<[LegOp<'_>; 4]> =
                targets.iter().map(|(_, io, _)| share.op(io)).collect();
            self.fanout.run_all(&ops, |i, r| results[i] = r);
            for (k, r) in results.into_iter().enumerate() {
                let r = match (&mut guards[k], share) {
                    (Some(guard), Share::Flush { reported }) => guard.settle(r, reported),
                    _ => r,
                };
                if let Err(e) = r {
                    note(leg_failure(targets[k].0, e));
                }
            }
        })
    }

    /// The frame of every fan-out: picks the written legs (in-sync ones
    /// first), lets `run` do the operation on them, reporting each failed
    /// share through `note` (a leg's first failure counts; a staged write
    /// may report several), then fails out the legs that failed, or returns
    /// the error when every in-sync leg failed.
    fn fan_out_with(
        &self,
        op: &'static str,
        offset: u64,
        run: impl FnOnce(&[(usize, Arc<SlotIo>, bool)], &mut dyn FnMut(OpFailure)),
    ) -> Result<bool, EngineError> {
        // (slot, its I/O, in sync); in-sync legs first, so that without
        // io_uring the calling thread does an in-sync leg's share.
        let mut targets: SmallVec<[(usize, Arc<SlotIo>, bool); 4]> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state().is_written())
            .filter_map(|(i, s)| s.io().map(|io| (i, io, s.state() == LegState::InSync)))
            .collect();
        targets.sort_by_key(|t| !t.2);
        let in_sync = targets.iter().filter(|t| t.2).count();
        if in_sync == 0 {
            return Err(EngineError::NoInSyncLeg);
        }
        let mut failures: Vec<OpFailure> = Vec::new();
        run(&targets, &mut |failure| {
            if failures.iter().all(|f| f.target != failure.target) {
                failures.push(failure);
            }
        });
        for f in &failures {
            log::error!("{f}");
        }
        let in_sync_failed = failures
            .iter()
            .filter(|f| targets.iter().any(|t| t.0 == f.target && t.2))
            .count();
        if in_sync_failed == in_sync {
            return Err(EngineError::AllLegsFailed {
                op,
                offset,
                failures,
            });
        }
        for f in &failures {
            self.fail_after_error(f.target, &f.to_string());
        }
        let everywhere = failures.is_empty() && targets.len() == self.slots.len();
        if !everywhere {
            let reached = targets
                .iter()
                .filter(|t| failures.iter().all(|f| f.target != t.0))
                .fold(0u64, |m, t| m | 1 << t.0);
            self.await_failures_recorded(op, offset, reached)?;
        }
        Ok(everywhere)
    }

    /// Returns once the failure of every slot outside `reached` (the slots
    /// an operation did not reach) is on record, so the operation may be
    /// acknowledged: were the power cut before, the legs would assemble as
    /// equals and a resync could copy a stale leg over the acknowledged
    /// data. A record no leg took is tried again; if it still fails, so
    /// does the operation.
    fn await_failures_recorded(
        &self,
        op: &'static str,
        offset: u64,
        reached: u64,
    ) -> Result<(), EngineError> {
        let missed = |slot: usize| reached & (1 << slot) == 0;
        let mut records = self.records.lock();
        loop {
            while records
                .iter()
                .enumerate()
                .any(|(i, r)| missed(i) && *r == Record::Pending)
            {
                self.recorded.wait(&mut records);
            }
            let Some(slot) =
                (0..records.len()).find(|&i| missed(i) && records[i] == Record::Unwritten)
            else {
                return Ok(());
            };
            records[slot] = Record::Pending;
            drop(records);
            let again = {
                let _one = self.activating.lock();
                self.events
                    .leg_failed(slot, "its failure was not yet on record")
            };
            records = self.records.lock();
            records[slot] = if again.is_ok() {
                Record::Done
            } else {
                Record::Unwritten
            };
            self.recorded.notify_all();
            if let Err(why) = again {
                return Err(EngineError::FailureNotRecorded {
                    op,
                    offset,
                    slot,
                    why: why.to_string(),
                });
            }
        }
    }

    fn ensure_active(&self) -> Result<(), EngineError> {
        if self.active.load(Ordering::Acquire) {
            return Ok(());
        }
        {
            let _one = self.activating.lock();
            if !self.active.load(Ordering::Acquire) {
                self.events.mark_active().map_err(EngineError::MarkActive)?;
                self.active.store(true, Ordering::Release);
            }
        }
        self.fail_unwritten();
        Ok(())
    }

    /// Fails the legs whose superblock could not be written (each failure
    /// records itself in the others' superblocks, which may queue more).
    pub fn fail_unwritten(&self) {
        loop {
            let unwritten = self.events.take_unwritten();
            if unwritten.is_empty() {
                return;
            }
            for (slot, why) in unwritten {
                self.fail_after_error(slot, &format!("its superblock cannot be written: {why}"));
            }
        }
    }

    /// Runs `f` if the array has not been written since it was last
    /// recorded clean, with new writes held back until `f` returns (so `f`
    /// may record the array clean). Returns whether `f` ran.
    pub fn if_idle(&self, f: impl FnOnce()) -> bool {
        let _one = self.activating.lock();
        if self.active.load(Ordering::Acquire) {
            return false;
        }
        f();
        true
    }

    /// md's safe mode: when no write is in flight (else it does nothing and
    /// returns false), holds new ones back (a range lock over the whole
    /// array), flushes the legs and runs `record`
    /// (which records the superblocks clean); when both succeed the array
    /// is no longer active, so the next write marks it active again.
    /// Returns whether the array was recorded clean.
    pub fn mark_clean_when_quiet(&self, record: impl FnOnce() -> bool) -> bool {
        if !self.is_active() || self.array_size == 0 {
            return false;
        }
        // Only when no write is in flight: md never holds writes back to
        // mark the array clean (a write slow to end, a leg that hangs, must
        // not stop the others behind a queued whole-array lock).
        let Some(_all) = self.ranges.try_lock(0, self.array_size) else {
            return false;
        };
        if self.flush_background().is_err() {
            return false;
        }
        let recorded = {
            let _one = self.activating.lock();
            if !self.active.load(Ordering::Acquire) || !record() {
                false
            } else {
                self.active.store(false, Ordering::Release);
                true
            }
        };
        self.fail_unwritten();
        recorded
    }

    /// Fails leg `slot` after an I/O error, unless it is the last in-sync leg
    /// (then the error goes to the user instead, as md does).
    pub(super) fn fail_after_error(&self, slot: usize, reason: &str) {
        if let Err(e) = self.fail_leg(slot, reason) {
            log::warn!("{e}; the error goes to the caller");
        }
    }

    /// Marks leg `slot` faulty: it is no longer read or written.
    pub fn fail_leg(&self, slot: usize, reason: &str) -> Result<(), EngineError> {
        let s = self.slots.get(slot).ok_or(EngineError::CannotFail {
            slot,
            why: "no such leg",
        })?;
        // Serialize failures so two racing errors cannot fail the last two legs.
        let one = self.activating.lock();
        match s.state() {
            LegState::InSync if self.in_sync_count() <= 1 => {
                return Err(EngineError::CannotFail {
                    slot,
                    why: "it is the last in-sync leg",
                })
            }
            LegState::InSync | LegState::Recovering => {}
            LegState::Faulty | LegState::Missing => return Ok(()),
        }
        // Pending before faulty: a write that misses the leg from now on
        // waits until its failure is on record.
        self.records.lock()[slot] = Record::Pending;
        s.state.store(LegState::Faulty as u8, Ordering::Release);
        log::error!(
            "leg {} ({}) is now faulty: {reason}; the array goes on degraded",
            slot,
            s.io()
                .map(|io| io.leg.path().display().to_string())
                .unwrap_or_default()
        );
        let recorded = self.events.leg_failed(slot, reason);
        if let Err(e) = &recorded {
            log::error!(
                "leg {slot}: its failure could not be recorded on any leg ({e}); \
                 writes that miss it fail until it is"
            );
        }
        self.records.lock()[slot] = if recorded.is_ok() {
            Record::Done
        } else {
            Record::Unwritten
        };
        self.recorded.notify_all();
        drop(one);
        self.fail_unwritten();
        Ok(())
    }
}
