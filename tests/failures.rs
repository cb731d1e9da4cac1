//! Failures with real errors: legs that return EIO (the fault-injecting
//! FUSE filesystem of `common::faultyfs`), an operator's `--fail`, kill -9
//! crashes, legs that differ, a resync stopped partway; under verified
//! workloads of several threads, against real mounts of the `mdfuse` binary.
//!
//! Needs root (FUSE mounts, loop devices and ext4 for the bitmap files).
//! Tests run one at a time (`serial`): they are heavy and timing-sensitive on
//! a small machine. `MDFUSE_CRASH_ROUNDS` sets the number of kill -9 rounds
//! (default 50).

mod common;

use common::bitmap::{bitmap_chunk, chunk_bytes, dirty_on_disk};
use common::faultyfs::{leg1_faulty, FaultyFs};
use common::io::{read_direct, AlignedVec};
use common::loopdev::{serial, sparse_file, ScratchFs};
use common::mdfuse::{
    self as h, assert_legs_identical, path_str, tempdir, wait_for, Legs, MountedArray,
    MD_RESYNC_BLOCK,
};
use common::rng::Rng;
use common::workload::{self, decode, Found, Spec, Workload, BLOCK};
use std::collections::HashMap;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
const LEG_SIZE: u64 = 64 * MIB;
/// md's role for a faulty device in the superblock's dev_roles.
const ROLE_FAULTY: u16 = 0xfffe;

// ---------------------------------------------------------------- helpers

fn sparse(path: PathBuf, size: u64) -> PathBuf {
    sparse_file(&path, size).expect("sparse leg file");
    path
}

/// A loop-backed ext4 of the test's own and the path of a bitmap file on it
/// (the raw writer may only write a device the test made).
fn bitmap_on_ext4() -> (ScratchFs, PathBuf) {
    let fs = ScratchFs::ext4(4096).expect("ext4 for the bitmap");
    let bitmap = fs.path("md.bitmap");
    (fs, bitmap)
}

/// The array bytes a workload may use: whole 64 KiB stripes.
fn stripes_of(array_bytes: u64) -> u64 {
    array_bytes / (workload::STRIPE_BLOCKS * BLOCK) * (workload::STRIPE_BLOCKS * BLOCK)
}

fn dev_state(m: &MountedArray, leg: &str) -> String {
    m.md(&format!("dev-{leg}/state"))
}

/// Syncs that have ended (their log line) in the log of the mount at `m`.
fn ended_syncs(m: &MountedArray) -> usize {
    m.log()
        .lines()
        .filter(|l| l.contains(" bytes worked"))
        .count()
}

/// Bytes the last sync copied (or compared). From `md/sync_copied` once the
/// engine provides it; until then from the end-of-sync log line ("... N
/// bytes worked ..."), the `ended_before + 1`-th of this mount's log.
fn sync_copied(m: &MountedArray, ended_before: usize) -> u64 {
    let file = m.mountpoint().join("md/sync_copied");
    if file.exists() {
        let v = m.md("sync_copied");
        return v
            .split_whitespace()
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse md/sync_copied {v:?}"));
    }
    // The line follows the sync's end by a moment.
    wait_for("the sync's end in the log", Duration::from_secs(10), || {
        ended_syncs(m) > ended_before
    });
    let log = m.log();
    let line = log
        .lines()
        .filter(|l| l.contains(" bytes worked"))
        .nth(ended_before)
        .expect("the sync's log line");
    line.split(" bytes worked")
        .next()
        .and_then(|t| t.rsplit('(').next())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the bytes worked in {line:?}"))
}

/// The fields of an md v1.2 superblock (4 KiB into the leg) the tests judge.
#[derive(Debug, Clone)]
struct RawSuperblock {
    dev_number: u32,
    events: u64,
    resync_offset: u64,
    roles: Vec<u16>,
}

/// Reads a leg's superblock straight from the file (O_DIRECT: not the page
/// cache the daemon's direct writes go around).
fn raw_superblock(leg: &Path) -> RawSuperblock {
    let b = read_direct(leg, 4096, 4096).unwrap_or_else(|e| panic!("read {}: {e}", leg.display()));
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    assert_eq!(
        u32_at(0),
        0xa92b_4efc,
        "no md superblock on {}",
        leg.display()
    );
    let max_dev = u32_at(220) as usize;
    RawSuperblock {
        dev_number: u32_at(160),
        events: u64_at(200),
        resync_offset: u64_at(208),
        roles: (0..max_dev.min(384))
            .map(|i| u16::from_le_bytes([b[256 + 2 * i], b[257 + 2 * i]]))
            .collect(),
    }
}

/// `mdfuse examine LEG`'s text (asserting success).
fn examine(leg: &Path) -> String {
    h::mdfuse_stdout(&["examine", path_str(leg)])
}

/// The open flags of the daemon's descriptor for `path` (/proc/PID/fdinfo).
fn daemon_open_flags(pid: i32, path: &Path) -> Option<i32> {
    let want = path.canonicalize().ok()?;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if std::fs::read_link(e.path()).ok().as_deref() != Some(want.as_path()) {
            continue;
        }
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_str()?))
                .ok()?;
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
        return i32::from_str_radix(flags.trim(), 8).ok();
    }
    None
}

/// Writes one block (generation `g`) at `offset` with O_DIRECT.
fn write_block(image: &Path, offset: u64, g: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(image)?;
    let mut buf = AlignedVec::zeroed(BLOCK as usize);
    workload::fill_block(buf.as_mut_slice(), offset, g);
    f.write_all_at(buf.as_slice(), offset)
}

