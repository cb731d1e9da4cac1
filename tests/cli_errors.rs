//! Bad input to the real `mdfuse` binary: each case fails with a message
//! naming the file and the cause, and changes nothing on the legs.

mod common;

use common::loopdev::{needs_root, run};
use common::mdfuse::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mdfuse-cli")
        .tempdir()
        .expect("tempdir")
}

/// sha256 of every leg that exists, to show a refusal changed nothing.
fn fingerprint(paths: &[PathBuf]) -> Vec<Option<String>> {
    paths
        .iter()
        .map(|p| p.exists().then(|| sha256_file(p)))
        .collect()
}

fn assert_unchanged(paths: &[PathBuf], before: &[Option<String>], what: &str) {
    assert_eq!(
        fingerprint(paths),
        before,
        "{what}: the refused command changed a leg"
    );
}

/// Asserts the command failed, and that stderr names every `needles`.
fn assert_refused(what: &str, o: &std::process::Output, needles: &[&str]) -> String {
    let err = assert_fails(what, o);
    for n in needles {
        assert!(
            err.contains(n),
            "{what}: stderr does not mention {n:?}:\n{err}"
        );
    }
    err
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn mount_args(legs: &[&Path], mnt: &Path, log: &Path) -> Vec<String> {
    let mut a = vec!["mount".to_string(), "--log".into(), s(log)];
    a.extend(legs.iter().map(|p| s(p)));
    a.push(s(mnt));
    a
}

fn mdfuse_owned(args: &[String]) -> std::process::Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    mdfuse(&refs)
}

#[test]
fn mount_with_a_missing_leg_names_it() {
    if !needs_root("mount_with_a_missing_leg_names_it") {
        return;
    }
    let dir = tempdir();
    let legs = Legs::new(dir.path(), 2, 32 * MIB);
    create(&legs, &[]);
    let missing = dir.path().join("no-such-leg.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let before = fingerprint(&legs.paths);
    let o = mdfuse_owned(&mount_args(
        &[legs.path(0), &missing],
        &mnt,
        &dir.path().join("log"),
    ));
    assert_refused("mount with a missing leg", &o, &[&s(&missing)]);
    let err = stderr(&o).to_lowercase();
    assert!(
        err.contains("no such file") || err.contains("not found") || err.contains("missing"),
        "cause not said: {err}"
    );
    assert!(!is_mounted(&mnt));
    assert_unchanged(&legs.paths, &before, "missing leg");
    // examine and create say the same.
    let o = mdfuse_with(&["examine"], &[&missing]);
    assert_refused("examine a missing leg", &o, &[&s(&missing)]);
    let blank = dir.path().join("blank.img");
    common::loopdev::sparse_file(&blank, 32 * MIB).unwrap();
    let o = mdfuse_with(&["create"], &[&blank, &missing]);
    assert_refused("create with a missing leg", &o, &[&s(&missing)]);
    assert_eq!(
        sha256_file(&blank),
        sha256_bytes(&vec![0u8; 32 * MIB as usize])
    );
    assert_unchanged(&legs.paths, &before, "create with a missing leg");
}

#[test]
fn mount_legs_of_two_different_arrays_is_refused() {
    if !needs_root("mount_legs_of_two_different_arrays_is_refused") {
        return;
    }
    let dir = tempdir();
    let a = Legs::new(&dir.path().join("a").tap_mkdir(), 2, 32 * MIB);
    let b = Legs::new(&dir.path().join("b").tap_mkdir(), 2, 32 * MIB);
    let ca = create(&a, &[]);
    let cb = create(&b, &[]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let all: Vec<PathBuf> = a.paths.iter().chain(&b.paths).cloned().collect();
    let before = fingerprint(&all);
    let o = mdfuse_owned(&mount_args(
        &[a.path(0), b.path(1)],
        &mnt,
        &dir.path().join("log"),
    ));
    let err = assert_refused(
        "mount legs of two arrays",
        &o,
        &[&s(b.path(1)), "two different arrays"],
    );
    assert!(err.contains(&ca.uuid) && err.contains(&cb.uuid), "{err}");
    assert!(!is_mounted(&mnt));
    assert_unchanged(&all, &before, "foreign leg");
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}
impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// Returns the tempdir and the corrupted leg.
fn corrupt_superblock_is_refused(
    byte_in_superblock: u64,
    cause: &str,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    let legs = Legs::new(dir.path(), 2, 32 * MIB);
    create(&legs, &[]);
    let bad = legs.path(1);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(bad)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 4096 + byte_in_superblock).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, 4096 + byte_in_superblock).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let before = fingerprint(&legs.paths);
    let o = mdfuse_owned(&mount_args(
        &[legs.path(0), bad],
        &mnt,
        &dir.path().join("log"),
    ));
    assert_refused("mount with a corrupt superblock", &o, &[&s(bad), cause]);
    assert!(!is_mounted(&mnt));
    assert_unchanged(&legs.paths, &before, cause);
    let bad = bad.to_owned();
    (dir, bad)
}

