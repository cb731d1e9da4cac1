//! FUSE over io_uring (Linux 6.14+, FUSE 7.42): the kernel hands requests
//! to ring entries the daemon registered on the /dev/fuse fd with
//! `IORING_OP_URING_CMD`, one queue per possible CPU (a request goes to the
//! queue of the CPU its caller runs on; the kernel uses the rings only once
//! every queue has an entry). A reply and the fetch of the next request
//! are one command (`FUSE_IO_URING_CMD_COMMIT_AND_FETCH`), so a request
//! costs one `io_uring_enter` instead of a read() and a writev() on
//! /dev/fuse.
//!
//! Each queue is served by `threads_per_queue` threads; each thread owns a
//! ring and one entry: a 288-byte header buffer (`fuse_uring_req_header`:
//! the `fuse_in_header`/`fuse_out_header`, the opcode's fixed argument,
//! the entry's commit id and payload size) and a page-aligned payload
//! buffer of the negotiated request size (a write's data at its start). A
//! thread runs its request to the end (the legs' I/O included) before it
//! commits the reply, so nothing is in flight when it stops. The requests
//! are decoded and answered here; what they do is [`MountCore`]'s, the
//! same code the /dev/fuse adapter calls. FORGET and INTERRUPT still come
//! on /dev/fuse (fuser's threads).
//!
//! Shutdown: an unmount, an abort (`/sys/fs/fuse/connections/N/abort`) or
//! SIGTERM (which unmounts) stops the kernel's queues; a waiting entry
//! completes with ENOTCONN, a commit after that fails with ENOTCONN (or
//! ENODEV, ECONNABORTED), and the thread ends, dropping its ring before its
//! buffers. A commit the kernel no longer knows (ENOENT: the request went
//! away meanwhile) is logged and the buffers are registered again.

use super::core::{allowed_without_owner, Attr, MountCore, Op, SetAttr};
use crate::array::{PlannedRead, PlannedWrite, ServedArray, MAX_READ_PIECES, MAX_WRITE_TARGETS};
use crate::io::aligned::AlignedBuf;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

// include/uapi/linux/fuse.h
const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
/// `fuse_uring_req_header`: in_out[128], op_in[128], fuse_uring_ent_in_out.
const HEADER_LEN: usize = 128 + 128 + 32;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
/// The least payload the kernel accepts (FUSE_MIN_READ_BUFFER).
const MIN_PAYLOAD: usize = 8192;

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_SETATTR: u32 = 4;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_STATFS: u32 = 17;
const FUSE_RELEASE: u32 = 18;
const FUSE_FSYNC: u32 = 20;
const FUSE_GETXATTR: u32 = 22;
const FUSE_LISTXATTR: u32 = 23;
const FUSE_FLUSH: u32 = 25;
const FUSE_OPENDIR: u32 = 27;
const FUSE_READDIR: u32 = 28;
const FUSE_RELEASEDIR: u32 = 29;
const FUSE_FSYNCDIR: u32 = 30;

const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FUSE_WRITE_CACHE: u32 = 1 << 0;

/// The ring transport's failures.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("cannot make an io_uring with 128-byte entries for queue {qid}: {source}")]
    Setup { qid: u16, source: std::io::Error },
    #[error("the kernel refused ring entry registration on queue {qid}: {source}")]
    Register { qid: u16, source: std::io::Error },
    #[error("cannot start the thread of queue {qid}: {source}")]
    Thread { qid: u16, source: std::io::Error },
    #[error("cannot duplicate the /dev/fuse descriptor: {0}")]
    Dup(std::io::Error),
}

impl RingError {
    /// The kernel refused an entry: it then turns the rings off for the
    /// connection and serves on /dev/fuse. After any other failure some
    /// queue may have no entry, and the kernel holds every request until
    /// all have one: the mount cannot be served.
    pub fn kernel_falls_back(&self) -> bool {
        matches!(self, RingError::Register { .. })
    }
}

/// Why FUSE over io_uring cannot be used here, if it cannot: checked
/// before the mount (the module parameter, io_uring itself).
pub fn support() -> Result<(), String> {
    const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";
    match std::fs::read_to_string(PARAM) {
        Err(_) => {
            return Err(format!(
                "this kernel's FUSE has no io_uring support ({PARAM} does not exist): it needs \
                 Linux 6.14 or later built with CONFIG_FUSE_IO_URING=y"
            ))
        }
        Ok(v) if v.trim() != "Y" && v.trim() != "1" => {
            return Err(format!(
                "FUSE over io_uring is switched off in the kernel ({PARAM} is {}): as root, \
                 `echo Y > {PARAM}` (mdfuse never changes it)",
                v.trim()
            ))
        }
        Ok(_) => {}
    }
    if let Err(e) = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(4) {
        let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .map(|v| format!(" (kernel.io_uring_disabled = {})", v.trim()))
            .unwrap_or_default();
        return Err(format!(
            "io_uring is not available to mdfuse ({e}): the sysctl kernel.io_uring_disabled{sysctl} \
             or a seccomp filter (container) forbids it, or the kernel is too old"
        ));
    }
    Ok(())
}