/// Reads one block at `offset` with O_DIRECT.
fn read_block(image: &Path, offset: u64) -> std::io::Result<Found> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(image)?;
    let mut buf = AlignedVec::zeroed(BLOCK as usize);
    f.read_exact_at(buf.as_mut_slice(), offset)?;
    Ok(decode(buf.as_slice()))
}

/// Asserts the block at `offset` reads back (O_DIRECT) as written in
/// generation `g`; `what` says which read it was.
fn assert_block(image: &Path, offset: u64, g: u64, what: &str) {
    let found = read_block(image, offset).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        found,
        Found::Block {
            offset,
            generation: g
        },
        "{what}"
    );
}

fn fsync_image(image: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(image)?
        .sync_all()
}

fn assert_eio(what: &str, r: std::io::Result<impl std::fmt::Debug>) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
        other => panic!("{what}: expected EIO, got {other:?}"),
    }
}

/// Chunks `[offset, offset+len)` touches, for a bitmap chunk of `chunk` bytes.
fn chunks_of(offset: u64, len: u64, chunk: u64) -> std::ops::RangeInclusive<u64> {
    offset / chunk..=(offset + len - 1) / chunk
}

// ---------------------------------------------------------------- faultyfs itself

/// The test filesystem injects what it is told, passes everything else
/// through, and its guard unmounts even with a file still open.
#[test]
fn faultyfs_injects_eio_into_a_plain_reader_and_unmounts_on_drop() {
    let Some(_serial) = serial("faultyfs_injects_eio_into_a_plain_reader_and_unmounts_on_drop")
    else {
        return;
    };
    let ffs = FaultyFs::new(&[("disk", MIB), ("other", MIB)]);
    let disk = ffs.path("disk");
    let data: Vec<u8> = (0..2 * BLOCK).map(|i| (i % 251) as u8).collect();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .expect("open through faultyfs");
    f.write_all_at(&data, 0).expect("write through faultyfs");
    f.sync_all().expect("fsync through faultyfs");
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 0)
        .expect("read through faultyfs");
    assert_eq!(back, data);
    assert_eq!(
        std::fs::read(ffs.backing("disk")).expect("backing")[..data.len()],
        data[..],
        "the backing file holds what was written"
    );

    ffs.fail_reads("disk", 4096..4097);
    let mut one = vec![0u8; 4096];
    f.read_exact_at(&mut one, 0)
        .expect("a read before the range");
    assert_eio(
        "a plain read of the failing range",
        f.read_exact_at(&mut one, 4096),
    );
    assert_eio(
        "a read overlapping the range",
        f.read_exact_at(&mut back, 0),
    );
    f.write_all_at(&data[..4096], 4096)
        .expect("writes pass while only reads fail");
    // std::fs::read is a plain reader too.
    assert_eio("std::fs::read", std::fs::read(&disk));
    assert_eq!(
        std::fs::read(ffs.path("other"))
            .expect("the other file")
            .len(),
        MIB as usize,
        "faults are per file"
    );

    ffs.fail_writes("disk", 8192..12288);
    assert_eio(
        "a write into the failing range",
        f.write_all_at(&data[..100], 8150),
    );
    f.write_all_at(&data[..100], 0).expect("a write elsewhere");
    f.sync_all().expect("fsync passes while only writes fail");

    ffs.fail_all("disk");
    assert_eio("fsync under fail_all", f.sync_all());
    assert_eio("a read under fail_all", f.read_exact_at(&mut one, 0));

    // Bad sectors that a write remaps: a sector written in part stays bad,
    // one written whole is good again, the others stay bad.
    let other = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(ffs.path("other"))
        .expect("open other");
    ffs.fail_reads_until_written("other", 4096..8192);
    assert_eq!(ffs.bad_bytes_left("other"), 4096);
    assert_eio(
        "a read of the bad sector",
        other.read_exact_at(&mut one, 4096),
    );
    other
        .write_all_at(&data[..100], 4096)
        .expect("a partial write");
    assert_eio(
        "a read after a partial write",
        other.read_exact_at(&mut one, 4096),
    );
    assert_eq!(
        ffs.bad_bytes_left("other"),
        4096,
        "a partial write remapped"
    );
    other
        .write_all_at(&data[..512], 4096)
        .expect("a write of one whole sector");
    assert_eq!(ffs.unwritten_read_faults("other"), vec![4608..8192]);
    other
        .read_exact_at(&mut one[..512], 4096)
        .expect("the rewritten sector reads");
    assert_eio(
        "a read of the sectors not rewritten",
        other.read_exact_at(&mut one[..512], 4608),
    );
    other
        .write_all_at(&data[..8192], 0)
        .expect("a covering write");
    other
        .read_exact_at(&mut one, 4096)
        .expect("the rewritten sectors read");
    assert!(ffs.unwritten_read_faults("other").is_empty());
    assert_eq!(ffs.bad_bytes_left("other"), 0);
    drop(other);

    ffs.heal("disk");
    f.read_exact_at(&mut back, 0).expect("healed read");
    f.sync_all().expect("healed fsync");
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&disk)
        .expect("O_DIRECT open through faultyfs");
    let mut aligned = AlignedVec::zeroed(4096);
    direct
        .read_exact_at(aligned.as_mut_slice(), 4096)
        .expect("O_DIRECT read");
    let c = ffs.counters("disk");
    assert!(c.direct_opens >= 1, "{c:?}");
    assert!(
        c.failed_reads >= 4 && c.failed_writes == 1 && c.failed_fsyncs == 1,
        "{c:?}"
    );
    assert!(
        c.reads > c.failed_reads && c.writes > c.failed_writes,
        "{c:?}"
    );

    // Dropped with files still open: the connection is aborted, nothing hangs.
    let mnt = ffs.mountpoint().to_owned();
    let t = Instant::now();
    drop(ffs);
    assert!(!h::is_mounted(&mnt), "faultyfs still mounted after drop");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "drop took {:?}",
        t.elapsed()
    );
    assert!(
        f.read_exact_at(&mut one, 0).is_err(),
        "a file of the dropped faultyfs still reads"
    );
}

