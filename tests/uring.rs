//! FUSE over io_uring (`--transport`): the rings serve array.img's data
//! (O_DIRECT and buffered, a filesystem through a loop device), mdstat and
//! md/ (a leg failed and re-added through its state file); `uring` refuses
//! to start while the kernel's switch is off and says what to do; `auto`
//! falls back to /dev/fuse then and says so; the rings end cleanly with the
//! connection (SIGTERM under load, an abort). Each test sets the kernel's
//! switch (/sys/module/fuse/parameters/enable_uring) and puts it back.

mod common;

use common::fuse_uring::UringSwitch;
use common::io::{open_direct, AlignedVec};
use common::loopdev::{run, MountedFs, ScratchFs};
use common::mdfuse::*;
use common::rng::Rng;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const LEG_BYTES: u64 = 96 * MIB;

/// Two legs and a bitmap (on a loop-backed ext4 of its own); field order is
/// drop order.
struct Fixture {
    _bitmap_fs: ScratchFs,
    legs: Legs,
    bitmap: PathBuf,
    array_bytes: u64,
}

impl Fixture {
    fn new() -> Fixture {
        let legs = Legs::temp(LEG_BYTES);
        let bitmap_fs = ScratchFs::ext4(4096).expect("loop-backed ext4 for the bitmap");
        let bitmap = bitmap_fs.path("md0.bitmap");
        let b = bitmap.display().to_string();
        let created = create(&legs, &["--bitmap", &b, "--bitmap-chunk", "64K"]);
        Fixture {
            _bitmap_fs: bitmap_fs,
            legs,
            bitmap,
            array_bytes: created.array_bytes,
        }
    }

    fn mount(&self, extra: &[&str]) -> MountedArray {
        let b = self.bitmap.display().to_string();
        let mut args = vec!["--bitmap", &b];
        args.extend_from_slice(extra);
        MountedArray::mount(&self.legs, &self.legs.mountpoint("mnt"), &args)
    }

    fn leg_name(&self, i: usize) -> String {
        self.legs.name(i)
    }
}

/// The count in the daemon's last "FUSE over io_uring served N requests".
fn served_on_ring(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.split_once("FUSE over io_uring served "))
        .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
}

fn random(len: usize, seed: u64) -> AlignedVec {
    let mut buf = AlignedVec::zeroed(len);
    Rng::new(seed).fill(buf.as_mut_slice());
    buf
}

/// `mdfuse wait MNT`: until no resync or recovery runs.
fn mdfuse_wait(mnt: &Path) {
    let o = Command::new(bin())
        .arg("wait")
        .arg(mnt)
        .stdin(Stdio::null())
        .output()
        .expect("mdfuse wait");
    assert_ok("mdfuse wait", &o);
}