/// The queues: one per possible CPU (the kernel's `num_possible_cpus()`).
pub fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| count_cpu_list(s.trim()))
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// The number of CPUs in a list such as "0-3,8,10-11".
fn count_cpu_list(s: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in s.split(',').filter(|p| !p.is_empty()) {
        n = n.checked_add(match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)?.checked_add(1)?
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        })?;
    }
    (n > 0).then_some(n)
}

/// Entries per ring thread (see [`RingConfig::entries_per_thread`]).
pub const ENTRIES_PER_THREAD: usize = 2;

/// How the rings are laid out.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    pub queues: usize,
    pub threads_per_queue: usize,
    /// Ring entries each thread registers: a thread keeps this many
    /// requests at once (reads of the image in flight on the legs while
    /// others come in).
    pub entries_per_thread: usize,
    /// Each entry's payload buffer: at least the kernel's largest request.
    pub payload: usize,
    /// The mount is `allow_other` (else only its owner is served).
    pub allow_other: bool,
}

impl RingConfig {
    /// `threads` spread over the queues (at least one each); payload from
    /// what INIT negotiated, as the kernel sizes it.
    pub fn new(threads: usize, max_write: u32, max_readahead: u32, allow_other: bool) -> Self {
        let queues = possible_cpus().max(1);
        let page = 4096usize;
        let max_pages = (max_write.max(max_readahead).max(1) as usize).div_ceil(page);
        let payload = MIN_PAYLOAD
            .max(max_write as usize)
            .max(max_pages.saturating_mul(page));
        RingConfig {
            queues,
            threads_per_queue: threads.div_ceil(queues).max(1),
            entries_per_thread: ENTRIES_PER_THREAD,
            payload,
            allow_other,
        }
    }
}

/// What the rings did, counted as they go.
#[derive(Debug, Default)]
pub struct RingCounts {
    /// Requests answered on the rings.
    pub served: AtomicU64,
    /// Reads and writes of the image whose legs' I/O ran in the ring.
    pub reads_in_ring: AtomicU64,
    pub writes_in_ring: AtomicU64,
    /// The first request with its legs' I/O in the ring was logged.
    announced: std::sync::atomic::AtomicBool,
}

/// [`RingCounts`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingTotals {
    pub served: u64,
    pub reads_in_ring: u64,
    pub writes_in_ring: u64,
}

impl RingCounts {
    pub fn totals(&self) -> RingTotals {
        RingTotals {
            served: self.served.load(Ordering::Relaxed),
            reads_in_ring: self.reads_in_ring.load(Ordering::Relaxed),
            writes_in_ring: self.writes_in_ring.load(Ordering::Relaxed),
        }
    }

    fn started_in_ring(&self, write: bool) {
        let n = if write {
            &self.writes_in_ring
        } else {
            &self.reads_in_ring
        };
        n.fetch_add(1, Ordering::Relaxed);
        if !self.announced.swap(true, Ordering::Relaxed) {
            log::info!("FUSE ring: reads and writes of array.img run their legs' I/O in the ring");
        }
    }
}

/// The running ring threads.
pub struct RingTransport {
    threads: Vec<std::thread::JoinHandle<()>>,
    counts: Arc<RingCounts>,
}

impl RingTransport {
    /// What the rings did so far.
    pub fn totals(&self) -> RingTotals {
        self.counts.totals()
    }

