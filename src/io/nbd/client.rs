//! One NBD connection: the handshake, then requests from any thread, each
//! matched to its reply by cookie. A reader thread owns the receiving half
//! of the socket and completes requests as their replies arrive, in any
//! order; senders share the sending half under a mutex. Several requests
//! are in flight at once: every caller's, and every piece of a large one.
//!
//! A request not answered within the timeout, a reply that breaks the
//! protocol, EOF or a socket error kill the connection: every request in
//! flight and every later one fails at once, with the reason (a later
//! reconnect makes a new [`Connection`]).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::proto::{self, Export, ProtoError, Request};
use super::uri::{NbdAddr, NbdUri};
use crate::io::device::LinkStatus;

/// What went wrong with an NBD leg, named with its URI.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("{uri}: cannot connect: {source}")]
    Connect { uri: String, source: std::io::Error },
    #[error("{uri}: handshake failed: {source}")]
    Handshake { uri: String, source: ProtoError },
    #[error("{uri}: {why}")]
    Unsuitable { uri: String, why: String },
    #[error("{uri}: connection lost ({why})")]
    Dead { uri: String, why: String },
    #[error(
        "{uri}: {op} at offset {offset} got no reply within {secs} s; the connection is closed"
    )]
    Timeout {
        uri: String,
        op: &'static str,
        offset: u64,
        secs: u64,
    },
    #[error("{uri}: the server failed {op} of {len} bytes at offset {offset}: {}", std::io::Error::from_raw_os_error(*errno))]
    Server {
        uri: String,
        op: &'static str,
        offset: u64,
        len: u32,
        errno: i32,
    },
}

