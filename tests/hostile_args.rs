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

/// `mdfuse mount` with its descriptor limit set to `soft`:`hard` (as
/// `prlimit --nofile` would).
fn mount_with_fd_limit(args: &[&str], soft: u64, hard: u64) -> Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run mdfuse")
}

/// `--threads` has bounds (1 to 256), and a descriptor limit too low for
/// the threads is refused before anything is mounted: with `--threads
/// 100000`, or 120 under `ulimit -n 100`, mdfuse said the array was live,
/// then the daemon died of EMFILE making its threads and left a dead mount.
/// A soft limit below the hard one is raised instead.
#[test]
fn threads_beyond_what_can_start_are_refused_before_the_mount() {
    if !needs_root("threads_beyond_what_can_start_are_refused_before_the_mount") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    create(&legs, &[]);
    let mnt = legs.mountpoint("mnt");
    for bad in ["100000", "0", "257", "-3", "lots"] {
        let opt = format!("--threads={bad}");
        mount_refused(
            &format!("mount {opt}"),
            &legs,
            &mnt,
            &[&opt],
            &legs.paths,
            &["--threads", bad, "256"],
        );
    }
    let log = log_path(&mnt);
    let mut args = vec!["mount", "--threads", "120", "--log", path_str(&log)];
    args.extend(legs.paths.iter().map(|p| path_str(p)));
    args.push(path_str(&mnt));
    let before = fingerprint(&legs.paths);
    let o = mount_with_fd_limit(&args, 100, 100);
    let mounted = is_mounted(&mnt);
    if mounted {
        let _ = mdfuse_with(&["stop"], &[&mnt]);
    }
    assert_refused(
        "mount --threads 120 under ulimit -n 100",
        &o,
        &["--threads 120", "file descriptors", "100"],
    );
    assert!(!mounted, "mounted under a limit too low for its threads");
    assert_eq!(fingerprint(&legs.paths), before);
    // The same with room in the hard limit: raised, mounted, serving.
    let o = mount_with_fd_limit(&args, 100, 4096);
    assert_ok("mount --threads 120 under a soft limit of 100", &o);
    let limits = daemons_for(&mnt)
        .first()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/limits")).ok());
    let stopped = mdfuse_with(&["stop"], &[&mnt]);
    let limits = limits.expect("the daemon's limits");
    assert_ok("stop", &stopped);
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && !l.contains(" 100 ")),
        "{limits}"
    );
}

/// One write of exactly `bytes` to `MNT/md/REL`; the errno if refused.
fn write_raw(mnt: &Path, rel: &str, bytes: &[u8]) -> Result<(), i32> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("md").join(rel))
        .map_err(|e| e.raw_os_error().unwrap_or(0))?;
    match f.write(bytes) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(n) => panic!("md/{rel}: short write {n} of {}", bytes.len()),
        Err(e) => Err(e.raw_os_error().unwrap_or(0)),
    }
}

