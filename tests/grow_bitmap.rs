//! Changing a running array's bitmap (`mdfuse grow --bitmap
//! none|internal|FILE`, md's `bitmap/location`), end to end through the real
//! `mdfuse` binary: under a verified write workload, checked with the real
//! `mdadm` (`--examine`, `--examine-bitmap`); a kill -9 right after each
//! switch; a degraded array's new bitmap; and the refusals.

mod common;

use common::bitmap::{examine_bitmap, is_immutable};
use common::io::{read_at, write_at, write_direct};
use common::loopdev::{needs_root, LoopDevice, Mkfs, MountedFs, ScratchFs};
use common::mdfuse::{
    assert_fails, assert_legs_identical, assert_ok, create, examine_field, mdadm_examine,
    mdfuse_with, path_str, Legs, MountedArray,
};
use common::workload::{verify_acked, Spec, Workload};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const LEG: u64 = 96 * MIB;

/// `mdfuse grow MNT --bitmap TARGET [--bitmap-chunk CHUNK]`.
fn grow(mnt: &Path, target: &str, chunk: Option<&str>) -> Output {
    let mut args = vec!["grow", path_str(mnt), "--bitmap", target];
    if let Some(c) = chunk {
        args.extend(["--bitmap-chunk", c]);
    }
    mdfuse_with(&args, &[])
}

fn grow_ok(m: &MountedArray, target: &str, chunk: Option<&str>) {
    let o = grow(m.mountpoint(), target, chunk);
    if !o.status.success() {
        panic!(
            "mdfuse grow --bitmap {target}: {}\nlog:\n{}",
            String::from_utf8_lossy(&o.stderr),
            m.log()
        );
    }
}

