//! `mount.mdfuse` driven by the real mount(8) and umount(8) (util-linux): `mount -t mdfuse`,
//! an fstab line (a temporary fstab with `mount -T FILE MNT`, and a line in the real
//! /etc/fstab, restored by a guard), refused options, `ro`.
//!
//! Each test installs /sbin/mount.mdfuse as a symlink to the built helper for its duration
//! ([`HelperInstall`], removed on drop) and holds a file lock meanwhile, so tests touching it
//! (in this binary or another) never overlap. The helper is told where `mdfuse` is by the
//! MDFUSE environment variable (mount(8) run by root passes its environment on).
//!
//! Needs root (mount, FUSE, a loop-backed ext4 for the bitmap file). Nothing is left behind:
//! each mount is a guard that unmounts and waits for its daemon, even on a failed assertion.

mod common;

use common::loopdev::{needs_root, ScratchFs};
use common::mdfuse::FSTAB;
use common::mdfuse::{
    assert_stopped_clean, create, daemons_for, data_offset, data_region, examine_field, is_mounted,
    mdadm_examine, path_str, pid_alive, sha256_file, text, transport_option, wait_pid_gone,
    FstabLine, Legs,
};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

const LEG_BYTES: u64 = 32 << 20;
const HELPER_LINK: &str = "/sbin/mount.mdfuse";

// ---------------------------------------------------------------- the helper, installed

/// The `mount-mdfuse` binary built from this tree: beside `mdfuse` when the workspace was
/// built (`cargo test --workspace` or `cargo build -p mount-mdfuse`) and newer than its
/// sources; otherwise built here into a target dir of its own (the workspace's is locked
/// by the running cargo).
fn built_helper() -> PathBuf {
    let mdfuse = Path::new(env!("CARGO_BIN_EXE_mdfuse"));
    let profile_dir = mdfuse.parent().expect("mdfuse's directory");
    let beside = profile_dir.join("mount-mdfuse");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helper");
    let newest_source = ["Cargo.toml", "src/lib.rs", "src/main.rs"]
        .iter()
        .filter_map(|f| {
            std::fs::metadata(src.join(f))
                .and_then(|m| m.modified())
                .ok()
        })
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let fresh = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= newest_source)
    };
    if fresh(&beside) {
        return beside;
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mount-helper-target");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", "mount-mdfuse", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target);
    if release {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build -p mount-mdfuse");
    assert!(
        out.status.success(),
        "cargo build -p mount-mdfuse failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = target
        .join(if release { "release" } else { "debug" })
        .join("mount-mdfuse");
    assert!(built.is_file(), "no helper at {}", built.display());
    built
}

/// /sbin/mount.mdfuse -> the built helper while held, under an exclusive file lock.
/// Drop removes the link (restoring a link that was there before) and then unlocks.
struct HelperInstall {
    previous: Option<PathBuf>,
    _lock: File,
}

impl HelperInstall {
    fn install() -> HelperInstall {
        let lock = File::create("/run/lock/mdfuse-mount-helper-tests.lock")
            .or_else(|_| File::create(std::env::temp_dir().join("mdfuse-mount-helper-tests.lock")))
            .expect("lock file");
        // SAFETY: flock on a descriptor we own; blocks until the other holder is done.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        let link = Path::new(HELPER_LINK);
        let previous = match std::fs::symlink_metadata(link) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(link).expect("read the existing link");
                std::fs::remove_file(link).expect("remove the existing link");
                // A link into some target dir is a leftover of a killed run; keep others.
                (!to.to_string_lossy().contains("mount-mdfuse")).then_some(to)
            }
            Ok(_) => panic!(
                "{HELPER_LINK} is an installed file, not a test link: refusing to replace it"
            ),
            Err(_) => None,
        };
        std::os::unix::fs::symlink(built_helper(), link).expect("install /sbin/mount.mdfuse");
        HelperInstall {
            previous,
            _lock: lock,
        }
    }
}

impl Drop for HelperInstall {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(HELPER_LINK);
        if let Some(to) = &self.previous {
            let _ = std::os::unix::fs::symlink(to, HELPER_LINK);
        }
    }
}

// ---------------------------------------------------------------- mount(8), umount(8)

