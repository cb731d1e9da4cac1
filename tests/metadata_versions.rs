//! Metadata 1.0 and 1.1 legs (issue 18): `mdfuse create --metadata` writes
//! them as mdadm 4.2 would (the real `mdadm --examine` reads them, and
//! `mdfuse examine` prints what it prints), and mdfuse assembles, serves,
//! fails, re-adds, adds and resyncs them with the real `mdfuse mount`. The
//! refusals of what mdfuse does not serve (metadata 0.90, other levels,
//! clustered arrays, journals, PPL; an internal bitmap that is not valid)
//! name the leg, the feature and what to do, and change no byte of any leg.

mod common;

use common::io::{read_at, write_buffered_fsync};
use common::loopdev::ScratchFs;
use common::mdfuse::*;
use mdfuse::format::superblock::*;
use std::path::Path;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const LEG_BYTES: u64 = 32 * MIB;

fn needs_root(name: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("{name}: skipped (needs root for FUSE mounts)");
        return false;
    }
    true
}

/// The sector a leg's superblock sits at for `version`.
fn place(leg: &Path, version: MetadataVersion) -> u64 {
    let sectors = std::fs::metadata(leg).expect("stat leg").len() / 512;
    version.super_offset(sectors).expect("a place")
}

fn read_sb(leg: &Path, version: MetadataVersion) -> Superblock {
    let at = place(leg, version);
    Superblock::parse(&read_at(leg, at * 512, 4096))
        .unwrap_or_else(|e| panic!("{version} superblock of {}: {e}", leg.display()))
}

fn write_sb_at(leg: &Path, sector: u64, sb: &Superblock) {
    write_buffered_fsync(leg, sector * 512, &sb.to_bytes()).expect("write superblock");
}

fn version_arg(v: MetadataVersion) -> [&'static str; 2] {
    ["--metadata", v.name()]
}

/// `mdadm --examine LEG` with TZ=UTC (mdfuse prints UTC times).
fn mdadm_examine_utc(leg: &Path) -> String {
    let o = std::process::Command::new("mdadm")
        .arg("--examine")
        .arg(leg)
        .env("TZ", "UTC")
        .output()
        .expect("cannot run mdadm");
    assert_ok("mdadm --examine", &o);
    stdout(&o)
}

fn field(text: &str, key: &str) -> String {
    examine_field(text, key).unwrap_or_else(|| panic!("no {key:?} in\n{text}"))
}

/// mdadm 4.2's numbers for a RAID1 of two 32 MiB legs, worked from
/// super1.c (validate_geometry1, write_init_super1) and Create.c: (super
/// offset, data offset, avail dev size, used dev size, bad-block log offset).
fn mdadm_numbers(v: MetadataVersion) -> (u64, u64, u64, u64, i64) {
    match v {
        // (65536 & ~7) - (16 + 8 + choose_bm_space 8) = 65504 free, rounded
        // to 64 KiB: 65408; the superblock at (65536 - 16) & ~7; below it
        // choose_bm_space(65408) + 8 = 16 sectors kept, the log at -8.
        MetadataVersion::V1_0 => (65520, 0, 65504, 65408, -8),
        // data_offset round_up(24 + 8 + 32 MiB >> 10 headroom..., 1 MiB).
        MetadataVersion::V1_1 => (0, 2048, 63488, 63488, 16),
        MetadataVersion::V1_2 => (8, 2048, 63488, 63488, 16),
    }
}

