//! The RAID1 engine on real leg files, without FUSE: unaligned writes (small
//! and large) read back, concurrent overlapping writers leave the legs identical, a failed
//! leg is failed out while the array keeps serving.

mod common;

use common::rng::Rng;
use mdfuse::io::leg::{IoMode, Leg};
use mdfuse::raid1::{
    ArrayEvents, EngineError, EngineOptions, LegSpec, LegState, Raid1, RecordError,
};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DATA_OFFSET: u64 = 1 << 20;
const ARRAY: u64 = 8 << 20;

/// The array layer's stand-in: counts what it is told, and can hold a leg's
/// failure record (the superblock writes taking long) or refuse it (no leg
/// takes it).
#[derive(Default)]
struct Recorder {
    active: AtomicUsize,
    failed: parking_lot::Mutex<Vec<usize>>,
    hold_records: parking_lot::Mutex<bool>,
    released: parking_lot::Condvar,
    refuse_records: AtomicBool,
}

impl Recorder {
    fn hold(&self, on: bool) {
        *self.hold_records.lock() = on;
        self.released.notify_all();
    }
}

impl ArrayEvents for Recorder {
    fn mark_active(&self) -> Result<(), RecordError> {
        self.active.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn leg_failed(&self, slot: usize, _reason: &str) -> Result<(), RecordError> {
        let mut held = self.hold_records.lock();
        while *held {
            self.released.wait(&mut held);
        }
        if self.refuse_records.load(Ordering::SeqCst) {
            return Err("no leg took the superblock update".into());
        }
        self.failed.lock().push(slot);
        Ok(())
    }
}

fn make_engine(
    dir: &std::path::Path,
    mode: IoMode,
) -> (Raid1, Arc<Recorder>, Vec<std::path::PathBuf>) {
    let mut specs = Vec::new();
    let mut paths = Vec::new();
    for i in 0..2 {
        let p = dir.join(format!("leg{i}"));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(DATA_OFFSET + ARRAY).unwrap();
        let leg = Arc::new(Leg::open(&p, mode, true, true).unwrap());
        specs.push(Some(LegSpec {
            leg,
            data_offset: DATA_OFFSET,
            state: LegState::InSync,
            write_mostly: false,
        }));
        paths.push(p);
    }
    let rec = Arc::new(Recorder::default());
    let engine = Raid1::new(
        specs,
        ARRAY,
        None,
        rec.clone(),
        &EngineOptions { workers_per_leg: 4 },
    )
    .unwrap();
    (engine, rec, paths)
}

fn data_region(p: &std::path::Path) -> Vec<u8> {
    let all = std::fs::read(p).unwrap();
    all[DATA_OFFSET as usize..].to_vec()
}

fn unaligned_writes_read_back(mode: IoMode) {
    let dir = tempfile::tempdir().unwrap();
    let (engine, rec, paths) = make_engine(dir.path(), mode);
    let mut model = vec![0u8; ARRAY as usize];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for i in 0..300 {
        let off = rng.next() % (ARRAY - 1);
        // Every 8th write is large: it goes to the legs in pieces, each as
        // soon as it is copied (an unaligned head and tail, several pieces).
        let most = if i % 8 == 0 { 1_600_000 } else { 70_000 };
        let len = (1 + rng.next() % most).min(ARRAY - off);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert_eq!(engine.write(off, &data, false).unwrap(), len as usize);
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
        let roff = rng.next() % ARRAY;
        let rlen = (1 + rng.next() % 200_000).min(ARRAY - roff);
        let got = engine.read(roff, rlen, |b| b.to_vec()).unwrap();
        assert_eq!(got, model[roff as usize..(roff + rlen) as usize]);
    }
    engine.flush().unwrap();
    assert_eq!(rec.active.load(Ordering::SeqCst), 1, "marked active once");
    assert_eq!(data_region(&paths[0]), model);
    assert_eq!(data_region(&paths[1]), model);
    // Past the end: short at the end, ENOSPC beyond it.
    assert_eq!(engine.write(ARRAY - 10, &[1u8; 100], false).unwrap(), 10);
    let err = engine.write(ARRAY + 4096, &[1u8; 10], false).unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC);
}

