use super::*;
use crate::bitmap::store::MemPageStore;
use crate::format::bitmap::{test_bit, BITMAP_SUPER_SIZE};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Barrier;

const K64: u64 = 65536;

fn opts(delay_ms: u64) -> BitmapOptions {
    BitmapOptions {
        clear_delay: Duration::from_millis(delay_ms),
        daemon_tick: None,
        spawn_daemon: false,
        loaded_bits_needed: true,
        array_events: None,
    }
}

/// 496 chunks of 64 KiB (the fixtures' geometry), one file page.
fn small_super() -> BitmapSuper {
    let mut sb = BitmapSuper::new_for_array([9; 16], 63488, 65536, 5, 5);
    sb.events_cleared = 3;
    sb
}

/// 31000 chunks of 512 bytes: two file pages (page 1 from chunk 30720).
fn two_page_super() -> BitmapSuper {
    BitmapSuper::new_for_array([9; 16], 31000, 512, 5, 5)
}

fn build(sb: BitmapSuper, o: BitmapOptions) -> (WriteIntentBitmap, Arc<MemPageStore>) {
    let bits = vec![0u8; sb.chunks().div_ceil(8) as usize];
    let mut image = sb.to_bytes().to_vec();
    image.extend_from_slice(&bits);
    let store = MemPageStore::new(image);
    let bm = WriteIntentBitmap::new(sb, &bits, store.clone(), o).unwrap();
    (bm, store)
}

fn on_disk(store: &MemPageStore, chunk: u64) -> bool {
    test_bit(&store.image()[BITMAP_SUPER_SIZE..], chunk)
}

#[test]
fn start_write_returns_only_after_the_bit_is_durable() {
    let (bm, store) = build(small_super(), opts(100));
    store.set_delay(Duration::from_millis(50));
    let seen: Arc<Mutex<Vec<bool>>> = Arc::default();
    let s2 = seen.clone();
    store.set_on_complete(move |_, image| {
        s2.lock().push(test_bit(&image[BITMAP_SUPER_SIZE..], 3));
    });
    let t = Instant::now();
    bm.start_write(3 * K64 + 100, 10).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert_eq!(
        *seen.lock(),
        vec![true],
        "a completed write carried the bit"
    );
    // Already durable: no new flush, no wait.
    bm.start_write(3 * K64, K64).unwrap();
    assert_eq!(store.submits(), 1);
    bm.end_write(3 * K64 + 100, 10, true);
    bm.end_write(3 * K64, K64, true);
}

#[test]
fn second_writer_of_a_chunk_waits_for_the_first_writers_flush() {
    let (bm, store) = build(small_super(), opts(100));
    store.set_delay(Duration::from_millis(200));
    let bm = Arc::new(bm);
    let first = {
        let bm = bm.clone();
        std::thread::spawn(move || bm.start_write(4 * K64, 1).unwrap())
    };
    // Let the first writer set the bit in memory and start its flush.
    std::thread::sleep(Duration::from_millis(50));
    bm.start_write(4 * K64 + 10, 1).unwrap();
    assert!(
        on_disk(&store, 4),
        "second writer returned before the bit reached disk"
    );
    first.join().unwrap();
}

#[test]
fn writer_arriving_during_a_flush_waits_for_the_next_one() {
    let (bm, store) = build(small_super(), opts(100));
    store.set_delay(Duration::from_millis(200));
    let bm = Arc::new(bm);
    let first = {
        let bm = bm.clone();
        std::thread::spawn(move || bm.start_write(4 * K64, 1).unwrap())
    };
    std::thread::sleep(Duration::from_millis(50));
    // Chunk 8 is set after the in-flight snapshot was taken.
    bm.start_write(8 * K64, 1).unwrap();
    assert!(
        on_disk(&store, 8),
        "returned on a flush that lacked its bit"
    );
    assert_eq!(store.submits(), 2);
    first.join().unwrap();
}