#[test]
fn mount_with_a_bad_magic_is_refused() {
    if !needs_root("mount_with_a_bad_magic_is_refused") {
        return;
    }
    let _ = corrupt_superblock_is_refused(0, "magic");
    // examine names the leg and the cause as well.
    let dir = tempdir();
    let leg = dir.path().join("zeros.img");
    common::loopdev::sparse_file(&leg, MIB).unwrap();
    let o = mdfuse_with(&["examine"], &[&leg]);
    assert_refused("examine a leg without superblock", &o, &[&s(&leg), "magic"]);
}

#[test]
fn mount_with_a_bad_checksum_is_refused() {
    if !needs_root("mount_with_a_bad_checksum_is_refused") {
        return;
    }
    // Byte 40 of the superblock: inside set_name, covered by the checksum.
    let (_dir, bad) = corrupt_superblock_is_refused(40, "checksum");
    // examine shows it as mdadm does: "Checksum : X - expected Y".
    let o = mdfuse_with(&["examine"], &[&bad]);
    let ours = examine_field(&stdout(&o), "Checksum").unwrap_or_default();
    let theirs = examine_field(&mdadm_examine(&bad), "Checksum").unwrap_or_default();
    assert!(ours.contains("expected"), "{}", stdout(&o));
    assert_eq!(ours, theirs);
}

#[test]
fn mount_on_a_missing_mountpoint_is_refused() {
    if !needs_root("mount_on_a_missing_mountpoint_is_refused") {
        return;
    }
    let dir = tempdir();
    let legs = Legs::new(dir.path(), 2, 32 * MIB);
    create(&legs, &[]);
    let before = fingerprint(&legs.paths);
    let mnt = dir.path().join("no-such-dir");
    let o = mdfuse_owned(&mount_args(
        &[legs.path(0), legs.path(1)],
        &mnt,
        &dir.path().join("log"),
    ));
    assert_refused(
        "mount on a missing mountpoint",
        &o,
        &[&s(&mnt), "does not exist"],
    );
    assert_unchanged(&legs.paths, &before, "missing mountpoint");
    // A regular file as mountpoint, too.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let o = mdfuse_owned(&mount_args(
        &[legs.path(0), legs.path(1)],
        &file,
        &dir.path().join("log"),
    ));
    assert_refused("mount on a file", &o, &[&s(&file)]);
    assert_unchanged(&legs.paths, &before, "file as mountpoint");
}

#[test]
fn legs_in_use_by_another_mdfuse_are_refused() {
    if !needs_root("legs_in_use_by_another_mdfuse_are_refused") {
        return;
    }
    let dir = tempdir();
    let legs = Legs::new(dir.path(), 2, 32 * MIB);
    create(&legs, &[]);
    let array = MountedArray::mount(&legs, &dir.path().join("mnt1"), &[]);
    let mnt2 = dir.path().join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let o = mdfuse_owned(&mount_args(
        &[legs.path(0), legs.path(1)],
        &mnt2,
        &dir.path().join("log2"),
    ));
    assert_refused(
        "second mount of the same legs",
        &o,
        &[&s(legs.path(0)), "in use by another mdfuse"],
    );
    assert!(!is_mounted(&mnt2));
    // create on running legs is refused too, even with --force.
    let o = mdfuse_with(&["create", "--force"], &[legs.path(0), legs.path(1)]);
    assert_refused("create on running legs", &o, &["in use by another mdfuse"]);
    // The first mount still serves.
    assert!(array.mdstat().contains("[UU]"));
    array.stop();
}

#[test]
fn create_over_a_superblock_needs_force() {
    if !needs_root("create_over_a_superblock_needs_force") {
        return;
    }
    let dir = tempdir();
    let legs = Legs::new(dir.path(), 2, 32 * MIB);
    let first = create(&legs, &["--name", "first"]);
    let before = fingerprint(&legs.paths);
    let o = try_create(&legs, &["--name", "second"]);
    assert_refused(
        "create over a superblock",
        &o,
        &[
            &s(legs.path(0)),
            "already carries an md superblock",
            "--force",
            &first.uuid,
        ],
    );
    assert_unchanged(&legs.paths, &before, "create without --force");
    let second = create(&legs, &["--name", "second", "--force"]);
    assert_ne!(first.uuid, second.uuid);
    let e = mdadm_examine(legs.path(1));
    assert_eq!(examine_field(&e, "Array UUID"), Some(second.uuid));
}

