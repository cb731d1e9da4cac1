//! The harness for driving the real `mdfuse` binary (root only): its
//! commands, leg files, created arrays, and mounted arrays as RAII guards. A
//! [`MountedArray`] never leaves a mount or a daemon behind, even when the
//! test panics, and prints the daemon's log when it does; it also reads and
//! writes the array's `md/` control files. Then the checks tests make on
//! legs: mdadm's view of their superblocks, their data regions, hashes.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mdfuse")
}

/// The environment variable that picks the transport the e2e tests mount
/// with: `uring`, `dev-fuse` or `auto` (scripts/test.sh runs the FUSE-facing
/// test files once with each of `dev-fuse` and `uring`). Unset or empty:
/// mdfuse's default (`auto`).
pub const TRANSPORT_VAR: &str = "MDFUSE_TEST_TRANSPORT";

/// The transport from [`TRANSPORT_VAR`], checked (a typo would otherwise
/// run the suite on the default transport and prove nothing).
pub fn test_transport() -> Option<&'static str> {
    static CHOSEN: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let v = std::env::var(TRANSPORT_VAR).unwrap_or_default();
        match v.trim() {
            "" => None,
            "auto" => Some("auto"),
            "uring" => Some("uring"),
            "dev-fuse" => Some("dev-fuse"),
            other => panic!("{TRANSPORT_VAR}={other:?}: not a transport (auto, uring or dev-fuse)"),
        }
    })
}

/// Whether mount arguments already choose a transport (a test that needs a
/// specific one keeps it).
pub fn chooses_transport(args: &[&str]) -> bool {
    args.iter()
        .any(|a| *a == "--transport" || a.starts_with("--transport="))
}

/// `--transport=T` for [`test_transport`], unless `args` choose one: what
/// the harness puts before a mount's own arguments.
pub fn transport_args(args: &[&str]) -> Vec<String> {
    match test_transport() {
        Some(t) if !chooses_transport(args) => vec![format!("--transport={t}")],
        _ => Vec::new(),
    }
}

/// `transport=T` for [`test_transport`] as a mount option (mount(8),
/// mount.mdfuse), unless `options` (comma-separated) choose one.
pub fn transport_option(options: &str) -> Option<String> {
    let t = test_transport()?;
    (!options.split(',').any(|o| o.starts_with("transport="))).then(|| format!("transport={t}"))
}

/// Runs `mdfuse ARGS` and returns its output, whatever the exit status.
pub fn mdfuse(args: &[&str]) -> Output {
    mdfuse_env(args, &[])
}

/// Runs `mdfuse ARGS` with extra environment variables (a daemon it starts
/// inherits them).
pub fn mdfuse_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the mdfuse binary")
}

