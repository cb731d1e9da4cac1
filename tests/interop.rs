//! Interoperability with the real Linux md, both ways, judged by the kernel itself.
//!
//! md runs in the kernel-md rig (`../shared/kernel-md-rig`: a stock Debian 12 kernel and
//! mdadm 4.2 under qemu); `verify-foreign.sh` assembles legs plus a bitmap FILE there and
//! reports what md says. The rig is set up once per run of this binary (from Debian's
//! packages on a fresh machine). Run alone with `cargo test --release --test interop`.
//!
//! Needs root (loop devices, ext4 for the bitmap file, FUSE mounts). Tests run one at a time
//! (`kmd::serial`): each boot takes a core for ~10 s under TCG.
//!
//! Pattern: the rig's (`lib/pattern.py`), base tag 0x1111 over the whole array, overlays 0x2222,
//! leg perturbations 0x7777 (written straight into a leg copy, never through an array).

mod common;

use common::bitmap::{dirty_in_image, examine_bitmap};
use common::kmd::{self, Manifest, VerifyRun, SECTOR};
use common::loopdev::{needs_root, ScratchFs};
use common::mdfuse::{
    create, log_path, mdfuse_stdout, path_str, sha256_bytes, sha256_region, text, Legs,
    MountedArray,
};
use common::nbd::Server;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LEG_BYTES: u64 = 32 << 20;
const CHUNK: u64 = 64 << 10;
const BASE_TAG: u16 = 0x1111;
const OVERLAY_TAG: u16 = 0x2222;
const PERTURB_TAG: u16 = 0x7777;
/// What `mdfuse create` (and mdadm) give two 32 MiB legs: data at 1 MiB, 31744 KiB of array.
const DATA_OFFSET: u64 = 2048 * SECTOR;
const ARRAY_BYTES: u64 = 31744 * 1024;

/// Where an array's data sits on its legs, and its size (bytes).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Geometry {
    data_offset: u64,
    array_bytes: u64,
}

/// Two 32 MiB legs with metadata 1.2 (and 1.1): data at 1 MiB.
const V1_2: Geometry = Geometry {
    data_offset: DATA_OFFSET,
    array_bytes: ARRAY_BYTES,
};

// ---------------------------------------------------------------- mdfuse, the command

/// `mdfuse examine-bitmap --chunks FILE`: (fields, dirty chunks).
fn mdfuse_bitmap(file: &Path) -> (std::collections::BTreeMap<String, String>, Vec<u64>) {
    let (text, dirty) = examine_bitmap(file);
    (kmd::mdadm_fields(&text), dirty)
}

/// `mdfuse examine LEG`.
fn mdfuse_examine(leg: &Path) -> String {
    mdfuse_stdout(&["examine", path_str(leg)])
}

/// A leg, a bitmap file on an ext4 of its own (a loop device), and a mountpoint.
/// Field order is drop order: the ext4 goes before the directory with the legs.
struct TestArray {
    /// Held for its Drop: unmount, detach, remove.
    _bitmap_fs: ScratchFs,
    legs: Legs,
    /// The bitmap file, or for an internal bitmap leg0 (which carries a copy).
    bitmap: PathBuf,
    /// The bitmap is internal (on the legs): mounts take no `--bitmap`.
    internal: bool,
    mnt: PathBuf,
    uuid: String,
    geo: Geometry,
    dir: tempfile::TempDir,
}

impl Drop for TestArray {
    fn drop(&mut self) {
        // What its daemons left in /run/mdfuse (a killed one's event log).
        common::mdfuse::forget_run_files_under(self.dir.path());
    }
}

impl TestArray {
    fn scratch() -> (tempfile::TempDir, ScratchFs) {
        let dir = tempfile::Builder::new()
            .prefix("mdfuse-interop")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("mnt")).expect("mountpoint");
        let fs = ScratchFs::ext4(4096).expect("loop-backed ext4 for the bitmap file");
        (dir, fs)
    }

    /// `mdfuse create --bitmap BM --bitmap-chunk 64K` on two zero 32 MiB leg files.
    fn create(name: &str) -> TestArray {
        let arr = Self::create_version(name, "1.2");
        assert!(
            arr.geo == V1_2,
            "unexpected geometry {:?}, want {V1_2:?}",
            arr.geo
        );
        arr
    }

    /// [`TestArray::create`] with `--metadata VERSION` (1.0, 1.1 or 1.2).
    fn create_version(name: &str, version: &str) -> TestArray {
        let (dir, bitmap_fs) = Self::scratch();
        let legs = Legs::new(dir.path(), 2, LEG_BYTES);
        let bitmap = bitmap_fs.path("md0.bitmap");
        let created = create(
            &legs,
            &[
                "--name",
                name,
                "--bitmap",
                path_str(&bitmap),
                "--bitmap-chunk",
                "64K",
                "--metadata",
                version,
            ],
        );
        TestArray {
            geo: Geometry {
                data_offset: created.data_offset_sectors * SECTOR,
                array_bytes: created.array_bytes,
            },
            mnt: dir.path().join("mnt"),
            _bitmap_fs: bitmap_fs,
            legs,
            bitmap,
            internal: false,
            uuid: created.uuid,
            dir,
        }
    }

    /// `mdfuse create --bitmap internal --bitmap-chunk 64K` (metadata 1.2) on two zero
    /// 32 MiB leg files.
    fn create_internal(name: &str) -> TestArray {
        let (dir, bitmap_fs) = Self::scratch();
        let legs = Legs::new(dir.path(), 2, LEG_BYTES);
        let created = create(
            &legs,
            &[
                "--name",
                name,
                "--bitmap",
                "internal",
                "--bitmap-chunk",
                "64K",
            ],
        );
        let geo = Geometry {
            data_offset: created.data_offset_sectors * SECTOR,
            array_bytes: created.array_bytes,
        };
        assert_eq!(geo, V1_2, "internal bitmap, metadata 1.2");
        TestArray {
            geo,
            mnt: dir.path().join("mnt"),
            _bitmap_fs: bitmap_fs,
            bitmap: legs.paths[0].clone(),
            internal: true,
            legs,
            uuid: created.uuid,
            dir,
        }
    }

    /// A fixture set made by Linux md: legs decompressed, the bitmap file copied (as data,
    /// no holes) onto the loop-backed ext4.
    fn from_fixture(set: &Path) -> TestArray {
        let (dir, bitmap_fs) = Self::scratch();
        let legs = kmd::fixture_legs(set, dir.path());
        let plain = dir.path().join("md0.bitmap");
        kmd::unzstd(&set.join("md0.bitmap.zst"), &plain);
        let bitmap = bitmap_fs.path("md0.bitmap");
        std::fs::write(&bitmap, std::fs::read(&plain).expect("bitmap")).expect("copy bitmap");
        sync_file(&bitmap);
        TestArray {
            mnt: dir.path().join("mnt"),
            _bitmap_fs: bitmap_fs,
            legs,
            bitmap,
            internal: false,
            uuid: String::new(),
            geo: V1_2,
            dir,
        }
    }

    /// `mdfuse mount [extra] --bitmap BM LEGS MNT` (detached); Err with its output if refused.
    fn try_mount(&self, extra: &[&str]) -> Result<MountedArray, String> {
        self.try_mount_legs(&self.legs, extra)
    }

    /// A session on some of the legs only (the others left out, as if missing).
    fn try_mount_legs(&self, legs: &Legs, extra: &[&str]) -> Result<MountedArray, String> {
        let mut args = extra.to_vec();
        if !self.internal {
            args.extend(["--bitmap", path_str(&self.bitmap)]);
        }
        MountedArray::try_mount(legs, &self.mnt, &args).map_err(|o| text(&o))
    }

    fn mount(&self, extra: &[&str]) -> MountedArray {
        self.try_mount(extra)
            .unwrap_or_else(|e| panic!("mdfuse mount failed:\n{e}\nlog:\n{}", self.log_text()))
    }

    /// The daemon's log, of every mount of this array so far.
    fn log_text(&self) -> String {
        std::fs::read_to_string(log_path(&self.mnt)).unwrap_or_default()
    }

    fn leg_refs(&self) -> Vec<&Path> {
        self.legs.paths.iter().map(PathBuf::as_path).collect()
    }

    /// A mount of leg0 alone (`--run`): leg1 is left out, as if missing.
    fn mount_leg0_alone(&self) -> MountedArray {
        self.try_mount_legs(
            &Legs::from_paths(vec![self.legs.paths[0].clone()]),
            &["--run"],
        )
        .unwrap_or_else(|e| panic!("mount --run with leg0 only: {e}\n{}", self.log_text()))
    }

    /// A copy of the bitmap file outside the ext4 (for verify-foreign and for breaking it).
    fn bitmap_copy(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::copy(&self.bitmap, &p).expect("copy bitmap file");
        p
    }

    /// A copy of a leg (to break or perturb without touching the original).
    fn leg_copy(&self, i: usize, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::copy(self.legs.path(i), &p).expect("copy leg");
        p
    }
}

fn sync_file(p: &Path) {
    OpenOptions::new()
        .read(true)
        .open(p)
        .and_then(|f| f.sync_all())
        .expect("fsync");
}

// ---------------------------------------------------------------- data through array.img

fn write_pattern(image: &Path, offset: u64, len: u64, tag: u16) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).open(image)?;
    let mut done = 0;
    while done < len {
        let n = (len - done).min(1 << 20);
        let at = offset + done;
        f.write_all_at(&kmd::pattern(tag, at / SECTOR, n / SECTOR), at)?;
        done += n;
    }
    f.sync_data()
}

