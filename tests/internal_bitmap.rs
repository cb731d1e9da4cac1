//! Internal write-intent bitmaps (md's MD_FEATURE_BITMAP_OFFSET) end to end,
//! through the real `mdfuse` binary, checked with the real `mdadm`:
//! `create --bitmap internal` as mdadm lays it out (`mdadm -E`, `mdadm -X`),
//! a kill -9 mid-writes resyncing exactly the dirty chunks, a re-add copying
//! only the chunks written while the leg was away, and hostile bitmap headers
//! refused by name.

mod common;

use common::faultyfs::leg1_faulty;
use common::io::{read_at, write_at, write_direct};
use common::loopdev::{needs_root, LoopDevice};
use common::mdfuse::{
    assert_fails, assert_legs_identical, create, examine_field, mdadm_examine, mdfuse, mdfuse_with,
    path_str, tempdir, Created, Legs, MountedArray,
};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const LEG: u64 = 96 * MIB;
/// Where mdfuse (as mdadm) puts the internal bitmap of a 1.2 leg: 8 sectors
/// after the superblock at sector 8.
const BITMAP_AT_1_2: u64 = 16 * 512;

/// `mdfuse examine-bitmap --chunks LEG`: (header text, dirty chunks).
fn mdfuse_dirty(leg: &Path) -> (String, Vec<u64>) {
    let o = mdfuse(&["examine-bitmap", "--chunks", path_str(leg)]);
    common::mdfuse::assert_ok("mdfuse examine-bitmap", &o);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let list = examine_field(&text, "Dirty Chunks").expect("a Dirty Chunks line");
    let dirty = if list == "-" {
        vec![]
    } else {
        list.split(',')
            .map(|c| c.trim().parse().expect("a chunk number"))
            .collect()
    };
    (text, dirty)
}