/// The reviewer's sequence, made deterministic by a slow store: the daemon
/// clears chunk 6 and starts writing the page with its bit clear; writer B
/// sets the bit again and waits for the next flush; writer C finds the bit set
/// in memory and in the last image that reached disk. C must not return before
/// a flush that started after the bit was set has landed, or the daemon's
/// in-flight image clears the bit under C's data write.
#[test]
fn writer_waits_out_a_clear_in_flight() {
    let (bm, store) = build(small_super(), opts(0));
    bm.start_write(6 * K64, 1).unwrap();
    bm.end_write(6 * K64, 1, true);
    assert!(on_disk(&store, 6));
    store.set_delay(Duration::from_millis(300));
    let c_returned = Arc::new(AtomicBool::new(false));
    let landed_clear_after_c: Arc<Mutex<Vec<usize>>> = Arc::default();
    {
        let (c_returned, landed) = (c_returned.clone(), landed_clear_after_c.clone());
        store.set_on_complete(move |page, image| {
            if c_returned.load(Ordering::SeqCst) && !test_bit(&image[BITMAP_SUPER_SIZE..], 6) {
                landed.lock().push(page);
            }
        });
    }
    let bm = Arc::new(bm);
    let daemon = {
        let bm = bm.clone();
        std::thread::spawn(move || bm.run_daemon_pass())
    };
    // The daemon has cleared the bit in memory and its write is in flight.
    std::thread::sleep(Duration::from_millis(60));
    assert!(
        bm.dirty_chunks().is_empty(),
        "the daemon did not clear chunk 6"
    );
    let writer_b = {
        let bm = bm.clone();
        std::thread::spawn(move || bm.start_write(6 * K64 + 512, 1).unwrap())
    };
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(
        bm.dirty_chunks(),
        vec![6],
        "writer B did not set the bit again"
    );
    // Writer C: the bit is set in memory and in the last durable image.
    bm.start_write(6 * K64 + 1024, 1).unwrap();
    c_returned.store(true, Ordering::SeqCst);
    assert!(on_disk(&store, 6), "C returned with its bit clear on disk");
    // A writer after C takes the fast path (DURABLE); it must be as safe.
    bm.start_write(6 * K64 + 2048, 1).unwrap();
    daemon.join().unwrap();
    writer_b.join().unwrap();
    assert!(
        landed_clear_after_c.lock().is_empty(),
        "a page image with chunk 6 clear landed while C's write was in flight"
    );
    assert!(on_disk(&store, 6));
    for off in [512, 1024, 2048] {
        bm.end_write(6 * K64 + off, 1, true);
    }
}

#[test]
fn racing_writers_and_daemon_never_expose_a_clear_bit() {
    let o = BitmapOptions {
        spawn_daemon: true,
        daemon_tick: Some(Duration::from_millis(10)),
        ..opts(0)
    };
    let (bm, store) = build(two_page_super(), o);
    let bm = Arc::new(bm);
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let bm = bm.clone();
            let store = store.clone();
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9u64.wrapping_mul(t + 1);
                for _ in 0..300 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    // Chunks on both sides of the page boundary, colliding often.
                    let c = 30700 + (x >> 33) % 40;
                    let n = 1 + (x >> 20) % 3;
                    bm.start_write(c * 512, n * 512).unwrap();
                    for chunk in c..(c + n).min(31000) {
                        assert!(on_disk(&store, chunk), "chunk {chunk} clear during a write");
                    }
                    std::thread::sleep(Duration::from_micros((x >> 40) % 400));
                    for chunk in c..(c + n).min(31000) {
                        assert!(
                            on_disk(&store, chunk),
                            "chunk {chunk} cleared during a write"
                        );
                    }
                    bm.end_write(c * 512, n * 512, true);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(
        store.submits() > 10,
        "the daemon cleared bits while writers ran ({} page writes)",
        store.submits()
    );
    bm.stop_clean().unwrap();
    assert!(store.image()[BITMAP_SUPER_SIZE..].iter().all(|&b| b == 0));
}