/// The expected array contents: base pattern, then the overlays in order.
fn expected_image(overlays: &[(u64, u64)]) -> Vec<u8> {
    expected_image_of(ARRAY_BYTES, overlays)
}

fn expected_image_of(array_bytes: u64, overlays: &[(u64, u64)]) -> Vec<u8> {
    let mut img = kmd::pattern(BASE_TAG, 0, array_bytes / SECTOR);
    for &(off, len) in overlays {
        img[off as usize..(off + len) as usize].copy_from_slice(&kmd::pattern(
            OVERLAY_TAG,
            off / SECTOR,
            len / SECTOR,
        ));
    }
    img
}

fn chunks_of(ranges: &[(u64, u64)]) -> BTreeSet<u64> {
    ranges
        .iter()
        .flat_map(|&(off, len)| off / CHUNK..=(off + len - 1) / CHUNK)
        .collect()
}

/// A leg's data region (array bytes) read from an image file.
fn leg_data(leg: &Path) -> Vec<u8> {
    leg_data_in(leg, V1_2)
}

fn leg_data_in(leg: &Path, geo: Geometry) -> Vec<u8> {
    let bytes = std::fs::read(leg).expect("read leg");
    bytes[geo.data_offset as usize..(geo.data_offset + geo.array_bytes) as usize].to_vec()
}

/// Writes `tag`'s pattern over a whole chunk straight into a leg file (md's data offset).
fn perturb_leg_chunk(leg: &Path, chunk: u64, tag: u16) {
    perturb_leg_chunk_in(leg, V1_2, chunk, tag)
}

fn perturb_leg_chunk_in(leg: &Path, geo: Geometry, chunk: u64, tag: u16) {
    let off = chunk * CHUNK;
    let len = CHUNK.min(geo.array_bytes - off);
    let f = OpenOptions::new()
        .write(true)
        .open(leg)
        .expect("open leg copy");
    f.write_all_at(
        &kmd::pattern(tag, off / SECTOR, len / SECTOR),
        geo.data_offset + off,
    )
    .expect("perturb leg");
    f.sync_all().expect("fsync leg");
}

fn chunk_bytes(data: &[u8], chunk: u64) -> &[u8] {
    let off = (chunk * CHUNK) as usize;
    &data[off..(off + CHUNK as usize).min(data.len())]
}

/// What a later session writes over the base pattern (array offset, length).
const OVERLAYS: [(u64, u64); 4] = [
    (0, 4096),
    (5 << 20, 128 << 10),
    (20967424, 8192),
    (31457280, 65536),
];

/// Writes [`OVERLAYS`] (OVERLAY_TAG) through the mount `m`, checks what it serves then,
/// and stops it cleanly. Returns the sha of what was served.
fn write_overlays(m: MountedArray) -> String {
    write_overlays_in(m, V1_2)
}

fn write_overlays_in(m: MountedArray, geo: Geometry) -> String {
    for &(off, len) in &OVERLAYS {
        write_pattern(&m.image(), off, len, OVERLAY_TAG).expect("write an overlay");
    }
    let served = sha256_region(&m.image(), 0, geo.array_bytes);
    m.stop();
    assert_eq!(
        served,
        sha256_bytes(&expected_image_of(geo.array_bytes, &OVERLAYS)),
        "what mdfuse served after the overlays"
    );
    served
}

/// After [`write_overlays`] with leg1 failed or left out: leg1 is stale (leg0's events,
/// as `examine` prints them, are newer), the overlays' chunks are dirty in the bitmap and
/// its events_cleared lets md re-add leg1 from it. Returns the dirty chunks.
fn assert_leg1_stale_with_the_overlays_dirty(
    arr: &TestArray,
    examine: impl Fn(&Path) -> String,
) -> Vec<u64> {
    let events = |i: usize| -> u64 {
        kmd::mdadm_fields(&examine(arr.legs.path(i)))["Events"]
            .parse()
            .expect("Events")
    };
    let (e0, e1) = (events(0), events(1));
    assert!(e0 > e1, "leg0 events {e0} must pass stale leg1's {e1}");
    let (bfields, dirty) = mdfuse_bitmap(&arr.bitmap);
    let want: Vec<u64> = chunks_of(&OVERLAYS).into_iter().collect();
    assert_eq!(
        dirty, want,
        "degraded: the bits of every write stay until a recovery"
    );
    let cleared: u64 = bfields["Events Cleared"].parse().unwrap();
    assert!(
        cleared <= e1,
        "events_cleared {cleared} > stale leg1's events {e1}: md would refuse a bitmap re-add"
    );
    dirty
}

/// Fills the whole array with the base pattern through a first mount, checks what mdfuse
/// serves, and stops cleanly. Returns the sha of what was served.
fn fill_base(arr: &TestArray) -> String {
    let m = arr.mount(&[]);
    write_pattern(&m.image(), 0, arr.geo.array_bytes, BASE_TAG).expect("write through array.img");
    let served = sha256_region(&m.image(), 0, arr.geo.array_bytes);
    m.stop();
    served
}

/// What came of writes racing a SIGKILL of the daemon (byte ranges of the array).
struct KillOutcome {
    acked: Vec<(u64, u64)>,
    /// Returned an error (in flight at the kill, or issued after it).
    failed: Vec<(u64, u64)>,
}

/// Mounts with a long bitmap delay (so no bit is cleared on its own), writes `writes`
/// (OVERLAY_TAG) from `threads` threads, and SIGKILLs the daemon once `kill_after` writes
/// were acknowledged (None: after all of them).
fn write_then_kill(
    arr: &TestArray,
    writes: Vec<(u64, u64)>,
    threads: usize,
    kill_after: Option<usize>,
) -> KillOutcome {
    let m = arr.mount(&["--delay", "600"]);
    // No safe mode: a pause in the writes (a loaded machine) must not let
    // the array be recorded clean before the kill finds it active.
    m.set_md("safe_mode_delay", "60");
    let image = m.image();
    let acks = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let writes = Arc::new(writes);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (image, acks, acked, failed, writes) = (
                image.clone(),
                acks.clone(),
                acked.clone(),
                failed.clone(),
                writes.clone(),
            );
            std::thread::spawn(move || {
                // O_DIRECT: a write that returns has reached the legs (a
                // buffered one would sit in the kernel's writeback cache).
                let f = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&image)
                    .expect("open array.img");
                for &(off, len) in writes.iter().skip(t).step_by(threads) {
                    let data = kmd::pattern(OVERLAY_TAG, off / SECTOR, len / SECTOR);
                    match f.write_all_at(&data, off) {
                        Ok(()) => {
                            acked.lock().unwrap().push((off, len));
                            acks.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => failed.lock().unwrap().push((off, len)),
                    }
                }
            })
        })
        .collect();
    match kill_after {
        Some(n) => {
            let deadline = Instant::now() + Duration::from_secs(60);
            while acks.load(Ordering::SeqCst) < n && Instant::now() < deadline {
                std::thread::yield_now();
            }
            m.kill9();
        }
        None => {
            for h in handles.iter() {
                while !h.is_finished() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            m.kill9();
        }
    }
    for h in handles {
        h.join().expect("writer thread");
    }
    let out = KillOutcome {
        acked: acked.lock().unwrap().clone(),
        failed: failed.lock().unwrap().clone(),
    };
    eprintln!(
        "SIGKILL: {} writes acknowledged, {} failed",
        out.acked.len(),
        out.failed.len()
    );
    out
}

/// The slots of 16 KiB over the whole array in a fixed pseudo-random order.
fn shuffled_slots() -> Vec<(u64, u64)> {
    const SLOT: u64 = 16 << 10;
    let mut slots: Vec<(u64, u64)> = (0..ARRAY_BYTES / SLOT).map(|i| (i * SLOT, SLOT)).collect();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..slots.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        slots.swap(i, (state % (i as u64 + 1)) as usize);
    }
    slots
}

// ---------------------------------------------------------------- what md must say

/// What md did, against what a check wants of it: a line per miss; none is a pass.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    /// The run's `KMD-VAL key=value` lines must say these values.
    fn want_vals(&mut self, run: &VerifyRun, wanted: &[(&str, &str)]) {
        for &(key, value) in wanted {
            let got = run.val(key);
            if got.as_deref() != Some(value) {
                self.push(format!("{key}={got:?}, want {value}"));
            }
        }
    }

    /// Both legs' State, by md's `mdadm -E` before the assembly.
    fn want_leg_states(&mut self, run: &VerifyRun, state: &str) {
        for i in 0..2 {
            let got = run
                .section_fields(&format!("examine-leg{i}-before"))
                .get("State")
                .cloned();
            if got.as_deref() != Some(state) {
                self.push(format!("leg{i} State before = {got:?}, want {state}"));
            }
        }
    }

    /// md's `mdadm -X` before the assembly counts `dirty` dirty bits.
    fn want_dirty_before(&mut self, run: &VerifyRun, dirty: usize) {
        let bitmap = run
            .section_fields("examine-bitmap-before")
            .get("Bitmap")
            .cloned();
        let want = format!(" {dirty} dirty");
        if !bitmap.as_deref().is_some_and(|b| b.contains(&want)) {
            self.push(format!(
                "md's mdadm -X before assembly: {bitmap:?}, want{want}"
            ));
        }
    }

    fn verdict(self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0.join("\n"))
        }
    }
}