/// `mount ARGS` (util-linux) with MDFUSE naming the binary under test, and
/// the tests' transport ([`transport_option`]) as one more `-o` unless the
/// options choose one (mount(8) appends it to the others, an fstab line's
/// too).
fn mount(args: &[&str]) -> Output {
    let transport = if args.iter().any(|a| a.contains("transport=")) {
        None
    } else {
        transport_option("")
    };
    Command::new("mount")
        .args(transport.iter().flat_map(|t| ["-o", t.as_str()]))
        .args(args)
        .env("MDFUSE", env!("CARGO_BIN_EXE_mdfuse"))
        .output()
        .expect("run mount(8)")
}

/// The daemon's pid file: /run/mdfuse/<absolute mountpoint, as systemd-escape --path>.pid.
fn pid_file(mnt: &Path) -> PathBuf {
    mdfuse::transport::serve::run_file(mnt, "pid")
}

/// The pid in the daemon's pid file (0 if there is none).
fn daemon_pid(mnt: &Path) -> i32 {
    std::fs::read_to_string(pid_file(mnt))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The daemon's default log when detached (no `log=`): /run/mdfuse/<escaped>.log.
fn default_log(mnt: &Path) -> PathBuf {
    pid_file(mnt).with_extension("log")
}

/// Lines of libmount's userspace table naming `mnt`.
fn utab_lines(mnt: &Path) -> Vec<String> {
    let abs = mnt.canonicalize().unwrap_or_else(|_| mnt.to_owned());
    let want = format!("TARGET={}", abs.display());
    std::fs::read_to_string("/run/mount/utab")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').any(|f| f == want))
        .map(String::from)
        .collect()
}

/// A live mount made by mount(8). Drop unmounts it (umount, then lazily) and waits for the
/// daemon; `umount()` does it the user's way and asserts the clean end.
struct LiveMount {
    mnt: PathBuf,
    pid: i32,
    done: bool,
}

impl LiveMount {
    /// After a successful mount(8): it must be live at once (mdstat readable, pid file there).
    fn after_mount(mnt: &Path, out: &Output) -> LiveMount {
        assert!(out.status.success(), "mount failed: {}", text(out));
        // Take the guard before asserting anything else, so a failure still cleans up.
        let pid = daemon_pid(mnt);
        let live = LiveMount {
            mnt: mnt.to_owned(),
            pid,
            done: false,
        };
        assert!(
            is_mounted(mnt),
            "mount returned 0 but {} is not a mount",
            mnt.display()
        );
        assert!(
            pid > 0 && pid_alive(pid),
            "no live daemon in {}",
            pid_file(mnt).display()
        );
        let mdstat = std::fs::read_to_string(mnt.join("mdstat"))
            .unwrap_or_else(|e| panic!("mdstat not readable right after mount returned: {e}"));
        assert!(mdstat.contains("raid1"), "mdstat:\n{mdstat}");
        live
    }

    /// After a mount(8) that should have been refused: asserts it was, and returns what
    /// it said. Should it have mounted after all, a guard takes the mount down.
    fn refused(mnt: &Path, out: &Output, what: &str) -> String {
        let _stray = out.status.success().then(|| LiveMount {
            mnt: mnt.to_owned(),
            pid: daemon_pid(mnt),
            done: false,
        });
        assert!(!out.status.success(), "{what} succeeded: {}", text(out));
        let t = text(out);
        eprintln!("{what} refused: {}", t.trim());
        t
    }

    fn image(&self) -> PathBuf {
        self.mnt.join("array.img")
    }

    fn mdstat(&self) -> String {
        std::fs::read_to_string(self.mnt.join("mdstat")).unwrap_or_default()
    }

    /// `umount MNT`: the mount goes, the daemon exits, its pid file with it.
    fn umount(mut self) {
        let out = Command::new("umount")
            .arg(&self.mnt)
            .output()
            .expect("run umount(8)");
        assert!(out.status.success(), "umount: {}", text(&out));
        self.done = true;
        assert!(
            wait_pid_gone(self.pid, Duration::from_secs(30)),
            "daemon {} still running 30 s after umount",
            self.pid
        );
        assert!(!is_mounted(&self.mnt), "still mounted after umount");
        assert!(
            !pid_file(&self.mnt).exists(),
            "pid file {} left behind",
            pid_file(&self.mnt).display()
        );
    }
}

impl Drop for LiveMount {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if is_mounted(&self.mnt) {
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
            }
        }
        if self.pid > 0 && !wait_pid_gone(self.pid, Duration::from_secs(20)) {
            // SAFETY: kill has no memory preconditions; the pid is this test's daemon.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            wait_pid_gone(self.pid, Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------- an array to mount

/// Two 32 MiB leg files made by `mdfuse create` (optionally with a bitmap file on a
/// loop-backed ext4 of its own: its block map must point at a device this test made),
/// and an empty mountpoint. Field order is drop order: the ext4 goes first.
struct Array {
    _bitmap_fs: Option<ScratchFs>,
    legs: Legs,
    bitmap: Option<PathBuf>,
    mnt: PathBuf,
    dir: tempfile::TempDir,
}

impl Array {
    fn create(with_bitmap: bool) -> Array {
        let dir = tempfile::Builder::new()
            .prefix("mdfuse-mounthelper")
            .tempdir()
            .expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mountpoint");
        let legs = Legs::new(dir.path(), 2, LEG_BYTES);
        let bitmap_fs =
            with_bitmap.then(|| ScratchFs::ext4(4096).expect("loop-backed ext4 for the bitmap"));
        let bitmap = bitmap_fs.as_ref().map(|fs| fs.path("md0.bitmap"));
        let mut args = vec!["--name", "mh"];
        if let Some(b) = &bitmap {
            args.extend(["--bitmap", path_str(b), "--bitmap-chunk", "64K"]);
        }
        create(&legs, &args);
        Array {
            _bitmap_fs: bitmap_fs,
            legs,
            bitmap,
            mnt,
            dir,
        }
    }

    fn legs_opt(&self) -> String {
        format!(
            "legs={}:{}",
            self.legs.paths[0].display(),
            self.legs.paths[1].display()
        )
    }

    fn mnt_str(&self) -> &str {
        self.mnt.to_str().expect("UTF-8 tempdir")
    }

    /// `mount -t mdfuse -o OPTIONS mirror MNT`.
    fn mount_t(&self, options: &str) -> Output {
        mount(&["-t", "mdfuse", "-o", options, "mirror", self.mnt_str()])
    }

    /// [`Array::mount_t`], which must succeed and be live at once.
    fn mount_t_live(&self, options: &str) -> LiveMount {
        LiveMount::after_mount(&self.mnt, &self.mount_t(options))
    }

    /// After the last umount: both legs' superblocks clean (by the real mdadm: both
    /// active, the same events), the bitmap clean, and nothing of the array left.
    fn assert_stopped_clean(&self) {
        assert_stopped_clean(&self.legs.paths, self.bitmap.as_deref());
        self.assert_nothing_left();
    }

    /// Nothing of the array outlives it: no mount, no daemon on the mountpoint, no pid file,
    /// no libmount utab entry.
    fn assert_nothing_left(&self) {
        assert!(
            !is_mounted(&self.mnt),
            "{} still mounted",
            self.mnt.display()
        );
        let daemons = daemons_for(&self.mnt);
        assert!(daemons.is_empty(), "mdfuse daemons left: {daemons:?}");
        assert!(!pid_file(&self.mnt).exists(), "pid file left behind");
        assert!(
            utab_lines(&self.mnt).is_empty(),
            "/run/mount/utab keeps {:?}",
            utab_lines(&self.mnt)
        );
    }
}

impl Drop for Array {
    fn drop(&mut self) {
        // The default logs of this test's mounts (a daemon's log outlives it by design).
        for mnt in [self.mnt.clone(), self.dir.path().join("mnt2")] {
            let _ = std::fs::remove_file(default_log(&mnt));
        }
    }
}

/// A block of `tag` bytes written at `offset` through array.img and read back.
fn write_read(image: &Path, offset: u64, tag: u8) {
    let data = vec![tag; 64 << 10];
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .expect("open array.img rw");
    f.write_all_at(&data, offset).expect("write array.img");
    f.sync_all().expect("fsync array.img");
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, offset).expect("read array.img");
    assert!(back == data, "read back differs at {offset}");
}

/// The leg's data region at array offset `offset`.
fn leg_bytes(leg: &Path, offset: u64, len: usize) -> Vec<u8> {
    data_region(leg, data_offset(leg) + offset, len as u64)
}

/// How every case starts: as root (None, a skip, otherwise), with the helper installed
/// and a fresh array (with a bitmap file or not).
fn setup(test: &str, with_bitmap: bool) -> Option<(HelperInstall, Array)> {
    if !needs_root(test) {
        return None;
    }
    let helper = HelperInstall::install();
    Some((helper, Array::create(with_bitmap)))
}

// ---------------------------------------------------------------- the cases

#[test]
fn mount_t_mdfuse_with_a_bitmap_is_live_on_return_and_umount_stops_it_clean() {
    let Some((_helper, arr)) = setup("mount_t_mdfuse_with_a_bitmap", true) else {
        return;
    };
    let log = arr.dir.path().join("daemon.log");
    let opts = format!(
        "{},bitmap={},log={}",
        arr.legs_opt(),
        arr.bitmap.as_ref().expect("bitmap").display(),
        log.display()
    );
    let started = Instant::now();
    let m = arr.mount_t_live(&opts);
    eprintln!("mount -t mdfuse returned live in {:?}", started.elapsed());
    assert!(m.mdstat().contains("[2/2] [UU]"), "mdstat:\n{}", m.mdstat());
    assert!(
        m.mdstat().contains("bitmap"),
        "the bitmap file is in use:\n{}",
        m.mdstat()
    );
    write_read(&m.image(), 3 << 20, 0xa5);
    m.umount();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("live"),
        "log= names the daemon's log file; it has:\n{log_text}"
    );
    assert!(
        !default_log(&arr.mnt).exists(),
        "with log=, nothing is logged to {}",
        default_log(&arr.mnt).display()
    );
    for l in &arr.legs.paths {
        assert_eq!(
            leg_bytes(l, 3 << 20, 64 << 10),
            vec![0xa5; 64 << 10],
            "{} lacks the write",
            l.display()
        );
    }
    arr.assert_stopped_clean();
}

