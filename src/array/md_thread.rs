//! The array's own thread, as md's per-array thread running
//! `md_check_recovery`: it restarts a resync or recovery that is still owed
//! (after `idle` stopped it, or an error ended it) unless the array is
//! frozen, and it runs md's safe mode: once writes have been idle for
//! `safe_mode_delay`, the legs are flushed and the superblocks recorded
//! clean, so a crash of an idle array needs no resync. It also brings
//! faulty remote legs back (`reconnect.rs`).

use super::running::RunningArray;
use parking_lot::{Condvar, Mutex};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the thread looks (md wakes its thread on events and timers;
/// a short poll is simpler and cheap).
const TICK: Duration = Duration::from_millis(50);

/// md's default safe_mode_delay: 200 ms.
pub const DEFAULT_SAFE_MODE_DELAY_MS: u64 = 200;

/// What safe mode has seen of the writes.
pub(super) struct IdleWatch {
    writes_seen: u64,
    since: Instant,
}

impl IdleWatch {
    pub(super) fn new(writes: u64) -> IdleWatch {
        IdleWatch {
            writes_seen: writes,
            since: Instant::now(),
        }
    }

    /// True once `writes` (the count of writes ended) has not moved for
    /// `delay`.
    pub(super) fn idle_for(&mut self, writes: u64, delay: Duration, now: Instant) -> bool {
        if writes != self.writes_seen {
            self.writes_seen = writes;
            self.since = now;
            return false;
        }
        now.saturating_duration_since(self.since) >= delay
    }

    /// Starts the wait again (after a failed attempt).
    pub(super) fn restart(&mut self, now: Instant) {
        self.since = now;
    }
}

pub(super) struct MdThread {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl MdThread {
    pub(super) fn start(array: Weak<RunningArray>) -> std::io::Result<MdThread> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let handle = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("md-thread".into())
                .spawn(move || {
                    let mut idle = None;
                    let mut reconnects = super::reconnect::Reconnects::default();
                    loop {
                        {
                            let mut stopped = stop.0.lock();
                            if !*stopped {
                                stop.1.wait_for(&mut stopped, TICK);
                            }
                            if *stopped {
                                return;
                            }
                        }
                        let Some(array) = array.upgrade() else { return };
                        let idle = idle.get_or_insert_with(|| array.idle_watch());
                        // A superblock write that failed elsewhere (a sync's
                        // checkpoint, say) fails its leg here.
                        array.engine().fail_unwritten();
                        array.check_recovery();
                        array.safe_mode(idle);
                        array.reconnect_remote_legs(&mut reconnects, Instant::now());
                    }
                })?
        };
        Ok(MdThread {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it (not from the thread itself).
    pub(super) fn stop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(h) = self.handle.take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for MdThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// md's safe_mode_delay as its sysfs file shows it: seconds, 3 decimals.
pub fn format_delay(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Parses seconds ("0.2", "1", "0.125") to milliseconds, as md's
/// safe_delay_store (strict decimal, at most 3 decimals kept).
pub fn parse_delay(text: &str) -> Option<u64> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    if !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut ms = 0;
    for (i, c) in frac.chars().take(3).enumerate() {
        ms += (c as u64 - '0' as u64) * [100, 10, 1][i];
    }
    whole.checked_mul(1000)?.checked_add(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_read_and_print_as_md() {
        assert_eq!(format_delay(200), "0.200");
        assert_eq!(format_delay(1500), "1.500");
        assert_eq!(parse_delay("0.2"), Some(200));
        assert_eq!(parse_delay("1"), Some(1000));
        assert_eq!(parse_delay("0.1255"), Some(125));
        assert_eq!(parse_delay(".5"), Some(500));
        assert_eq!(parse_delay("x"), None);
        assert_eq!(parse_delay("1.-2"), None);
        assert_eq!(parse_delay(""), None);
    }

    #[test]
    fn idle_only_after_the_delay_without_writes() {
        let t0 = Instant::now();
        let mut w = IdleWatch::new(5);
        let d = Duration::from_millis(200);
        assert!(!w.idle_for(6, d, t0));
        assert!(!w.idle_for(6, d, t0 + Duration::from_millis(150)));
        assert!(w.idle_for(6, d, t0 + Duration::from_millis(250)));
        assert!(!w.idle_for(7, d, t0 + Duration::from_millis(300)));
        w.restart(t0 + Duration::from_millis(600));
        assert!(!w.idle_for(7, d, t0 + Duration::from_millis(700)));
        assert!(w.idle_for(7, d, t0 + Duration::from_millis(800)));
    }
}
