//! The write-intent bitmap end to end, through the real `mdfuse` binary, on
//! real loop-backed filesystems, checked with real `mdadm`: the bits on disk
//! while writes run (read three ways: `mdfuse examine-bitmap`, O_DIRECT
//! through the filesystem, and raw from the device at the FIEMAP address),
//! clearing, protection (immutable flag, untouched mtime), crash ordering
//! (SIGKILL mid-stream), refusals, and Linux md's own fixtures.

mod common;

use common::bitmap::*;
use common::faultyfs::FaultyFs;
use common::io::{read_direct, write_buffered_fsync, write_direct};
use common::kmd::{self, unzstd, Manifest};
use common::loopdev::{needs_root, run, sparse_file, LoopDevice, Mkfs, MountedFs, ScratchFs};
use common::mdfuse::{
    create, examine_field, is_mounted, mdfuse, mdfuse_stdout, path_str, poll, tempdir, text,
    try_create, wait_for, Created, Legs, MountedArray,
};
use common::rng::Rng;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// One write through array.img.
#[derive(Clone, Copy)]
enum How {
    Direct,
    BufferedFsync,
}

struct Case {
    leg_size: u64,
    bitmap_chunk: u64,
    /// Rewrite the bitmap file in 1 KiB pieces interleaved with another file.
    fragment: bool,
    /// (array offset, length, how)
    writes: Vec<(u64, u64, How)>,
}

fn expected_chunks(case: &Case) -> Vec<u64> {
    let mut set = BTreeSet::new();
    for &(off, len, _) in &case.writes {
        set.extend(off / case.bitmap_chunk..=(off + len - 1) / case.bitmap_chunk);
    }
    set.into_iter().collect()
}

/// Copies `src` to `dest` in 1 KiB pieces, each followed by a 1 KiB piece of
/// a filler file, both synced, so the filesystem interleaves their blocks.
fn write_fragmented(src: &Path, dest: &Path, filler: &Path) {
    let data = std::fs::read(src).expect("read bitmap");
    let mut out = std::fs::File::create(dest).expect("create fragmented bitmap");
    let mut fill = std::fs::File::create(filler).expect("create filler");
    for piece in data.chunks(1024) {
        out.write_all(piece).unwrap();
        out.sync_all().unwrap();
        fill.write_all(&[0xa5; 1024]).unwrap();
        fill.sync_all().unwrap();
    }
}

fn leg_bytes(leg: &Path, data_offset: u64, off: u64, len: usize) -> Vec<u8> {
    read_direct(leg, data_offset + off, len).expect("read leg")
}