#[test]
fn unaligned_writes_read_back_direct() {
    unaligned_writes_read_back(IoMode::Direct);
}

#[test]
fn unaligned_writes_read_back_buffered() {
    unaligned_writes_read_back(IoMode::Buffered);
}

#[test]
fn concurrent_overlapping_writers_keep_legs_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _rec, paths) = make_engine(dir.path(), IoMode::Direct);
    let engine = Arc::new(engine);
    let mut handles = Vec::new();
    for t in 0..6u64 {
        let engine = engine.clone();
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
            for _ in 0..400 {
                // A small hot region so writes overlap often, and partial blocks.
                let off = rng.next() % (64 * 1024);
                let len = 1 + rng.next() % 9000;
                let data = vec![(t as u8) ^ (rng.next() as u8); len as usize];
                engine.write(off, &data, false).unwrap();
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    engine.flush().unwrap();
    assert!(
        data_region(&paths[0]) == data_region(&paths[1]),
        "legs diverged"
    );
}

#[test]
fn sequential_reads_stay_on_one_leg_and_parallel_reads_spread() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _rec, _paths) = make_engine(dir.path(), IoMode::Direct);
    let reads = |e: &Raid1| e.slots().iter().map(|s| s.reads()).collect::<Vec<_>>();
    for i in 0..64u64 {
        engine.read(i * 65536, 65536, |_| ()).unwrap();
    }
    let seq = reads(&engine);
    assert!(
        seq.contains(&64) && seq.contains(&0),
        "a stream stays on one leg: {seq:?}"
    );
    // Random (non-sequential) reads alternate between idle legs.
    let engine = Arc::new(engine);
    let mut handles = Vec::new();
    for t in 0..2u64 {
        let engine = engine.clone();
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(77 + t);
            for _ in 0..200 {
                let off = (rng.next() % (ARRAY / 4096)) * 4096;
                engine.read(off, 4096, |_| ()).unwrap();
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let after = reads(&engine);
    let random: Vec<u64> = after.iter().zip(&seq).map(|(a, b)| a - b).collect();
    assert!(
        random.iter().all(|&n| n >= 100),
        "random reads spread over legs: {random:?}"
    );
}

/// A large read is split over both legs, each reading its own piece, and
/// the pieces come back in order; an unaligned large read too.
#[test]
fn large_reads_are_split_over_the_legs_and_come_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _rec, _paths) = make_engine(dir.path(), IoMode::Direct);
    let data = Rng(0x5711).bytes(3 << 20);
    engine.write(8192, &data, false).unwrap();
    let reads = |e: &Raid1| e.slots().iter().map(|s| s.reads()).collect::<Vec<_>>();
    let before = reads(&engine);
    let got = engine
        .read(8192, 1 << 20, |b| b.to_vec())
        .expect("a 1 MiB read");
    assert!(
        got == data[..1 << 20],
        "the pieces of a split read out of order"
    );
    let after = reads(&engine);
    assert!(
        after.iter().zip(&before).all(|(a, b)| a - b == 1),
        "a 1 MiB read reads each leg once: {before:?} -> {after:?}"
    );
    let got = engine
        .read(8192 + 1000, (2 << 20) + 12345, |b| b.to_vec())
        .expect("an unaligned 2 MiB read");
    assert!(got == data[1000..1000 + (2 << 20) + 12345]);
    // Small reads are not split: one leg each.
    let before = reads(&engine);
    engine.read(0, 64 << 10, |_| ()).unwrap();
    let after = reads(&engine);
    let total: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    assert_eq!(total, 1, "a 64 KiB read went to {total} legs");
}

