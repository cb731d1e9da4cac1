//! Bad input to the real `mdfuse` binary: each case fails with a message
//! naming the file and the cause, and changes nothing on the legs.

mod common;

use common::loopdev::{needs_root, run, sparse_file};
use common::mdfuse::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;

const MIB: u64 = 1 << 20;

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
fn assert_refused(what: &str, o: &Output, needles: &[&str]) -> String {
    let err = assert_fails(what, o);
    for n in needles {
        assert!(
            err.contains(n),
            "{what}: stderr does not mention {n:?}:\n{err}"
        );
    }
    err
}

/// Runs `refused` (a command that must fail naming `needles`) and asserts
/// it changed none of `watched`; returns its stderr.
fn refused_unchanged(
    what: &str,
    watched: &[PathBuf],
    needles: &[&str],
    refused: impl FnOnce() -> Output,
) -> String {
    let before = fingerprint(watched);
    let err = assert_refused(what, &refused(), needles);
    assert_unchanged(watched, &before, what);
    err
}

/// `mdfuse create EXTRA LEGS` must be refused naming `needles`, changing
/// no leg; returns its stderr.
fn create_refused(what: &str, legs: &Legs, extra: &[&str], needles: &[&str]) -> String {
    refused_unchanged(what, &legs.paths, needles, || try_create(legs, extra))
}

/// `mdfuse mount --log LOG LEGS MNT` (no mountpoint made for it) must be
/// refused naming `needles`, with nothing mounted and none of `watched`
/// changed; returns its stderr.
fn mount_refused(
    what: &str,
    legs: &[&Path],
    mnt: &Path,
    watched: &[PathBuf],
    needles: &[&str],
) -> String {
    let err = refused_unchanged(what, watched, needles, || {
        let log = log_path(mnt);
        let mut args = vec!["mount", "--log", path_str(&log)];
        args.extend(legs.iter().map(|p| path_str(p)));
        args.push(path_str(mnt));
        mdfuse(&args)
    });
    assert!(!is_mounted(mnt), "{what}: {} is mounted", mnt.display());
    err
}

/// `dir/name`, created (a mountpoint).
fn mkdir(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Two 32 MiB legs in a directory of their own, made into an array.
fn created_legs() -> (Legs, Created) {
    let legs = Legs::temp(32 * MIB);
    let created = create(&legs, &[]);
    (legs, created)
}

#[test]
fn mount_with_a_missing_leg_names_it() {
    if !needs_root("mount_with_a_missing_leg_names_it") {
        return;
    }
    let (legs, _) = created_legs();
    let dir = legs.dir();
    let missing = dir.join("no-such-leg.img");
    let mnt = mkdir(dir, "mnt");
    let missing_s = path_str(&missing);
    let err = mount_refused(
        "mount with a missing leg",
        &[legs.path(0), &missing],
        &mnt,
        &legs.paths,
        &[missing_s],
    )
    .to_lowercase();
    assert!(
        err.contains("no such file") || err.contains("not found") || err.contains("missing"),
        "cause not said: {err}"
    );
    // examine and create say the same.
    let o = mdfuse_with(&["examine"], &[&missing]);
    assert_refused("examine a missing leg", &o, &[missing_s]);
    let blank = dir.join("blank.img");
    sparse_file(&blank, 32 * MIB).unwrap();
    refused_unchanged(
        "create with a missing leg",
        &legs.paths,
        &[missing_s],
        || mdfuse_with(&["create"], &[&blank, &missing]),
    );
    assert_eq!(
        sha256_file(&blank),
        sha256_bytes(&vec![0u8; 32 * MIB as usize])
    );
}

#[test]
fn mount_legs_of_two_different_arrays_is_refused() {
    if !needs_root("mount_legs_of_two_different_arrays_is_refused") {
        return;
    }
    let (a, ca) = created_legs();
    let (b, cb) = created_legs();
    let all: Vec<PathBuf> = a.paths.iter().chain(&b.paths).cloned().collect();
    let err = mount_refused(
        "mount legs of two arrays",
        &[a.path(0), b.path(1)],
        &mkdir(a.dir(), "mnt"),
        &all,
        &[path_str(b.path(1)), "two different arrays"],
    );
    assert!(err.contains(&ca.uuid) && err.contains(&cb.uuid), "{err}");
}

/// Flips a byte of leg1's superblock; a mount is refused naming the leg and
/// `cause`. Returns the legs and the corrupted leg.
fn corrupt_superblock_is_refused(byte_in_superblock: u64, cause: &str) -> (Legs, PathBuf) {
    let (legs, _) = created_legs();
    let bad = legs.path(1).to_owned();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&bad)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 4096 + byte_in_superblock).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, 4096 + byte_in_superblock).unwrap();
    f.sync_all().unwrap();
    drop(f);
    mount_refused(
        "mount with a corrupt superblock",
        &[legs.path(0), &bad],
        &mkdir(legs.dir(), "mnt"),
        &legs.paths,
        &[path_str(&bad), cause],
    );
    (legs, bad)
}

