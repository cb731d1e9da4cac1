//! Writes and flushes: the range lock, the merge of partial blocks, the
//! write intent, the fan-out of every leg's share (staged for large writes),
//! flush guards, and marking the array active and clean (md's safe mode).

use super::*;

/// What a fan-out does on each leg.
#[derive(Clone, Copy)]
pub(super) enum Share<'a> {
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

/// The flush guards of a flush's targets, by target index (None for other
/// shares), taken in slot order so that two flushes cannot deadlock.
pub(super) fn flush_guards<'t>(
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
pub(super) fn leg_failure(slot: usize, error: LegError) -> LegFailure {
    LegFailure { slot, error }
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

impl Raid1 {
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
            // Loaded under the range lock: a bitmap change waits for it.
            let intent = self.intent.load();
            let intent = intent.as_ref().map(|i| &i.0);
            if let Some(intent) = intent {
                intent.start_write(start, end - start)?;
            }
            let result = if staged {
                self.fan_out_write_staged(start, buf, head, data, durable)
            } else {
                self.fan_out_write(start, buf, durable)
            };
            self.forget_read_ahead(start, end);
            if let Some(intent) = intent {
                let everywhere = matches!(result, Ok(true));
                intent.end_write(start, end - start, everywhere);
            }
            result?;
            self.stats.writes.fetch_add(1, Ordering::Relaxed);
            self.stats.write_bytes.fetch_add(len, Ordering::Relaxed);
            Ok(len as usize)
        })
    }

    /// Writes `buf` at array offset `start` on every written leg (in sync or
    /// recovering) in parallel. Ok(true): every slot of the array has it;
    /// Ok(false): some slot did not (degraded, or a leg failed and was failed
    /// out); Err: no in-sync leg has it.
    pub(super) fn fan_out_write(
        &self,
        start: u64,
        buf: &[u8],
        durable: bool,
    ) -> Result<bool, EngineError> {
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
    pub(super) fn fan_out_write_staged(
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
    pub(super) fn fan_out(
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
    pub(super) fn fan_out_with(
        &self,
        op: &'static str,
        offset: u64,
        run: impl FnOnce(&[(usize, Arc<SlotIo>, bool)], &mut dyn FnMut(LegFailure)),
    ) -> Result<bool, EngineError> {
        let targets = self.written_targets();
        let in_sync = targets.iter().filter(|t| t.2).count();
        if in_sync == 0 {
            return Err(EngineError::NoInSyncLeg);
        }
        let mut failures: Vec<LegFailure> = Vec::new();
        run(&targets, &mut |failure| {
            if failures.iter().all(|f| f.slot != failure.slot) {
                failures.push(failure);
            }
        });
        self.settle(op, offset, &targets, failures)
    }

    /// The legs a write or flush goes to: (slot, its I/O, in sync), in-sync
    /// legs first, so that without io_uring the calling thread does an
    /// in-sync leg's share.
    pub(super) fn written_targets(&self) -> SmallVec<[(usize, Arc<SlotIo>, bool); 4]> {
        let mut targets: SmallVec<[(usize, Arc<SlotIo>, bool); 4]> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state().is_written())
            .filter_map(|(i, s)| s.io().map(|io| (i, io, s.state() == LegState::InSync)))
            .collect();
        targets.sort_by_key(|t| !t.2);
        targets
    }

    /// The end of every fan-out: given the targets (slot, I/O, in sync) and
    /// the shares that failed (one per leg), fails out the legs that failed
    /// and waits until every slot the operation missed has its failure on
    /// record, or returns the error when every in-sync leg failed.
    /// Ok(true) when every slot of the array took part and succeeded.
    pub(super) fn settle(
        &self,
        op: &'static str,
        offset: u64,
        targets: &[(usize, Arc<SlotIo>, bool)],
        failures: Vec<LegFailure>,
    ) -> Result<bool, EngineError> {
        let in_sync = targets.iter().filter(|t| t.2).count();
        for f in &failures {
            log::error!("{f}");
        }
        let in_sync_failed = failures
            .iter()
            .filter(|f| targets.iter().any(|t| t.0 == f.slot && t.2))
            .count();
        if in_sync_failed == in_sync {
            return Err(EngineError::AllLegsFailed {
                op,
                offset,
                failures,
            });
        }
        for f in &failures {
            self.fail_after_error(f.slot, &f.to_string());
        }
        let everywhere = failures.is_empty() && targets.len() == self.slots.len();
        if !everywhere {
            let reached = targets
                .iter()
                .filter(|t| failures.iter().all(|f| f.slot != t.0))
                .fold(0u64, |m, t| m | 1 << t.0);
            self.await_failures_recorded(op, offset, reached)?;
        }
        Ok(everywhere)
    }

    pub(super) fn ensure_active(&self) -> Result<(), EngineError> {
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

    /// Writes array bytes to one leg (for a sync); an error fails the leg
    /// unless it is the last in-sync one.
    pub(in crate::raid1) fn write_leg(
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
}