impl From<NbdError> for std::io::Error {
    fn from(e: NbdError) -> std::io::Error {
        let kind = match &e {
            NbdError::Timeout { .. } => std::io::ErrorKind::TimedOut,
            NbdError::Dead { .. } => std::io::ErrorKind::NotConnected,
            NbdError::Server { errno, .. } => return std::io::Error::from_raw_os_error(*errno),
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// The socket: TCP or Unix.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn write_vectored(&mut self, b: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(b),
            Stream::Unix(s) => s.write_vectored(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// TCP keepalive: a peer host gone without a word (a cut link) is noticed
/// by the kernel too: probes after the keepalive's silence (10 s when it is
/// off), every 5 s, 3 tries.
fn tcp_keepalive(s: &TcpStream, idle: Option<Duration>) {
    let idle = idle.map_or(10, |d| {
        i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
    });
    let fd = s.as_raw_fd();
    let set = |level: i32, name: i32, v: i32| {
        // SAFETY: setsockopt reads one c_int from the pointer.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&v as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
}

/// A request waiting for its reply.
#[derive(Debug, Default)]
struct Slot {
    state: Mutex<Option<Result<Vec<u8>, Failure>>>,
    cond: Condvar,
}

impl Slot {
    fn complete(&self, r: Result<Vec<u8>, Failure>) {
        *self.state.lock() = Some(r);
        self.cond.notify_all();
    }
}

#[derive(Debug, Clone)]
enum Failure {
    /// The server answered with this errno.
    Server(i32),
    /// The connection died.
    Dead(String),
}

/// A request in flight: what its reply carries and what it tells.
#[derive(Debug)]
struct InFlight {
    /// A read's length (its reply carries that much data).
    read_len: u32,
    slot: Arc<Slot>,
    sent: Instant,
    /// A flush: its success is the last durable point.
    flush: bool,
    /// Small enough (a probe, a 4 KiB request) that its reply time is the
    /// round trip, not the transfer.
    small: bool,
}

/// The largest request whose reply time counts as a round trip.
const RTT_MAX_LEN: u32 = 4096;

#[derive(Debug)]
struct Shared {
    inflight: Mutex<HashMap<u64, InFlight>>,
    /// Why the connection is dead (None: alive).
    dead: Mutex<Option<String>>,
    /// NBD_CMD_DISC was sent: EOF is expected.
    closing: AtomicBool,
    /// The moment the times below count from.
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last reply (0: none yet).
    last_reply_ns: AtomicU64,
    /// Nanoseconds from `epoch` to the last successful flush reply (0: none).
    last_flush_ns: AtomicU64,
    /// The smoothed round trip in microseconds (0: none measured), as TCP
    /// smooths it (7/8 old, 1/8 new).
    srtt_us: AtomicU64,
    /// Wakes the keepalive thread early (the connection closes or dies).
    wake: (Mutex<()>, Condvar),
}

impl Shared {
    fn new() -> Shared {
        Shared {
            inflight: Mutex::new(HashMap::new()),
            dead: Mutex::new(None),
            closing: AtomicBool::new(false),
            epoch: Instant::now(),
            last_reply_ns: AtomicU64::new(0),
            last_flush_ns: AtomicU64::new(0),
            srtt_us: AtomicU64::new(0),
            wake: (Mutex::new(()), Condvar::new()),
        }
    }

    /// Marks the connection dead (the first reason stays) and fails every
    /// request in flight.
    fn kill(&self, why: String) {
        let why = {
            let mut d = self.dead.lock();
            d.get_or_insert(why).clone()
        };
        let failed: Vec<_> = self.inflight.lock().drain().collect();
        for (_, f) in failed {
            f.slot.complete(Err(Failure::Dead(why.clone())));
        }
        let _g = self.wake.0.lock();
        self.wake.1.notify_all();
    }

    fn since_epoch_ns(&self, t: Instant) -> u64 {
        // At least 1: 0 means "never".
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// A reply arrived for `f`: the times it tells.
    fn replied(&self, f: &InFlight, ok: bool) {
        let now = Instant::now();
        let ns = self.since_epoch_ns(now);
        self.last_reply_ns.store(ns, Ordering::Relaxed);
        if ok && f.flush {
            self.last_flush_ns.store(ns, Ordering::Relaxed);
        }
        if f.small {
            let sample = u64::try_from(now.saturating_duration_since(f.sent).as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            let old = self.srtt_us.load(Ordering::Relaxed);
            let new = if old == 0 {
                sample
            } else {
                old - old / 8 + sample / 8
            };
            self.srtt_us.store(new.max(1), Ordering::Relaxed);
        }
    }

    fn ago(&self, ns: u64, now: Instant) -> Option<Duration> {
        (ns != 0).then(|| now.saturating_duration_since(self.epoch + Duration::from_nanos(ns)))
    }
}

/// A request sent, not yet answered.
pub struct Ticket {
    cookie: u64,
    slot: Arc<Slot>,
    op: &'static str,
    offset: u64,
    len: u32,
}

/// What the connection's threads share with its owner.
#[derive(Debug)]
struct Inner {
    uri: NbdUri,
    name: String,
    export: Export,
    writer: Mutex<Stream>,
    /// A handle to shut the socket down from any thread (a timeout).
    control: Stream,
    shared: Arc<Shared>,
    next_cookie: AtomicU64,
    timeout: Duration,
}

/// An open NBD connection in its transmission phase. With a keepalive
/// (`x-keepalive`, 10 s by default), a connection silent that long with
/// nothing in flight is probed with a one-block read at offset 0, under
/// the request timeout: a server that is gone, or hung, kills the
/// connection even when the array is idle.
#[derive(Debug)]
pub struct Connection {
    inner: Arc<Inner>,
    reader: Option<std::thread::JoinHandle<()>>,
    keepalive: Option<std::thread::JoinHandle<()>>,
}

impl Connection {
    /// Connects to `uri`'s server, runs the handshake and starts the
    /// reader thread (and the keepalive's).
    pub fn open(uri: &NbdUri) -> Result<Connection, NbdError> {
        let name = uri.to_string();
        let timeout = uri.timeout();
        let connect_err = |source| NbdError::Connect {
            uri: name.clone(),
            source,
        };
        let stream = match &uri.addr {
            NbdAddr::Tcp { host, port } => {
                let addrs: Vec<_> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(connect_err)?
                    .collect();
                let mut last = std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the host name resolves to no address",
                );
                let mut found = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or_else(|| connect_err(last))?;
                let _ = s.set_nodelay(true);
                tcp_keepalive(&s, uri.keepalive());
                Stream::Tcp(s)
            }
            NbdAddr::Unix { socket } => {
                Stream::Unix(UnixStream::connect(socket).map_err(connect_err)?)
            }
        };
        stream
            .set_timeouts(Some(timeout), Some(timeout))
            .map_err(connect_err)?;
        let mut hs = stream.try_clone().map_err(connect_err)?;
        let export =
            proto::handshake(&mut hs, &uri.export).map_err(|source| NbdError::Handshake {
                uri: name.clone(),
                source,
            })?;
        // Replies may be a long time coming when idle: the reader waits
        // without a limit (the per-request timeout is kept by the callers,
        // a silent peer found by the keepalive); a send blocked longer than
        // the timeout fails.
        stream
            .set_timeouts(None, Some(timeout))
            .map_err(connect_err)?;
        let mut reader_stream = stream.try_clone().map_err(connect_err)?;
        let control = stream.try_clone().map_err(connect_err)?;
        let shared = Arc::new(Shared::new());
        let inner = Arc::new(Inner {
            uri: uri.clone(),
            name,
            export,
            writer: Mutex::new(stream),
            control,
            shared: Arc::clone(&shared),
            next_cookie: AtomicU64::new(1),
            timeout,
        });
        let reader = std::thread::Builder::new()
            .name("mdfuse-nbd-rx".into())
            .spawn(move || read_replies(&mut reader_stream, &shared))
            .map_err(|e| NbdError::Connect {
                uri: inner.name.clone(),
                source: e,
            })?;
        let mut conn = Connection {
            inner,
            reader: Some(reader),
            keepalive: None,
        };
        if let Some(every) = uri.keepalive() {
            let inner = Arc::clone(&conn.inner);
            conn.keepalive = Some(
                std::thread::Builder::new()
                    .name("mdfuse-nbd-ka".into())
                    .spawn(move || inner.keep_alive(every))
                    .map_err(|e| NbdError::Connect {
                        uri: conn.inner.name.clone(),
                        source: e,
                    })?,
            );
        }
        Ok(conn)
    }

    /// The export as the handshake settled it.
    pub fn export(&self) -> &Export {
        &self.inner.export
    }

    pub fn uri(&self) -> &NbdUri {
        &self.inner.uri
    }

    /// Why the connection is dead, if it is.
    pub fn dead(&self) -> Option<String> {
        self.inner.dead()
    }

    /// What the connection tells an operator now.
    pub fn status(&self) -> LinkStatus {
        let sh = &self.inner.shared;
        let now = Instant::now();
        let rtt = sh.srtt_us.load(Ordering::Relaxed);
        LinkStatus {
            dead: self.dead(),
            rtt: (rtt != 0).then(|| Duration::from_micros(rtt)),
            since_flush: sh.ago(sh.last_flush_ns.load(Ordering::Relaxed), now),
            since_reply: sh.ago(sh.last_reply_ns.load(Ordering::Relaxed), now),
            in_flight: sh.inflight.lock().len(),
        }
    }

    /// Sends one request (with `payload` for a write) and returns the
    /// ticket to wait for its reply with.
    pub fn submit(
        &self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Option<&[u8]>,
    ) -> Result<Ticket, NbdError> {
        self.inner.submit(kind, flags, offset, len, payload)
    }

    /// Waits for the reply to `t` (a read's data, else empty). A reply not
    /// in within the timeout kills the connection.
    pub fn wait(&self, t: Ticket) -> Result<Vec<u8>, NbdError> {
        self.inner.wait(t)
    }

    /// Sends `t`'s requests and waits for them all; the first error wins.
    pub fn wait_all(&self, tickets: Vec<Ticket>) -> Result<Vec<Vec<u8>>, NbdError> {
        let mut out = Vec::with_capacity(tickets.len());
        let mut first = None;
        for t in tickets {
            match self.wait(t) {
                Ok(d) => out.push(d),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(out), Err)
    }

    /// Kills the connection: the socket is shut down and every request
    /// in flight fails with `why`.
    pub fn kill(&self, why: String) {
        self.inner.kill(why);
    }
}

impl Inner {
    fn dead(&self) -> Option<String> {
        self.shared.dead.lock().clone()
    }

    fn dead_error(&self, why: String) -> NbdError {
        NbdError::Dead {
            uri: self.name.clone(),
            why,
        }
    }

    fn kill(&self, why: String) {
        self.shared.kill(why);
        self.control.shutdown();
    }

    fn submit(
        &self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Option<&[u8]>,
    ) -> Result<Ticket, NbdError> {
        if let Some(why) = self.dead() {
            return Err(self.dead_error(why));
        }
        let cookie = self.next_cookie.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        let read_len = if kind == proto::CMD_READ { len } else { 0 };
        let small = matches!(kind, proto::CMD_READ | proto::CMD_WRITE) && len <= RTT_MAX_LEN;
        let header = Request {
            flags,
            kind,
            cookie,
            offset,
            len,
        }
        .encode();
        let sent = {
            let mut w = self.writer.lock();
            // Entered under the writer's lock, stamped just before the send,
            // so the reply time is the request's own.
            self.shared.inflight.lock().insert(
                cookie,
                InFlight {
                    read_len,
                    slot: Arc::clone(&slot),
                    sent: Instant::now(),
                    flush: kind == proto::CMD_FLUSH,
                    small,
                },
            );
            w.write_all(&header)
                .and_then(|()| payload.map_or(Ok(()), |p| w.write_all(p)))
        };
        if let Err(e) = sent {
            self.kill(format!("send failed: {e}"));
            return Err(self.dead_error(self.dead().unwrap_or_default()));
        }
        Ok(Ticket {
            cookie,
            slot,
            op: op_name(kind),
            offset,
            len,
        })
    }

    fn wait(&self, t: Ticket) -> Result<Vec<u8>, NbdError> {
        let deadline = Instant::now() + self.timeout;
        let mut state = t.slot.state.lock();
        while state.is_none() {
            if t.slot.cond.wait_until(&mut state, deadline).timed_out() && state.is_none() {
                drop(state);
                self.kill(format!(
                    "{} at offset {} got no reply within {} s",
                    t.op,
                    t.offset,
                    self.timeout.as_secs()
                ));
                self.shared.inflight.lock().remove(&t.cookie);
                return Err(NbdError::Timeout {
                    uri: self.name.clone(),
                    op: t.op,
                    offset: t.offset,
                    secs: self.timeout.as_secs(),
                });
            }
        }
        match state.take() {
            Some(Ok(data)) => Ok(data),
            Some(Err(Failure::Server(errno))) => Err(NbdError::Server {
                uri: self.name.clone(),
                op: t.op,
                offset: t.offset,
                len: t.len,
                errno,
            }),
            Some(Err(Failure::Dead(why))) => Err(self.dead_error(why)),
            None => Err(self.dead_error("no reply".into())),
        }
    }

    /// The keepalive thread: while the connection lives, a silence of
    /// `every` with nothing in flight sends a probe (a read of the
    /// export's minimum block at offset 0) and waits for it under the
    /// request timeout; no reply kills the connection.
    fn keep_alive(&self, every: Duration) {
        let sh = &self.shared;
        loop {
            {
                let mut g = sh.wake.0.lock();
                if self.dead().is_some() || sh.closing.load(Ordering::SeqCst) {
                    return;
                }
                let _ = sh
                    .wake
                    .1
                    .wait_for(&mut g, every.min(Duration::from_secs(1)));
            }
            if self.dead().is_some() || sh.closing.load(Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            let quiet = sh
                .ago(sh.last_reply_ns.load(Ordering::Relaxed), now)
                .unwrap_or_else(|| now.saturating_duration_since(sh.epoch));
            if quiet < every || !sh.inflight.lock().is_empty() {
                continue;
            }
            let probe = self
                .submit(proto::CMD_READ, 0, 0, self.export.block.min.max(1), None)
                .and_then(|t| self.wait(t));
            if let Err(e) = probe {
                if !sh.closing.load(Ordering::SeqCst) {
                    log::warn!("{}: keepalive probe failed: {e}", self.name);
                }
                return;
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let inner = &self.inner;
        // NBD_CMD_DISC: the server finishes what it has, then closes.
        if inner.dead().is_none() {
            inner.shared.closing.store(true, Ordering::SeqCst);
            let disc = Request {
                flags: 0,
                kind: proto::CMD_DISC,
                cookie: inner.next_cookie.fetch_add(1, Ordering::Relaxed),
                offset: 0,
                len: 0,
            }
            .encode();
            let _ = inner.writer.lock().write_all(&disc);
        }
        inner.shared.closing.store(true, Ordering::SeqCst);
        inner.shared.kill("closed".into());
        inner.control.shutdown();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if let Some(k) = self.keepalive.take() {
            let _ = k.join();
        }
    }
}

fn op_name(kind: u16) -> &'static str {
    match kind {
        proto::CMD_READ => "read",
        proto::CMD_WRITE => "write",
        proto::CMD_FLUSH => "flush",
        proto::CMD_TRIM => "trim",
        proto::CMD_WRITE_ZEROES => "write-zeroes",
        _ => "request",
    }
}

/// The reader thread: replies to their requests, until the socket ends.
fn read_replies<R: Read>(r: &mut R, shared: &Shared) {
    loop {
        let lookup = |cookie: u64| shared.inflight.lock().get(&cookie).map(|f| f.read_len);
        match proto::read_simple_reply(r, lookup, |_| Vec::new()) {
            Ok((reply, data)) => {
                let Some(f) = shared.inflight.lock().remove(&reply.cookie) else {
                    continue; // failed meanwhile (a timeout killed it)
                };
                shared.replied(&f, reply.error == 0);
                f.slot.complete(if reply.error == 0 {
                    Ok(data)
                } else {
                    Err(Failure::Server(proto::errno_of(reply.error)))
                });
            }
            Err(e) => {
                let why = if shared.closing.load(Ordering::SeqCst) {
                    "closed".to_string()
                } else if e == ProtoError::Eof {
                    "the server closed the connection".to_string()
                } else {
                    format!("protocol error: {e}")
                };
                shared.kill(why);
                return;
            }
        }
    }
}