/// `mdfuse create --metadata V` on 32 MiB legs: `mdadm --examine` reads each
/// leg's superblock at its version's place with mdadm's own numbers, and
/// `mdfuse examine` prints exactly what mdadm prints.
#[test]
fn create_writes_each_version_as_mdadm_reads_it() {
    for v in MetadataVersion::ALL {
        let legs = Legs::temp(LEG_BYTES);
        let c = create(&legs, &[&version_arg(v)[..], &["--name", "ver"]].concat());
        let (super_offset, data_offset, avail, used, bblog) = mdadm_numbers(v);
        assert_eq!(c.data_offset_sectors, data_offset, "{v}");
        assert_eq!(c.array_bytes, used * 512, "{v}");
        assert!(c.stdout.contains(&format!("metadata {v}")), "{}", c.stdout);
        for leg in &legs.paths {
            let text = mdadm_examine_utc(leg);
            assert_eq!(field(&text, "Version"), v.name(), "{text}");
            assert_eq!(
                field(&text, "Super Offset"),
                format!("{super_offset} sectors"),
                "{text}"
            );
            match data_offset {
                // mdadm prints no Data Offset line for 0.
                0 => assert!(examine_field(&text, "Data Offset").is_none(), "{text}"),
                d => assert_eq!(field(&text, "Data Offset"), format!("{d} sectors")),
            }
            assert!(
                field(&text, "Avail Dev Size").starts_with(&format!("{avail} sectors")),
                "{text}"
            );
            assert!(
                field(&text, "Array Size").starts_with(&format!("{} KiB", used / 2)),
                "{text}"
            );
            assert!(
                field(&text, "Bad Block Log")
                    .starts_with(&format!("512 entries available at offset {bblog} sectors")),
                "{text}"
            );
            assert!(field(&text, "Checksum").ends_with("correct"), "{text}");
            assert_eq!(field(&text, "State"), "clean");
            let ours = mdfuse_with(&["examine"], &[leg]);
            assert_ok("mdfuse examine", &ours);
            let ours = stdout(&ours);
            assert_eq!(
                ours.trim_end(),
                text.trim_end(),
                "{v}: mdfuse examine differs"
            );
            // Nothing at the other versions' places.
            for other in MetadataVersion::ALL.into_iter().filter(|o| *o != v) {
                let block = read_at(leg, place(leg, other) * 512, 4096);
                assert!(
                    block[..4] != MD_MAGIC.to_le_bytes(),
                    "{v}: magic at {other}'s place"
                );
            }
        }
        // A created leg is refused by a second create, whatever its version.
        let again = try_create(&legs, &["--metadata", "1.2"]);
        let err = assert_fails("create over a created leg", &again);
        assert!(
            err.contains("already carries an md superblock"),
            "{v}: {err}"
        );
    }
    let legs = Legs::temp(LEG_BYTES);
    let err = assert_fails(
        "create --metadata 0.90",
        &try_create(&legs, &["--metadata", "0.90"]),
    );
    assert!(err.contains("0.90") && err.contains("1.0"), "{err}");
}

