//! FUSE over io_uring with the legs' I/O in the ring (issue 16): reads and
//! writes of array.img run their leg I/O in the ring thread's own ring,
//! from and into the entry's payload. Each test checks that they did (the
//! daemon's log: the first such request is announced, and its stop counts
//! them), under a verified workload (checksummed blocks written and read
//! back, O_DIRECT, O_DSYNC, many in flight), and that the safety rules hold
//! there too: a leg failing mid-way (its writes, then a bad range it reads),
//! a kill -9 during writes followed by the resync, and an unmount and an
//! abort of the connection under load. Each test sets the kernel's switch
//! (/sys/module/fuse/parameters/enable_uring) and puts it back.

mod common;

use common::faultyfs::{FaultyFs, BAD_LEG};
use common::fuse_uring::UringSwitch;
use common::io::{open_direct, AlignedVec};
use common::loopdev::ScratchFs;
use common::mdfuse::*;
use common::rng::Rng;
use common::workload::{self, Found, Spec, Workload, BLOCK, STRIPE_BLOCKS};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const LEG_BYTES: u64 = 96 * MIB;

/// The whole 64 KiB stripes of an array of `bytes`.
fn stripes_of(bytes: u64) -> u64 {
    bytes / (STRIPE_BLOCKS * BLOCK) * (STRIPE_BLOCKS * BLOCK)
}

/// A bitmap file on a loop-backed ext4 of the test's own.
fn bitmap_on_ext4() -> (ScratchFs, PathBuf) {
    let fs = ScratchFs::ext4(4096).expect("ext4 for the bitmap");
    let bitmap = fs.path("md.bitmap");
    (fs, bitmap)
}

/// The counts in the daemon's last "FUSE over io_uring served N requests
/// (R reads and W writes with their legs' I/O in the ring)".
fn ring_counts(log: &str) -> Option<(u64, u64, u64)> {
    let (_, rest) = log
        .lines()
        .rev()
        .find_map(|l| l.split_once("FUSE over io_uring served "))?;
    let nums: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums[..] {
        [served, reads, writes] => Some((served, reads, writes)),
        _ => None,
    }
}

const ANNOUNCED: &str = "FUSE ring: reads and writes of array.img run their legs' I/O in the ring";

/// Asserts the stopped daemon's log counts reads and writes with their
/// legs' I/O in the ring.
fn assert_in_ring(log: &str, what: &str) {
    let (served, reads, writes) =
        ring_counts(log).unwrap_or_else(|| panic!("{what}: no ring counts in the log:\n{log}"));
    assert!(
        reads > 0 && writes > 0,
        "{what}: {served} requests on the rings, but {reads} reads and {writes} writes with \
         their legs' I/O in the ring:\n{log}"
    );
    eprintln!(
        "{what}: {served} requests on the rings, {reads} reads and {writes} writes in the ring"
    );
}