/// Panics with what was wrong unless `verdict` is a pass, keeping md's run (its console
/// log and the legs after it) for a post-mortem.
fn assert_md_agrees(run: VerifyRun, verdict: Result<(), String>) {
    if let Err(e) = verdict {
        panic!("{e}\n{}\nkept in {}", run.describe(), run.keep().display());
    }
}

/// The chunks in which two images of the array's data differ.
fn differing_chunks(a: &[u8], b: &[u8]) -> Vec<u64> {
    (0..(a.len().max(b.len()) as u64).div_ceil(CHUNK))
        .filter(|&c| chunk_bytes(a, c) != chunk_bytes(b, c))
        .collect()
}

/// md started the legs + bitmap clean: both legs, no resync, no dirty bits, the hash.
fn md_accepts_clean(run: &VerifyRun, expected_sha: &str) -> Result<(), String> {
    let mut problems = Problems::default();
    problems.want_vals(
        run,
        &[
            ("assembled", "yes"),
            ("assemble_mode", "plain"),
            ("degraded", "0"),
            ("degraded_after_sync", "0"),
            ("mismatch_cnt", "0"),
            ("md0_sha256", expected_sha),
        ],
    );
    if run.rc != 0 {
        problems.push(format!("verify-foreign exit {}", run.rc));
    }
    problems.want_leg_states(run, "clean");
    problems.want_dirty_before(run, 0);
    let dmesg = run.dmesg_md();
    if dmesg.contains("resync of RAID array") || dmesg.contains("recovery of RAID array") {
        problems.push(format!("md synced:\n{dmesg}"));
    }
    if run
        .section("mdstat-assembled")
        .is_some_and(|s| s.contains("resync") || s.contains("recovery"))
    {
        problems.push("mdstat shows a resync/recovery after assembly");
    }
    problems.verdict()
}

/// md saw `dirty` (as many dirty bits as mdfuse's bitmap holds) and resynced those chunks
/// only: the legs kept after the run agree on every dirty chunk, and `untouched` (a clean
/// chunk perturbed on leg1 before the run) was left as it was.
fn md_resynced_exactly(
    run: &VerifyRun,
    geo: Geometry,
    dirty: &[u64],
    untouched: u64,
) -> Result<(), String> {
    let mut problems = Problems::default();
    problems.want_vals(run, &[("assembled", "yes"), ("degraded", "0")]);
    problems.want_dirty_before(run, dirty.len());
    if !dirty.is_empty() && !run.dmesg_md().contains("resync of RAID array md0") {
        problems.push("md did not resync");
    }
    if !problems.0.is_empty() {
        return problems.verdict();
    }
    let (l0, l1) = (
        leg_data_in(&run.leg_after(0), geo),
        leg_data_in(&run.leg_after(1), geo),
    );
    let differing = differing_chunks(&l0, &l1);
    if differing != [untouched] {
        problems.push(format!(
            "after md, the legs differ in chunks {differing:?}; want only the clean, perturbed chunk {untouched} (dirty: {dirty:?})"
        ));
    }
    problems.verdict()
}

/// Copies the legs, perturbs leg1 in every dirty chunk (as writes that reached leg0 only
/// would, which is what dirty bits allow) and in one clean chunk (which md must not touch).
fn perturbed_copies(arr: &TestArray, dirty: &[u64], tag: &str) -> (PathBuf, PathBuf, u64) {
    let leg0 = arr.leg_copy(0, &format!("{tag}-leg0.img"));
    let leg1 = arr.leg_copy(1, &format!("{tag}-leg1.img"));
    let untouched = (0..arr.geo.array_bytes / CHUNK)
        .rev()
        .find(|c| !dirty.contains(c))
        .expect("a clean chunk");
    for &c in dirty.iter().chain([untouched].iter()) {
        perturb_leg_chunk_in(&leg1, arr.geo, c, PERTURB_TAG);
    }
    (leg0, leg1, untouched)
}

fn start(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    if !needs_root(test) {
        return None;
    }
    let guard = kmd::serial();
    kmd::ensure_rig();
    Some(guard)
}

// ---------------------------------------------------------------- 0. the helpers agree with the rig

#[test]
fn pattern_matches_the_rig_generator_and_the_fixtures() {
    let sha = sha256_bytes(&expected_image(&[]));
    let a = Manifest::load(&kmd::fixtures_dir().join("a-clean"));
    assert_eq!(sha, a.md0_sha, "base pattern vs a-clean MANIFEST");
    let b = Manifest::load(&kmd::fixtures_dir().join("b-degraded-dirty"));
    assert_eq!(b.dirty, vec![0, 80, 81, 319, 320, 480]);
    let py = Command::new("python3")
        .arg(kmd::rig_dir().join("lib/pattern.py"))
        .args([
            "expected",
            &ARRAY_BYTES.to_string(),
            "0x1111",
            "0x2222:0:4096",
        ])
        .output();
    if let Some(py) = py.ok().filter(|o| o.status.success()) {
        let img = expected_image(&[(0, 4096)]);
        assert_eq!(
            String::from_utf8_lossy(&py.stdout).trim(),
            sha256_bytes(&img)
        );
    }
}

// ---------------------------------------------------------------- 1. mdfuse -> md, clean

#[test]
fn md_assembles_a_cleanly_stopped_mdfuse_array_clean_with_the_served_data() {
    let Some(_serial) = start("md_assembles_a_cleanly_stopped_mdfuse_array") else {
        return;
    };
    let arr = TestArray::create("interop");
    let served = fill_base(&arr);
    // Overlays through a second mount, as a user's later session would.
    assert_eq!(served, sha256_bytes(&expected_image(&[])));
    let served2 = write_overlays(arr.mount(&[]));
    let (_, dirty) = mdfuse_bitmap(&arr.bitmap);
    assert!(
        dirty.is_empty(),
        "a clean stop leaves no dirty bit: {dirty:?}"
    );

    let bm = arr.bitmap_copy("md0.bitmap");
    let run = kmd::verify_foreign(&arr.leg_refs(), &bm, Some(&served2), false, &[]);
    let verdict = md_accepts_clean(&run, &served2);
    assert_md_agrees(run, verdict);
}

// ---------------------------------------------------------------- 2. mdfuse -> md, unclean

#[test]
fn md_resyncs_exactly_the_dirty_chunks_of_a_killed_mdfuse_and_keeps_acknowledged_writes() {
    let Some(_serial) = start("md_resyncs_exactly_the_dirty_chunks_of_a_killed_mdfuse") else {
        return;
    };
    let arr = TestArray::create("interop");
    fill_base(&arr);
    let slots = shuffled_slots();
    let out = write_then_kill(&arr, slots[..600].to_vec(), 4, Some(40));
    assert!(out.acked.len() >= 40);

    // What mdfuse left: superblocks active, the bits of every write that may be anywhere.
    let examine = mdfuse_examine(arr.legs.path(0));
    assert_eq!(
        kmd::mdadm_fields(&examine).get("State").map(String::as_str),
        Some("active")
    );
    let (_, dirty) = mdfuse_bitmap(&arr.bitmap);
    let must = chunks_of(&out.acked);
    let may: BTreeSet<u64> = must.union(&chunks_of(&out.failed)).copied().collect();
    let got: BTreeSet<u64> = dirty.iter().copied().collect();
    assert!(
        must.is_subset(&got),
        "acknowledged writes' chunks {must:?} not all dirty in {got:?}"
    );
    assert!(
        got.is_subset(&may),
        "dirty chunks {got:?} beyond the writes issued {may:?}"
    );
    assert_eq!(dirty_in_image(&std::fs::read(&arr.bitmap).unwrap()), dirty);

    // md on the legs as mdfuse left them: the acknowledged data, legs identical after.
    let bm = arr.bitmap_copy("md0.bitmap");
    let run = kmd::verify_foreign(&arr.leg_refs(), &bm, None, true, &[]);
    let check = || -> Result<(), String> {
        let mut p = Problems::default();
        p.want_vals(
            &run,
            &[
                ("assembled", "yes"),
                ("degraded", "0"),
                ("degraded_after_sync", "0"),
            ],
        );
        p.want_dirty_before(&run, dirty.len());
        p.want_leg_states(&run, "active");
        if !run.dmesg_md().contains("resync of RAID array md0") {
            p.push("md did not resync");
        }
        let (l0, l1) = (leg_data(&run.leg_after(0)), leg_data(&run.leg_after(1)));
        if l0 != l1 {
            p.push("legs differ after md's resync");
        }
        // Every sector: acknowledged -> overlay; failed -> old or new; else base.
        let acked_sectors: BTreeSet<u64> = out
            .acked
            .iter()
            .flat_map(|&(o, l)| o / SECTOR..(o + l) / SECTOR)
            .collect();
        let failed_sectors: BTreeSet<u64> = out
            .failed
            .iter()
            .flat_map(|&(o, l)| o / SECTOR..(o + l) / SECTOR)
            .collect();
        let mut bad = 0;
        for (s, sector) in l0.chunks_exact(SECTOR as usize).enumerate() {
            let s = s as u64;
            let tag = kmd::pattern_tag(sector, s);
            let ok = if acked_sectors.contains(&s) {
                tag == Some(OVERLAY_TAG)
            } else if failed_sectors.contains(&s) {
                tag == Some(OVERLAY_TAG) || tag == Some(BASE_TAG)
            } else {
                tag == Some(BASE_TAG)
            };
            if !ok {
                if bad < 5 {
                    p.push(format!("array sector {s}: tag {tag:x?}"));
                }
                bad += 1;
            }
        }
        let leg_sha = sha256_bytes(&l0);
        if run.val("md0_sha256").as_deref() != Some(&leg_sha) {
            p.push(format!(
                "md0 sha {:?} vs its legs {leg_sha}",
                run.val("md0_sha256")
            ));
        }
        if let Ok(after) = std::fs::read(run.bitmap_after()) {
            let left = dirty_in_image(&after);
            if !left.is_empty() {
                p.push(format!("md left dirty bits after its resync: {left:?}"));
            }
        }
        p.verdict()
    };
    let verdict = check();
    assert_md_agrees(run, verdict);

    // Exactly those chunks: leg1 perturbed in every dirty chunk and one clean chunk.
    let (leg0, leg1, untouched) = perturbed_copies(&arr, &dirty, "exact");
    let run = kmd::verify_foreign(&[&leg0, &leg1], &bm, None, true, &[]);
    let verdict = md_resynced_exactly(&run, arr.geo, &dirty, untouched);
    assert_md_agrees(run, verdict);
}