#[test]
fn mount_with_a_bad_magic_is_refused() {
    if !needs_root("mount_with_a_bad_magic_is_refused") {
        return;
    }
    let _ = corrupt_superblock_is_refused(0, "magic");
    // examine names the leg and the cause as well.
    let dir = tempdir("mdfuse-cli");
    let leg = dir.path().join("zeros.img");
    sparse_file(&leg, MIB).unwrap();
    let o = mdfuse_with(&["examine"], &[&leg]);
    assert_refused(
        "examine a leg without superblock",
        &o,
        &[path_str(&leg), "magic"],
    );
}

#[test]
fn mount_with_a_bad_checksum_is_refused() {
    if !needs_root("mount_with_a_bad_checksum_is_refused") {
        return;
    }
    // Byte 40 of the superblock: inside set_name, covered by the checksum.
    let (_legs, bad) = corrupt_superblock_is_refused(40, "checksum");
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
    let (legs, _) = created_legs();
    let both = [legs.path(0), legs.path(1)];
    let mnt = legs.dir().join("no-such-dir");
    mount_refused(
        "mount on a missing mountpoint",
        &both,
        &mnt,
        &legs.paths,
        &[path_str(&mnt), "does not exist"],
    );
    // A regular file as mountpoint, too.
    let file = legs.dir().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    mount_refused(
        "mount on a file",
        &both,
        &file,
        &legs.paths,
        &[path_str(&file)],
    );
}

#[test]
fn legs_in_use_by_another_mdfuse_are_refused() {
    if !needs_root("legs_in_use_by_another_mdfuse_are_refused") {
        return;
    }
    let (legs, _) = created_legs();
    let array = MountedArray::mount(&legs, &legs.mountpoint("mnt1"), &[]);
    let o = mdfuse_with(
        &["mount", "--log", path_str(&legs.dir().join("log2"))],
        &[legs.path(0), legs.path(1), &mkdir(legs.dir(), "mnt2")],
    );
    assert_refused(
        "second mount of the same legs",
        &o,
        &[path_str(legs.path(0)), "in use by another mdfuse"],
    );
    assert!(!is_mounted(&legs.dir().join("mnt2")));
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
    let legs = Legs::temp(32 * MIB);
    let first = create(&legs, &["--name", "first"]);
    create_refused(
        "create over a superblock",
        &legs,
        &["--name", "second"],
        &[
            path_str(legs.path(0)),
            "already carries an md superblock",
            "--force",
            &first.uuid,
        ],
    );
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
    let dir = tempdir("mdfuse-cli");
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
        create_refused(
            name,
            &legs,
            &[],
            &[path_str(legs.path(1)), needle, "--force"],
        );
        create(&legs, &["--force"]);
    }
}

