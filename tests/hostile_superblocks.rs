//! Hostile superblocks (issue 13): legs whose md superblock has a valid
//! checksum and impossible contents are refused with the leg and the field
//! named, and nothing is written to any leg; md's tolerance (a member one
//! event behind, a member whose checksum fails) is followed. The real
//! `mdfuse mount` on real leg files, and a property test of assembly over
//! crafted leg files.

mod common;

use common::io::{read_at, write_buffered_fsync};
use common::mdfuse::*;
use mdfuse::array::{assemble, AssembleOptions};
use mdfuse::format::superblock::*;
use mdfuse::io::leg::IoMode;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
const LEG_BYTES: u64 = 8 * MIB;
/// The property test's legs: small, so each case reads them whole quickly.
const PROP_LEG_BYTES: u64 = 2 * MIB;

fn read_sb(leg: &Path) -> Superblock {
    Superblock::parse(&read_at(leg, 4096, 4096))
        .unwrap_or_else(|e| panic!("superblock of {}: {e}", leg.display()))
}

/// Writes `sb` over the leg's superblock, with a valid checksum, as an
/// attacker (or a corrupting tool) would.
fn write_sb(leg: &Path, sb: &Superblock) {
    write_buffered_fsync(leg, 4096, &sb.to_bytes()).expect("write superblock");
}

/// Each leg's length and sha256: what must not change when a mount is refused.
fn fingerprints(legs: &Legs) -> Vec<(u64, String)> {
    legs.paths
        .iter()
        .map(|p| {
            let len = std::fs::metadata(p).expect("stat leg").len();
            (len, sha256_file(p))
        })
        .collect()
}

/// A created array's two legs and their pristine superblocks.
fn created() -> (Legs, [Superblock; 2]) {
    let legs = Legs::temp(LEG_BYTES);
    create(&legs, &["--name", "hostile"]);
    let sbs = [read_sb(legs.path(0)), read_sb(legs.path(1))];
    (legs, sbs)
}

/// One attack: which leg gets the edited superblock (the other keeps its
/// own; `fresher` puts the edited one event ahead so it is the freshest),
/// and the words the refusal must hold besides the leg's path.
struct Attack {
    what: &'static str,
    leg: usize,
    fresher: bool,
    edit: fn(&mut Superblock),
    /// Which leg the refusal names (usually the edited one).
    named: usize,
    words: &'static [&'static str],
}

fn attack(
    what: &'static str,
    leg: usize,
    edit: fn(&mut Superblock),
    words: &'static [&'static str],
) -> Attack {
    Attack {
        what,
        leg,
        fresher: false,
        edit,
        named: leg,
        words,
    }
}