/// The control files take what md's sysfs takes, no more: a word with one
/// optional trailing newline (md.c's cmd_match: `frozen\n\n` is refused,
/// and so are blanks around it), numbers as kstrtouint reads them (`+5`
/// yes, ` 5` no, past 32 bits ERANGE), `system` as md's 6-byte compare,
/// safe_mode_delay as strict_strtoul_scaled. Before, every value was
/// trimmed of all blanks and newlines and `frozen\n\n` froze the array.
#[test]
fn control_files_take_what_md_takes() {
    if !needs_root("control_files_take_what_md_takes") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    create(&legs, &[]);
    let array = MountedArray::mount(&legs, &legs.mountpoint("mnt"), &[]);
    let mnt = array.mountpoint().to_path_buf();
    let md = |rel: &str| array.md(rel);
    let einval = Err(libc::EINVAL);
    for bad in [
        &b"frozen\n\n"[..],
        b" frozen",
        b"frozen ",
        b"frozen\t",
        b"\nfrozen",
        b"Frozen",
        b"frozen\0",
        b"frozen\r\n",
    ] {
        assert_eq!(write_raw(&mnt, "sync_action", bad), einval, "{bad:?}");
        assert_eq!(md("sync_action"), "idle", "{bad:?} changed sync_action");
    }
    assert_eq!(write_raw(&mnt, "sync_action", b"frozen"), Ok(()));
    assert_eq!(md("sync_action"), "frozen");
    assert_eq!(write_raw(&mnt, "sync_action", b"idle\n"), Ok(()));
    assert_eq!(md("sync_action"), "idle");

    let leg0 = legs.path(0).file_name().unwrap().to_str().unwrap();
    let state = format!("dev-{leg0}/state");
    for bad in [&b"faulty\n\n"[..], b"faulty ", b" faulty"] {
        assert_eq!(write_raw(&mnt, &state, bad), einval, "{bad:?}");
        assert_eq!(md(&state), "in_sync", "{bad:?} failed the leg");
    }

    for (value, shown) in [
        (&b"+5000"[..], "5000 (local)"),
        (b"007\n", "7 (local)"),
        // md compares the first 6 bytes with "system".
        (b"systemwide", "1000 (system)"),
        (b"4294967295", "4294967295 (local)"),
    ] {
        assert_eq!(
            write_raw(&mnt, "sync_speed_min", value),
            Ok(()),
            "{value:?}"
        );
        assert_eq!(md("sync_speed_min"), shown, "{value:?}");
    }
    for (bad, errno) in [
        (&b"5\n\n"[..], libc::EINVAL),
        (b" 5", libc::EINVAL),
        (b"5 ", libc::EINVAL),
        (b"0", libc::EINVAL),
        (b"-5", libc::EINVAL),
        (b"4294967296", libc::ERANGE),
    ] {
        assert_eq!(
            write_raw(&mnt, "sync_speed_min", bad),
            Err(errno),
            "{bad:?}"
        );
    }
    assert_eq!(md("sync_speed_min"), "4294967295 (local)");

    assert_eq!(write_raw(&mnt, "max_read_errors", b"2147483647\n"), Ok(()));
    assert_eq!(md("max_read_errors"), "2147483647");
    for bad in [&b"2147483648"[..], b"20\n\n", b" 20"] {
        assert_eq!(write_raw(&mnt, "max_read_errors", bad), einval, "{bad:?}");
    }
    assert_eq!(md("max_read_errors"), "2147483647");

    for (value, shown) in [
        (&b"0.5\n"[..], "0.500"),
        (b"2.0005", "2.000"),
        (b".", "0.000"),
    ] {
        assert_eq!(
            write_raw(&mnt, "safe_mode_delay", value),
            Ok(()),
            "{value:?}"
        );
        assert_eq!(md("safe_mode_delay"), shown, "{value:?}");
    }
    for bad in [
        &b"0.2\n\n"[..],
        b"+1",
        b" 1",
        b"1.2.3",
        b"17179.870",
        b"1e3",
    ] {
        assert_eq!(write_raw(&mnt, "safe_mode_delay", bad), einval, "{bad:?}");
    }
    assert_eq!(md("safe_mode_delay"), "0.000");
    array.stop();
}