// ---------------------------------------------------------------- 3. mdfuse degraded -> md re-add

#[test]
fn md_starts_an_mdfuse_degraded_array_degraded_and_recovers_the_stale_leg_from_the_bitmap_only() {
    let Some(_serial) = start("md_recovers_an_mdfuse_degraded_array_from_the_bitmap") else {
        return;
    };
    let arr = TestArray::create("interop");
    fill_base(&arr);
    let m = arr.mount(&[]);
    mdfuse_stdout(&[
        "manage",
        path_str(m.mountpoint()),
        "--fail",
        path_str(arr.legs.path(1)),
    ]);
    let expected = write_overlays(m);
    // mdfuse's record: leg0 newer and naming leg1 faulty; the bits of the degraded writes kept.
    let dirty = assert_leg1_stale_with_the_overlays_dirty(&arr, mdfuse_examine);
    md_re_adds_the_stale_leg_from_the_bitmap_only(&arr, &dirty, &expected);
}

/// md on an array mdfuse left degraded (leg1 stale): it starts degraded and, when leg1 is
/// re-added, recovers it from the bitmap only (leg1 perturbed in a clean chunk: a full
/// recovery would overwrite it), ending with `expected` on both legs.
fn md_re_adds_the_stale_leg_from_the_bitmap_only(arr: &TestArray, dirty: &[u64], expected: &str) {
    // md: degraded at assembly, the stale leg re-added and recovered from the bitmap only
    // (leg1 perturbed in a clean chunk: a full recovery would overwrite it).
    let bm = arr.bitmap_copy("md0.bitmap");
    let leg0 = arr.leg_copy(0, "re-add-leg0.img");
    let leg1 = arr.leg_copy(1, "re-add-leg1.img");
    let untouched = 200;
    assert!(!dirty.contains(&untouched));
    perturb_leg_chunk(&leg1, untouched, PERTURB_TAG);
    let run = kmd::verify_foreign(&[&leg0, &leg1], &bm, None, true, &["RE_ADD=1"]);
    let check = || -> Result<(), String> {
        let mut p = Problems::default();
        p.want_vals(
            &run,
            &[
                ("assembled", "yes"),
                ("degraded", "1"),
                ("degraded_after_sync", "0"),
            ],
        );
        if !run.dmesg_md().contains("recovery of RAID array md0") {
            p.push("no recovery");
        }
        let (l0, l1) = (leg_data(&run.leg_after(0)), leg_data(&run.leg_after(1)));
        let differing = differing_chunks(&l0, &l1);
        if differing != [untouched] {
            p.push(format!("legs differ in {differing:?} after recovery; want only {untouched} (not in the bitmap)"));
        }
        if sha256_bytes(&l0) != expected {
            p.push("leg0 data is not what mdfuse acknowledged");
        }
        p.verdict()
    };
    let verdict = check();
    assert_md_agrees(run, verdict);
}

/// The degraded case with what mdfuse has today: leg1 is left out of a session
/// (`mount --run` with leg0 only), writes land on leg0 alone, the stop is clean.
/// What md must make of it: leg1 stale (older events), the writes' chunks dirty in the
/// bitmap, and a re-add recovers exactly those.
#[test]
fn md_recovers_a_leg_left_out_of_an_mdfuse_session_from_the_bitmap_only() {
    let Some(_serial) = start("md_recovers_a_leg_left_out_of_an_mdfuse_session") else {
        return;
    };
    let arr = TestArray::create("interop");
    fill_base(&arr);
    let expected = write_overlays(arr.mount_leg0_alone());
    // By the host's mdadm this time.
    let dirty = assert_leg1_stale_with_the_overlays_dirty(&arr, |leg| {
        host_mdadm(&[OsStr::new("--examine"), leg.as_os_str()])
    });
    md_re_adds_the_stale_leg_from_the_bitmap_only(&arr, &dirty, &expected);
}

/// md records a slot that is absent from a running array as missing ('.' in mdadm's Array
/// State) in the superblocks it writes, so mdadm later starts the array degraded without
/// --run. mdfuse keeps the absent slot active ('A'). Evidence (rig, kernel 6.1, a-clean's
/// leg0 alone): `mdadm --assemble --run /dev/md0 /dev/vda`, one 4 KiB write, `--stop`:
/// leg0 Events 2 -> 4, Array State "A.". On mdfuse's output mdadm then says "assembled from
/// 1 drive - need all 2 to start it (use --run to insist)".
#[test]
fn mdfuse_records_a_leg_absent_from_a_degraded_session_as_md_does() {
    let Some(_serial) = start("mdfuse_records_a_leg_absent_from_a_degraded_session") else {
        return;
    };
    let arr = TestArray::create("interop");
    fill_base(&arr);
    let m = arr.mount_leg0_alone();
    write_pattern(&m.image(), 0, 4096, OVERLAY_TAG).expect("write while degraded");
    m.stop();
    let e0 = kmd::mdadm_fields(&host_mdadm(&[
        OsStr::new("--examine"),
        arr.legs.path(0).as_os_str(),
    ]));
    assert!(
        e0["Array State"].starts_with("A. "),
        "leg0 after a session without leg1: Array State {:?} (md's b-degraded-dirty: 'A.')",
        e0["Array State"]
    );
}

// ---------------------------------------------------------------- 4. md -> mdfuse, every fixture set

/// Serves one fixture set: dirty chunks as md left them, the hash md read, bits kept (or
/// cleared) at the stop as md would.
fn serve_fixture(set: &Path) {
    let man = Manifest::load(set);
    assert_eq!(
        man.data_offset_sectors * SECTOR,
        DATA_OFFSET,
        "{}",
        man.name
    );
    assert_eq!(man.array_bytes, ARRAY_BYTES, "{}", man.name);
    let arr = TestArray::from_fixture(set);
    let (_, dirty) = mdfuse_bitmap(&arr.bitmap);
    assert_eq!(
        dirty, man.dirty,
        "{}: mdfuse examine-bitmap --chunks vs MANIFEST",
        man.name
    );

    // mdadm --assemble starts b-degraded-dirty without --run (its newest superblock already
    // records leg1 missing); mdfuse asks for --run. Both must then serve md's data.
    let m = match arr.try_mount(&[]) {
        Ok(m) => m,
        Err(e) if man.is_degraded() => {
            eprintln!(
                "{}: mdfuse without --run refused ({}); with --run",
                man.name,
                e.trim()
            );
            arr.mount(&["--run"])
        }
        Err(e) => panic!("{}: mount: {e}\n{}", man.name, arr.log_text()),
    };
    // An unclean set is resynced from its bitmap first (mdstat shows it until done).
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && {
        let mdstat = m.mdstat();
        mdstat.contains("resync") || mdstat.contains("recovery")
    } {
        std::thread::sleep(Duration::from_millis(100));
    }
    let sha = sha256_region(&m.image(), 0, ARRAY_BYTES);
    m.stop();
    assert_eq!(
        sha, man.md0_sha,
        "{}: what mdfuse serves vs what md read",
        man.name
    );
    let (_, after) = mdfuse_bitmap(&arr.bitmap);
    if man.is_degraded() {
        assert_eq!(
            after, man.dirty,
            "{}: degraded: md keeps the bits until a re-add",
            man.name
        );
    } else {
        assert!(
            after.is_empty(),
            "{}: bits left after a clean stop: {after:?}",
            man.name
        );
    }
}

#[test]
fn mdfuse_serves_every_md_fixture_set_with_md_hashes_and_dirty_chunks() {
    let Some(_serial) = start("mdfuse_serves_every_md_fixture_set") else {
        return;
    };
    let sets = kmd::fixture_sets();
    assert!(sets.len() >= 2, "fixture sets: {sets:?}");
    for set in sets {
        eprintln!("== fixture {}", set.display());
        serve_fixture(&set);
    }
}

#[test]
fn mdfuse_starts_an_array_md_left_degraded_without_run_as_mdadm_does() {
    let Some(_serial) = start("mdfuse_starts_an_array_md_left_degraded_without_run") else {
        return;
    };
    let arr = TestArray::from_fixture(&kmd::fixtures_dir().join("b-degraded-dirty"));
    let m = arr.try_mount(&[]).unwrap_or_else(|e| {
        panic!("mdadm assembled this set without --run (verify-roundtrip.txt: assemble_mode=plain, degraded=1); mdfuse: {e}")
    });
    m.stop();
}

