//! The write-intent bitmap service, after md-bitmap.c.
//!
//! Per chunk, one `AtomicU32` holds the number of writes in flight plus two
//! flags (md keeps a 16-bit counter with NEEDED/RESYNC flags):
//! - `DURABLE`: the chunk's bit is on disk and no page image being written
//!   clears it. It is set only by a writer that holds a count on the chunk and
//!   has just proved that (see below), and cleared only by a compare-and-swap
//!   that expects a zero write count, under the page lock, just before the bit
//!   is cleared in memory. So a writer whose `fetch_add` returned a value with
//!   `DURABLE` knows its bit is on disk and stays there until it ends: the
//!   common case costs one atomic add per chunk and takes no lock.
//! - `NEEDED`: some leg missed a write to the chunk (md's NEEDED_MASK); the
//!   bit stays set until [`WriteIntentBitmap::mark_chunk_synced`].
//!
//! Each 4096-byte file page has an in-memory image with a generation number
//! (bumped by every change), the generation that last reached disk, and a
//! "flush in flight" flag: writers needing a page on disk share flushes
//! (group commit), and no lock is held while a flush waits for I/O. The page
//! also keeps its *settled* bits: those of the last image that landed, minus
//! every bit cleared since that image was taken. A bit that is on disk is not
//! proof enough, because the daemon may have a flush in flight that clears it;
//! a writer that finds its bit set in memory but not settled waits for a flush
//! of the current generation, i.e. one that starts after its bit was set.
//!
//! Clearing (md_bitmap_daemon_work): md decrements an idle chunk's counter
//! from 2 to 1 on one daemon pass and clears the bit on the next, so a bit is
//! cleared only after its chunk stayed idle across a whole daemon period. We
//! stamp the time a chunk's write count drops to zero and clear it once it has
//! been idle for `clear_delay`, unless it is NEEDED or the array is degraded
//! (md keeps every bit while degraded so a re-added leg can resync from it).
//! All chunks cleared on one page go out in one page write. A write that ends
//! while the array is degraded is NEEDED whatever the caller says (older md's
//! endwrite: "never clear bits or update events_cleared when degraded";
//! raid1 passes success = !degraded), so its bit outlives the degradation
//! until the re-add's resync calls `mark_chunk_synced`.
//!
//! Events (md_bitmap_endwrite, md_bitmap_update_sb, md_bitmap_read_sb):
//! - `events` in the header follows the array superblock's events; it is
//!   written with page 0 when the array superblock is updated
//!   ([`WriteIntentBitmap::update_header`]).
//! - `events_cleared` is the array's events at the time bits were last allowed
//!   to be cleared: when a write ends on all legs of a non-degraded array and
//!   `events_cleared < events`, md sets `events_cleared = events` and marks the
//!   header for the next daemon write. md's "degraded" there counts a leg
//!   still recovering ([`WriteIntentBitmap::set_recovering`]). A device re-added with events >=
//!   events_cleared can be resynced from the bitmap alone, since no bit for a
//!   write it missed has been cleared since.
//! - When the array's events roll back below `events_cleared` (md lowers
//!   events on a clean<->dirty flip), md_bitmap_update_sb lowers
//!   `events_cleared` to match ("rocking back to read-only"). The fixture
//!   a-clean shows this: events 2, events_cleared 1 after a fill.
//! - md_bitmap_update_sb writes the state without BITMAP_WRITE_ERROR.
//!
//! Write errors: md kicks a failed bitmap file and marks it faulty. We mark the
//! bitmap faulty and fail the waiting `start_write` calls and every later one,
//! so the engine fails writes instead of writing without intent records.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::{BitmapError, PageStore, WriteIntent};
use crate::format::bitmap::{
    chunk_to_page_and_bit, clear_bit, page_chunk_range, page_len, set_bit, test_bit, BitmapSuper,
    BITMAP_PAGE_SIZE, BITMAP_STATE_STALE, BITMAP_STATE_WRITE_ERROR, BITMAP_SUPER_SIZE,
};
use crate::io::aligned::AlignedBuf;

const COUNT_MASK: u32 = (1 << 28) - 1;
const DURABLE: u32 = 1 << 28;
const NEEDED: u32 = 1 << 29;

