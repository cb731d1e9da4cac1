//! A refcounted completion: the count of outstanding operations of one request.
//!
//! The submitter arms it with the number of operations it will issue; every
//! operation calls [`Completion::finish`] once. The last one to finish wakes the
//! waiters. The first error is kept, so a waiter learns what failed without any
//! list of operations being kept anywhere.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Where one failed operation went wrong: a human description of the target
/// (leg path, device and sector) and the OS error.
#[derive(Debug, Clone)]
pub struct OpFailure {
    /// Index of the target (a leg's slot, or a block run's index); lets the
    /// caller decide what to do with the failed party.
    pub target: usize,
    pub what: String,
    pub errno: i32,
}

impl std::fmt::Display for OpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.what,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

#[derive(Debug)]
pub struct Completion {
    outstanding: AtomicUsize,
    failures: Mutex<Vec<OpFailure>>,
    done: Mutex<bool>,
    wake: Condvar,
}

impl Completion {
    /// A completion expecting `count` calls to `finish`. A count of zero is
    /// already complete.
    pub fn new(count: usize) -> Arc<Self> {
        Arc::new(Completion {
            outstanding: AtomicUsize::new(count),
            failures: Mutex::new(Vec::new()),
            done: Mutex::new(count == 0),
            wake: Condvar::new(),
        })
    }

    /// Records the end of one operation. The last caller wakes every waiter.
    pub fn finish(&self, result: Result<(), OpFailure>) {
        if let Err(failure) = result {
            self.failures.lock().push(failure);
        }
        let before = self.outstanding.fetch_sub(1, Ordering::AcqRel);
        assert!(
            before > 0,
            "Completion::finish called more often than armed"
        );
        if before == 1 {
            let mut done = self.done.lock();
            *done = true;
            self.wake.notify_all();
        }
    }

    /// Blocks until every operation has finished; returns the failures, if any.
    pub fn wait(&self) -> Vec<OpFailure> {
        let mut done = self.done.lock();
        while !*done {
            self.wake.wait(&mut done);
        }
        drop(done);
        std::mem::take(&mut *self.failures.lock())
    }

    pub fn is_done(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_count_is_complete() {
        let c = Completion::new(0);
        assert!(c.is_done());
        assert!(c.wait().is_empty());
    }

    #[test]
    fn last_finisher_wakes_waiter_and_errors_are_kept() {
        let c = Completion::new(3);
        let mut handles = Vec::new();
        for i in 0..3 {
            let c = c.clone();
            handles.push(std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(10 * i as u64));
                let r = if i == 1 {
                    Err(OpFailure {
                        target: i,
                        what: format!("op {i}"),
                        errno: libc::EIO,
                    })
                } else {
                    Ok(())
                };
                c.finish(r);
            }));
        }
        let failures = c.wait();
        assert!(c.is_done());
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].target, 1);
        for h in handles {
            h.join().unwrap();
        }
    }
}
