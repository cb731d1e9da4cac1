//! Reads and writes a transport runs in its own io_uring (FUSE over
//! io_uring: the legs' I/O goes into the same ring as the commit of the
//! replies, straight from and into the entry's payload buffer, with no
//! copy). The engine keeps every decision and every rule: it plans the
//! request (which legs, where; for a write also the range lock, the array
//! marked active and the bitmap's bits durable, in the order
//! [`Raid1::write`] takes them), the transport submits the planned
//! operations and hands their outcome back, and the engine finishes the
//! request with the ordinary path's own code: counters, the rest of a short
//! transfer, read errors corrected through `fix_read_error`, failed legs
//! failed and their failure on record before the write is acknowledged
//! (`settle`), read-ahead forgotten, `end_write`, the range released.
//!
//! Only what the ordinary path would do the same way is planned: aligned
//! requests on direct-mode legs that all have a raw descriptor; for a read
//! not one an O_DIRECT stream's read-ahead serves, for a write only when its
//! range is free at once. Anything else (buffered legs, unaligned requests,
//! a network leg, a range another request holds) is `None`, and the caller
//! uses [`Raid1::read`], [`Raid1::read_direct`] or [`Raid1::write`].
//!
//! What the caller must keep to: every plan is finished, after all its
//! operations completed (a planned write holds its range and its bits
//! until then); and a caller holding planned writes does not wait for a
//! range itself (an ordinary write, a read error's correction) until they
//! are finished: its own range could be the one it waits for.

use super::*;
use crate::raid1::range_lock::RangeGuard;
use std::os::fd::RawFd;

/// The most pieces a planned read has (one per in-sync leg, for a large
/// read; an array with more legs splits it over this many).
pub const MAX_READ_PIECES: usize = 8;

/// One piece of a planned read: `len` bytes from the leg's descriptor at
/// `leg_offset`, into the caller's buffer at `buf_at`.
#[derive(Debug, Clone, Copy)]
pub struct ReadPiece {
    pub fd: RawFd,
    pub leg_offset: u64,
    pub buf_at: usize,
    pub len: usize,
}

/// A read the caller runs itself (see the module's doc). It holds its legs
/// (their descriptors stay open) until [`Raid1::finish_read`] takes it
/// back; dropped without that, the legs' in-flight counts stay raised, so
/// the caller always finishes it, after every piece completed.
pub struct PlannedRead {
    start: u64,
    len: usize,
    pieces: SmallVec<[(usize, Arc<SlotIo>, ReadPiece); 2]>,
}