/// An array of 1.0 or 1.1 legs with a bitmap file: written, a leg failed and
/// removed, written degraded, re-added from the bitmap, stopped clean; then
/// killed while active and resynced. The legs keep their superblocks at
/// their places, agree with each other, and a 1.0 leg read from sector 0 is
/// the array (what a boot loader reads).
#[test]
fn each_version_serves_fails_re_adds_and_resyncs() {
    if !needs_root("each_version_serves_fails_re_adds_and_resyncs") {
        return;
    }
    for v in [MetadataVersion::V1_0, MetadataVersion::V1_1] {
        let legs = Legs::temp(LEG_BYTES);
        // The bitmap on a loop-backed ext4, for its raw block-map writes.
        let fs = ScratchFs::ext4(4096).expect("loop-backed ext4 for the bitmap");
        let bitmap = fs.path("md0.bitmap");
        let bitmap_s = bitmap.display().to_string();
        let c = create(
            &legs,
            &[
                &version_arg(v)[..],
                &["--bitmap", &bitmap_s, "--bitmap-chunk", "64K"],
            ]
            .concat(),
        );
        let array = c.array_bytes;
        let mnt = legs.mountpoint("mnt");
        let m = MountedArray::mount(&legs, &mnt, &["--bitmap", &bitmap_s]);
        assert_eq!(m.md("metadata_version"), v.name());
        let detail = mdfuse_with(&["detail"], &[&mnt]);
        assert_ok("mdfuse detail", &detail);
        assert_eq!(field(&stdout(&detail), "Version"), v.name());
        let mut image = vec![0u8; array as usize];
        let first = m.fill_random(0, 4 * MIB as usize, 1);
        image[..first.len()].copy_from_slice(&first);
        // The array's last bytes: next to a 1.0 leg's superblock.
        let tail = m.fill_random(array - MIB, MIB as usize, 2);
        image[(array - MIB) as usize..].copy_from_slice(&tail);

        m.fail_and_remove("leg1.img");
        let degraded = m.fill_random(8 * MIB, 2 * MIB as usize, 3);
        image[8 * MIB as usize..10 * MIB as usize].copy_from_slice(&degraded);
        let o = mdfuse_with(&["manage"], &[&mnt, Path::new("--re-add"), legs.path(1)]);
        assert_ok("mdfuse manage --re-add", &o);
        m.wait_sync_idle(Duration::from_secs(60));
        assert!(
            m.log().contains("re-added: bitmap-guided recovery"),
            "{v}: {}",
            m.log()
        );
        assert_eq!(m.md("degraded"), "0");
        assert_eq!(sha256_file(&m.image()), sha256_bytes(&image), "{v}");
        m.stop();
        assert_stopped_clean(&legs.paths, Some(&bitmap));
        check_legs(&legs, v, array, &image);

        // Killed while active: the next mount resyncs the dirty chunks.
        let m = MountedArray::mount(&legs, &mnt, &["--bitmap", &bitmap_s]);
        let late = m.fill_random(12 * MIB, MIB as usize, 4);
        image[12 * MIB as usize..13 * MIB as usize].copy_from_slice(&late);
        m.kill9();
        let sb = read_sb(legs.path(0), v);
        assert!(!sb.is_clean(), "{v}: active after kill -9");
        let m = MountedArray::mount(&legs, &mnt, &["--bitmap", &bitmap_s]);
        m.wait_sync_idle(Duration::from_secs(60));
        assert_eq!(sha256_file(&m.image()), sha256_bytes(&image), "{v}");
        m.stop();
        assert_stopped_clean(&legs.paths, Some(&bitmap));
        check_legs(&legs, v, array, &image);
    }
}

/// Both legs: the superblock at `v`'s place, clean, the same events; the
/// data regions hold `image`.
fn check_legs(legs: &Legs, v: MetadataVersion, array: u64, image: &[u8]) {
    let sbs: Vec<Superblock> = legs.paths.iter().map(|p| read_sb(p, v)).collect();
    for (p, sb) in legs.paths.iter().zip(&sbs) {
        assert!(sb.is_clean(), "{}", p.display());
        assert_eq!(sb.events, sbs[0].events, "{}", p.display());
        let text = mdadm_examine_utc(p);
        assert_eq!(field(&text, "Version"), v.name(), "{text}");
        let data = data_region(p, sb.data_offset * 512, array);
        assert!(
            data == image,
            "{v}: {} does not hold the array",
            p.display()
        );
    }
    if v == MetadataVersion::V1_0 {
        assert_eq!(sbs[0].data_offset, 0);
        assert_eq!(sha256_region(legs.path(0), 0, array), sha256_bytes(image));
    }
}