/// md superblocks of other versions (v0.90 and v1.0 near the end, where
/// md's MD_NEW_SIZE_SECTORS and super_1_load put them) and a v1.2 one whose
/// checksum is broken are somebody's array too: refused without --force.
#[test]
fn create_over_other_md_superblocks_is_refused() {
    if !needs_root("create_over_other_md_superblocks_is_refused") {
        return;
    }
    let dir = tempdir();
    let size = 32 * MIB + 12 * 1024;
    let sectors = size / 512;
    let cases = [
        (
            "v0.90",
            ((sectors & !127) - 128) * 512,
            "md v0.90 superblock",
        ),
        ("v1.0", ((sectors - 16) & !7) * 512, "md v1.0 superblock"),
        ("v1.2 with a bad checksum", 4096, "does not verify"),
    ];
    for (name, offset, needle) in cases {
        let legs = Legs::new(dir.path(), 2, size);
        let magic = [0xfcu8, 0x4e, 0x2b, 0xa9];
        std::fs::OpenOptions::new()
            .write(true)
            .open(legs.path(1))
            .unwrap()
            .write_all_at(&magic, offset)
            .unwrap();
        let before = fingerprint(&legs.paths);
        let o = try_create(&legs, &[]);
        assert_refused(name, &o, &[&s(legs.path(1)), needle, "--force"]);
        assert_unchanged(&legs.paths, &before, name);
        create(&legs, &["--force"]);
    }
}

#[test]
fn create_over_ext4_is_refused() {
    if !needs_root("create_over_ext4_is_refused") {
        return;
    }
    let dir = tempdir();
    let legs = Legs::new(dir.path(), 2, 32 * MIB);
    run("mkfs.ext4", &["-F", "-q", &s(legs.path(1))]).expect("mkfs.ext4");
    let before = fingerprint(&legs.paths);
    let o = try_create(&legs, &[]);
    assert_refused(
        "create over ext4",
        &o,
        &[&s(legs.path(1)), "ext4", "--force"],
    );
    assert_unchanged(&legs.paths, &before, "create over ext4");
}

#[test]
fn create_on_a_too_small_leg_is_refused() {
    if !needs_root("create_on_a_too_small_leg_is_refused") {
        return;
    }
    let dir = tempdir();
    let big = dir.path().join("big.img");
    let small = dir.path().join("small.img");
    sparse_file_or_panic(&big, 32 * MIB);
    sparse_file_or_panic(&small, 512 * 1024);
    let legs = Legs::from_paths(vec![big, small.clone()]);
    let before = fingerprint(&legs.paths);
    let o = try_create(&legs, &[]);
    assert_refused("create on a small leg", &o, &[&s(&small), "too small"]);
    assert_unchanged(&legs.paths, &before, "small leg");
}

fn sparse_file_or_panic(p: &Path, size: u64) {
    common::loopdev::sparse_file(p, size).unwrap();
}

#[test]
fn create_with_one_leg_is_refused() {
    if !needs_root("create_with_one_leg_is_refused") {
        return;
    }
    let dir = tempdir();
    let legs = Legs::new(dir.path(), 1, 32 * MIB);
    let before = fingerprint(&legs.paths);
    let o = try_create(&legs, &[]);
    assert_refused("create with one leg", &o, &["at least 2 legs"]);
    assert_unchanged(&legs.paths, &before, "one leg");
}

#[test]
fn the_same_leg_twice_is_named_as_such() {
    if !needs_root("the_same_leg_twice_is_named_as_such") {
        return;
    }
    let dir = tempdir();
    let legs = Legs::new(dir.path(), 2, 32 * MIB);
    let before = fingerprint(&legs.paths);
    let twice = Legs::from_paths(vec![legs.paths[0].clone(), legs.paths[0].clone()]);
    let o = try_create(&twice, &[]);
    let err = assert_refused("create with the same leg twice", &o, &["same leg"]);
    assert!(!err.contains("another mdfuse"), "{err}");
    assert_unchanged(&legs.paths, &before, "create with the same leg twice");
    create(&legs, &[]);
    let before = fingerprint(&legs.paths);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let o = mdfuse_owned(&mount_args(
        &[legs.path(0), legs.path(0)],
        &mnt,
        &dir.path().join("log"),
    ));
    let err = assert_refused("mount with the same leg twice", &o, &["same leg"]);
    assert!(!err.contains("another mdfuse"), "{err}");
    assert!(!is_mounted(&mnt));
    assert_unchanged(&legs.paths, &before, "mount with the same leg twice");
}