#[test]
fn concurrent_writers_on_one_page_share_flushes() {
    let (bm, store) = build(small_super(), opts(100));
    store.set_delay(Duration::from_millis(30));
    let bm = Arc::new(bm);
    let writers = 32;
    let barrier = Arc::new(Barrier::new(writers));
    let handles: Vec<_> = (0..writers as u64)
        .map(|i| {
            let bm = bm.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                bm.start_write(i * 7 * K64, 4096).unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for i in 0..writers as u64 {
        assert!(on_disk(&store, i * 7), "chunk {} on disk", i * 7);
    }
    assert!(
        store.submits() <= 4,
        "{} writers needed {} page writes",
        writers,
        store.submits()
    );
}

#[test]
fn bits_clear_only_after_idle_delay_and_the_page_is_written() {
    let (bm, store) = build(small_super(), opts(100));
    bm.start_write(10 * K64, 2 * K64).unwrap();
    assert!(on_disk(&store, 10) && on_disk(&store, 11));
    bm.end_write(10 * K64, 2 * K64, true);
    bm.run_daemon_pass();
    assert!(on_disk(&store, 10), "cleared before the idle delay");
    std::thread::sleep(Duration::from_millis(150));
    let before = store.submits();
    bm.run_daemon_pass();
    assert!(!on_disk(&store, 10) && !on_disk(&store, 11));
    assert_eq!(store.submits(), before + 1, "one write for the page");
    assert!(bm.dirty_chunks().is_empty());
    // The bit comes back (durably) on the next write.
    bm.start_write(10 * K64, 1).unwrap();
    assert!(on_disk(&store, 10));
    bm.end_write(10 * K64, 1, true);
}

#[test]
fn bits_clear_only_for_writes_the_durability_hook_covered() {
    let (bm, store) = build(small_super(), opts(0));
    let bm = Arc::new(bm);
    bm.start_write(10 * K64, 1).unwrap();
    bm.start_write(20 * K64, 1).unwrap();
    bm.end_write(10 * K64, 1, true);
    std::thread::sleep(Duration::from_millis(5));
    let calls = Arc::new(AtomicU64::new(0));
    // Chunk 20's write ends while the legs are being flushed: the flush
    // may have missed it, so its bit must stay for this pass.
    let hook: DurabilityHook = {
        let (bm, calls) = (Arc::downgrade(&bm), calls.clone());
        Arc::new(move || {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(5));
                if let Some(bm) = bm.upgrade() {
                    bm.end_write(20 * K64, 1, true);
                }
            }
            Ok(())
        })
    };
    bm.set_durability_hook(hook);
    bm.run_daemon_pass();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the legs were flushed first"
    );
    assert!(!on_disk(&store, 10), "idle before the flush: cleared");
    assert!(on_disk(&store, 20), "ended during the flush: kept");
    std::thread::sleep(Duration::from_millis(5));
    bm.run_daemon_pass();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(!on_disk(&store, 20), "covered by the second flush");
}

#[test]
fn a_failed_durability_hook_clears_nothing() {
    let (bm, store) = build(small_super(), opts(0));
    bm.set_durability_hook(Arc::new(|| Err("leg flush failed".into())));
    bm.start_write(7 * K64, 1).unwrap();
    bm.end_write(7 * K64, 1, true);
    std::thread::sleep(Duration::from_millis(5));
    bm.run_daemon_pass();
    assert!(on_disk(&store, 7), "no bit cleared without durable data");
    assert_eq!(bm.dirty_chunks(), vec![7]);
}

#[test]
fn a_leg_failed_by_the_durability_flush_keeps_the_bits() {
    let (bm, store) = build(small_super(), opts(0));
    let bm = Arc::new(bm);
    // The flush fails a leg: the array layer marks the bitmap degraded
    // while the hook runs (the failure is recorded before the flush ends).
    let hook: DurabilityHook = {
        let bm = Arc::downgrade(&bm);
        Arc::new(move || {
            if let Some(bm) = bm.upgrade() {
                bm.set_degraded(true);
            }
            Ok(())
        })
    };
    bm.set_durability_hook(hook);
    bm.start_write(7 * K64, 1).unwrap();
    bm.end_write(7 * K64, 1, true);
    std::thread::sleep(Duration::from_millis(5));
    bm.run_daemon_pass();
    assert!(
        on_disk(&store, 7),
        "the failed leg may lack chunk 7: its re-add must resync it"
    );
    assert_eq!(bm.dirty_chunks(), vec![7]);
}