/// A fresh leg of another size added to a 1.0 array gets its superblock at
/// its own end (md's rounding of its own size), with the data size mdadm
/// would give it; the array then assembles from it.
#[test]
fn a_leg_added_to_a_1_0_array_gets_its_superblock_at_its_own_end() {
    if !needs_root("a_leg_added_to_a_1_0_array_gets_its_superblock_at_its_own_end") {
        return;
    }
    let legs = Legs::temp(LEG_BYTES);
    let c = create(&legs, &version_arg(MetadataVersion::V1_0));
    let mnt = legs.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    let data = m.fill_random(0, 6 * MIB as usize, 7);
    m.fail_and_remove("leg1.img");
    // 40 MiB + 4 KiB: its 1.0 place is not leg0's.
    let fresh = legs.dir().join("fresh.img");
    let f = std::fs::File::create(&fresh).expect("create fresh leg");
    f.set_len(40 * MIB + 4096).expect("size fresh leg");
    drop(f);
    let o = mdfuse_with(&["manage"], &[&mnt, Path::new("--add"), &fresh]);
    assert_ok("mdfuse manage --add", &o);
    m.wait_sync_idle(Duration::from_secs(60));
    assert_eq!(m.md("degraded"), "0");
    m.stop();
    let sectors = (40 * MIB + 4096) / 512;
    let sb = read_sb(&fresh, MetadataVersion::V1_0);
    assert_eq!(sb.super_offset, (sectors - 16) & !7);
    let layout =
        mdadm_layout(MetadataVersion::V1_0, sectors, c.array_bytes / 512, 0).expect("layout");
    assert_eq!(sb.data_size, layout.data_size);
    assert_eq!((sb.bblog_size, sb.bblog_offset), (8, -8));
    let text = mdadm_examine_utc(&fresh);
    assert_eq!(field(&text, "Version"), "1.0", "{text}");
    assert!(field(&text, "Checksum").ends_with("correct"), "{text}");
    // Nothing was written at leg0's superblock place on the fresh leg.
    let theirs = place(legs.path(0), MetadataVersion::V1_0);
    assert!(read_at(&fresh, theirs * 512, 4096).iter().all(|&b| b == 0));
    let pair = Legs::from_paths(vec![legs.path(0).to_path_buf(), fresh.clone()]);
    let m = MountedArray::mount(&pair, &legs.mountpoint("mnt2"), &[]);
    assert_eq!(m.md("degraded"), "0");
    let head = read_at(&m.image(), 0, data.len());
    assert!(head == data, "the added leg's array differs");
    m.stop();
    assert_eq!(
        sha256_region(&fresh, 0, c.array_bytes),
        sha256_region(legs.path(0), 0, c.array_bytes)
    );
}

/// One refusal: the legs (made by `prepare`) are refused by `mdfuse mount`
/// with every word of `words` in the message, the leg's path among them,
/// and no byte of any leg changed.
fn assert_refused(what: &str, legs: &Legs, named: &Path, words: &[&str]) {
    let before: Vec<String> = legs.paths.iter().map(|p| sha256_file(p)).collect();
    let mnt = legs.mountpoint("refused");
    let err = match MountedArray::try_mount(legs, &mnt, &["--run"]) {
        Ok(m) => {
            m.stop();
            panic!("{what}: mounted");
        }
        Err(o) => text(&o),
    };
    let named = named.display().to_string();
    for w in [named.as_str()].iter().chain(words) {
        assert!(err.contains(w), "{what}: {w:?} missing from: {err}");
    }
    assert!(err.contains("What to do"), "{what}: no advice in: {err}");
    let after: Vec<String> = legs.paths.iter().map(|p| sha256_file(p)).collect();
    assert_eq!(before, after, "{what}: a leg changed");
}

/// Legs of `v` whose superblocks (both, checksums valid) get `edit`.
fn edited(v: MetadataVersion, edit: impl Fn(&mut Superblock)) -> Legs {
    let legs = Legs::temp(LEG_BYTES);
    create(&legs, &version_arg(v));
    for p in &legs.paths {
        let mut sb = read_sb(p, v);
        edit(&mut sb);
        write_sb_at(p, place(p, v), &sb);
    }
    legs
}