    /// Waits for every ring thread (they end when the connection does);
    /// after `grace` without them, `abort` is called once (it ends the
    /// connection) and the wait goes on. Returns what the rings did.
    pub fn join(self, grace: Duration, abort: impl FnOnce()) -> RingTotals {
        let deadline = std::time::Instant::now() + grace;
        while self.threads.iter().any(|t| !t.is_finished()) {
            if std::time::Instant::now() >= deadline {
                abort();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for t in self.threads {
            if t.join().is_err() {
                log::error!("a FUSE ring thread panicked");
            }
        }
        self.counts.totals()
    }
}

/// Starts the ring threads on `fuse_fd` (the session's /dev/fuse, after
/// INIT) and registers every entry. The threads run whatever the outcome
/// of the registration (Err: the kernel keeps /dev/fuse for the requests;
/// the threads end with the connection).
pub fn start<A: ServedArray>(
    core: Arc<MountCore<A>>,
    fuse_fd: std::os::fd::BorrowedFd<'_>,
    cfg: RingConfig,
) -> (RingTransport, Result<(), RingError>) {
    let counts = Arc::new(RingCounts::default());
    let mut transport = RingTransport {
        threads: Vec::new(),
        counts: counts.clone(),
    };
    let fd = match fuse_fd.try_clone_to_owned() {
        Ok(fd) => Arc::new(fd),
        Err(e) => return (transport, Err(RingError::Dup(e))),
    };
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), RingError>>();
    let mut started = 0usize;
    let mut first_err = None;
    'spawn: for q in 0..cfg.queues {
        let Ok(qid) = u16::try_from(q) else {
            break;
        };
        for t in 0..cfg.threads_per_queue {
            let (core, fd, counts, tx) = (core.clone(), fd.clone(), counts.clone(), tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("fuse-ring-{qid}.{t}"))
                .spawn(move || queue_thread(&*core, &fd, qid, cfg, &counts, tx));
            match spawned {
                Ok(h) => {
                    transport.threads.push(h);
                    started += 1;
                }
                Err(source) => {
                    first_err = Some(RingError::Thread { qid, source });
                    break 'spawn;
                }
            }
        }
    }
    drop(tx);
    for _ in 0..started {
        match rx.recv() {
            Ok(Err(e)) if first_err.is_none() => first_err = Some(e),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    (transport, first_err.map_or(Ok(()), Err))
}

/// One entry's buffers. The kernel writes them while this thread is in
/// `io_uring_enter`, never otherwise.
struct Entry {
    header: AlignedBuf,
    payload: AlignedBuf,
    iov: Box<[libc::iovec; 2]>,
}

impl Entry {
    fn new(payload: usize) -> Entry {
        let mut header = AlignedBuf::new(HEADER_LEN);
        let mut payload = AlignedBuf::new(payload);
        let iov = Box::new([
            libc::iovec {
                iov_base: header.as_mut_slice().as_mut_ptr().cast(),
                iov_len: HEADER_LEN,
            },
            libc::iovec {
                iov_base: payload.as_mut_slice().as_mut_ptr().cast(),
                iov_len: payload.capacity(),
            },
        ]);
        Entry {
            header,
            payload,
            iov,
        }
    }
}

/// The 80-byte command of an SQE128: `fuse_uring_cmd_req`.
fn cmd_req(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    c[16..18].copy_from_slice(&qid.to_ne_bytes());
    c
}

/// An SQE's `len` field (which `UringCmd80` does not set): REGISTER wants
/// the iovec count there.
fn with_len(e: squeue::Entry128, len: u32) -> squeue::Entry128 {
    const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
    // SAFETY: Entry128 is repr(C), 128 bytes of plain integers (an
    // io_uring_sqe and its 64-byte extension); `len` is the u32 at byte 24
    // of struct io_uring_sqe.
    let mut bytes: [u8; 128] = unsafe { std::mem::transmute(e) };
    bytes[24..28].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: any bytes are a valid Entry128.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(bytes) }
}

fn register_sqe(fd: &OwnedFd, entry: &Entry, qid: u16) -> squeue::Entry128 {
    let sqe = opcode::UringCmd80::new(types::Fd(fd.as_raw_fd()), FUSE_IO_URING_CMD_REGISTER)
        .cmd(cmd_req(0, qid))
        .addr(Some(entry.iov.as_ptr() as u64))
        .build();
    with_len(sqe, 2)
}

fn commit_sqe(fd: &OwnedFd, commit_id: u64, qid: u16) -> squeue::Entry128 {
    opcode::UringCmd80::new(
        types::Fd(fd.as_raw_fd()),
        FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
    )
    .cmd(cmd_req(commit_id, qid))
    .build()
}

/// Why a thread's loop ended.
fn is_shutdown(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOTCONN | libc::ENODEV | libc::ECONNABORTED | libc::ECANCELED
    )
}

/// The `user_data` of a ring's operations: the entry's index, and which of
/// its operations: its FUSE command (0) or piece k of its legs' read (k + 1).
fn tag(entry: usize, op: usize) -> u64 {
    ((entry as u64) << 8) | (op as u64 & 0xff)
}

fn untag(user_data: u64) -> (usize, usize) {
    ((user_data >> 8) as usize, (user_data & 0xff) as usize)
}

/// A request whose legs' I/O is in the ring.
enum Planned<'c> {
    Read(PlannedRead),
    Write(PlannedWrite<'c>),
}

/// A planned request in flight: each piece's result, what a piece that
/// went well returns, how many are still out.
struct InFlight<'c> {
    plan: Planned<'c>,
    results: SmallVec<[i32; 4]>,
    expect: SmallVec<[i32; 4]>,
    left: usize,
    commit_id: u64,
    unique: u64,
}

impl InFlight<'_> {
    fn went_well(&self) -> bool {
        self.results == self.expect
    }
}

/// One entry and where it stands.
struct Slot<'c> {
    entry: Entry,
    /// A command of this entry is in the kernel (REGISTER, or COMMIT_AND_FETCH).
    live: bool,
    /// Its request's leg I/O, in the ring or waiting to be finished.
    io: Option<InFlight<'c>>,
}

/// What a thread keeps between completions. Field order is drop order: the
/// ring goes before the entries' buffers.
struct Queue<'c, A: ServedArray> {
    core: &'c MountCore<A>,
    fd: &'c OwnedFd,
    qid: u16,
    cfg: RingConfig,
    counts: &'c RingCounts,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    slots: Vec<Slot<'c>>,
    /// Entries holding a request not yet looked at.
    ready: VecDeque<(usize, i32)>,
    /// Entries whose I/O completed with an error or short: finished once
    /// nothing else is in flight (the finish may wait for a range).
    slow: Vec<usize>,
    /// Completions taken from the ring, reused.
    reaped: Vec<(u64, i32)>,
    reply: Reply,
}

