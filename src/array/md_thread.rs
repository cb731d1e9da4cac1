//! The array's own thread, as md's per-array thread (`md_register_thread`):
//! it wakes every tick and runs what the array gave it as a closure (for a
//! running array: fail legs whose failure could not be recorded, restart an
//! owed resync or recovery, safe mode, and bring faulty remote legs back),
//! until it is stopped or the closure says the array is gone.

use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the thread looks (md wakes its thread on events and timers;
/// a short poll is simpler and cheap).
pub(super) const TICK: Duration = Duration::from_millis(50);

pub(super) struct MdThread {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl MdThread {
    /// Starts the thread `name`, running `work` every `tick` until
    /// [`stop`](Self::stop) or until `work` returns false.
    pub(super) fn start(
        name: &str,
        tick: Duration,
        mut work: impl FnMut() -> bool + Send + 'static,
    ) -> std::io::Result<MdThread> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let handle = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || loop {
                    {
                        let mut stopped = stop.0.lock();
                        if !*stopped {
                            stop.1.wait_for(&mut stopped, tick);
                        }
                        if *stopped {
                            return;
                        }
                    }
                    if !work() {
                        return;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn runs_until_its_work_says_stop() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let mut t = MdThread::start("t", Duration::from_millis(1), move || {
            r.fetch_add(1, Ordering::SeqCst) < 2
        })
        .expect("spawn");
        let h = t.handle.take().expect("handle");
        h.join().expect("join");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn stop_ends_it() {
        let mut t = MdThread::start("t", Duration::from_secs(3600), || true).expect("spawn");
        let began = std::time::Instant::now();
        t.stop();
        assert!(began.elapsed() < Duration::from_secs(60));
    }
}