/// `mdadm --examine-bitmap` of the leg, through a loop device (mdadm reads
/// an internal bitmap only from a block device).
fn mdadm_x(leg: &Path) -> String {
    let dev = LoopDevice::attach(leg).expect("a loop device over the leg");
    let o = Command::new("mdadm")
        .arg("-X")
        .arg(dev.path())
        .output()
        .expect("run mdadm -X");
    common::mdfuse::assert_ok("mdadm -X", &o);
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

fn sync_copied(m: &MountedArray) -> u64 {
    let v = m.md("sync_copied");
    v.split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse md/sync_copied {v:?}"))
}

/// `mdfuse create --bitmap internal` with 1 MiB chunks, bits cleared after
/// `delay` seconds idle.
fn create_internal(legs: &Legs, delay: &str) -> Created {
    create(
        legs,
        &[
            "--bitmap",
            "internal",
            "--bitmap-chunk",
            "1M",
            "--delay",
            delay,
        ],
    )
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn create_internal_is_what_mdadm_reads() {
    if !needs_root("create_internal_is_what_mdadm_reads") {
        return;
    }
    for (metadata, offset) in [("1.2", "8"), ("1.1", "8"), ("1.0", "-16")] {
        let legs = Legs::temp(LEG);
        create(
            &legs,
            &[
                "--metadata",
                metadata,
                "--bitmap",
                "internal",
                "--bitmap-chunk",
                "1M",
            ],
        );
        for leg in &legs.paths {
            let e = mdadm_examine(leg);
            assert_eq!(
                examine_field(&e, "Internal Bitmap").as_deref(),
                Some(format!("{offset} sectors from superblock").as_str()),
                "metadata {metadata}: {e}"
            );
            assert_eq!(examine_field(&e, "Feature Map").as_deref(), Some("0x1"));
            let x = mdadm_x(leg);
            let (ours, dirty) = mdfuse_dirty(leg);
            assert!(dirty.is_empty(), "a new array is clean: {ours}");
            for key in [
                "Magic",
                "Version",
                "UUID",
                "Chunksize",
                "Sync Size",
                "Bitmap",
            ] {
                assert_eq!(
                    examine_field(&x, key),
                    examine_field(&ours, key),
                    "metadata {metadata}, {key}: mdadm -X says\n{x}\nmdfuse says\n{ours}"
                );
            }
            assert_eq!(bits_and_dirty(&x).1, 0, "{x}");
        }
    }
    // Without --bitmap-chunk, mdadm's default for an internal bitmap: 64 MiB.
    let legs = Legs::temp(LEG);
    create(&legs, &["--bitmap", "internal"]);
    let x = mdadm_x(legs.path(0));
    assert_eq!(
        examine_field(&x, "Chunksize").as_deref(),
        Some("64 MB"),
        "{x}"
    );
    assert_eq!(bits_and_dirty(&x), (2, 0), "{x}");
}

#[test]
fn kill9_resyncs_exactly_the_dirty_chunks() {
    if !needs_root("kill9_resyncs_exactly_the_dirty_chunks") {
        return;
    }
    let legs = Legs::temp(LEG);
    let c = create_internal(&legs, "30");
    let mnt = legs.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    assert!(
        m.mdstat().contains("bitmap: ") && !m.mdstat().contains("file:"),
        "{}",
        m.mdstat()
    );
    assert_eq!(m.md("bitmap/location"), "+8");
    // Writes to chunks 10..=12 and 40, made durable; the bits stay set (the
    // daemon clears them only after 30 s idle).
    let writes = [(10 * MIB, 3 * MIB as usize), (40 * MIB + 4096, 8192)];
    for (i, &(off, len)) in writes.iter().enumerate() {
        write_direct(&m.image(), off, &pattern(i as u8 + 1, len)).expect("write array.img");
    }
    m.kill9();
    let (_, dirty0) = mdfuse_dirty(legs.path(0));
    let (_, dirty1) = mdfuse_dirty(legs.path(1));
    assert_eq!(dirty0, vec![10, 11, 12, 40], "leg0's copy");
    assert_eq!(dirty1, dirty0, "every leg's copy holds the bits");
    assert_eq!(bits_and_dirty(&mdadm_x(legs.path(1))), (95, 4));
    // A torn write: leg1 missed part of chunk 11 and of chunk 40.
    let data = c.data_offset_sectors * 512;
    write_at(legs.path(1), data + 11 * MIB + 65536, &[0xa5; 4096]);
    write_at(legs.path(1), data + 40 * MIB, &[0x5a; 4096]);

    let m = MountedArray::mount(&legs, &mnt, &[]);
    m.wait_sync_idle(Duration::from_secs(60));
    let copied = sync_copied(&m);
    eprintln!(
        "kill -9: {} dirty chunks of 1 MiB; the resync copied {copied} bytes of {}",
        dirty0.len(),
        c.array_bytes
    );
    assert_eq!(copied, dirty0.len() as u64 * MIB, "only the dirty chunks");
    for (i, &(off, len)) in writes.iter().enumerate() {
        assert_eq!(read_at(&m.image(), off, len), pattern(i as u8 + 1, len));
    }
    m.stop();
    assert_legs_identical(legs.path(0), legs.path(1), data, c.array_bytes);
    let (_, dirty) = mdfuse_dirty(legs.path(1));
    assert!(dirty.is_empty(), "clean after the resync and a clean stop");
}

#[test]
fn re_add_copies_only_what_was_written_while_away() {
    if !needs_root("re_add_copies_only_what_was_written_while_away") {
        return;
    }
    let legs = Legs::temp(LEG);
    let c = create_internal(&legs, "1");
    let mnt = legs.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    write_direct(&m.image(), 0, &pattern(9, MIB as usize)).expect("write");
    // Its bit is cleared (1 s idle) before the leg goes: never while degraded.
    std::thread::sleep(Duration::from_secs(3));
    let leg1 = legs.path(1).to_path_buf();
    for op in ["--fail", "--remove"] {
        let o = mdfuse_with(&["manage", path_str(&mnt), op], &[&leg1]);
        common::mdfuse::assert_ok(op, &o);
    }
    // 3 MiB in chunks 20..=22 while leg1 is away.
    write_direct(&m.image(), 20 * MIB, &pattern(3, 3 * MIB as usize)).expect("write");
    std::thread::sleep(Duration::from_secs(3));
    let (_, dirty) = mdfuse_dirty(legs.path(0));
    assert_eq!(
        dirty,
        vec![20, 21, 22],
        "kept while degraded, on leg0's copy"
    );
    let o = mdfuse_with(&["manage", path_str(&mnt), "--re-add"], &[&leg1]);
    common::mdfuse::assert_ok("--re-add", &o);
    m.wait_sync_idle(Duration::from_secs(60));
    let copied = sync_copied(&m);
    eprintln!("re-add: 3 chunks written while away; the recovery copied {copied} bytes");
    assert_eq!(copied, 3 * MIB, "only the chunks written while away");
    m.stop();
    let data = c.data_offset_sectors * 512;
    assert_legs_identical(legs.path(0), legs.path(1), data, c.array_bytes);
    for leg in &legs.paths {
        let (_, dirty) = mdfuse_dirty(leg);
        assert!(dirty.is_empty(), "{}: clean again", leg.display());
    }
}

/// Rewrites leg `leg`'s superblock (metadata 1.2) with `edit` applied.
fn edit_superblock(leg: &Path, edit: impl Fn(&mut mdfuse::format::superblock::Superblock)) {
    let block = read_at(leg, 4096, 4096);
    let mut sb = mdfuse::format::superblock::Superblock::parse(&block).expect("a superblock");
    edit(&mut sb);
    write_at(leg, 4096, &sb.to_bytes());
}

#[test]
fn hostile_internal_bitmaps_are_refused_by_name() {
    if !needs_root("hostile_internal_bitmaps_are_refused_by_name") {
        return;
    }
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "bad magic",
            Box::new(|l: &Path| write_at(l, BITMAP_AT_1_2, b"xxxx")),
            "magic",
        ),
        (
            "chunk size not a power of two",
            Box::new(|l: &Path| write_at(l, BITMAP_AT_1_2 + 52, &3000u32.to_le_bytes())),
            "chunksize",
        ),
        (
            "another array's uuid",
            Box::new(|l: &Path| write_at(l, BITMAP_AT_1_2 + 8, &[0x11; 16])),
            "uuid",
        ),
        (
            "bitmap inside the data area",
            Box::new(|l: &Path| edit_superblock(l, |sb| sb.bitmap_offset = 2040)),
            "overlap the data area",
        ),
        (
            "bitmap before the leg's start",
            Box::new(|l: &Path| edit_superblock(l, |sb| sb.bitmap_offset = -100)),
            "outside the leg",
        ),
        (
            "bitmap over the superblock",
            Box::new(|l: &Path| edit_superblock(l, |sb| sb.bitmap_offset = 0)),
            "overlap the superblock",
        ),
    ];
    for (what, damage, expect) in cases {
        let legs = Legs::temp(LEG);
        create(&legs, &["--bitmap", "internal", "--bitmap-chunk", "1M"]);
        damage(legs.path(0));
        let before = legs.sha256s();
        let mnt = legs.mountpoint("mnt");
        let err = match MountedArray::try_mount(&legs, &mnt, &[]) {
            Ok(m) => {
                m.stop();
                panic!("{what}: mounted")
            }
            Err(o) => assert_fails(what, &o),
        };
        assert!(
            err.contains(path_str(legs.path(0))) && err.contains("internal bitmap"),
            "{what}: the refusal names the leg: {err}"
        );
        assert!(err.contains(expect), "{what}: {err}");
        assert_eq!(legs.sha256s(), before, "{what}: a refusal writes nothing");
    }
    // --bitmap FILE on legs with an internal bitmap is refused too.
    let legs = Legs::temp(LEG);
    create(&legs, &["--bitmap", "internal"]);
    let mnt = legs.mountpoint("mnt");
    let file = legs.dir().join("x.bitmap");
    let err = match MountedArray::try_mount(&legs, &mnt, &["--bitmap", path_str(&file)]) {
        Ok(m) => {
            m.stop();
            panic!("mounted with --bitmap FILE over an internal bitmap")
        }
        Err(o) => assert_fails("--bitmap over internal", &o),
    };
    assert!(err.contains("internal write-intent bitmap"), "{err}");
}