fn queue_thread<A: ServedArray>(
    core: &MountCore<A>,
    fd: &OwnedFd,
    qid: u16,
    cfg: RingConfig,
    counts: &RingCounts,
    registered: std::sync::mpsc::Sender<Result<(), RingError>>,
) {
    let entries = cfg.entries_per_thread.max(1);
    let slots: Vec<Slot> = (0..entries)
        .map(|_| Slot {
            entry: Entry::new(cfg.payload),
            live: false,
            io: None,
        })
        .collect();
    // Only this thread submits to and waits on its ring, and it waits
    // whenever it is idle: the kernel's completions (a request for an
    // entry, a leg's I/O) run as this thread's deferred work when it
    // waits, instead of interrupting it (SINGLE_ISSUER, DEFER_TASKRUN;
    // Linux 6.1). Room for every entry's command, its pieces and a commit.
    let most = MAX_READ_PIECES.max(MAX_WRITE_TARGETS);
    let depth = (entries * (most + 2)).next_power_of_two() as u32;
    let ring = match IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(depth)
    {
        Ok(r) => r,
        Err(source) => {
            let _ = registered.send(Err(RingError::Setup { qid, source }));
            return;
        }
    };
    let mut q = Queue {
        core,
        fd,
        qid,
        cfg,
        counts,
        ring,
        slots,
        ready: VecDeque::with_capacity(entries),
        slow: Vec::with_capacity(entries),
        reaped: Vec::with_capacity(depth as usize * 2),
        reply: Reply::default(),
    };
    // REGISTER completes only when a request comes; a refusal completes at
    // once, within the submission.
    let mut refused = None;
    for i in 0..entries {
        if let Err(e) = q.register(i) {
            refused = Some(e);
            break;
        }
    }
    if refused.is_none() {
        if let Err(e) = q.enter(0) {
            refused = Some(e);
        }
    }
    if refused.is_none() {
        q.take_completions();
        for k in 0..q.reaped.len() {
            let (user_data, res) = q.reaped[k];
            let Some(slot) = q.slots.get_mut(untag(user_data).0) else {
                continue;
            };
            slot.live = false;
            if res < 0 {
                refused = Some(std::io::Error::from_raw_os_error(-res));
            } else {
                q.ready.push_back((untag(user_data).0, res));
            }
        }
    }
    if let Some(source) = refused {
        let _ = registered.send(Err(RingError::Register { qid, source }));
        return;
    }
    let _ = registered.send(Ok(()));
    drop(registered);
    q.run();
}

impl<'c, A: ServedArray> Queue<'c, A> {
    fn run(&mut self) {
        loop {
            self.reap();
            if !self.slow.is_empty() {
                self.drain();
            }
            while let Some((i, _)) = self.ready.pop_front() {
                self.request(i);
            }
            if self.idle() {
                log::debug!("FUSE ring queue {}: the connection ended", self.qid);
                return;
            }
            if let Err(e) = self.enter(1) {
                log::error!(
                    "FUSE ring queue {}: waiting for a request failed: {e}",
                    self.qid
                );
                return;
            }
        }
    }

    /// No command of this thread's is in the kernel and no leg I/O is in
    /// flight: the connection ended for every entry.
    fn idle(&self) -> bool {
        self.ready.is_empty() && self.slots.iter().all(|s| !s.live && s.io.is_none())
    }