/// An O_DIRECT reader's sequential stream is read ahead, and a write to the
/// range read ahead, acknowledged before the read, is what the read returns:
/// read-ahead never serves data older than an acknowledged write.
#[test]
fn direct_streams_are_read_ahead_and_writes_are_never_served_stale() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _rec, _paths) = make_engine(dir.path(), IoMode::Direct);
    let engine = Arc::new(engine);
    engine.start_readahead().unwrap();
    let step = 256u64 << 10;
    let mut image = Rng(0x4ead).bytes(ARRAY as usize);
    engine.write(0, &image, false).unwrap();
    let hits = |e: &Raid1| e.stats().readahead_hits.load(Ordering::Relaxed);

    // A plain stream: from the third read on, each is served from read-ahead.
    for k in 0..ARRAY / step {
        let at = k * step;
        let got = engine.read_direct(at, step, |b| b.to_vec()).unwrap();
        assert!(
            got == image[at as usize..(at + step) as usize],
            "stream read at {at}"
        );
    }
    let streamed = hits(&engine);
    assert!(
        streamed >= ARRAY / step - 3,
        "a stream of {} reads had {streamed} read-ahead hits",
        ARRAY / step
    );

    // Now write into the range each read has just made the engine read
    // ahead, then read it: the write must win, every time.
    let mut rng = Rng(0xfee1);
    for k in 0..ARRAY / step - 1 {
        let at = k * step;
        engine.read_direct(at, step, |_| ()).unwrap();
        let next = at + step;
        let off = next + rng.below(step - 8192);
        let len = 1 + rng.below(8191) as usize;
        let data = rng.bytes(len);
        engine.write(off, &data, false).unwrap();
        image[off as usize..off as usize + data.len()].copy_from_slice(&data);
        let got = engine.read_direct(next, step, |b| b.to_vec()).unwrap();
        assert!(
            got == image[next as usize..(next + step) as usize],
            "read at {next} after a write at {off} (+{}) returned stale data",
            data.len()
        );
    }
    // Buffered readers (read) are not read ahead: the kernel does it.
    let before = hits(&engine);
    for k in 0..8 {
        engine.read(k * step, step, |_| ()).unwrap();
    }
    assert_eq!(hits(&engine), before);
}

/// md's MD_SB_CHANGE_PENDING: a write that reached only the surviving leg
/// is not acknowledged while the record of the other leg's failure is
/// still being written (a power cut then would leave two legs with equal
/// events, and a resync could copy the stale one over the acknowledged
/// data).
#[test]
fn a_write_that_missed_a_failed_leg_waits_for_the_failure_to_be_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, rec, paths) = make_engine(dir.path(), IoMode::Direct);
    let engine = Arc::new(engine);
    // Active already, so the write below is not held by marking it active.
    engine.write(8192, &[1u8; 4096], false).unwrap();
    rec.hold(true);
    let failing = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.fail_leg(1, "failed by the test"))
    };
    while engine.slots()[1].state() != LegState::Faulty {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    let writer = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let r = engine.write(0, &[0x7e; 4096], false);
            tx.send(r.map_err(|e| e.to_string())).unwrap();
        })
    };
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a write that missed leg 1 was acknowledged before leg 1's failure was recorded"
    );
    rec.hold(false);
    let written = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the write ends");
    assert_eq!(written, Ok(4096));
    writer.join().unwrap();
    failing.join().unwrap().unwrap();
    assert_eq!(*rec.failed.lock(), vec![1]);
    assert!(data_region(&paths[0])[..4096].iter().all(|&b| b == 0x7e));
}

/// If no leg takes the record of a failure, what missed the failed leg is
/// not acknowledged: the user's request fails, until a record is written.
#[test]
fn a_failure_that_cannot_be_recorded_fails_what_missed_the_leg() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, rec, _paths) = make_engine(dir.path(), IoMode::Direct);
    rec.refuse_records.store(true, Ordering::SeqCst);
    engine.fail_leg(1, "failed by the test").unwrap();
    let err = engine.write(0, &[1u8; 4096], false).unwrap_err();
    assert!(
        matches!(err, EngineError::FailureNotRecorded { slot: 1, .. }),
        "{err}"
    );
    assert_eq!(err.errno(), libc::EIO);
    assert!(err.to_string().contains("missed leg 1"), "{err}");
    let err = engine.flush().unwrap_err();
    assert!(
        matches!(err, EngineError::FailureNotRecorded { .. }),
        "{err}"
    );
    // Once a leg takes the record, the next request tries again and passes.
    rec.refuse_records.store(false, Ordering::SeqCst);
    assert_eq!(engine.write(0, &[2u8; 4096], false).unwrap(), 4096);
    engine.flush().unwrap();
    assert_eq!(*rec.failed.lock(), vec![1]);
}

