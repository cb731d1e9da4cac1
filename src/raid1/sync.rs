//! Resync, check and repair: copying or comparing the legs region by region
//! while the array serves, as md's raid1 sync_request does.
//!
//! A region is worked on under the range lock, so a user write to it is
//! either wholly before the copy (and the copy carries it) or wholly after
//! (and the write reaches every leg): no torn or stale block is left.

use super::engine::{LegState, Raid1, SlotIo};
use crate::io::aligned::AlignedBuf;
use crate::io::uring::LegOp;
use parking_lot::{Condvar, Mutex};
use smallvec::SmallVec;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// md's words for what a sync does (`sync_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAction {
    /// Make every in-sync leg equal to the first (after an unclean stop).
    Resync,
    /// Bring a recovering leg (re-added or new) up to date from the first
    /// in-sync leg.
    Recover { target: usize },
    /// Compare the legs and count mismatches.
    Check,
    /// Compare and rewrite mismatches from the first in-sync leg.
    Repair,
}

impl SyncAction {
    /// The word /proc/mdstat's progress line uses.
    pub fn mdstat_word(self) -> &'static str {
        match self {
            SyncAction::Recover { .. } => "recovery",
            other => other.md_word(),
        }
    }

    /// The word md's `sync_action` uses.
    pub fn md_word(self) -> &'static str {
        match self {
            SyncAction::Resync => "resync",
            SyncAction::Recover { .. } => "recover",
            SyncAction::Check => "check",
            SyncAction::Repair => "repair",
        }
    }
}

/// The unit md compares and counts in (a raid1 resync block is up to 64 KiB);
/// `mismatch_cnt` grows by this many sectors per differing unit.
pub const MISMATCH_UNIT: u64 = 64 * 1024;

/// Largest region handled under one range lock.
pub const SYNC_STEP: u64 = 1 << 20;

/// Most regions, and bytes, a copy does at once (a bitmap-guided resync or
/// recovery meets many small regions, one chunk each, far apart: doing many
/// at once keeps the legs' queues full).
const BATCH_REGIONS: usize = 64;
const BATCH_BYTES: u64 = 4 << 20;

/// md's sync_speed_min / sync_speed_max, in KiB/s.
#[derive(Debug, Clone, Copy)]
pub struct SpeedLimits {
    /// Guaranteed even while users do I/O.
    pub min_kib: u64,
    /// Never exceeded.
    pub max_kib: u64,
}

impl Default for SpeedLimits {
    /// md's defaults: 1000 and 200000 KiB/s.
    fn default() -> Self {
        SpeedLimits {
            min_kib: 1000,
            max_kib: 200_000,
        }
    }
}

/// Shared view of a running (or last) sync, for mdstat and md/ files.
#[derive(Debug)]
pub struct SyncProgress {
    pub action: SyncAction,
    pub total_bytes: u64,
    pub done_bytes: AtomicU64,
    /// Bytes actually read and written or compared (a bitmap-guided resync
    /// skips clean chunks: `done` advances past them, `worked` does not).
    pub worked_bytes: AtomicU64,
    /// Sectors in mismatching units (md's mismatch_cnt).
    pub mismatch_sectors: AtomicU64,
    pub started: Instant,
    pub finished: AtomicBool,
    pub interrupted: AtomicBool,
    /// Ended by an error (not by a stop request).
    pub failed: AtomicBool,
}

impl SyncProgress {
    /// How far it got, 0 to 100 (md's sync_completed as a percentage).
    pub fn percent(&self) -> f64 {
        let total = self.total_bytes / 512;
        if total == 0 {
            return 0.0;
        }
        (self.done_bytes.load(Ordering::Relaxed) / 512) as f64 * 100.0 / total as f64
    }

    pub fn speed_kib(&self) -> u64 {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        (self.worked_bytes.load(Ordering::Relaxed) as f64 / 1024.0 / secs) as u64
    }
}

/// How long md's throttle sleeps at most before it looks again (md_do_sync
/// sleeps 500 ms at a time).
pub const PACE_SLICE: Duration = Duration::from_millis(500);
/// The window the sync's speed is measured over: short, so a change of
/// limit (min while users do I/O, max when idle) takes effect within it.
pub const PACE_WINDOW: Duration = Duration::from_secs(1);