    /// Leg I/O of this thread's is in the kernel.
    fn in_flight(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.io.as_ref().is_some_and(|f| f.left > 0))
    }

    /// Pushes `sqe`, handing what is queued to the kernel first if the
    /// submission queue is full.
    fn push(&mut self, sqe: squeue::Entry128) -> std::io::Result<()> {
        loop {
            // SAFETY: the buffers and iovecs an operation points at belong
            // to an entry of this thread's, which outlives the ring (see
            // `Queue`'s field order and `Drop`), and are neither touched nor
            // freed until the operation completed.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return Ok(());
            }
            self.enter(0)?;
        }
    }

    fn register(&mut self, i: usize) -> std::io::Result<()> {
        let sqe = register_sqe(self.fd, &self.slots[i].entry, self.qid).user_data(tag(i, 0));
        self.push(sqe)?;
        self.slots[i].live = true;
        Ok(())
    }

    fn commit(&mut self, i: usize, commit_id: u64) {
        self.counts.served.fetch_add(1, Ordering::Relaxed);
        let sqe = commit_sqe(self.fd, commit_id, self.qid).user_data(tag(i, 0));
        match self.push(sqe) {
            Ok(()) => self.slots[i].live = true,
            Err(e) => log::error!("FUSE ring queue {}: cannot commit a reply: {e}", self.qid),
        }
    }

    /// Submits what is queued and waits for at least `want` completions.
    fn enter(&mut self, want: usize) -> std::io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                    if want == 0 || !self.ring.completion().is_empty() {
                        return Ok(());
                    }
                }
                // Completions must be reaped first, or the kernel is short
                // of memory for a moment.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    if !self.ring.completion().is_empty() {
                        return Ok(());
                    }
                    std::thread::yield_now();
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn take_completions(&mut self) {
        self.reaped.clear();
        self.reaped
            .extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
    }

    /// Looks at every completion: a leg's I/O (the request is answered
    /// when its last piece is in), or an entry's command (a request, or the
    /// end of the connection).
    fn reap(&mut self) {
        self.take_completions();
        for k in 0..self.reaped.len() {
            let (user_data, res) = self.reaped[k];
            let (i, op) = untag(user_data);
            if i >= self.slots.len() {
                log::error!(
                    "FUSE ring queue {}: a completion for no entry ({user_data:#x})",
                    self.qid
                );
                continue;
            }
            if op == 0 {
                self.command_done(i, res);
            } else {
                self.piece_done(i, op - 1, res);
            }
        }
    }

    fn command_done(&mut self, i: usize, res: i32) {
        self.slots[i].live = false;
        if res >= 0 {
            self.ready.push_back((i, res));
            return;
        }
        let errno = -res;
        if is_shutdown(errno) {
            log::debug!(
                "FUSE ring queue {}: entry {i}: the connection ended ({errno})",
                self.qid
            );
        } else if errno == libc::ENOENT {
            // The request went away before its reply (aborted or timed
            // out); its entry is the kernel's no more: register anew.
            log::info!(
                "FUSE ring queue {}: the kernel no longer knows the request just answered \
                 (ENOENT); registering the entry again",
                self.qid
            );
            if let Err(e) = self.register(i) {
                log::error!("FUSE ring queue {}: cannot register again: {e}", self.qid);
            }
        } else {
            log::error!(
                "FUSE ring queue {}: the kernel failed entry {i}: {}",
                self.qid,
                std::io::Error::from_raw_os_error(errno)
            );
        }
    }

    fn piece_done(&mut self, i: usize, piece: usize, res: i32) {
        let Some(f) = self.slots[i].io.as_mut().filter(|f| f.left > 0) else {
            log::error!(
                "FUSE ring queue {}: leg I/O completed for entry {i}, which has none out",
                self.qid
            );
            return;
        };
        if let Some(r) = f.results.get_mut(piece) {
            *r = res;
        }
        f.left -= 1;
        if f.left > 0 {
            return;
        }
        if f.went_well() {
            self.finish(i);
        } else {
            self.slow.push(i);
        }
    }

    /// Answers entry `i`'s request, whose leg I/O completed, through the
    /// engine's finish (counters, errors), and commits the reply.
    fn finish(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let Some(f) = slot.io.take() else {
            return;
        };
        let (error, len) = match f.plan {
            Planned::Read(plan) => {
                let len = plan.len();
                match self
                    .core
                    .finish_read(plan, &f.results, slot.entry.payload.as_mut_slice())
                {
                    Ok(()) => (0, len),
                    Err(e) => (e, 0),
                }
            }
            Planned::Write(plan) => {
                let len = plan.len();
                let payload = slot.entry.payload.as_mut_slice();
                match self.core.finish_write(plan, &f.results, &payload[..len]) {
                    Ok(n) => {
                        // fuse_write_out: size, padding.
                        put_u32(payload, 0, n);
                        put_u32(payload, 4, 0);
                        (0, 8)
                    }
                    Err(e) => (e, 0),
                }
            }
        };
        put_reply(slot.entry.header.as_mut_slice(), f.unique, error, len);
        self.commit(i, f.commit_id);
    }

    /// A request arrived in entry `i`: a read or write of the image goes to
    /// the legs through this ring (answered when it completes), anything
    /// else is answered now, once nothing of this thread's is in flight.
    fn request(&mut self, i: usize) {
        let entry = &self.slots[i].entry;
        match plan_in_ring(self.core, entry, self.cfg) {
            Plan::Planned(plan, commit_id, unique) => self.start(i, plan, commit_id, unique),
            Plan::Failed(error, commit_id, unique) => {
                put_reply(self.slots[i].entry.header.as_mut_slice(), unique, error, 0);
                self.commit(i, commit_id);
            }
            Plan::Ordinary => {
                // Nothing of this thread's stays in flight while it blocks:
                // its planned writes hold ranges this request may wait for,
                // and a finished leg I/O holds its leg (open, locked) until
                // reaped.
                self.drain();
                let commit_id = handle(
                    self.core,
                    &mut self.slots[i].entry,
                    self.cfg,
                    &mut self.reply,
                );
                self.commit(i, commit_id);
            }
        }
    }

    /// Puts a planned request's leg I/O into the ring.
    fn start(&mut self, i: usize, plan: Planned<'c>, commit_id: u64, unique: u64) {
        let base = self.slots[i].entry.payload.as_mut_slice().as_mut_ptr();
        // The pieces lie inside the payload: the engine plans them within
        // the request's length, which was checked against the payload.
        let (sqes, expect): (SmallVec<[squeue::Entry128; 8]>, SmallVec<[i32; 4]>) = match &plan {
            Planned::Read(p) => p
                .pieces()
                .enumerate()
                .map(|(k, p)| {
                    let sqe: squeue::Entry128 = opcode::Read::new(
                        types::Fd(p.fd),
                        base.wrapping_add(p.buf_at),
                        p.len as u32,
                    )
                    .offset(p.leg_offset)
                    .build()
                    .user_data(tag(i, k + 1))
                    .into();
                    (sqe, p.len as i32)
                })
                .unzip(),
            Planned::Write(w) => {
                let len = w.len();
                w.pieces()
                    .enumerate()
                    .map(|(k, p)| {
                        let sqe: squeue::Entry128 =
                            opcode::Write::new(types::Fd(p.fd), base.cast_const(), len as u32)
                                .offset(p.leg_offset)
                                .rw_flags(if p.durable { libc::RWF_DSYNC } else { 0 })
                                .build()
                                .user_data(tag(i, k + 1))
                                .into();
                        (sqe, len as i32)
                    })
                    .unzip()
            }
        };
        let pieces = sqes.len();
        self.counts
            .started_in_ring(matches!(plan, Planned::Write(_)));
        self.slots[i].io = Some(InFlight {
            plan,
            results: smallvec::smallvec![-libc::EIO; pieces],
            expect,
            left: pieces,
            commit_id,
            unique,
        });
        if pieces == 0 {
            self.slow.push(i);
            return;
        }
        for (k, sqe) in sqes.into_iter().enumerate() {
            if let Err(e) = self.push(sqe) {
                // Never with a working ring: the pieces not queued count as
                // failed (corrected, failed out, or the caller's error).
                log::error!("FUSE ring queue {}: cannot queue leg I/O: {e}", self.qid);
                for piece in k..pieces {
                    self.piece_done(i, piece, -libc::EIO);
                }
                break;
            }
        }
    }

    /// Waits until no leg I/O of this thread's is in flight (requests that
    /// come meanwhile wait in `ready`), then finishes what did not go well:
    /// writes first (a read's correction may wait for their ranges).
    fn drain(&mut self) {
        while self.in_flight() {
            if let Err(e) = self.enter(1) {
                log::error!(
                    "FUSE ring queue {}: waiting for leg I/O failed: {e}",
                    self.qid
                );
                return;
            }
            self.reap();
        }
        let mut slow = std::mem::take(&mut self.slow);
        slow.sort_by_key(|&i| {
            !matches!(
                self.slots[i].io.as_ref().map(|f| &f.plan),
                Some(Planned::Write(_))
            )
        });
        for &i in &slow {
            self.finish(i);
        }
        slow.clear();
        self.slow = slow;
    }
}