/// md's in-memory counter pages hold 2048 16-bit counters; mdstat counts those.
const CHUNKS_PER_COUNTER_PAGE: u64 = 2048;

/// How the service behaves.
#[derive(Debug, Clone)]
pub struct BitmapOptions {
    /// How long a chunk must stay idle before its bit is cleared.
    pub clear_delay: Duration,
    /// Daemon period; `None` means half of `clear_delay` (at least 10 ms).
    pub daemon_tick: Option<Duration>,
    /// Whether to run the clearing daemon thread (tests drive passes by hand).
    pub spawn_daemon: bool,
    /// Bits found set at load mark chunks that may differ between legs: keep
    /// them until the resync calls `mark_chunk_synced` (true), or let the
    /// daemon clear them like idle chunks (false: legs known in sync).
    pub loaded_bits_needed: bool,
    /// The array superblock's events at assembly, when known. md_bitmap_read_sb
    /// calls a bitmap stale when its header says BITMAP_STALE or its events
    /// are older than the array's; md then sets events_cleared to the array's
    /// events and treats every chunk as dirty (full resync). `new` does the
    /// same: all bits set, NEEDED, written, STALE cleared.
    pub array_events: Option<u64>,
}

impl BitmapOptions {
    /// md's timing: the header's daemon_sleep seconds.
    pub fn for_super(sb: &BitmapSuper) -> Self {
        BitmapOptions {
            clear_delay: Duration::from_secs(sb.daemon_sleep.max(1) as u64),
            daemon_tick: None,
            spawn_daemon: true,
            loaded_bits_needed: true,
            array_events: None,
        }
    }

    fn tick(&self) -> Duration {
        self.daemon_tick
            .unwrap_or(self.clear_delay / 2)
            .max(Duration::from_millis(10))
    }
}

/// Makes every data write that has ended durable on the legs (their
/// volatile caches flushed). The array layer provides it; the bitmap knows
/// nothing of legs.
pub type DurabilityHook =
    Arc<dyn Fn() -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// Counters for mdstat and monitoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapStats {
    pub chunks: u64,
    pub chunk_size: u32,
    pub file_pages: usize,
    /// md's counter pages (2048 chunks each): the Y of "bitmap: X/Y pages".
    pub counter_pages_total: u64,
    /// Counter pages with a dirty bit or a write in flight: the X.
    pub counter_pages_in_use: u64,
    pub dirty_chunks: u64,
    pub chunks_writing: u64,
    pub page_flushes: u64,
    pub flush_failures: u64,
    pub faulty: bool,
}

impl BitmapStats {
    /// mdstat's words: "bitmap: 1/1 pages [4KB], 64KB chunk".
    pub fn mdstat_fragment(&self) -> String {
        let chunk = if self.chunk_size >= 1024 {
            format!("{}KB", self.chunk_size / 1024)
        } else {
            format!("{}B", self.chunk_size)
        };
        format!(
            "bitmap: {}/{} pages [{}KB], {} chunk",
            self.counter_pages_in_use,
            self.counter_pages_total,
            self.counter_pages_in_use * 4,
            chunk
        )
    }
}

struct PageState {
    /// The page as it should be on disk (page 0 starts with the header).
    bytes: Vec<u8>,
    /// The bits that are on disk and that no image already being written will
    /// clear: the last image that landed, minus every bit cleared in `bytes`
    /// since that image was taken (a clear may be in flight). A bit set here
    /// stays set on disk while its chunk has a write in flight, because the
    /// daemon clears no bit of a busy chunk.
    settled: Vec<u8>,
    /// Bumped by every change of `bytes`.
    gen: u64,
    /// The generation of the last image that landed.
    durable_gen: u64,
    flushing: bool,
}

struct Page {
    state: Mutex<PageState>,
    flushed: Condvar,
    /// Some chunk of this page went idle: the daemon should look at it.
    pending: AtomicBool,
    /// The page must be written at the next daemon pass (header changes).
    needs_write: AtomicBool,
}