fn bitmap_roundtrip(fs: ScratchFs, case: Case) {
    let t0 = Instant::now();
    let legs = Legs::temp(case.leg_size);
    let chunk_arg = case.bitmap_chunk.to_string();
    let bitmap = fs.path("md.bitmap");
    let created = if case.fragment {
        let staged = legs.dir().join("staged.bitmap");
        let c = create_with_bitmap(&legs, &staged, &["--bitmap-chunk", &chunk_arg]);
        write_fragmented(&staged, &bitmap, &fs.path("filler"));
        assert_eq!(
            std::fs::read(&staged).unwrap(),
            std::fs::read(&bitmap).unwrap()
        );
        c
    } else {
        create_with_bitmap(&legs, &bitmap, &["--bitmap-chunk", &chunk_arg])
    };
    let file_len = std::fs::metadata(&bitmap).unwrap().len();
    let exts = extents(&bitmap);
    eprintln!(
        "bitmap file {} bytes ({} page(s)), extents (logical, physical, len bytes): {:?}",
        file_len,
        file_len.div_ceil(4096),
        exts.iter()
            .map(|e| (e.logical, e.physical, e.len))
            .collect::<Vec<_>>()
    );
    if case.fragment {
        assert!(file_len > 3 * 4096, "the bitmap must span several pages");
        assert!(exts.len() >= 3, "not fragmented enough: {exts:?}");
        // Some 4 KiB page of the file maps to non-contiguous device blocks.
        let split_page = (0..file_len.div_ceil(4096)).any(|p| {
            exts.iter()
                .any(|e| e.logical > p * 4096 && e.logical < (p + 1) * 4096)
        });
        assert!(split_page, "no page is split across extents: {exts:?}");
    }
    let mtime_before = mtime(&bitmap);
    let head_before = read_direct(&bitmap, 0, file_len as usize).unwrap();
    assert!(dirty_in_image(&head_before).is_empty());

    let mnt = legs.mountpoint("mnt");
    let array = MountedArray::mount(
        &legs,
        &mnt,
        &["--bitmap", path_str(&bitmap), "--delay", "1"],
    );
    assert!(is_immutable(&bitmap), "immutable flag not set while active");
    let mdstat = array.mdstat();
    assert!(mdstat.contains("bitmap:"), "{mdstat}");

    let image = array.image();
    for (i, &(off, len, how)) in case.writes.iter().enumerate() {
        let data: Vec<u8> = (0..len / 4096)
            .flat_map(|b| pattern(off + b * 4096, i as u64 + 1))
            .collect();
        match how {
            How::Direct => write_direct(&image, off, &data).unwrap(),
            How::BufferedFsync => write_buffered_fsync(&image, off, &data).unwrap(),
        }
    }
    let written = Instant::now();
    let want = expected_chunks(&case);

    // While active (the bits are kept for the --delay of 1 s).
    let (text, listed) = examine_bitmap(&bitmap);
    let through_fs = read_direct(&bitmap, 0, file_len as usize).unwrap();
    let via_device = read_via_device(&bitmap, fs.device(), file_len);
    // No cache dropping: raw writes drop their range from the page cache.
    let mdadm_active = run("mdadm", &["-X", path_str(&bitmap)]).expect("mdadm -X while active");
    let checked_in = written.elapsed();
    assert_eq!(listed, want, "examine-bitmap while active:\n{text}");
    assert_eq!(dirty_in_image(&through_fs), want, "O_DIRECT read via fs");
    assert_eq!(dirty_in_image(&via_device), want, "raw read via device");
    assert_eq!(through_fs, via_device);
    // The header follows the array's events (md_bitmap_update_sb).
    let leg_examined = mdfuse_stdout(&["examine", path_str(&legs.paths[0])]);
    assert_eq!(
        examine_field(&text, "Events"),
        examine_field(&leg_examined, "Events"),
        "bitmap vs leg events while active:\n{text}\n{leg_examined}"
    );
    assert_eq!(
        dirty_count(&mdadm_active),
        dirty_count(&text),
        "mdadm -X vs examine-bitmap while active:\n{mdadm_active}\n{text}"
    );
    assert_eq!(dirty_count(&text), want.len() as u64);
    assert!(
        checked_in < Duration::from_secs(1),
        "checks took {checked_in:?}, longer than --delay"
    );
    // Headers agree too (everything but the bits is as before, except events).
    assert_eq!(through_fs[..8], head_before[..8]);

    // Idle: every bit clears, on disk.
    let cleared = poll(Duration::from_secs(12), || {
        examine_bitmap(&bitmap).1.is_empty()
    });
    let clear_after = written.elapsed();
    assert!(cleared, "bits not cleared: {:?}", examine_bitmap(&bitmap));
    assert!(dirty_in_image(&read_via_device(&bitmap, fs.device(), file_len)).is_empty());
    assert_eq!(
        mtime(&bitmap),
        mtime_before,
        "the raw writes changed the mtime"
    );
    assert!(is_immutable(&bitmap));

    array.stop();
    assert!(!is_immutable(&bitmap), "immutable flag left after stop");
    assert_eq!(mtime(&bitmap), mtime_before);
    assert_eq!(
        extents(&bitmap),
        exts,
        "the bitmap file's blocks moved while it was in use"
    );

    // Both legs got the data.
    let off0 = created.data_offset_sectors * 512;
    let (off, _, _) = case.writes[0];
    for leg in &legs.paths {
        assert_eq!(leg_bytes(leg, off0, off, 4096), pattern(off, 1));
    }

    // Real mdadm agrees.
    let x = run("mdadm", &["--examine-bitmap", path_str(&bitmap)]).expect("mdadm -X");
    let e = run("mdadm", &["--examine", path_str(&legs.paths[0])]).expect("mdadm -E");
    assert_eq!(
        examine_field(&x, "UUID").as_deref(),
        Some(created.uuid.as_str()),
        "{x}"
    );
    let chunk_text = if case.bitmap_chunk >= 1024 {
        format!("{} KB", case.bitmap_chunk / 1024)
    } else {
        format!("{} B", case.bitmap_chunk)
    };
    assert_eq!(examine_field(&x, "Chunksize"), Some(chunk_text), "{x}");
    assert_eq!(
        examine_field(&x, "Events"),
        examine_field(&e, "Events"),
        "{x}\n{e}"
    );
    assert_eq!(dirty_count(&x), 0, "{x}");
    let (clean_text, clean) = examine_bitmap(&bitmap);
    assert!(clean.is_empty(), "{clean_text}");
    eprintln!(
        "roundtrip: checks {checked_in:?} after the writes, clear after {clear_after:?}, total {:?}",
        t0.elapsed()
    );
}

#[test]
fn bitmap_on_ext4_4k() {
    if !needs_root("bitmap_on_ext4_4k") {
        return;
    }
    let chunk = 64 * 1024;
    bitmap_roundtrip(
        ScratchFs::ext4(4096).unwrap(),
        Case {
            leg_size: 32 * MIB,
            bitmap_chunk: chunk,
            fragment: false,
            writes: vec![
                (3 * chunk + 8192, 4096, How::Direct),
                (200 * chunk, 4096, How::BufferedFsync),
                (101 * chunk - 4096, 8192, How::Direct), // chunks 100 and 101
                (495 * chunk, 4096, How::Direct),        // the last chunk
            ],
        },
    );
}

#[test]
fn bitmap_fragmented_on_ext4_1k() {
    if !needs_root("bitmap_fragmented_on_ext4_1k") {
        return;
    }
    // 64 MiB legs, 512-byte chunks: 129024 chunks, a 16 KiB file (4 pages
    // of 30720/32768/32768/32768 chunks), 16 blocks of 1 KiB.
    let chunk = 512;
    bitmap_roundtrip(
        ScratchFs::ext4(1024).unwrap(),
        Case {
            leg_size: 64 * MIB,
            bitmap_chunk: chunk,
            fragment: true,
            writes: vec![
                (8 * chunk, 4096, How::Direct),            // page 0
                (40000 * chunk, 4096, How::Direct),        // page 1
                (31000 * chunk, 4096, How::BufferedFsync), // page 1
                (63480 * chunk, 8192, How::Direct),        // pages 1 and 2
                (70000 * chunk, 4096, How::BufferedFsync), // page 2
                (128000 * chunk, 4096, How::Direct),       // page 3
            ],
        },
    );
}

#[test]
fn bitmap_on_xfs() {
    if !needs_root("bitmap_on_xfs") {
        return;
    }
    let chunk = 64 * 1024;
    bitmap_roundtrip(
        ScratchFs::xfs(&[]).unwrap(),
        Case {
            leg_size: 32 * MIB,
            bitmap_chunk: chunk,
            fragment: false,
            writes: vec![
                (0, 4096, How::Direct),
                (17 * chunk + 4096, 4096, How::BufferedFsync),
                (300 * chunk, 4096, How::Direct),
            ],
        },
    );
}