#[test]
fn outstanding_write_keeps_its_bit() {
    let (bm, store) = build(small_super(), opts(0));
    bm.start_write(0, K64).unwrap();
    bm.start_write(0, K64).unwrap();
    bm.end_write(0, K64, true);
    bm.run_daemon_pass();
    assert!(on_disk(&store, 0));
    bm.end_write(0, K64, true);
    bm.run_daemon_pass();
    assert!(!on_disk(&store, 0));
}

#[test]
fn degraded_keeps_bits_until_whole_again() {
    let (bm, store) = build(small_super(), opts(0));
    bm.set_degraded(true);
    bm.start_write(5 * K64, 1).unwrap();
    bm.end_write(5 * K64, 1, true);
    bm.run_daemon_pass();
    assert!(on_disk(&store, 5));
    bm.set_degraded(false);
    bm.run_daemon_pass();
    assert!(
        on_disk(&store, 5),
        "written while degraded: needed by the re-add"
    );
    bm.mark_chunk_synced(5);
    bm.run_daemon_pass();
    assert!(!on_disk(&store, 5));
}

#[test]
fn write_missing_a_leg_stays_dirty_until_synced() {
    let (bm, store) = build(small_super(), opts(0));
    bm.start_write(7 * K64, 1).unwrap();
    bm.end_write(7 * K64, 1, false);
    bm.run_daemon_pass();
    assert!(on_disk(&store, 7));
    assert_eq!(bm.dirty_chunks(), vec![7]);
    bm.mark_chunk_synced(7);
    bm.run_daemon_pass();
    assert!(!on_disk(&store, 7));
}

