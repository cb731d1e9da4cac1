//! Read-error correction, as md's raid1 `fix_read_error` does it: a read
//! error on one leg is answered from another in-sync leg, and the good data
//! is written back over the bad range and read again. A leg that takes the
//! rewrite stays in sync (disks remap a bad sector when it is written); it is
//! failed only when the rewrite or the re-read fails, or when it has had more
//! read errors than `max_read_errors` (md's default 20, halved every hour the
//! leg goes without one: `check_decay_read_errors`).
//!
//! The correction holds the range lock over the range, so no user write can
//! fall between reading the good copy and writing it back: it never puts
//! stale data over a newer write.

use super::{EngineError, LegFailure, LegState, Raid1};
use crate::io::aligned::AlignedBuf;
use crate::io::leg::LegError;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// md's `MD_DEFAULT_MAX_CORRECTED_READ_ERRORS`.
pub const DEFAULT_MAX_READ_ERRORS: u32 = 20;

/// One leg's count of read errors (md's `rdev->read_errors`), halved for
/// every hour without one.
#[derive(Debug, Default)]
pub struct ReadErrors {
    count: AtomicU32,
    /// Hours since the epoch at the last error.
    last_hour: AtomicU64,
}

/// md's check_decay_read_errors: the count halves per hour passed.
pub fn decayed(count: u32, hours_passed: u64) -> u32 {
    if hours_passed >= 32 {
        0
    } else {
        count >> hours_passed
    }
}

fn hours_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 3600)
        .unwrap_or(0)
}

impl ReadErrors {
    /// Counts one more read error (after the hourly decay); returns the count.
    pub fn record(&self) -> u32 {
        let now = hours_now();
        let last = self.last_hour.swap(now, Ordering::AcqRel);
        let passed = now.saturating_sub(last);
        let _ = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(decayed(c, passed).saturating_add(1))
            });
        self.count.load(Ordering::Acquire)
    }

    pub fn reset(&self) {
        self.count.store(0, Ordering::Release);
    }
}

/// Whether the caller already holds the range lock over the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RangeHeld {
    /// A user read: the correction takes the lock itself.
    No,
    /// A write's read-modify-write or a sync region: the lock is the caller's.
    Yes,
}

impl Raid1 {
    /// Leg `bad` failed to read array bytes `[offset, offset + buf.len())`
    /// with `err`. Fills `buf` from another in-sync leg and corrects `bad`
    /// (and any other leg that failed the same range). Ok: `buf` holds good
    /// data. Err: no leg could supply it (the error for the caller).
    pub(super) fn fix_read_error(
        &self,
        bad: usize,
        offset: u64,
        buf: &mut [u8],
        err: LegError,
        held: RangeHeld,
    ) -> Result<(), EngineError> {
        log::error!("{err}");
        let mut failures = vec![LegFailure {
            slot: bad,
            error: err,
        }];
        if self.is_read_only() {
            // md does not write a read-only array: the error is counted and
            // the read goes to another leg.
            self.slots()[bad]
                .errors
                .fetch_add(buf.len() as u64 / 512, Ordering::Relaxed);
            return self.read_from_others(offset, buf, &mut failures, &mut vec![bad]);
        }
        let _range = match held {
            RangeHeld::No => Some(self.range_lock().lock(offset, offset + buf.len() as u64)),
            RangeHeld::Yes => None,
        };
        let limit = self.max_read_errors();
        let count = self.slots()[bad].read_errors.record();
        if count > limit {
            log::error!(
                "leg {}: read error threshold exceeded ({count} > max_read_errors {limit})",
                self.leg_label(bad)
            );
            self.fail_after_error(bad, "too many read errors (max_read_errors)");
            return self.read_from_others(offset, buf, &mut failures, &mut vec![bad]);
        }
        let mut bad_legs = vec![bad];
        if let Err(e) = self.read_from_others(offset, buf, &mut failures, &mut bad_legs) {
            // md: "Cannot read from anywhere": the leg is failed (unless it
            // is the last), the caller gets the error.
            self.fail_after_error(bad, "read error that no other leg could correct");
            return Err(e);
        }
        let mut check = AlignedBuf::new(buf.len());
        for &leg in &bad_legs {
            self.rewrite_and_check(leg, offset, buf, &mut check.as_mut_slice()[..buf.len()]);
        }
        Ok(())
    }

    /// Reads the range from the in-sync legs not in `tried`, in slot order,
    /// until one succeeds; legs that fail are added to `tried` (they get the
    /// write-back too).
    fn read_from_others(
        &self,
        offset: u64,
        buf: &mut [u8],
        failures: &mut Vec<LegFailure>,
        tried: &mut Vec<usize>,
    ) -> Result<(), EngineError> {
        for (i, s) in self.slots().iter().enumerate() {
            if tried.contains(&i) || s.state() != LegState::InSync {
                continue;
            }
            let Some(io) = s.io() else { continue };
            match io.leg().read_at(buf, io.data_offset() + offset) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    log::error!("{e}");
                    failures.push(LegFailure { slot: i, error: e });
                    tried.push(i);
                }
            }
        }
        Err(EngineError::AllLegsFailed {
            op: "read",
            offset,
            failures: std::mem::take(failures),
        })
    }

    /// Writes the good data over `leg`'s bad range and reads it back; the
    /// leg is failed if either fails or the bytes differ.
    fn rewrite_and_check(&self, leg: usize, offset: u64, good: &[u8], check: &mut [u8]) {
        let s = &self.slots()[leg];
        let Some(io) = s.io() else { return };
        let at = io.data_offset() + offset;
        let outcome = io
            .leg()
            .write_at(good, at)
            .and_then(|()| io.leg().read_at(check, at));
        let why = match outcome {
            Ok(()) if check == good => {
                let sectors = good.len() as u64 / 512;
                s.errors.fetch_add(sectors, Ordering::Relaxed);
                log::warn!(
                    "leg {}: read error corrected ({sectors} sectors at array offset {offset})",
                    self.leg_label(leg)
                );
                return;
            }
            Ok(()) => "the rewritten range read back different".to_string(),
            Err(e) => format!("rewriting a bad range failed: {e}"),
        };
        log::error!("leg {}: {why}", self.leg_label(leg));
        self.fail_after_error(leg, &why);
    }

    /// md/max_read_errors.
    pub fn max_read_errors(&self) -> u32 {
        self.max_read_errors.load(Ordering::Relaxed)
    }

    pub fn set_max_read_errors(&self, n: u32) {
        self.max_read_errors.store(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_halve_per_hour() {
        assert_eq!(decayed(20, 0), 20);
        assert_eq!(decayed(20, 1), 10);
        assert_eq!(decayed(20, 3), 2);
        assert_eq!(decayed(u32::MAX, 40), 0);
    }

    #[test]
    fn record_counts_up_within_the_hour() {
        let r = ReadErrors::default();
        assert_eq!(r.record(), 1);
        assert_eq!(r.record(), 2);
        r.reset();
        assert_eq!(r.record(), 1);
    }
}