/// Raw page writes bypass the bitmap file's page cache; each written range
/// is dropped from it, so buffered readers (a plain read, `mdadm -X` run
/// twice) see the bits on disk while the array is active, not the first
/// read's cached copy.
#[test]
fn buffered_reads_of_the_bitmap_follow_raw_writes() {
    if !needs_root("buffered_reads_of_the_bitmap_follow_raw_writes") {
        return;
    }
    let (_fs, legs, bitmap) = array_with_bitmap();
    let array = MountedArray::mount(
        &legs,
        &legs.mountpoint("mnt"),
        &["--bitmap", path_str(&bitmap), "--delay", "0.5"],
    );
    // Plain reads through the page cache, no cache dropping anywhere.
    let buffered = || dirty_in_image(&std::fs::read(&bitmap).expect("read bitmap"));
    let mdadm_dirty = || dirty_count(&run("mdadm", &["-X", path_str(&bitmap)]).expect("mdadm -X"));
    assert!(buffered().is_empty());
    assert_eq!(mdadm_dirty(), 0);
    write_direct(&array.image(), 5 * 65536, &pattern(5, 1)).unwrap();
    assert_eq!(buffered(), vec![5], "a buffered read shows a stale bitmap");
    assert_eq!(mdadm_dirty(), 1, "the second mdadm -X shows a stale bitmap");
    write_direct(&array.image(), 9 * 65536, &pattern(9, 1)).unwrap();
    assert_eq!(
        buffered(),
        vec![5, 9],
        "a buffered read shows a stale bitmap"
    );
    assert_eq!(mdadm_dirty(), 2);
    assert!(
        poll(Duration::from_secs(10), || buffered().is_empty()),
        "a buffered read never saw the bits cleared: {:?}",
        buffered()
    );
    assert_eq!(mdadm_dirty(), 0);
    array.stop();
    assert!(buffered().is_empty());
}

// ---------------------------------------------------------------- crash

/// SIGKILL the daemon while several threads write at random offsets, with
/// writes caught between the legs; then, without remounting, every block
/// where the two legs differ must lie in a chunk whose bit is set on disk. A
/// remount then resyncs those chunks and the legs end identical.
///
/// A kill alone lands between the two legs' writes of a request only rarely
/// (the second leg's write is issued microseconds after the first), so before
/// the kill the second leg's I/O threads are stopped with ptrace: requests
/// then write leg0 and wait for leg1, and the kill finds them there, as a
/// crash would.
#[test]
fn crash_mid_stream_keeps_bits_before_data() {
    if !needs_root("crash_mid_stream_keeps_bits_before_data") {
        return;
    }
    crash_stream(ScratchFs::ext4(4096).unwrap(), 32 * MIB, 4096, false);
}

/// The same on a fragmented 4-page bitmap (1 KiB blocks, 512-byte chunks):
/// every page flush goes to several separate device runs.
#[test]
fn crash_mid_stream_fragmented_multipage_bitmap() {
    if !needs_root("crash_mid_stream_fragmented_multipage_bitmap") {
        return;
    }
    crash_stream(ScratchFs::ext4(1024).unwrap(), 64 * MIB, 512, true);
}

/// A fresh array and bitmap (fragmented when asked: staged, then rewritten
/// in interleaved 1 KiB pieces).
fn fresh_array(
    legs: &Legs,
    fs: &ScratchFs,
    bitmap: &Path,
    chunk: u64,
    fragment: bool,
    n: u32,
) -> Created {
    let chunk_arg = chunk.to_string();
    if fragment {
        let staged = legs.dir().join("staged.bitmap");
        let c = create_with_bitmap(legs, &staged, &["--bitmap-chunk", &chunk_arg]);
        write_fragmented(&staged, bitmap, &fs.path(&format!("filler{n}")));
        assert!(extents(bitmap).len() >= 3);
        c
    } else {
        create_with_bitmap(legs, bitmap, &["--bitmap-chunk", &chunk_arg])
    }
}

/// An ext4 on a loop device of the test's and two 32 MiB legs made into an
/// array with a bitmap file on it.
fn array_with_bitmap() -> (ScratchFs, Legs, PathBuf) {
    let fs = ScratchFs::ext4(4096).unwrap();
    let legs = Legs::temp(32 * MIB);
    let bitmap = fs.path("md.bitmap");
    // 64 KiB chunks: the tests that use it count in them.
    create_with_bitmap(&legs, &bitmap, &["--bitmap-chunk", "64K"]);
    (fs, legs, bitmap)
}

/// The 4 KiB blocks (array offsets) where the legs' data regions differ,
/// read with O_DIRECT in 1 MiB pieces.
fn differing_blocks(legs: &Legs, data_offset: u64, array_bytes: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let step = MIB.min(array_bytes);
    let mut at = 0;
    while at < array_bytes {
        let len = step.min(array_bytes - at) as usize;
        let a = read_direct(&legs.paths[0], data_offset + at, len).expect("read leg0");
        let b = read_direct(&legs.paths[1], data_offset + at, len).expect("read leg1");
        for (i, (x, y)) in a.chunks(4096).zip(b.chunks(4096)).enumerate() {
            if x != y {
                out.push(at + i as u64 * 4096);
            }
        }
        at += len as u64;
    }
    out
}

const CRASH_ITERATIONS: u32 = 6;
const CRASH_WRITERS: u64 = 6;

/// leg1 of the crash tests: a file of the fault-injecting filesystem, whose
/// writes can be held back and then lost (a power cut).
const LEG1: &str = "leg1.img";