#[test]
fn an_fstab_line_mounts_with_mount_t_fstab_and_umount_stops_it_clean() {
    let Some((_helper, arr)) = setup("an_fstab_line_mounts", false) else {
        return;
    };
    let fstab = arr.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a test fstab\nmirror {} mdfuse {},nofail 0 0\n",
            arr.mnt.display(),
            arr.legs_opt()
        ),
    )
    .expect("write fstab");
    let fstab_s = fstab.to_str().expect("UTF-8");
    let out = mount(&["-T", fstab_s, arr.mnt_str()]);
    let m = LiveMount::after_mount(&arr.mnt, &out);
    assert!(m.mdstat().contains("[2/2] [UU]"), "mdstat:\n{}", m.mdstat());
    write_read(&m.image(), 0, 0x3c);
    m.umount();
    assert_eq!(leg_bytes(&arr.legs.paths[1], 0, 4096), vec![0x3c; 4096]);
    arr.assert_stopped_clean();

    // The long spelling too, and once more live.
    let out = mount(&["--fstab", fstab_s, arr.mnt_str()]);
    LiveMount::after_mount(&arr.mnt, &out).umount();
    arr.assert_stopped_clean();
}

/// The fstab line for real: `mount MOUNTPOINT` finds it in /etc/fstab, the array (with its
/// bitmap) serves the image, `umount MOUNTPOINT` stops it clean and leaves nothing behind.
#[test]
fn a_line_in_etc_fstab_mounts_by_its_mountpoint_and_umount_stops_it_clean() {
    let Some((_helper, arr)) = setup("a_line_in_etc_fstab_mounts", true) else {
        return;
    };
    let before = std::fs::read(FSTAB).unwrap_or_default();
    {
        let line = format!(
            "mirror {} mdfuse {},bitmap={},image_mode=0640,noauto,nofail 0 0",
            arr.mnt.display(),
            arr.legs_opt(),
            arr.bitmap.as_ref().expect("bitmap").display()
        );
        let _fstab = FstabLine::add(&line);
        let listed = Command::new("findmnt")
            .args(["--fstab", "--noheadings", "-o", "TARGET,FSTYPE"])
            .arg(&arr.mnt)
            .output()
            .expect("findmnt");
        assert!(
            text(&listed).contains("mdfuse"),
            "findmnt --fstab does not see the line: {}",
            text(&listed)
        );
        let out = mount(&[arr.mnt_str()]);
        let m = LiveMount::after_mount(&arr.mnt, &out);
        assert!(m.mdstat().contains("[2/2] [UU]"), "mdstat:\n{}", m.mdstat());
        assert!(m.mdstat().contains("bitmap"), "mdstat:\n{}", m.mdstat());
        let mode = std::fs::metadata(m.image())
            .expect("stat array.img")
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            mode.mode() & 0o777,
            0o640,
            "image_mode= from the fstab line"
        );
        write_read(&m.image(), 5 << 20, 0x5f);
        // umount(8) by the mountpoint; the daemon exits after its clean stop.
        m.umount();
    }
    assert_eq!(
        std::fs::read(FSTAB).unwrap_or_default(),
        before,
        "/etc/fstab not restored"
    );
    for l in &arr.legs.paths {
        assert_eq!(leg_bytes(l, 5 << 20, 64 << 10), vec![0x5f; 64 << 10]);
    }
    arr.assert_stopped_clean();
}