#[test]
fn daemon_thread_clears_on_its_own() {
    let mut o = opts(100);
    o.spawn_daemon = true;
    let (bm, store) = build(small_super(), o);
    bm.start_write(2 * K64, 1).unwrap();
    bm.end_write(2 * K64, 1, true);
    let t = Instant::now();
    while on_disk(&store, 2) {
        assert!(t.elapsed() < Duration::from_secs(3), "daemon never cleared");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(t.elapsed() >= Duration::from_millis(90));
}

#[test]
fn store_error_fails_start_write_with_context_and_marks_faulty() {
    let (bm, store) = build(small_super(), opts(0));
    store.fail_next(1, libc::EIO);
    let err = bm.start_write(K64, 1).unwrap_err().to_string();
    assert!(err.contains("page 0"), "{err}");
    assert!(err.contains("memory bitmap"), "{err}");
    assert!(err.contains("os error 5"), "{err}");
    let stats = bm.stats();
    assert!(stats.faulty);
    assert_eq!(stats.chunks_writing, 0, "counts released on failure");
    assert_eq!(
        bm.header().state & BITMAP_STATE_WRITE_ERROR,
        BITMAP_STATE_WRITE_ERROR
    );
    let err = bm.start_write(9 * K64, 1).unwrap_err().to_string();
    assert!(err.contains("faulty"), "{err}");
    assert!(bm.stop_clean().is_err());
}

#[test]
fn stop_clean_leaves_a_clean_bitmap() {
    let (bm, store) = build(two_page_super(), opts(60_000));
    for c in [0u64, 100, 30719, 30720, 30999] {
        bm.start_write(c * 512, 512).unwrap();
        bm.end_write(c * 512, 512, true);
    }
    assert_eq!(bm.dirty_chunks(), vec![0, 100, 30719, 30720, 30999]);
    bm.stop_clean().unwrap();
    let image = store.image();
    assert_eq!(image.len(), 256 + 31000usize.div_ceil(8));
    assert!(image[BITMAP_SUPER_SIZE..].iter().all(|&b| b == 0));
    let sb = BitmapSuper::parse(&image).unwrap();
    assert_eq!(sb.events, 5);
    assert_eq!(sb.events_cleared, 5);
}

#[test]
fn stop_clean_keeps_needed_and_degraded_bits() {
    let (bm, store) = build(small_super(), opts(0));
    bm.start_write(0, 1).unwrap();
    bm.end_write(0, 1, false);
    bm.start_write(K64, 1).unwrap();
    bm.end_write(K64, 1, true);
    bm.stop_clean().unwrap();
    assert!(on_disk(&store, 0));
    assert!(!on_disk(&store, 1));

    let (bm, store) = build(small_super(), opts(0));
    bm.set_degraded(true);
    bm.start_write(K64, 1).unwrap();
    bm.end_write(K64, 1, false);
    bm.stop_clean().unwrap();
    assert!(on_disk(&store, 1));
}

#[test]
fn loaded_bits_are_durable_and_needed() {
    let sb = small_super();
    let mut bits = vec![0u8; 62];
    bits[10] = 0b0000_0100; // chunk 82
    let mut image = sb.to_bytes().to_vec();
    image.extend_from_slice(&bits);
    let store = MemPageStore::new(image);
    let bm = WriteIntentBitmap::new(sb, &bits, store.clone(), opts(0)).unwrap();
    bm.start_write(82 * K64, 1).unwrap();
    assert_eq!(store.submits(), 0, "bit already on disk: no flush");
    bm.end_write(82 * K64, 1, true);
    bm.run_daemon_pass();
    assert!(on_disk(&store, 82), "needed until resynced");
    bm.mark_chunk_synced(82);
    bm.run_daemon_pass();
    assert!(!on_disk(&store, 82));
}

#[test]
fn stale_bitmap_sets_every_bit_and_needs_resync() {
    let sb = small_super(); // events 5
    let bits = vec![0u8; 62];
    let mut image = sb.to_bytes().to_vec();
    image.extend_from_slice(&bits);
    let store = MemPageStore::new(image);
    let o = BitmapOptions {
        array_events: Some(9),
        ..opts(0)
    };
    let bm = WriteIntentBitmap::new(sb, &bits, store.clone(), o).unwrap();
    let img = store.image();
    let h = BitmapSuper::parse(&img).unwrap();
    assert_eq!(h.events_cleared, 9);
    assert_eq!(h.state & BITMAP_STATE_STALE, 0);
    assert_eq!(crate::format::bitmap::count_dirty(&img[256..], 496), 496);
    bm.run_daemon_pass();
    assert_eq!(bm.dirty_chunks().len(), 496, "kept until resynced");
    for c in 0..496 {
        bm.mark_chunk_synced(c);
    }
    bm.run_daemon_pass();
    assert!(bm.dirty_chunks().is_empty());
    assert!(!on_disk(&store, 0));
}

#[test]
fn events_cleared_follows_md_rules() {
    let (bm, store) = build(small_super(), opts(0));
    let header = |s: &MemPageStore| BitmapSuper::parse(&s.image()).unwrap();
    // Degraded writes never advance events_cleared.
    bm.set_degraded(true);
    bm.start_write(0, 1).unwrap();
    bm.end_write(0, 1, false);
    bm.run_daemon_pass();
    assert_eq!(header(&store).events_cleared, 3);
    // A write ending on all legs of a whole array: events_cleared = events.
    bm.set_degraded(false);
    bm.start_write(K64, 1).unwrap();
    bm.end_write(K64, 1, true);
    bm.run_daemon_pass();
    assert_eq!(header(&store).events_cleared, 5);
    // New array events are written with page 0.
    bm.update_header(8).unwrap();
    let h = header(&store);
    assert_eq!((h.events, h.events_cleared), (8, 5));
    // Rolling events back below events_cleared lowers it.
    bm.update_header(4).unwrap();
    let h = header(&store);
    assert_eq!((h.events, h.events_cleared), (4, 4));
}

#[test]
fn events_cleared_waits_while_a_leg_recovers() {
    let (bm, store) = build(small_super(), opts(0));
    let header = |s: &MemPageStore| BitmapSuper::parse(&s.image()).unwrap();
    bm.set_recovering(true);
    bm.start_write(K64, 1).unwrap();
    bm.end_write(K64, 1, true);
    bm.run_daemon_pass();
    assert_eq!(
        header(&store).events_cleared,
        3,
        "advanced while recovering"
    );
    assert!(
        !on_disk(&store, 1),
        "md clears bits of writes every leg got"
    );
    bm.set_recovering(false);
    bm.start_write(K64, 1).unwrap();
    bm.end_write(K64, 1, true);
    bm.run_daemon_pass();
    assert_eq!(header(&store).events_cleared, 5);
}

#[test]
fn out_of_range_write_is_refused_without_side_effects() {
    let (bm, _store) = build(small_super(), opts(0));
    assert!(bm.start_write(496 * K64, 1).is_err());
    assert_eq!(bm.stats().chunks_writing, 0);
    assert!(bm.start_write(0, 0).is_ok());
}

#[test]
fn stats_in_mdstat_words() {
    let (bm, _store) = build(small_super(), opts(0));
    assert_eq!(
        bm.stats().mdstat_fragment(),
        "bitmap: 0/1 pages [0KB], 64KB chunk"
    );
    bm.start_write(0, 1).unwrap();
    assert_eq!(
        bm.stats().mdstat_fragment(),
        "bitmap: 1/1 pages [4KB], 64KB chunk"
    );
    bm.end_write(0, 1, true);
}

#[test]
fn clustered_bitmap_is_refused() {
    let mut sb = small_super();
    sb.nodes = 2;
    sb.version = 5;
    let store = MemPageStore::new(vec![]);
    assert!(WriteIntentBitmap::new(sb, &[0; 62], store, opts(0)).is_err());
}

#[derive(Debug, Clone)]
enum Op {
    Start(u64, u64),
    End(usize, bool),
    Pass,
    Degraded(bool),
    Synced(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..31000, 1u64..400).prop_map(|(c, n)| Op::Start(c, n)),
        4 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(i, s)| Op::End(i, s)),
        2 => Just(Op::Pass),
        1 => any::<bool>().prop_map(Op::Degraded),
        1 => (0u64..31000).prop_map(Op::Synced),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Every chunk with a write outstanding has its bit in the durable image;
    /// after a daemon pass on a whole array (delay 0), exactly the chunks that
    /// are written or NEEDED are set.
    #[test]
    fn outstanding_writes_are_always_on_disk(ops in proptest::collection::vec(op(), 1..40)) {
        let (bm, store) = build(two_page_super(), opts(0));
        let mut outstanding: Vec<(u64, u64)> = Vec::new();
        let mut needed: HashSet<u64> = HashSet::new();
        let mut degraded = false;
        for op in ops {
            match op {
                Op::Start(c, n) => {
                    let n = n.min(31000 - c);
                    bm.start_write(c * 512, n * 512).unwrap();
                    outstanding.push((c, n));
                }
                Op::End(i, in_sync) if !outstanding.is_empty() => {
                    let (c, n) = outstanding.swap_remove(i % outstanding.len());
                    bm.end_write(c * 512, n * 512, in_sync);
                    if !in_sync || degraded {
                        needed.extend(c..c + n);
                    }
                }
                Op::End(..) => {}
                Op::Pass => bm.run_daemon_pass(),
                Op::Degraded(d) => {
                    degraded = d;
                    bm.set_degraded(d);
                }
                Op::Synced(c) => {
                    needed.remove(&c);
                    bm.mark_chunk_synced(c);
                }
            }
            let image = store.image();
            let bits = &image[BITMAP_SUPER_SIZE..];
            for &(c, n) in &outstanding {
                for chunk in c..c + n {
                    prop_assert!(test_bit(bits, chunk), "chunk {} written but clear on disk", chunk);
                }
            }
            if !degraded {
                bm.run_daemon_pass();
                let image = store.image();
                let bits = &image[BITMAP_SUPER_SIZE..];
                let mut busy: BTreeMap<u64, ()> = BTreeMap::new();
                for &(c, n) in &outstanding {
                    for chunk in c..c + n {
                        busy.insert(chunk, ());
                    }
                }
                for chunk in 0..31000u64 {
                    let want = busy.contains_key(&chunk) || needed.contains(&chunk);
                    prop_assert_eq!(test_bit(bits, chunk), want, "chunk {}", chunk);
                }
            }
        }
    }
}
