//! Read-ahead for sequential O_DIRECT streams.
//!
//! An O_DIRECT reader at queue depth 1 waits, for every request, for the
//! legs' read *and* then for FUSE's round trip (the reply's copy into the
//! reader's pages, the next request's way back to us). The kernel's
//! readahead does not apply to O_DIRECT. So, as a disk array's controller
//! does, once a stream of large reads is seen (a read that starts where an
//! earlier one ended), the next range of the same size is read by the
//! read-ahead thread while the current reply travels; the next request finds
//! it read, or in flight, and the two halves of the request's time overlap.
//!
//! Freshness: a read-ahead buffer must never return data older than a write
//! that was acknowledged before the read was issued. Every write (user or
//! sync) calls [`ReadAhead::invalidate`] after its leg writes completed and
//! before it is acknowledged: a buffer read before that point is dropped, or
//! marked stale while its read is in flight (and dropped when it lands); a
//! read-ahead scheduled after that point reads the new data. The `live`
//! count lets writes skip the lock while nothing is read ahead; it is
//! `SeqCst` on both sides so that a write that sees no entry finished its
//! leg writes before any entry's read was issued.

use crate::io::aligned::AlignedBuf;
use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Reads smaller than this are not followed (random I/O, small streams).
pub const READAHEAD_MIN: u64 = 128 * 1024;
/// Read-ahead buffers in flight or waiting at once (each at most one
/// request's size, i.e. up to 1 MiB with the default max_write).
const MAX_ENTRIES: usize = 2 * DEPTH;
/// Ranges read ahead of a stream: two keep the legs busy while the reader
/// takes one.
pub const DEPTH: usize = 2;
/// Ends of recent large reads remembered to recognise a stream.
const REMEMBERED_ENDS: usize = 8;

/// One range being read ahead, or read and waiting for its request.
struct Entry {
    id: u64,
    start: u64,
    len: usize,
    /// Some once landed (None while in flight, or if the read failed).
    buf: Option<AlignedBuf>,
    in_flight: bool,
    /// A write overlapped it while in flight: dropped when it lands.
    stale: bool,
}

struct State {
    entries: Vec<Entry>,
    ends: [u64; REMEMBERED_ENDS],
    next_end: usize,
    next_id: u64,
    spare: Vec<AlignedBuf>,
    /// To the read-ahead threads; None once closed (the array stops).
    jobs: Option<Sender<Fetch>>,
}

impl State {
    fn keep_spare(&mut self, buf: AlignedBuf) {
        if self.spare.len() < MAX_ENTRIES {
            self.spare.push(buf);
        }
    }

    /// Makes room for one more entry by dropping the oldest range that
    /// landed and was not taken (a stream that stopped, or turned); ranges
    /// in flight stay. False if there is no room.
    fn make_room(&mut self, live: &AtomicUsize) -> bool {
        if self.entries.len() < MAX_ENTRIES {
            return true;
        }
        let oldest = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.in_flight)
            .min_by_key(|(_, e)| e.id)
            .map(|(i, _)| i);
        let Some(i) = oldest else { return false };
        let e = self.entries.swap_remove(i);
        live.fetch_sub(1, Ordering::SeqCst);
        if let Some(b) = e.buf {
            self.keep_spare(b);
        }
        true
    }
}

/// A range for the read-ahead thread to read into `buf`.
pub struct Fetch {
    pub id: u64,
    pub start: u64,
    pub len: usize,
    pub buf: AlignedBuf,
}

pub struct ReadAhead {
    state: Mutex<State>,
    landed: Condvar,
    live: AtomicUsize,
}

impl ReadAhead {
    /// `jobs` feeds the thread that does the reads and reports them with
    /// [`ReadAhead::landed`].
    pub fn new(jobs: Sender<Fetch>) -> ReadAhead {
        ReadAhead {
            state: Mutex::new(State {
                entries: Vec::new(),
                ends: [u64::MAX; REMEMBERED_ENDS],
                next_end: 0,
                next_id: 0,
                spare: Vec::new(),
                jobs: Some(jobs),
            }),
            landed: Condvar::new(),
            live: AtomicUsize::new(0),
        }
    }

    /// The buffer read ahead for `[start, start + len)`, waiting for it if
    /// its read is in flight; None if there is none (or it failed or went
    /// stale): the caller reads as usual. Give the buffer back with
    /// [`ReadAhead::recycle`].
    pub fn take(&self, start: u64, len: usize) -> Option<AlignedBuf> {
        if self.live.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut st = self.state.lock();
        let id = st
            .entries
            .iter()
            .find(|e| e.start == start && e.len >= len && !e.stale)?
            .id;
        loop {
            let pos = st.entries.iter().position(|e| e.id == id)?;
            let e = &st.entries[pos];
            if e.in_flight && !e.stale {
                self.landed.wait(&mut st);
                continue;
            }
            if e.in_flight {
                // Stale: it is dropped when it lands.
                return None;
            }
            let e = st.entries.swap_remove(pos);
            self.live.fetch_sub(1, Ordering::SeqCst);
            return e.buf;
        }
    }

