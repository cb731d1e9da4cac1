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

use common::faultyfs::FaultyFs;
use common::loopdev::needs_root;
use common::mdfuse::{self as h, AlignedVec};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;

// ---------------------------------------------------------------- helpers

/// One test at a time (root only).
fn serial(test: &str) -> Option<MutexGuard<'static, ()>> {
    if !needs_root(test) {
        return None;
    }
    static LOCK: Mutex<()> = Mutex::new(());
    Some(LOCK.lock().unwrap_or_else(|p| p.into_inner()))
}

fn assert_eio(what: &str, r: std::io::Result<impl std::fmt::Debug>) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
        other => panic!("{what}: expected EIO, got {other:?}"),
    }
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