/// Every acknowledged block holds what was acknowledged or a newer write
/// still pending when the workload stopped.
fn assert_acked_hold(image: &Path, region: std::ops::Range<u64>, report: &workload::Report) {
    let blocks = workload::read_blocks(image, region).expect("read the array");
    let mut lost = Vec::new();
    for (off, found) in blocks {
        let Some(&acked) = report.acked.get(&off) else {
            continue;
        };
        let ok = match found {
            Found::Block { offset, generation } if offset == off => {
                generation == acked
                    || report
                        .pending
                        .get(&off)
                        .is_some_and(|p| p.contains(&generation))
            }
            _ => false,
        };
        if !ok {
            lost.push(format!("block {off}: acked {acked}, found {found:?}"));
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged block(s) lost:\n{}",
        lost.len(),
        lost[..lost.len().min(10)].join("\n")
    );
}

/// Under a verified O_DIRECT workload (8 threads, a fifth of the writes
/// O_DSYNC) and 1 MiB writes and reads alongside, reads and writes run
/// their legs' I/O in the ring; every block reads back as written, the
/// legs end identical and the array stops clean.
#[test]
fn in_ring_io_under_a_verified_workload() {
    let test = "in_ring_io_under_a_verified_workload";
    let Some(_switch) = UringSwitch::set(test, true) else {
        return;
    };
    let legs = Legs::temp(LEG_BYTES);
    let (_bitmap_fs, bitmap) = bitmap_on_ext4();
    let b = path_str(&bitmap).to_string();
    let created = create(&legs, &["--bitmap", &b, "--bitmap-chunk", "64K"]);
    let m = MountedArray::mount(
        &legs,
        &legs.mountpoint("mnt"),
        &["--bitmap", &b, "--transport", "uring"],
    );
    let region = 0..stripes_of(created.array_bytes / 2);
    let wl = Workload::start(&Spec {
        threads: 8,
        dsync_percent: 20,
        ..Spec::new(&m.image(), region.clone())
    });
    // 1 MiB O_DIRECT writes and reads in the other half, checked by hash.
    let big_at = stripes_of(created.array_bytes / 2) + MIB;
    let f = open_direct(&m.image(), true);
    let mut rng = Rng::new(7);
    for round in 0..6u64 {
        let mut data = AlignedVec::zeroed(MIB as usize);
        rng.fill(data.as_mut_slice());
        let at = big_at + (round % 3) * MIB;
        f.write_all_at(data.as_slice(), at).expect("1 MiB write");
        let mut back = AlignedVec::zeroed(MIB as usize);
        f.read_exact_at(back.as_mut_slice(), at)
            .expect("1 MiB read");
        assert!(
            back.as_slice() == data.as_slice(),
            "1 MiB at {at} read back differs"
        );
    }
    drop(f);
    assert!(
        wl.wait_writes(2000, Duration::from_secs(120)),
        "the workload did not get going"
    );
    let report = wl.stop();
    report.assert_clean("in-ring workload");
    assert!(
        report.reads > 0 && report.dsync_writes > 0,
        "{} reads, {} O_DSYNC writes",
        report.reads,
        report.dsync_writes
    );
    assert_acked_hold(&m.image(), region, &report);
    assert!(m.log().contains(ANNOUNCED), "no in-ring I/O:\n{}", m.log());
    let log_path = m.log_path().to_owned();
    m.stop();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_in_ring(&log, "workload");
    assert!(!log.contains("panicked"), "{log}");
    legs.assert_identical(created.array_bytes);
    assert_stopped_clean(&legs.paths, Some(&bitmap));
}

/// A leg's writes start failing while the workload writes through the
/// ring: the leg is failed (recorded before the writes that missed it are
/// acknowledged), the workload sees no error and loses nothing. Then bad
/// sectors on a leg read in the ring are corrected from the other leg.
#[test]
fn a_leg_failing_mid_way_under_in_ring_io() {
    let test = "a_leg_failing_mid_way_under_in_ring_io";
    let Some(_switch) = UringSwitch::set(test, true) else {
        return;
    };
    let dir = tempdir("mdfuse-uring-io");
    let faulty = FaultyFs::new(&[(BAD_LEG, LEG_BYTES)]);
    let leg0 = dir.path().join("leg0.img");
    common::loopdev::sparse_file(&leg0, LEG_BYTES).expect("leg0");
    let legs = Legs::from_paths(vec![leg0.clone(), faulty.path(BAD_LEG)]);
    let (_bitmap_fs, bitmap) = bitmap_on_ext4();
    let b = path_str(&bitmap).to_string();
    let created = create(&legs, &["--bitmap", &b]);
    let mnt = dir.path().join("mnt");
    let args = ["--bitmap", b.as_str(), "--transport", "uring"];

    // Read errors first: bad sectors on leg1, read through the ring and
    // corrected from leg0: 4 KiB O_DIRECT reads (each block read twice:
    // reads that do not continue a stream alternate between the legs), then
    // buffered 1 MiB reads (the kernel's readahead; split over both legs,
    // leg1 reading the second half).
    {
        let m = MountedArray::mount(&legs, &mnt, &args);
        let data = m.fill_random(8 * MIB, 2 * MIB as usize, 11);
        let leg_at = data_offset(&leg0) + 8 * MIB;
        faulty.fail_reads_until_written(BAD_LEG, leg_at + 64 * 1024..leg_at + 96 * 1024);
        let f = open_direct(&m.image(), false);
        let mut back = AlignedVec::zeroed(4096);
        for k in 0..8u64 {
            let at = 8 * MIB + 64 * 1024 + k * 4096;
            for _ in 0..2 {
                f.read_exact_at(back.as_mut_slice(), at)
                    .unwrap_or_else(|e| panic!("4 KiB read at {at}: {e}"));
                let want = &data[(at - 8 * MIB) as usize..][..4096];
                assert!(back.as_slice() == want, "4 KiB at {at} differs");
            }
        }
        drop(f);
        let c = faulty.counters(BAD_LEG);
        assert!(c.failed_reads >= 1, "no 4 KiB read of leg1 failed: {c:?}");
        assert_eq!(
            faulty.bad_bytes_left(BAD_LEG),
            0,
            "the bad range was rewritten"
        );
        let failed_before = c.failed_reads;
        // The second half of the 1 MiB at 9 MiB is leg1's piece.
        faulty.fail_reads_until_written(
            BAD_LEG,
            leg_at + MIB + MIB / 2 + 64 * 1024..leg_at + MIB + MIB / 2 + 128 * 1024,
        );
        let f = std::fs::File::open(m.image()).expect("open array.img");
        drop_cached(&f);
        let mut buf = vec![0u8; 2 * MIB as usize];
        f.read_exact_at(&mut buf, 8 * MIB).expect("buffered read");
        assert!(buf == data, "buffered read differs");
        drop(f);
        let c = faulty.counters(BAD_LEG);
        assert!(
            c.failed_reads > failed_before,
            "no buffered read of leg1 failed: {c:?}"
        );
        assert_eq!(
            faulty.bad_bytes_left(BAD_LEG),
            0,
            "the bad range was rewritten"
        );
        assert_eq!(
            m.md(&format!("dev-{BAD_LEG}/state")),
            "in_sync",
            "{}",
            m.log()
        );
        let log_path = m.log_path().to_owned();
        m.stop();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let (_, reads, _) = ring_counts(&log).unwrap_or_default();
        assert!(reads > 0, "no read in the ring:\n{log}");
    }

    // Then the leg's writes fail mid-way through a workload.
    let m = MountedArray::mount(&legs, &mnt, &args);
    let region = 0..stripes_of(created.array_bytes);
    let wl = Workload::start(&Spec {
        threads: 6,
        dsync_percent: 10,
        ..Spec::new(&m.image(), region.clone())
    });
    assert!(
        wl.wait_writes(500, Duration::from_secs(60)),
        "the workload did not get going"
    );
    faulty.fail_writes(BAD_LEG, 0..u64::MAX);
    wait_for("leg1 to be faulty", Duration::from_secs(30), || {
        m.md(&format!("dev-{BAD_LEG}/state")) == "faulty"
    });
    assert!(
        wl.wait_writes(500, Duration::from_secs(60)),
        "the workload stalled after leg1 failed"
    );
    let report = wl.stop();
    report.assert_clean("a leg failing mid-way");
    assert!(faulty.counters(BAD_LEG).failed_writes >= 1);
    assert!(m.mdstat().contains("[2/1] [U_]"), "{}", m.mdstat());
    assert_acked_hold(&m.image(), region, &report);
    let log_path = m.log_path().to_owned();
    m.stop();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_in_ring(&log, "a leg failing mid-way");
    assert!(!log.contains("panicked"), "{log}");
    // The failure is on record on the survivor.
    let e = mdadm_examine(&leg0);
    assert_eq!(
        examine_field(&e, "Array State")
            .as_deref()
            .and_then(|s| s.split(' ').next()),
        Some("A."),
        "{e}"
    );
}

/// Drops the kernel's cached pages of `f` (clean after an fsync), so the
/// next buffered read reaches the daemon.
fn drop_cached(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    f.sync_all().expect("fsync");
    // SAFETY: a plain advice call on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise DONTNEED");
}

/// kill -9 while writes run in the ring (acknowledged after fsync or
/// O_DSYNC), then the next mount: its resync makes the legs identical and
/// every acknowledged block holds its data (or a newer write in flight at
/// the kill); three rounds.
#[test]
fn kill_9_during_in_ring_writes_then_the_resync() {
    let test = "kill_9_during_in_ring_writes_then_the_resync";
    let Some(_switch) = UringSwitch::set(test, true) else {
        return;
    };
    let legs = Legs::temp(LEG_BYTES);
    let (_bitmap_fs, bitmap) = bitmap_on_ext4();
    let b = path_str(&bitmap).to_string();
    let created = create(&legs, &["--bitmap", &b, "--bitmap-chunk", "64K"]);
    let (size, data_offset) = (created.array_bytes, created.data_offset_sectors * 512);
    let mnt = legs.mountpoint("mnt");
    let args = [
        "--bitmap",
        b.as_str(),
        "--transport",
        "uring",
        "--delay",
        "0.5",
    ];
    let region = 0..stripes_of(size);
    let mut known: HashMap<u64, u64> = HashMap::new();
    let mut m = MountedArray::mount(&legs, &mnt, &args);
    for round in 0..3u64 {
        let wl = Workload::start(&Spec {
            threads: 6,
            fsync_every: 3,
            ack_after_fsync: true,
            dsync_percent: 20,
            generation_base: (round + 1) << 32,
            seed: 100 + round,
            known: Arc::new(known.clone()),
            ..Spec::new(&m.image(), region.clone())
        });
        assert!(
            wl.wait_writes(300, Duration::from_secs(60)),
            "round {round}: the workload did not get going"
        );
        assert!(
            m.log().contains(ANNOUNCED),
            "round {round}: no in-ring I/O before the kill:\n{}",
            m.log()
        );
        m.kill9();
        let report = wl.stop();
        assert!(
            report.mismatches.is_empty(),
            "round {round}: wrong data before the kill:\n{}",
            report.mismatches.join("\n")
        );
        m = MountedArray::mount(&legs, &mnt, &args);
        m.wait_sync_idle(Duration::from_secs(120));
        let blocks = workload::read_blocks(&m.image(), region.clone()).expect("read the array");
        let mut lost = Vec::new();
        for (off, found) in blocks {
            let mut allowed = vec![report.acked.get(&off).or_else(|| known.get(&off)).copied()];
            if let Some(p) = report.pending.get(&off) {
                allowed.extend(p.iter().map(|&g| Some(g)));
            }
            let held = match &found {
                Found::Zero => Some(None),
                Found::Block { offset, generation } if *offset == off => Some(Some(*generation)),
                _ => None,
            };
            match held {
                Some(g) if allowed.contains(&g) => match g {
                    Some(g) => {
                        known.insert(off, g);
                    }
                    None => {
                        known.remove(&off);
                    }
                },
                _ => lost.push(format!("block {off}: allowed {allowed:?}, found {found:?}")),
            }
        }
        assert!(
            lost.is_empty(),
            "round {round}: {} block(s) lost or wrong after the kill:\n{}",
            lost.len(),
            lost[..lost.len().min(10)].join("\n")
        );
        assert_legs_identical(legs.path(0), legs.path(1), data_offset, size);
    }
    let log_path = m.log_path().to_owned();
    m.stop();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
    assert_legs_identical(legs.path(0), legs.path(1), data_offset, size);
    assert_stopped_clean(&legs.paths, Some(&bitmap));
}

/// An unmount (SIGTERM: the mount is busy, so detached, and the daemon
/// serves until the writers close) and an abort of the connection, each
/// under a workload with its I/O in the ring: the daemon ends without a
/// panic; after SIGTERM the array stopped clean, after the abort the next
/// mount's resync leaves the legs identical; acknowledged data holds.
#[test]
fn unmount_and_abort_under_in_ring_load() {
    let test = "unmount_and_abort_under_in_ring_load";
    let Some(_switch) = UringSwitch::set(test, true) else {
        return;
    };
    let legs = Legs::temp(LEG_BYTES);
    let (_bitmap_fs, bitmap) = bitmap_on_ext4();
    let b = path_str(&bitmap).to_string();
    let created = create(&legs, &["--bitmap", &b, "--bitmap-chunk", "64K"]);
    let (size, data_offset) = (created.array_bytes, created.data_offset_sectors * 512);
    let mnt = legs.mountpoint("mnt");
    let args = ["--bitmap", b.as_str(), "--transport", "uring"];
    let region = 0..stripes_of(size);
    for (round, how) in ["sigterm", "abort"].into_iter().enumerate() {
        let m = MountedArray::mount(&legs, &mnt, &args);
        let wl = Workload::start(&Spec {
            threads: 8,
            generation_base: (round as u64 + 1) << 32,
            ..Spec::new(&m.image(), region.clone())
        });
        assert!(
            wl.wait_writes(500, Duration::from_secs(60)),
            "{how}: the workload did not get going"
        );
        let (pid, log_path) = (m.pid(), m.log_path().to_owned());
        let report = match how {
            "sigterm" => {
                signal(pid, libc::SIGTERM);
                std::thread::sleep(Duration::from_millis(300));
                assert!(pid_alive(pid), "the daemon left while writers were active");
                let r = wl.stop();
                r.assert_clean(how);
                r
            }
            _ => {
                abort_connection(&mnt, legs.dir());
                // Writes failing after the abort are the abort's; what was
                // acknowledged before must hold.
                wl.stop()
            }
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!pid_alive(pid), "{how}: the daemon still runs 30 s later");
        drop(m);
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            !log.contains("panicked"),
            "{how}: a thread panicked:\n{log}"
        );
        assert_in_ring(&log, how);
        if how == "sigterm" {
            assert!(log.contains("stopped clean"), "{how}:\n{log}");
            assert_stopped_clean(&legs.paths, Some(&bitmap));
        }
        let m = MountedArray::mount(&legs, &mnt, &args);
        m.wait_sync_idle(Duration::from_secs(120));
        assert_acked_hold(&m.image(), region.clone(), &report);
        m.stop();
        assert_legs_identical(legs.path(0), legs.path(1), data_offset, size);
    }
}

/// Aborts the FUSE connection of the mount at `mnt` through a private
/// fusectl mounted under `scratch`.
fn abort_connection(mnt: &Path, scratch: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let want = mnt.to_str().expect("UTF-8 mountpoint");
    let minor = info
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&want))
                .then(|| f.get(2)?.split_once(':').map(|(_, m)| m.to_string()))?
        })
        .expect("the mount's FUSE connection");
    let ctl = scratch.join("fusectl");
    std::fs::create_dir_all(&ctl).expect("fusectl directory");
    common::loopdev::run("mount", &["-t", "fusectl", "fusectl", path_str(&ctl)])
        .expect("mount fusectl");
    let r = std::fs::write(ctl.join(&minor).join("abort"), "1");
    let _ = std::process::Command::new("umount").arg(&ctl).status();
    r.expect("abort the connection");
}