#[test]
fn an_unknown_option_is_refused_and_nothing_is_mounted() {
    let Some((_helper, arr)) = setup("an_unknown_option_is_refused", false) else {
        return;
    };
    let before = arr.legs.sha256s();
    let opts = format!("{},bogus", arr.legs_opt());
    let t = LiveMount::refused(&arr.mnt, &arr.mount_t(&opts), "a mount with bogus");
    assert!(
        t.contains("unknown option") && t.contains("bogus"),
        "mount's error does not name the option:\n{t}"
    );
    arr.assert_nothing_left();
    assert_eq!(arr.legs.sha256s(), before, "a refused mount changed a leg");
}

#[test]
fn the_ro_option_serves_a_read_only_image_and_leaves_the_legs_unchanged() {
    let Some((_helper, arr)) = setup("the_ro_option_serves_a_read_only_image", false) else {
        return;
    };
    // Something to read: written through a rw mount first.
    let m = arr.mount_t_live(&arr.legs_opt());
    write_read(&m.image(), 1 << 20, 0x5a);
    m.umount();
    let before = arr.legs.sha256s();

    let opts = format!("ro,{}", arr.legs_opt());
    let m = arr.mount_t_live(&opts);
    let open_rw = std::fs::OpenOptions::new().write(true).open(m.image());
    match open_rw {
        Ok(f) => {
            let err = f
                .write_all_at(&[0u8; 4096], 0)
                .and_then(|_| f.sync_all())
                .expect_err("a write to a ro array.img succeeded");
            eprintln!("ro: open for writing allowed, the write refused: {err}");
            assert!(
                matches!(err.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)),
                "write: {err}"
            );
        }
        Err(e) => {
            eprintln!("ro: open for writing refused: {e}");
            assert!(
                matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)),
                "open for writing: {e}"
            )
        }
    }
    let mut back = vec![0u8; 4096];
    File::open(m.image())
        .expect("open ro image")
        .read_exact_at(&mut back, 1 << 20)
        .expect("read the ro image");
    assert_eq!(back, vec![0x5a; 4096], "the ro image serves the data");
    m.umount();
    assert_eq!(arr.legs.sha256s(), before, "a ro mount changed a leg");
    arr.assert_stopped_clean();
}