impl PlannedRead {
    /// The pieces to read (one, or one per in-sync leg for a large read).
    pub fn pieces(&self) -> impl Iterator<Item = ReadPiece> + '_ {
        self.pieces.iter().map(|p| p.2)
    }

    pub fn piece_count(&self) -> usize {
        self.pieces.len()
    }

    /// The bytes the read fills, from the caller's buffer's start.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Raid1 {
    /// Whether `[offset, offset + len)` can be run in a ring: direct-mode
    /// legs, block-aligned, inside the array.
    fn ring_able(&self, offset: u64, len: u64) -> bool {
        self.block != 1
            && len != 0
            && offset.is_multiple_of(self.block)
            && len.is_multiple_of(self.block)
            && offset
                .checked_add(len)
                .is_some_and(|end| end <= self.array_size)
    }

    /// Plans the read of `[offset, offset + len)` for a caller that runs it
    /// in its own ring into a buffer of at least `len` bytes aligned for
    /// O_DIRECT; None when the ordinary path must serve it. A plan reads
    /// exactly `len` bytes, in at most [`MAX_READ_PIECES`] pieces that lie
    /// within them.
    pub fn plan_read(&self, offset: u64, len: u64, direct_reader: bool) -> Option<PlannedRead> {
        if !self.ring_able(offset, len) {
            return None;
        }
        // An O_DIRECT stream's large reads belong to its read-ahead.
        if direct_reader && len >= READAHEAD_MIN && self.readahead.get().is_some() {
            return None;
        }
        let len_us = usize::try_from(len).ok()?;
        let mut pieces: SmallVec<[(usize, Arc<SlotIo>, ReadPiece); 2]> = SmallVec::new();
        let piece_of = |slot: usize, io: Arc<SlotIo>, at: usize, n: usize| {
            let fd = io.leg.raw_fd()?;
            let leg_offset = io.data_offset.checked_add(offset + at as u64)?;
            Some((
                slot,
                io,
                ReadPiece {
                    fd,
                    leg_offset,
                    buf_at: at,
                    len: n,
                },
            ))
        };
        if len >= SPLIT_READ_MIN && !self.first_only.load(Ordering::Relaxed) {
            // As read_split: one contiguous piece per leg it splits over.
            let legs = self.split_read_legs();
            if legs.len() >= 2 {
                let block = self.block as usize;
                let n = legs
                    .len()
                    .min(len_us / (SPLIT_READ_MIN as usize / 2))
                    .min(MAX_READ_PIECES);
                let piece = len_us.div_ceil(n).div_ceil(block) * block;
                for (k, (slot, io)) in legs.into_iter().take(n).enumerate() {
                    let at = k * piece;
                    if at >= len_us {
                        break;
                    }
                    pieces.push(piece_of(slot, io, at, piece.min(len_us - at))?);
                }
            }
        }
        if pieces.is_empty() {
            let slot = self.choose_read_leg(offset, 0)?;
            let io = self.slots[slot].io()?;
            pieces.push(piece_of(slot, io, 0, len_us)?);
        }
        for (slot, _, p) in &pieces {
            let s = &self.slots[*slot];
            s.pending_reads.fetch_add(1, Ordering::Relaxed);
            // Where this piece ends: a stream continuing there finds the leg.
            s.next_read
                .store(offset + (p.buf_at + p.len) as u64, Ordering::Relaxed);
        }
        Some(PlannedRead {
            start: offset,
            len: len_us,
            pieces,
        })
    }

    /// Finishes a planned read once every piece completed: `results[k]` is
    /// piece k's completion (bytes read, or -errno), `buf` the buffer the
    /// pieces were read into. A short piece is finished with a plain read;
    /// a failed one is corrected from another leg as any read error is
    /// (`fix_read_error`: the leg rewritten, or failed). Ok: `buf[..len]`
    /// holds the data.
    pub fn finish_read(
        &self,
        plan: PlannedRead,
        results: &[i32],
        buf: &mut [u8],
    ) -> Result<(), EngineError> {
        if buf.len() < plan.len {
            for (slot, _, _) in &plan.pieces {
                self.slots[*slot]
                    .pending_reads
                    .fetch_sub(1, Ordering::Relaxed);
            }
            return Err(match plan.pieces.first() {
                Some((_, io, p)) => EngineError::Leg(io.leg.io_error(
                    "read",
                    p.leg_offset,
                    plan.len,
                    std::io::Error::other("the caller's buffer is smaller than the planned read"),
                )),
                None => EngineError::NoInSyncLeg,
            });
        }
        let mut failed: SmallVec<[(usize, LegError); 2]> = SmallVec::new();
        for (k, (slot, io, p)) in plan.pieces.iter().enumerate() {
            let s = &self.slots[*slot];
            s.pending_reads.fetch_sub(1, Ordering::Relaxed);
            let res = results.get(k).copied().unwrap_or(-libc::EIO);
            let piece = &mut buf[p.buf_at..p.buf_at + p.len];
            let r = if res < 0 {
                Err(io.leg.io_error(
                    "read",
                    p.leg_offset,
                    p.len,
                    std::io::Error::from_raw_os_error(-res),
                ))
            } else {
                let n = (res as usize).min(p.len);
                io.leg.io_stats().count_read(n as u64);
                if n < p.len {
                    // A short read: the rest with a plain read, which names
                    // the end of the leg if that is what it met.
                    io.leg.read_at(&mut piece[n..], p.leg_offset + n as u64)
                } else {
                    Ok(())
                }
            };
            s.reads.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = r {
                failed.push((k, e));
            }
        }
        for (k, err) in failed {
            let (slot, _, p) = &plan.pieces[k];
            self.fix_read_error(
                *slot,
                plan.start + p.buf_at as u64,
                &mut buf[p.buf_at..p.buf_at + p.len],
                err,
                RangeHeld::No,
            )?;
        }
        self.count_read(plan.len as u64);
        Ok(())
    }
}

/// The most legs a planned write goes to (more go the ordinary way).
pub const MAX_WRITE_TARGETS: usize = 8;

/// One leg's share of a planned write: the caller's whole buffer
/// (`PlannedWrite::len` bytes from its start) written at `leg_offset`;
/// `durable`: with RWF_DSYNC.
#[derive(Debug, Clone, Copy)]
pub struct WritePiece {
    pub fd: RawFd,
    pub leg_offset: u64,
    pub durable: bool,
}

/// A write the caller runs itself (see the module's doc): it holds the
/// write's range and its bits are set until [`Raid1::finish_write`].
pub struct PlannedWrite<'e> {
    _range: RangeGuard<'e>,
    start: u64,
    len: usize,
    durable: bool,
    targets: SmallVec<[(usize, Arc<SlotIo>, bool); 4]>,
    /// The bitmap the write started on (loaded under the range lock, so a
    /// bitmap change waits for the write): it ends on the same one.
    intent: Option<Arc<dyn crate::bitmap::WriteIntent>>,
}