    /// Notes a large read of `[start, start + len)` by an O_DIRECT reader;
    /// if it continues a stream, the next range of the same size (clipped
    /// at `limit`, the array's size) is handed to the read-ahead thread.
    pub fn follow(&self, start: u64, len: usize, limit: u64) {
        let end = start + len as u64;
        let mut st = self.state.lock();
        let continues = st.ends.iter().position(|&e| e == start);
        match continues {
            Some(i) => st.ends[i] = end,
            None => {
                let i = st.next_end;
                st.ends[i] = end;
                st.next_end = (i + 1) % REMEMBERED_ENDS;
            }
        }
        if continues.is_none() {
            return;
        }
        for k in 0..DEPTH as u64 {
            let at = end + k * len as u64;
            // A range cut short at the end would be too small to be taken.
            if at + READAHEAD_MIN > limit {
                return;
            }
            let next_len = (len as u64).min(limit - at) as usize;
            let covered = st
                .entries
                .iter()
                .any(|e| e.start < at + next_len as u64 && at < e.start + e.len as u64);
            if !covered {
                if !st.make_room(&self.live) {
                    return;
                }
                self.schedule(&mut st, at, next_len);
            }
        }
    }

    fn schedule(&self, st: &mut State, start: u64, len: usize) {
        let buf = match st.spare.iter().position(|b| b.capacity() >= len) {
            Some(i) => st.spare.swap_remove(i),
            None => AlignedBuf::new(len),
        };
        let id = st.next_id;
        st.next_id += 1;
        st.entries.push(Entry {
            id,
            start,
            len,
            buf: None,
            in_flight: true,
            stale: false,
        });
        self.live.fetch_add(1, Ordering::SeqCst);
        let fetch = Fetch {
            id,
            start,
            len,
            buf,
        };
        let refused = match &st.jobs {
            Some(jobs) => jobs.try_send(fetch).err().map(|e| e.into_inner()),
            None => Some(fetch),
        };
        if let Some(fetch) = refused {
            // The threads are gone (the array is stopping): forget the entry.
            st.entries.retain(|x| x.id != id);
            self.live.fetch_sub(1, Ordering::SeqCst);
            st.keep_spare(fetch.buf);
        }
    }

    /// No more read-ahead: the threads end once they finished what they
    /// hold (the caller joins them).
    pub fn close(&self) {
        self.state.lock().jobs = None;
    }

    /// The read-ahead thread's report: `buf` holds the range of fetch `id`
    /// if `ok`.
    pub fn landed(&self, id: u64, buf: AlignedBuf, ok: bool) {
        let mut st = self.state.lock();
        if let Some(pos) = st.entries.iter().position(|e| e.id == id) {
            let e = &mut st.entries[pos];
            e.in_flight = false;
            if ok && !e.stale {
                e.buf = Some(buf);
            } else {
                st.entries.swap_remove(pos);
                self.live.fetch_sub(1, Ordering::SeqCst);
                st.keep_spare(buf);
            }
        } else {
            st.keep_spare(buf);
        }
        self.landed.notify_all();
    }

    /// Forgets what was read ahead of `[start, end)`: called by every write
    /// after its leg writes completed, before it is acknowledged.
    pub fn invalidate(&self, start: u64, end: u64) {
        if self.live.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut st = self.state.lock();
        let mut i = 0;
        while i < st.entries.len() {
            let e = &mut st.entries[i];
            if e.start < end && start < e.start + e.len as u64 {
                if e.in_flight {
                    e.stale = true;
                } else {
                    let e = st.entries.swap_remove(i);
                    self.live.fetch_sub(1, Ordering::SeqCst);
                    if let Some(b) = e.buf {
                        st.keep_spare(b);
                    }
                    continue;
                }
            }
            i += 1;
        }
    }