/// Like [`mdfuse`], with path arguments.
pub fn mdfuse_with(args: &[&str], paths: &[&Path]) -> Output {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(paths.iter().map(|p| p.display().to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    mdfuse(&refs)
}

/// Runs `mdfuse ARGS`, asserts it succeeded and returns its stdout.
pub fn mdfuse_stdout(args: &[&str]) -> String {
    let o = mdfuse(args);
    assert_ok(&format!("mdfuse {}", args.join(" ")), &o);
    stdout(&o)
}

/// A path as a command-line argument (the tests' paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Everything the command printed: stdout, then stderr.
pub fn text(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// Panics with the command's output unless it succeeded.
pub fn assert_ok(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Panics unless the command failed; returns its stderr.
pub fn assert_fails(what: &str, o: &Output) -> String {
    assert!(
        !o.status.success(),
        "{what} should have failed but succeeded:\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

/// A fresh temporary directory for a test (removed when dropped).
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
}

/// Removes what mdfuse keeps in /run/mdfuse for every mountpoint under
/// `dir` (a daemon's log outlives it by design, and a killed one leaves its
/// event log and pid file): a test leaves none of it behind. A pid file
/// whose daemon still runs is kept.
pub fn forget_run_files_under(dir: &Path) {
    let probe = mdfuse::transport::serve::run_file(&dir.join("x"), "log");
    let (Some(run_dir), Some(prefix)) = (
        probe.parent(),
        probe
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix("x.log")),
    ) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        let live_pid = name.ends_with(".pid")
            && std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .is_some_and(pid_alive);
        if [".log", ".events", ".pid"]
            .iter()
            .any(|x| name.ends_with(x))
            && !live_pid
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Leg files: in a directory the caller owns, or in a temporary directory of
/// their own (removed with the last clone of them, with what mdfuse kept in
/// /run/mdfuse for mountpoints in it).
#[derive(Debug, Clone)]
pub struct Legs {
    pub paths: Vec<PathBuf>,
    temp: Option<Arc<tempfile::TempDir>>,
}

impl Drop for Legs {
    fn drop(&mut self) {
        if let Some(t) = &self.temp {
            if Arc::strong_count(t) == 1 {
                forget_run_files_under(t.path());
            }
        }
    }
}

impl Legs {
    /// `n` sparse files `leg0.img`.. of `size` bytes in `dir`.
    pub fn new(dir: &Path, n: usize, size: u64) -> Legs {
        let paths: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("leg{i}.img"))).collect();
        for p in &paths {
            super::loopdev::sparse_file(p, size).expect("cannot make a leg file");
        }
        Legs { paths, temp: None }
    }

    /// Two sparse legs of `size` bytes in a fresh temporary directory, which
    /// also takes the test's mountpoints and scratch files ([`Legs::dir`]).
    pub fn temp(size: u64) -> Legs {
        let temp = tempdir("mdfuse-legs");
        let paths = Legs::new(temp.path(), 2, size).paths.clone();
        Legs {
            paths,
            temp: Some(Arc::new(temp)),
        }
    }

    /// Existing files as legs.
    pub fn from_paths(paths: Vec<PathBuf>) -> Legs {
        Legs { paths, temp: None }
    }

    /// The directory of the legs: their own temporary one, or the first leg's.
    pub fn dir(&self) -> &Path {
        match &self.temp {
            Some(t) => t.path(),
            None => self.paths[0].parent().expect("a leg's directory"),
        }
    }

    /// A directory `name` (created) beside the legs, for a mountpoint.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let m = self.dir().join(name);
        std::fs::create_dir_all(&m).expect("cannot create the mountpoint");
        m
    }

    pub fn strs(&self) -> Vec<String> {
        self.paths.iter().map(|p| p.display().to_string()).collect()
    }

    pub fn path(&self, i: usize) -> &Path {
        &self.paths[i]
    }

    /// Leg `i`'s file name: its name in md/ (`dev-NAME`) and mdstat.
    pub fn name(&self, i: usize) -> String {
        self.paths[i]
            .file_name()
            .expect("leg file name")
            .to_string_lossy()
            .into_owned()
    }

    /// The first `len` bytes of each leg (the superblock area).
    pub fn heads(&self, len: usize) -> Vec<Vec<u8>> {
        self.paths
            .iter()
            .map(|p| {
                let mut b = std::fs::read(p).expect("read leg");
                b.truncate(len);
                b
            })
            .collect()
    }

    /// sha256 of each leg, to show that something left them untouched.
    pub fn sha256s(&self) -> Vec<String> {
        self.paths.iter().map(|p| sha256_file(p)).collect()
    }

    /// Panics unless every leg's data region holds the same first `len`
    /// bytes of array as the first leg's (see [`assert_legs_identical`]).
    pub fn assert_identical(&self, len: u64) {
        let offset = data_offset(self.path(0));
        for other in &self.paths[1..] {
            assert_legs_identical(self.path(0), other, offset, len);
        }
    }
}

/// What `mdfuse create` printed.
#[derive(Debug, Clone)]
pub struct Created {
    pub uuid: String,
    pub array_bytes: u64,
    pub data_offset_sectors: u64,
    pub stdout: String,
}

/// Runs `mdfuse create EXTRA LEGS` and asserts success.
pub fn create(legs: &Legs, extra_args: &[&str]) -> Created {
    let o = try_create(legs, extra_args);
    assert_ok("mdfuse create", &o);
    let out = stdout(&o);
    let field = |after: &str| -> String {
        let i = out
            .find(after)
            .unwrap_or_else(|| panic!("no {after:?} in create output {out:?}"));
        out[i + after.len()..]
            .split([' ', ',', '\n'])
            .next()
            .unwrap_or("")
            .to_string()
    };
    Created {
        uuid: field("UUID "),
        array_bytes: field("legs, ")
            .parse()
            .expect("array size in create output"),
        data_offset_sectors: field("data offset ")
            .parse()
            .expect("data offset in create output"),
        stdout: out,
    }
}

/// Runs `mdfuse create EXTRA LEGS`, whatever the outcome.
pub fn try_create(legs: &Legs, extra_args: &[&str]) -> Output {
    let mut args = vec!["create".to_string()];
    args.extend(extra_args.iter().map(|s| s.to_string()));
    args.extend(legs.strs());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    mdfuse(&refs)
}

/// `mdadm --examine LEG` output (asserting it succeeded).
pub fn mdadm_examine(leg: &Path) -> String {
    let o = Command::new("mdadm")
        .arg("--examine")
        .arg(leg)
        .output()
        .expect("cannot run mdadm");
    assert_ok(&format!("mdadm --examine {}", leg.display()), &o);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The value of `Key : value` in an examine-style text.
pub fn examine_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(" : ")?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// Asserts, by the real mdadm, that the legs' superblocks record a clean
/// stop: State clean, every slot active, the same events on all; and, with
/// a bitmap file, that it has no dirty bit.
pub fn assert_stopped_clean(legs: &[PathBuf], bitmap: Option<&Path>) {
    let mut events = Vec::new();
    for l in legs {
        let e = mdadm_examine(l);
        let field = |k: &str| examine_field(&e, k).unwrap_or_default();
        assert_eq!(field("State"), "clean", "{}:\n{e}", l.display());
        let slots = field("Array State");
        let slots = slots.split(' ').next().unwrap_or_default();
        assert!(
            !slots.is_empty() && slots.chars().all(|c| c == 'A'),
            "{}: not every slot active:\n{e}",
            l.display()
        );
        events.push(field("Events"));
    }
    assert!(
        events.windows(2).all(|w| w[0] == w[1]),
        "the legs' events differ: {events:?}"
    );
    if let Some(b) = bitmap {
        let o = Command::new("mdadm")
            .arg("--examine-bitmap")
            .arg(b)
            .output()
            .expect("cannot run mdadm");
        let t = text(&o);
        assert!(t.contains(" 0 dirty"), "the bitmap is not clean:\n{t}");
    }
}

/// The data offset (bytes) of `leg`, from `mdfuse examine`.
pub fn data_offset(leg: &Path) -> u64 {
    let o = mdfuse_with(&["examine"], &[leg]);
    assert_ok("mdfuse examine", &o);
    let v = examine_field(&stdout(&o), "Data Offset").expect("Data Offset in examine");
    let sectors: u64 = v
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse Data Offset {v:?}"));
    sectors * 512
}

/// `len` bytes of `leg` from `data_offset` (read directly from the file).
pub fn data_region(leg: &Path, data_offset: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(leg).expect("open leg");
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, data_offset)
        .unwrap_or_else(|e| panic!("reading {}: {e}", leg.display()));
    buf
}

/// md's raid1 resync unit (RESYNC_BLOCK_SIZE): check and repair count
/// mismatches per unit of this.
pub const MD_RESYNC_BLOCK: u64 = 64 << 10;

/// The array offsets of the `unit`-byte pieces where two legs' data regions
/// (from `data_offset`, `len` bytes) differ; read with O_DIRECT (what is on
/// disk, not a page cache), 4 MiB at a time.
pub fn differing_units(a: &Path, b: &Path, data_offset: u64, len: u64, unit: u64) -> Vec<u64> {
    let step = (4 << 20) / unit * unit;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(step) as usize;
        let read = |p: &Path| {
            let got = super::io::read_direct(p, data_offset + pos, n)
                .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            assert_eq!(got.len(), n, "{} ends early", p.display());
            got
        };
        let (x, y) = (read(a), read(b));
        for (i, (u, v)) in x
            .chunks(unit as usize)
            .zip(y.chunks(unit as usize))
            .enumerate()
        {
            if u != v {
                out.push(pos + i as u64 * unit);
            }
        }
        pos += n as u64;
    }
    out
}

/// Panics unless two legs' data regions hold the same `len` bytes; names
/// the 64 KiB units (md's) that differ.
pub fn assert_legs_identical(a: &Path, b: &Path, data_offset: u64, len: u64) {
    let differing = differing_units(a, b, data_offset, len, MD_RESYNC_BLOCK);
    let units: Vec<u64> = differing.iter().map(|o| o / MD_RESYNC_BLOCK).collect();
    assert!(
        differing.is_empty(),
        "the legs' data regions differ in {} unit(s) of 64 KiB, the first at array byte {} \
         (array units {:?}...)",
        units.len(),
        differing.first().copied().unwrap_or_default(),
        &units[..units.len().min(20)]
    );
}

/// sha256 (hex) of a file, by `sha256sum`.
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("cannot run sha256sum");
    assert_ok("sha256sum", &out);
    stdout(&out)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// sha256 of a file's bytes `[skip, skip + len)` (the `sha256sum` command).
pub fn sha256_region(path: &Path, skip: u64, len: u64) -> String {
    let script = format!("tail -c +{} \"$1\" | head -c {len} | sha256sum", skip + 1);
    let out = Command::new("sh")
        .args(["-c", &script, "sh"])
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum of {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// sha256 (hex) of bytes, by `sha256sum` reading stdin.
pub fn sha256_bytes(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run sha256sum");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("sha256sum");
    writer.join().expect("writer").expect("write to sha256sum");
    stdout(&out)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Polls `f` every 20 ms until it is true (true) or `timeout` passes (false).
pub fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it is true; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    assert!(
        poll(timeout, f),
        "timed out ({timeout:?}) waiting for {what}"
    );
}

/// Whether `mnt` is a mount point now (by /proc/mounts).
pub fn is_mounted(mnt: &Path) -> bool {
    let abs = mnt.canonicalize().unwrap_or_else(|_| mnt.to_owned());
    let want = abs.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// Whether process `pid` is alive (a zombie counts as dead).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state follows the ")" closing the command name.
            let state = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some(Some('Z')) | Some(Some('X')))
        }
        Err(_) => false,
    }
}