fn crash_stream(fs: ScratchFs, leg_size: u64, chunk: u64, fragment: bool) {
    let t0 = Instant::now();
    let faulty = FaultyFs::new(&[(LEG1, leg_size)]);
    let dir = tempdir("mdfuse-crash");
    let leg0 = dir.path().join("leg0.img");
    sparse_file(&leg0, leg_size).expect("leg0");
    let legs = Legs::from_paths(vec![leg0.clone(), faulty.path(LEG1)]);
    // The legs' bytes as the disks hold them: leg1's backing file read
    // straight (a read through the filesystem would queue behind the
    // writes it holds).
    let on_disk = Legs::from_paths(vec![leg0, faulty.backing(LEG1)]);
    let bitmap = fs.path("md.bitmap");
    let mut created = fresh_array(&legs, &fs, &bitmap, chunk, fragment, 0);
    let file_len = std::fs::metadata(&bitmap).unwrap().len();
    let data_offset = created.data_offset_sectors * 512;
    let seed = Rng::clock_seed();
    eprintln!("crash test seed {seed:#x}");
    let mut rng = Rng::new(seed);
    let mnt = legs.mountpoint("mnt");
    for iteration in 0..CRASH_ITERATIONS {
        let array = MountedArray::mount(
            &legs,
            &mnt,
            &["--bitmap", path_str(&bitmap), "--delay", "0.2"],
        );
        let image = array.image();
        let stop = Arc::new(AtomicBool::new(false));
        let blocks = created.array_bytes / 4096;
        let writers: Vec<_> = (0..CRASH_WRITERS)
            .map(|_| {
                let (image, stop) = (image.clone(), stop.clone());
                let mut rng = Rng::new(rng.next());
                std::thread::spawn(move || {
                    let mut writes = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // 4 to 16 KiB at a random block; fresh random bytes,
                        // so a write that reached one leg only shows.
                        let n = (1 + rng.below(4)).min(blocks);
                        let off = rng.below(blocks - n + 1) * 4096;
                        let data: Vec<u8> = (0..n * 512)
                            .flat_map(|_| rng.next().to_le_bytes())
                            .collect();
                        if write_direct(&image, off, &data).is_err() {
                            break;
                        }
                        writes += 1;
                    }
                    writes
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + rng.below(600)));
        // Writes now reach leg0 and wait at leg1's disk ...
        faulty.hold_writes(LEG1);
        wait_for(
            "a write on leg0 but not on leg1",
            Duration::from_secs(20),
            || !differing_blocks(&on_disk, data_offset, created.array_bytes).is_empty(),
        );
        std::thread::sleep(Duration::from_millis(rng.below(100)));
        // ... where the kill finds them, and the power goes before leg1's
        // disk gets them.
        array.kill9_then(|| faulty.release_writes(LEG1, false));
        stop.store(true, Ordering::Relaxed);
        let writes: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(!is_mounted(&mnt));
        assert!(is_immutable(&bitmap), "a killed daemon leaves the flag");

        // The bits on disk: through the filesystem with O_DIRECT, and raw
        // from the device at the file's extents; they must agree.
        let bits = read_direct(&bitmap, 0, file_len as usize).unwrap();
        assert!(
            bits == read_via_device(&bitmap, fs.device(), file_len),
            "the bitmap read through the fs and from the device differ"
        );
        let dirty: BTreeSet<u64> = dirty_in_image(&bits).into_iter().collect();
        let differing = differing_blocks(&on_disk, data_offset, created.array_bytes);
        for &block in &differing {
            // Every chunk the block touches (a 512-byte chunk is an eighth of one).
            for c in block / chunk..=(block + 4095) / chunk {
                assert!(
                    dirty.contains(&c),
                    "iteration {iteration} (seed {seed:#x}): the legs differ in the block at \
                     array byte {block}, but the bit of its chunk {c} is clear on disk \
                     ({} bits set, {} blocks differ)",
                    dirty.len(),
                    differing.len()
                );
            }
        }
        assert!(
            !differing.is_empty(),
            "iteration {iteration}: the kill caught no write between the legs; the check was \
             not exercised"
        );
        eprintln!(
            "crash {iteration}: {writes} writes from {CRASH_WRITERS} threads; {} blocks differ \
             between the legs, all in the {} chunks set on disk",
            differing.len(),
            dirty.len()
        );
        assert!(writes > 0, "no write acknowledged before the kill");

        // The next mount takes the dead daemon's flag over and resyncs the
        // dirty chunks: then the legs are identical.
        let array = MountedArray::mount(&legs, &mnt, &["--bitmap", path_str(&bitmap)]);
        mdfuse_stdout(&["wait", path_str(&mnt)]);
        array.stop();
        assert!(
            !is_immutable(&bitmap),
            "flag left after the takeover's stop"
        );
        let left = differing_blocks(&on_disk, data_offset, created.array_bytes);
        assert!(
            left.is_empty(),
            "iteration {iteration}: after the resync {} blocks still differ (first at {})",
            left.len(),
            left[0]
        );
        // A fresh array and bitmap, so the next kill starts from clear bits.
        created = fresh_array(&legs, &fs, &bitmap, chunk, fragment, iteration + 1);
    }
    eprintln!("crash test: {:?}", t0.elapsed());
}

// ---------------------------------------------------------------- refusals

/// The state a refused mount must leave untouched: every byte of every leg,
/// and the bitmap file's bytes, attributes (`lsattr`) and ctime (which any
/// change of its flags, even one undone, moves).
struct Untouched {
    leg_hashes: Vec<String>,
    bitmap: PathBuf,
    bitmap_bytes: Vec<u8>,
    bitmap_attrs: String,
    bitmap_ctime: (i64, i64),
}

/// The whole file, read with O_DIRECT (what is on disk, not a cache).
fn read_whole_direct(path: &Path) -> Vec<u8> {
    let len = std::fs::metadata(path).expect("stat").len() as usize;
    read_direct(path, 0, len).expect("read")
}

fn attrs(path: &Path) -> String {
    let out = run("lsattr", &[path_str(path)]).expect("lsattr");
    out.split_whitespace().next().unwrap_or("").to_string()
}

fn ctime(path: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).expect("stat");
    (m.ctime(), m.ctime_nsec())
}

