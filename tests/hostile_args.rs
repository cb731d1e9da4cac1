//! Hostile arguments, names and callers (issue 13): each is refused with a
//! clear error naming the argument, before anything is mounted or written,
//! and nothing panics; names cannot forge lines; the daemon keeps nothing of
//! its caller's.

mod common;

use common::loopdev::needs_root;
use common::mdfuse::*;
use std::path::{Path, PathBuf};
use std::process::Output;

const MIB: u64 = 1 << 20;

/// sha256 of every file of `paths`, to show a refusal changed nothing.
fn fingerprint(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| sha256_file(p)).collect()
}

/// Asserts `o` failed without a panic and its stderr names every `needles`;
/// returns the stderr.
fn assert_refused(what: &str, o: &Output, needles: &[&str]) -> String {
    let err = assert_fails(what, o);
    assert!(
        !err.contains("panicked") && !err.contains("ended before the mount was live"),
        "{what}: not a clear refusal:\n{err}"
    );
    for n in needles {
        assert!(
            err.contains(n),
            "{what}: stderr does not name {n:?}:\n{err}"
        );
    }
    err
}

/// `mdfuse mount --log LOG EXTRA LEGS MNT` must be refused naming
/// `needles`, with nothing mounted and none of `watched` changed.
fn mount_refused(
    what: &str,
    legs: &Legs,
    mnt: &Path,
    extra: &[&str],
    watched: &[PathBuf],
    needles: &[&str],
) -> String {
    let before = fingerprint(watched);
    let log = log_path(mnt);
    let mut args = vec!["mount", "--log", path_str(&log)];
    args.extend_from_slice(extra);
    args.extend(legs.paths.iter().map(|p| path_str(p)));
    args.push(path_str(mnt));
    let o = mdfuse(&args);
    let mounted = is_mounted(mnt);
    if mounted {
        let _ = mdfuse_with(&["stop"], &[mnt]);
    }
    let err = assert_refused(what, &o, needles);
    assert!(!mounted, "{what}: {} was mounted", mnt.display());
    assert_eq!(
        fingerprint(watched),
        before,
        "{what}: the refused mount changed a leg or the bitmap"
    );
    err
}

/// Two 32 MiB legs made into an array with a bitmap file beside them.
fn legs_with_bitmap() -> (Legs, PathBuf) {
    let legs = Legs::temp(32 * MIB);
    let bitmap = legs.dir().join("array.bitmap");
    create(&legs, &["--bitmap", path_str(&bitmap)]);
    (legs, bitmap)
}

/// `--delay` must make a time: -1, NaN, inf, 0 and 1e300 are refused by
/// the parser, naming the option (they panicked in Duration::from_secs_f64
/// in the daemon, which the caller saw only as "ended before the mount was
/// live"). create's --delay 0 (a daemon_sleep md refuses) likewise.
#[test]
fn delay_that_is_not_a_time_is_refused() {
    if !needs_root("delay_that_is_not_a_time_is_refused") {
        return;
    }
    let (legs, bitmap) = legs_with_bitmap();
    let mnt = legs.mountpoint("mnt");
    let mut watched = legs.paths.clone();
    watched.push(bitmap.clone());
    for bad in ["-1", "NaN", "inf", "-inf", "0", "1e300", "five"] {
        let opt = format!("--delay={bad}");
        mount_refused(
            &format!("mount {opt}"),
            &legs,
            &mnt,
            &["--bitmap", path_str(&bitmap), "--bitmap-file-io", &opt],
            &watched,
            &["--delay", bad],
        );
    }
    // A good one still mounts.
    let array = MountedArray::mount(
        &legs,
        &mnt,
        &[
            "--bitmap",
            path_str(&bitmap),
            "--bitmap-file-io",
            "--delay=0.5",
        ],
    );
    array.stop();
    let fresh = Legs::temp(32 * MIB);
    let bm = fresh.dir().join("b.bitmap");
    let o = try_create(&fresh, &["--bitmap", path_str(&bm), "--delay", "0"]);
    assert_refused("create --delay 0", &o, &["--delay", "0"]);
    assert!(!bm.exists(), "create --delay 0 made a bitmap file");
}