#[test]
fn create_over_ext4_is_refused() {
    if !needs_root("create_over_ext4_is_refused") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    run("mkfs.ext4", &["-F", "-q", path_str(legs.path(1))]).expect("mkfs.ext4");
    create_refused(
        "create over ext4",
        &legs,
        &[],
        &[path_str(legs.path(1)), "ext4", "--force"],
    );
}

#[test]
fn create_on_a_too_small_leg_is_refused() {
    if !needs_root("create_on_a_too_small_leg_is_refused") {
        return;
    }
    let dir = tempdir("mdfuse-cli");
    let big = dir.path().join("big.img");
    let small = dir.path().join("small.img");
    sparse_file(&big, 32 * MIB).unwrap();
    sparse_file(&small, 512 * 1024).unwrap();
    let legs = Legs::from_paths(vec![big, small.clone()]);
    create_refused(
        "create on a small leg",
        &legs,
        &[],
        &[path_str(&small), "too small"],
    );
}

#[test]
fn create_with_one_leg_is_refused() {
    if !needs_root("create_with_one_leg_is_refused") {
        return;
    }
    let dir = tempdir("mdfuse-cli");
    let legs = Legs::new(dir.path(), 1, 32 * MIB);
    create_refused("create with one leg", &legs, &[], &["at least 2 legs"]);
}

#[test]
fn the_same_leg_twice_is_named_as_such() {
    if !needs_root("the_same_leg_twice_is_named_as_such") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    let twice = Legs::from_paths(vec![legs.paths[0].clone(), legs.paths[0].clone()]);
    let err = refused_unchanged(
        "create with the same leg twice",
        &legs.paths,
        &["same leg"],
        || try_create(&twice, &[]),
    );
    assert!(!err.contains("another mdfuse"), "{err}");
    create(&legs, &[]);
    let err = mount_refused(
        "mount with the same leg twice",
        &[legs.path(0), legs.path(0)],
        &mkdir(legs.dir(), "mnt"),
        &legs.paths,
        &["same leg"],
    );
    assert!(!err.contains("another mdfuse"), "{err}");
}

#[test]
fn stop_without_a_mount_is_refused() {
    if !needs_root("stop_without_a_mount_is_refused") {
        return;
    }
    let dir = tempdir("mdfuse-cli");
    let o = mdfuse_with(&["stop"], &[dir.path()]);
    assert_refused(
        "stop on a plain directory",
        &o,
        &[path_str(dir.path()), "no mdfuse array"],
    );
}

/// Relative leg and mountpoint paths work in detached mode (the daemon
/// runs elsewhere), with the current directory as their base.
#[test]
fn detached_mount_with_relative_paths() {
    if !needs_root("detached_mount_with_relative_paths") {
        return;
    }
    let dir = tempdir("mdfuse-cli");
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
    let dir = tempdir("mdfuse-cli");
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
    let legs = Legs::temp(32 * MIB);
    create_refused(
        "create --size 100G",
        &legs,
        &["--size", "100G"],
        &["--size", "does not fit", "32505856"],
    );
    create_refused("create --size 12Q", &legs, &["--size", "12Q"], &[]);
    let long = "n".repeat(40);
    create_refused(
        "create with a 40-byte name",
        &legs,
        &["--name", &long],
        &[&long, "at most 31"],
    );
    // A size that is not a whole 4 KiB block is rounded down.
    let c = create(&legs, &["--size", "10000000"]);
    assert_eq!(c.array_bytes, 10_000_000 / 4096 * 4096);
}

#[test]
fn create_with_a_tiny_size_says_too_small() {
    if !needs_root("create_with_a_tiny_size_says_too_small") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    let err = create_refused("create --size 1", &legs, &["--size", "1"], &["--size"]);
    assert!(!err.contains("does not fit"), "{err}");
    assert!(err.contains("4096") || err.contains("4 KiB"), "{err}");
}