impl Untouched {
    fn record(legs: &Legs, bitmap: &Path) -> Untouched {
        Untouched {
            leg_hashes: legs.sha256s(),
            bitmap: bitmap.to_path_buf(),
            bitmap_bytes: read_whole_direct(bitmap),
            bitmap_attrs: attrs(bitmap),
            bitmap_ctime: ctime(bitmap),
        }
    }

    fn check(&self, legs: &Legs) {
        // Whatever a filesystem holds dirty (a filesystem on a leg, say)
        // reaches the legs first.
        run("sync", &[]).expect("sync");
        assert!(
            self.leg_hashes == legs.sha256s(),
            "a leg was written (its sha256 changed)"
        );
        assert!(
            self.bitmap_bytes == read_whole_direct(&self.bitmap),
            "the bitmap file was written"
        );
        assert!(
            !is_immutable(&self.bitmap),
            "a refused mount left the immutable flag"
        );
        assert_eq!(
            self.bitmap_attrs,
            attrs(&self.bitmap),
            "the bitmap file's attributes changed"
        );
        assert_eq!(
            self.bitmap_ctime,
            ctime(&self.bitmap),
            "the bitmap file's ctime changed: its inode was modified (flags set and cleared?)"
        );
    }
}

/// A mount of `legs` with `bitmap` (and `extra` options) must be refused,
/// naming the bitmap file and saying `needles`, and must leave the legs and
/// the bitmap file untouched; returns the message.
fn refused_untouched(
    what: &str,
    legs: &Legs,
    bitmap: &Path,
    extra: &[&str],
    needles: &[&str],
) -> String {
    let before = Untouched::record(legs, bitmap);
    let mut args = vec!["--bitmap", path_str(bitmap)];
    args.extend_from_slice(extra);
    let text = assert_refused(legs, &legs.mountpoint("mnt"), &args, bitmap, needles);
    eprintln!("{what}: {text}");
    before.check(legs);
    text
}

/// Mounts and expects a refusal naming the file and saying `needles`.
fn assert_refused(
    legs: &Legs,
    mnt: &Path,
    extra: &[&str],
    file: &Path,
    needles: &[&str],
) -> String {
    match MountedArray::try_mount(legs, mnt, extra) {
        Ok(a) => {
            let log = a.log();
            a.stop();
            panic!("mount should have been refused; log:\n{log}");
        }
        Err(o) => {
            let text = text(&o);
            let name = file.file_name().unwrap().to_string_lossy();
            assert!(
                text.contains(&*name),
                "message does not name {name}: {text}"
            );
            for n in needles {
                assert!(text.contains(n), "message lacks {n:?}: {text}");
            }
            assert!(!is_mounted(mnt));
            text
        }
    }
}

#[test]
fn refuses_bitmap_with_a_hole() {
    if !needs_root("refuses_bitmap_with_a_hole") {
        return;
    }
    let fs = ScratchFs::ext4(4096).unwrap();
    let legs = Legs::temp(64 * MIB);
    let staged = legs.dir().join("staged.bitmap");
    create_with_bitmap(&legs, &staged, &["--bitmap-chunk", "512"]);
    let bitmap = fs.path("holey.bitmap");
    std::fs::copy(&staged, &bitmap).unwrap();
    run(
        "fallocate",
        &["-p", "-o", "4096", "-l", "8192", path_str(&bitmap)],
    )
    .unwrap();
    assert_eq!(
        std::fs::read(&staged).unwrap(),
        std::fs::read(&bitmap).unwrap()
    );
    refused_untouched("hole", &legs, &bitmap, &[], &["hole"]);
}

#[test]
fn refuses_bitmap_on_tmpfs_unless_file_io() {
    if !needs_root("refuses_bitmap_on_tmpfs_unless_file_io") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    let tmp = MountedFs::tmpfs(&legs.dir().join("tmpfs"), 8).unwrap();
    let bitmap = tmp.dir().join("md.bitmap");
    create_with_bitmap(&legs, &bitmap, &["--bitmap-chunk", "64K"]);
    let mnt = legs.mountpoint("mnt");
    refused_untouched("tmpfs", &legs, &bitmap, &[], &["tmpfs", "--bitmap-file-io"]);

    let array = MountedArray::mount(
        &legs,
        &mnt,
        &[
            "--bitmap",
            path_str(&bitmap),
            "--bitmap-file-io",
            "--delay",
            "0.3",
        ],
    );
    let mdstat = array.mdstat();
    assert!(mdstat.contains("file I/O"), "{mdstat}");
    write_direct(&array.image(), 5 * 65536, &pattern(5, 1)).unwrap();
    assert_eq!(examine_bitmap(&bitmap).1, vec![5]);
    assert!(poll(Duration::from_secs(5), || examine_bitmap(&bitmap)
        .1
        .is_empty()));
    array.stop();
    let x = run("mdadm", &["-X", path_str(&bitmap)]).unwrap();
    assert_eq!(dirty_count(&x), 0, "{x}");
}

#[test]
fn refuses_bitmap_of_another_array() {
    if !needs_root("refuses_bitmap_of_another_array") {
        return;
    }
    let fs = ScratchFs::ext4(4096).unwrap();
    let legs_a = Legs::temp(32 * MIB);
    let legs_b = Legs::temp(32 * MIB);
    let bitmap_a = fs.path("a.bitmap");
    let bitmap_b = fs.path("b.bitmap");
    create_with_bitmap(&legs_a, &bitmap_a, &[]);
    let b = create_with_bitmap(&legs_b, &bitmap_b, &[]);
    refused_untouched(
        "other array",
        &legs_a,
        &bitmap_b,
        &[],
        &["belongs to array", &b.uuid],
    );
}