/// An O_DSYNC write goes to the legs as durable writes: it reads back from
/// both legs (what reaches the stable storage is the power-cut harness's
/// to show).
#[test]
fn a_durable_write_reaches_every_leg() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [IoMode::Direct, IoMode::Buffered] {
        let sub = dir.path().join(format!("{mode:?}"));
        std::fs::create_dir(&sub).unwrap();
        let (engine, _rec, paths) = make_engine(&sub, mode);
        let data = Rng(0xd5).bytes(300_000);
        assert_eq!(engine.write(12_345, &data, true).unwrap(), data.len());
        for p in &paths {
            assert!(data_region(p)[12_345..12_345 + data.len()] == data[..]);
        }
    }
}

/// A new kind of leg is one implementation of the device seam: the engine
/// serves legs in memory (no files, no io_uring descriptor) as it serves
/// files, reads back what it wrote, and fails out the leg whose device
/// starts failing its writes while the array goes on.
#[test]
fn the_engine_serves_legs_in_memory_through_the_device_seam() {
    use mdfuse::io::device::MemDevice;
    let devs: Vec<Arc<MemDevice>> = (0..2)
        .map(|_| Arc::new(MemDevice::new((DATA_OFFSET + ARRAY) as usize)))
        .collect();
    let specs = devs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Some(LegSpec {
                leg: Arc::new(Leg::in_memory(
                    &format!("leg{i}"),
                    Box::new(d.clone()),
                    DATA_OFFSET + ARRAY,
                )),
                data_offset: DATA_OFFSET,
                state: LegState::InSync,
                write_mostly: false,
            })
        })
        .collect();
    let rec = Arc::new(Recorder::default());
    let engine = Raid1::new(
        specs,
        ARRAY,
        None,
        rec.clone(),
        &EngineOptions { workers_per_leg: 2 },
    )
    .unwrap();
    assert_eq!(
        engine.slots()[0].io().unwrap().leg().path(),
        std::path::Path::new("mem:leg0")
    );
    let mut rng = Rng(0x3e3);
    let mut model = vec![0u8; ARRAY as usize];
    for _ in 0..100 {
        let off = rng.below(ARRAY - 1);
        let len = (1 + rng.below(300_000)).min(ARRAY - off);
        let data = rng.bytes(len as usize);
        assert_eq!(
            engine.write(off, &data, rng.below(2) == 0).unwrap(),
            len as usize
        );
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    engine.flush().unwrap();
    for d in &devs {
        assert!(
            d.contents(DATA_OFFSET as usize, ARRAY as usize) == model,
            "a leg differs"
        );
        assert!(d.flushes() > 0);
    }
    let got = engine.read(0, ARRAY, |b| b.to_vec()).unwrap();
    assert!(got == model);

    devs[1].fail_writes(true);
    assert_eq!(engine.write(4096, &[9u8; 5000], false).unwrap(), 5000);
    assert_eq!(engine.slots()[1].state(), LegState::Faulty);
    assert_eq!(*rec.failed.lock(), vec![1]);
    model[4096..9096].fill(9);
    assert!(engine.read(0, 16384, |b| b.to_vec()).unwrap() == model[..16384]);
}

/// Reads of each leg so far (its read requests, as `dev-*/block/stat` counts them).
fn leg_reads(engine: &Raid1) -> Vec<u64> {
    engine
        .slots()
        .iter()
        .map(|s| {
            s.io()
                .map_or(0, |io| io.leg().io_stats().read_ios.load(Ordering::Relaxed))
        })
        .collect()
}