#[test]
fn mdfuse_re_adds_the_stale_leg_of_b_degraded_dirty_and_recovers_exactly_the_dirty_chunks() {
    let Some(_serial) = start("mdfuse_re_adds_the_stale_leg_of_b_degraded_dirty") else {
        return;
    };
    let set = kmd::fixtures_dir().join("b-degraded-dirty");
    let man = Manifest::load(&set);
    let arr = TestArray::from_fixture(&set);
    // A clean chunk of the stale leg perturbed: a recovery from the bitmap leaves it alone.
    let untouched = 200;
    assert!(!man.dirty.contains(&untouched));
    perturb_leg_chunk(arr.legs.path(1), untouched, PERTURB_TAG);
    let m = arr.mount(&["--run"]);
    let mdstat = || m.mdstat();
    assert!(
        mdstat().contains("[2/1]"),
        "b-degraded-dirty starts degraded:\n{}",
        mdstat()
    );
    mdfuse_stdout(&[
        "manage",
        path_str(m.mountpoint()),
        "--re-add",
        path_str(arr.legs.path(1)),
    ]);
    // `mdfuse wait` returns once md/sync_action is idle again: the recovery has ended.
    let waited = mdfuse_stdout(&["wait", path_str(m.mountpoint())]);
    let s = mdstat();
    assert!(
        s.contains("[2/2]") && s.contains("[UU]") && !s.contains("recovery"),
        "after `mdfuse wait` ({waited}) the array is not whole:\n{s}\nlog:\n{}",
        arr.log_text()
    );
    // What the array serves (read with O_DIRECT, so from the legs now);
    // compared chunk by chunk below, once the legs can be read too.
    let served = common::io::read_direct(&m.image(), 0, ARRAY_BYTES as usize)
        .expect("read the image with O_DIRECT");
    m.stop();
    // The daemon names what it copied: the MANIFEST's dirty chunks, no more.
    let log = arr.log_text();
    let want = format!(
        "re-added: bitmap-guided recovery of {} bytes",
        man.dirty.len() as u64 * CHUNK
    );
    assert_eq!(man.dirty.len(), 6, "MANIFEST dirty chunks {:?}", man.dirty);
    assert!(log.contains(&want), "the log does not say {want:?}:\n{log}");
    let (l0, l1) = (leg_data(arr.legs.path(0)), leg_data(arr.legs.path(1)));
    let differing = differing_chunks(&l0, &l1);
    assert_eq!(
        differing,
        vec![untouched],
        "recovered more or less than the dirty chunks {:?}",
        man.dirty
    );
    let (_, after) = mdfuse_bitmap(&arr.bitmap);
    assert!(after.is_empty(), "bits left after the recovery: {after:?}");
    assert_eq!(
        sha256_region(arr.legs.path(0), DATA_OFFSET, ARRAY_BYTES),
        man.md0_sha
    );
    // The array served md's data everywhere but the chunk this test made
    // differ on purpose, which may come from either leg (reads are
    // balanced; that chunk was left alone, as md would).
    for c in 0..ARRAY_BYTES.div_ceil(CHUNK) {
        let got = chunk_bytes(&served, c);
        assert!(
            got == chunk_bytes(&l0, c) || (c == untouched && got == chunk_bytes(&l1, c)),
            "the array served chunk {c} unlike either leg"
        );
    }
}

// ---------------------------------------------------------------- 5. field-level agreement

fn host_mdadm(args: &[&OsStr]) -> String {
    let out = Command::new("mdadm")
        .env("TZ", "UTC")
        .args(args)
        .output()
        .expect("run mdadm (Debian's mdadm 4.2)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every field both renderings have must agree; `skip` names host-dependent ones.
fn same_fields(what: &str, mdadm: &str, ours: &str, skip: &[&str]) {
    let (a, b) = (kmd::mdadm_fields(mdadm), kmd::mdadm_fields(ours));
    let mut diffs = Vec::new();
    for (k, v) in &a {
        if skip.contains(&k.as_str()) {
            continue;
        }
        match b.get(k) {
            Some(w) if w == v => {}
            other => diffs.push(format!("  {k}: mdadm {v:?}, mdfuse {other:?}")),
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: fields differ:\n{}\n-- mdadm:\n{mdadm}\n-- mdfuse:\n{ours}",
        diffs.join("\n")
    );
}

#[test]
fn real_mdadm_reads_mdfuse_legs_and_bitmaps_as_mdfuse_meant() {
    let Some(_serial) = start("real_mdadm_reads_mdfuse_legs_and_bitmaps") else {
        return;
    };
    let arr = TestArray::create("interop");
    fill_base(&arr);
    let check = |state: &str, dirty: usize, events: Option<u64>| {
        for (i, leg) in arr.legs.paths.iter().enumerate() {
            let md = host_mdadm(&[OsStr::new("--examine"), leg.as_os_str()]);
            let f = kmd::mdadm_fields(&md);
            let get = |k: &str| {
                f.get(k)
                    .map(String::as_str)
                    .unwrap_or_else(|| panic!("no {k} in:\n{md}"))
            };
            assert_eq!(get("Array UUID"), arr.uuid, "{md}");
            assert!(get("Name").starts_with("interop"), "{md}");
            assert_eq!(get("Raid Level"), "raid1");
            assert_eq!(get("Raid Devices"), "2");
            assert_eq!(get("State"), state, "{md}");
            assert_eq!(get("Device Role"), format!("Active device {i}"));
            assert!(get("Array State").starts_with("AA "), "{md}");
            assert_eq!(get("Data Offset"), "2048 sectors");
            assert_eq!(get("Super Offset"), "8 sectors");
            assert!(get("Array Size").starts_with("31744 KiB"), "{md}");
            assert!(get("Avail Dev Size").starts_with("63488 sectors"), "{md}");
            assert!(get("Checksum").ends_with("- correct"), "{md}");
            if let Some(e) = events {
                assert_eq!(get("Events"), e.to_string());
            }
            let ours = mdfuse_examine(leg);
            same_fields(&format!("leg{i}"), &md, &ours, &[]);
        }
        let md = host_mdadm(&[OsStr::new("--examine-bitmap"), arr.bitmap.as_os_str()]);
        let f = kmd::mdadm_fields(&md);
        assert_eq!(
            f.get("UUID").map(String::as_str),
            Some(arr.uuid.as_str()),
            "{md}"
        );
        assert_eq!(f.get("Chunksize").map(String::as_str), Some("64 KB"));
        assert!(f["Sync Size"].starts_with("31744 "), "{md}");
        assert!(
            f["Bitmap"].starts_with(&format!("496 bits (chunks), {dirty} dirty")),
            "{md}"
        );
        let leg_events = kmd::mdadm_fields(&host_mdadm(&[
            OsStr::new("--examine"),
            arr.legs.path(0).as_os_str(),
        ]))["Events"]
            .clone();
        assert_eq!(
            f["Events"], leg_events,
            "bitmap events follow the superblocks'"
        );
        let (ours, _) = mdfuse_bitmap(&arr.bitmap);
        let ours_text: String = ours.iter().map(|(k, v)| format!("{k} : {v}\n")).collect();
        same_fields("bitmap", &md, &ours_text, &[]);
    };
    // Clean after create + fill + stop (md's fixture a-clean has the same events: 2).
    check("clean", 0, Some(2));
    // Active with dirty bits after a SIGKILL.
    let writes = vec![
        (CHUNK, 4096),
        (100 * CHUNK, CHUNK),
        (300 * CHUNK + 512, 1024),
    ];
    write_then_kill(&arr, writes, 1, None);
    check("active", 3, None);
}

#[test]
fn mdfuse_examine_prints_what_mdadm_printed_for_the_md_fixtures() {
    if !needs_root("mdfuse_examine_prints_what_mdadm_printed_for_the_md_fixtures") {
        return;
    }
    for set in kmd::fixture_sets() {
        let man = Manifest::load(&set);
        let dir = tempfile::tempdir().unwrap();
        for (i, dev) in ["vda", "vdb"].iter().enumerate() {
            let leg = dir.path().join(format!("leg{i}.img"));
            kmd::unzstd(&set.join(format!("leg{i}.img.zst")), &leg);
            let md = man
                .section(&format!("final on-disk state: mdadm -E /dev/{dev}"))
                .unwrap_or_else(|| panic!("{}: no mdadm -E /dev/{dev} section", man.name));
            let ours = mdfuse_examine(&leg);
            // Name carries "(local to host kmdrig)" only on the rig's host.
            same_fields(&format!("{} leg{i}", man.name), &md, &ours, &["Name"]);
            let name = |t: &str| {
                kmd::mdadm_fields(t)["Name"]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string()
            };
            assert_eq!(name(&md), name(&ours));
        }
        let bm = dir.path().join("md0.bitmap");
        kmd::unzstd(&set.join("md0.bitmap.zst"), &bm);
        let md = man
            .section("final on-disk state: mdadm -X")
            .expect("mdadm -X section");
        let (ours, _) = mdfuse_bitmap(&bm);
        let ours_text: String = ours.iter().map(|(k, v)| format!("{k} : {v}\n")).collect();
        same_fields(
            &format!("{} bitmap", man.name),
            &md,
            &ours_text,
            &["Filename"],
        );
    }
}

#[test]
fn md_side_checks_catch_a_broken_superblock_checksum() {
    let Some(_serial) = start("md_side_checks_catch_a_broken_superblock_checksum") else {
        return;
    };
    let arr = TestArray::create("interop");
    let served = fill_base(&arr);
    let bm = arr.bitmap_copy("md0.bitmap");
    // One byte of leg0's set_name (superblock at 4096, name at +32), checksum not updated.
    let leg0 = arr.leg_copy(0, "broken-leg0.img");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&leg0)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 4096 + 32).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], 4096 + 32).unwrap();
    f.sync_all().unwrap();
    let run = kmd::verify_foreign(&[&leg0, arr.legs.path(1)], &bm, Some(&served), false, &[]);
    let verdict = md_accepts_clean(&run, &served);
    assert!(
        verdict.is_err(),
        "the clean-assembly check passed on a broken checksum:\n{}",
        run.describe()
    );
    eprintln!("caught, as it must be:\n{}", verdict.unwrap_err());
    let md = host_mdadm(&[OsStr::new("--examine"), leg0.as_os_str()]);
    assert!(
        kmd::mdadm_fields(&md)
            .get("Checksum")
            .is_some_and(|c| c.contains("expected")),
        "{md}"
    );
}