#[test]
fn refuses_bitmap_inside_the_array() {
    if !needs_root("refuses_bitmap_inside_the_array") {
        return;
    }
    let legs = Legs::temp(64 * MIB);
    let staged = legs.dir().join("staged.bitmap");
    let created = create_with_bitmap(&legs, &staged, &[]);
    // A filesystem on leg0's data region: what the array itself serves.
    let inner = LoopDevice::attach_at(&legs.paths[0], created.data_offset_sectors * 512).unwrap();
    // No lazy initialisation and no atime updates: an idle inner filesystem
    // writes nothing to leg0, so the leg's hash shows any change we make.
    Mkfs::ext4_eager(inner.path()).unwrap();
    let inner_fs = MountedFs::mount_with(
        path_str(inner.path()),
        &legs.dir().join("inner"),
        None,
        Some("noatime"),
    )
    .unwrap();
    let bitmap = inner_fs.dir().join("md.bitmap");
    std::fs::copy(&staged, &bitmap).unwrap();
    run("sync", &[]).unwrap();
    refused_untouched("inside", &legs, &bitmap, &[], &["inside the array", "leg0"]);
    drop(inner_fs);
    drop(inner);
}

/// A bitmap file on a filesystem made on a loop device over a running
/// mdfuse's `MOUNT/array.img` lives inside a FUSE-served image: a second
/// array's mount with it is refused, raw or with --bitmap-file-io, and
/// nothing is written.
#[test]
fn refuses_bitmap_inside_a_mounted_mdfuse_image() {
    if !needs_root("refuses_bitmap_inside_a_mounted_mdfuse_image") {
        return;
    }
    let legs_a = Legs::temp(64 * MIB);
    create(&legs_a, &[]);
    let mnt_a = legs_a.mountpoint("a");
    let array_a = MountedArray::mount(&legs_a, &mnt_a, &[]);
    let lo = LoopDevice::attach(&array_a.image()).unwrap();
    Mkfs::ext4(lo.path(), 4096).unwrap();
    let inner = MountedFs::mount(lo.path(), &legs_a.dir().join("inner")).unwrap();
    let legs_b = Legs::temp(32 * MIB);
    let bitmap = inner.dir().join("b.bitmap");
    create_with_bitmap(&legs_b, &bitmap, &[]);
    run("sync", &[]).unwrap();
    for extra in [&[][..], &["--bitmap-file-io"][..]] {
        refused_untouched(
            &format!("inside a mounted image {extra:?}"),
            &legs_b,
            &bitmap,
            extra,
            &["FUSE-served image", "array.img"],
        );
    }
    drop(inner);
    drop(lo);
    // The loop device lets go of array.img shortly after its detach.
    assert!(
        poll(Duration::from_secs(10), || mdfuse(&[
            "stop",
            path_str(&mnt_a)
        ])
        .status
        .success()),
        "array A did not stop"
    );
    drop(array_a);
}

#[test]
fn refuses_bitmap_on_read_only_device() {
    if !needs_root("refuses_bitmap_on_read_only_device") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    let (_ro_fs, bitmap) = bitmap_on_a_read_only_fs(&legs);
    let text = refused_untouched("read-only", &legs, &bitmap, &[], &[]);
    assert!(text.to_lowercase().contains("read-only"), "{text}");
}

/// `mdfuse create --bitmap` makes (and syncs) the bitmap file before it
/// writes any leg: when the bitmap cannot be made, in a missing directory,
/// on a read-only filesystem, or over a file an mdfuse uses, the create
/// fails and no leg and no file is changed.
#[test]
fn a_failed_create_changes_nothing() {
    if !needs_root("a_failed_create_changes_nothing") {
        return;
    }
    let fs = ScratchFs::ext4(4096).unwrap();
    let legs = Legs::temp(32 * MIB);
    let bitmap = fs.path("md.bitmap");
    // The legs of an existing array: a rewrite of their superblocks shows.
    create_with_bitmap(&legs, &bitmap, &[]);
    let refused = |legs: &Legs, path: &Path, needle: &str| {
        let hashes = legs.sha256s();
        let out = try_create(legs, &["--force", "--bitmap", path_str(path)]);
        assert!(
            !out.status.success(),
            "create with bitmap {} succeeded",
            path.display()
        );
        let out = text(&out);
        assert!(out.contains(needle), "message lacks {needle:?}: {out}");
        assert!(hashes == legs.sha256s(), "a failed create wrote a leg");
        out
    };

    let missing = fs.path("no-such-dir").join("md.bitmap");
    let text = refused(&legs, &missing, "no-such-dir");
    eprintln!("missing directory: {text}");
    assert!(!missing.exists());

    let image = legs.dir().join("ro-fs.img");
    sparse_file_or_panic(&image, 16 * MIB);
    let ro_dev = LoopDevice::attach(&image).unwrap();
    Mkfs::ext4(ro_dev.path(), 4096).unwrap();
    let ro = MountedFs::mount_read_only(ro_dev.path(), &legs.dir().join("ro")).unwrap();
    let text = refused(&legs, &ro.dir().join("md.bitmap"), "Read-only");
    eprintln!("read-only filesystem: {text}");
    assert_eq!(
        std::fs::read_dir(ro.dir()).unwrap().count(),
        1,
        "lost+found only"
    );
    drop(ro);
    drop(ro_dev);

    // The bitmap of a running array, over which other legs are created.
    let array = MountedArray::mount(
        &legs,
        &legs.mountpoint("mnt"),
        &["--bitmap", path_str(&bitmap)],
    );
    let other = Legs::temp(32 * MIB);
    let before = read_whole_direct(&bitmap);
    let text = refused(&other, &bitmap, "immutable");
    eprintln!("bitmap in use: {text}");
    assert!(
        before == read_whole_direct(&bitmap),
        "the bitmap in use was written"
    );
    assert_eq!(
        std::fs::read_dir(fs.mount_dir()).unwrap().count(),
        2,
        "a staged file was left: {:?}",
        std::fs::read_dir(fs.mount_dir())
            .unwrap()
            .collect::<Vec<_>>()
    );
    array.stop();
}

