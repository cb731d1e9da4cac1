//! The one fan-out below the RAID1 engine: runs the legs' shares of a
//! request (a write on every leg, a flush of every leg, the pieces of a
//! split read, a sync's batch) at once and waits for all of them.
//!
//! How is chosen once, when the fan-out is made: through the calling
//! thread's io_uring where the kernel allows it (see [`uring::available`]),
//! else on a pool of worker threads, the calling thread doing the first
//! share itself. The engine asks nothing more; both ways give the same
//! results, by the same indexes, and return only when every operation has
//! finished, so the buffers the operations borrow are free again.

use super::leg::LegError;
use super::uring::{self, LegOp};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Runs a request's leg operations in parallel (see the module's doc).
pub struct FanOut {
    /// None: io_uring.
    pool: Option<Pool>,
}

impl FanOut {
    /// io_uring where available, else a pool of `threads` worker threads.
    pub fn new(threads: usize) -> std::io::Result<FanOut> {
        let pool = if uring::available() {
            None
        } else {
            Some(Pool::start(threads.max(1))?)
        };
        Ok(FanOut { pool })
    }

    /// A fan-out on worker threads whatever the kernel offers (tests).
    pub fn with_threads(threads: usize) -> std::io::Result<FanOut> {
        Ok(FanOut {
            pool: Some(Pool::start(threads.max(1))?),
        })
    }

    /// Runs every operation of `ops` at once and calls `done(index, result)`
    /// for each (in completion order). Returns once all have finished.
    pub fn run_all<'a>(
        &self,
        ops: &[LegOp<'a>],
        mut done: impl FnMut(usize, Result<(), LegError>),
    ) {
        let Some(pool) = &self.pool else {
            return uring::run_all(ops, done);
        };
        let Some((first, others)) = ops.split_first() else {
            return;
        };
        let batch = Batch::new();
        for (k, op) in others.iter().enumerate() {
            pool.submit(op, k + 1, &batch);
        }
        let r = first.run_blocking();
        done(0, r);
        // The workers use `ops` only until this returns.
        batch.wait_and_drain(&mut done);
    }

    /// Like [`FanOut::run_all`], with the operations handed over in stages:
    /// each stage `next_stage` yields goes out at once, so its I/O runs
    /// while `next_stage` prepares the next. `done(index, result)` numbers
    /// the operations across stages in the order they were yielded.
    pub fn run_staged<'a, S>(
        &self,
        mut next_stage: impl FnMut() -> Option<S>,
        mut done: impl FnMut(usize, Result<(), LegError>),
    ) where
        S: IntoIterator<Item = LegOp<'a>>,
    {
        let Some(pool) = &self.pool else {
            return uring::run_staged(next_stage, done);
        };
        // Each stage in a box of its own: the workers hold pointers to the
        // operations, which must not move while they run.
        let mut stages: Vec<Box<[LegOp<'a>]>> = Vec::new();
        let batch = Batch::new();
        let mut index = 0;
        while let Some(stage) = next_stage() {
            stages.push(stage.into_iter().collect());
            let ops = stages.last().map(|s| &s[..]).unwrap_or(&[]);
            for op in ops {
                pool.submit(op, index, &batch);
                index += 1;
            }
        }
        batch.wait_and_drain(&mut done);
        drop(stages);
    }
}

/// An operation's index and how it ended.
type Outcome = (usize, Result<(), LegError>);

/// What the operations of one call report, and how many are still out.
struct Batch {
    state: Mutex<(usize, Vec<Outcome>)>,
    finished: Condvar,
}

impl Batch {
    fn new() -> Arc<Batch> {
        Arc::new(Batch {
            state: Mutex::new((0, Vec::new())),
            finished: Condvar::new(),
        })
    }

    fn finish(&self, index: usize, r: Result<(), LegError>) {
        let mut st = self.state.lock();
        st.0 -= 1;
        st.1.push((index, r));
        if st.0 == 0 {
            self.finished.notify_all();
        }
    }

    /// Waits until every submitted operation has finished, then reports
    /// each.
    fn wait_and_drain(&self, done: &mut impl FnMut(usize, Result<(), LegError>)) {
        let results = {
            let mut st = self.state.lock();
            while st.0 > 0 {
                self.finished.wait(&mut st);
            }
            std::mem::take(&mut st.1)
        };
        for (i, r) in results {
            done(i, r);
        }
    }
}