// ---------------------------------------------------------------- a leg fails under load

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailBy {
    /// Its filesystem starts failing every write with EIO.
    WriteErrors,
    /// `mdfuse manage MNT --fail LEG`.
    Operator,
}

/// Two legs and a bitmap on ext4; a verified workload of four threads; leg1
/// fails midway. The users see nothing; md's files, mdstat and the surviving
/// superblock say what happened.
fn fail_a_leg_under_a_verified_workload(test: &str, by: FailBy) {
    let Some(_serial) = serial(test) else { return };
    let dir = tempdir("mdfuse-failures");
    let (_bitmap_fs, bitmap) = bitmap_on_ext4();
    let faulty = FaultyFs::new(&[("leg1.img", LEG_SIZE)]);
    let leg0 = sparse(dir.path().join("leg0.img"), LEG_SIZE);
    let (leg1, leg1_backing) = match by {
        FailBy::WriteErrors => (faulty.path("leg1.img"), faulty.backing("leg1.img")),
        FailBy::Operator => {
            let p = sparse(dir.path().join("leg1.img"), LEG_SIZE);
            (p.clone(), p)
        }
    };
    let legs = Legs::from_paths(vec![leg0.clone(), leg1.clone()]);
    let created = h::create(&legs, &["--bitmap", path_str(&bitmap)]);
    let m = MountedArray::mount(
        &legs,
        &dir.path().join("mnt"),
        &["--bitmap", path_str(&bitmap)],
    );
    if by == FailBy::WriteErrors {
        let flags = daemon_open_flags(m.pid(), &leg1).expect("the daemon holds leg1 open");
        assert!(
            flags & libc::O_DIRECT != 0,
            "mdfuse opened the faultyfs leg without O_DIRECT (flags {flags:o}):\n{}",
            m.log()
        );
        assert!(faulty.counters("leg1.img").direct_opens >= 1);
    }
    let region = 0..stripes_of(created.array_bytes);
    let wl = Workload::start(&Spec::new(&m.image(), region.clone()));
    assert!(
        wl.wait_writes(300, Duration::from_secs(60)),
        "the workload did not get going"
    );
    let before = raw_superblock(&leg0);
    match by {
        FailBy::WriteErrors => faulty.fail_writes("leg1.img", 0..u64::MAX),
        FailBy::Operator => {
            let o = h::mdfuse_with(&["manage", path_str(m.mountpoint()), "--fail"], &[&leg1]);
            h::assert_ok("mdfuse manage --fail", &o);
        }
    }
    wait_for("leg1 to be faulty", Duration::from_secs(30), || {
        dev_state(&m, "leg1.img") == "faulty"
    });
    assert!(
        wl.wait_writes(300, Duration::from_secs(60)),
        "the workload stalled after leg1 failed"
    );
    let report = wl.stop();
    report.assert_clean(&format!("{by:?}"));
    eprintln!(
        "{by:?}: {} writes, {} reads, {} fsyncs, none failed",
        report.writes, report.reads, report.fsyncs
    );
    if by == FailBy::WriteErrors {
        let c = faulty.counters("leg1.img");
        assert!(c.failed_writes >= 1, "no write of leg1 failed: {c:?}");
    }

    let mdstat = m.mdstat();
    assert!(mdstat.contains("[2/1] [U_]"), "mdstat:\n{mdstat}");
    assert!(mdstat.contains("leg1.img[1](F)"), "mdstat:\n{mdstat}");
    assert_eq!(dev_state(&m, "leg1.img"), "faulty");
    assert_eq!(dev_state(&m, "leg0.img"), "in_sync");
    assert_eq!(m.md("degraded"), "1");
    let bad = workload::verify_acked(&m.image(), region, &report.acked);
    assert!(
        bad.is_empty(),
        "acknowledged writes lost:\n{}",
        bad[..bad.len().min(10)].join("\n")
    );

    // The surviving superblock records the failure (role 0xfffe) in a newer
    // event than the failed leg's own, no longer written, superblock.
    let survivor = raw_superblock(&leg0);
    let failed = raw_superblock(&leg1_backing);
    assert!(
        survivor.events > before.events,
        "events {} -> {}",
        before.events,
        survivor.events
    );
    assert_eq!(
        survivor.roles.get(failed.dev_number as usize),
        Some(&ROLE_FAULTY),
        "leg1 (dev {}) not recorded faulty in leg0's roles {:?}",
        failed.dev_number,
        survivor.roles
    );
    assert_eq!(survivor.roles.get(survivor.dev_number as usize), Some(&0));
    assert!(
        failed.events < survivor.events,
        "the failed leg's superblock was written after it failed ({} vs {})",
        failed.events,
        survivor.events
    );
    let text = examine(&leg0);
    assert_eq!(
        h::examine_field(&text, "Events"),
        Some(survivor.events.to_string()),
        "{text}"
    );
    assert!(
        h::examine_field(&text, "Array State").is_some_and(|v| v.starts_with("A.")),
        "{text}"
    );
    m.stop();
    // Still so after the stop.
    let survivor = raw_superblock(&leg0);
    assert_eq!(
        survivor.roles.get(failed.dev_number as usize),
        Some(&ROLE_FAULTY)
    );
}

