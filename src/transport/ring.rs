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
use crate::array::ServedArray;
use crate::io::aligned::AlignedBuf;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
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

/// How the rings are laid out.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    pub queues: usize,
    pub threads_per_queue: usize,
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
            payload,
            allow_other,
        }
    }
}

/// The running ring threads.
pub struct RingTransport {
    threads: Vec<std::thread::JoinHandle<()>>,
    served: Arc<AtomicU64>,
}

impl RingTransport {
    /// Requests answered on the rings so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Waits for every ring thread (they end when the connection does);
    /// after `grace` without them, `abort` is called once (it ends the
    /// connection) and the wait goes on. Returns the requests served.
    pub fn join(self, grace: Duration, abort: impl FnOnce()) -> u64 {
        let deadline = std::time::Instant::now() + grace;
        while self.threads.iter().any(|t| !t.is_finished()) {
            if std::time::Instant::now() >= deadline {
                abort();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let served = self.served();
        for t in self.threads {
            if t.join().is_err() {
                log::error!("a FUSE ring thread panicked");
            }
        }
        served.max(self.served.load(Ordering::Relaxed))
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
    let served = Arc::new(AtomicU64::new(0));
    let mut transport = RingTransport {
        threads: Vec::new(),
        served: served.clone(),
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
            let (core, fd, served, tx) = (core.clone(), fd.clone(), served.clone(), tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("fuse-ring-{qid}.{t}"))
                .spawn(move || queue_thread(&*core, &fd, qid, cfg, &served, tx));
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

fn queue_thread<A: ServedArray>(
    core: &MountCore<A>,
    fd: &OwnedFd,
    qid: u16,
    cfg: RingConfig,
    served: &AtomicU64,
    registered: std::sync::mpsc::Sender<Result<(), RingError>>,
) {
    // Declared before the ring, so dropped after it: the kernel lets go of
    // the buffers when the ring goes.
    let mut entry = Entry::new(cfg.payload);
    // Only this thread submits to and waits on its ring, and it waits
    // whenever it is idle: the kernel's completions (a request for the
    // entry) run as this thread's deferred work when it waits, instead of
    // interrupting it (SINGLE_ISSUER, DEFER_TASKRUN; Linux 6.1).
    let mut ring = match IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4)
    {
        Ok(r) => r,
        Err(source) => {
            let _ = registered.send(Err(RingError::Setup { qid, source }));
            return;
        }
    };
    // REGISTER completes only when a request comes; a refusal completes at
    // once, within the submission.
    let first = match submit(&mut ring, register_sqe(fd, &entry, qid), false) {
        Err(source) => Err(source),
        Ok(()) => match ring.completion().next() {
            Some(c) if c.result() < 0 => Err(std::io::Error::from_raw_os_error(-c.result())),
            other => Ok(other.map(|c| c.result())),
        },
    };
    let mut pending = match first {
        Ok(p) => {
            let _ = registered.send(Ok(()));
            p
        }
        Err(source) => {
            let _ = registered.send(Err(RingError::Register { qid, source }));
            return;
        }
    };
    drop(registered);
    let mut reply = Reply::default();
    loop {
        let res = match pending.take() {
            Some(r) => r,
            None => match wait(&mut ring) {
                Ok(r) => r,
                Err(e) => {
                    log::error!("FUSE ring queue {qid}: waiting for a request failed: {e}");
                    break;
                }
            },
        };
        if res < 0 {
            let errno = -res;
            if is_shutdown(errno) {
                log::debug!("FUSE ring queue {qid}: the connection ended ({errno})");
                break;
            }
            if errno == libc::ENOENT {
                // The request went away before its reply (aborted or timed
                // out); its entry is the kernel's no more: register anew.
                log::info!(
                    "FUSE ring queue {qid}: the kernel no longer knows the request just answered \
                     (ENOENT); registering the entry again"
                );
                match submit(&mut ring, register_sqe(fd, &entry, qid), false) {
                    Ok(()) => continue,
                    Err(e) => {
                        log::error!("FUSE ring queue {qid}: cannot register again: {e}");
                        break;
                    }
                }
            }
            log::error!(
                "FUSE ring queue {qid}: the kernel failed the entry: {}",
                std::io::Error::from_raw_os_error(errno)
            );
            break;
        }
        let commit_id = handle(core, &mut entry, cfg, &mut reply);
        served.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = submit(&mut ring, commit_sqe(fd, commit_id, qid), true) {
            log::error!("FUSE ring queue {qid}: cannot commit a reply: {e}");
            break;
        }
        pending = ring.completion().next().map(|c| c.result());
    }
    drop(ring);
    drop(entry);
}

/// Pushes `sqe` and enters the kernel (waiting for one completion if `wait`).
fn submit(
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    sqe: squeue::Entry128,
    wait: bool,
) -> std::io::Result<()> {
    // SAFETY: the buffers and iovecs the command points at belong to the
    // thread's Entry, which outlives the ring.
    unsafe { ring.submission().push(&sqe) }
        .map_err(|_| std::io::Error::other("the submission queue is full"))?;
    loop {
        let r = if wait {
            ring.submit_and_wait(1)
        } else {
            ring.submit()
        };
        match r {
            Ok(_) => return Ok(()),
            // Interrupted: the entry went in if the queue is empty.
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                if ring.submission().is_empty() {
                    return if wait { wait_only(ring) } else { Ok(()) };
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn wait_only(ring: &mut IoUring<squeue::Entry128, cqueue::Entry>) -> std::io::Result<()> {
    loop {
        if !ring.completion().is_empty() {
            return Ok(());
        }
        match ring.submit_and_wait(1) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The result of the next completion, waiting for it.
fn wait(ring: &mut IoUring<squeue::Entry128, cqueue::Entry>) -> std::io::Result<i32> {
    loop {
        if let Some(c) = ring.completion().next() {
            return Ok(c.result());
        }
        wait_only(ring)?;
    }
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
    // fuse_out_header: len, error, unique; then the payload's size.
    let h = header.as_mut_slice();
    let len = if reply.error == 0 { reply.len } else { 0 };
    put_u32(h, 0, (16 + len) as u32);
    put_u32(h, 4, (-reply.error) as u32);
    put_u64(h, 8, unique);
    put_u32(h, ENT_IN_OUT + 16, len as u32);
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