/// Paces a sync against a rate over a short sliding window. The bytes of
/// a window at max speed can never cost more than the window itself when
/// the rate drops: the window rolls over and the debt is forgotten.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    bytes: u64,
}

impl Pacer {
    pub fn new(now: Instant) -> Pacer {
        Pacer {
            start: now,
            bytes: 0,
        }
    }

    /// `bytes` were synced by `now`.
    pub fn record(&mut self, now: Instant, bytes: u64) {
        self.roll(now);
        self.bytes += bytes;
    }

    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.start) >= PACE_WINDOW {
            self.start = now;
            self.bytes = 0;
        }
    }

    /// How long to sleep now so the window's speed is at most `rate`
    /// bytes/s: zero when it already is, never more than [`PACE_SLICE`].
    pub fn pause(&mut self, now: Instant, rate: u64) -> Duration {
        self.roll(now);
        let due = Duration::from_secs_f64(self.bytes as f64 / rate.max(1) as f64);
        due.saturating_sub(now.saturating_duration_since(self.start))
            .min(PACE_SLICE)
    }
}

/// A region to sync, in array bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub offset: u64,
    pub len: u64,
}

impl Raid1 {
    /// Syncs one region (at most [`SYNC_STEP`]) under the range lock.
    /// Returns the mismatched sectors found (check/repair). `bufs` are two
    /// aligned buffers of at least `len` bytes owned by the syncer.
    pub fn sync_region(
        &self,
        action: SyncAction,
        region: Region,
        bufs: &mut [AlignedBuf; 2],
    ) -> Result<u64, super::EngineError> {
        let Region { offset, len } = region;
        let len = len.min(self.size().saturating_sub(offset));
        if len == 0 {
            return Ok(0);
        }
        let _range = self.range_lock().lock(offset, offset + len);
        let n = len as usize;
        // md's read_disk: the first in-sync leg that is not write-mostly.
        let Some(source) = self.primary_leg() else {
            return Err(super::EngineError::NoInSyncLeg);
        };
        let others: SmallVec<[usize; 4]> = (0..self.slots().len())
            .filter(|&i| i != source && self.slots()[i].state() == LegState::InSync)
            .collect();
        let others = &others[..];
        let [src, cmp] = bufs;
        self.read_leg(source, offset, &mut src.as_mut_slice()[..n])?;
        match action {
            SyncAction::Resync => {
                for &t in others {
                    let r = self.write_leg(t, offset, &src.as_slice()[..n]);
                    self.past_a_failed_target(t, r)?;
                }
                Ok(0)
            }
            SyncAction::Recover { target } => {
                if self.slots()[target].state() != LegState::Recovering {
                    return Err(super::EngineError::BadSlot {
                        slot: target,
                        why: "the leg being recovered left the array",
                    });
                }
                self.write_leg(target, offset, &src.as_slice()[..n])?;
                Ok(0)
            }
            SyncAction::Check | SyncAction::Repair => {
                let mut mismatched = 0;
                for &t in others {
                    let r = self.read_leg(t, offset, &mut cmp.as_mut_slice()[..n]);
                    self.past_a_failed_target(t, r)?;
                    if self.is_failed(t) {
                        // md goes on with the legs that remain.
                        continue;
                    }
                    let mut unit = 0;
                    while unit < n {
                        let end = (unit + MISMATCH_UNIT as usize).min(n);
                        if src.as_slice()[unit..end] != cmp.as_slice()[unit..end] {
                            mismatched += ((end - unit) / 512) as u64;
                            if action == SyncAction::Repair {
                                let r = self.repair_unit(
                                    t,
                                    offset + unit as u64,
                                    &src.as_slice()[unit..end],
                                );
                                self.past_a_failed_target(t, r)?;
                            }
                        }
                        unit = end;
                    }
                }
                Ok(mismatched)
            }
        }
    }

