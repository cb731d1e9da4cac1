//! Parallel leg I/O from the calling thread through io_uring: the shares of
//! one request (a write to every leg, a flush of every leg) are submitted
//! together and waited for with one system call, so no thread hand-off and
//! no wake-up of a worker is paid per request.
//!
//! Each thread owns its ring (made on first use). Where io_uring is not
//! available (an old kernel, `kernel.io_uring_disabled`, a container's
//! seccomp filter), [`available`] says so once and callers use their worker
//! threads instead. `MDFUSE_IO_URING=off` in the environment turns it off
//! (to compare, or to test the worker threads).

use super::leg::{Leg, LegError};
use io_uring::{opcode, types, IoUring};
use std::cell::RefCell;
use std::sync::OnceLock;

/// Entries of each thread's ring: more than the legs of any array, so one
/// request's shares always fit in one submission.
const RING_ENTRIES: u32 = 64;

/// One share of a request.
pub enum LegOp<'a> {
    /// Write all of `buf` at byte `offset` of the leg; `durable`: on the
    /// leg's stable storage before it completes (RWF_DSYNC).
    Write {
        leg: &'a Leg,
        buf: &'a [u8],
        offset: u64,
        durable: bool,
    },
    /// Fill `buf` from byte `offset` of the leg (see [`LegOp::read`]).
    Read {
        leg: &'a Leg,
        buf: ReadBuf<'a>,
        offset: u64,
    },
    /// fdatasync the leg. The caller holds the leg's
    /// [`FlushGuard`](super::leg::FlushGuard) and settles the result.
    SyncData { leg: &'a Leg },
}

/// The buffer a read fills: the unique borrow of `&'a mut [u8]`, kept as a
/// pointer so that a list of operations can be handed over as `&[LegOp]`.
pub struct ReadBuf<'a> {
    ptr: *mut u8,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [u8]>,
}

impl<'a> LegOp<'a> {
    /// A read of `buf.len()` bytes at `offset` into `buf`.
    pub fn read(leg: &'a Leg, buf: &'a mut [u8], offset: u64) -> LegOp<'a> {
        LegOp::Read {
            leg,
            buf: ReadBuf {
                ptr: buf.as_mut_ptr(),
                len: buf.len(),
                _borrow: std::marker::PhantomData,
            },
            offset,
        }
    }

    fn leg(&self) -> &Leg {
        match self {
            LegOp::Write { leg, .. } | LegOp::Read { leg, .. } | LegOp::SyncData { leg } => leg,
        }
    }

    /// Does the operation with a plain system call (after a short transfer,
    /// or when the ring cannot take it).
    pub fn run_blocking(&self) -> Result<(), LegError> {
        match self {
            LegOp::Write {
                leg,
                buf,
                offset,
                durable,
            } => {
                if *durable {
                    leg.write_at_durable(buf, *offset)
                } else {
                    leg.write_at(buf, *offset)
                }
            }
            LegOp::Read { leg, buf, offset } => {
                // SAFETY: the operation holds the only borrow of this
                // buffer for 'a (see ReadBuf), and nothing else runs on it.
                let slice = unsafe { std::slice::from_raw_parts_mut(buf.ptr, buf.len) };
                leg.read_at(slice, *offset)
            }
            LegOp::SyncData { leg } => leg.fdatasync(),
        }
    }
}

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

fn new_ring() -> std::io::Result<IoUring> {
    // One thread submits and reaps. Not DEFER_TASKRUN: with it, the kernel
    // can leave the release of a finished request (one a worker ran, an
    // fsync say) to the ring's thread's next wait on the ring, and until
    // then the request keeps its leg's file open and the leg's lock held.
    // A FUSE thread can sit idle for minutes, so a removed leg stayed
    // locked and its re-add was refused. The plain ring was no slower in
    // A/B runs.
    IoUring::builder()
        .setup_single_issuer()
        .build(RING_ENTRIES)
        .or_else(|_| IoUring::new(RING_ENTRIES))
}