/// One operation handed to a worker.
struct Job {
    /// Points into the submitter's operation list, which stays in place
    /// (and its buffers untouched) until the batch has finished: the
    /// submitter waits for that before it returns.
    op: *const LegOp<'static>,
    index: usize,
    batch: Arc<Batch>,
}

// SAFETY: see `Job::op`: the submitter outlives the job, and an operation is
// run by one worker only.
unsafe impl Send for Job {}

/// Worker threads shared by every leg of an array.
struct Pool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn start(count: usize) -> std::io::Result<Pool> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let rx: Receiver<Job> = rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("leg-io{i}"))
                    .spawn(move || {
                        for job in rx {
                            // SAFETY: see `Job::op`.
                            let op = unsafe { &*job.op };
                            job.batch.finish(job.index, op.run_blocking());
                        }
                    })?,
            );
        }
        Ok(Pool {
            tx: Some(tx),
            threads,
        })
    }

    fn submit(&self, op: &LegOp<'_>, index: usize, batch: &Arc<Batch>) {
        batch.state.lock().0 += 1;
        let job = Job {
            // The lifetime is erased: see `Job::op` for why it holds.
            op: (op as *const LegOp<'_>).cast::<LegOp<'static>>(),
            index,
            batch: batch.clone(),
        };
        let sent = match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| e.into_inner()),
            None => Err(job),
        };
        if let Err(job) = sent {
            // Only after shutdown, which waits for the fan-out's users: run
            // it here rather than lose it.
            // SAFETY: see `Job::op`.
            let op = unsafe { &*job.op };
            job.batch.finish(job.index, op.run_blocking());
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::aligned::AlignedBuf;
    use crate::io::leg::{IoMode, Leg};
    use crate::io::uring::tests::direct_legs as legs;

    /// Both ways (ring, threads) run every operation once, report each by
    /// its index, and leave the data on every leg.
    #[test]
    fn every_operation_runs_once_and_lands_both_ways() {
        for fan in [FanOut::new(2).unwrap(), FanOut::with_threads(3).unwrap()] {
            let dir = tempfile::tempdir().unwrap();
            let legs = legs(dir.path(), 3);
            let mut buf = AlignedBuf::new(3 * 8192);
            let mut pieces = buf.as_mut_slice()[..3 * 8192].chunks_mut(8192).enumerate();
            let mut next_stage = || {
                let (k, piece) = pieces.next()?;
                piece.fill(0x20 + k as u8);
                let piece: &[u8] = piece;
                Some(
                    legs.iter()
                        .map(|leg| LegOp::Write {
                            leg,
                            buf: piece,
                            offset: (k * 8192) as u64,
                            durable: false,
                        })
                        .collect::<Vec<_>>(),
                )
            };
            let mut seen = vec![0u32; 9];
            fan.run_staged(&mut next_stage, |i, r| {
                r.unwrap();
                seen[i] += 1;
            });
            assert_eq!(seen, vec![1; 9]);
            let syncs: Vec<LegOp> = legs.iter().map(|leg| LegOp::SyncData { leg }).collect();
            let mut synced = vec![0u32; 3];
            fan.run_all(&syncs, |i, r| {
                r.unwrap();
                synced[i] += 1;
            });
            assert_eq!(synced, vec![1; 3]);
            for leg in &legs {
                let mut back = AlignedBuf::new(3 * 8192);
                leg.read_at(&mut back.as_mut_slice()[..3 * 8192], 0)
                    .unwrap();
                for (k, piece) in back.as_slice()[..3 * 8192].chunks(8192).enumerate() {
                    assert!(piece.iter().all(|&b| b == 0x20 + k as u8), "piece {k}");
                }
            }
        }
    }

    #[test]
    fn a_failed_operation_is_reported_by_its_index_on_threads() {
        let dir = tempfile::tempdir().unwrap();
        let good = legs(dir.path(), 1).pop().unwrap();
        let p = dir.path().join("ro");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let ro = Leg::open(&p, IoMode::Buffered, false, false).unwrap();
        let data = AlignedBuf::new(4096);
        let ops = [
            LegOp::Write {
                leg: &good,
                buf: &data.as_slice()[..4096],
                offset: 0,
                durable: false,
            },
            LegOp::Write {
                leg: &ro,
                buf: &data.as_slice()[..4096],
                offset: 0,
                durable: false,
            },
        ];
        let fan = FanOut::with_threads(2).unwrap();
        let mut failed = Vec::new();
        fan.run_all(&ops, |i, r| {
            if r.is_err() {
                failed.push(i);
            }
        });
        assert_eq!(failed, vec![1]);
    }
}