    /// Copies several small regions at once (a bitmap-guided resync or
    /// recovery: one chunk each, far apart): the source reads them all in one
    /// fan-out, then the targets write them all in one, under a range lock
    /// of just those regions (one request, so nothing can come between them
    /// in the queue). Ok(false): not done this way (too large for the
    /// buffer, or an error): the caller syncs the regions one by one, which
    /// corrects read errors and fails a leg whose write fails.
    pub fn copy_batch(
        &self,
        action: SyncAction,
        batch: &[Region],
        buf: &mut AlignedBuf,
    ) -> Result<bool, super::EngineError> {
        let total: u64 = batch.iter().map(|r| r.len).sum();
        if total as usize > buf.capacity() || batch.iter().any(|r| r.offset + r.len > self.size()) {
            return Ok(false);
        }
        let ranges: SmallVec<[(u64, u64); BATCH_REGIONS]> =
            batch.iter().map(|r| (r.offset, r.offset + r.len)).collect();
        let _range = self.range_lock().lock_many(&ranges);
        let Some(source) = self.primary_leg() else {
            return Err(super::EngineError::NoInSyncLeg);
        };
        let others: SmallVec<[usize; 4]> = (0..self.slots().len())
            .filter(|&i| i != source && self.slots()[i].state() == LegState::InSync)
            .collect();
        let targets: SmallVec<[usize; 4]> = match action {
            SyncAction::Resync => others.iter().copied().collect(),
            SyncAction::Recover { target } => {
                if self.slots()[target].state() != LegState::Recovering {
                    return Err(super::EngineError::BadSlot {
                        slot: target,
                        why: "the leg being recovered left the array",
                    });
                }
                std::iter::once(target).collect()
            }
            SyncAction::Check | SyncAction::Repair => return Ok(false),
        };
        let (Ok(src), Some(dsts)) = (
            self.slot_io_of(source),
            targets
                .iter()
                .map(|&t| self.slot_io_of(t).ok())
                .collect::<Option<SmallVec<[Arc<SlotIo>; 4]>>>(),
        ) else {
            return Ok(false);
        };
        let mut ok = true;
        let data = &mut buf.as_mut_slice()[..total as usize];
        {
            let mut reads: SmallVec<[LegOp<'_>; BATCH_REGIONS]> = SmallVec::new();
            let mut rest: &mut [u8] = &mut *data;
            for r in batch {
                let (piece, tail) = std::mem::take(&mut rest).split_at_mut(r.len as usize);
                rest = tail;
                reads.push(LegOp::read(src.leg(), piece, src.data_offset() + r.offset));
            }
            self.fanout.run_all(&reads, |_, r| ok &= r.is_ok());
        }
        if !ok {
            return Ok(false);
        }
        let mut writes: SmallVec<[LegOp<'_>; BATCH_REGIONS]> = SmallVec::new();
        let mut at = 0usize;
        for r in batch {
            let piece = &data[at..at + r.len as usize];
            at += r.len as usize;
            writes.extend(dsts.iter().map(|d| LegOp::Write {
                leg: d.leg(),
                buf: piece,
                offset: d.data_offset() + r.offset,
                durable: false,
            }));
        }
        self.fanout.run_all(&writes, |_, r| ok &= r.is_ok());
        for r in batch {
            self.forget_read_ahead(r.offset, r.offset + r.len);
        }
        Ok(ok)
    }

    /// A sync goes on past an error on one target leg once that leg has
    /// been failed (others remain); any other error stops it.
    fn past_a_failed_target(
        &self,
        target: usize,
        r: Result<(), super::EngineError>,
    ) -> Result<(), super::EngineError> {
        match r {
            Err(e) if !self.is_failed(target) => Err(e),
            Err(e) => {
                log::warn!("sync: leg {target} failed ({e}); going on with the others");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    fn is_failed(&self, slot: usize) -> bool {
        self.slots()[slot].state() == LegState::Faulty
    }

    /// Rewrites one leg's unit from the source's bytes; the bitmap bit is on
    /// disk first, as for any write that can leave legs different at a crash.
    fn repair_unit(&self, leg: usize, offset: u64, data: &[u8]) -> Result<(), super::EngineError> {
        let intent = self.intent();
        if let Some(intent) = &intent {
            intent.start_write(offset, data.len() as u64)?;
        }
        let r = self.write_leg(leg, offset, data);
        if let Some(intent) = &intent {
            intent.end_write(offset, data.len() as u64, r.is_ok());
        }
        r
    }
}

/// What the syncer tells its owner.
pub trait SyncEvents: Send + Sync {
    /// `region` is now identical on every in-sync leg (resync, repair).
    fn region_synced(&self, region: Region);
    /// The sync ended: completed, or stopped early (`interrupted`).
    fn finished(&self, progress: &SyncProgress);
}

/// A background sync over a list of regions.
pub struct Syncer {
    progress: Arc<SyncProgress>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    pub fn start(
        engine: Arc<Raid1>,
        action: SyncAction,
        regions: Vec<Region>,
        limits: Arc<Mutex<SpeedLimits>>,
        events: Arc<dyn SyncEvents>,
    ) -> std::io::Result<Syncer> {
        let progress = Arc::new(SyncProgress {
            action,
            total_bytes: engine.size(),
            // md shows a resumed sync from where it resumes.
            done_bytes: AtomicU64::new(regions.first().map_or(0, |r| r.offset)),
            worked_bytes: AtomicU64::new(0),
            mismatch_sectors: AtomicU64::new(0),
            started: Instant::now(),
            finished: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        });
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let progress = progress.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("md-{}", action.md_word()))
                .spawn(move || {
                    run(
                        &engine, action, &regions, &limits, &*events, &progress, &stop,
                    )
                })?
        };
        Ok(Syncer {
            progress,
            stop,
            thread: Some(thread),
        })
    }

    pub fn progress(&self) -> &Arc<SyncProgress> {
        &self.progress
    }

    /// Stops the sync (md: `echo idle > sync_action`) and waits for it.
    pub fn stop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    engine: &Raid1,
    action: SyncAction,
    regions: &[Region],
    limits: &Mutex<SpeedLimits>,
    events: &dyn SyncEvents,
    progress: &SyncProgress,
    stop: &(Mutex<bool>, Condvar),
) {
    let mut bufs = [
        AlignedBuf::new(SYNC_STEP as usize),
        AlignedBuf::new(SYNC_STEP as usize),
    ];
    let mut batch_buf = AlignedBuf::new(BATCH_BYTES as usize);
    let mut pacer = Pacer::new(Instant::now());
    let mut last_user_io = engine.stats().total_requests();
    log::info!(
        "{}: started over {} region(s)",
        action.md_word(),
        regions.len()
    );
    // Steps of at most SYNC_STEP; a copy gathers consecutive small ones
    // into one batch of at most BATCH_BYTES.
    let mut steps = regions
        .iter()
        .flat_map(|r| {
            (r.offset..r.offset + r.len)
                .step_by(SYNC_STEP as usize)
                .map(move |pos| Region {
                    offset: pos,
                    len: (r.offset + r.len - pos).min(SYNC_STEP),
                })
        })
        .peekable();
    let copying = matches!(action, SyncAction::Resync | SyncAction::Recover { .. });
    while let Some(first) = steps.next() {
        if *stop.0.lock() {
            progress.interrupted.store(true, Ordering::Release);
            break;
        }
        let mut batch: SmallVec<[Region; BATCH_REGIONS]> = SmallVec::new();
        batch.push(first);
        let mut bytes = first.len;
        while let Some(next) = steps
            .peek()
            .filter(|n| copying && batch.len() < BATCH_REGIONS && bytes + n.len <= BATCH_BYTES)
        {
            bytes += next.len;
            batch.push(*next);
            steps.next();
        }
        let done = if batch.len() > 1 {
            match engine.copy_batch(action, &batch, &mut batch_buf) {
                Ok(true) => Ok(0),
                Ok(false) => batch.iter().try_fold(0, |m, &step| {
                    Ok(m + engine.sync_region(action, step, &mut bufs)?)
                }),
                Err(e) => Err(e),
            }
        } else {
            engine.sync_region(action, first, &mut bufs)
        };
        match done {
            Ok(mismatched) => {
                progress
                    .mismatch_sectors
                    .fetch_add(mismatched, Ordering::Relaxed);
                if action != SyncAction::Check {
                    for &step in &batch {
                        events.region_synced(step);
                    }
                }
            }
            Err(e) => {
                log::error!(
                    "{}: stopped at array offset {}: {e}",
                    action.md_word(),
                    first.offset
                );
                progress.failed.store(true, Ordering::Release);
                progress.interrupted.store(true, Ordering::Release);
                break;
            }
        }
        let last = batch[batch.len() - 1];
        let pos = last.offset + last.len;
        progress.worked_bytes.fetch_add(bytes, Ordering::Relaxed);
        pacer.record(Instant::now(), bytes);
        // md's throttle: at most max; down to min while users do I/O.
        // Looked at again after every slice of sleep, as md does.
        loop {
            let now_user_io = engine.stats().total_requests();
            let busy = now_user_io != last_user_io;
            last_user_io = now_user_io;
            let l = *limits.lock();
            let rate = if busy { l.min_kib } else { l.max_kib }.max(1) * 1024;
            let pause = pacer.pause(Instant::now(), rate);
            if pause.is_zero() {
                break;
            }
            let mut stopped = stop.0.lock();
            if *stopped {
                break;
            }
            stop.1.wait_for(&mut stopped, pause);
        }
        // md shows the array position reached (a bitmap-guided resync
        // jumps over clean chunks).
        progress.done_bytes.store(pos, Ordering::Relaxed);
    }
    if !progress.interrupted.load(Ordering::Acquire) {
        progress
            .done_bytes
            .store(progress.total_bytes, Ordering::Relaxed);
    }
    log::info!(
        "{}: {} after {:.1} s (sync_copied {} bytes, mismatch_cnt {})",
        action.md_word(),
        if progress.interrupted.load(Ordering::Acquire) {
            "interrupted"
        } else {
            "done"
        },
        progress.started.elapsed().as_secs_f64(),
        progress.worked_bytes.load(Ordering::Relaxed),
        progress.mismatch_sectors.load(Ordering::Relaxed)
    );
    events.finished(progress);
    // Finished only once its ends are in place (the recovered leg in sync,
    // a resync recorded), as md's sync_action reads its action until
    // md_reap_sync_thread has activated the spare: `mdfuse wait` and a
    // reader of sync_action never see idle with the leg still a spare.
    progress.finished.store(true, Ordering::Release);
}

#[cfg(test)]
mod pacer_tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Steps of 1 MiB at a rate, with the sleeps the pacer asks for:
    /// returns the simulated time taken.
    fn run(p: &mut Pacer, now: &mut Instant, steps: u64, rate: u64, longest: &mut Duration) {
        for _ in 0..steps {
            p.record(*now, MIB);
            loop {
                let d = p.pause(*now, rate);
                if d.is_zero() {
                    break;
                }
                *longest = (*longest).max(d);
                *now += d;
            }
        }
    }

    #[test]
    fn the_rate_is_kept_over_time() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut p = Pacer::new(now);
        let mut longest = Duration::ZERO;
        run(&mut p, &mut now, 20, 10 * MIB, &mut longest);
        let secs = (now - t0).as_secs_f64();
        assert!(
            (1.7..2.3).contains(&secs),
            "20 MiB at 10 MiB/s took {secs} s"
        );
        assert!(longest <= PACE_SLICE);
    }

    #[test]
    fn dropping_from_max_to_min_never_stalls_for_long() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut p = Pacer::new(now);
        let mut longest = Duration::ZERO;
        // A burst at 200 MB/s (md's max), then users arrive: 1 MB/s (min).
        run(&mut p, &mut now, 150, 200_000 * 1024, &mut longest);
        let burst_end = now;
        run(&mut p, &mut now, 1, 1000 * 1024, &mut longest);
        let stall = now - burst_end;
        assert!(
            stall <= PACE_WINDOW + PACE_SLICE + Duration::from_millis(50),
            "the first step at min speed waited {stall:?}"
        );
        assert!(longest <= PACE_SLICE, "no single sleep above the slice");
    }
}