/// With the switch on and `--transport uring`: data through array.img
/// (O_DIRECT 1 MiB and 4 KiB writes, buffered writes with fsync, read back
/// both ways), the legs' data areas equal, mdstat and md/ (fail a leg
/// through its state file, write while degraded, re-add, recovery), ext4
/// through a loop device; every request after the rings are registered
/// goes on them (the daemon counts them at its stop).
#[test]
fn ring_serves_data_control_files_and_a_filesystem() {
    let test = "ring_serves_data_control_files_and_a_filesystem";
    let Some(_switch) = UringSwitch::set(test, true) else {
        return;
    };
    let fx = Fixture::new();
    let m = fx.mount(&["--transport", "uring"]);
    let log = m.log();
    assert!(
        log.contains("transport: FUSE over io_uring ("),
        "no ring transport line in the log:\n{log}"
    );
    let image = m.image();

    // O_DIRECT: 8 MiB in 1 MiB writes, and 64 scattered 4 KiB ones.
    let big = random(8 * MIB as usize, 1);
    {
        let f = open_direct(&image, true);
        for (i, chunk) in big.as_slice().chunks(MIB as usize).enumerate() {
            f.write_all_at(chunk, i as u64 * MIB)
                .expect("O_DIRECT write");
        }
        let small = random(4096, 2);
        for i in 0..64u64 {
            f.write_all_at(small.as_slice(), 10 * MIB + i * 8192)
                .expect("O_DIRECT 4 KiB write");
        }
        f.sync_all().expect("fsync");
        let mut back = AlignedVec::zeroed(4096);
        for i in 0..64u64 {
            f.read_exact_at(back.as_mut_slice(), 10 * MIB + i * 8192)
                .expect("O_DIRECT 4 KiB read");
            assert!(
                back.as_slice() == small.as_slice(),
                "4 KiB block {i} differs"
            );
        }
        let mut back = AlignedVec::zeroed(big.as_slice().len());
        f.read_exact_at(back.as_mut_slice(), 0)
            .expect("O_DIRECT read");
        assert!(
            back.as_slice() == big.as_slice(),
            "O_DIRECT read-back differs"
        );
    }
    // Buffered: 5 MiB in odd-sized writes, fsync, read back buffered.
    let buffered = random(5 * MIB as usize, 3);
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image)
            .expect("open array.img");
        let mut at = 0usize;
        for piece in buffered.as_slice().chunks(300_001) {
            f.write_all_at(piece, 20 * MIB + at as u64)
                .expect("buffered write");
            at += piece.len();
        }
        f.sync_all().expect("fsync");
        let mut back = vec![0u8; buffered.as_slice().len()];
        f.read_exact_at(&mut back, 20 * MIB).expect("buffered read");
        assert!(back == buffered.as_slice(), "buffered read-back differs");
    }
    // What the legs hold equals what was written, on both.
    let offset = data_offset(fx.legs.path(0));
    let region =
        |i: usize, at: u64, len: usize| sha256_region(fx.legs.path(i), offset + at, len as u64);
    for (at, data) in [(0, big.as_slice()), (20 * MIB, buffered.as_slice())] {
        let want = sha256_bytes(data);
        assert_eq!(region(0, at, data.len()), want, "leg 0 at {at}");
        assert_eq!(region(1, at, data.len()), want, "leg 1 at {at}");
    }

    // Control files on the ring.
    let mdstat = m.mdstat();
    assert!(mdstat.contains("[2/2] [UU]"), "{mdstat}");
    let state = m.md("array_state");
    assert!(state == "clean" || state == "active", "array_state {state}");
    let l1 = fx.leg_name(1);
    m.set_md(&format!("dev-{l1}/state"), "faulty");
    assert_eq!(m.md(&format!("dev-{l1}/state")), "faulty");
    assert!(m.mdstat().contains("[2/1] [U_]"), "{}", m.mdstat());
    let degraded = random(2 * MIB as usize, 4);
    {
        let f = open_direct(&image, true);
        f.write_all_at(degraded.as_slice(), 40 * MIB)
            .expect("write while degraded");
        f.sync_all().expect("fsync");
    }
    m.set_md(&format!("dev-{l1}/state"), "re-add");
    mdfuse_wait(m.mountpoint());
    assert_eq!(m.md(&format!("dev-{l1}/state")), "in_sync");
    assert!(m.mdstat().contains("[2/2] [UU]"), "{}", m.mdstat());
    let want = sha256_bytes(degraded.as_slice());
    assert_eq!(region(1, 40 * MIB, degraded.as_slice().len()), want);

    // A filesystem through a loop device on array.img.
    {
        let fsdir = fx.legs.mountpoint("ext4");
        let lo = attach_loop_rw(&image);
        common::loopdev::Mkfs::ext4(lo.path(), 4096).expect("mkfs.ext4");
        let fs = MountedFs::mount(lo.path(), &fsdir).expect("mount ext4");
        let data = random(3 * MIB as usize + 17, 5);
        std::fs::write(fs.dir().join("file"), data.as_slice()).expect("write a file");
        run("sync", &[]).expect("sync");
        assert!(std::fs::read(fs.dir().join("file")).expect("read the file") == data.as_slice());
        drop(fs);
        let o = Command::new("fsck.ext4")
            .arg("-fn")
            .arg(lo.path())
            .output()
            .expect("fsck.ext4");
        assert!(o.status.success(), "fsck.ext4 -fn: {}", text(&o));
    }
    fx.legs.assert_identical(fx.array_bytes);
    let log_path = m.log_path().to_owned();
    m.stop_when_free();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let served = served_on_ring(&log).unwrap_or_else(|| panic!("no ring count in the log:\n{log}"));
    // The workload above is hundreds of requests; a ring that took none
    // (requests all on /dev/fuse) would show a handful at most.
    assert!(served > 200, "only {served} requests on the rings:\n{log}");
    assert_stopped_clean(&fx.legs.paths, Some(&fx.bitmap));
}