#[test]
fn md_side_checks_catch_a_bitmap_written_msb_first() {
    let Some(_serial) = start("md_side_checks_catch_a_bitmap_written_msb_first") else {
        return;
    };
    let arr = TestArray::create("interop");
    fill_base(&arr);
    // Chunks whose bit positions are not symmetric within their byte (1 <-> 6, 100 <-> 99...).
    let writes = vec![
        (CHUNK, 4096),
        (100 * CHUNK, CHUNK),
        (300 * CHUNK + 512, 1024),
    ];
    write_then_kill(&arr, writes, 1, None);
    let (_, dirty) = mdfuse_bitmap(&arr.bitmap);
    assert_eq!(dirty, vec![1, 100, 300]);
    let (leg0, leg1, untouched) = perturbed_copies(&arr, &dirty, "msb");

    // Control: the bitmap as mdfuse wrote it passes.
    let good = arr.bitmap_copy("good.bitmap");
    let run = kmd::verify_foreign(&[&leg0, &leg1], &good, None, true, &[]);
    let verdict = md_resynced_exactly(&run, arr.geo, &dirty, untouched);
    assert_md_agrees(run, verdict.map_err(|e| format!("control failed: {e}")));
    // The same bits MSB-first: md resyncs the wrong chunks; the check must say so.
    let msb = arr.bitmap_copy("msb.bitmap");
    let mut bytes = std::fs::read(&msb).unwrap();
    for b in &mut bytes[256..] {
        *b = b.reverse_bits();
    }
    std::fs::write(&msb, &bytes).unwrap();
    let run = kmd::verify_foreign(&[&leg0, &leg1], &msb, None, true, &[]);
    let verdict = md_resynced_exactly(&run, arr.geo, &dirty, untouched);
    assert!(
        verdict.is_err(),
        "the exact-resync check passed on an MSB-first bitmap:\n{}",
        run.describe()
    );
    eprintln!("caught, as it must be:\n{}", verdict.unwrap_err());
}

// ---------------------------------------------------------------- 6. metadata 1.0 and 1.1 with md

/// The arrays of one rig boot (`tests/kmd/*.sh` scenarios): each array's legs are copies in
/// `dir/NAME/` (`leg0.img.after`, `leg1.img.after`: the rig changes them in place), and the
/// bitmap files go on one ext4 image (no journal: what md writes to them is in place after a
/// sync, for `debugfs` to read back even after a crash).
struct RigBoot {
    dir: tempfile::TempDir,
    names: Vec<String>,
    bitmaps: PathBuf,
}

impl RigBoot {
    fn new() -> RigBoot {
        let dir = tempfile::Builder::new()
            .prefix("mdfuse-kmd-boot")
            .tempdir()
            .expect("tempdir");
        let bitmaps = dir.path().join("bitmaps");
        std::fs::create_dir(&bitmaps).expect("bitmaps dir");
        RigBoot {
            dir,
            names: Vec::new(),
            bitmaps,
        }
    }

    /// The directory of array `name` (its legs, as the rig left them).
    fn part_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Adds array `name` with copies of `legs` and, if any, a copy of its bitmap file.
    fn add(&mut self, name: &str, legs: &[&Path], bitmap: Option<&Path>) {
        let d = self.part_dir(name);
        std::fs::create_dir(&d).expect("part dir");
        for (i, l) in legs.iter().enumerate() {
            std::fs::copy(l, d.join(format!("leg{i}.img.after"))).expect("copy leg");
        }
        if let Some(b) = bitmap {
            std::fs::copy(b, self.bitmaps.join(format!("{name}.bitmap"))).expect("copy bitmap");
        }
        self.names.push(name.to_string());
    }

    /// Adds array `name` with two empty legs of `bytes` (for md to create on).
    fn add_empty(&mut self, name: &str, bytes: u64) {
        let d = self.part_dir(name);
        std::fs::create_dir(&d).expect("part dir");
        for i in 0..2 {
            let f = std::fs::File::create(d.join(format!("leg{i}.img.after"))).expect("leg");
            f.set_len(bytes).expect("size leg");
        }
        self.names.push(name.to_string());
    }

    fn bm_image(&self) -> PathBuf {
        self.dir.path().join("bm.img")
    }

    /// One boot of `scenario` on every array added (plus `extra` disks), `ARRAYS` set to
    /// their names.
    fn run(&self, scenario: &str, extra: &[(&str, &Path)], env: &[&str]) -> VerifyRun {
        let bm = self.bm_image();
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal", "-d"])
            .arg(&self.bitmaps)
            .arg(&bm)
            .arg("16M")
            .output()
            .expect("run mkfs.ext4");
        assert!(out.status.success(), "mkfs.ext4 -d: {}", text(&out));
        let names: Vec<(String, PathBuf)> = self
            .names
            .iter()
            .flat_map(|n| {
                (0..2).map(move |i| {
                    (
                        format!("{n}{i}"),
                        self.part_dir(n).join(format!("leg{i}.img.after")),
                    )
                })
            })
            .collect();
        let mut disks: Vec<(&str, &Path)> = vec![("bm", bm.as_path())];
        disks.extend(extra.iter().copied());
        disks.extend(names.iter().map(|(n, p)| (n.as_str(), p.as_path())));
        let arrays = format!("ARRAYS={}", self.names.join(" "));
        let mut env = env.to_vec();
        env.push(&arrays);
        kmd::run_scenario(
            &kmd::scenario(scenario),
            &disks,
            &env,
            Duration::from_secs(600),
        )
    }

    /// What the boot said about array `name`.
    fn part(&self, run: &VerifyRun, name: &str) -> VerifyRun {
        run.part(name, &self.part_dir(name))
    }

    /// The bitmap file of array `name` as md left it (`debugfs` dump from the ext4 image).
    fn bitmap_after(&self, name: &str) -> PathBuf {
        let to = self.dir.path().join(format!("{name}.bitmap.after"));
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump -p /{name}.bitmap {}", to.display()))
            .arg(self.bm_image())
            .output()
            .expect("run debugfs");
        assert!(
            to.is_file(),
            "debugfs could not dump {name}.bitmap: {}",
            text(&out)
        );
        to
    }
}

/// Checks every part of a boot; panics with all that was wrong, keeping the console log.
fn assert_parts_agree(run: VerifyRun, verdicts: Vec<(String, Result<(), String>)>) {
    let failed: Vec<String> = verdicts
        .into_iter()
        .filter_map(|(name, v)| v.err().map(|e| format!("== {name}:\n{e}")))
        .collect();
    if !failed.is_empty() {
        panic!(
            "{}\n{}\nconsole kept in {}",
            failed.join("\n"),
            run.describe(),
            run.keep().display()
        );
    }
}

/// md on legs `mdfuse create --metadata 1.0|1.1` made, in one boot: after a clean stop it
/// assembles them clean (no resync, mdfuse's data); after a kill -9 it resyncs exactly the
/// chunks mdfuse's bitmap file holds dirty (leg1 perturbed in all of them and in one clean
/// chunk: only that one still differs after md's resync).
#[test]
fn md_assembles_mdfuse_metadata_1_0_and_1_1_arrays_clean_and_resyncs_exactly_their_dirty_chunks() {
    let Some(_serial) = start("md_assembles_mdfuse_metadata_1_0_and_1_1_arrays") else {
        return;
    };
    let mut boot = RigBoot::new();
    let mut wants = Vec::new();
    for version in ["1.0", "1.1"] {
        let tag = version.replace('.', "");
        let arr = TestArray::create_version(&format!("v{tag}"), version);
        let want_offset = if version == "1.0" { 0 } else { DATA_OFFSET };
        assert_eq!(arr.geo.data_offset, want_offset, "{version}: {:?}", arr.geo);
        fill_base(&arr);
        let served = write_overlays_in(arr.mount(&[]), arr.geo);
        let clean = format!("v{tag}clean");
        boot.add(&clean, &arr.leg_refs(), Some(&arr.bitmap));

        let out = write_then_kill(&arr, shuffled_slots()[..600].to_vec(), 4, Some(40));
        assert!(out.acked.len() >= 40);
        let (_, dirty) = mdfuse_bitmap(&arr.bitmap);
        assert!(!dirty.is_empty(), "{version}: no dirty bit after the kill");
        let (leg0, leg1, untouched) = perturbed_copies(&arr, &dirty, &tag);
        let killed = format!("v{tag}killed");
        boot.add(&killed, &[&leg0, &leg1], Some(&arr.bitmap));
        wants.push((version, arr.geo, clean, served, killed, dirty, untouched));
    }
    let run = boot.run("assemble-each", &[], &[]);
    let mut verdicts = Vec::new();
    if run.rc != 0 {
        verdicts.push(("boot".to_string(), Err(format!("rig rc {}", run.rc))));
    }
    for (version, geo, clean, served, killed, dirty, untouched) in wants {
        let part = boot.part(&run, &clean);
        let mut v = md_accepts_clean(&part, &served);
        if part.val("metadata_version").as_deref() != Some(version) {
            v = Err(format!(
                "md's metadata_version {:?}, want {version}; {v:?}",
                part.val("metadata_version")
            ));
        }
        verdicts.push((clean, v));
        let part = boot.part(&run, &killed);
        let mut v = md_resynced_exactly(&part, geo, &dirty, untouched);
        let mut p = Problems::default();
        p.want_leg_states(&part, "active");
        if let Err(e) = p.verdict() {
            v = Err(format!("{e}\n{v:?}"));
        }
        verdicts.push((killed, v));
    }
    assert_parts_agree(run, verdicts);
}