/// What mdfuse does not serve is refused with the leg, the feature and what
/// to do, for 1.0, 1.1 and 1.2 legs alike; metadata 0.90 legs and a
/// superblock naming another place than its own too.
#[test]
fn what_mdfuse_does_not_serve_is_refused_with_what_to_do() {
    type Edit = fn(&mut Superblock);
    let cases: [(&str, Edit, &[&str]); 6] = [
        (
            "internal bitmap",
            |s| {
                s.feature_map |= FEATURE_BITMAP_OFFSET;
                s.bitmap_offset = 2;
            },
            // Served now, but nothing valid lies at +2: refused by name.
            &["internal bitmap", "magic", "--bitmap=none"],
        ),
        (
            "clustered",
            |s| s.feature_map |= FEATURE_CLUSTERED,
            &["MD_FEATURE_CLUSTERED", "cluster", "mdadm --assemble"],
        ),
        (
            "journal",
            |s| s.feature_map |= FEATURE_JOURNAL,
            &["MD_FEATURE_JOURNAL", "journal", "mdadm --assemble"],
        ),
        (
            "PPL",
            |s| s.feature_map |= FEATURE_PPL,
            &["MD_FEATURE_PPL", "partial parity log", "mdadm --assemble"],
        ),
        (
            "raid5",
            |s| s.level = 5,
            &["level 5 (raid5)", "RAID1 only", "mdadm --assemble"],
        ),
        (
            "raid0",
            |s| s.level = 0,
            &["level 0 (raid0)", "RAID1 only", "mdadm --assemble"],
        ),
    ];
    for v in MetadataVersion::ALL {
        for (what, edit, words) in &cases {
            let legs = edited(v, edit);
            assert_refused(&format!("{v} {what}"), &legs, legs.path(0), words);
        }
    }

    // Metadata 0.90 legs: md's magic, major version 0, at 0.90's place.
    let legs = Legs::temp(LEG_BYTES);
    for p in &legs.paths {
        let mut block = vec![0u8; 4096];
        block[..4].copy_from_slice(&MD_MAGIC.to_le_bytes());
        block[8..12].copy_from_slice(&90u32.to_le_bytes());
        let at = v0_90_super_sector(LEG_BYTES / 512).expect("a 0.90 place");
        write_buffered_fsync(p, at * 512, &block).expect("write 0.90 superblock");
    }
    assert_refused(
        "metadata 0.90",
        &legs,
        legs.path(0),
        &["metadata 0.90", "--update=metadata", "1.0"],
    );
    let err = assert_fails(
        "mdfuse examine of a 0.90 leg",
        &mdfuse_with(&["examine"], &[legs.path(0)]),
    );
    assert!(err.contains("0.90"), "{err}");

    // A 1.2 block naming sector 0 (a 1.1 place): its updates would land
    // there; and a 1.0 block copied to the 1.2 place.
    let legs = edited(MetadataVersion::V1_2, |s| s.super_offset = 0);
    assert_refused_plain("misplaced 1.2", &legs, 0, &["super_offset 0", "sector 8"]);
    let legs = Legs::temp(LEG_BYTES);
    create(&legs, &version_arg(MetadataVersion::V1_0));
    let sb = read_sb(legs.path(1), MetadataVersion::V1_0);
    write_sb_at(legs.path(1), 8, &sb);
    // Both blocks: the one at its place is the leg's, the copy is ignored.
    let m = MountedArray::mount(&legs, &legs.mountpoint("mnt"), &[]);
    m.stop();
    // Without the one at its place, the copy is refused.
    write_buffered_fsync(
        legs.path(1),
        place(legs.path(1), MetadataVersion::V1_0) * 512,
        &[0u8; 4096],
    )
    .expect("wipe");
    assert_refused_plain(
        "1.0 block at sector 8",
        &legs,
        1,
        &["super_offset 65520", "sector 8"],
    );
}

/// A refusal of a leg whose superblock is not where it says: leg `named`
/// named, the words present, legs unchanged (the advice is `mdfuse
/// examine`'s).
fn assert_refused_plain(what: &str, legs: &Legs, named: usize, words: &[&str]) {
    let before: Vec<String> = legs.paths.iter().map(|p| sha256_file(p)).collect();
    let err = match MountedArray::try_mount(legs, &legs.mountpoint("refused"), &["--run"]) {
        Ok(m) => {
            m.stop();
            panic!("{what}: mounted");
        }
        Err(o) => text(&o),
    };
    let named = legs.path(named).display().to_string();
    assert!(err.contains(&named), "{what}: {err}");
    for w in words {
        assert!(err.contains(w), "{what}: {w:?} missing from: {err}");
    }
    let after: Vec<String> = legs.paths.iter().map(|p| sha256_file(p)).collect();
    assert_eq!(before, after, "{what}: a leg changed");
}
