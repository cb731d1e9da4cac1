//! Our md v1.2 superblocks against the real `mdadm` (4.2) and the kernel-made fixtures.
//!
//! Needs the `mdadm` and `zstd` commands. Legs are sparse files in a temporary directory
//! (removed on drop, also when a test fails); no devices are touched.

use mdfuse::format::superblock::{
    mdadm_default_data_offset, mdadm_raid1_array_sectors, DevRole, MdTime, NewMember, Superblock,
    SuperblockError, Unverified, SB_BLOCK_BYTES,
};
use mdfuse::report::examine::{format_uuid, render_examine};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const LEG_BYTES: u64 = 64 << 20;
const LEG_SECTORS: u64 = LEG_BYTES / 512;
const SUPER_OFFSET_BYTES: u64 = 4096;

fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/kernel-md"
    ))
}

/// 16 bytes that differ per call and per run (splitmix64 over time, pid and a seed).
fn uuid_like(seed: u64) -> [u8; 16] {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    let mut state = nanos ^ (u64::from(std::process::id()) << 32) ^ seed.wrapping_mul(0x9e37);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&next().to_le_bytes());
    out[8..].copy_from_slice(&next().to_le_bytes());
    out
}

/// `mdadm --examine PATH` in UTC (our rendering prints UTC), as (exit ok, stdout).
fn mdadm_examine(path: &Path, homehost: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("mdadm");
    cmd.env("TZ", "UTC").arg("--examine");
    if let Some(host) = homehost {
        cmd.arg(format!("--homehost={host}"));
    }
    let out = cmd
        .arg(path)
        .output()
        .expect("run mdadm (is it installed?)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn field<'a>(examine: &'a str, name: &str) -> Option<&'a str> {
    examine.lines().find_map(|line| {
        let (key, value) = line.split_once(" : ")?;
        (key.trim() == name).then_some(value)
    })
}

fn write_leg(path: &Path, sb: &Superblock) {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .expect("create leg file");
    file.set_len(LEG_BYTES).expect("size leg file");
    file.seek(SeekFrom::Start(SUPER_OFFSET_BYTES)).unwrap();
    file.write_all(&sb.to_bytes()).expect("write superblock");
    file.sync_all().unwrap();
}

fn read_superblock_block(path: &Path) -> Vec<u8> {
    let mut file = File::open(path).expect("open leg");
    file.seek(SeekFrom::Start(SUPER_OFFSET_BYTES)).unwrap();
    let mut block = vec![0u8; SB_BLOCK_BYTES];
    file.read_exact(&mut block).expect("read superblock");
    block
}

struct CreatedPair {
    _dir: tempfile::TempDir,
    legs: [PathBuf; 2],
    sbs: [Superblock; 2],
}

fn create_pair() -> CreatedPair {
    let dir = tempfile::tempdir().expect("tempdir");
    let set_uuid = uuid_like(1);
    let data_offset = mdadm_default_data_offset(LEG_SECTORS);
    let array_sectors = mdadm_raid1_array_sectors(LEG_SECTORS, data_offset);
    let ctime = MdTime::from_parts(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        0,
    );
    let make = |dev_number: u32| {
        Superblock::new_raid1_member(&NewMember {
            set_uuid,
            name: "mdfuse-test",
            raid_disks: 2,
            dev_number,
            device_uuid: uuid_like(10 + u64::from(dev_number)),
            device_sectors: LEG_SECTORS,
            array_sectors,
            data_offset: Some(data_offset),
            ctime,
        })
        .expect("valid member")
    };
    let sbs = [make(0), make(1)];
    let legs = [dir.path().join("leg0.img"), dir.path().join("leg1.img")];
    for (leg, sb) in legs.iter().zip(&sbs) {
        write_leg(leg, sb);
    }
    CreatedPair {
        _dir: dir,
        legs,
        sbs,
    }
}

#[test]
fn mdadm_examines_our_legs_as_we_do() {
    let pair = create_pair();
    assert_eq!(
        pair.sbs[0].data_offset, 2048,
        "64 MiB leg: mdadm uses 1 MiB"
    );
    assert_eq!(pair.sbs[0].size, 129024);
    for (slot, (leg, sb)) in pair.legs.iter().zip(&pair.sbs).enumerate() {
        let (ok, text) = mdadm_examine(leg, None);
        assert!(ok, "mdadm --examine failed on {}:\n{text}", leg.display());
        assert_eq!(field(&text, "Magic"), Some("a92b4efc"));
        assert_eq!(field(&text, "Version"), Some("1.2"));
        assert_eq!(field(&text, "Feature Map"), Some("0x0"));
        assert_eq!(field(&text, "Raid Level"), Some("raid1"));
        assert_eq!(field(&text, "Raid Devices"), Some("2"));
        let uuid = format_uuid(&sb.set_uuid);
        assert_eq!(field(&text, "Array UUID"), Some(uuid.as_str()));
        assert_eq!(field(&text, "Name"), Some("mdfuse-test"));
        assert_eq!(field(&text, "Data Offset"), Some("2048 sectors"));
        assert_eq!(field(&text, "Super Offset"), Some("8 sectors"));
        assert_eq!(field(&text, "State"), Some("clean"));
        assert_eq!(field(&text, "Events"), Some("0"));
        let checksum = format!("{:x} - correct", sb.checksum());
        assert_eq!(field(&text, "Checksum"), Some(checksum.as_str()));
        let role = format!("Active device {slot}");
        assert_eq!(field(&text, "Device Role"), Some(role.as_str()));
        assert!(field(&text, "Array State").unwrap_or("").starts_with("AA "));
        // And our renderer prints exactly what mdadm printed.
        let label = leg.display().to_string();
        let ours = render_examine(
            &label,
            &Unverified::from_verified(sb.clone()),
            LEG_SECTORS,
            None,
        );
        assert_eq!(ours, text, "our examine differs from mdadm's");
    }
}

#[test]
fn mdadm_and_we_both_reject_a_broken_checksum() {
    let pair = create_pair();
    let leg = &pair.legs[1];
    let mut block = read_superblock_block(leg);
    block[200] ^= 0x04; // events, without updating sb_csum
    let mut file = OpenOptions::new().write(true).open(leg).unwrap();
    file.seek(SeekFrom::Start(SUPER_OFFSET_BYTES)).unwrap();
    file.write_all(&block).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let (_, text) = mdadm_examine(leg, None);
    let checksum = field(&text, "Checksum").unwrap_or_else(|| panic!("no checksum:\n{text}"));
    assert!(
        checksum.contains(" - expected ") && !checksum.contains("correct"),
        "mdadm accepted the broken checksum: {checksum}"
    );
    let err = Superblock::parse(&block).unwrap_err();
    assert!(matches!(err, SuperblockError::BadChecksum { .. }), "{err}");
    let parsed = Superblock::parse_unverified(&block).unwrap();
    let ours = render_examine(&leg.display().to_string(), &parsed, LEG_SECTORS, None);
    assert_eq!(ours, text);
    // The intact leg still passes.
    let (_, text0) = mdadm_examine(&pair.legs[0], None);
    assert!(field(&text0, "Checksum")
        .unwrap_or("")
        .ends_with(" - correct"));
}

/// Values of the "final on-disk state: mdadm -E /dev/vdX" section of a MANIFEST.
fn manifest_examine(set: &str, device: &str) -> String {
    let text =
        std::fs::read_to_string(fixtures_dir().join(set).join("MANIFEST")).expect("read MANIFEST");
    let header = format!("== final on-disk state: mdadm -E {device} ");
    let start = text.find(&header).expect("examine section in MANIFEST");
    let body = &text[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let end = body.find("\n==").unwrap_or(body.len());
    body[..end].to_string()
}

struct FixtureLeg {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sb: Superblock,
}

fn fixture_leg(set: &str, leg: &str) -> FixtureLeg {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{leg}.img"));
    let source = fixtures_dir().join(set).join(format!("{leg}.img.zst"));
    let status = Command::new("zstd")
        .arg("-q")
        .arg("-d")
        .arg(&source)
        .arg("-o")
        .arg(&path)
        .status()
        .expect("run zstd");
    assert!(status.success(), "zstd -d {}", source.display());
    let sb = Superblock::parse(&read_superblock_block(&path)).expect("fixture parses");
    FixtureLeg {
        _dir: dir,
        path,
        sb,
    }
}

#[test]
fn fixtures_match_their_manifest_and_mdadm() {
    for set in ["a-clean", "b-degraded-dirty"] {
        for (leg, device) in [("leg0", "/dev/vda"), ("leg1", "/dev/vdb")] {
            let fx = fixture_leg(set, leg);
            let manifest = manifest_examine(set, device);
            let uuid = format_uuid(&fx.sb.set_uuid);
            assert_eq!(field(&manifest, "Array UUID"), Some(uuid.as_str()));
            let dev_uuid = format_uuid(&fx.sb.device_uuid);
            assert_eq!(field(&manifest, "Device UUID"), Some(dev_uuid.as_str()));
            let events = fx.sb.events.to_string();
            assert_eq!(field(&manifest, "Events"), Some(events.as_str()));
            let offset = format!("{} sectors", fx.sb.data_offset);
            assert_eq!(field(&manifest, "Data Offset"), Some(offset.as_str()));
            assert_eq!(fx.sb.is_clean(), field(&manifest, "State") == Some("clean"));
            let role = match fx.sb.own_role() {
                DevRole::Active(n) => format!("Active device {n}"),
                other => panic!("{set} {leg}: unexpected role {other:?}"),
            };
            assert_eq!(field(&manifest, "Device Role"), Some(role.as_str()));

            // The local mdadm agrees with our rendering (times in UTC).
            let (ok, text) = mdadm_examine(&fx.path, Some("kmdrig"));
            assert!(ok);
            let label = fx.path.display().to_string();
            let ours = render_examine(
                &label,
                &Unverified::from_verified(fx.sb.clone()),
                32 << 11,
                Some("kmdrig"),
            );
            assert_eq!(ours, text, "{set} {leg}");
        }
    }

    // b-degraded-dirty: leg1 was failed and removed while the array ran. md stopped
    // writing leg1's superblock at that point, so it still says events 2 and both slots
    // active; leg0 went on (events 7) and, after the removal, records slot 1 as empty
    // (role spare, 0xffff, not faulty).
    let leg0 = fixture_leg("b-degraded-dirty", "leg0").sb;
    let leg1 = fixture_leg("b-degraded-dirty", "leg1").sb;
    assert_eq!(leg0.events, 7);
    assert_eq!(leg1.events, 2);
    assert_eq!(leg0.role_of(0), DevRole::Active(0));
    assert_eq!(leg0.role_of(1), DevRole::Spare);
    assert_eq!(leg1.role_of(0), DevRole::Active(0));
    assert_eq!(leg1.role_of(1), DevRole::Active(1));
    assert_eq!(leg0.set_uuid, leg1.set_uuid);
    assert!(leg0.is_clean() && leg1.is_clean());
    let a0 = fixture_leg("a-clean", "leg0").sb;
    let a1 = fixture_leg("a-clean", "leg1").sb;
    assert_eq!((a0.events, a1.events), (2, 2));
    assert_eq!(a0.dev_roles()[..2], [0, 1]);
    assert_eq!(a1.dev_roles(), a0.dev_roles());
}