#[test]
fn a_leg_failing_every_write_under_a_verified_workload_is_failed_out_unseen() {
    fail_a_leg_under_a_verified_workload(
        "a_leg_failing_every_write_under_a_verified_workload_is_failed_out_unseen",
        FailBy::WriteErrors,
    );
}

#[test]
fn manage_fail_under_a_verified_workload_degrades_the_array_unseen() {
    fail_a_leg_under_a_verified_workload(
        "manage_fail_under_a_verified_workload_degrades_the_array_unseen",
        FailBy::Operator,
    );
}

// ---------------------------------------------------------------- the last leg

/// With one leg faulty, the other's errors reach the user, and it stays.
#[test]
fn the_last_in_sync_leg_returns_its_errors_to_the_user_and_is_not_failed() {
    let Some(_serial) =
        serial("the_last_in_sync_leg_returns_its_errors_to_the_user_and_is_not_failed")
    else {
        return;
    };
    let dir = tempdir("mdfuse-failures");
    let faulty = FaultyFs::new(&[("leg0.img", LEG_SIZE), ("leg1.img", LEG_SIZE)]);
    let legs = Legs::from_paths(vec![faulty.path("leg0.img"), faulty.path("leg1.img")]);
    let created = h::create(&legs, &[]);
    let data_offset = created.data_offset_sectors * 512;
    let m = MountedArray::mount(&legs, &dir.path().join("mnt"), &[]);
    let img = m.image();
    write_block(&img, MIB, 1).expect("a write with both legs");

    faulty.fail_all("leg1.img");
    write_block(&img, 2 * MIB, 1).expect("a write while leg1 fails: leg1 is failed out");
    wait_for("leg1 to be faulty", Duration::from_secs(10), || {
        dev_state(&m, "leg1.img") == "faulty"
    });
    assert_eq!(m.md("degraded"), "1");

    // The last in-sync leg fails writes to one range.
    let bad = 8 * MIB;
    faulty.fail_writes("leg0.img", data_offset + bad..data_offset + bad + MIB);
    assert_eio(
        "a write the last leg fails",
        write_block(&img, bad + 4 * KIB, 2),
    );
    assert_eq!(
        dev_state(&m, "leg0.img"),
        "in_sync",
        "the last leg was failed"
    );
    assert_eq!(m.md("degraded"), "1");
    let mdstat = m.mdstat();
    assert!(mdstat.contains("[2/1] [U_]"), "mdstat:\n{mdstat}");
    write_block(&img, 16 * MIB, 1).expect("a write elsewhere still works");
    assert_block(&img, MIB, 1, "a read still works");

    // Every request fails: reads and flushes report it too.
    faulty.fail_all("leg0.img");
    assert_eio("fsync when the last leg fails", fsync_image(&img));
    assert_eio("a read when the last leg fails", read_block(&img, MIB));
    assert_eq!(
        dev_state(&m, "leg0.img"),
        "in_sync",
        "the last leg was failed"
    );
    let c = faulty.counters("leg0.img");
    assert!(
        c.failed_writes >= 1 && c.failed_fsyncs >= 1 && c.failed_reads >= 1,
        "{c:?}"
    );

    // Healed, it serves again.
    faulty.heal("leg0.img");
    write_block(&img, bad + 4 * KIB, 3).expect("a write after healing");
    fsync_image(&img).expect("fsync after healing");
    for (off, g) in [(MIB, 1), (2 * MIB, 1), (bad + 4 * KIB, 3), (16 * MIB, 1)] {
        assert_block(&img, off, g, "read after healing");
    }
    assert_eq!(m.md("degraded"), "1");
    m.stop();
}

/// md fails a member whose superblock write fails (`super_written` →
/// `md_error`) and goes on degraded. The first write after a clean start
/// marks the superblocks active; a leg that fails that superblock write must
/// be failed out, not the user's write.
#[test]
fn a_leg_failing_the_first_write_after_a_clean_start_is_failed_out_unseen() {
    let Some(_serial) =
        serial("a_leg_failing_the_first_write_after_a_clean_start_is_failed_out_unseen")
    else {
        return;
    };
    let dir = tempdir("mdfuse-failures");
    let (faulty, legs) = leg1_faulty(dir.path(), LEG_SIZE);
    let leg0 = legs.paths[0].clone();
    h::create(&legs, &[]);
    let m = MountedArray::mount(&legs, &dir.path().join("mnt"), &[]);
    assert_eq!(m.md("array_state"), "clean");
    faulty.fail_all("leg1.img");
    write_block(&m.image(), MIB, 1).expect("the first write, leg1 failing: no user error");
    fsync_image(&m.image()).expect("fsync");
    assert_eq!(dev_state(&m, "leg1.img"), "faulty");
    assert_eq!(m.md("degraded"), "1");
    assert_block(&m.image(), MIB, 1, "read");
    let sb = raw_superblock(&leg0);
    let failed = raw_superblock(&faulty.backing("leg1.img"));
    assert_eq!(sb.resync_offset, 0, "leg0 records the array active");
    assert_eq!(sb.roles.get(failed.dev_number as usize), Some(&ROLE_FAULTY));
    m.stop();
}