/// A leg that refuses a bitmap page is failed, as after a data write error:
/// the write goes on degraded, its bit on the other leg's copy, and the
/// superblocks record the leg faulty.
#[test]
fn a_leg_refusing_a_bitmap_page_is_failed() {
    if !needs_root("a_leg_refusing_a_bitmap_page_is_failed") {
        return;
    }
    let dir = tempdir("mdfuse-ibitmap");
    let (faulty, legs) = leg1_faulty(dir.path(), LEG);
    create_internal(&legs, "30");
    let m = MountedArray::mount(&legs, &dir.path().join("mnt"), &[]);
    // Once active, so the failure is the bitmap page's (not the superblock's).
    write_direct(&m.image(), 0, &pattern(1, 4096)).expect("a write with both legs");
    // Page 0 of leg1's copy (the header and the first bits) fails.
    faulty.fail_writes("leg1.img", BITMAP_AT_1_2..BITMAP_AT_1_2 + 4096);
    write_direct(&m.image(), 5 * MIB, &pattern(4, 65536)).expect("the write goes on degraded");
    assert_eq!(m.md("dev-leg1.img/state"), "faulty", "{}", m.log());
    assert_eq!(read_at(&m.image(), 5 * MIB, 65536), pattern(4, 65536));
    let (_, dirty) = mdfuse_dirty(legs.path(0));
    assert!(dirty.contains(&5), "leg0's copy holds the bit: {dirty:?}");
    assert!(m.log().contains("internal bitmap page 0"), "{}", m.log());
    m.stop();
    let e = mdadm_examine(legs.path(0));
    let state = examine_field(&e, "Array State").unwrap_or_default();
    assert!(state.starts_with("A."), "leg0 records leg1 gone: {e}");
}