struct Shared {
    /// Leaf lock: nothing else is locked while it is held.
    header: Mutex<BitmapSuper>,
    chunks: u64,
    chunk_shift: u32,
    chunk_size: u32,
    counters: Vec<AtomicU32>,
    idle_since_ms: Vec<AtomicU64>,
    pages: Vec<Page>,
    store: Arc<dyn PageStore>,
    degraded: AtomicBool,
    /// A leg is being recovered: md counts it in `mddev->degraded`, which
    /// holds events_cleared back (bits still clear: the leg gets the writes).
    recovering: AtomicBool,
    events: AtomicU64,
    events_cleared: AtomicU64,
    faulty: AtomicBool,
    faulty_reason: Mutex<Option<String>>,
    page_flushes: AtomicU64,
    flush_failures: AtomicU64,
    epoch: Instant,
    opts: BitmapOptions,
    /// Called before bits are cleared: a bit may go only once its chunk's
    /// writes are on stable storage, or a power loss could lose a leg's
    /// cached write with no bit left to say so.
    durability: Mutex<Option<DurabilityHook>>,
    stop: Mutex<bool>,
    stop_wake: Condvar,
}

/// md's write-intent bitmap over a [`PageStore`]. See the module docs.
pub struct WriteIntentBitmap {
    shared: Arc<Shared>,
    daemon: Mutex<Option<JoinHandle<()>>>,
}

impl WriteIntentBitmap {
    /// Builds the service from the header and bits read at assembly (`bits`
    /// are the file bytes after the 256-byte header).
    pub fn new(
        sb: BitmapSuper,
        bits: &[u8],
        store: Arc<dyn PageStore>,
        opts: BitmapOptions,
    ) -> Result<Self, BitmapError> {
        let what = store.describe();
        if sb.nodes != 0 {
            return Err(BitmapError::msg(format!(
                "{what}: clustered bitmap ({} nodes) is not supported",
                sb.nodes
            )));
        }
        let chunks = sb.chunks();
        let bit_bytes = chunks.div_ceil(8) as usize;
        if bits.len() < bit_bytes {
            return Err(BitmapError::msg(format!(
                "{what}: bitmap has {} bytes of bits, the array needs {} for {} chunks of {} bytes; recreate the bitmap file",
                bits.len(), bit_bytes, chunks, sb.chunksize
            )));
        }
        let stale =
            sb.state & BITMAP_STATE_STALE != 0 || opts.array_events.is_some_and(|e| sb.events < e);
        let mut sb = sb;
        if stale {
            if let Some(e) = opts.array_events {
                log::warn!(
                    "{what}: bitmap is out of date (events {} < array {e}): every chunk will be resynced",
                    sb.events
                );
                sb.events_cleared = e;
            }
        }
        let file_len = sb.file_len();
        let mut image = Vec::with_capacity(file_len as usize);
        image.extend_from_slice(&sb.to_bytes());
        image.extend_from_slice(&bits[..bit_bytes]);
        let pages: Vec<Page> = (0..sb.file_pages())
            .map(|p| {
                let start = p * BITMAP_PAGE_SIZE;
                let bytes = image[start..start + page_len(file_len, p)].to_vec();
                Page {
                    state: Mutex::new(PageState {
                        settled: bytes.clone(),
                        bytes,
                        gen: 0,
                        durable_gen: 0,
                        flushing: false,
                    }),
                    flushed: Condvar::new(),
                    pending: AtomicBool::new(false),
                    needs_write: AtomicBool::new(false),
                }
            })
            .collect();
        let loaded_flags = DURABLE | if opts.loaded_bits_needed { NEEDED } else { 0 };
        let counters: Vec<AtomicU32> = (0..chunks)
            .map(|c| AtomicU32::new(if test_bit(bits, c) { loaded_flags } else { 0 }))
            .collect();
        for (p, page) in pages.iter().enumerate() {
            let r = page_chunk_range(p, chunks);
            if r.clone().any(|c| test_bit(bits, c)) {
                page.pending.store(true, Ordering::Relaxed);
            }
        }
        let shared = Arc::new(Shared {
            chunks,
            chunk_shift: sb.chunksize.trailing_zeros(),
            chunk_size: sb.chunksize,
            counters,
            idle_since_ms: (0..chunks).map(|_| AtomicU64::new(0)).collect(),
            pages,
            store,
            degraded: AtomicBool::new(false),
            recovering: AtomicBool::new(false),
            events: AtomicU64::new(sb.events),
            events_cleared: AtomicU64::new(sb.events_cleared),
            faulty: AtomicBool::new(false),
            faulty_reason: Mutex::new(None),
            page_flushes: AtomicU64::new(0),
            flush_failures: AtomicU64::new(0),
            epoch: Instant::now(),
            header: Mutex::new(sb),
            opts,
            durability: Mutex::new(None),
            stop: Mutex::new(false),
            stop_wake: Condvar::new(),
        });
        let daemon = if shared.opts.spawn_daemon {
            let s = shared.clone();
            let handle = std::thread::Builder::new()
                .name("bitmap-daemon".into())
                .spawn(move || s.daemon_loop())
                .map_err(|e| BitmapError::io(format!("{what}: cannot start bitmap daemon"), e))?;
            Some(handle)
        } else {
            None
        };
        let bm = WriteIntentBitmap {
            shared,
            daemon: Mutex::new(daemon),
        };
        if stale {
            bm.set_all_dirty()?;
        }
        Ok(bm)
    }