// ---------------------------------------------------------------- re-add

/// A leg fails on write errors, N MiB are written degraded, the leg heals
/// and is re-added: the recovery copies those chunks, not the array.
#[test]
fn re_add_after_degraded_writes_copies_only_the_chunks_written() {
    let Some(_serial) = serial("re_add_after_degraded_writes_copies_only_the_chunks_written")
    else {
        return;
    };
    let dir = tempdir("mdfuse-failures");
    let (_bitmap_fs, bitmap) = bitmap_on_ext4();
    let (faulty, legs) = leg1_faulty(dir.path(), LEG_SIZE);
    let leg0 = legs.paths[0].clone();
    let created = h::create(&legs, &["--bitmap", path_str(&bitmap)]);
    let size = created.array_bytes;
    let data_offset = created.data_offset_sectors * 512;
    let chunk = bitmap_chunk(&bitmap);
    let m = MountedArray::mount(
        &legs,
        &dir.path().join("mnt"),
        &["--bitmap", path_str(&bitmap), "--delay", "0.3"],
    );
    let img = m.image();
    // Written once with both legs, so the array is active when leg1 fails
    // (a failure while marking it active is another test's matter). Its
    // chunk is among those written degraded below.
    write_block(&img, 4 * KIB, 1).expect("a write with both legs");

    faulty.fail_all("leg1.img");
    // 6 MiB in six 1 MiB writes that straddle chunk boundaries (4 KiB past a
    // multiple of 9 MiB): 17 chunks each.
    let writes: Vec<u64> = (0..6).map(|i| i * 9 * MIB + 4 * KIB).collect();
    let mut touched = std::collections::BTreeSet::new();
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&img)
            .expect("open array.img");
        let mut buf = AlignedVec::zeroed(MIB as usize);
        for &off in &writes {
            for b in 0..MIB / BLOCK {
                let at = (b * BLOCK) as usize;
                workload::fill_block(
                    &mut buf.as_mut_slice()[at..at + BLOCK as usize],
                    off + b * BLOCK,
                    7,
                );
            }
            f.write_all_at(buf.as_slice(), off)
                .expect("a degraded write is no user error");
            touched.extend(chunks_of(off, MIB, chunk));
        }
        f.sync_all().expect("fsync degraded");
    }
    assert_eq!(dev_state(&m, "leg1.img"), "faulty");
    let touched: Vec<u64> = touched.into_iter().collect();
    let touched_bytes = chunk_bytes(&touched, chunk, size);
    let dirty = dirty_on_disk(&bitmap);
    assert_eq!(
        dirty, touched,
        "the bitmap on disk should hold exactly the chunks written degraded"
    );

    faulty.heal("leg1.img");
    let ended = ended_syncs(&m);
    let o = h::mdfuse_with(
        &["manage", path_str(m.mountpoint()), "--re-add"],
        &[&faulty.path("leg1.img")],
    );
    h::assert_ok("mdfuse manage --re-add", &o);
    m.wait_sync_idle(Duration::from_secs(60));
    let copied = sync_copied(&m, ended);
    eprintln!(
        "re-add after {} bytes written degraded: {} chunks of {chunk} dirty, recovery copied {copied} of {size} bytes",
        writes.len() as u64 * MIB,
        touched.len()
    );
    assert_eq!(
        copied, touched_bytes,
        "the recovery should copy the dirty chunks ({touched_bytes} bytes), not {copied} (the array is {size})"
    );
    assert!(copied < size / 4);
    assert_eq!(dev_state(&m, "leg1.img"), "in_sync");
    assert_eq!(m.md("degraded"), "0");
    assert!(m.mdstat().contains("[2/2] [UU]"), "{}", m.mdstat());
    for &off in &writes {
        for b in [0, MIB / BLOCK - 1] {
            let o = off + b * BLOCK;
            assert_block(&img, o, 7, "read");
        }
    }
    m.stop();
    assert_legs_identical(&leg0, &faulty.backing("leg1.img"), data_offset, size);
}

// ---------------------------------------------------------------- kill -9

/// What a block may hold after a crash: its newest acknowledged generation
/// (or, never acknowledged, what it held before), or a newer one in flight.
fn allowed_after_crash(
    off: u64,
    report: &workload::Report,
    known: &HashMap<u64, u64>,
) -> Vec<Option<u64>> {
    let mut v = vec![report.acked.get(&off).or_else(|| known.get(&off)).copied()];
    if let Some(p) = report.pending.get(&off) {
        v.extend(p.iter().map(|&g| Some(g)));
    }
    v
}