fn attacks() -> Vec<Attack> {
    let mut list = vec![
        // Every superblock update would land in user data.
        attack(
            "super_offset 3072",
            1,
            |s| s.super_offset = 3072,
            &["super_offset"],
        ),
        // The leg file would grow to 512 GiB.
        attack(
            "super_offset 2^30",
            1,
            |s| s.super_offset = 1 << 30,
            &["super_offset"],
        ),
        // User writes would overwrite the superblock.
        attack("data_offset 0", 1, |s| s.data_offset = 0, &["data_offset"]),
        attack("data_offset 8", 0, |s| s.data_offset = 8, &["data_offset"]),
        attack(
            "max_dev past the space before data_offset",
            1,
            |s| {
                s.set_max_dev(MAX_DEV_LIMIT).expect("max_dev");
                s.data_offset = 12;
            },
            &["data_offset", "max_dev"],
        ),
        attack(
            "data_offset past the leg",
            1,
            |s| s.data_offset = LEG_BYTES / 512 + 8,
            &["data_offset"],
        ),
        // (data_offset + size) * 512 wraps to 1 MiB: the old leg-size check passed.
        attack("size 2^55", 1, |s| s.size = 1 << 55, &["size"]),
        attack(
            "data_size past the leg",
            1,
            |s| s.data_size = LEG_BYTES / 512 - s.data_offset + 1,
            &["data_size"],
        ),
        attack(
            "size past data_size",
            0,
            |s| s.data_size = s.size - 8,
            &["size", "data_size"],
        ),
        attack("raid_disks 0", 1, |s| s.raid_disks = 0, &["raid_disks"]),
        attack(
            "raid_disks 2^31",
            1,
            |s| s.raid_disks = 1 << 31,
            &["raid_disks"],
        ),
        attack("raid_disks 65", 0, |s| s.raid_disks = 65, &["raid_disks"]),
        attack(
            "own role 5",
            1,
            |s| s.set_role(s.dev_number, DevRole::Active(5)).expect("role"),
            &["dev_roles", "slot 5"],
        ),
        // An acknowledged write would be lost: events wraps at the next update.
        attack("events u64::MAX", 1, |s| s.events = u64::MAX, &["events"]),
        attack(
            "recovery_offset past the end",
            1,
            |s| {
                s.feature_map |= FEATURE_RECOVERY_OFFSET;
                s.recovery_offset = s.size + 1;
            },
            &["recovery_offset"],
        ),
        // The freshest leg says the array has one slot: leg 1's slot 1 is
        // beyond it (an index panic in the running array before).
        Attack {
            what: "freshest raid_disks 1",
            leg: 0,
            fresher: true,
            edit: |s| s.raid_disks = 1,
            named: 1,
            words: &["raid_disks 1", "slot 1"],
        },
        // The freshest leg's array size does not fit leg 1's data area.
        Attack {
            what: "freshest size beyond the other's data_size",
            leg: 1,
            fresher: false,
            edit: |s| {
                s.data_size -= 64;
                s.size -= 64;
            },
            named: 1,
            words: &["data_size"],
        },
    ];
    for (bit, name) in [
        (FEATURE_BITMAP_OFFSET, "MD_FEATURE_BITMAP_OFFSET"),
        (FEATURE_BAD_BLOCKS, "MD_FEATURE_BAD_BLOCKS"),
        (FEATURE_RESHAPE_ACTIVE, "MD_FEATURE_RESHAPE_ACTIVE"),
        (FEATURE_REPLACEMENT, "MD_FEATURE_REPLACEMENT"),
        (FEATURE_CLUSTERED, "MD_FEATURE_CLUSTERED"),
        (FEATURE_JOURNAL, "MD_FEATURE_JOURNAL"),
        (FEATURE_PPL, "MD_FEATURE_PPL"),
        (FEATURE_NEW_OFFSET, "MD_FEATURE_NEW_OFFSET"),
        (FEATURE_RAID0_LAYOUT, "MD_FEATURE_RAID0_LAYOUT"),
    ] {
        let words: &'static [&'static str] =
            Box::leak(vec!["feature_map", name].into_boxed_slice());
        let edit: fn(&mut Superblock) = match bit {
            FEATURE_BITMAP_OFFSET => |s| {
                s.feature_map |= FEATURE_BITMAP_OFFSET;
                s.bitmap_offset = 8;
            },
            FEATURE_BAD_BLOCKS => |s| s.feature_map |= FEATURE_BAD_BLOCKS,
            FEATURE_RESHAPE_ACTIVE => |s| s.feature_map |= FEATURE_RESHAPE_ACTIVE,
            FEATURE_REPLACEMENT => |s| s.feature_map |= FEATURE_REPLACEMENT,
            FEATURE_CLUSTERED => |s| s.feature_map |= FEATURE_CLUSTERED,
            FEATURE_JOURNAL => |s| s.feature_map |= FEATURE_JOURNAL,
            FEATURE_PPL => |s| s.feature_map |= FEATURE_PPL,
            FEATURE_NEW_OFFSET => |s| s.feature_map |= FEATURE_NEW_OFFSET,
            _ => |s| s.feature_map |= FEATURE_RAID0_LAYOUT,
        };
        list.push(Attack {
            what: name,
            leg: 1,
            fresher: false,
            edit,
            named: 1,
            words,
        });
    }
    list
}