    pub fn chunk_size(&self) -> u32 {
        self.shared.chunk_size
    }

    pub fn chunks(&self) -> u64 {
        self.shared.chunks
    }

    /// Sets what makes ended writes durable before their bits are cleared.
    pub fn set_durability_hook(&self, hook: DurabilityHook) {
        *self.shared.durability.lock() = Some(hook);
    }

    /// While degraded no bit is ever cleared (md keeps them for a re-add).
    pub fn set_degraded(&self, degraded: bool) {
        self.shared.degraded.store(degraded, Ordering::SeqCst);
        if !degraded {
            for page in &self.shared.pages {
                page.pending.store(true, Ordering::Release);
            }
        }
    }

    pub fn is_degraded(&self) -> bool {
        self.shared.degraded.load(Ordering::SeqCst)
    }

    /// While a leg is recovering, events_cleared does not advance: md's
    /// md_bitmap_endwrite requires `!mddev->degraded`, and md counts a leg
    /// that is not yet in sync as degraded. Bits of writes that reached
    /// every leg, the recovering one included, still clear, as in md.
    pub fn set_recovering(&self, recovering: bool) {
        self.shared.recovering.store(recovering, Ordering::SeqCst);
    }

    /// Chunks whose bit is set in memory (what a resync must copy).
    pub fn dirty_chunks(&self) -> Vec<u64> {
        let s = &self.shared;
        let mut out = Vec::new();
        for (p, page) in s.pages.iter().enumerate() {
            let st = page.state.lock();
            for c in page_chunk_range(p, s.chunks) {
                let (_, bit) = chunk_to_page_and_bit(c);
                if test_bit(&st.bytes, bit as u64) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// md's end_sync: the chunk is now the same on every leg; its bit may be
    /// cleared once idle.
    pub fn mark_chunk_synced(&self, chunk: u64) {
        let s = &self.shared;
        let Some(counter) = s.counters.get(chunk as usize) else {
            return;
        };
        let old = counter.fetch_and(!NEEDED, Ordering::AcqRel);
        if old & COUNT_MASK == 0 {
            s.idle_since_ms[chunk as usize].store(s.now_ms(), Ordering::Release);
        }
        s.pages[chunk_to_page_and_bit(chunk).0]
            .pending
            .store(true, Ordering::Release);
    }

    /// Sets every bit and marks every chunk NEEDED (a stale bitmap: full
    /// resync), clears BITMAP_STALE, and writes every page.
    pub fn set_all_dirty(&self) -> Result<(), BitmapError> {
        let s = &self.shared;
        s.header.lock().state &= !BITMAP_STATE_STALE;
        for (p, page) in s.pages.iter().enumerate() {
            let mut st = page.state.lock();
            for c in page_chunk_range(p, s.chunks) {
                s.counters[c as usize].fetch_or(NEEDED, Ordering::AcqRel);
                set_bit(&mut st.bytes, chunk_to_page_and_bit(c).1 as u64);
            }
            if p == 0 {
                s.copy_header_into(&mut st);
            }
            st.gen += 1;
            let required = st.gen;
            s.flush_until(p, st, required)?;
        }
        Ok(())
    }

    /// Writes every page and the header as they are in memory (a new
    /// bitmap's first image, before anything refers to it).
    pub fn write_all_pages(&self) -> Result<(), BitmapError> {
        self.shared.write_all_pages()
    }

    /// Clears every bit (nothing NEEDED, nothing durable) and writes every
    /// page: a new bitmap of an array whose legs are known identical, with
    /// no write in flight and none to come until this returns (the caller
    /// holds them back). Refused while a chunk has a write in flight.
    pub fn set_all_clean(&self) -> Result<(), BitmapError> {
        let s = &self.shared;
        if let Some(c) = s
            .counters
            .iter()
            .position(|c| c.load(Ordering::Acquire) & COUNT_MASK != 0)
        {
            return Err(BitmapError::msg(format!(
                "{}: chunk {c} has a write in flight; the bitmap cannot start clean",
                s.store.describe()
            )));
        }
        for (p, page) in s.pages.iter().enumerate() {
            let mut st = page.state.lock();
            for c in page_chunk_range(p, s.chunks) {
                s.counters[c as usize].fetch_and(!(DURABLE | NEEDED), Ordering::AcqRel);
                let bit = chunk_to_page_and_bit(c).1 as u64;
                clear_bit(&mut st.bytes, bit);
                clear_bit(&mut st.settled, bit);
            }
            if p == 0 {
                s.copy_header_into(&mut st);
            }
            st.gen += 1;
            let required = st.gen;
            s.flush_until(p, st, required)?;
        }
        s.store.flush_device()
    }

    /// md_bitmap_update_sb: the array superblock now has `events`; write the
    /// header (page 0) with it. Lowers events_cleared if events went below it.
    pub fn update_header(&self, events: u64) -> Result<(), BitmapError> {
        let s = &self.shared;
        {
            let mut h = s.header.lock();
            h.events = events;
            if events < h.events_cleared {
                h.events_cleared = events;
            }
            h.state &= !BITMAP_STATE_WRITE_ERROR;
            s.events_cleared.store(h.events_cleared, Ordering::SeqCst);
            s.events.store(events, Ordering::SeqCst);
        }
        s.write_header_now()
    }

    /// md's `need_sync` (`bitmap/can_clear` reads "false" while it holds):
    /// events_cleared was raised and the header carrying it awaits the
    /// daemon's next write.
    pub fn header_write_due(&self) -> bool {
        self.shared.pages[0].needs_write.load(Ordering::Acquire)
    }

    /// The header as it is in memory (what the next page-0 write carries).
    pub fn header(&self) -> BitmapSuper {
        self.shared.header.lock().clone()
    }

    /// One daemon pass now (the daemon thread runs the same).
    pub fn run_daemon_pass(&self) {
        self.shared.daemon_pass(false);
    }

    /// Stops the daemon, clears every bit whose chunk is idle and not NEEDED
    /// (unless degraded), and writes every page and the header: a clean stop
    /// leaves a clean bitmap.
    pub fn stop_clean(&self) -> Result<(), BitmapError> {
        self.stop_daemon();
        let s = &self.shared;
        s.check_faulty()?;
        s.daemon_pass(true);
        s.write_all_pages()
    }

    pub fn stats(&self) -> BitmapStats {
        let s = &self.shared;
        let dirty = self.dirty_chunks();
        let total = s.chunks.div_ceil(CHUNKS_PER_COUNTER_PAGE);
        let mut in_use = vec![false; total as usize];
        for &c in &dirty {
            in_use[(c / CHUNKS_PER_COUNTER_PAGE) as usize] = true;
        }
        let mut writing = 0;
        for (c, counter) in s.counters.iter().enumerate() {
            if counter.load(Ordering::Relaxed) & COUNT_MASK != 0 {
                writing += 1;
                in_use[c / CHUNKS_PER_COUNTER_PAGE as usize] = true;
            }
        }
        BitmapStats {
            chunks: s.chunks,
            chunk_size: s.chunk_size,
            file_pages: s.pages.len(),
            counter_pages_total: total,
            counter_pages_in_use: in_use.iter().filter(|&&u| u).count() as u64,
            dirty_chunks: dirty.len() as u64,
            chunks_writing: writing,
            page_flushes: s.page_flushes.load(Ordering::Relaxed),
            flush_failures: s.flush_failures.load(Ordering::Relaxed),
            faulty: s.faulty.load(Ordering::Relaxed),
        }
    }

    /// Stops the clearing daemon (no bit is cleared, no page written by it,
    /// from now on): a bitmap being taken off the array.
    pub fn stop_daemon(&self) {
        *self.shared.stop.lock() = true;
        self.shared.stop_wake.notify_all();
        if let Some(handle) = self.daemon.lock().take() {
            if handle.join().is_err() {
                log::error!("{}: bitmap daemon panicked", self.shared.store.describe());
            }
        }
    }
}

impl Drop for WriteIntentBitmap {
    fn drop(&mut self) {
        self.stop_daemon();
    }
}

impl WriteIntent for WriteIntentBitmap {
    fn start_write(&self, offset: u64, len: u64) -> Result<(), BitmapError> {
        let s = &self.shared;
        let Some(range) = s.chunk_range(offset, len) else {
            return Ok(());
        };
        if range.end > s.chunks {
            return Err(BitmapError::msg(format!(
                "{}: write at byte {offset} (+{len}) is beyond the bitmap's {} chunks of {} bytes",
                s.store.describe(),
                s.chunks,
                s.chunk_size
            )));
        }
        s.check_faulty()?;
        let mut slow: Vec<u64> = Vec::new();
        for c in range.clone() {
            let old = s.counters[c as usize].fetch_add(1, Ordering::AcqRel);
            if old & DURABLE == 0 {
                slow.push(c);
            }
        }
        if slow.is_empty() {
            return Ok(());
        }
        let result = s.make_bits_durable(&slow);
        if result.is_err() {
            // The engine will not issue the write nor call end_write.
            s.release(range, true);
        }
        result
    }

    fn end_write(&self, offset: u64, len: u64, all_legs_in_sync: bool) {
        let s = &self.shared;
        let Some(range) = s.chunk_range(offset, len) else {
            return;
        };
        let range = range.start..range.end.min(s.chunks);
        // md: "Never clear bits or update events_cleared when degraded": a
        // write that ends while a leg is missing must survive for its re-add.
        let in_sync = all_legs_in_sync && !s.degraded.load(Ordering::Acquire);
        s.release(range, in_sync);
        let whole = in_sync && !s.recovering.load(Ordering::Acquire);
        if whole && s.events_cleared.load(Ordering::Acquire) < s.events.load(Ordering::Acquire) {
            let mut h = s.header.lock();
            if h.events_cleared < h.events {
                h.events_cleared = h.events;
                s.events_cleared.store(h.events, Ordering::Release);
                s.pages[0].needs_write.store(true, Ordering::Release);
            }
        }
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn chunk_range(&self, offset: u64, len: u64) -> Option<Range<u64>> {
        if len == 0 {
            return None;
        }
        let first = offset >> self.chunk_shift;
        let last = offset.saturating_add(len - 1) >> self.chunk_shift;
        Some(first..last + 1)
    }

    fn check_faulty(&self) -> Result<(), BitmapError> {
        if self.faulty.load(Ordering::Acquire) {
            let reason = self.faulty_reason.lock().clone().unwrap_or_default();
            return Err(BitmapError::msg(format!(
                "{}: bitmap is faulty ({reason}); array writes are refused until the bitmap device is fixed and the array reassembled",
                self.store.describe()
            )));
        }
        Ok(())
    }

    fn mark_faulty(&self, reason: String) {
        log::error!("{}: {reason}; bitmap marked faulty", self.store.describe());
        self.header.lock().state |= BITMAP_STATE_WRITE_ERROR;
        let mut r = self.faulty_reason.lock();
        if r.is_none() {
            *r = Some(reason);
        }
        self.faulty.store(true, Ordering::Release);
    }

    /// Drops one write from each chunk; `in_sync` false marks them NEEDED.
    fn release(&self, range: Range<u64>, in_sync: bool) {
        let mut now = None;
        for c in range {
            let counter = &self.counters[c as usize];
            if !in_sync {
                counter.fetch_or(NEEDED, Ordering::AcqRel);
            }
            let old = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & COUNT_MASK != 0).then(|| v - 1)
            });
            match old {
                Ok(v) if v & COUNT_MASK == 1 => {
                    let t = *now.get_or_insert_with(|| self.now_ms());
                    self.idle_since_ms[c as usize].store(t, Ordering::Release);
                    self.pages[chunk_to_page_and_bit(c).0]
                        .pending
                        .store(true, Ordering::Release);
                }
                Ok(_) => {}
                Err(_) => log::error!(
                    "{}: end_write on chunk {c} without a matching start_write",
                    self.store.describe()
                ),
            }
        }
    }

    /// Slow path of start_write: the chunks' bits are set in memory and a
    /// flush that includes them is waited for, page by page.
    fn make_bits_durable(&self, chunks: &[u64]) -> Result<(), BitmapError> {
        let mut i = 0;
        while i < chunks.len() {
            let page_idx = chunk_to_page_and_bit(chunks[i]).0;
            let mut j = i;
            while j < chunks.len() && chunk_to_page_and_bit(chunks[j]).0 == page_idx {
                j += 1;
            }
            let group = &chunks[i..j];
            let page = &self.pages[page_idx];
            let mut st = page.state.lock();
            // We hold a count on each chunk, so from here on no bit of the
            // group is cleared in `bytes`: every image taken from now on
            // carries them all.
            let mut required = st.durable_gen;
            for &c in group {
                let bit = chunk_to_page_and_bit(c).1 as u64;
                if !test_bit(&st.bytes, bit) {
                    set_bit(&mut st.bytes, bit);
                    st.gen += 1;
                    required = st.gen;
                } else if !test_bit(&st.settled, bit) {
                    // Set by another writer whose flush is pending or in
                    // flight, or on disk but about to be overwritten by a
                    // clear in flight: only an image taken now is proof.
                    required = required.max(st.gen);
                }
            }
            self.flush_until(page_idx, st, required)?;
            for &c in group {
                self.counters[c as usize].fetch_or(DURABLE, Ordering::AcqRel);
            }
            i = j;
        }
        Ok(())
    }

    /// Group commit: returns once the page's image of generation `required`
    /// (or later) is on disk, flushing it or joining a flush as needed.
    fn flush_until(
        &self,
        page_idx: usize,
        mut st: MutexGuard<'_, PageState>,
        required: u64,
    ) -> Result<(), BitmapError> {
        let page = &self.pages[page_idx];
        loop {
            if st.durable_gen >= required {
                return Ok(());
            }
            self.check_faulty()?;
            if st.flushing {
                page.flushed.wait(&mut st);
                continue;
            }
            st.flushing = true;
            let gen = st.gen;
            let len = st.bytes.len();
            let mut buf = AlignedBuf::new(BITMAP_PAGE_SIZE);
            buf.as_mut_slice()[..len].copy_from_slice(&st.bytes);
            let failures = MutexGuard::unlocked(&mut st, || {
                self.store
                    .submit_page(page_idx, &buf.as_slice()[..len])
                    .wait()
            });
            st.flushing = false;
            let landed = &buf.as_slice()[..len];
            if failures.is_empty() {
                st.durable_gen = gen;
                // Bits cleared in `bytes` during the flight are not settled:
                // the next image will clear them on disk.
                let PageState { bytes, settled, .. } = &mut *st;
                for ((s, &l), &b) in settled.iter_mut().zip(landed).zip(bytes.iter()) {
                    *s = l & b;
                }
                self.page_flushes.fetch_add(1, Ordering::Relaxed);
            } else {
                // Some runs may have landed: only bits in both the old and
                // the new image are surely on disk.
                for (s, &l) in st.settled.iter_mut().zip(landed) {
                    *s &= l;
                }
                self.flush_failures.fetch_add(1, Ordering::Relaxed);
                let what: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
                self.mark_faulty(format!(
                    "writing bitmap page {page_idx} failed: {}",
                    what.join("; ")
                ));
            }
            page.flushed.notify_all();
        }
    }

    /// Writes every page and the header as they are in memory, then
    /// flushes the device.
    fn write_all_pages(&self) -> Result<(), BitmapError> {
        for (p, page) in self.pages.iter().enumerate() {
            let mut st = page.state.lock();
            if p == 0 {
                self.copy_header_into(&mut st);
            }
            st.gen += 1;
            let required = st.gen;
            self.flush_until(p, st, required)?;
        }
        self.store.flush_device()
    }

    fn copy_header_into(&self, st: &mut PageState) {
        let h = self.header.lock().to_bytes();
        st.bytes[..BITMAP_SUPER_SIZE].copy_from_slice(&h);
    }

    fn write_header_now(&self) -> Result<(), BitmapError> {
        self.check_faulty()?;
        let mut st = self.pages[0].state.lock();
        self.copy_header_into(&mut st);
        st.gen += 1;
        let required = st.gen;
        self.flush_until(0, st, required)
    }

    /// Runs the durability hook if some page may have bits to clear;
    /// returns the time (ms) before which ended writes are durable: zero
    /// when the hook failed (nothing may be cleared), u64::MAX without a
    /// hook.
    fn make_ended_writes_durable(&self, stopping: bool) -> u64 {
        let hook = self.durability.lock().clone();
        let Some(hook) = hook else {
            return u64::MAX;
        };
        if !stopping && !self.pages.iter().any(|p| p.pending.load(Ordering::Acquire)) {
            return 0;
        }
        let started = self.now_ms();
        match hook() {
            Ok(()) => started,
            Err(e) => {
                log::warn!(
                    "{}: no bit cleared: the legs could not be flushed: {e}",
                    self.store.describe()
                );
                0
            }
        }
    }

    fn daemon_loop(&self) {
        let tick = self.opts.tick();
        loop {
            {
                let mut stop = self.stop.lock();
                if !*stop {
                    self.stop_wake.wait_for(&mut stop, tick);
                }
                if *stop {
                    return;
                }
            }
            self.daemon_pass(false);
        }
    }

    /// Clears idle bits (all idle bits when `stopping`) and writes the pages
    /// that changed, one write per page.
    fn daemon_pass(&self, stopping: bool) {
        if self.faulty.load(Ordering::Acquire) {
            return;
        }
        let was_degraded = self.degraded.load(Ordering::Acquire);
        // Chunks idle since before the legs were flushed may be cleared:
        // their writes ended before the flush began.
        let durable_before = if was_degraded {
            0
        } else {
            self.make_ended_writes_durable(stopping)
        };
        // Read again after the flush: a leg it failed made the array
        // degraded, and that leg may have lost what the bits cover.
        let degraded = was_degraded || self.degraded.load(Ordering::Acquire);
        let now = self.now_ms();
        let delay = self.opts.clear_delay.as_millis() as u64;
        for (p, page) in self.pages.iter().enumerate() {
            let header_due = page.needs_write.swap(false, Ordering::AcqRel);
            let look = page.pending.swap(false, Ordering::AcqRel) || stopping;
            if !look && !header_due {
                continue;
            }
            let mut st = page.state.lock();
            let mut changed = false;
            let mut keep_pending = false;
            if look && !degraded {
                for c in page_chunk_range(p, self.chunks) {
                    let bit = chunk_to_page_and_bit(c).1 as u64;
                    if !test_bit(&st.bytes, bit) {
                        continue;
                    }
                    let counter = &self.counters[c as usize];
                    let v = counter.load(Ordering::Acquire);
                    if v & (COUNT_MASK | NEEDED) != 0 {
                        continue;
                    }
                    let idle_since = self.idle_since_ms[c as usize].load(Ordering::Acquire);
                    let idle_for = now.saturating_sub(idle_since);
                    if (!stopping && idle_for < delay) || idle_since >= durable_before {
                        keep_pending = true;
                        continue;
                    }
                    // Fails if a writer arrived since the load: it keeps the bit.
                    if counter
                        .compare_exchange(v, v & !DURABLE, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        clear_bit(&mut st.bytes, bit);
                        // Unsettled from now: the image about to be written
                        // clears it on disk.
                        clear_bit(&mut st.settled, bit);
                        changed = true;
                    } else {
                        keep_pending = true;
                    }
                }
            } else if look {
                // Degraded: look again once the array is whole.
                keep_pending = true;
            }
            if p == 0 && (header_due || changed) {
                self.copy_header_into(&mut st);
                changed = true;
            }
            if keep_pending {
                page.pending.store(true, Ordering::Release);
            }
            if changed {
                st.gen += 1;
                let required = st.gen;
                if let Err(e) = self.flush_until(p, st, required) {
                    log::warn!("bitmap daemon: {e}");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