/// `mdadm -X` of a leg (through a loop device: mdadm reads an internal
/// bitmap only from a block device) or of a bitmap file.
fn mdadm_x(path: &Path, leg: bool) -> String {
    let dev = leg.then(|| LoopDevice::attach(path).expect("a loop device over the leg"));
    let target = dev.as_ref().map_or(path, |d| d.path());
    let o = Command::new("mdadm")
        .arg("-X")
        .arg(target)
        .output()
        .expect("run mdadm -X");
    assert_ok("mdadm -X", &o);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// "N bits (chunks), D dirty (..)" -> (N, D).
fn bits_and_dirty(text: &str) -> (u64, u64) {
    let v = examine_field(text, "Bitmap").expect("a Bitmap line");
    let mut w = v.split_whitespace();
    let bits = w.next().and_then(|t| t.parse().ok()).expect("bits");
    let dirty = v
        .split(", ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .expect("dirty");
    (bits, dirty)
}

/// mdfuse's and mdadm's reading of the bitmap at `path` (a leg's internal
/// one, or a file) agree: uuid, chunk, size, events, bits and dirty bits.
/// Returns mdfuse's dirty chunks.
fn assert_examine_agrees(path: &Path, leg: bool) -> Vec<u64> {
    let (ours, dirty) = examine_bitmap(path);
    let theirs = mdadm_x(path, leg);
    for key in [
        "UUID",
        "Events",
        "Events Cleared",
        "Chunksize",
        "Sync Size",
        "State",
    ] {
        assert_eq!(
            examine_field(&ours, key),
            examine_field(&theirs, key),
            "{}: {key}\nmdfuse:\n{ours}\nmdadm:\n{theirs}",
            path.display()
        );
    }
    assert_eq!(
        bits_and_dirty(&ours),
        bits_and_dirty(&theirs),
        "{}\nmdfuse:\n{ours}\nmdadm:\n{theirs}",
        path.display()
    );
    assert_eq!(bits_and_dirty(&ours).1, dirty.len() as u64);
    dirty
}

/// `Internal Bitmap : N sectors from superblock` in `mdadm --examine`.
fn internal_bitmap_line(leg: &Path) -> Option<String> {
    examine_field(&mdadm_examine(leg), "Internal Bitmap")
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

fn sync_copied(m: &MountedArray) -> u64 {
    m.md("sync_copied").parse().expect("md/sync_copied")
}

/// none -> internal -> none -> file -> none -> internal while four threads
/// write, fsync and read back checksummed blocks: no write lost or torn, no
/// I/O error; each bitmap as mdadm reads it.
#[test]
fn grow_switches_bitmaps_under_a_verified_workload() {
    if !needs_root("grow_switches_bitmaps_under_a_verified_workload") {
        return;
    }
    let legs = Legs::temp(LEG);
    let c = create(&legs, &[]);
    let fs = ScratchFs::ext4(4096).expect("a scratch ext4 for the bitmap file");
    let file = fs.path("grown.bitmap");
    let mnt = legs.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &["--delay", "1"]);
    assert_eq!(m.md("bitmap/location"), "none");
    let stripe = 64 * 1024;
    let region = 0..(c.array_bytes / stripe) * stripe;
    let wl = Workload::start(&Spec::new(&m.image(), region.clone()));
    assert!(
        wl.wait_writes(200, Duration::from_secs(60)),
        "the workload did not get going"
    );
    let file_s = path_str(&file).to_string();
    let steps: [(&str, &str, Option<&str>, &str); 5] = [
        ("internal", "internal", Some("1M"), "+8"),
        ("none", "none", None, "none"),
        ("file", &file_s, None, "file"),
        ("none again", "none", None, "none"),
        ("internal again", "internal", Some("1M"), "+8"),
    ];
    for (step, target, chunk, location) in steps {
        let before = wl.writes();
        let t = std::time::Instant::now();
        grow_ok(&m, target, chunk);
        eprintln!(
            "grow --bitmap {step}: {:?} with the workload running",
            t.elapsed()
        );
        assert_eq!(m.md("bitmap/location"), location, "{step}");
        assert!(
            wl.wait_writes(200, Duration::from_secs(60)),
            "the workload stalled after {step}"
        );
        assert!(wl.writes() > before);
        match location {
            "+8" => {
                for leg in &legs.paths {
                    assert_eq!(
                        internal_bitmap_line(leg).as_deref(),
                        Some("8 sectors from superblock"),
                        "{step}"
                    );
                }
                assert_eq!(m.md("bitmap/chunksize"), MIB.to_string());
                assert!(m.mdstat().contains("bitmap: "), "{}", m.mdstat());
            }
            "file" => {
                assert!(is_immutable(&file), "the raw-written file is protected");
                for leg in &legs.paths {
                    assert_eq!(internal_bitmap_line(leg), None, "{step}");
                }
                assert!(m.mdstat().contains(&file_s), "{}", m.mdstat());
                // The header agrees with mdadm's reading (bits come and go
                // with the workload: only the stable fields).
                let (ours, _) = examine_bitmap(&file);
                let theirs = mdadm_x(&file, false);
                for key in ["UUID", "Chunksize", "Sync Size"] {
                    assert_eq!(
                        examine_field(&ours, key),
                        examine_field(&theirs, key),
                        "{key}"
                    );
                }
                assert_eq!(bits_and_dirty(&ours).0, bits_and_dirty(&theirs).0);
            }
            _ => {
                for leg in &legs.paths {
                    assert_eq!(internal_bitmap_line(leg), None, "{step}");
                }
                if file.exists() {
                    assert!(!is_immutable(&file), "{step}: the file is let go");
                }
                assert!(!m.mdstat().contains("bitmap: "), "{}", m.mdstat());
            }
        }
    }
    let report = wl.stop();
    report.assert_clean("grow --bitmap under a workload");
    let lost = verify_acked(&m.image(), region.clone(), &report.acked);
    assert!(
        lost.is_empty(),
        "acknowledged writes lost:\n{}",
        lost.join("\n")
    );
    eprintln!(
        "grow under a workload: {} writes, {} reads, {} fsyncs across 5 switches, none lost",
        report.writes, report.reads, report.fsyncs
    );
    // Idle for more than the delay: every bit cleared, on every copy, as
    // mdadm reads it.
    std::thread::sleep(Duration::from_secs(4));
    for leg in &legs.paths {
        let dirty = assert_examine_agrees(leg, true);
        assert!(dirty.is_empty(), "{}: {dirty:?}", leg.display());
    }
    m.stop();
    let data = c.data_offset_sectors * 512;
    assert_legs_identical(legs.path(0), legs.path(1), data, c.array_bytes);
    for leg in &legs.paths {
        assert_examine_agrees(leg, true);
    }
    // The file bitmap left behind is out of date: mdadm and mdfuse agree.
    assert_examine_agrees(&file, false);
}

/// What a kill -9 right after a switch leaves, and how the next mount
/// resyncs it: the chunks written after the switch with a bitmap, the whole
/// array without.
#[test]
fn kill9_right_after_each_switch_resyncs() {
    if !needs_root("kill9_right_after_each_switch_resyncs") {
        return;
    }
    let fs = ScratchFs::ext4(4096).expect("a scratch ext4 for the bitmap file");
    for target in ["internal", "file", "none"] {
        let legs = Legs::temp(LEG);
        let c = if target == "none" {
            create(&legs, &["--bitmap", "internal", "--bitmap-chunk", "1M"])
        } else {
            create(&legs, &[])
        };
        let file = fs.path(&format!("kill9-{target}.bitmap"));
        let mnt = legs.mountpoint("mnt");
        let m = MountedArray::mount(&legs, &mnt, &["--delay", "30"]);
        // No safe mode: the superblocks stay active once written.
        m.set_md("safe_mode_delay", "600");
        write_direct(&m.image(), 0, &pattern(7, MIB as usize)).expect("write before");
        match target {
            "internal" => grow_ok(&m, "internal", Some("1M")),
            "file" => grow_ok(&m, path_str(&file), None),
            _ => grow_ok(&m, "none", None),
        }
        // Chunks 10..=12 and 40 written right after the switch.
        let writes = [(10 * MIB, 3 * MIB as usize), (40 * MIB + 4096, 8192)];
        for (i, &(off, len)) in writes.iter().enumerate() {
            write_direct(&m.image(), off, &pattern(i as u8 + 1, len)).expect("write after");
        }
        m.kill9();
        let dirty = match target {
            "internal" => {
                let d0 = assert_examine_agrees(legs.path(0), true);
                let d1 = assert_examine_agrees(legs.path(1), true);
                assert_eq!(d0, d1, "every leg's copy");
                Some(d0)
            }
            "file" => Some(assert_examine_agrees(&file, false)),
            _ => None,
        };
        if let Some(d) = &dirty {
            // Started clean (the legs were in sync): only what came after.
            assert_eq!(d, &vec![10, 11, 12, 40], "{target}: dirty after the kill");
        }
        // Torn writes: leg1 missed parts of chunks 11 and 40.
        let data = c.data_offset_sectors * 512;
        write_at(legs.path(1), data + 11 * MIB + 65536, &[0xa5; 4096]);
        write_at(legs.path(1), data + 40 * MIB, &[0x5a; 4096]);
        let args: Vec<&str> = match target {
            "file" => vec!["--bitmap", path_str(&file)],
            _ => vec![],
        };
        let m = MountedArray::mount(&legs, &mnt, &args);
        m.wait_sync_idle(Duration::from_secs(120));
        let copied = sync_copied(&m);
        eprintln!("kill -9 after grow --bitmap {target}: the resync copied {copied} bytes");
        match &dirty {
            Some(d) => assert_eq!(
                copied,
                d.len() as u64 * MIB,
                "{target}: only the dirty chunks"
            ),
            None => assert_eq!(copied, c.array_bytes, "{target}: the whole array"),
        }
        assert_eq!(
            read_at(&m.image(), 0, MIB as usize),
            pattern(7, MIB as usize)
        );
        for (i, &(off, len)) in writes.iter().enumerate() {
            assert_eq!(
                read_at(&m.image(), off, len),
                pattern(i as u8 + 1, len),
                "{target}"
            );
        }
        m.stop();
        assert_legs_identical(legs.path(0), legs.path(1), data, c.array_bytes);
    }
}

/// A bitmap added to a degraded array starts with every bit set, kept
/// until the legs are in sync: the returning leg (its superblock from
/// before the bitmap) is recovered in full and then carries the bitmap too.
#[test]
fn a_bitmap_added_while_degraded_starts_all_dirty() {
    if !needs_root("a_bitmap_added_while_degraded_starts_all_dirty") {
        return;
    }
    let legs = Legs::temp(LEG);
    let c = create(&legs, &[]);
    let mnt = legs.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &["--delay", "1"]);
    write_direct(&m.image(), 0, &pattern(3, MIB as usize)).expect("write");
    m.fail_and_remove(&legs.name(1));
    grow_ok(&m, "internal", Some("1M"));
    std::thread::sleep(Duration::from_secs(3));
    let dirty = assert_examine_agrees(legs.path(0), true);
    let chunks = c.array_bytes.div_ceil(MIB);
    assert_eq!(dirty.len() as u64, chunks, "every bit set while degraded");
    write_direct(&m.image(), 5 * MIB, &pattern(4, 65536)).expect("write degraded");
    let leg1 = legs.path(1).to_path_buf();
    let o = mdfuse_with(&["manage", path_str(&mnt), "--re-add"], &[&leg1]);
    assert_ok("--re-add", &o);
    m.wait_sync_idle(Duration::from_secs(120));
    assert_eq!(sync_copied(&m), c.array_bytes, "a full recovery");
    std::thread::sleep(Duration::from_secs(3));
    for leg in &legs.paths {
        assert_eq!(
            internal_bitmap_line(leg).as_deref(),
            Some("8 sectors from superblock"),
            "{}",
            leg.display()
        );
        let dirty = assert_examine_agrees(leg, true);
        assert!(
            dirty.is_empty(),
            "{}: clean once in sync: {dirty:?}",
            leg.display()
        );
    }
    assert_eq!(read_at(&m.image(), 5 * MIB, 65536), pattern(4, 65536));
    m.stop();
    let data = c.data_offset_sectors * 512;
    assert_legs_identical(legs.path(0), legs.path(1), data, c.array_bytes);
    // And it assembles with both legs' internal bitmaps.
    let m = MountedArray::mount(&legs, &mnt, &[]);
    assert_eq!(m.md("bitmap/location"), "+8");
    assert_eq!(m.md("degraded"), "0");
    m.stop();
}

/// Refusals say why, change nothing, and leave no file behind.
#[test]
fn grow_refusals_explain_themselves() {
    if !needs_root("grow_refusals_explain_themselves") {
        return;
    }
    let legs = Legs::temp(LEG);
    create(&legs, &["--bitmap", "internal", "--bitmap-chunk", "1M"]);
    let fs = ScratchFs::ext4(4096).expect("a scratch ext4");
    let mnt = legs.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    let refused = |target: &str, chunk: Option<&str>, needles: &[&str]| {
        let o = grow(&mnt, target, chunk);
        let err = assert_fails(&format!("grow --bitmap {target}"), &o);
        for n in needles {
            assert!(
                err.contains(n),
                "grow --bitmap {target}: no {n:?} in: {err}"
            );
        }
        eprintln!("grow --bitmap {target}: {}", err.trim());
        err
    };
    // Growing to the bitmap it has, or to another while it has one.
    refused("internal", None, &["already has an internal bitmap"]);
    let f = fs.path("second.bitmap");
    refused(path_str(&f), None, &["already has", "--bitmap none"]);
    assert!(!f.exists());
    // md's answers on the control file itself.
    let e = m.write_md("bitmap/location", "+8").unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EBUSY),
        "md: a bitmap is in place"
    );
    let e = m.write_md("bitmap/chunksize", "4096").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    grow_ok(&m, "none", None);
    refused("none", None, &["has no bitmap"]);
    m.set_md("bitmap/location", "none"); // md: nothing to do, no error
    let e = m.write_md("bitmap/location", "+16").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    assert!(m.log().contains("write +8"), "{}", m.log());
    let e = m.write_md("bitmap/location", "file:relative").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));

    // Nothing below changes a leg.
    std::thread::sleep(Duration::from_secs(1));
    let before = legs.sha256s();
    // A chunk md would not take.
    refused("internal", Some("3000"), &["power of two"]);
    // An existing file is never overwritten.
    let existing = fs.path("existing");
    std::fs::write(&existing, b"keep me").unwrap();
    refused(path_str(&existing), None, &["already exists"]);
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    // A directory that is not there.
    refused(
        path_str(&fs.path("no-such-dir/b.bitmap")),
        None,
        &["cannot create"],
    );
    // tmpfs: no block device under it for raw writes.
    let tmp = MountedFs::tmpfs(&legs.dir().join("tmpfs"), 16).expect("a tmpfs");
    let on_tmpfs = tmp.dir().join("b.bitmap");
    refused(path_str(&on_tmpfs), None, &["tmpfs", "--bitmap-file-io"]);
    assert!(!on_tmpfs.exists(), "the refused file is removed");
    drop(tmp);
    assert_eq!(legs.sha256s(), before, "a refused grow writes nothing");
    // A file on a filesystem on the array itself.
    let lo = LoopDevice::attach(&m.image()).expect("a loop device over array.img");
    Mkfs::ext4(lo.path(), 4096).expect("mkfs on the array");
    let inner = MountedFs::mount(lo.path(), &legs.dir().join("inner")).expect("mount it");
    let inside = inner.dir().join("b.bitmap");
    refused(path_str(&inside), None, &["FUSE-served image", "array.img"]);
    assert!(!inside.exists(), "the refused file is removed");
    drop(inner);
    drop(lo);
    assert_eq!(m.md("bitmap/location"), "none");
    m.stop();
}