#[test]
fn legs_given_as_the_source_mount_and_a_second_mount_of_the_same_legs_is_refused() {
    let Some((_helper, arr)) = setup("legs_given_as_the_source_mount", false) else {
        return;
    };
    let source = format!(
        "{}:{}",
        arr.legs.paths[0].display(),
        arr.legs.paths[1].display()
    );
    let out = mount(&["-t", "mdfuse", &source, arr.mnt_str()]);
    let m = LiveMount::after_mount(&arr.mnt, &out);
    assert!(m.mdstat().contains("[2/2] [UU]"), "mdstat:\n{}", m.mdstat());

    // The same legs elsewhere while the first array runs: refused by the legs' locks.
    let other = arr.dir.path().join("mnt2");
    std::fs::create_dir(&other).expect("second mountpoint");
    let out2 = mount(&["-t", "mdfuse", &source, other.to_str().expect("UTF-8")]);
    LiveMount::refused(&other, &out2, "a second mount of legs in use");
    assert!(!is_mounted(&other), "the second mountpoint is mounted");
    assert!(daemons_for(&other).is_empty());
    // The first goes on unharmed.
    write_read(&m.image(), 7 << 20, 0x77);
    m.umount();
    arr.assert_stopped_clean();
}

/// `cat FILE` as nobody (uid/gid 65534, no groups): Ok(contents) or Err(stderr).
fn read_as_nobody(file: &Path) -> Result<String, String> {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(file)
        .output()
        .expect("run setpriv (util-linux)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn other_users_see_the_mount_only_with_allow_other() {
    let Some((_helper, arr)) = setup("other_users_see_the_mount_only_with_allow_other", false)
    else {
        return;
    };
    // The tempdir is root's 0700: let nobody reach the mountpoint itself.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(arr.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod tempdir");

    let m = arr.mount_t_live(&arr.legs_opt());
    let denied = read_as_nobody(&arr.mnt.join("mdstat"))
        .expect_err("without allow_other another user read mdstat");
    assert!(denied.contains("Permission denied"), "{denied}");
    m.umount();

    let opts = format!("{},allow_other", arr.legs_opt());
    let m = arr.mount_t_live(&opts);
    let mdstat = read_as_nobody(&arr.mnt.join("mdstat"))
        .unwrap_or_else(|e| panic!("allow_other: nobody cannot read mdstat: {e}"));
    assert!(mdstat.contains("raid1"), "{mdstat}");
    m.umount();
    arr.assert_stopped_clean();
}

#[test]
fn a_missing_leg_is_refused_unless_the_run_option_starts_it_degraded() {
    let Some((_helper, arr)) = setup("a_missing_leg_is_refused_unless_run", false) else {
        return;
    };
    let leg1_before = sha256_file(&arr.legs.paths[1]);
    let only_leg0 = format!("legs={}", arr.legs.paths[0].display());

    LiveMount::refused(
        &arr.mnt,
        &arr.mount_t(&only_leg0),
        "a mount of one leg of two without run",
    );
    arr.assert_nothing_left();

    let opts = format!("{only_leg0},run");
    let m = arr.mount_t_live(&opts);
    assert!(m.mdstat().contains("[2/1]"), "mdstat:\n{}", m.mdstat());
    write_read(&m.image(), 0, 0x42);
    m.umount();
    assert_eq!(leg_bytes(&arr.legs.paths[0], 0, 4096), vec![0x42; 4096]);
    assert_eq!(
        sha256_file(&arr.legs.paths[1]),
        leg1_before,
        "the leg left out was written"
    );
    let e0 = mdadm_examine(&arr.legs.paths[0]);
    assert_eq!(
        examine_field(&e0, "State").as_deref(),
        Some("clean"),
        "{e0}"
    );
    arr.assert_nothing_left();
}

/// Legs whose names look like options (`--leg0`, `-f`, relative to mount's current
/// directory) stay legs: the helper gives them to mdfuse after `--` (before, mdfuse took
/// `-f` for --foreground and `--leg0` for an unknown option). A leg whose path holds a
/// `:` cannot be told from two legs in `legs=`: refused with the reason, nothing mounted.
#[test]
fn legs_named_like_options_stay_legs_and_an_ambiguous_legs_list_is_refused() {
    let Some((_helper, arr)) = setup("legs_named_like_options_stay_legs", false) else {
        return;
    };
    let dir = arr.dir.path();
    let (dash0, dash1) = (dir.join("--leg0"), dir.join("-f"));
    std::fs::rename(arr.legs.path(0), &dash0).unwrap();
    std::fs::rename(arr.legs.path(1), &dash1).unwrap();
    let out = Command::new("mount")
        .current_dir(dir)
        .args([
            "-t",
            "mdfuse",
            "-o",
            "legs=--leg0:-f",
            "mirror",
            arr.mnt_str(),
        ])
        .env("MDFUSE", env!("CARGO_BIN_EXE_mdfuse"))
        .output()
        .expect("run mount(8)");
    let live = LiveMount::after_mount(&arr.mnt, &out);
    assert!(live.mdstat().contains("--leg0[0]"), "{}", live.mdstat());
    live.umount();
    assert_stopped_clean(&[dash0.clone(), dash1.clone()], None);

    // "/dir/a:b.img:/dir/-f": the first leg's path holds a ':'.
    let colon = dir.join("a:b.img");
    std::fs::rename(&dash0, &colon).unwrap();
    let before = [sha256_file(&colon), sha256_file(&dash1)];
    let opts = format!("legs={}:{}", colon.display(), dash1.display());
    let out = arr.mount_t(&opts);
    let said = LiveMount::refused(&arr.mnt, &out, "mount with a leg holding ':'");
    assert!(
        said.contains("unambiguously") && said.contains("a:b.img"),
        "{said}"
    );
    assert_eq!([sha256_file(&colon), sha256_file(&dash1)], before);
    // A leg path holding ',': cut by mount's option list.
    let comma = dir.join("c,d.img");
    std::fs::rename(&colon, &comma).unwrap();
    let opts = format!("legs={}:{}", comma.display(), dash1.display());
    let out = arr.mount_t(&opts);
    let said = LiveMount::refused(&arr.mnt, &out, "mount with a leg holding ','");
    assert!(said.contains("a path holding ','"), "{said}");
    arr.assert_nothing_left();
}