/// The legs made into an array with a bitmap file on an ext4 (on a loop
/// device of the test's) that is then mounted read-only, from a read-only
/// loop device. Returns what keeps it mounted, and the bitmap file.
fn bitmap_on_a_read_only_fs(legs: &Legs) -> ((LoopDevice, MountedFs), PathBuf) {
    let image = legs.dir().join("ro-fs.img");
    sparse_file_or_panic(&image, 16 * MIB);
    let fs_dir = legs.dir().join("rofs");
    let bitmap = fs_dir.join("md.bitmap");
    {
        let dev = LoopDevice::attach(&image).unwrap();
        Mkfs::ext4(dev.path(), 4096).unwrap();
        let _m = MountedFs::mount(dev.path(), &fs_dir).unwrap();
        create_with_bitmap(legs, &bitmap, &[]);
    }
    let dev = LoopDevice::attach_read_only(&image).unwrap();
    let mount = MountedFs::mount_read_only(dev.path(), &fs_dir).unwrap();
    ((dev, mount), bitmap)
}

fn sparse_file_or_panic(p: &Path, size: u64) {
    common::loopdev::sparse_file(p, size).unwrap();
}

#[test]
fn refuses_a_second_mount_in_use() {
    if !needs_root("refuses_a_second_mount_in_use") {
        return;
    }
    let (_fs, legs, bitmap) = array_with_bitmap();
    // Copies of the legs: the same array (UUID), legs not locked, so only
    // the bitmap file's lock can refuse them.
    let copies = Legs::temp(0);
    for (src, dst) in legs.paths.iter().zip(&copies.paths) {
        run("cp", &["--sparse=always", path_str(src), path_str(dst)]).unwrap();
    }
    let first = MountedArray::mount(
        &legs,
        &legs.mountpoint("mnt1"),
        &["--bitmap", path_str(&bitmap)],
    );
    let heads = legs.heads(8192);
    let copy_heads = copies.heads(8192);
    let text = assert_refused(
        &legs,
        &legs.mountpoint("mnt2"),
        &["--bitmap", path_str(&bitmap)],
        &legs.paths[0],
        &["in use"],
    );
    eprintln!("second mount, same legs: {text}");
    let text = assert_refused(
        &copies,
        &copies.mountpoint("mnt3"),
        &["--bitmap", path_str(&bitmap)],
        &bitmap,
        &["in use"],
    );
    eprintln!("second mount, copied legs, same bitmap: {text}");
    assert!(copy_heads == copies.heads(8192), "a copied leg was written");
    assert!(heads == legs.heads(8192));
    assert!(is_immutable(&bitmap), "the first mount lost its protection");
    first.stop();
    assert!(!is_immutable(&bitmap));
}

// ---------------------------------------------------------------- fixtures

/// Linux md's fixture set `name` (see `common::kmd`), when the fixtures are
/// there: its MANIFEST and its directory.
fn fixture(name: &str) -> Option<(Manifest, PathBuf)> {
    let set = kmd::fixture_set(name);
    if !set.exists() {
        common::loopdev::skipped(
            &format!("the tests of fixture set {name}"),
            &format!(
                "no fixtures at {} (../shared beside the clone)",
                set.display()
            ),
        );
        return None;
    }
    Some((Manifest::load(&set), set))
}

/// A fixture set's legs (copies, in a temporary directory of their own) and
/// its bitmap file, copied onto `fs`.
fn fixture_array(set: &Path, fs: &ScratchFs) -> (Legs, PathBuf) {
    let legs = Legs::temp(0);
    for (i, leg) in legs.paths.iter().enumerate() {
        unzstd(&set.join(format!("leg{i}.img.zst")), leg);
    }
    let bitmap = fs.path("md0.bitmap");
    unzstd(&set.join("md0.bitmap.zst"), &bitmap);
    (legs, bitmap)
}

#[test]
fn kernel_fixtures_examine_bitmap_matches_manifest() {
    let dir = tempfile::tempdir().unwrap();
    for set in ["a-clean", "b-degraded-dirty"] {
        let Some((manifest, set_dir)) = fixture(set) else {
            return;
        };
        let file = dir.path().join(format!("{set}.bitmap"));
        unzstd(&set_dir.join("md0.bitmap.zst"), &file);
        let (text, dirty) = examine_bitmap(&file);
        assert_eq!(dirty, manifest.dirty, "{set}:\n{text}");
        assert_eq!(
            examine_field(&text, "UUID"),
            Some(manifest.value("uuid")),
            "{set}"
        );
        assert_eq!(
            examine_field(&text, "Events"),
            Some(manifest.value("events")),
            "{set}"
        );
        assert_eq!(
            examine_field(&text, "Events Cleared"),
            Some(manifest.value("events_cleared")),
            "{set}"
        );
        let chunk: u64 = manifest.value("chunksize").parse().unwrap();
        assert_eq!(
            examine_field(&text, "Chunksize"),
            Some(format!("{} KB", chunk / 1024))
        );
        assert_eq!(
            examine_field(&text, "Daemon"),
            Some(format!("{}s flush period", manifest.value("daemon_sleep")))
        );
        let nchunks = manifest.value("nchunks");
        assert!(
            examine_field(&text, "Bitmap")
                .unwrap()
                .starts_with(&format!("{nchunks} bits (chunks), {} dirty", dirty.len())),
            "{text}"
        );
        // And mdfuse renders what mdadm renders.
        if let Ok(x) = run("mdadm", &["-X", path_str(&file)]) {
            for k in [
                "UUID",
                "Events",
                "Events Cleared",
                "Chunksize",
                "Sync Size",
                "Bitmap",
            ] {
                assert_eq!(examine_field(&text, k), examine_field(&x, k), "{set}: {k}");
            }
        }
    }
}