impl PlannedWrite<'_> {
    /// One share per written leg.
    pub fn pieces(&self) -> impl Iterator<Item = WritePiece> + '_ {
        let (start, durable) = (self.start, self.durable);
        self.targets.iter().filter_map(move |(_, io, _)| {
            Some(WritePiece {
                fd: io.leg.raw_fd()?,
                leg_offset: io.data_offset + start,
                durable,
            })
        })
    }

    pub fn piece_count(&self) -> usize {
        self.targets.len()
    }

    /// The bytes written, from the caller's buffer's start.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Raid1 {
    /// Plans the write of `len` bytes at `offset` from a buffer aligned for
    /// O_DIRECT, for a caller that runs it in its own ring. None: the
    /// ordinary [`Raid1::write`] must serve it (see the module's doc).
    /// Some(Err): the write fails (the array cannot be marked active, the
    /// bitmap refuses), as [`Raid1::write`] would. Some(Ok): the range is
    /// held, the array marked active and the bits durable; every planned
    /// piece may be written now.
    pub fn plan_write(
        &self,
        offset: u64,
        len: u64,
        durable: bool,
    ) -> Option<Result<PlannedWrite<'_>, EngineError>> {
        if !self.ring_able(offset, len) {
            return None;
        }
        // The failure tests stop between two legs' writes on the ordinary path.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("between-leg-writes", |_| None);
        let len_us = usize::try_from(len).ok()?;
        let targets = self.written_targets();
        if targets.is_empty()
            || targets.len() > MAX_WRITE_TARGETS
            || !targets.iter().any(|t| t.2)
            || targets.iter().any(|t| t.1.leg.raw_fd().is_none())
        {
            return None;
        }
        let end = offset + len;
        let range = self.ranges.try_lock(offset, end)?;
        // As Raid1::write: under the range lock, so safe mode's barrier
        // either sees this write end or comes first.
        if let Err(e) = self.ensure_active() {
            return Some(Err(e));
        }
        let intent = self.intent.load().as_ref().map(|i| i.0.clone());
        if let Some(intent) = &intent {
            if let Err(e) = intent.start_write(offset, len) {
                return Some(Err(e.into()));
            }
        }
        Some(Ok(PlannedWrite {
            _range: range,
            start: offset,
            len: len_us,
            durable,
            targets,
            intent,
        }))
    }

    /// Finishes a planned write once every piece completed: `results[k]`
    /// is piece k's completion (bytes written, or -errno), `data` the
    /// buffer written. As [`Raid1::write`]: the rest of a short write with a
    /// plain write; legs that failed are failed (their failure on record
    /// before this returns), or the error when every in-sync leg failed;
    /// read-ahead of the range forgotten, `end_write`, the range released.
    /// Returns the bytes written.
    pub fn finish_write(
        &self,
        plan: PlannedWrite<'_>,
        results: &[i32],
        data: &[u8],
    ) -> Result<usize, EngineError> {
        let (start, len) = (plan.start, plan.len);
        let mut failures: Vec<LegFailure> = Vec::new();
        for (k, (slot, io, _)) in plan.targets.iter().enumerate() {
            let res = results.get(k).copied().unwrap_or(-libc::EIO);
            let at = io.data_offset + start;
            let r = if res < 0 {
                Err(io
                    .leg
                    .io_error("write", at, len, std::io::Error::from_raw_os_error(-res)))
            } else {
                let n = (res as usize).min(len);
                io.leg.io_stats().count_write(n as u64);
                match data.get(n..len) {
                    Some([]) => Ok(()),
                    // A short write (rare: a signal, a full filesystem):
                    // the rest with a plain write, which names any error.
                    Some(rest) if plan.durable => io.leg.write_at_durable(rest, at + n as u64),
                    Some(rest) => io.leg.write_at(rest, at + n as u64),
                    None => Err(io.leg.io_error(
                        "write",
                        at,
                        len,
                        std::io::Error::other("the buffer is shorter than the planned write"),
                    )),
                }
            };
            if let Err(e) = r {
                failures.push(LegFailure {
                    slot: *slot,
                    error: e,
                });
            }
        }
        let result = self.settle("write", start, &plan.targets, failures);
        let end = start + len as u64;
        self.forget_read_ahead(start, end);
        if let Some(intent) = &plan.intent {
            intent.end_write(start, len as u64, matches!(result, Ok(true)));
        }
        drop(plan);
        result?;
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .write_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        Ok(len)
    }
}