impl<A: ServedArray> Drop for Queue<'_, A> {
    fn drop(&mut self) {
        // Every leg I/O finishes (its range released, its bits ended)
        // before its buffer can go.
        self.drain();
        if self.in_flight() {
            // The ring failed with I/O in it: the kernel may still use
            // their buffers, so they are never freed (and the ranges those
            // writes hold stay held: the array cannot stop clean, which the
            // next assembly's resync covers).
            log::error!(
                "FUSE ring queue {}: leg I/O still in flight as the ring fails; its buffers are \
                 kept",
                self.qid
            );
            std::mem::forget(std::mem::take(&mut self.slots));
        }
        // Then the fields go in their order: the ring before the buffers.
    }
}

/// What to do with the request in an entry.
enum Plan<'c> {
    /// Its leg I/O goes into the ring (with its commit id and unique).
    Planned(Planned<'c>, u64, u64),
    /// It fails with this errno at once.
    Failed(i32, u64, u64),
    /// [`handle`] answers it.
    Ordinary,
}

/// A read or write of the image that `entry` holds, planned to run in the
/// ring from or into the entry's payload; anything else, a request this
/// caller may not make, or one the engine serves the ordinary way is
/// `Ordinary`.
fn plan_in_ring<'c, A: ServedArray>(
    core: &'c MountCore<A>,
    entry: &Entry,
    cfg: RingConfig,
) -> Plan<'c> {
    let h = entry.header.as_slice();
    let opcode = get_u32(h, 4);
    let kind = match opcode {
        FUSE_READ => Op::Read,
        FUSE_WRITE => Op::Write,
        _ => return Plan::Ordinary,
    };
    let uid = get_u32(h, 24);
    if !cfg.allow_other && uid != core.owner() && !allowed_without_owner(kind) {
        return Plan::Ordinary;
    }
    let (unique, nodeid) = (get_u64(h, 8), get_u64(h, 16));
    let commit_id = get_u64(h, ENT_IN_OUT + 8);
    let in_len = get_u32(h, ENT_IN_OUT + 16) as usize;
    let op_in = &h[OP_IN..OP_IN + 128];
    let (offset, size, flags) = (get_u64(op_in, 8), get_u32(op_in, 16), get_u32(op_in, 32));
    let cap = entry.payload.capacity();
    if size as usize > cap || in_len > cap {
        return Plan::Ordinary;
    }
    if opcode == FUSE_READ {
        // The engine plans at most MAX_READ_PIECES pieces, within the
        // read's `size` bytes (checked above to fit the payload).
        return match core.plan_read(nodeid, offset, size, flags as i32) {
            Some(p) => Plan::Planned(Planned::Read(p), commit_id, unique),
            None => Plan::Ordinary,
        };
    }
    if (size as usize) > in_len {
        return Plan::Ordinary;
    }
    let from_cache = get_u32(op_in, 20) & FUSE_WRITE_CACHE != 0;
    match core.plan_write(nodeid, offset, size, from_cache, flags as i32) {
        Some(Ok(p)) => Plan::Planned(Planned::Write(p), commit_id, unique),
        Some(Err(e)) => Plan::Failed(e, commit_id, unique),
        None => Plan::Ordinary,
    }
}

/// The reply's headers: `fuse_out_header` (len, error, unique) and the
/// payload's size in the entry's `fuse_uring_ent_in_out`.
fn put_reply(h: &mut [u8], unique: u64, error: i32, len: usize) {
    let len = if error == 0 { len } else { 0 };
    put_u32(h, 0, (16 + len) as u32);
    put_u32(h, 4, (-error) as u32);
    put_u64(h, 8, unique);
    put_u32(h, ENT_IN_OUT + 16, len as u32);
}