/// A copy of a bitmap file that md wrote, put as data (no holes) on a loop-backed ext4 of
/// its own, where mdfuse can map it to its blocks.
fn bitmap_on_ext4(file: &Path) -> (ScratchFs, PathBuf) {
    let fs = ScratchFs::ext4(4096).expect("loop-backed ext4 for the bitmap file");
    let bitmap = fs.path("md0.bitmap");
    std::fs::write(&bitmap, std::fs::read(file).expect("read bitmap")).expect("copy bitmap");
    sync_file(&bitmap);
    (fs, bitmap)
}

/// Serves one array md made in the rig (`part` of the `md-creates` boot) and checks what
/// mdfuse makes of it, by its mode: the data md read, no resync after a clean stop, a
/// degraded start and a re-add of the stale leg that copies only md's dirty chunks, a
/// resync of exactly md's dirty chunks after md crashed.
fn serve_md_made(boot: &RigBoot, part: &VerifyRun, name: &str, spec: &str) -> Result<(), String> {
    let mut spec = spec.split(':');
    let (version, bitmap_kind, mode) = (
        spec.next().unwrap_or_default(),
        spec.next().unwrap_or_default(),
        spec.next().unwrap_or_default(),
    );
    let num = |key: &str| -> Result<u64, String> {
        part.val(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("md said no {key}"))
    };
    let geo = Geometry {
        data_offset: num("offset0")? * SECTOR,
        array_bytes: num("array_bytes")?,
    };
    let md_sha = part.val("md0_sha256").ok_or("md said no md0_sha256")?;
    if md_sha != sha256_bytes(&expected_image_of(geo.array_bytes, &OVERLAYS)) {
        return Err(format!(
            "md read {md_sha}, not the pattern and overlays it wrote"
        ));
    }
    let want_offset = if version == "1.0" { 0 } else { DATA_OFFSET };
    if geo.data_offset != want_offset {
        return Err(format!("md put {version}'s data at {geo:?}"));
    }
    let dir = boot.part_dir(name);
    let legs = Legs::from_paths(vec![dir.join("leg0.img.after"), dir.join("leg1.img.after")]);
    let examine = kmd::mdadm_fields(&mdfuse_examine(legs.path(0)));
    if examine.get("Version").map(String::as_str) != Some(version) {
        return Err(format!(
            "mdfuse examine: Version {:?}",
            examine.get("Version")
        ));
    }
    // As mdadm, no Data Offset line for 1.0 (its data starts at sector 0).
    let offset = examine
        .get("Data Offset")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());
    if offset.unwrap_or(0) * SECTOR != geo.data_offset {
        return Err(format!(
            "mdfuse examine: Data Offset {offset:?}, md's {geo:?}"
        ));
    }
    let bitmap = (bitmap_kind == "file").then(|| bitmap_on_ext4(&boot.bitmap_after(name)));
    // An internal bitmap is read from the leg itself (each in-sync leg holds a copy).
    let internal = bitmap_kind == "internal";
    let md_dirty = match (&bitmap, internal) {
        (Some((_, b)), _) => mdfuse_bitmap(b).1,
        (None, true) => mdfuse_bitmap(legs.path(0)).1,
        (None, false) => Vec::new(),
    };
    // What md's mdadm -X counted (before the crash, or after the stop) is what mdfuse reads.
    if let Some(line) = part.section_fields("examine-bitmap").get("Bitmap") {
        if !line.contains(&format!(" {} dirty", md_dirty.len())) {
            return Err(format!("md: {line}; mdfuse reads {md_dirty:?}"));
        }
    }
    let untouched = 200;
    let overlay_chunks: Vec<u64> = chunks_of(&OVERLAYS).into_iter().collect();
    match mode {
        "clean" => {}
        "degraded" => {
            if md_dirty != overlay_chunks {
                return Err(format!(
                    "degraded: md's bits {md_dirty:?}, want {overlay_chunks:?}"
                ));
            }
            perturb_leg_chunk_in(legs.path(1), geo, untouched, PERTURB_TAG);
        }
        "crash" => {
            if md_dirty.is_empty() || md_dirty.iter().any(|c| !overlay_chunks.contains(c)) {
                return Err(format!(
                    "crash: md's bits {md_dirty:?}, want some of {overlay_chunks:?}"
                ));
            }
            // As writes that reached leg0 only would leave them (the bits allow it).
            for &c in md_dirty.iter().chain([untouched].iter()) {
                perturb_leg_chunk_in(legs.path(1), geo, c, PERTURB_TAG);
            }
        }
        other => return Err(format!("mode {other}")),
    }
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    let mut args = vec![];
    if let Some((_, b)) = &bitmap {
        args.extend(["--bitmap", path_str(b)]);
    }
    let log = || std::fs::read_to_string(log_path(&mnt)).unwrap_or_default();
    let m = MountedArray::try_mount(&legs, &mnt, &args)
        .map_err(|o| format!("mdfuse mount (without --run): {}", text(&o)))?;
    let first = m.mdstat();
    let mut problems = Problems::default();
    match mode {
        "clean" if first.contains("resync") || first.contains("recovery") => {
            problems.push(format!("a clean array resyncs:\n{first}"))
        }
        "degraded" => {
            if !first.contains("[2/1]") {
                problems.push(format!("not degraded at the start:\n{first}"));
            }
            if sha256_region(&m.image(), 0, geo.array_bytes) != md_sha {
                problems.push("degraded: mdfuse serves other data than md read");
            }
            mdfuse_stdout(&[
                "manage",
                path_str(m.mountpoint()),
                "--re-add",
                path_str(legs.path(1)),
            ]);
        }
        _ => {}
    }
    mdfuse_stdout(&["wait", path_str(m.mountpoint())]);
    let last = m.mdstat();
    if !last.contains("[2/2]") {
        problems.push(format!("not whole after `mdfuse wait`:\n{last}"));
    }
    let served = common::io::read_direct(&m.image(), 0, geo.array_bytes as usize)
        .expect("read the image with O_DIRECT");
    m.stop();
    let (l0, l1) = (
        leg_data_in(legs.path(0), geo),
        leg_data_in(legs.path(1), geo),
    );
    if sha256_bytes(&l0) != md_sha {
        problems.push("leg0 does not hold what md read");
    }
    for c in 0..geo.array_bytes.div_ceil(CHUNK) {
        let got = chunk_bytes(&served, c);
        let ok = got == chunk_bytes(&l0, c)
            || (c == untouched && mode != "clean" && got == chunk_bytes(&l1, c));
        if !ok {
            problems.push(format!("mdfuse served chunk {c} unlike either leg"));
            break;
        }
    }
    let differing = differing_chunks(&l0, &l1);
    let want: Vec<u64> = if mode == "clean" {
        vec![]
    } else {
        vec![untouched]
    };
    if differing != want {
        problems.push(format!(
            "after mdfuse the legs differ in {differing:?}, want {want:?} (md's dirty chunks {md_dirty:?})"
        ));
    }
    match mode {
        "degraded" => {
            let copied = format!(
                "re-added: bitmap-guided recovery of {} bytes",
                md_dirty.len() as u64 * CHUNK
            );
            if !log().contains(&copied) {
                problems.push(format!("the log does not say {copied:?}:\n{}", log()));
            }
        }
        "crash" if !log().contains("resync") => {
            problems.push(format!("the log names no resync:\n{}", log()))
        }
        _ => {}
    }
    let bitmap_after = match (&bitmap, internal) {
        (Some((_, b)), _) => Some(b.clone()),
        (None, true) => Some(legs.path(0).to_path_buf()),
        (None, false) => None,
    };
    if let Some(b) = bitmap_after {
        let (_, after) = mdfuse_bitmap(&b);
        if !after.is_empty() {
            problems.push(format!("bits left after mdfuse: {after:?}"));
        }
    }
    problems.verdict()
}