/// An array whose name holds a newline, on a leg whose file name holds one
/// too: mdstat shows as many lines as any array's, `md/` has no entry with
/// a newline (and `mdfuse manage` still finds the leg), and every line of
/// the log and of mount's answer is one record. Names are printed escaped
/// (`\x0a`), as systemd and udev print them.
#[test]
fn names_with_newlines_cannot_forge_lines() {
    if !needs_root("names_with_newlines_cannot_forge_lines") {
        return;
    }
    let dir = tempdir("mdfuse-names");
    let plain = Legs::new(dir.path(), 2, 32 * MIB);
    create(&plain, &[]);
    let evil_leg = dir.path().join("l\nmd9 : x[7].img");
    std::fs::rename(plain.path(1), &evil_leg).unwrap();
    let legs = Legs::from_paths(vec![plain.path(0).to_owned(), evil_leg.clone()]);
    let name = "a\nmd9 : active raid1 x[0]";
    create(&legs, &["--force", "--name", name]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let array = match MountedArray::try_mount(&legs, &mnt, &[]) {
        Ok(a) => a,
        Err(o) => panic!("mount: {}", text(&o)),
    };
    let mdstat = array.mdstat();
    // Personalities, the array, its blocks, a blank line, unused devices.
    assert_eq!(mdstat.lines().count(), 5, "{mdstat}");
    assert!(
        mdstat.contains("a\\x0amd9 : active raid1 x[0] : active raid1 l\\x0amd9 : x[7].img[1]"),
        "{mdstat}"
    );
    let entries: Vec<String> = std::fs::read_dir(mnt.join("md"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        entries.iter().all(|e| !e.contains('\n')),
        "md/ entries: {entries:?}"
    );
    assert!(
        entries.contains(&"dev-l\\x0amd9 : x[7].img".to_string()),
        "{entries:?}"
    );
    assert_eq!(array.md("dev-l\\x0amd9 : x[7].img/state"), "in_sync");
    // manage names the leg by its path and finds its escaped entry.
    let o = mdfuse_with(&["manage"], &[&mnt]);
    assert_fails("manage without an operation", &o);
    let o = mdfuse(&["manage", path_str(&mnt), "--fail", path_str(&evil_leg)]);
    assert_ok("manage --fail the leg with a newline", &o);
    assert_eq!(array.md("dev-l\\x0amd9 : x[7].img/state"), "faulty");
    let log_text = array.log();
    array.stop();
    for line in log_text.lines() {
        assert!(
            line.starts_with('[') || line.starts_with("mdfuse: "),
            "a log line that is not a record:\n{line:?}\nlog:\n{log_text}"
        );
    }
    assert!(log_text.contains("a\\x0amd9"), "{log_text}");
}

/// Two arrays mounted at `/…/a_b` and `/…/a/b` get their own pid and log
/// files, named as `systemd-escape --path` names the mountpoints (before,
/// both were `…_a_b`: the second daemon overwrote the first's pid file and
/// the two shared a log, and `mdfuse stop` of one waited for the other).
#[test]
fn mountpoints_that_differ_only_by_slash_or_underscore_have_their_own_files() {
    if !needs_root("mountpoints_that_differ_only_by_slash_or_underscore_have_their_own_files") {
        return;
    }
    let dir = tempdir("mdfuse-names");
    for d in ["1", "2"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    let one = Legs::new(&dir.path().join("1"), 2, 32 * MIB);
    let two = Legs::new(&dir.path().join("2"), 2, 32 * MIB);
    create(&one, &[]);
    create(&two, &[]);
    let a_b = dir.path().join("a_b");
    let a_slash_b = dir.path().join("a").join("b");
    std::fs::create_dir_all(&a_b).unwrap();
    std::fs::create_dir_all(&a_slash_b).unwrap();
    // The default log: no --log.
    let mount = |legs: &Legs, mnt: &Path| {
        let mut args = vec!["mount"];
        args.extend(legs.paths.iter().map(|p| path_str(p)));
        args.push(path_str(mnt));
        mdfuse(&args)
    };
    let escaped = |mnt: &Path| {
        let o = std::process::Command::new("systemd-escape")
            .arg("--path")
            .arg(mnt)
            .output()
            .expect("systemd-escape");
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let o1 = mount(&one, &a_b);
    let o2 = mount(&two, &a_slash_b);
    let files = |mnt: &Path| {
        let name = escaped(mnt);
        (
            PathBuf::from(format!("/run/mdfuse/{name}.pid")),
            PathBuf::from(format!("/run/mdfuse/{name}.log")),
        )
    };
    let (pid1, log1) = files(&a_b);
    let (pid2, log2) = files(&a_slash_b);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (p1, p2) = (read(&pid1), read(&pid2));
    let daemons = (daemons_for(&a_b), daemons_for(&a_slash_b));
    let s1 = mdfuse_with(&["stop"], &[&a_b]);
    let s2 = mdfuse_with(&["stop"], &[&a_slash_b]);
    let (l1, l2) = (read(&log1), read(&log2));
    for f in [&log1, &log2] {
        let _ = std::fs::remove_file(f);
    }
    assert_ok("mount at a_b", &o1);
    assert_ok("mount at a/b", &o2);
    assert_ok("stop a_b", &s1);
    assert_ok("stop a/b", &s2);
    assert_ne!(pid1, pid2);
    assert_eq!(
        p1.trim(),
        daemons.0.first().map(|p| p.to_string()).unwrap_or_default()
    );
    assert_eq!(
        p2.trim(),
        daemons.1.first().map(|p| p.to_string()).unwrap_or_default()
    );
    assert!(
        l1.contains(path_str(&a_b)) && !l1.contains(path_str(&a_slash_b)),
        "{l1}"
    );
    assert!(l2.contains(path_str(&a_slash_b)), "{l2}");
    assert!(
        !pid1.exists() && !pid2.exists(),
        "a pid file outlived its daemon"
    );
    // stdout names the log it wrote.
    assert!(stdout(&o1).contains(path_str(&log1)), "{}", stdout(&o1));
}

/// The daemon keeps nothing of its caller: a descriptor the caller holds (a
/// `flock 9` around the mount, as scripts do) is not inherited, so the lock
/// is free once `mdfuse mount` returns; the daemon's directory is `/` and
/// its umask 022 whatever the caller's (077 here).
#[test]
fn the_daemon_keeps_no_descriptor_directory_or_umask_of_its_caller() {
    if !needs_root("the_daemon_keeps_no_descriptor_directory_or_umask_of_its_caller") {
        return;
    }
    use std::os::unix::io::AsRawFd;
    use std::os::unix::process::CommandExt;
    let legs = Legs::temp(32 * MIB);
    create(&legs, &[]);
    let mnt = legs.mountpoint("mnt");
    let lock_path = legs.dir().join("caller.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let fd = lock.as_raw_fd();
    let mut cmd = std::process::Command::new(bin());
    cmd.current_dir(legs.dir())
        .args(["mount", "--log", path_str(&log_path(&mnt))])
        .args(&legs.paths)
        .arg(&mnt);
    // SAFETY: dup2 and umask are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // As `flock 9 mdfuse mount ...`: fd 9, not close-on-exec.
            if libc::dup2(fd, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::umask(0o077);
            Ok(())
        });
    }
    let o = cmd.output().expect("run mdfuse mount");
    drop(lock);
    let pid = daemons_for(&mnt).first().copied();
    // Another test's child, forked from this process at the same moment,
    // holds every descriptor of it until its exec: look for a while.
    let free = poll(std::time::Duration::from_secs(3), || {
        let again = std::fs::File::open(&lock_path).unwrap();
        // SAFETY: as above.
        unsafe { libc::flock(again.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    });
    let cwd = pid.and_then(|p| std::fs::read_link(format!("/proc/{p}/cwd")).ok());
    let status = pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .unwrap_or_default();
    let fds: Vec<PathBuf> = pid
        .and_then(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    let stopped = mdfuse_with(&["stop"], &[&mnt]);
    assert_ok("mount", &o);
    assert_ok("stop", &stopped);
    assert!(pid.is_some(), "no daemon found for {}", mnt.display());
    assert!(
        free,
        "the caller's lock is still held by the daemon; its descriptors: {fds:?}"
    );
    assert!(!fds.contains(&lock_path), "{fds:?}");
    assert_eq!(
        cwd.as_deref(),
        Some(Path::new("/")),
        "the daemon's directory"
    );
    assert!(
        status.lines().any(|l| l == "Umask:\t0022"),
        "the daemon's umask:\n{status}"
    );
}

/// SIGTERM sent to the daemon as soon as it exists, again and again: each
/// time the start ends cleanly (a clear refusal, or a mount that is live and
/// then stops), never a daemon killed by the signal's default action that
/// leaves a dead mount or its parent saying only that it "ended"; the legs
/// are free and clean after each round. Stop signals are blocked from the
/// daemon's exec until its handlers are installed, before the assembly.
#[test]
fn sigterm_during_the_start_stops_it_cleanly() {
    if !needs_root("sigterm_during_the_start_stops_it_cleanly") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    create(&legs, &[]);
    let mnt = legs.mountpoint("mnt");
    let log = log_path(&mnt);
    let mut killed_by_signal = Vec::new();
    for round in 0..10 {
        let mut child = std::process::Command::new(bin())
            .args(["mount", "--log", path_str(&log)])
            .args(&legs.paths)
            .arg(&mnt)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn mdfuse mount");
        // The daemon: the child of the parent we spawned, once it runs
        // mdfuse (its exec done: between fork and exec it is std's).
        let parent = child.id() as i32;
        let mut daemon = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while daemon.is_none() && std::time::Instant::now() < deadline {
            daemon = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse::<i32>().ok())
                .filter(|d| {
                    std::fs::read(format!("/proc/{d}/cmdline"))
                        .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"--foreground"))
                });
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
        }
        if let Some(d) = daemon {
            signal(d, libc::SIGTERM);
        }
        let out = child.wait_with_output().expect("wait mdfuse mount");
        if out.status.success() {
            // It was live before the signal: the signal stops it.
            if let Some(d) = daemon {
                wait_pid_gone(d, std::time::Duration::from_secs(20));
            }
        }
        if is_mounted(&mnt) {
            let _ = mdfuse_with(&["stop"], &[&mnt]);
        }
        let err = stderr(&out);
        if err.contains("ended before the mount was live") {
            killed_by_signal.push(format!("round {round}: {err}"));
        }
        if let Some(d) = daemon {
            assert!(
                wait_pid_gone(d, std::time::Duration::from_secs(20)),
                "round {round}: daemon {d} still runs"
            );
        }
        assert!(!is_mounted(&mnt), "round {round}: a mount is left");
        assert_stopped_clean(&legs.paths, None);
    }
    assert!(
        killed_by_signal.is_empty(),
        "daemons killed by SIGTERM during the start:\n{}",
        killed_by_signal.join("\n")
    );
}
