//! A pool of I/O threads per leg, fed over a crossbeam channel. The engine
//! hands them the legs' shares of a write (or a flush) and waits on one
//! refcounted completion for the whole request.

use crate::io::completion::{Completion, OpFailure};
use crate::io::leg::Leg;
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A borrowed buffer handed to a worker. The submitter keeps the buffer alive
/// and untouched until the job's completion has fired; that is what makes
/// sending the pointer sound.
pub struct SharedBuf {
    ptr: *const u8,
    len: usize,
}

// SAFETY: see the type's doc: the submitter outlives the job and does not
// write the buffer while the job runs.
unsafe impl Send for SharedBuf {}

impl SharedBuf {
    pub fn new(buf: &[u8]) -> Self {
        SharedBuf {
            ptr: buf.as_ptr(),
            len: buf.len(),
        }
    }

    /// # Safety
    /// Only while the submitter waits for the job's completion.
    unsafe fn as_slice(&self) -> &[u8] {
        std::slice::from_raw_parts(self.ptr, self.len)
    }
}

pub enum Job {
    Write {
        buf: SharedBuf,
        offset: u64,
        /// On the leg's stable storage before it completes (RWF_DSYNC).
        durable: bool,
        done: Arc<Completion>,
    },
    /// fdatasync; the submitter holds the leg's flush guard.
    Sync { done: Arc<Completion> },
}

pub struct LegWorkers {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    /// The leg's slot, which names it in failures.
    slot: usize,
}

impl LegWorkers {
    /// Starts `count` threads doing `leg`'s I/O; `slot` names the leg in failures.
    pub fn start(leg: Arc<Leg>, slot: usize, count: usize) -> std::io::Result<LegWorkers> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut threads = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let rx: Receiver<Job> = rx.clone();
            let leg = leg.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("leg{slot}-io{i}"))
                    .spawn(move || {
                        for job in rx {
                            run_job(&leg, slot, job);
                        }
                    })?,
            );
        }
        Ok(LegWorkers {
            tx: Some(tx),
            threads,
            slot,
        })
    }

    /// No threads: for when every share is done through io_uring by the
    /// request's own thread.
    pub fn none(slot: usize) -> LegWorkers {
        LegWorkers {
            tx: None,
            threads: Vec::new(),
            slot,
        }
    }

    pub fn submit(&self, job: Job) {
        match &self.tx {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    // Only after shutdown; fail the job rather than lose it.
                    fail_job(e.into_inner(), self.slot, "leg workers stopped");
                }
            }
            None => fail_job(job, self.slot, "the leg has no worker threads"),
        }
    }
}

impl Drop for LegWorkers {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn run_job(leg: &Leg, slot: usize, job: Job) {
    match job {
        Job::Write {
            buf,
            offset,
            durable,
            done,
        } => {
            // SAFETY: the submitter waits on `done` before touching the buffer.
            let data = unsafe { buf.as_slice() };
            let written = if durable {
                leg.write_at_durable(data, offset)
            } else {
                leg.write_at(data, offset)
            };
            done.finish(written.map_err(|e| OpFailure {
                target: slot,
                errno: e.errno(),
                what: e.to_string(),
            }));
        }
        Job::Sync { done } => {
            done.finish(leg.fdatasync().map_err(|e| OpFailure {
                target: slot,
                errno: e.errno(),
                what: e.to_string(),
            }));
        }
    }
}

fn fail_job(job: Job, slot: usize, why: &str) {
    let done = match job {
        Job::Write { done, .. } | Job::Sync { done } => done,
    };
    done.finish(Err(OpFailure {
        target: slot,
        what: why.to_string(),
        errno: libc::EIO,
    }));
}