/// Whether this process can use io_uring; probed once (a ring is made and
/// a no-op goes through it), the answer logged.
pub fn available() -> bool {
    static PROBE: OnceLock<bool> = OnceLock::new();
    *PROBE.get_or_init(|| {
        if std::env::var("MDFUSE_IO_URING").is_ok_and(|v| v == "off" || v == "0") {
            log::info!(
                "io_uring is turned off (MDFUSE_IO_URING); legs are written in parallel by worker threads"
            );
            return false;
        }
        let probe = || -> std::io::Result<()> {
            let mut ring = new_ring()?;
            let nop = opcode::Nop::new().build();
            // SAFETY: a no-op references no memory.
            unsafe { ring.submission().push(&nop) }
                .map_err(|_| std::io::Error::other("submission queue full"))?;
            ring.submit_and_wait(1)?;
            Ok(())
        };
        match probe() {
            Ok(()) => {
                log::debug!("io_uring available: legs are written in parallel from each request's thread");
                true
            }
            Err(e) => {
                log::info!(
                    "io_uring is not available ({e}); legs are written in parallel by worker threads"
                );
                false
            }
        }
    })
}

/// Runs every operation of `ops` at once and calls `done(index, result)` for
/// each when it has finished (in completion order). Returns only after every
/// operation has finished, so the buffers the operations borrow are free
/// again. Falls back to doing the operations one by one when the ring cannot
/// be used (see [`available`]).
pub fn run_all<'a>(ops: &[LegOp<'a>], mut done: impl FnMut(usize, Result<(), LegError>)) {
    let ran = with_ring(|ring| {
        let mut flight = Flight::default();
        for (i, op) in ops.iter().enumerate() {
            if !flight.push(ring, op, i) {
                done(i, op.run_blocking());
            }
        }
        // One wait for all of them: the shares take about as long each.
        flight.reap_all(ring, ops, &mut done);
    });
    if !ran {
        for (i, op) in ops.iter().enumerate() {
            done(i, op.run_blocking());
        }
    }
}

/// Like [`run_all`], with the operations handed over in stages: each stage
/// that `next_stage` yields goes to the kernel at once, so its I/O runs while
/// `next_stage` prepares the next one (a large write copies its next piece
/// into place). `done(index, result)` numbers the operations across stages
/// in the order they were yielded. Returns only after every operation has
/// finished.
pub fn run_staged<'a, S>(
    mut next_stage: impl FnMut() -> Option<S>,
    mut done: impl FnMut(usize, Result<(), LegError>),
) where
    S: IntoIterator<Item = LegOp<'a>>,
{
    let mut ops: Vec<LegOp<'a>> = Vec::new();
    let ran = with_ring(|ring| {
        let mut flight = Flight::default();
        while let Some(stage) = next_stage() {
            let first = ops.len();
            ops.extend(stage);
            for (i, op) in ops.iter().enumerate().skip(first) {
                if !flight.push(ring, op, i) {
                    done(i, op.run_blocking());
                }
            }
            // Hand the stage over without waiting: the next one is being
            // prepared meanwhile.
            submit(ring, 0);
        }
        flight.reap_all(ring, &ops, &mut done);
    });
    if !ran {
        // Without a ring, stage by stage and one operation at a time.
        while let Some(stage) = next_stage() {
            let first = ops.len();
            ops.extend(stage);
            for (i, op) in ops.iter().enumerate().skip(first) {
                done(i, op.run_blocking());
            }
        }
    }
}

/// Runs `f` with this thread's ring (made on first use); false when there
/// is none (io_uring unavailable, or the ring cannot be made).
fn with_ring(f: impl FnOnce(&mut IoUring)) -> bool {
    available()
        && RING.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                match new_ring() {
                    Ok(r) => *slot = Some(r),
                    Err(e) => {
                        log::warn!("cannot make an io_uring for this thread: {e}");
                        return false;
                    }
                }
            }
            f(slot.as_mut().expect("ring just made"));
            true
        })
}

/// The operations of one call that are in the ring, by index.
#[derive(Default)]
struct Flight {
    in_flight: usize,
}