/// A reply being made: the out header's error and the payload's length.
#[derive(Default)]
struct Reply {
    error: i32,
    len: usize,
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(a)
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// `struct fuse_attr` (88 bytes) at `at`.
fn put_attr(b: &mut [u8], at: usize, a: &Attr) {
    let t = a
        .time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    put_u64(b, at, a.ino);
    put_u64(b, at + 8, a.size);
    put_u64(b, at + 16, a.blocks);
    for i in 0..3 {
        put_u64(b, at + 24 + 8 * i, t.as_secs());
        put_u32(b, at + 48 + 4 * i, t.subsec_nanos());
    }
    put_u32(b, at + 60, a.kind.mode_bits() | u32::from(a.perm));
    put_u32(b, at + 64, a.nlink);
    put_u32(b, at + 68, a.uid);
    put_u32(b, at + 72, a.gid);
    put_u32(b, at + 76, 0); // rdev
    put_u32(b, at + 80, a.blksize);
    put_u32(b, at + 84, 0); // flags
}

const ATTR_LEN: usize = 88;

/// Decodes the request in `entry`, has `core` answer it, and writes the
/// reply into the entry. Returns the commit id.
fn handle<A: ServedArray>(
    core: &MountCore<A>,
    entry: &mut Entry,
    cfg: RingConfig,
    reply: &mut Reply,
) -> u64 {
    let (header, payload) = (&mut entry.header, &mut entry.payload);
    let h = header.as_slice();
    let opcode = get_u32(h, 4);
    let unique = get_u64(h, 8);
    let nodeid = get_u64(h, 16);
    let uid = get_u32(h, 24);
    let commit_id = get_u64(h, ENT_IN_OUT + 8);
    let in_len = get_u32(h, ENT_IN_OUT + 16) as usize;
    let mut op_in = [0u8; 128];
    op_in.copy_from_slice(&h[OP_IN..OP_IN + 128]);
    *reply = Reply::default();
    let out = payload.as_mut_slice();
    match Some(in_len).filter(|&l| l <= out.len()) {
        None => {
            log::error!(
                "FUSE ring: request {unique} (opcode {opcode}) says its payload is {in_len} \
                 bytes, more than the entry's {}",
                out.len()
            );
            reply.error = libc::EIO;
        }
        Some(in_len) => {
            let kind = match opcode {
                FUSE_READ => Op::Read,
                FUSE_WRITE => Op::Write,
                FUSE_FSYNC => Op::Fsync,
                FUSE_RELEASE => Op::Release,
                FUSE_READDIR | FUSE_RELEASEDIR | FUSE_FSYNCDIR => Op::Other,
                _ => Op::Checked,
            };
            if !cfg.allow_other && uid != core.owner() && !allowed_without_owner(kind) {
                reply.error = libc::EACCES;
            } else if let Err(e) = answer(core, opcode, nodeid, &op_in, out, in_len, reply) {
                reply.error = e;
                reply.len = 0;
            }
        }
    }
    put_reply(header.as_mut_slice(), unique, reply.error, reply.len);
    commit_id
}

/// Answers one request: its reply's payload goes to the start of `buf`
/// (`reply.len` bytes); `in_len` bytes of it are the request's payload.
fn answer<A: ServedArray>(
    core: &MountCore<A>,
    opcode: u32,
    nodeid: u64,
    op_in: &[u8; 128],
    buf: &mut [u8],
    in_len: usize,
    reply: &mut Reply,
) -> Result<(), i32> {
    match opcode {
        FUSE_LOOKUP => {
            // The name, NUL-terminated.
            let name = &buf[..in_len];
            let name = name.split(|&b| b == 0).next().unwrap_or(name);
            let a = core.lookup(nodeid, name)?;
            entry_out(buf, &a, reply)
        }
        FUSE_GETATTR => {
            let a = core.getattr(nodeid)?;
            attr_out(buf, &a, reply)
        }
        FUSE_SETATTR => {
            let valid = get_u32(op_in, 0);
            let set = SetAttr {
                size: (valid & FATTR_SIZE != 0).then(|| get_u64(op_in, 16)),
                mode: (valid & FATTR_MODE != 0).then(|| get_u32(op_in, 68)),
                uid: (valid & FATTR_UID != 0).then(|| get_u32(op_in, 76)),
                gid: (valid & FATTR_GID != 0).then(|| get_u32(op_in, 80)),
            };
            let a = core.setattr(nodeid, set)?;
            attr_out(buf, &a, reply)
        }
        FUSE_OPEN => {
            let o = core.open(nodeid, get_u32(op_in, 0) as i32)?;
            open_out(buf, o.fh, o.flags, reply)
        }
        FUSE_OPENDIR => open_out(buf, 0, 0, reply),
        FUSE_READ => {
            let (fh, offset, size) = (get_u64(op_in, 0), get_u64(op_in, 8), get_u32(op_in, 16));
            let flags = get_u32(op_in, 32) as i32;
            let cap = buf.len().min(size as usize);
            let mut overflow = false;
            core.read(nodeid, fh, offset, size, flags, &mut |bytes| match buf
                .get_mut(..bytes.len())
                .filter(|_| bytes.len() <= cap)
            {
                Some(dst) => {
                    dst.copy_from_slice(bytes);
                    reply.len = bytes.len();
                }
                None => overflow = true,
            })?;
            if overflow {
                log::error!("FUSE ring: a read answered more than the {cap} bytes asked");
                return Err(libc::EIO);
            }
            Ok(())
        }
        FUSE_WRITE => {
            let offset = get_u64(op_in, 8);
            let size = get_u32(op_in, 16) as usize;
            let write_flags = get_u32(op_in, 20);
            let flags = get_u32(op_in, 32) as i32;
            if size > in_len {
                log::error!(
                    "FUSE ring: a write of {size} bytes came with a payload of {in_len} bytes"
                );
                return Err(libc::EIO);
            }
            let n = core.write(
                nodeid,
                offset,
                &buf[..size],
                write_flags & FUSE_WRITE_CACHE != 0,
                flags,
            )?;
            // fuse_write_out: size, padding.
            put_u32(buf, 0, n);
            put_u32(buf, 4, 0);
            reply.len = 8;
            Ok(())
        }
        FUSE_STATFS => {
            let s = core.statfs();
            // struct fuse_kstatfs (80 bytes).
            buf[..80].fill(0);
            put_u64(buf, 0, s.blocks);
            put_u64(buf, 8, s.bfree);
            put_u64(buf, 16, s.bavail);
            put_u64(buf, 24, s.files);
            put_u64(buf, 32, s.ffree);
            put_u32(buf, 40, s.bsize);
            put_u32(buf, 44, s.namelen);
            put_u32(buf, 48, s.frsize);
            reply.len = 80;
            Ok(())
        }
        FUSE_RELEASE => {
            core.release(get_u64(op_in, 0));
            Ok(())
        }
        FUSE_RELEASEDIR | FUSE_FSYNCDIR => Ok(()),
        FUSE_FSYNC => core.fsync(nodeid),
        FUSE_FLUSH => core.flush(nodeid, get_u64(op_in, 0)),
        FUSE_READDIR => {
            let (offset, size) = (get_u64(op_in, 8), get_u32(op_in, 16) as usize);
            let cap = buf.len().min(size);
            let mut at = 0usize;
            for (child, next, kind, name) in core.readdir(nodeid, offset)? {
                // struct fuse_dirent: ino, off, namelen, type, name; 8-aligned.
                let rec = 24usize
                    .checked_add(name.len())
                    .map(|l| l.div_ceil(8) * 8)
                    .ok_or(libc::EIO)?;
                let end = at.checked_add(rec).ok_or(libc::EIO)?;
                if end > cap {
                    break;
                }
                let d = &mut buf[at..end];
                d.fill(0);
                put_u64(d, 0, child);
                put_u64(d, 8, next);
                put_u32(d, 16, name.len() as u32);
                put_u32(d, 20, kind.dirent_type());
                d[24..24 + name.len()].copy_from_slice(name.as_bytes());
                at = end;
            }
            reply.len = at;
            Ok(())
        }
        FUSE_GETXATTR | FUSE_LISTXATTR => Err(core.xattr_errno()),
        _ => {
            log::debug!("FUSE ring: opcode {opcode} is not served (ENOSYS)");
            Err(libc::ENOSYS)
        }
    }
}

fn valid(b: &mut [u8], at: usize, ttl: Duration) {
    put_u64(b, at, ttl.as_secs());
}

/// `struct fuse_entry_out` (40 + 88 bytes).
fn entry_out(buf: &mut [u8], a: &Attr, reply: &mut Reply) -> Result<(), i32> {
    let b = buf.get_mut(..40 + ATTR_LEN).ok_or(libc::EIO)?;
    b.fill(0);
    put_u64(b, 0, a.ino);
    put_u64(b, 8, 0); // generation
    valid(b, 16, a.ttl);
    valid(b, 24, a.ttl);
    put_u32(b, 32, a.ttl.subsec_nanos());
    put_u32(b, 36, a.ttl.subsec_nanos());
    put_attr(b, 40, a);
    reply.len = 40 + ATTR_LEN;
    Ok(())
}

/// `struct fuse_attr_out` (16 + 88 bytes).
fn attr_out(buf: &mut [u8], a: &Attr, reply: &mut Reply) -> Result<(), i32> {
    let b = buf.get_mut(..16 + ATTR_LEN).ok_or(libc::EIO)?;
    b.fill(0);
    valid(b, 0, a.ttl);
    put_u32(b, 8, a.ttl.subsec_nanos());
    put_attr(b, 16, a);
    reply.len = 16 + ATTR_LEN;
    Ok(())
}

/// `struct fuse_open_out` (16 bytes).
fn open_out(buf: &mut [u8], fh: u64, flags: u32, reply: &mut Reply) -> Result<(), i32> {
    let b = buf.get_mut(..16).ok_or(libc::EIO)?;
    b.fill(0);
    put_u64(b, 0, fh);
    put_u32(b, 8, flags);
    reply.len = 16;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::count_cpu_list;

    #[test]
    fn cpu_lists_count() {
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
    }
}
