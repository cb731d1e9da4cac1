//! Reads: the leg a read goes to (a sequential stream stays on one leg,
//! others go to the least busy), large reads split over the legs, read
//! errors corrected from another leg, read-ahead of O_DIRECT streams.

use super::*;

impl Raid1 {
    /// Picks the leg for a read at `offset` (see [`pick_read_leg`]); legs
    /// whose bit is set in `tried` have failed this read already.
    pub(super) fn choose_read_leg(&self, offset: u64, tried: u64) -> Option<usize> {
        let legs: SmallVec<[ReadCandidate; 4]> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| ReadCandidate {
                usable: tried & (1 << i) == 0 && s.state() == LegState::InSync,
                write_mostly: s.is_write_mostly(),
                next_read: s.next_read.load(Ordering::Relaxed),
                pending: s.pending_reads.load(Ordering::Relaxed),
            })
            .collect();
        let first_only = self.first_only.load(Ordering::Relaxed);
        // Only a balanced choice turns the rotation.
        pick_read_leg(&legs, offset, first_only, || {
            self.rotate.fetch_add(1, Ordering::Relaxed)
        })
    }

    /// Reads `[offset, offset+len)` of the array and hands the bytes to `f`
    /// (they live in this thread's scratch buffer). Returns `f`'s result.
    /// A read error is corrected as md's fix_read_error does: the good copy
    /// comes from another in-sync leg and is written back over the bad
    /// range; the leg is failed only if that rewrite fails or it has had
    /// more than `max_read_errors` (see `read_fix.rs`).
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
    /// [`crate::raid1::readahead`]), once [`Raid1::start_readahead`] ran.
    pub fn read_direct<R>(
        &self,
        offset: u64,
        len: u64,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, EngineError> {
        self.read_for(offset, len, true, f)
    }

    pub(super) fn read_for<R>(
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

    pub(super) fn count_read(&self, len: u64) {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.read_bytes.fetch_add(len, Ordering::Relaxed);
    }

    /// Reads the block-aligned range at `start` into `buf`, from one leg or
    /// split over the in-sync legs, correcting read errors from another leg.
    /// `from` is the reader's own offset and `stream_end` where its stream
    /// would continue: a leg that served a stream serves its next read.
    pub(super) fn read_span(
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
    /// [`crate::raid1::readahead`]). It holds the engine weakly and ends with it.
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
        for t in 0..crate::raid1::readahead::DEPTH {
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
    pub(in crate::raid1) fn forget_read_ahead(&self, start: u64, end: u64) {
        if let Some(ra) = self.readahead.get() {
            ra.invalidate(start, end);
        }
    }

    /// A large read (at least [`SPLIT_READ_MIN`]) from direct-mode legs is
    /// split into one contiguous piece per in-sync leg that is not
    /// write-mostly, all read at once
    /// through io_uring: a mirror has every leg's bandwidth to offer, and a
    /// single large request would use one. A piece that fails is corrected
    /// as any read error. None: not split (too small, fewer than two legs
    /// to read from, buffered
    /// legs whose readahead wants whole streams, reads held to the first
    /// leg after an unclean stop, or no io_uring).
    /// The legs a large read is split over: the in-sync ones that are not
    /// write-mostly (md reads those only when no other leg can serve).
    pub(super) fn split_read_legs(&self) -> SmallVec<[(usize, Arc<SlotIo>); 4]> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state() == LegState::InSync && !s.is_write_mostly())
            .filter_map(|(i, s)| s.io().map(|io| (i, io)))
            .collect()
    }

    pub(super) fn read_split(&self, start: u64, buf: &mut [u8]) -> Option<Result<(), EngineError>> {
        if (buf.len() as u64) < SPLIT_READ_MIN
            || self.block == 1
            || self.first_only.load(Ordering::Relaxed)
        {
            return None;
        }
        let legs = self.split_read_legs();
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

    /// Reads array bytes from one leg for a sync, under the sync's range
    /// lock; a read error is corrected from another in-sync leg (md's
    /// fix_read_error), so `buf` then holds the good data.
    pub(in crate::raid1) fn read_leg(
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

    /// Reads one block for a read-modify-write, under the caller's range lock.
    /// A read error is corrected from another leg, as for any read.
    pub(super) fn read_block_for_merge(
        &self,
        array_offset: u64,
        out: &mut [u8],
    ) -> Result<(), EngineError> {
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
}

/// What the read balancer sees of one slot.
#[derive(Debug, Clone, Copy, Default)]
struct ReadCandidate {
    /// In sync and not yet tried for this read.
    pub usable: bool,
    /// md's WriteMostly.
    pub write_mostly: bool,
    /// Where the last read sent to it ended (u64::MAX: none).
    pub next_read: u64,
    /// Reads in flight on it.
    pub pending: u32,
}

/// md's read_balance for a mirror, over the slots' `legs`: a leg that is
/// write-mostly is read only when no other usable leg remains, and then
/// the first of them, with no balancing among them (md: "just use the
/// first as a last resort"). Among the others: with `first_only` (reads
/// held to one leg until a resync), the first; else the leg whose last
/// read ended at `offset` (a sequential stream stays on its leg), else the
/// one with the fewest reads in flight, ties broken from where `rotate`
/// says (asked only for such a choice) so parallel readers spread. None:
/// no usable leg.
fn pick_read_leg(
    legs: &[ReadCandidate],
    offset: u64,
    first_only: bool,
    rotate: impl FnOnce() -> usize,
) -> Option<usize> {
    let n = legs.len();
    let readable = |i: &usize| legs[*i].usable && !legs[*i].write_mostly;
    let last_resort = || (0..n).find(|&i| legs[i].usable && legs[i].write_mostly);
    if first_only {
        return (0..n).find(readable).or_else(last_resort);
    }
    // u64::MAX: no stream to continue (it is also a fresh leg's next_read).
    if offset != u64::MAX {
        if let Some(i) = (0..n)
            .filter(readable)
            .find(|&i| legs[i].next_read == offset)
        {
            return Some(i);
        }
    }
    let start = rotate();
    (0..n)
        .map(|k| (start + k) % n)
        .filter(readable)
        .min_by_key(|&i| legs[i].pending)
        .or_else(last_resort)
}

#[cfg(test)]
mod tests {
    use super::{pick_read_leg, ReadCandidate};

    fn leg(write_mostly: bool) -> ReadCandidate {
        ReadCandidate {
            usable: true,
            write_mostly,
            next_read: u64::MAX,
            pending: 0,
        }
    }

    #[test]
    fn a_write_mostly_leg_is_never_read_while_another_leg_can_serve() {
        let legs = [leg(true), leg(false)];
        for rotate in 0..8 {
            assert_eq!(pick_read_leg(&legs, 0, false, || rotate), Some(1));
            assert_eq!(pick_read_leg(&legs, u64::MAX, false, || rotate), Some(1));
        }
        // Even when it is idle and the other busy, or it would continue a stream.
        let mut busy = legs;
        busy[1].pending = 9;
        busy[0].next_read = 4096;
        assert_eq!(pick_read_leg(&busy, 4096, false, || 0), Some(1));
        // Held to one leg after an unclean stop: the first that is not
        // write-mostly (md's read_balance skips such a leg there too).
        assert_eq!(pick_read_leg(&legs, 0, true, || 0), Some(1));
    }

    #[test]
    fn a_write_mostly_leg_serves_when_no_other_leg_can() {
        // The other leg failed (not in sync), or failed this very read.
        let mut legs = [leg(true), leg(false)];
        legs[1].usable = false;
        assert_eq!(pick_read_leg(&legs, 0, false, || 3), Some(0));
        assert_eq!(pick_read_leg(&legs, 0, true, || 0), Some(0));
        // Several write-mostly legs: the first, not balanced among them.
        let legs = [leg(false), leg(true), leg(true)];
        let mut only_wm = legs;
        only_wm[0].usable = false;
        for rotate in 0..6 {
            assert_eq!(pick_read_leg(&only_wm, 0, false, || rotate), Some(1));
        }
        only_wm[1].usable = false;
        assert_eq!(pick_read_leg(&only_wm, 0, false, || 0), Some(2));
        only_wm[2].usable = false;
        assert_eq!(pick_read_leg(&only_wm, 0, false, || 0), None);
    }

    #[test]
    fn legs_that_are_not_write_mostly_are_balanced_as_before() {
        let mut legs = [leg(false), leg(true), leg(false)];
        // A stream stays on its leg.
        legs[2].next_read = 8192;
        assert_eq!(pick_read_leg(&legs, 8192, false, || 0), Some(2));
        // Otherwise the least busy; ties spread by the rotation.
        legs[2].next_read = u64::MAX;
        let picks: Vec<_> = (0..3)
            .map(|r| pick_read_leg(&legs, 0, false, || r))
            .collect();
        assert!(
            picks.contains(&Some(0)) && picks.contains(&Some(2)),
            "{picks:?}"
        );
        assert!(!picks.contains(&Some(1)), "{picks:?}");
        legs[0].pending = 2;
        assert_eq!(pick_read_leg(&legs, 0, false, || 0), Some(2));
        // Held to one leg: the first usable one.
        assert_eq!(pick_read_leg(&legs, 0, true, || 0), Some(0));
    }
}