/// Waits until `pid` is gone; false on timeout.
pub fn wait_pid_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pid_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Pids of mdfuse processes whose command line mentions `mnt`.
pub fn daemons_for(mnt: &Path) -> Vec<i32> {
    let want = mnt.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_mdfuse = args
            .first()
            .is_some_and(|a| a.ends_with("/mdfuse") || a == "mdfuse");
        if is_mdfuse && args.iter().any(|a| a == &want) && pid_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Sends `sig` to `pid` (a daemon of the test's).
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn umount_lazy(mnt: &Path) {
    let _ = Command::new("umount").arg("-l").arg(mnt).output();
}

/// An array mounted by `mdfuse mount` (detached). Dropping it stops it.
#[derive(Debug)]
pub struct MountedArray {
    mnt: PathBuf,
    log: PathBuf,
    legs: Legs,
    /// The daemon's pid, from its "live" line.
    pid: i32,
    /// Set once stopped (or killed); Drop then only checks.
    done: bool,
    pub mount_stdout: String,
}

impl MountedArray {
    /// `mdfuse mount --log LOG EXTRA LEGS MNT`; asserts it went live. The
    /// log goes beside the mountpoint (`<mnt>.log`).
    pub fn mount(legs: &Legs, mnt: &Path, extra_args: &[&str]) -> MountedArray {
        Self::mount_env(legs, mnt, extra_args, &[])
    }

    /// [`MountedArray::mount`] with extra environment variables for the daemon.
    pub fn mount_env(
        legs: &Legs,
        mnt: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> MountedArray {
        match Self::try_mount_env(legs, mnt, extra_args, env) {
            Ok(m) => m,
            Err(o) => panic!(
                "mdfuse mount failed ({}):\nstdout: {}\nstderr: {}\nlog:\n{}",
                o.status,
                stdout(&o),
                stderr(&o),
                std::fs::read_to_string(log_path(mnt)).unwrap_or_default()
            ),
        }
    }

    /// Mounts, or returns the refused command's output (nothing is left
    /// mounted or running then).
    pub fn try_mount(legs: &Legs, mnt: &Path, extra_args: &[&str]) -> Result<MountedArray, Output> {
        Self::try_mount_env(legs, mnt, extra_args, &[])
    }

    /// [`MountedArray::try_mount`] with extra environment variables for the daemon.
    pub fn try_mount_env(
        legs: &Legs,
        mnt: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<MountedArray, Output> {
        std::fs::create_dir_all(mnt).expect("cannot create the mountpoint");
        let log = log_path(mnt);
        let mut args = vec![
            "mount".to_string(),
            "--log".into(),
            log.display().to_string(),
        ];
        args.extend(transport_args(extra_args));
        args.extend(extra_args.iter().map(|s| s.to_string()));
        args.extend(legs.strs());
        args.push(mnt.display().to_string());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = mdfuse_env(&refs, env);
        if !o.status.success() {
            // Whatever happened, leave nothing behind.
            if is_mounted(mnt) {
                umount_lazy(mnt);
            }
            for pid in daemons_for(mnt) {
                signal(pid, libc::SIGKILL);
            }
            return Err(o);
        }
        let out = stdout(&o);
        let pid = out
            .rsplit_once("pid ")
            .and_then(|(_, p)| p.trim().parse::<i32>().ok())
            .or_else(|| daemons_for(mnt).first().copied())
            .unwrap_or_else(|| panic!("no daemon pid in mount output {out:?}"));
        let m = MountedArray {
            mnt: mnt.to_owned(),
            log,
            legs: legs.clone(),
            pid,
            done: false,
            mount_stdout: out,
        };
        assert!(
            is_mounted(mnt),
            "mdfuse mount returned but {mnt:?} is not mounted"
        );
        Ok(m)
    }

    /// An array some other way mounted at `mnt` (mount(8) through
    /// mount.mdfuse), its daemon logging to `log`: from now on this guard
    /// stops it, as if [`MountedArray::mount`] had mounted it.
    pub fn adopt(legs: &Legs, mnt: &Path, log: PathBuf) -> MountedArray {
        let pid = daemons_for(mnt)
            .first()
            .copied()
            .unwrap_or_else(|| panic!("no mdfuse daemon serves {}", mnt.display()));
        MountedArray {
            mnt: mnt.to_owned(),
            log,
            legs: legs.clone(),
            pid,
            done: false,
            mount_stdout: String::new(),
        }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mnt
    }

    pub fn image(&self) -> PathBuf {
        self.mnt.join("array.img")
    }

    pub fn mdstat(&self) -> String {
        std::fs::read_to_string(self.mnt.join("mdstat")).expect("read mdstat")
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `mdfuse stop MNT`; asserts it succeeded and the daemon is gone.
    pub fn stop(mut self) {
        let o = self.stop_command();
        assert_ok(&format!("mdfuse stop (log:\n{})", self.log()), &o);
        assert!(
            wait_pid_gone(self.pid, Duration::from_secs(10)),
            "daemon {} still runs after mdfuse stop",
            self.pid
        );
        assert!(!is_mounted(&self.mnt), "still mounted after mdfuse stop");
        self.done = true;
    }

    /// `mdfuse stop MNT`, retried while the mount is busy (a loop device
    /// detaching lets go of array.img shortly after losetup -d returns).
    pub fn stop_when_free(self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = mdfuse_with(&["stop"], &[&self.mnt]);
            if o.status.success() || !stderr(&o).contains("busy") || Instant::now() > deadline {
                if !o.status.success() {
                    assert_ok("mdfuse stop", &o);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stop();
    }

    fn stop_command(&self) -> Output {
        if !is_mounted(&self.mnt) {
            // Already unmounted (e.g. by a retry): stop must not be asked again.
            return Command::new("true").output().expect("true");
        }
        mdfuse_with(&["stop", "--timeout", "30"], &[&self.mnt])
    }

    /// Plain `umount MNT` (umount(8)); waits for the daemon to exit.
    pub fn umount_plain(mut self) {
        let o = Command::new("umount")
            .arg(&self.mnt)
            .output()
            .expect("umount");
        assert_ok("umount", &o);
        assert!(
            wait_pid_gone(self.pid, Duration::from_secs(30)),
            "daemon {} still runs 30 s after umount",
            self.pid
        );
        self.done = true;
    }

    /// SIGTERM to the daemon; waits for it to exit and the mount to go.
    pub fn sigterm(mut self) {
        signal(self.pid, libc::SIGTERM);
        assert!(
            wait_pid_gone(self.pid, Duration::from_secs(30)),
            "daemon {} still runs 30 s after SIGTERM",
            self.pid
        );
        self.done = true;
        assert!(!is_mounted(&self.mnt), "still mounted after SIGTERM");
    }

    /// SIGKILL to the daemon (a crash), then detaches the dead mount.
    pub fn kill9(self) {
        self.kill9_then(|| {});
    }

    /// SIGKILL to the daemon, then `meanwhile` (before waiting for it to be
    /// gone: a daemon with requests pending on a leg cannot finish dying
    /// until they are answered, e.g. writes a FaultyFs holds), then detaches
    /// the dead mount.
    pub fn kill9_then(mut self, meanwhile: impl FnOnce()) {
        signal(self.pid, libc::SIGKILL);
        meanwhile();
        for pid in daemons_for(&self.mnt) {
            signal(pid, libc::SIGKILL);
        }
        assert!(
            wait_pid_gone(self.pid, Duration::from_secs(10)),
            "daemon survived SIGKILL"
        );
        umount_lazy(&self.mnt);
        remove_dead_pid_file(&self.mnt, self.pid);
        self.done = true;
    }

    pub fn legs(&self) -> &Legs {
        &self.legs
    }

    /// Writes `len` pseudo-random bytes (from `seed`) at `offset` of
    /// array.img and fsyncs; returns them.
    pub fn fill_random(&self, offset: u64, len: usize, seed: u64) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let data = super::rng::Rng(seed).bytes(len);
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.image())
            .and_then(|f| {
                f.write_all_at(&data, offset)?;
                f.sync_all()
            })
            .unwrap_or_else(|e| panic!("fill {len} bytes at {offset} of array.img: {e}"));
        data
    }

    /// `MNT/md/REL`, which must be one line ending in a newline (as md's
    /// attributes are); returned without the newline.
    pub fn md(&self, rel: &str) -> String {
        let path = self.mnt.join("md").join(rel);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let line = text
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("md/{rel}: {text:?} does not end in a newline"));
        assert!(
            !line.contains('\n'),
            "md/{rel}: more than one line: {text:?}"
        );
        line.to_string()
    }

    /// `echo VALUE > MNT/md/REL`: one write of the value and a newline, no
    /// truncation; the error is md's answer.
    pub fn write_md(&self, rel: &str, value: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.mnt.join("md").join(rel))?;
        f.write_all(format!("{value}\n").as_bytes())
    }

    /// [`MountedArray::write_md`], which must be accepted.
    pub fn set_md(&self, rel: &str, value: &str) {
        self.write_md(rel, value)
            .unwrap_or_else(|e| panic!("{value:?} > md/{rel}: {e}\nlog:\n{}", self.log()));
    }

    /// md's way out for a leg: `faulty`, then `remove`, through
    /// `md/dev-LEG/state` (LEG is the leg's file name).
    pub fn fail_and_remove(&self, leg: &str) {
        self.set_md(&format!("dev-{leg}/state"), "faulty");
        self.set_md(&format!("dev-{leg}/state"), "remove");
    }

    /// md/sync_completed as (done, total) sectors; None when no sync runs.
    pub fn sync_completed(&self) -> Option<(u64, u64)> {
        let v = self.md("sync_completed");
        let (done, total) = v.split_once(" / ")?;
        Some((done.parse().ok()?, total.parse().ok()?))
    }

    /// Waits until no sync runs (md/sync_action reads idle); then `mdfuse
    /// wait` must agree (it returns at once).
    pub fn wait_sync_idle(&self, timeout: Duration) {
        wait_for("the sync to end", timeout, || {
            self.md("sync_action") == "idle"
        });
        let o = mdfuse_with(&["wait"], &[&self.mnt]);
        assert_ok("mdfuse wait", &o);
    }
}

/// The daemon's log for a mount at `mnt`: `<mnt>.mdfuse.log` beside it
/// (appended to by every mount there).
pub fn log_path(mnt: &Path) -> PathBuf {
    let name = mnt
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mnt".into());
    mnt.with_file_name(format!("{name}.mdfuse.log"))
}

impl Drop for MountedArray {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "---- mdfuse daemon log {} ----\n{}\n---- end of log ----",
                self.log.display(),
                self.log()
            );
        }
        if self.done && !is_mounted(&self.mnt) && !pid_alive(self.pid) {
            return;
        }
        if is_mounted(&self.mnt) {
            let o = mdfuse_with(&["stop", "--timeout", "20"], &[&self.mnt]);
            if !o.status.success() {
                eprintln!(
                    "warning: mdfuse stop {}: {}",
                    self.mnt.display(),
                    stderr(&o)
                );
                umount_lazy(&self.mnt);
            }
        }
        if !wait_pid_gone(self.pid, Duration::from_secs(20)) {
            eprintln!("warning: killing mdfuse daemon {}", self.pid);
            signal(self.pid, libc::SIGKILL);
            wait_pid_gone(self.pid, Duration::from_secs(5));
        }
        for pid in daemons_for(&self.mnt) {
            signal(pid, libc::SIGKILL);
        }
        if is_mounted(&self.mnt) {
            umount_lazy(&self.mnt);
        }
        remove_dead_pid_file(&self.mnt, self.pid);
    }
}