/// Linux md creates metadata 1.0, 1.1 and 1.2 RAID1s in one boot (with a bitmap file, an
/// internal bitmap or none) and leaves them clean, degraded or crashed; mdfuse serves
/// each with md's sha256, re-adds a degraded one's stale leg by copying only md's dirty
/// chunks, and resyncs exactly md's dirty chunks of the crashed one.
#[test]
fn mdfuse_serves_md_metadata_1_0_and_1_1_arrays_clean_degraded_and_crashed() {
    let Some(_serial) = start("mdfuse_serves_md_metadata_1_0_and_1_1_arrays") else {
        return;
    };
    // The crashed array last: the boot ends with it.
    let specs = [
        ("m10clean", "1.0:none:clean"),
        ("m11clean", "1.1:file:clean"),
        ("m10deg", "1.0:file:degraded"),
        ("m11deg", "1.1:file:degraded"),
        ("i12clean", "1.2:internal:clean"),
        ("i10deg", "1.0:internal:degraded"),
        ("i12crash", "1.2:internal:crash"),
    ];
    let mut boot = RigBoot::new();
    for (name, _) in specs {
        boot.add_empty(name, LEG_BYTES);
    }
    let pbase = boot.dir.path().join("pbase.img");
    let palt = boot.dir.path().join("palt.img");
    std::fs::write(&pbase, kmd::pattern(BASE_TAG, 0, LEG_BYTES / SECTOR)).expect("pbase");
    std::fs::write(&palt, kmd::pattern(OVERLAY_TAG, 0, LEG_BYTES / SECTOR)).expect("palt");
    let mut env: Vec<String> = specs.iter().map(|(n, s)| format!("{n}={s}")).collect();
    let overlays: Vec<String> = OVERLAYS.iter().map(|(o, l)| format!("{o}:{l}")).collect();
    env.push(format!("OVERLAYS={}", overlays.join(" ")));
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    let run = boot.run("md-creates", &[("pbase", &pbase), ("palt", &palt)], &env);
    let mut verdicts = Vec::new();
    if run.rc != 0 {
        verdicts.push(("boot".to_string(), Err(format!("rig rc {}", run.rc))));
    } else {
        for (name, spec) in specs {
            let part = boot.part(&run, name);
            verdicts.push((name.to_string(), serve_md_made(&boot, &part, name, spec)));
        }
    }
    assert_parts_agree(run, verdicts);
}

// ---------------------------------------------------------------- 7. internal bitmaps with md

/// md on legs `mdfuse create --bitmap internal` made and mdfuse wrote, in one boot: after a
/// clean stop it assembles them clean (no resync, mdfuse's data, the bitmap at +8); after a
/// kill -9 it resyncs exactly the chunks mdfuse's internal bitmap holds dirty (leg1
/// perturbed in all of them and in one clean chunk: only that one still differs after md's
/// resync); after a session on leg0 alone it starts degraded and re-adds leg1 from the
/// bitmap only (leg1 perturbed in a clean chunk, which a full recovery would overwrite).
#[test]
fn md_assembles_mdfuse_internal_bitmap_arrays_clean_resyncs_their_dirty_chunks_and_re_adds() {
    let Some(_serial) = start("md_assembles_mdfuse_internal_bitmap_arrays") else {
        return;
    };
    let mut boot = RigBoot::new();
    // Stopped clean.
    let clean = TestArray::create_internal("iclean");
    fill_base(&clean);
    let served = write_overlays(clean.mount(&[]));
    let (_, bits) = mdfuse_bitmap(clean.legs.path(1));
    assert!(
        bits.is_empty(),
        "leg1's copy is clean after a clean stop: {bits:?}"
    );
    boot.add("iclean", &clean.leg_refs(), None);

    // Killed mid-writes.
    let killed = TestArray::create_internal("ikilled");
    fill_base(&killed);
    let out = write_then_kill(&killed, shuffled_slots()[..600].to_vec(), 4, Some(40));
    assert!(out.acked.len() >= 40);
    let (_, dirty) = mdfuse_bitmap(killed.legs.path(0));
    let (_, dirty1) = mdfuse_bitmap(killed.legs.path(1));
    assert!(!dirty.is_empty(), "no dirty bit after the kill");
    // A page goes to leg0's copy, then leg1's: the kill may fall between the two (the
    // data those bits cover was not written yet). md reads leg0's, the first member's.
    assert!(
        dirty1.iter().all(|c| dirty.contains(c)),
        "leg1's copy holds a bit leg0's lacks: {dirty1:?} / {dirty:?}"
    );
    let (k0, k1, untouched) = perturbed_copies(&killed, &dirty, "ik");
    boot.add("ikilled", &[&k0, &k1], None);

    // A session on leg0 alone: leg1 stale, the overlays' chunks dirty.
    let deg = TestArray::create_internal("ideg");
    fill_base(&deg);
    let expected = write_overlays(deg.mount_leg0_alone());
    let deg_dirty = assert_leg1_stale_with_the_overlays_dirty(&deg, mdfuse_examine);
    let d0 = deg.leg_copy(0, "ideg-leg0.img");
    let d1 = deg.leg_copy(1, "ideg-leg1.img");
    let deg_untouched = 200;
    assert!(!deg_dirty.contains(&deg_untouched));
    perturb_leg_chunk(&d1, deg_untouched, PERTURB_TAG);
    boot.add("ideg", &[&d0, &d1], None);

    let run = boot.run("assemble-each", &[], &["RE_ADD_NAMES=ideg"]);
    let mut verdicts = Vec::new();
    if run.rc != 0 {
        verdicts.push(("boot".to_string(), Err(format!("rig rc {}", run.rc))));
    }
    let part = boot.part(&run, "iclean");
    let mut v = md_accepts_clean(&part, &served);
    if part.val("bitmap_location").as_deref() != Some("+8") {
        v = Err(format!(
            "md's bitmap/location {:?}, want +8; {v:?}",
            part.val("bitmap_location")
        ));
    }
    verdicts.push(("iclean".to_string(), v));

    let part = boot.part(&run, "ikilled");
    let mut v = md_resynced_exactly(&part, V1_2, &dirty, untouched);
    let mut p = Problems::default();
    p.want_leg_states(&part, "active");
    if let Err(e) = p.verdict() {
        v = Err(format!("{e}\n{v:?}"));
    }
    verdicts.push(("ikilled".to_string(), v));

    let part = boot.part(&run, "ideg");
    let check = || -> Result<(), String> {
        let mut p = Problems::default();
        p.want_vals(
            &part,
            &[
                ("assembled", "yes"),
                ("degraded", "1"),
                ("degraded_after_sync", "0"),
            ],
        );
        p.want_dirty_before(&part, deg_dirty.len());
        if !part.dmesg_md().contains("recovery of RAID array md0") {
            p.push("no recovery");
        }
        let (l0, l1) = (leg_data(&part.leg_after(0)), leg_data(&part.leg_after(1)));
        let differing = differing_chunks(&l0, &l1);
        if differing != [deg_untouched] {
            p.push(format!(
                "legs differ in {differing:?} after the re-add; want only {deg_untouched} \
                 (not in the bitmap: a full recovery would have overwritten it)"
            ));
        }
        if sha256_bytes(&l0) != expected {
            p.push("leg0 data is not what mdfuse acknowledged");
        }
        p.verdict()
    };
    verdicts.push(("ideg".to_string(), check()));
    assert_parts_agree(run, verdicts);
}

// ---------------------------------------------------------------- 8. a leg on an NBD server, then md

/// md assembles what mdfuse wrote with one leg on an NBD server (qemu-nbd over a Unix
/// socket, serving leg1's file): md reads the server's image file as a leg. After a clean
/// stop, clean; after a session in which the server died (leg1 failed, writes on leg0 only),
/// md starts it degraded and recovers leg1 from the bitmap only.
#[test]
fn md_assembles_legs_mdfuse_served_over_nbd_clean_and_recovers_the_remote_one_from_the_bitmap() {
    let t = "md_assembles_legs_mdfuse_served_over_nbd";
    let Some(_serial) = start(t) else {
        return;
    };
    let arr = TestArray::create("interop");
    let sock = arr.dir.path().join("leg1.sock");
    let listen = ["-k".to_string(), path_str(&sock).to_string()];
    let listen: Vec<&str> = listen.iter().map(String::as_str).collect();
    let uri = format!("nbd+unix:///leg1?socket={}&x-timeout=2", sock.display());
    let remote_legs = Legs::from_paths(vec![arr.legs.paths[0].clone(), PathBuf::from(&uri)]);
    let mount_remote = || {
        arr.try_mount_legs(&remote_legs, &[])
            .unwrap_or_else(|e| panic!("mount with an NBD leg: {e}\n{}", arr.log_text()))
    };

    // 1. The base pattern through the NBD leg; a clean stop: md assembles clean.
    let mut server = Server::qemu_nbd(arr.legs.path(1), "leg1", &listen);
    let m = mount_remote();
    write_pattern(&m.image(), 0, arr.geo.array_bytes, BASE_TAG).expect("write through array.img");
    let served = sha256_region(&m.image(), 0, arr.geo.array_bytes);
    m.stop();
    assert_eq!(served, sha256_bytes(&expected_image(&[])));
    let bm = arr.bitmap_copy("md0.bitmap");
    let run = kmd::verify_foreign(&arr.leg_refs(), &bm, Some(&served), false, &[]);
    let verdict = md_accepts_clean(&run, &served);
    assert_md_agrees(run, verdict);

    // 2. The server dies during a session: leg1 is failed, the overlays land on leg0
    // only, their bits stay; md recovers leg1 from the bitmap only.
    let m = mount_remote();
    server.kill();
    let expected = write_overlays(m);
    let dirty = assert_leg1_stale_with_the_overlays_dirty(&arr, mdfuse_examine);
    md_re_adds_the_stale_leg_from_the_bitmap_only(&arr, &dirty, &expected);
}