/// Repeatedly: a verified writer workload (acknowledged after fsync), kill -9
/// at a random moment, remount, wait for the resync. Every acknowledged
/// write survives, the legs end identical, and the resync copied exactly
/// the chunks whose bits were set on disk.
#[test]
fn kill9_crashes_keep_every_fsynced_write_and_resync_only_dirty_chunks() {
    let Some(_serial) =
        serial("kill9_crashes_keep_every_fsynced_write_and_resync_only_dirty_chunks")
    else {
        return;
    };
    let rounds: u64 = std::env::var("MDFUSE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let t0 = Instant::now();
    let dir = tempdir("mdfuse-failures");
    let (_bitmap_fs, bitmap) = bitmap_on_ext4();
    let legs = Legs::new(dir.path(), 2, LEG_SIZE);
    let (leg0, leg1) = (legs.paths[0].clone(), legs.paths[1].clone());
    let created = h::create(&legs, &["--bitmap", path_str(&bitmap)]);
    let (size, data_offset) = (created.array_bytes, created.data_offset_sectors * 512);
    let chunk = bitmap_chunk(&bitmap);
    let region = 0..stripes_of(size);
    let mnt = dir.path().join("mnt");
    let mount_args = [
        "--bitmap",
        path_str(&bitmap),
        "--delay",
        "0.5",
        "--threads",
        "8",
    ];
    let seed = Rng::clock_seed();
    eprintln!("kill -9 rounds: {rounds}, seed {seed}");
    let mut rng = Rng::new(seed);
    let mut known: HashMap<u64, u64> = HashMap::new();
    let (mut acked_total, mut copied_total, mut in_flight_seen) = (0u64, 0u64, 0u64);
    let mut m = MountedArray::mount(&legs, &mnt, &mount_args);
    for round in 0..rounds {
        let spec = Spec {
            threads: 3,
            fsync_every: 1 + rng.next() % 4,
            ack_after_fsync: true,
            generation_base: (round + 1) << 32,
            seed: rng.next(),
            known: Arc::new(known.clone()),
            ..Spec::new(&m.image(), region.clone())
        };
        let wl = Workload::start(&spec);
        std::thread::sleep(Duration::from_millis(100 + rng.next() % 600));
        m.kill9();
        let report = wl.stop();
        assert!(
            report.mismatches.is_empty(),
            "round {round}: wrong data read back before the crash:\n{}",
            report.mismatches.join("\n")
        );
        let dirty = dirty_on_disk(&bitmap);
        let dirty_bytes = chunk_bytes(&dirty, chunk, size);

        let ended = ended_syncs_at(&mnt);
        m = MountedArray::mount(&legs, &mnt, &mount_args);
        m.wait_sync_idle(Duration::from_secs(60));
        let copied = sync_copied(&m, ended);
        assert_eq!(
            copied,
            dirty_bytes,
            "round {round}: the resync copied {copied} bytes, the {} chunks dirty on disk are \
             {dirty_bytes}",
            dirty.len()
        );

        let blocks = workload::read_blocks(&m.image(), region.clone()).expect("read the array");
        let mut lost = Vec::new();
        for (off, found) in blocks {
            let allowed = allowed_after_crash(off, &report, &known);
            let held = match &found {
                Found::Zero => Some(None),
                Found::Block { offset, generation } if *offset == off => Some(Some(*generation)),
                _ => None,
            };
            match held {
                Some(g) if allowed.contains(&g) => {
                    if g != allowed[0] {
                        in_flight_seen += 1;
                    }
                    match g {
                        Some(g) => known.insert(off, g),
                        None => known.remove(&off),
                    };
                }
                _ => lost.push(format!("block {off}: allowed {allowed:?}, found {found:?}")),
            }
        }
        assert!(
            lost.is_empty(),
            "round {round}: {} block(s) lost or wrong after the crash:\n{}",
            lost.len(),
            lost[..lost.len().min(10)].join("\n")
        );
        assert_legs_identical(&leg0, &leg1, data_offset, size);
        acked_total += report.acked.len() as u64;
        copied_total += copied;
    }
    m.stop();
    assert_legs_identical(&leg0, &leg1, data_offset, size);
    eprintln!(
        "{rounds} kill -9 rounds in {:.1} s: {acked_total} block writes acknowledged, \
         {in_flight_seen} unacknowledged ones found on disk, {} MiB resynced in all",
        t0.elapsed().as_secs_f64(),
        copied_total / MIB
    );
}

// ---------------------------------------------------------------- check and repair

/// Legs that differ in known 64 KiB units: check counts them in md's units
/// (128 sectors each), repair rewrites them, a second check finds none;
/// all while a user workload runs on the rest of the array.
#[test]
fn check_counts_known_mismatches_and_repair_fixes_them_under_user_io() {
    let Some(_serial) = serial("check_counts_known_mismatches_and_repair_fixes_them_under_user_io")
    else {
        return;
    };
    let dir = tempdir("mdfuse-failures");
    let (_bitmap_fs, bitmap) = bitmap_on_ext4();
    let legs = Legs::new(dir.path(), 2, LEG_SIZE);
    let (leg0, leg1) = (legs.paths[0].clone(), legs.paths[1].clone());
    let created = h::create(&legs, &["--bitmap", path_str(&bitmap)]);
    let (size, data_offset) = (created.array_bytes, created.data_offset_sectors * 512);
    let half = stripes_of(size / 2);
    let mnt = dir.path().join("mnt");
    let args = ["--bitmap", path_str(&bitmap)];

    // The first half holds known blocks; the workload gets the second.
    let m = MountedArray::mount(&legs, &mnt, &args);
    let mut first_half = HashMap::new();
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(m.image())
            .expect("open array.img");
        let mut buf = AlignedVec::zeroed(MIB as usize);
        for off in (0..half).step_by(MIB as usize) {
            // Up to `half` only: the workload's half must start unwritten.
            let len = (half - off).min(MIB);
            for b in 0..len / BLOCK {
                let at = (b * BLOCK) as usize;
                workload::fill_block(
                    &mut buf.as_mut_slice()[at..at + BLOCK as usize],
                    off + b * BLOCK,
                    1,
                );
                first_half.insert(off + b * BLOCK, 1);
            }
            f.write_all_at(&buf.as_slice()[..len as usize], off)
                .expect("fill");
        }
        f.sync_all().expect("fsync");
    }
    m.stop();

    // Differences written straight into leg1's data region, array stopped:
    // (unit, byte offset in the unit, length).
    let perturb: [(u64, u64, usize); 6] = [
        (3, 0, MD_RESYNC_BLOCK as usize), // the whole unit
        (4, 100, 1),                      // one byte, next to it
        (77, MD_RESYNC_BLOCK - 512, 512), // its last sector
        (200, 8 * KIB, 4096),             // a block inside
        (201, 0, 1),                      // its first byte
        (300, 33 * KIB, 7),               // a few bytes across sectors
    ];
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&leg1)
            .expect("open leg1");
        for &(unit, at, len) in &perturb {
            let pos = data_offset + unit * MD_RESYNC_BLOCK + at;
            assert!(unit * MD_RESYNC_BLOCK + at + len as u64 <= half);
            let mut old = vec![0u8; len];
            f.read_exact_at(&mut old, pos).expect("read leg1");
            let new: Vec<u8> = old.iter().map(|b| !b).collect();
            f.write_all_at(&new, pos).expect("perturb leg1");
        }
        f.sync_all().expect("fsync leg1");
    }
    let expected = perturb.len() as u64 * (MD_RESYNC_BLOCK / 512);

    let m = MountedArray::mount(&legs, &mnt, &args);
    assert_eq!(m.md("sync_action"), "idle", "a clean array needs no resync");
    // Slow enough that the workload runs through each pass; min as well:
    // md's throttle drops to sync_speed_min while users do I/O.
    m.set_md("sync_speed_min", "16000");
    m.set_md("sync_speed_max", "16000");
    let wl = Workload::start(&Spec {
        threads: 2,
        ..Spec::new(&m.image(), half..stripes_of(size))
    });
    assert!(wl.wait_writes(50, Duration::from_secs(30)));
    let pass = |action: &str| -> u64 {
        let writes_before = wl.writes();
        m.set_md("sync_action", action);
        assert_eq!(m.md("sync_action"), action);
        m.wait_sync_idle(Duration::from_secs(120));
        assert!(
            wl.writes() > writes_before + 20,
            "the workload did not run during the {action}"
        );
        m.md("mismatch_cnt").parse().expect("mismatch_cnt")
    };
    let checked = pass("check");
    assert_eq!(
        checked,
        expected,
        "check: mismatch_cnt should be {} units x 128 sectors",
        perturb.len()
    );
    let repaired = pass("repair");
    assert_eq!(
        repaired, expected,
        "repair counts what it rewrote, as md does"
    );
    let rechecked = pass("check");
    assert_eq!(rechecked, 0, "a check after repair finds no mismatch");
    let report = wl.stop();
    report.assert_clean("the workload during check and repair");
    let bad = workload::verify_acked(&m.image(), 0..half, &first_half);
    assert!(
        bad.is_empty(),
        "first half:\n{}",
        bad[..bad.len().min(10)].join("\n")
    );
    let bad = workload::verify_acked(&m.image(), half..stripes_of(size), &report.acked);
    assert!(
        bad.is_empty(),
        "second half:\n{}",
        bad[..bad.len().min(10)].join("\n")
    );
    m.stop();
    assert_legs_identical(&leg0, &leg1, data_offset, size);
}

