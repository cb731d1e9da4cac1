//! The operator's interface of a running array, through real mounts of the real `mdfuse`
//! binary: every `md/` control file read against the format Linux md prints (values taken
//! from md 6.1 under the kernel-md rig: see docs/design.md), check/repair with a known
//! mismatch count, fail/remove/re-add through the files with `mdfuse manage` and
//! `mdfuse detail` agreeing, speed limits, refused writes and their log lines, other
//! users' access with and without allow_other, `mdfuse wait` and `mdfuse stop`, and the
//! clean stop on SIGINT and SIGTERM.
//!
//! Root only. Each test has its own directory, legs and mount (RAII guards from
//! tests/common), and a bitmap file on a loop-backed ext4 of its own.

mod common;

use common::io::{open_direct, AlignedVec};
use common::loopdev::{needs_root, ScratchFs};
use common::mdfuse::*;
use std::collections::BTreeSet;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const LEG_BYTES: u64 = 32 * MIB;
/// The array is smaller than the legs, so `dev-*/size` (the leg's data size) and
/// `component_size` (the array's) differ as they do in md.
const ARRAY_BYTES: u64 = 24 * MIB;
const NOBODY: &str = "65534";

// ---------------------------------------------------------------- fixture

/// Two 32 MiB legs with a 24 MiB array made by `mdfuse create`, optionally a bitmap file
/// (64 KiB chunks) on a loop-backed ext4 of its own, in a directory other users may
/// traverse. Field order is drop order: the ext4 goes after any mount made on it.
struct Fixture {
    _bitmap_fs: Option<ScratchFs>,
    legs: Legs,
    bitmap: Option<PathBuf>,
    created: Created,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(with_bitmap: bool) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("mdfuse-control")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod tempdir");
        let legs = Legs::new(dir.path(), 2, LEG_BYTES);
        let bitmap_fs =
            with_bitmap.then(|| ScratchFs::ext4(4096).expect("loop-backed ext4 for the bitmap"));
        let bitmap = bitmap_fs.as_ref().map(|fs| fs.path("md0.bitmap"));
        let mut args = vec![
            "--name".to_string(),
            "ctl".into(),
            "--size".into(),
            "24M".into(),
        ];
        if let Some(b) = &bitmap {
            args.extend([
                "--bitmap".into(),
                b.display().to_string(),
                "--bitmap-chunk".into(),
                "64K".into(),
                "--delay".into(),
                "5".into(),
            ]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let created = create(&legs, &refs);
        assert_eq!(created.array_bytes, ARRAY_BYTES, "{}", created.stdout);
        Fixture {
            _bitmap_fs: bitmap_fs,
            legs,
            bitmap,
            created,
            dir,
        }
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// The mount options for this array's bitmap, then `extra`.
    fn mount(&self, extra: &[&str]) -> MountedArray {
        let mut args: Vec<String> = Vec::new();
        if let Some(b) = &self.bitmap {
            args.extend(["--bitmap".into(), b.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        MountedArray::mount(&self.legs, &self.mnt(), &refs)
    }

    fn leg_name(&self, i: usize) -> String {
        self.legs.name(i)
    }

    fn data_offset(&self) -> u64 {
        self.created.data_offset_sectors * 512
    }

    /// Both legs' superblocks clean with the same events, by the real mdadm, and the
    /// bitmap without a dirty bit.
    fn assert_stopped_clean(&self) {
        assert_stopped_clean(&self.legs.paths, self.bitmap.as_deref());
    }

    /// The legs' data regions hold the same bytes (the whole array).
    fn assert_legs_identical(&self) {
        self.legs.assert_identical(ARRAY_BYTES);
    }
}

// ---------------------------------------------------------------- md/ files

/// Asserts the write fails with `errno` and the daemon's log says why (a new line that
/// names the file and the value).
fn assert_refused(m: &MountedArray, rel: &str, value: &str, errno: i32) {
    let before = m.log().len();
    let err = m
        .write_md(rel, value)
        .err()
        .unwrap_or_else(|| panic!("{value:?} > md/{rel} was accepted"));
    assert_eq!(
        err.raw_os_error(),
        Some(errno),
        "{value:?} > md/{rel}: {err}, wanted {}",
        std::io::Error::from_raw_os_error(errno)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = m.log();
        let new = &log[before.min(log.len())..];
        if new.contains(&format!("md/{rel}")) && new.lines().any(|l| l.contains("refused")) {
            eprintln!("{value:?} > md/{rel}: {err}; log: {}", new.trim());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{value:?} > md/{rel} refused ({err}) without a log line saying why; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file under md/, as paths relative to it.
fn md_tree(mnt: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).expect("read_dir md/") {
            let e = e.expect("dir entry");
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.file_type().expect("file type").is_dir() {
                walk(&e.path(), &format!("{name}/"), out);
            } else {
                out.insert(name);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&mnt.join("md"), "", &mut out);
    out
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn out_text(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// `mdfuse detail MNT` as `Key : value` lines and the device rows (state words, leg).
struct Detail {
    text: String,
}

impl Detail {
    fn of(mnt: &Path) -> Detail {
        let o = mdfuse_with(&["detail"], &[mnt]);
        assert_ok("mdfuse detail", &o);
        Detail { text: stdout(&o) }
    }

    fn field(&self, key: &str) -> String {
        examine_field(&self.text, key)
            .unwrap_or_else(|| panic!("no {key:?} in mdfuse detail:\n{}", self.text))
    }

    /// The row of `leg`: "slot state words".
    fn row(&self, leg: &str) -> Option<String> {
        self.text
            .lines()
            .skip_while(|l| !l.contains("RaidDevice State"))
            .find(|l| l.split_whitespace().last() == Some(leg))
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w[1..w.len() - 1].join(" ")
            })
    }
}

/// What `mdfuse detail` says must match the md/ files: counts, state, each leg's row.
fn assert_detail_agrees(m: &MountedArray, legs: &[String]) {
    let mnt = m.mountpoint();
    // array_state moves from active to clean on its own (the safe-mode
    // timer), so detail's State may be either reading around it.
    let state_before = m.md("array_state");
    let d = Detail::of(mnt);
    let state_after = m.md("array_state");
    let raid_disks: usize = m.md("raid_disks").parse().expect("raid_disks");
    let degraded: usize = m.md("degraded").parse().expect("degraded");
    let mut in_sync = 0;
    let mut faulty = 0;
    let mut present = 0;
    for leg in legs {
        let dev = mnt.join("md").join(format!("dev-{leg}"));
        let row = d.row(leg);
        if !dev.exists() {
            assert!(row.is_none(), "detail lists removed leg {leg}:\n{}", d.text);
            continue;
        }
        present += 1;
        let state = m.md(&format!("dev-{leg}/state"));
        let slot = m.md(&format!("dev-{leg}/slot"));
        let words = match state.as_str() {
            "in_sync" => "active sync",
            "spare" => "spare rebuilding",
            "faulty" => "faulty",
            other => panic!("unexpected state {other}"),
        };
        in_sync += (state == "in_sync") as usize;
        faulty += (state == "faulty") as usize;
        assert_eq!(
            row.as_deref(),
            Some(format!("{slot} {words}").as_str()),
            "detail's row for {leg} (files: state {state}, slot {slot}):\n{}",
            d.text
        );
    }
    assert_eq!(raid_disks - in_sync, degraded, "md/degraded vs dev-*/state");
    assert_eq!(d.field("Raid Devices"), raid_disks.to_string());
    assert_eq!(d.field("Total Devices"), present.to_string());
    assert_eq!(d.field("Active Devices"), in_sync.to_string());
    assert_eq!(d.field("Failed Devices"), faulty.to_string());
    assert_eq!(d.field("Working Devices"), (present - faulty).to_string());
    let state = d.field("State");
    assert!(
        state.starts_with(&state_before) || state.starts_with(&state_after),
        "State : {state}; array_state {state_before}, then {state_after}"
    );
    assert_eq!(state.contains("degraded"), degraded > 0, "State : {state}");
    assert_eq!(d.field("Mismatch Count"), m.md("mismatch_cnt"));
}

/// Writes `len` bytes of `tag` at `offset` through array.img (O_DIRECT) and fsyncs.
fn write_image(image: &Path, offset: u64, len: usize, tag: u8) {
    let f = open_direct(image, true);
    let mut buf = AlignedVec::zeroed(len);
    buf.as_mut_slice().fill(tag);
    f.write_all_at(buf.as_slice(), offset)
        .unwrap_or_else(|e| panic!("write {len} bytes at {offset}: {e}"));
    f.sync_all().expect("fsync array.img");
}

/// `mdfuse wait MNT` with its output piped (not a terminal).
fn spawn_wait(mnt: &Path) -> std::process::Child {
    Command::new(bin())
        .arg("wait")
        .arg(mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mdfuse wait")
}

/// Runs `mdfuse wait MNT` to its end (at most `secs`); returns its output.
fn mdfuse_wait(mnt: &Path, secs: u64) -> String {
    let child = spawn_wait(mnt);
    finish_wait(child, secs)
}

fn finish_wait(mut child: std::process::Child, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().expect("wait output");
            panic!("mdfuse wait still runs after {secs} s:\n{}", out_text(&o));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().expect("wait output");
    assert_ok("mdfuse wait", &o);
    stdout(&o)
}

/// `sh -c SCRIPT` as nobody (uid/gid 65534, no groups).
fn as_nobody(script: &str) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv (util-linux)")
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

// ---------------------------------------------------------------- tests

/// Every md/ file of a fresh array with a bitmap, with md's value and mode: the list is
/// exactly what mdfuse serves of md's attributes, and each reads as md 6.1 printed it for
/// the same kind of array (see docs/design.md). Then what changes with the first write.
#[test]
fn every_md_file_reads_as_md_prints_it() {
    if !needs_root("every_md_file_reads_as_md_prints_it") {
        return;
    }
    let fx = Fixture::new(true);
    let m = fx.mount(&["--delay", "60"]);
    let mnt = m.mountpoint().to_path_buf();
    let (l0, l1) = (fx.leg_name(0), fx.leg_name(1));
    let offset_sectors = fx.created.data_offset_sectors;
    let leg_kib = (LEG_BYTES / 512 - offset_sectors) / 2;
    let uuid = fx.created.uuid.replace(':', "");
    let md_uuid = format!(
        "{}-{}-{}-{}-{}",
        &uuid[..8],
        &uuid[8..12],
        &uuid[12..16],
        &uuid[16..20],
        &uuid[20..]
    );
    let mut expected: Vec<(String, String, u32)> = [
        ("array_state", "clean", 0o444),
        ("level", "raid1", 0o444),
        ("raid_disks", "2", 0o444),
        ("degraded", "0", 0o444),
        ("metadata_version", "1.2", 0o444),
        ("uuid", md_uuid.as_str(), 0o444),
        ("component_size", "24576", 0o444),
        ("array_size", "default", 0o444),
        ("consistency_policy", "bitmap", 0o444),
        ("resync_start", "none", 0o444),
        ("sync_action", "idle", 0o644),
        ("sync_completed", "none", 0o444),
        ("sync_speed", "none", 0o444),
        ("sync_speed_min", "1000 (system)", 0o644),
        ("sync_speed_max", "200000 (system)", 0o644),
        ("mismatch_cnt", "0", 0o444),
        ("last_sync_action", "none", 0o444),
        ("sync_copied", "0", 0o444),
        ("max_read_errors", "20", 0o644),
        ("safe_mode_delay", "0.200", 0o644),
        ("bitmap/location", "file", 0o644),
        ("bitmap/space", "0", 0o444),
        ("bitmap/time_base", "5", 0o444),
        ("bitmap/backlog", "0", 0o444),
        ("bitmap/chunksize", "65536", 0o644),
        ("bitmap/metadata", "internal", 0o444),
        ("bitmap/can_clear", "true", 0o444),
        ("bitmap/max_backlog_used", "0", 0o444),
    ]
    .iter()
    .map(|(n, v, m)| (n.to_string(), v.to_string(), *m))
    .collect();
    for (slot, leg) in [&l0, &l1].into_iter().enumerate() {
        for (attr, value, mode) in [
            ("state", "in_sync".to_string(), 0o644),
            ("errors", "0".into(), 0o444),
            ("slot", slot.to_string(), 0o444),
            ("offset", offset_sectors.to_string(), 0o444),
            ("size", leg_kib.to_string(), 0o444),
            ("recovery_start", "none".into(), 0o444),
        ] {
            expected.push((format!("dev-{leg}/{attr}"), value, mode));
        }
    }
    let mut want_tree: BTreeSet<String> = expected.iter().map(|e| e.0.clone()).collect();
    want_tree.insert("new_dev".into());
    for leg in [&l0, &l1] {
        want_tree.insert(format!("dev-{leg}/block/stat"));
        // A block device's stat line: 17 counters, each right-aligned in 8.
        let rel = format!("dev-{leg}/block/stat");
        let stat = m.md(&rel);
        let fields: Vec<u64> = stat
            .split_whitespace()
            .map(|f| f.parse().expect("a counter"))
            .collect();
        assert_eq!(fields.len(), 17, "md/{rel}: {stat:?}");
        assert!(fields[0] > 0 && fields[2] > 0, "the leg was read: {stat:?}");
        assert_eq!(mode_of(&mnt.join("md").join(&rel)), 0o444);
    }
    assert_eq!(md_tree(&mnt), want_tree, "the files under md/");
    for (rel, value, mode) in &expected {
        assert_eq!(&m.md(rel), value, "md/{rel}");
        assert_eq!(
            mode_of(&mnt.join("md").join(rel)),
            *mode,
            "mode of md/{rel}"
        );
    }

    // new_dev is write-only (0200) as in md: even root cannot open it for reading.
    let new_dev = mnt.join("md/new_dev");
    assert_eq!(mode_of(&new_dev), 0o200);
    let err = std::fs::read_to_string(&new_dev).expect_err("new_dev was readable");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    // The directories are md's: 0755.
    for d in ["", "bitmap", &format!("dev-{l0}")] {
        assert_eq!(mode_of(&mnt.join("md").join(d)), 0o755, "md/{d}");
    }
    // mdadm --detail words for the same array.
    let d = Detail::of(&mnt);
    assert_eq!(d.field("UUID"), fx.created.uuid);
    assert_eq!(d.field("Consistency Policy"), "bitmap");
    assert_detail_agrees(&m, &[l0.clone(), l1.clone()]);

    // The first write marks the array active and raises the bitmap's events_cleared,
    // which md reports as can_clear=false until the daemon writes the header (here not
    // for 30 s: --delay 60 makes the daemon tick every 30 s).
    write_image(&m.image(), 0, 64 << 10, 0x5a);
    assert_eq!(m.md("array_state"), "active");
    assert_eq!(m.md("bitmap/can_clear"), "false");
    assert_eq!(m.md("resync_start"), "none");
    m.stop();
    fx.assert_stopped_clean();
}

/// Without a bitmap md still has bitmap/ (location none, zeros, an empty can_clear) and
/// its consistency policy is resync.
#[test]
fn an_array_without_a_bitmap_reads_as_md_prints_it() {
    if !needs_root("an_array_without_a_bitmap_reads_as_md_prints_it") {
        return;
    }
    let fx = Fixture::new(false);
    let m = fx.mount(&[]);
    let mnt = m.mountpoint().to_path_buf();
    for (rel, value) in [
        ("consistency_policy", "resync"),
        ("bitmap/location", "none"),
        ("bitmap/chunksize", "0"),
        ("bitmap/time_base", "0"),
        ("bitmap/space", "0"),
        ("bitmap/backlog", "0"),
        ("bitmap/metadata", "internal"),
        ("bitmap/can_clear", ""),
        ("bitmap/max_backlog_used", "0"),
        ("resync_start", "none"),
    ] {
        assert_eq!(m.md(rel), value, "md/{rel}");
    }
    let d = Detail::of(&mnt);
    assert_eq!(d.field("Consistency Policy"), "resync");
    assert!(
        !d.text.contains("Intent Bitmap"),
        "detail shows a bitmap:\n{}",
        d.text
    );
    m.stop();
    fx.assert_stopped_clean();
}

/// `echo check > md/sync_action` on legs that differ in two places: 64 KiB at array offset
/// 1 MiB (one of md's 64 KiB units) and 64 KiB at 5 MiB + 4 KiB (straddling two). Linux md
/// counts 384 sectors for this very layout. While the check runs, sync_action reads check,
/// sync_completed moves, mdstat shows md's progress line and `mdfuse wait` (not on a
/// terminal) prints plain progress lines and returns when it ends. repair then counts the
/// same and makes the legs equal, and a check after it counts 0.
#[test]
fn check_counts_mismatches_in_md_units_and_repair_fixes_them() {
    if !needs_root("check_counts_mismatches_in_md_units_and_repair_fixes_them") {
        return;
    }
    let fx = Fixture::new(true);
    let m = fx.mount(&[]);
    let data = m.fill_random(0, ARRAY_BYTES as usize, 0x5eed_c0de);
    m.stop();
    fx.assert_stopped_clean();
    fx.assert_legs_identical();

    // Different bytes straight into leg1's data region while the array is stopped.
    let leg1 = std::fs::OpenOptions::new()
        .write(true)
        .open(fx.legs.path(1))
        .expect("open leg1");
    for at in [MIB, 5 * MIB + 4096] {
        let flipped: Vec<u8> = data[at as usize..(at + 65536) as usize]
            .iter()
            .map(|b| !b)
            .collect();
        leg1.write_all_at(&flipped, fx.data_offset() + at)
            .expect("write leg1");
    }
    leg1.sync_all().expect("fsync leg1");
    drop(leg1);

    let m = fx.mount(&[]);
    let mnt = m.mountpoint().to_path_buf();
    // 24 MiB at 2000 KiB/s: about 12 s, time to watch it.
    m.set_md("sync_speed_max", "2000");
    m.set_md("sync_action", "check");
    let waiter = spawn_wait(&mnt);
    let mut completed = BTreeSet::new();
    let mut refused_busy = false;
    let mut max_speed = 0;
    let mut saw_progress_line = false;
    let mut saw_detail = false;
    let t0 = Instant::now();
    loop {
        let action = m.md("sync_action");
        if action == "idle" {
            break;
        }
        assert_eq!(action, "check");
        assert_eq!(m.md("array_state"), "clean", "a check writes nothing");
        let c = m.md("sync_completed");
        if c != "none" {
            let (done, total) = c.split_once(" / ").expect("sync_completed N / M");
            assert_eq!(total, "49152", "sync_completed {c}");
            let done: u64 = done.parse().expect("sectors done");
            completed.insert(done);
            let speed: u64 = m.md("sync_speed").parse().expect("sync_speed in KiB/s");
            if done > 0 {
                // Past the first throttled step (before it, one region in a few
                // milliseconds reads as a burst).
                max_speed = max_speed.max(speed);
            }
        }
        if let Some(l) = m.mdstat().lines().find(|l| l.contains("check =")) {
            assert!(
                is_progress_line(l, "check", 24576),
                "mdstat's progress line {l:?}"
            );
            saw_progress_line = true;
        }
        if !saw_detail && completed.len() > 1 {
            let d = Detail::of(&mnt);
            let status = d.field("Check Status");
            assert!(status.ends_with("% complete"), "{status}");
            assert!(d.field("State").contains("check"), "{}", d.text);
            saw_detail = true;
        }
        if completed.len() >= 2 && !refused_busy {
            // One sync at a time, as md.
            assert_refused(&m, "sync_action", "check", libc::EBUSY);
            assert_refused(&m, "sync_action", "repair", libc::EBUSY);
            refused_busy = true;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "check still runs");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        completed.len() >= 3,
        "sync_completed did not move: {completed:?}"
    );
    assert!(
        saw_progress_line,
        "mdstat never showed the check's progress"
    );
    assert!(saw_detail, "detail never caught the check");
    assert!(
        refused_busy,
        "the check ended before a second one could be refused"
    );
    let waited = finish_wait(waiter, 30);
    let lines: Vec<&str> = waited.lines().collect();
    assert!(!waited.contains('\r'), "progress bar on a pipe: {waited:?}");
    let progress: Vec<&&str> = lines.iter().filter(|l| l.starts_with("check: ")).collect();
    assert!(
        progress.len() >= 2,
        "wait printed no progress lines:\n{waited}"
    );
    for l in &progress {
        assert!(
            l.contains("% (") && l.contains("/49152 sectors)") && l.ends_with(" KiB/s"),
            "wait line {l:?}"
        );
    }
    assert!(
        lines
            .last()
            .is_some_and(|l| l.ends_with("no sync running (mismatch_cnt 384)")),
        "wait's last line:\n{waited}"
    );
    assert_eq!(m.md("mismatch_cnt"), "384");
    assert_eq!(m.md("sync_completed"), "none");
    assert_eq!(m.md("sync_speed"), "none");
    assert!(!m.mdstat().contains("check ="), "{}", m.mdstat());
    assert_eq!(Detail::of(&mnt).field("Mismatch Count"), "384");

    m.set_md("sync_speed_max", "system");
    m.set_md("sync_action", "repair");
    mdfuse_wait(&mnt, 60);
    assert_eq!(m.md("mismatch_cnt"), "384", "repair counts what it rewrote");
    m.set_md("sync_action", "check");
    mdfuse_wait(&mnt, 60);
    assert_eq!(
        m.md("mismatch_cnt"),
        "0",
        "the legs still differ after repair"
    );
    m.stop();
    fx.assert_stopped_clean();
    fx.assert_legs_identical();
}

/// md's mdstat progress line for `action` over `total_kib`:
/// `      [==>..................]  check = 12.5% (3072/24576) finish=0.1min speed=2688K/sec`.
fn is_progress_line(line: &str, action: &str, total_kib: u64) -> bool {
    let parse = || -> Option<bool> {
        let rest = line.strip_prefix("      [")?;
        let (bar, rest) = rest.split_once(']')?;
        let filled = bar.chars().take_while(|c| *c == '=').count();
        let bar_ok = bar.len() == 21
            && bar[filled..].starts_with('>')
            && bar[filled + 1..].chars().all(|c| c == '.');
        let rest = rest.strip_prefix(&format!("  {action} ="))?;
        let (pct, rest) = rest.trim_start_matches(' ').split_once("% (")?;
        let (whole, tenth) = pct.split_once('.')?;
        let pct_ok = whole.parse::<u32>().ok()? <= 100 && tenth.parse::<u8>().ok()? < 10;
        let (done, rest) = rest.split_once(&format!("/{total_kib}) finish="))?;
        let (finish, rest) = rest.split_once("min speed=")?;
        let (mins, tenth) = finish.split_once('.')?;
        let speed = rest.strip_suffix("K/sec")?;
        Some(
            bar_ok
                && pct_ok
                && done.parse::<u64>().ok()? <= total_kib
                && mins.parse::<u64>().is_ok()
                && tenth.len() == 1
                && speed.parse::<u64>().is_ok(),
        )
    };
    parse().unwrap_or(false)
}

/// faulty, re-add (md's way, through the state file), then `mdfuse manage --fail` and
/// `--remove` (the dev- directory goes) and a re-add through md/new_dev: the leg comes
/// back, is recovered from the bitmap, and `mdfuse detail` agrees with the files at each
/// step. Refusals md makes on the way: remove of an in-sync leg, failing the last one,
/// re-add of a leg that is not faulty.
#[test]
fn fail_remove_and_re_add_through_the_files_and_manage() {
    if !needs_root("fail_remove_and_re_add_through_the_files_and_manage") {
        return;
    }
    let fx = Fixture::new(true);
    let m = fx.mount(&[]);
    let mnt = m.mountpoint().to_path_buf();
    let (l0, l1) = (fx.leg_name(0), fx.leg_name(1));
    let legs = [l0.clone(), l1.clone()];
    write_image(&m.image(), 0, MIB as usize, 0x11);
    assert_detail_agrees(&m, &legs);

    assert_refused(&m, &format!("dev-{l0}/state"), "remove", libc::EBUSY);
    assert_refused(&m, &format!("dev-{l1}/state"), "re-add", libc::EBUSY);
    m.set_md(&format!("dev-{l1}/state"), "faulty");
    assert_eq!(m.md(&format!("dev-{l1}/state")), "faulty");
    assert_eq!(m.md(&format!("dev-{l1}/slot")), "none");
    assert_eq!(m.md(&format!("dev-{l1}/recovery_start")), "0");
    assert_eq!(m.md("degraded"), "1");
    let mdstat = m.mdstat();
    assert!(mdstat.contains(&format!("{l1}[1](F)")), "{mdstat}");
    assert!(mdstat.contains("[2/1] [U_]"), "{mdstat}");
    assert_detail_agrees(&m, &legs);
    // The last in-sync leg is never failed (md: EBUSY).
    assert_refused(&m, &format!("dev-{l0}/state"), "faulty", libc::EBUSY);
    assert_eq!(m.md(&format!("dev-{l0}/state")), "in_sync");

    // Written while degraded: the bitmap keeps these chunks for the re-add.
    write_image(&m.image(), 4 * MIB, MIB as usize, 0x22);
    m.set_md(&format!("dev-{l1}/state"), "re-add");
    let dev_state = mnt.join(format!("md/dev-{l1}/state"));
    assert!(dev_state.exists());
    mdfuse_wait(&mnt, 60);
    assert_eq!(m.md(&format!("dev-{l1}/state")), "in_sync");
    assert_eq!(m.md(&format!("dev-{l1}/slot")), "1");
    assert_eq!(m.md(&format!("dev-{l1}/recovery_start")), "none");
    assert_eq!(m.md("degraded"), "0");
    assert!(
        m.log().contains("re-added: bitmap-guided recovery"),
        "{}",
        m.log()
    );
    assert_detail_agrees(&m, &legs);

    // The same through mdfuse manage.
    let o = mdfuse_with(&["manage"], &[&mnt, Path::new("--fail"), fx.legs.path(1)]);
    assert_ok("mdfuse manage --fail", &o);
    assert_eq!(m.md(&format!("dev-{l1}/state")), "faulty");
    assert_detail_agrees(&m, &legs);
    let o = mdfuse_with(&["manage"], &[&mnt, Path::new("--remove"), fx.legs.path(1)]);
    assert_ok("mdfuse manage --remove", &o);
    assert!(!dev_state.exists(), "dev-{l1} still there after remove");
    assert!(!md_tree(&mnt)
        .iter()
        .any(|f| f.starts_with(&format!("dev-{l1}/"))));
    assert!(!m.mdstat().contains(&l1), "{}", m.mdstat());
    assert_eq!(m.md("degraded"), "1");
    assert_detail_agrees(&m, &legs);
    // Gone: its files are no more (md: the directory is gone).
    let err = m
        .write_md(&format!("dev-{l1}/state"), "remove")
        .expect_err("state of a removed leg");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");

    write_image(&m.image(), 12 * MIB, MIB as usize, 0x33);
    assert_refused(&m, "new_dev", "re-add leg1.img", libc::EINVAL);
    let value = format!("re-add {}", fx.legs.path(1).display());
    m.set_md("new_dev", &value);
    assert!(dev_state.exists(), "dev-{l1} not back after re-add");
    mdfuse_wait(&mnt, 60);
    assert_eq!(m.md(&format!("dev-{l1}/state")), "in_sync");
    assert_eq!(m.md("degraded"), "0");
    assert_detail_agrees(&m, &legs);
    // A second re-add of a member in the array is refused.
    assert_refused(&m, "new_dev", &value, libc::EBUSY);
    m.stop();
    fx.assert_stopped_clean();
    fx.assert_legs_identical();
}

/// Without a bitmap a re-added leg is fully recovered: slowed down, the recovery is seen
/// as md shows it (sync_action recover, the leg a spare in its slot, recovery_start
/// moving, mdstat's recovery line, detail's Rebuild Status), and the leg cannot be
/// removed while it is recovered.
/// A leg removed and re-added at once, again and again, is never refused
/// as still in use: once removed, its file (and lock) is let go, however
/// idle the threads that last wrote it are.
#[test]
fn a_leg_re_added_right_after_its_removal_is_never_busy() {
    if !needs_root("a_leg_re_added_right_after_its_removal_is_never_busy") {
        return;
    }
    let legs = Legs::temp(256 * MIB);
    create(&legs, &["--name", "readd"]);
    let m = MountedArray::mount(&legs, &legs.mountpoint("mnt"), &[]);
    m.set_md("sync_speed_max", "2000000");
    let l1 = "leg1.img";
    for round in 0..20u64 {
        // Writes and an fsync reach the leg just before it goes; each
        // full recovery writes all of it.
        m.fill_random(round * 7 * MIB, 4 * MIB as usize, round);
        m.fail_and_remove(l1);
        m.set_md("new_dev", &format!("re-add {}", legs.path(1).display()));
        m.wait_sync_idle(Duration::from_secs(60));
        assert_eq!(m.md(&format!("dev-{l1}/state")), "in_sync", "round {round}");
    }
}

#[test]
fn a_full_recovery_shows_as_md_shows_it() {
    if !needs_root("a_full_recovery_shows_as_md_shows_it") {
        return;
    }
    let fx = Fixture::new(false);
    let m = fx.mount(&[]);
    let mnt = m.mountpoint().to_path_buf();
    let (l0, l1) = (fx.leg_name(0), fx.leg_name(1));
    let legs = [l0.clone(), l1.clone()];
    m.fill_random(0, ARRAY_BYTES as usize, 42);
    m.fail_and_remove(&l1);
    m.set_md("sync_speed_max", "2000");
    m.set_md("new_dev", &format!("re-add {}", fx.legs.path(1).display()));
    let mut reached = BTreeSet::new();
    let mut saw_detail = false;
    let t0 = Instant::now();
    loop {
        // Read once: the recovery may end between two reads.
        let action = m.md("sync_action");
        if action == "idle" {
            break;
        }
        assert_eq!(action, "recover");
        let state = m.md(&format!("dev-{l1}/state"));
        if state == "in_sync" {
            break;
        }
        assert_eq!(state, "spare");
        assert_eq!(
            m.md(&format!("dev-{l1}/slot")),
            "1",
            "md keeps a recovering spare in its slot"
        );
        // Each value is read once, and the recovery may end between two
        // reads: a value an in-sync leg shows ends the loop if the leg is
        // in sync by then.
        let in_sync_now = || m.md(&format!("dev-{l1}/state")) == "in_sync";
        let degraded = m.md("degraded");
        if degraded == "0" && in_sync_now() {
            break;
        }
        assert_eq!(degraded, "1");
        let r = m.md(&format!("dev-{l1}/recovery_start"));
        if r == "none" && in_sync_now() {
            break;
        }
        let r: u64 = r
            .parse()
            .expect("recovery_start is a sector while recovering");
        assert!(r <= ARRAY_BYTES / 512);
        reached.insert(r);
        let mdstat = m.mdstat();
        if !mdstat.contains("[2/1] [U_]") && in_sync_now() {
            break;
        }
        assert!(mdstat.contains("[2/1] [U_]"), "{mdstat}");
        if reached.len() == 2 && !saw_detail {
            assert!(
                mdstat
                    .lines()
                    .any(|l| is_progress_line(l, "recovery", 24576)),
                "{mdstat}"
            );
            let d = Detail::of(&mnt);
            assert!(
                d.field("Rebuild Status").ends_with("% complete"),
                "{}",
                d.text
            );
            assert_eq!(
                d.row(&l1).as_deref(),
                Some("1 spare rebuilding"),
                "{}",
                d.text
            );
            assert_detail_agrees(&m, &legs);
            saw_detail = true;
            // md: no device leaves while it is being recovered.
            assert_refused(&m, &format!("dev-{l1}/state"), "remove", libc::EBUSY);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "recovery still runs"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        reached.len() >= 3,
        "recovery_start did not move: {reached:?}"
    );
    assert!(saw_detail);
    m.set_md("sync_speed_max", "system");
    mdfuse_wait(&mnt, 60);
    assert_eq!(m.md(&format!("dev-{l1}/state")), "in_sync");
    assert_eq!(m.md(&format!("dev-{l1}/recovery_start")), "none");
    assert_eq!(m.md("degraded"), "0");
    assert!(m.log().contains("full recovery"), "{}", m.log());
    assert_detail_agrees(&m, &legs);
    m.stop();
    fx.assert_stopped_clean();
    fx.assert_legs_identical();
}

/// sync_speed_min/max take a number of KiB/s ("local") or `system` (md's default back),
/// and read back as md prints them; 0 and words are refused as md refuses them.
#[test]
fn speed_limits_read_back_as_md_prints_them() {
    if !needs_root("speed_limits_read_back_as_md_prints_them") {
        return;
    }
    let fx = Fixture::new(false);
    let m = fx.mount(&[]);
    for (file, value, shown) in [
        ("sync_speed_min", "5000", "5000 (local)"),
        // The default's value set on purpose is still local, as in md.
        ("sync_speed_min", "1000", "1000 (local)"),
        ("sync_speed_min", "system", "1000 (system)"),
        ("sync_speed_max", "100000", "100000 (local)"),
        ("sync_speed_max", "system", "200000 (system)"),
    ] {
        m.set_md(file, value);
        assert_eq!(m.md(file), shown, "{value} > md/{file}");
    }
    for bad in ["0", "bogus", "-5", ""] {
        assert_refused(&m, "sync_speed_min", bad, libc::EINVAL);
    }
    // Past 32 bits: md's kstrtouint says ERANGE.
    assert_refused(&m, "sync_speed_min", "4294967296", libc::ERANGE);
    assert_eq!(m.md("sync_speed_min"), "1000 (system)");
    // A reader that reads a file in pieces gets one text, even when the
    // value changes between its reads (as sysfs gives each open its own).
    let file = m.mountpoint().join("md/sync_speed_min");
    let reader = std::fs::File::open(&file).expect("open sync_speed_min");
    let mut head = [0u8; 3];
    assert_eq!(reader.read_at(&mut head, 0).expect("first piece"), 3);
    m.set_md("sync_speed_min", "5000");
    let mut rest = [0u8; 64];
    let n = reader.read_at(&mut rest, 3).expect("the rest");
    let whole = [&head[..], &rest[..n]].concat();
    assert_eq!(String::from_utf8_lossy(&whole), "1000 (system)\n");
    let mut again = [0u8; 64];
    let n = reader.read_at(&mut again, 0).expect("read again from 0");
    assert_eq!(String::from_utf8_lossy(&again[..n]), "5000 (local)\n");
    drop(reader);
    m.stop();
}

/// Each invalid write is refused with md's errno and a log line in the daemon's log
/// saying why, and changes nothing.
#[test]
fn invalid_writes_are_refused_with_a_reason_in_the_log() {
    if !needs_root("invalid_writes_are_refused_with_a_reason_in_the_log") {
        return;
    }
    let fx = Fixture::new(true);
    let m = fx.mount(&[]);
    let mnt = m.mountpoint().to_path_buf();
    let l0 = fx.leg_name(0);
    assert_refused(&m, "sync_action", "bogus", libc::EINVAL);
    assert_refused(&m, &format!("dev-{l0}/state"), "bogus", libc::EINVAL);
    assert_refused(&m, "new_dev", "relative/leg.img", libc::EINVAL);
    // Read-only attributes cannot even be opened for writing (md: EACCES).
    for ro in [
        "degraded",
        "mismatch_cnt",
        "sync_completed",
        "uuid",
        "bitmap/space",
    ] {
        assert_refused(&m, ro, "1", libc::EACCES);
    }
    // md's chunksize_store: only while there is no bitmap; location takes
    // nothing but none while there is one.
    assert_refused(&m, "bitmap/chunksize", "65536", libc::EBUSY);
    assert_refused(&m, "bitmap/location", "+8", libc::EBUSY);
    assert_refused(&m, "bitmap/location", "bogus", libc::EBUSY);
    assert_refused(&m, &format!("dev-{l0}/state"), "remove", libc::EBUSY);
    assert_refused(&m, &format!("dev-{l0}/state"), "re-add", libc::EBUSY);
    // Failing one leg is fine; the other is then the last and md refuses to fail it.
    m.set_md(&format!("dev-{}/state", fx.leg_name(1)), "faulty");
    assert_refused(&m, &format!("dev-{l0}/state"), "faulty", libc::EBUSY);
    assert_eq!(m.md(&format!("dev-{l0}/state")), "in_sync");
    // chmod of a control file is not the way to change it.
    let err = std::fs::set_permissions(
        mnt.join("md/sync_action"),
        std::fs::Permissions::from_mode(0o666),
    )
    .expect_err("chmod of md/sync_action");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    assert_eq!(m.md("sync_action"), "idle");
    assert_eq!(m.md("degraded"), "1");
    m.stop();
}

/// With allow_other another user reads md/ and mdstat but writes no control file
/// (EACCES); array.img is the mounting user's (0600) unless --image-mode or chmod/chown
/// open it. Without allow_other another user cannot even see the mount.
#[test]
fn other_users_read_but_cannot_write_control_files() {
    if !needs_root("other_users_read_but_cannot_write_control_files") {
        return;
    }
    let fx = Fixture::new(false);
    let mnt = fx.mnt();
    let img = sh_quote(&mnt.join("array.img"));
    let action = sh_quote(&mnt.join("md/sync_action"));

    let m = fx.mount(&[]);
    let o = as_nobody(&format!("cat {action}"));
    assert!(!o.status.success(), "nobody read md/ without allow_other");
    assert!(stderr(&o).contains("Permission denied"), "{}", out_text(&o));
    // Whatever the image's mode, the kernel keeps others out.
    std::fs::set_permissions(m.image(), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let o = as_nobody(&format!("head -c 512 {img} >/dev/null"));
    assert!(
        !o.status.success(),
        "nobody read array.img without allow_other"
    );
    m.stop();

    let m = fx.mount(&["--allow-other"]);
    // A new mount starts from the option's mode again: chmod lasts a mount's life.
    assert_eq!(mode_of(&m.image()), 0o600);
    let o = as_nobody(&format!("cat {action} {}", sh_quote(&mnt.join("mdstat"))));
    assert_ok(
        "nobody reads md/sync_action and mdstat with allow_other",
        &o,
    );
    assert!(stdout(&o).starts_with("idle\n"), "{}", stdout(&o));
    let o = as_nobody(&format!("echo check > {action}"));
    assert!(!o.status.success(), "nobody wrote md/sync_action");
    assert!(stderr(&o).contains("Permission denied"), "{}", out_text(&o));
    assert_eq!(m.md("sync_action"), "idle");
    let o = as_nobody(&format!("head -c 512 {img} >/dev/null"));
    assert!(stderr(&o).contains("Permission denied"), "{}", out_text(&o));
    // Only the owner may chmod it.
    let o = as_nobody(&format!("chmod 666 {img}"));
    assert!(
        stderr(&o).contains("Operation not permitted"),
        "{}",
        out_text(&o)
    );
    // chmod by its owner opens it for reading...
    std::fs::set_permissions(m.image(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_eq!(mode_of(&m.image()), 0o644);
    let o = as_nobody(&format!("head -c 4096 {img} | wc -c"));
    assert_ok("nobody reads a 0644 array.img", &o);
    assert_eq!(stdout(&o).trim(), "4096");
    let write = format!("printf x | dd of={img} conv=notrunc status=none");
    let o = as_nobody(&write);
    assert!(stderr(&o).contains("Permission denied"), "{}", out_text(&o));
    // ... and chown gives it away.
    std::os::unix::fs::chown(m.image(), Some(65534), Some(65534)).expect("chown array.img");
    let meta = std::fs::metadata(m.image()).expect("stat");
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta)
        ),
        (65534, 65534)
    );
    let o = as_nobody(&write);
    assert_ok("nobody writes an array.img of its own", &o);
    let mut first = [0u8; 1];
    std::fs::File::open(m.image())
        .and_then(|f| f.read_exact_at(&mut first, 0))
        .expect("read back");
    assert_eq!(&first, b"x");
    // Control files stay root's.
    assert_eq!(mode_of(&mnt.join("md/sync_action")), 0o644);
    m.stop();
    fx.assert_stopped_clean();

    // --image-mode sets it at mount; a read-only mount never has write bits.
    let m = fx.mount(&["--allow-other", "--image-mode", "0644"]);
    assert_eq!(mode_of(&m.image()), 0o644);
    let o = as_nobody(&format!("head -c 4096 {img} | wc -c"));
    assert_ok("nobody reads array.img mounted with --image-mode 0644", &o);
    m.stop();
    let m = fx.mount(&["--ro", "--image-mode", "0666"]);
    assert_eq!(mode_of(&m.image()), 0o444);
    assert_eq!(mode_of(&mnt.join("md/sync_action")), 0o444);
    assert!(
        !mnt.join("md/new_dev").exists(),
        "a read-only array takes no new_dev"
    );
    m.stop();
    let o = mdfuse_with(
        &["mount", "--image-mode", "0999"],
        &[fx.legs.path(0), fx.legs.path(1), &mnt],
    );
    let err = assert_fails("mdfuse mount --image-mode 0999", &o);
    assert!(err.contains("octal"), "{err}");
    assert!(!is_mounted(&mnt));
}

/// `mdfuse stop` returns once the superblocks record clean, and SIGINT and SIGTERM to
/// the daemon stop it as cleanly: superblocks clean, bitmap clean, mount gone.
#[test]
fn stop_sigint_and_sigterm_each_stop_the_array_clean() {
    if !needs_root("stop_sigint_and_sigterm_each_stop_the_array_clean") {
        return;
    }
    let fx = Fixture::new(true);
    for (round, how) in ["stop", "SIGINT", "SIGTERM"].iter().enumerate() {
        let m = fx.mount(&[]);
        write_image(
            &m.image(),
            round as u64 * MIB,
            MIB as usize,
            round as u8 + 1,
        );
        assert_eq!(m.md("array_state"), "active");
        for leg in &fx.legs.paths {
            let state = examine_field(&mdadm_examine(leg), "State");
            assert_eq!(state.as_deref(), Some("active"), "{how}: before the stop");
        }
        let pid = m.pid();
        match *how {
            "stop" => m.stop(),
            "SIGTERM" => m.sigterm(),
            _ => {
                // SAFETY: kill has no memory-safety preconditions; pid is our daemon.
                unsafe { libc::kill(pid, libc::SIGINT) };
                assert!(
                    wait_pid_gone(pid, Duration::from_secs(30)),
                    "daemon still runs 30 s after SIGINT"
                );
                assert!(!is_mounted(&fx.mnt()), "still mounted after SIGINT");
                assert!(m.log().contains("signal 2"), "{}", m.log());
                drop(m);
            }
        }
        assert!(!is_mounted(&fx.mnt()), "{how}: still mounted");
        assert!(daemons_for(&fx.mnt()).is_empty(), "{how}: daemon left");
        fx.assert_stopped_clean();
    }
    fx.assert_legs_identical();
    let mut expected = vec![0u8; 3 * MIB as usize];
    for (i, chunk) in expected.chunks_mut(MIB as usize).enumerate() {
        chunk.fill(i as u8 + 1);
    }
    assert_eq!(
        data_region(fx.legs.path(0), fx.data_offset(), 3 * MIB),
        expected
    );
}