    /// Returns a buffer from [`ReadAhead::take`] for reuse.
    pub fn recycle(&self, buf: AlignedBuf) {
        self.state.lock().keep_spare(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{unbounded, Receiver};

    const MIB: usize = 1 << 20;

    fn ra() -> (ReadAhead, Receiver<Fetch>) {
        let (tx, rx) = unbounded();
        (ReadAhead::new(tx), rx)
    }

    fn land(r: &ReadAhead, mut f: Fetch, fill: u8) {
        f.buf.as_mut_slice()[..f.len].fill(fill);
        r.landed(f.id, f.buf, true);
    }

    #[test]
    fn a_stream_is_read_ahead_and_served() {
        let (r, rx) = ra();
        r.follow(0, MIB, 8 * MIB as u64);
        assert!(rx.try_recv().is_err(), "one read is no stream yet");
        r.follow(MIB as u64, MIB, 8 * MIB as u64);
        let f = rx.try_recv().expect("the second read continues the first");
        assert_eq!((f.start, f.len), (2 * MIB as u64, MIB));
        land(&r, f, 7);
        let buf = r.take(2 * MIB as u64, MIB).expect("read ahead");
        assert!(buf.as_slice()[..MIB].iter().all(|&b| b == 7));
        r.recycle(buf);
        assert!(r.take(2 * MIB as u64, MIB).is_none(), "taken once");
    }

    #[test]
    fn a_write_drops_what_was_read_ahead() {
        let (r, rx) = ra();
        r.follow(0, MIB, 8 * MIB as u64);
        r.follow(MIB as u64, MIB, 8 * MIB as u64);
        land(&r, rx.try_recv().unwrap(), 1);
        r.invalidate(2 * MIB as u64 + 4096, 2 * MIB as u64 + 8192);
        assert!(r.take(2 * MIB as u64, MIB).is_none());
    }

    #[test]
    fn a_write_during_the_read_makes_it_stale() {
        let (r, rx) = ra();
        r.follow(0, MIB, 8 * MIB as u64);
        r.follow(MIB as u64, MIB, 8 * MIB as u64);
        let f = rx.try_recv().unwrap();
        r.invalidate(3 * MIB as u64 - 1, 3 * MIB as u64);
        land(&r, f, 1);
        assert!(r.take(2 * MIB as u64, MIB).is_none());
        // A write elsewhere leaves a read-ahead alone.
        r.follow(2 * MIB as u64, MIB, 8 * MIB as u64);
        let f = rx.try_recv().unwrap();
        r.invalidate(0, 3 * MIB as u64);
        land(&r, f, 2);
        assert!(r.take(3 * MIB as u64, MIB).is_some());
    }

    #[test]
    fn take_waits_for_a_read_in_flight() {
        let (r, rx) = ra();
        let r = std::sync::Arc::new(r);
        r.follow(0, MIB, 8 * MIB as u64);
        r.follow(MIB as u64, MIB, 8 * MIB as u64);
        let f = rx.try_recv().unwrap();
        let lander = {
            let r = r.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                land(&r, f, 9);
            })
        };
        let buf = r.take(2 * MIB as u64, MIB).expect("waited for it");
        assert_eq!(buf.as_slice()[0], 9);
        lander.join().unwrap();
    }

    #[test]
    fn a_failed_read_ahead_is_not_served_and_the_end_is_respected() {
        let limit = 2 * MIB as u64 + 256 * 1024;
        let (r, rx) = ra();
        r.follow(0, MIB, limit);
        r.follow(MIB as u64, MIB, limit);
        let f = rx.try_recv().unwrap();
        assert_eq!(f.len, 256 * 1024, "clipped at the array's end");
        assert!(rx.try_recv().is_err(), "nothing past the end");
        r.landed(f.id, f.buf, false);
        assert!(r.take(2 * MIB as u64, 256 * 1024).is_none());
        // A range the end would cut below READAHEAD_MIN is not read ahead.
        let (r, rx) = ra();
        let limit = 2 * MIB as u64 + 4096;
        r.follow(0, MIB, limit);
        r.follow(MIB as u64, MIB, limit);
        assert!(rx.try_recv().is_err(), "a 4 KiB tail is not read ahead");
    }

    #[test]
    fn streams_that_stopped_give_their_room_to_new_ones() {
        let (r, rx) = ra();
        // Two streams that stop after two reads: their four ranges land
        // and are never taken.
        for base in [0, 64 * MIB as u64] {
            r.follow(base, MIB, 1 << 40);
            r.follow(base + MIB as u64, MIB, 1 << 40);
        }
        for f in rx.try_iter().collect::<Vec<_>>() {
            land(&r, f, 3);
        }
        // A third stream still gets read ahead.
        r.follow(128 * MIB as u64, MIB, 1 << 40);
        r.follow(129 * MIB as u64, MIB, 1 << 40);
        let got: Vec<u64> = rx.try_iter().map(|f| f.start).collect();
        assert_eq!(got, vec![130 * MIB as u64, 131 * MIB as u64]);
    }

    #[test]
    fn nothing_is_read_ahead_once_closed() {
        let (r, rx) = ra();
        r.close();
        r.follow(0, MIB, 8 * MIB as u64);
        r.follow(MIB as u64, MIB, 8 * MIB as u64);
        assert!(rx.try_recv().is_err());
        assert!(r.take(2 * MIB as u64, MIB).is_none());
    }
}