// ---------------------------------------------------------------- no bitmap: resync resumes

/// Without a bitmap a crash owes a resync of the whole array; a clean stop
/// during it records how far it got, and the next mount resumes there.
#[test]
fn a_resync_without_bitmap_stopped_partway_resumes_where_it_stopped() {
    let Some(_serial) = serial("a_resync_without_bitmap_stopped_partway_resumes_where_it_stopped")
    else {
        return;
    };
    let dir = tempdir("mdfuse-failures");
    // leg1 on faultyfs: slowed down, so the resync can be caught partway.
    let (faulty, legs) = leg1_faulty(dir.path(), LEG_SIZE);
    let leg0 = legs.paths[0].clone();
    let created = h::create(&legs, &[]);
    let (size, data_offset) = (created.array_bytes, created.data_offset_sectors * 512);
    let region = 0..stripes_of(size);
    let mnt = dir.path().join("mnt");

    let m = MountedArray::mount(&legs, &mnt, &[]);
    let wl = Workload::start(&Spec {
        threads: 3,
        ack_after_fsync: true,
        fsync_every: 2,
        ..Spec::new(&m.image(), region.clone())
    });
    assert!(wl.wait_writes(200, Duration::from_secs(30)));
    m.kill9();
    let report = wl.stop();
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    assert_eq!(
        raw_superblock(&leg0).resync_offset,
        0,
        "a crashed array is active"
    );

    faulty.delay_writes("leg1.img", Duration::from_millis(100));
    let m = MountedArray::mount(&legs, &mnt, &[]);
    assert_eq!(m.md("sync_action"), "resync", "{}", m.mdstat());
    m.set_md("sync_speed_min", "2000");
    m.set_md("sync_speed_max", "2000");
    faulty.delay_writes("leg1.img", Duration::ZERO);
    wait_for("the resync to pass 8 MiB", Duration::from_secs(60), || {
        m.sync_completed()
            .is_some_and(|(done, _)| done >= 8 * MIB / 512)
    });
    let (done, total) = m.sync_completed().expect("the resync still runs");
    assert!(done < total / 2, "the resync ran too fast: {done}/{total}");
    assert!(m.mdstat().contains("resync ="), "mdstat:\n{}", m.mdstat());
    m.stop();

    let sb0 = raw_superblock(&leg0);
    let sb1 = raw_superblock(&faulty.backing("leg1.img"));
    let offset = sb0.resync_offset;
    eprintln!("stopped during the resync: {done} of {total} sectors done, resync offset {offset}");
    assert!(
        offset > 0 && offset < size / 512,
        "resync offset {offset} recorded (array of {} sectors)",
        size / 512
    );
    assert!(
        offset >= done,
        "resumes at {offset}, before the {done} sectors seen done"
    );
    assert_eq!(
        sb1.resync_offset, offset,
        "the legs disagree on the resync offset"
    );
    // examine says a resync is owed; like mdadm 4.2's --examine it prints
    // no resync offset (the raw field above is where it is).
    let text = examine(&leg0);
    assert_eq!(
        h::examine_field(&text, "State").as_deref(),
        Some("active"),
        "{text}"
    );

    // The next mount resumes there: progress starts at the offset (md shows
    // the checkpoint as done from the start), and only the rest is copied.
    faulty.delay_writes("leg1.img", Duration::from_millis(100));
    let ended = ended_syncs_at(&mnt);
    let m = MountedArray::mount(&legs, &mnt, &[]);
    wait_for(
        "the resumed resync's first step",
        Duration::from_secs(30),
        || m.sync_completed().is_some_and(|(d, _)| d > 0),
    );
    let (first, _) = m.sync_completed().expect("the resync runs");
    assert!(
        first >= offset && first <= offset + 8 * MIB / 512,
        "the resumed resync's progress starts at {first} sectors, not near {offset}"
    );
    faulty.delay_writes("leg1.img", Duration::ZERO);
    m.wait_sync_idle(Duration::from_secs(120));
    let copied = sync_copied(&m, ended);
    assert_eq!(
        copied,
        size - offset * 512,
        "the resumed resync copies from the offset to the end"
    );
    for (off, found) in workload::read_blocks(&m.image(), region).expect("read the array") {
        let allowed = allowed_after_crash(off, &report, &HashMap::new());
        let held = match found {
            Found::Zero => Some(None),
            Found::Block { offset, generation } if offset == off => Some(Some(generation)),
            _ => None,
        };
        assert!(
            held.is_some_and(|g| allowed.contains(&g)),
            "block {off}: allowed {allowed:?}, found {found:?}"
        );
    }
    m.stop();
    assert_legs_identical(&leg0, &faulty.backing("leg1.img"), data_offset, size);
}