impl Flight {
    /// Queues `op` (known to the completions as `index`); false when the
    /// ring cannot take it and the caller must run it itself.
    fn push(&mut self, ring: &mut IoUring, op: &LegOp<'_>, index: usize) -> bool {
        // A leg without a descriptor (in memory, or a network leg) is run
        // by the caller.
        let Some(fd) = op.leg().raw_fd().map(types::Fd) else {
            return false;
        };
        let entry = match *op {
            LegOp::Write {
                buf,
                offset,
                durable,
                ..
            } if buf.len() <= u32::MAX as usize => {
                opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
                    .offset(offset)
                    .rw_flags(if durable { libc::RWF_DSYNC } else { 0 })
                    .build()
            }
            LegOp::Read {
                ref buf, offset, ..
            } if buf.len <= u32::MAX as usize => opcode::Read::new(fd, buf.ptr, buf.len as u32)
                .offset(offset)
                .build(),
            LegOp::Write { .. } | LegOp::Read { .. } => return false,
            LegOp::SyncData { .. } => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(index as u64);
        // SAFETY: the buffer an operation points to is borrowed for 'a by
        // the caller's operation list, which outlives the call; every
        // pushed entry is reaped (reap_all) before the call returns.
        if unsafe { ring.submission().push(&entry) }.is_err() {
            // Queue full: hand over what is queued, then this one fits.
            submit(ring, 0);
            // SAFETY: as above.
            if unsafe { ring.submission().push(&entry) }.is_err() {
                return false;
            }
        }
        self.in_flight += 1;
        true
    }

    /// Waits for every queued operation; `ops[index]` is the operation
    /// pushed as `index`.
    fn reap_all(
        &mut self,
        ring: &mut IoUring,
        ops: &[LegOp<'_>],
        done: &mut impl FnMut(usize, Result<(), LegError>),
    ) {
        while self.in_flight > 0 {
            submit(ring, self.in_flight);
            for cqe in ring.completion() {
                self.in_flight -= 1;
                let i = cqe.user_data() as usize;
                done(i, finish(&ops[i], cqe.result()));
            }
        }
    }
}

/// The outcome of `op` from its completion's result.
fn finish(op: &LegOp<'_>, res: i32) -> Result<(), LegError> {
    // What the ring did, in the leg's counters (a plain call's rest counts
    // itself).
    if res >= 0 {
        match op {
            LegOp::Read { leg, .. } => leg.io_stats().count_read(res as u64),
            LegOp::Write { leg, .. } => leg.io_stats().count_write(res as u64),
            LegOp::SyncData { leg } => leg.io_stats().count_flush(),
        }
    }
    match (op, res) {
        (_, r) if r < 0 => Err(failure(op, -r)),
        (
            LegOp::Write {
                leg,
                buf,
                offset,
                durable,
            },
            n,
        ) if (n as usize) < buf.len() => {
            // A short write (rare: a signal, a full filesystem): finish it
            // with a plain write, which names any error.
            let n = n as usize;
            if *durable {
                leg.write_at_durable(&buf[n..], offset + n as u64)
            } else {
                leg.write_at(&buf[n..], offset + n as u64)
            }
        }
        (LegOp::Read { leg, buf, offset }, n) if (n as usize) < buf.len => {
            // A short read: the rest with a plain read, which names the end
            // of the leg if that is what it met.
            let n = n as usize;
            // SAFETY: as in run_blocking; the kernel is done with it.
            let rest = unsafe { std::slice::from_raw_parts_mut(buf.ptr.add(n), buf.len - n) };
            leg.read_at(rest, offset + n as u64)
        }
        _ => Ok(()),
    }
}

/// Submits what is queued and waits for at least `want` completions,
/// retrying when interrupted.
fn submit(ring: &mut IoUring, want: usize) {
    loop {
        match ring.submit_and_wait(want) {
            Ok(_) => return,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) =>
            {
                // EBUSY/EAGAIN: completions must be reaped first, or the
                // kernel is short of memory; both pass.
                if want == 0 || !ring.completion().is_empty() {
                    return;
                }
                std::thread::yield_now();
            }
            Err(e) => {
                // io_uring_enter itself failed (not an operation): nothing
                // more can be learned here; retrying is all that is left,
                // and a ring that never answers would hang the request, so
                // say so loudly.
                log::error!("io_uring_enter failed: {e}; retrying");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

fn failure(op: &LegOp<'_>, errno: i32) -> LegError {
    let source = std::io::Error::from_raw_os_error(errno);
    match *op {
        LegOp::Write {
            leg, buf, offset, ..
        } => leg.io_error("write", offset, buf.len(), source),
        LegOp::Read {
            leg,
            ref buf,
            offset,
        } => leg.io_error("read", offset, buf.len, source),
        LegOp::SyncData { leg } => LegError::Sync {
            path: leg.path().to_owned(),
            source,
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::io::aligned::AlignedBuf;
    use crate::io::leg::IoMode;

    /// `n` zeroed 1 MiB leg files in `dir`, opened O_DIRECT (also for the
    /// fan-out's tests).
    pub(crate) fn direct_legs(dir: &std::path::Path, n: usize) -> Vec<Leg> {
        (0..n)
            .map(|i| {
                let p = dir.join(format!("leg{i}"));
                std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
                Leg::open(&p, IoMode::Direct, true, true).unwrap()
            })
            .collect()
    }

    #[test]
    fn writes_and_syncs_reach_every_leg() {
        let dir = tempfile::tempdir().unwrap();
        let legs = direct_legs(dir.path(), 3);
        let mut buf = AlignedBuf::new(8192);
        buf.as_mut_slice().fill(0x5a);
        let data = &buf.as_slice()[..8192];
        let ops: Vec<LegOp> = legs
            .iter()
            .map(|leg| LegOp::Write {
                leg,
                buf: data,
                offset: 4096,
                durable: true,
            })
            .chain(legs.iter().map(|leg| LegOp::SyncData { leg }))
            .collect();
        let mut seen = vec![false; ops.len()];
        run_all(&ops, |i, r| {
            r.unwrap();
            seen[i] = true;
        });
        assert!(seen.iter().all(|&s| s));
        for leg in &legs {
            let mut back = AlignedBuf::new(8192);
            leg.read_at(&mut back.as_mut_slice()[..8192], 4096).unwrap();
            assert!(back.as_slice()[..8192].iter().all(|&b| b == 0x5a));
        }
    }

    #[test]
    fn staged_operations_are_numbered_across_stages_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let legs = direct_legs(dir.path(), 2);
        let mut buf = AlignedBuf::new(3 * 8192);
        let mut pieces = buf.as_mut_slice()[..3 * 8192].chunks_mut(8192).enumerate();
        let mut stages = 0;
        let mut next_stage = || {
            let (k, piece) = pieces.next()?;
            stages += 1;
            // Prepared only now, after the stages before it were submitted.
            piece.fill(0x10 + k as u8);
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
        let mut seen = vec![0u32; 6];
        run_staged(&mut next_stage, |i, r| {
            r.unwrap();
            seen[i] += 1;
        });
        assert_eq!(stages, 3);
        assert_eq!(
            seen,
            vec![1; 6],
            "every operation reported once, by its index"
        );
        for leg in &legs {
            let mut back = AlignedBuf::new(3 * 8192);
            leg.read_at(&mut back.as_mut_slice()[..3 * 8192], 0)
                .unwrap();
            for (k, piece) in back.as_slice()[..3 * 8192].chunks(8192).enumerate() {
                assert!(piece.iter().all(|&b| b == 0x10 + k as u8), "piece {k}");
            }
        }
    }

    #[test]
    fn a_failed_share_is_reported_with_its_leg() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leg");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        // Opened read-only: the write fails with EBADF, named with the leg.
        let leg = Leg::open(&p, IoMode::Buffered, false, false).unwrap();
        let data = [1u8; 512];
        let ops = [LegOp::Write {
            leg: &leg,
            buf: &data,
            offset: 0,
            durable: false,
        }];
        let mut err = None;
        run_all(&ops, |_, r| err = r.err());
        let msg = err.expect("the write must fail").to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
    }
}