/// Removes the pid file a killed daemon (`pid`) left for `mnt` in
/// /run/mdfuse (its name as `mdfuse` makes it), so crash tests leave nothing
/// behind; a file naming another process is left alone.
fn remove_dead_pid_file(mnt: &Path, pid: i32) {
    let file = mdfuse::transport::serve::run_file(mnt, "pid");
    let named = std::fs::read_to_string(&file).ok();
    if named.as_deref().map(str::trim) == Some(pid.to_string().as_str()) && !pid_alive(pid) {
        let _ = std::fs::remove_file(&file);
    }
}

/// `mdfuse mount -f` as a child process (logs to `<mnt>.mdfuse.log`).
pub struct ForegroundArray {
    child: Child,
    mnt: PathBuf,
    log: PathBuf,
}

impl ForegroundArray {
    /// Starts it and waits (up to 20 s) for the mount to appear.
    pub fn start(legs: &Legs, mnt: &Path, extra_args: &[&str]) -> ForegroundArray {
        std::fs::create_dir_all(mnt).expect("cannot create the mountpoint");
        let log = log_path(mnt);
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(bin());
        cmd.arg("mount")
            .arg("-f")
            .args(transport_args(extra_args))
            .args(extra_args)
            .args(&legs.paths)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone().expect("log fd")))
            .stderr(Stdio::from(log_file));
        let child = cmd.spawn().expect("spawn mdfuse mount -f");
        let mut fg = ForegroundArray {
            child,
            mnt: mnt.to_owned(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mnt) {
            if let Ok(Some(status)) = fg.child.try_wait() {
                panic!(
                    "mdfuse mount -f exited ({status}) before mounting:\n{}",
                    std::fs::read_to_string(&fg.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "mount did not appear in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        fg
    }

    pub fn image(&self) -> PathBuf {
        self.mnt.join("array.img")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then waits; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "mdfuse -f still runs 30 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ForegroundArray {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            if is_mounted(&self.mnt) {
                umount_lazy(&self.mnt);
            }
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "---- mdfuse -f log ----\n{}\n---- end ----",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.mnt) {
            umount_lazy(&self.mnt);
        }
    }
}

/// A loop device over `file`, writable. A loop device keeps a read-only
/// flag set by `blockdev --setro` across detach and re-attach, so a device
/// another test left read-only would otherwise refuse writes (EPERM); this
/// one is ours now, so it is made writable.
pub fn attach_loop_rw(file: &Path) -> super::loopdev::LoopDevice {
    let lo = super::loopdev::LoopDevice::attach(file).expect("losetup");
    let dev = lo.path().display().to_string();
    let ro = super::loopdev::run("blockdev", &["--getro", &dev]).expect("blockdev --getro");
    if ro.trim() != "0" {
        eprintln!(
            "note: {dev} was left read-only (blockdev --setro) by someone; making it writable"
        );
        super::loopdev::run("blockdev", &["--setrw", &dev]).expect("blockdev --setrw");
    }
    lo
}

/// A line in the real /etc/fstab for the guard's life, after a marker comment. Drop puts
/// the file back as it was (also when the test panics). Lines a killed run left (marker and
/// line) are dropped first, and not restored.
pub struct FstabLine {
    restore: Vec<u8>,
}

pub const FSTAB: &str = "/etc/fstab";
const FSTAB_MARK: &str = "# mdfuse tests: the next line goes at the end of the test";

impl FstabLine {
    pub fn add(line: &str) -> FstabLine {
        let original = std::fs::read(FSTAB).unwrap_or_default();
        let text = String::from_utf8(original.clone()).expect("/etc/fstab is not UTF-8");
        let mut kept = String::new();
        let mut skip_next = false;
        for l in text.split_inclusive('\n') {
            if skip_next {
                skip_next = false;
            } else if l.trim_end() == FSTAB_MARK {
                skip_next = true;
            } else {
                kept.push_str(l);
            }
        }
        let restore = if kept == text {
            original
        } else {
            kept.into_bytes()
        };
        let mut with_line = restore.clone();
        if !with_line.is_empty() && !with_line.ends_with(b"\n") {
            with_line.push(b'\n');
        }
        with_line.extend_from_slice(format!("{FSTAB_MARK}\n{line}\n").as_bytes());
        // Written in place: /etc/fstab may be a bind mount that a rename would not reach.
        std::fs::write(FSTAB, &with_line).expect("write /etc/fstab");
        FstabLine { restore }
    }
}

impl Drop for FstabLine {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(FSTAB, &self.restore) {
            eprintln!("warning: cannot restore {FSTAB}: {e}");
        }
    }
}