/// [`ended_syncs`] before a mount exists at `mnt` (its log is appended to).
fn ended_syncs_at(mnt: &Path) -> usize {
    std::fs::read_to_string(h::log_path(mnt))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" bytes worked"))
        .count()
}

// ---------------------------------------------------------------- a panic

/// A panic between two legs' writes of one request (a failpoint writes the
/// first leg, then panics): the daemon stops at once (no serving on with a
/// thread fewer, no clean stop recording legs that differ as in sync), the
/// mount is detached, and the next mount resyncs the chunk, so the legs
/// agree again. Needs the `failpoints` feature (the test suite builds with it).
#[cfg(feature = "failpoints")]
#[test]
fn a_panic_between_leg_writes_stops_the_daemon_and_the_next_mount_resyncs() {
    let Some(_serial) =
        serial("a_panic_between_leg_writes_stops_the_daemon_and_the_next_mount_resyncs")
    else {
        return;
    };
    let dir = tempdir("mdfuse-panic");
    let (_bitmap_fs, bitmap) = bitmap_on_ext4();
    let legs = Legs::new(dir.path(), 2, LEG_SIZE);
    let created = h::create(&legs, &["--bitmap", path_str(&bitmap)]);
    let (size, data_offset) = (created.array_bytes, created.data_offset_sectors * 512);
    let chunk = bitmap_chunk(&bitmap);
    let mnt = dir.path().join("mnt");
    let args = ["--bitmap", path_str(&bitmap)];
    let at = 5 * MIB + 8 * KIB;

    let m = MountedArray::mount_env(
        &legs,
        &mnt,
        &args,
        &[("FAILPOINTS", "between-leg-writes=return")],
    );
    let pid = m.pid();
    let written = write_block(&m.image(), at, 7);
    assert!(written.is_err(), "the write that panicked was acknowledged");
    assert!(
        h::wait_pid_gone(pid, Duration::from_secs(10)),
        "the daemon went on serving after a panic:\n{}",
        m.log()
    );
    assert!(!h::is_mounted(&mnt), "a dead mount was left at {mnt:?}");
    let log = m.log();
    assert!(
        log.contains("BUG: thread"),
        "the panic is not in the log:\n{log}"
    );
    m.kill9(); // gone already: forget its pid file

    // The failpoint wrote the first leg only: the legs differ there, the
    // superblocks say active and the bitmap has the chunk.
    let differ = h::differing_units(&legs.paths[0], &legs.paths[1], data_offset, size, BLOCK);
    assert_eq!(differ, vec![at], "the failpoint wrote one leg");
    assert_eq!(
        raw_superblock(&legs.paths[0]).resync_offset,
        0,
        "left active"
    );
    assert!(dirty_on_disk(&bitmap).contains(&(at / chunk)));

    let m = MountedArray::mount(&legs, &mnt, &args);
    m.wait_sync_idle(Duration::from_secs(60));
    let found = read_block(&m.image(), at).expect("read back");
    assert!(
        found == Found::Zero
            || found
                == Found::Block {
                    offset: at,
                    generation: 7
                },
        "an unacknowledged write reads back as neither old nor new: {found:?}"
    );
    m.stop();
    assert_legs_identical(&legs.paths[0], &legs.paths[1], data_offset, size);
}