#[test]
fn kernel_fixture_a_clean_mounts_with_its_bitmap() {
    if !needs_root("kernel_fixture_a_clean_mounts_with_its_bitmap") {
        return;
    }
    let Some((manifest, set)) = fixture("a-clean") else {
        return;
    };
    let fs = ScratchFs::ext4(4096).unwrap();
    let (legs, bitmap) = fixture_array(&set, &fs);
    let mnt = legs.mountpoint("mnt");
    let array = MountedArray::mount(&legs, &mnt, &["--bitmap", path_str(&bitmap)]);
    assert!(array.mdstat().contains("64KB chunk"), "{}", array.mdstat());
    let sum = run("sha256sum", &[path_str(&array.image())]).unwrap();
    assert_eq!(
        sum.split_whitespace().next(),
        Some(manifest.md0_sha.as_str())
    );
    array.stop();
    let (text, dirty) = examine_bitmap(&bitmap);
    assert!(dirty.is_empty(), "{text}");
    let x = run("mdadm", &["-X", path_str(&bitmap)]).unwrap();
    assert_eq!(dirty_count(&x), 0, "{x}");
    assert!(!is_immutable(&bitmap));
}

/// The filesystem is mounted read-write, but its block device was made
/// read-only underneath (`blockdev --setro`): the raw writer cannot open it
/// for writing, so the mount is refused.
#[test]
fn refuses_bitmap_on_device_set_read_only() {
    if !needs_root("refuses_bitmap_on_device_set_read_only") {
        return;
    }
    let (fs, legs, bitmap) = array_with_bitmap();
    run("sync", &[]).unwrap();
    let before = Untouched::record(&legs, &bitmap);
    let dev = path_str(fs.device()).to_string();
    run("blockdev", &["--setro", &dev]).unwrap();
    // Loop devices keep this policy after their detach: undo it even on a panic.
    struct ReadWriteAgain(String);
    impl Drop for ReadWriteAgain {
        fn drop(&mut self) {
            let _ = run("blockdev", &["--setrw", &self.0]);
        }
    }
    let rw_again = ReadWriteAgain(dev.clone());
    let refused = MountedArray::try_mount(
        &legs,
        &legs.mountpoint("mnt"),
        &["--bitmap", path_str(&bitmap)],
    );
    drop(rw_again);
    let text = match refused {
        Ok(a) => {
            a.stop();
            panic!("a bitmap on a read-only device was accepted");
        }
        Err(o) => text(&o),
    };
    eprintln!("device set read-only: {text}");
    assert!(text.contains("md.bitmap"), "{text}");
    assert!(text.contains("read-only"), "{text}");
    assert!(text.contains("--bitmap-file-io"), "{text}");
    before.check(&legs);
}

/// A bitmap on a filesystem mounted read-only is refused (see
/// `refuses_bitmap_on_read_only_device`), but the message blames a missing
/// capability: guard.rs turns every chattr failure into ImmutableDenied,
/// whose text says "needs CAP_LINUX_IMMUTABLE (run it as root)".
#[test]
fn read_only_filesystem_message_names_the_real_cause() {
    if !needs_root("read_only_filesystem_message_names_the_real_cause") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    let (_ro_fs, bitmap) = bitmap_on_a_read_only_fs(&legs);
    let text = assert_refused(
        &legs,
        &legs.mountpoint("mnt"),
        &["--bitmap", path_str(&bitmap)],
        &bitmap,
        &["Read-only"],
    );
    assert!(
        !text.contains("CAP_LINUX_IMMUTABLE"),
        "misleading hint: {text}"
    );
}

/// Linux md's degraded array with dirty bits: it mounts (--run) with its
/// bitmap file, serves what md served, keeps md's dirty bits, and a chunk
/// written while degraded stays dirty past its delay and the stop.
#[test]
fn kernel_fixture_b_degraded_keeps_its_dirty_bits() {
    if !needs_root("kernel_fixture_b_degraded_keeps_its_dirty_bits") {
        return;
    }
    let Some((manifest, set)) = fixture("b-degraded-dirty") else {
        return;
    };
    let md_dirty = manifest.dirty.clone();
    let fs = ScratchFs::ext4(4096).unwrap();
    let (legs, bitmap) = fixture_array(&set, &fs);
    let mnt = legs.mountpoint("mnt");
    let array = MountedArray::mount(
        &legs,
        &mnt,
        &["--run", "--bitmap", path_str(&bitmap), "--delay", "0.3"],
    );
    let mdstat = array.mdstat();
    assert!(mdstat.contains("[2/1] [U_]"), "{mdstat}");
    let sum = run("sha256sum", &[path_str(&array.image())]).unwrap();
    assert_eq!(
        sum.split_whitespace().next(),
        Some(manifest.md0_sha.as_str())
    );
    assert_eq!(examine_bitmap(&bitmap).1, md_dirty);
    write_direct(&array.image(), 200 * 65536, &pattern(200, 1)).unwrap();
    let mut want: Vec<u64> = md_dirty.clone();
    want.push(200);
    want.sort();
    assert_eq!(examine_bitmap(&bitmap).1, want);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        examine_bitmap(&bitmap).1,
        want,
        "a degraded array cleared a bit"
    );
    array.stop();
    let (text, dirty) = examine_bitmap(&bitmap);
    assert_eq!(dirty, want, "{text}");
    let x = run("mdadm", &["-X", path_str(&bitmap)]).unwrap();
    let e = run("mdadm", &["-E", path_str(&legs.paths[0])]).unwrap();
    assert_eq!(dirty_count(&x), want.len() as u64, "{x}");
    assert_eq!(
        examine_field(&x, "Events"),
        examine_field(&e, "Events"),
        "{x}\n{e}"
    );
    assert!(!is_immutable(&bitmap));
}