#[test]
fn stop_without_a_mount_is_refused() {
    if !needs_root("stop_without_a_mount_is_refused") {
        return;
    }
    let dir = tempdir();
    let o = mdfuse_with(&["stop"], &[dir.path()]);
    assert_refused(
        "stop on a plain directory",
        &o,
        &[&s(dir.path()), "no mdfuse array"],
    );
}

/// Relative leg and mountpoint paths work in detached mode (the daemon
/// runs elsewhere), with the current directory as their base.
#[test]
fn detached_mount_with_relative_paths() {
    if !needs_root("detached_mount_with_relative_paths") {
        return;
    }
    let dir = tempdir();
    let legs = Legs::new(dir.path(), 2, 32 * MIB);
    create(&legs, &[]);
    std::fs::create_dir(dir.path().join("m")).unwrap();
    let o = std::process::Command::new(bin())
        .current_dir(dir.path())
        .args(["mount", "--log", "rel.log", "leg0.img", "leg1.img", "m"])
        .output()
        .unwrap();
    assert_ok("mount with relative paths", &o);
    let mnt = dir.path().join("m");
    let mounted = is_mounted(&mnt);
    let o = mdfuse_with(&["stop"], &[&mnt]);
    assert!(mounted);
    assert_ok("stop", &o);
    assert!(dir.path().join("rel.log").exists());
}

/// An option's value is not a path, even when a file of that name exists
/// in the current directory.
#[test]
fn detached_mount_option_value_named_like_a_file() {
    if !needs_root("detached_mount_option_value_named_like_a_file") {
        return;
    }
    let dir = tempdir();
    let legs = Legs::new(dir.path(), 2, 32 * MIB);
    create(&legs, &[]);
    std::fs::create_dir(dir.path().join("m")).unwrap();
    std::fs::write(dir.path().join("4"), b"").unwrap();
    let mnt = dir.path().join("m");
    let o = std::process::Command::new(bin())
        .current_dir(dir.path())
        .args(["mount", "--threads", "4", "--log", "x.log"])
        .args(&legs.paths)
        .arg(&mnt)
        .output()
        .unwrap();
    let mounted = is_mounted(&mnt);
    if mounted {
        assert_ok("stop", &mdfuse_with(&["stop"], &[&mnt]));
    }
    assert_ok("mount --threads 4 with a file named 4 in the cwd", &o);
    assert!(mounted);
}

#[test]
fn create_with_bad_size_or_name_is_refused() {
    if !needs_root("create_with_bad_size_or_name_is_refused") {
        return;
    }
    let dir = tempdir();
    let legs = Legs::new(dir.path(), 2, 32 * MIB);
    let before = fingerprint(&legs.paths);
    let o = try_create(&legs, &["--size", "100G"]);
    assert_refused(
        "create --size 100G",
        &o,
        &["--size", "does not fit", "32505856"],
    );
    let o = try_create(&legs, &["--size", "12Q"]);
    assert_fails("create --size 12Q", &o);
    let long = "n".repeat(40);
    let o = try_create(&legs, &["--name", &long]);
    assert_refused("create with a 40-byte name", &o, &[&long, "at most 31"]);
    assert_unchanged(&legs.paths, &before, "bad size or name");
    // A size that is not a whole 4 KiB block is rounded down.
    let c = create(&legs, &["--size", "10000000"]);
    assert_eq!(c.array_bytes, 10_000_000 / 4096 * 4096);
}

#[test]
fn create_with_a_tiny_size_says_too_small() {
    if !needs_root("create_with_a_tiny_size_says_too_small") {
        return;
    }
    let dir = tempdir();
    let legs = Legs::new(dir.path(), 2, 32 * MIB);
    let before = fingerprint(&legs.paths);
    let o = try_create(&legs, &["--size", "1"]);
    let err = assert_refused("create --size 1", &o, &["--size"]);
    assert!(!err.contains("does not fit"), "{err}");
    assert!(err.contains("4096") || err.contains("4 KiB"), "{err}");
    assert_unchanged(&legs.paths, &before, "tiny size");
}