/// Every attack the issue lists, on a real array: `mdfuse mount` refuses it
/// with the leg and the field named, and leaves every leg byte as it was.
#[test]
fn impossible_superblocks_are_refused_by_leg_and_field_and_nothing_is_written() {
    if !common::loopdev::needs_root("impossible_superblocks_are_refused") {
        return;
    }
    let (legs, pristine) = created();
    let mnt = legs.mountpoint("mnt");
    let mut failures = Vec::new();
    for a in attacks() {
        for (i, sb) in pristine.iter().enumerate() {
            write_sb(legs.path(i), sb);
        }
        let mut sb = pristine[a.leg].clone();
        (a.edit)(&mut sb);
        if a.fresher {
            sb.events += 1;
        }
        write_sb(legs.path(a.leg), &sb);
        let before = fingerprints(&legs);
        match MountedArray::try_mount(&legs, &mnt, &[]) {
            Ok(m) => {
                drop(m);
                failures.push(format!("{}: mounted", a.what));
                continue;
            }
            Err(o) => {
                let err = text(&o);
                let leg = legs.path(a.named).display().to_string();
                if !err.contains(&leg) || a.words.iter().any(|w| !err.contains(w)) {
                    failures.push(format!(
                        "{}: the refusal does not name {leg} and {:?}: {err}",
                        a.what, a.words
                    ));
                }
                if err.contains("panicked") {
                    failures.push(format!("{}: panicked: {err}", a.what));
                }
            }
        }
        if fingerprints(&legs) != before {
            failures.push(format!(
                "{}: a leg changed although the mount was refused",
                a.what
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// md and mdadm take a member one event behind the freshest as current (it
/// was being updated when the array stopped): the array starts whole,
/// without --run, and the log says so. Two behind is stale, as before.
#[test]
fn a_leg_one_event_behind_is_current_and_the_log_says_so() {
    if !common::loopdev::needs_root("a_leg_one_event_behind_is_current") {
        return;
    }
    let (legs, pristine) = created();
    let mnt = legs.mountpoint("mnt");
    let mut sb = pristine[0].clone();
    sb.events += 1;
    write_sb(legs.path(0), &sb);
    let m = MountedArray::mount(&legs, &mnt, &[]);
    let mdstat = m.mdstat();
    assert!(mdstat.contains("[2/2] [UU]"), "{mdstat}");
    let log = m.log();
    assert!(
        log.contains(&format!("leg {}", legs.path(1).display())) && log.contains("one behind"),
        "{log}"
    );
    // The first write records the array active on both legs: the one
    // behind is brought up to date.
    let data = vec![0x3cu8; 4096];
    write_buffered_fsync(&m.image(), 0, &data).expect("write");
    m.stop();
    assert_eq!(read_sb(legs.path(0)).events, read_sb(legs.path(1)).events);
    legs.assert_identical(4096);

    // Two behind: stale, left out; only --run starts the array.
    let mut sb = read_sb(legs.path(0));
    sb.events += 2;
    write_sb(legs.path(0), &sb);
    let o = MountedArray::try_mount(&legs, &mnt, &[]).expect_err("two events behind is stale");
    let err = text(&o);
    assert!(err.contains("stale") && err.contains("--run"), "{err}");
}

/// A member whose superblock fails its checksum is left out, as md leaves
/// it out: without --run the array is refused (its slot is missing) and
/// nothing is written; with --run the rest start degraded, and the log
/// says which leg was left out and why.
#[test]
fn a_leg_whose_checksum_fails_is_left_out_and_the_rest_start_with_run() {
    if !common::loopdev::needs_root("a_leg_whose_checksum_fails_is_left_out") {
        return;
    }
    let (legs, pristine) = created();
    let mnt = legs.mountpoint("mnt");
    // A torn superblock: one byte of events changed, the checksum not.
    let mut bytes = pristine[1].to_bytes();
    bytes[200] ^= 0x40;
    write_buffered_fsync(legs.path(1), 4096, &bytes).expect("write");
    let before = fingerprints(&legs);
    let o = MountedArray::try_mount(&legs, &mnt, &[]).expect_err("a slot is missing");
    let err = text(&o);
    assert!(
        err.contains(&legs.path(1).display().to_string())
            && err.contains("checksum")
            && err.contains("--run"),
        "{err}"
    );
    assert_eq!(fingerprints(&legs), before, "a refused mount changed a leg");
    let m = MountedArray::mount(&legs, &mnt, &["--run"]);
    let mdstat = m.mdstat();
    assert!(mdstat.contains("[2/1] [U_]"), "{mdstat}");
    let log = m.log();
    assert!(
        log.contains(&format!("leg {}", legs.path(1).display())) && log.contains("checksum"),
        "{log}"
    );
    let data = vec![0x5au8; 4096];
    write_buffered_fsync(&m.image(), 0, &data).expect("write to the degraded array");
    assert_eq!(read_at(&m.image(), 0, 4096), data);
    m.stop();
    // The left-out leg was not written.
    assert_eq!(read_at(legs.path(1), 4096, 4096), bytes);
}

/// md runs a RAID1 of one slot (`mdadm --create -n1 --force`): so does
/// mdfuse, from a leg whose superblock says raid_disks 1.
#[test]
fn a_one_slot_raid1_assembles_as_md_runs_it() {
    if !common::loopdev::needs_root("a_one_slot_raid1_assembles") {
        return;
    }
    let (legs, pristine) = created();
    let mut sb = pristine[0].clone();
    sb.raid_disks = 1;
    sb.set_role(1, DevRole::Spare).expect("role");
    write_sb(legs.path(0), &sb);
    let one = Legs::from_paths(vec![legs.path(0).to_owned()]);
    let mnt = legs.mountpoint("mnt");
    let m = MountedArray::mount(&one, &mnt, &[]);
    let mdstat = m.mdstat();
    assert!(mdstat.contains("[1/1] [U]"), "{mdstat}");
    let data = vec![0xa5u8; 8192];
    write_buffered_fsync(&m.image(), 4096, &data).expect("write");
    assert_eq!(read_at(&m.image(), 4096, 8192), data);
    m.stop();
}

// ---- property test: crafted legs through the library's assembly ----

/// A value for a sector field: near the interesting edges, or anything.
fn sector_value(valid: u64, leg_sectors: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(valid),
        Just(0u64),
        Just(8u64),
        Just(leg_sectors),
        Just(leg_sectors + 1),
        Just(u64::MAX),
        Just(1u64 << 55),
        Just(u64::MAX / 512 + 1),
        (valid.saturating_sub(16)..valid.saturating_add(16)),
        any::<u64>(),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    SuperOffset(u64),
    DataOffset(u64),
    DataSize(u64),
    Size(u64),
    RaidDisks(u32),
    Role(u32, u16),
    DevNumber(u32),
    Events(u64),
    Features(u32),
    MaxDev(u32),
    RecoveryOffset(u64),
}

fn edit_strategy(sb: &Superblock, leg_sectors: u64) -> impl Strategy<Value = Edit> {
    prop_oneof![
        sector_value(sb.super_offset, leg_sectors).prop_map(Edit::SuperOffset),
        sector_value(sb.data_offset, leg_sectors).prop_map(Edit::DataOffset),
        sector_value(sb.data_size, leg_sectors).prop_map(Edit::DataSize),
        sector_value(sb.size, leg_sectors).prop_map(Edit::Size),
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(2),
            Just(3),
            Just(64),
            Just(65),
            any::<u32>()
        ]
        .prop_map(Edit::RaidDisks),
        (
            0u32..4,
            prop_oneof![
                0u16..6,
                Just(0xfffe),
                Just(0xffff),
                Just(0xfffd),
                Just(0xff00)
            ]
        )
            .prop_map(|(d, r)| Edit::Role(d, r)),
        prop_oneof![0u32..4, Just(MAX_DEV_LIMIT), any::<u32>()].prop_map(Edit::DevNumber),
        prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            Just(EVENTS_LIMIT),
            Just(EVENTS_LIMIT + 1),
            0u64..8
        ]
        .prop_map(Edit::Events),
        any::<u32>().prop_map(|f| Edit::Features(f & FEATURE_ALL)),
        prop_oneof![0u32..4, Just(128u32), Just(MAX_DEV_LIMIT)].prop_map(Edit::MaxDev),
        sector_value(sb.size, leg_sectors).prop_map(Edit::RecoveryOffset),
    ]
}

fn apply(sb: &mut Superblock, e: &Edit) {
    match *e {
        Edit::SuperOffset(v) => sb.super_offset = v,
        Edit::DataOffset(v) => sb.data_offset = v,
        Edit::DataSize(v) => sb.data_size = v,
        Edit::Size(v) => sb.size = v,
        Edit::RaidDisks(v) => sb.raid_disks = v,
        Edit::Role(d, r) => {
            let _ = sb.set_role(d, DevRole::from_raw(r));
        }
        Edit::DevNumber(v) => sb.dev_number = v,
        Edit::Events(v) => sb.events = v,
        Edit::Features(v) => sb.feature_map = v,
        Edit::MaxDev(v) => {
            let _ = sb.set_max_dev(v);
        }
        Edit::RecoveryOffset(v) => sb.recovery_offset = v,
    }
}

/// A valid two-leg array's superblocks for legs of `PROP_LEG_BYTES`, as
/// `mdfuse create` writes them (events 5).
fn pristine_pair() -> [Superblock; 2] {
    let sectors = PROP_LEG_BYTES / 512;
    let data_offset = mdadm_default_data_offset(sectors);
    let mk = |dev_number: u32| {
        let mut sb = Superblock::new_raid1_member(&NewMember {
            set_uuid: [0x42; 16],
            name: "prop",
            raid_disks: 2,
            dev_number,
            device_uuid: [dev_number as u8 + 1; 16],
            device_sectors: sectors,
            array_sectors: mdadm_raid1_array_sectors(sectors, data_offset),
            data_offset: Some(data_offset),
            ctime: MdTime(0),
        })
        .expect("a valid member");
        sb.events = 5;
        sb
    };
    [mk(0), mk(1)]
}

/// Leg files of `PROP_LEG_BYTES` in `dir` holding `sbs`.
fn leg_files(dir: &Path, sbs: &[Superblock]) -> Vec<PathBuf> {
    sbs.iter()
        .enumerate()
        .map(|(i, sb)| {
            let p = dir.join(format!("leg{i}.img"));
            let f = std::fs::File::create(&p).expect("create leg");
            f.set_len(PROP_LEG_BYTES).expect("size leg");
            drop(f);
            write_buffered_fsync(&p, 4096, &sb.to_bytes()).expect("write superblock");
            p
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Legs whose superblocks (valid checksums) carry crafted fields:
    /// assembly either refuses them, changing no byte of any leg, or
    /// returns an array every later step can trust: slots inside
    /// raid_disks (at most 64), every member's data area and the array
    /// inside the leg, events that cannot wrap.
    #[test]
    fn crafted_legs_are_refused_or_safe_and_never_written(
        edits0 in proptest::collection::vec(edit_strategy(&pristine_pair()[0], PROP_LEG_BYTES / 512), 0..3),
        edits1 in proptest::collection::vec(edit_strategy(&pristine_pair()[1], PROP_LEG_BYTES / 512), 0..3),
        run in any::<bool>(),
        ahead in 0u64..3,
    ) {
        let mut sbs = pristine_pair();
        for e in &edits0 { apply(&mut sbs[0], e); }
        for e in &edits1 { apply(&mut sbs[1], e); }
        sbs[0].events = sbs[0].events.saturating_add(ahead);
        let dir = tempdir("mdfuse-prop");
        let paths = leg_files(dir.path(), &sbs);
        let before: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).expect("read")).collect();
        let opts = AssembleOptions {
            io_mode: IoMode::Buffered,
            read_only: false,
            run_degraded: run,
            force_from: None,
        };
        match assemble(&paths, &opts) {
            Ok(asm) => {
                prop_assert!(asm.raid_disks >= 1 && asm.raid_disks <= 64);
                prop_assert!(asm.events <= EVENTS_LIMIT);
                prop_assert!(asm.array_sectors >= 1);
                for m in &asm.members {
                    prop_assert!(u32::from(m.slot) < asm.raid_disks);
                    let end = m.sb.data_offset
                        .checked_add(asm.array_sectors)
                        .and_then(|s| s.checked_mul(512));
                    prop_assert!(end.is_some_and(|e| e <= PROP_LEG_BYTES), "member data past the leg");
                    prop_assert_eq!(m.sb.super_offset, SUPER_OFFSET_V1_2);
                    prop_assert!(m.sb.data_offset >= SUPER_OFFSET_V1_2 + m.sb.superblock_sectors());
                    prop_assert!(asm.events - m.sb.events <= 1);
                }
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(!text.is_empty());
            }
        }
        let after: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).expect("read")).collect();
        prop_assert!(before == after, "assembly changed a leg");
    }
}

/// A former member given back to a running array (`manage --re-add`) is
/// checked as at assembly: its crafted data_offset (0: the recovery would
/// overwrite its superblock) is refused with the leg and the field named,
/// and the leg is not written.
#[test]
fn a_re_added_leg_with_an_impossible_superblock_is_refused_and_not_written() {
    if !common::loopdev::needs_root("a_re_added_leg_with_an_impossible_superblock") {
        return;
    }
    let (legs, pristine) = created();
    let mnt = legs.mountpoint("mnt");
    let one = Legs::from_paths(vec![legs.path(0).to_owned()]);
    let m = MountedArray::mount(&one, &mnt, &["--run"]);
    let mut sb = pristine[1].clone();
    sb.data_offset = 0;
    write_sb(legs.path(1), &sb);
    let before = sha256_file(legs.path(1));
    let leg1 = legs.path(1).display().to_string();
    let o = mdfuse(&["manage", path_str(&mnt), "--re-add", &leg1]);
    let err = format!("{}{}", text(&o), m.log());
    assert!(!o.status.success(), "re-add accepted: {err}");
    assert!(err.contains(&leg1) && err.contains("data_offset"), "{err}");
    assert_eq!(
        sha256_file(legs.path(1)),
        before,
        "the refused leg was written"
    );
    assert!(m.mdstat().contains("[2/1] [U_]"), "{}", m.mdstat());
    m.stop();
}

/// A crafted bitmap file header is refused naming the file and the field,
/// and neither the file nor any leg changes.
#[test]
fn crafted_bitmap_headers_are_refused_by_file_and_field() {
    if !common::loopdev::needs_root("crafted_bitmap_headers_are_refused") {
        return;
    }
    use mdfuse::format::bitmap::BitmapSuper;
    let legs = Legs::temp(LEG_BYTES);
    let bitmap = legs.dir().join("md0.bitmap");
    create(&legs, &["--bitmap", path_str(&bitmap)]);
    let pristine = std::fs::read(&bitmap).expect("read bitmap");
    let header = BitmapSuper::parse(&pristine).expect("a valid header");
    let mnt = legs.mountpoint("mnt");
    type Edit = fn(&mut BitmapSuper);
    let cases: Vec<(&str, Edit)> = vec![
        ("chunksize", |h| h.chunksize = 0),
        ("chunksize", |h| h.chunksize = 3 << 20),
        ("version", |h| h.version = 9),
        ("daemon_sleep", |h| h.daemon_sleep = 0),
        ("write_behind", |h| h.write_behind = u32::MAX),
        ("sync_size", |h| h.sync_size += 8),
        // Far beyond the array (and the file): refused by that field
        // before the file is read.
        ("sync_size", |h| h.sync_size = 1 << 60),
        ("uuid", |h| h.uuid[0] ^= 1),
        ("nodes", |h| {
            h.version = 5;
            h.nodes = 2;
        }),
    ];
    let mut failures = Vec::new();
    for (field, edit) in cases {
        let mut h = header.clone();
        edit(&mut h);
        let mut file = pristine.clone();
        file[..256].copy_from_slice(&h.to_bytes());
        std::fs::write(&bitmap, &file).expect("write bitmap");
        let before = (fingerprints(&legs), sha256_file(&bitmap));
        let args = ["--bitmap-file-io", "--bitmap", path_str(&bitmap)];
        match MountedArray::try_mount(&legs, &mnt, &args) {
            Ok(m) => {
                drop(m);
                failures.push(format!("{field}: mounted"));
                continue;
            }
            Err(o) => {
                let err = text(&o);
                if !err.contains(&bitmap.display().to_string()) || !err.contains(field) {
                    failures.push(format!(
                        "{field}: the refusal does not name the file and field: {err}"
                    ));
                }
            }
        }
        if (fingerprints(&legs), sha256_file(&bitmap)) != before {
            failures.push(format!("{field}: a leg or the bitmap changed"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