/// `--transport uring` with the switch off: refused before anything is
/// mounted, with what to do; `auto` serves on /dev/fuse and says why, and
/// with the switch on, `auto` takes the rings.
#[test]
fn uring_refuses_and_auto_falls_back_while_the_switch_is_off() {
    let test = "uring_refuses_and_auto_falls_back_while_the_switch_is_off";
    let Some(switch) = UringSwitch::set(test, false) else {
        return;
    };
    let fx = Fixture::new();
    let b = fx.bitmap.display().to_string();
    let mnt = fx.legs.mountpoint("mnt");
    let err = match MountedArray::try_mount(&fx.legs, &mnt, &["--bitmap", &b, "--transport=uring"])
    {
        Ok(m) => {
            m.stop();
            panic!("--transport uring mounted with enable_uring off");
        }
        Err(o) => text(&o),
    };
    assert!(
        err.contains("enable_uring") && err.contains("echo Y"),
        "the refusal does not say what to do: {err}"
    );
    assert!(!is_mounted(&mnt), "left mounted after the refusal");

    let m = fx.mount(&["--transport", "auto"]);
    let log = m.log();
    assert!(
        log.contains("transport: /dev/fuse (FUSE over io_uring is not used")
            && log.contains("enable_uring is N"),
        "auto did not say it serves on /dev/fuse and why:\n{log}"
    );
    let data = random(MIB as usize, 6);
    let f = open_direct(&m.image(), true);
    f.write_all_at(data.as_slice(), 0).expect("write");
    let mut back = AlignedVec::zeroed(MIB as usize);
    f.read_exact_at(back.as_mut_slice(), 0).expect("read");
    assert!(back.as_slice() == data.as_slice());
    drop(f);
    let log_path = m.log_path().to_owned();
    m.stop();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(
        served_on_ring(&log),
        None,
        "rings ran under auto with the switch off"
    );
    drop(switch);

    let Some(_switch) = UringSwitch::set(test, true) else {
        return;
    };
    let m = fx.mount(&["--transport", "auto"]);
    let log = m.log();
    assert!(
        log.contains("transport: FUSE over io_uring ("),
        "auto did not take the rings with the switch on:\n{log}"
    );
    let _ = std::fs::read_to_string(m.mountpoint().join("mdstat")).expect("mdstat");
    m.stop();
    assert_stopped_clean(&fx.legs.paths, Some(&fx.bitmap));
}

/// The rings end with the connection while requests are in flight: SIGTERM
/// while O_DIRECT writers run (the unmount waits for them: detached, the
/// array stops clean once they are done), and an abort of the connection
/// under load (the daemon ends, no thread left waiting).
#[test]
fn rings_end_cleanly_on_sigterm_and_abort_under_load() {
    let test = "rings_end_cleanly_on_sigterm_and_abort_under_load";
    let Some(_switch) = UringSwitch::set(test, true) else {
        return;
    };
    let fx = Fixture::new();

    for how in ["sigterm", "abort"] {
        let m = fx.mount(&["--transport", "uring"]);
        let image = m.image();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let (image, stop) = (image.clone(), stop.clone());
                std::thread::spawn(move || {
                    let f = open_direct(&image, true);
                    let buf = random(64 * 1024, 10 + t);
                    let mut n = 0u64;
                    let mut errors = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 20_000 {
                        let at = (t * 16 * MIB) + (n % 256) * 64 * 1024;
                        if f.write_all_at(buf.as_slice(), at).is_err() {
                            errors += 1;
                            break;
                        }
                        n += 1;
                    }
                    (n, errors)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let pid = m.pid();
        let mnt = m.mountpoint().to_owned();
        let log_path = m.log_path().to_owned();
        match how {
            "sigterm" => {
                signal(pid, libc::SIGTERM);
                // Busy (the writers hold array.img): detached, still serving.
                std::thread::sleep(Duration::from_millis(300));
                assert!(pid_alive(pid), "the daemon left while writers were active");
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            _ => {
                let conn = fuse_connection(&mnt).expect("the mount's FUSE connection");
                let ctl = FuseCtl::mount(&fx.legs.dir().join("fusectl"));
                std::fs::write(ctl.dir.join(conn).join("abort"), "1")
                    .expect("abort the connection");
            }
        }
        let mut total = 0;
        for w in writers {
            let (n, _errors) = w.join().expect("writer");
            total += n;
        }
        assert!(total > 0, "{how}: no write went through");
        let deadline = Instant::now() + Duration::from_secs(30);
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!pid_alive(pid), "{how}: the daemon still runs 30 s later");
        if is_mounted(&mnt) {
            let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            served_on_ring(&log).is_some_and(|n| n > 0),
            "{how}: the rings did not end with their count:\n{log}"
        );
        assert!(
            !log.contains("panicked"),
            "{how}: a thread panicked:\n{log}"
        );
        if how == "sigterm" {
            assert!(
                log.contains("stopped clean"),
                "{how}: the array did not stop clean:\n{log}"
            );
            assert_stopped_clean(&fx.legs.paths, Some(&fx.bitmap));
        }
        drop(m);
    }
}

/// The number of the FUSE connection (/sys/fs/fuse/connections/N) of the
/// mount at `mnt`: its device's minor, from /proc/self/mountinfo.
fn fuse_connection(mnt: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mnt = mnt.to_str()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&mnt)).then(|| f.get(2)?.split_once(':').map(|(_, m)| m.to_string()))?
    })
}

/// A private fusectl instance (the host may have none on
/// /sys/fs/fuse/connections), unmounted when dropped.
struct FuseCtl {
    dir: PathBuf,
}

impl FuseCtl {
    fn mount(dir: &Path) -> FuseCtl {
        std::fs::create_dir_all(dir).expect("fusectl directory");
        run("mount", &["-t", "fusectl", "fusectl", path_str(dir)]).expect("mount fusectl");
        FuseCtl {
            dir: dir.to_owned(),
        }
    }
}

impl Drop for FuseCtl {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}