#[test]
fn a_write_mostly_leg_is_read_only_when_no_other_in_sync_leg_remains() {
    let dir = tempfile::tempdir().unwrap();
    // Three direct-mode legs, the first write-mostly: large reads are split
    // over the other two, small ones balanced between them.
    let specs = (0..3)
        .map(|i| {
            let p = dir.path().join(format!("leg{i}"));
            let f = std::fs::File::create(&p).unwrap();
            f.set_len(DATA_OFFSET + ARRAY).unwrap();
            Some(LegSpec {
                leg: Arc::new(Leg::open(&p, IoMode::Direct, true, true).unwrap()),
                data_offset: DATA_OFFSET,
                state: LegState::InSync,
                write_mostly: i == 0,
            })
        })
        .collect();
    let rec = Arc::new(Recorder::default());
    let engine = Arc::new(
        Raid1::new(
            specs,
            ARRAY,
            None,
            rec.clone(),
            &EngineOptions { workers_per_leg: 4 },
        )
        .unwrap(),
    );
    let mut rng = Rng(0x57);
    let model = rng.bytes(ARRAY as usize);
    engine.write(0, &model, false).unwrap();
    let before = leg_reads(&engine);
    // Parallel readers of every size, sequential streams among them.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (engine, model) = (&engine, &model);
            s.spawn(move || {
                let mut rng = Rng(t + 1);
                let mut off = 0;
                for _ in 0..200 {
                    let len = [4096, 65536, 256 << 10, 1 << 20][rng.below(4) as usize];
                    if rng.below(2) == 0 || off + len > ARRAY {
                        off = rng.below(ARRAY / 4096) * 4096;
                    }
                    let len = len.min(ARRAY - off);
                    let got = engine.read(off, len, |b| b.to_vec()).unwrap();
                    assert!(got[..] == model[off as usize..(off + len) as usize]);
                    off += len;
                }
            });
        }
    });
    let after = leg_reads(&engine);
    assert_eq!(
        after[0], before[0],
        "the write-mostly leg was read: {after:?}"
    );
    assert!(after[1] > before[1] && after[2] > before[2], "{after:?}");
    // Its flag cleared, it is read like the others.
    assert!(engine.set_write_mostly(0, false).unwrap());
    for k in 0..64u64 {
        // Apart, so no read continues a stream.
        engine.read(k * 16384, 4096, |_| ()).unwrap();
    }
    assert!(leg_reads(&engine)[0] > after[0], "{:?}", leg_reads(&engine));
    engine.set_write_mostly(0, true).unwrap();
    // The others fail: the write-mostly leg serves, with the data.
    engine.fail_leg(1, "test").unwrap();
    engine.fail_leg(2, "test").unwrap();
    let got = engine.read(0, ARRAY, |b| b.to_vec()).unwrap();
    assert!(got == model, "the write-mostly leg alone reads other data");
    assert!(leg_reads(&engine)[0] > after[0]);
}

#[test]
fn a_read_error_is_corrected_from_a_write_mostly_leg() {
    use mdfuse::io::device::MemDevice;
    let devs: Vec<Arc<MemDevice>> = (0..2)
        .map(|_| Arc::new(MemDevice::new((DATA_OFFSET + ARRAY) as usize)))
        .collect();
    let specs = devs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Some(LegSpec {
                leg: Arc::new(Leg::in_memory(
                    &format!("wm{i}"),
                    Box::new(d.clone()),
                    DATA_OFFSET + ARRAY,
                )),
                data_offset: DATA_OFFSET,
                state: LegState::InSync,
                write_mostly: i == 0,
            })
        })
        .collect();
    let rec = Arc::new(Recorder::default());
    let engine = Raid1::new(
        specs,
        ARRAY,
        None,
        rec.clone(),
        &EngineOptions { workers_per_leg: 2 },
    )
    .unwrap();
    let data = Rng(9).bytes(1 << 20);
    engine.write(0, &data, false).unwrap();
    let before = leg_reads(&engine);
    assert!(engine.read(0, 1 << 20, |b| b.to_vec()).unwrap() == data);
    assert_eq!(
        leg_reads(&engine)[0],
        before[0],
        "read from the write-mostly leg"
    );
    // The other leg cannot read: md's fix_read_error takes the good copy
    // from the write-mostly leg, and the reader sees no error.
    devs[1].fail_reads(true);
    assert!(engine.read(0, 1 << 20, |b| b.to_vec()).unwrap() == data);
    assert!(leg_reads(&engine)[0] > before[0]);
}
