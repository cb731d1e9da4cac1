//! Power cuts (issue 12): legs, and the block device under the bitmap's
//! filesystem, on disks with volatile write caches (`common::faultyfs` in
//! volatile mode). A cut fails every request from its instant, the daemon
//! is killed, and each write the disks had not flushed is kept, dropped or
//! torn at random, the kept ones landing in random order; then the array is
//! assembled again and every write acknowledged as durable (its fsync
//! returned, or it was an O_DSYNC write) must read back.
//!
//! Needs root. Tests run one at a time (`serial`). `MDFUSE_POWERCUT_ROUNDS`
//! sets the rounds of the random test (default 20), `MDFUSE_POWERCUT_SEED`
//! replays a seed it printed.

mod common;

use common::bitmap::{bitmap_chunk, chunk_bytes, dirty_on_disk, extents};
use common::faultyfs::{CutOutcome, Event, FaultyFs, Survival};
use common::io::{read_direct, AlignedVec};
use common::loopdev::{needs_root, run, serial, LoopDevice, Mkfs, MountedFs};
use common::mdfuse::{self as h, path_str, tempdir, wait_for, Legs, MountedArray};
use common::rng::Rng;
use common::workload::{self, Spec, Workload, BLOCK};
use std::collections::HashMap;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const LEG_SIZE: u64 = 32 * MIB;
const BITMAP_FS_SIZE: u64 = 64 * MIB;
const LEG_NAMES: [&str; 2] = ["leg0.img", "leg1.img"];
const BITMAP_FS: &str = "bitmapfs.img";
/// md v1.2: the superblock is 4 KiB into a leg; fields we judge.
const SB_AT: u64 = 4096;
const MAX_SECTOR: u64 = u64::MAX;
const ROLE_FAULTY: u16 = 0xfffe;
const FEATURE_RECOVERY_OFFSET: u32 = 2;
const SECTOR: usize = 512;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------- superblocks in flight

/// The fields of an md v1.2 superblock a trigger looks at, from the bytes
/// of a write at [`SB_AT`] (None for anything else).
#[derive(Debug, Clone)]
struct SbWrite {
    feature_map: u32,
    recovery_offset: u64,
    resync_offset: u64,
    roles: Vec<u16>,
}

fn sb_write(offset: u64, data: &[u8]) -> Option<SbWrite> {
    if offset != SB_AT || data.len() < SECTOR {
        return None;
    }
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes"));
    if u32_at(0) != 0xa92b_4efc {
        return None;
    }
    let max_dev = (u32_at(220) as usize).min((data.len() - 256) / 2);
    Some(SbWrite {
        feature_map: u32_at(8),
        recovery_offset: u64_at(152),
        resync_offset: u64_at(208),
        roles: (0..max_dev)
            .map(|i| u16::from_le_bytes([data[256 + 2 * i], data[257 + 2 * i]]))
            .collect(),
    })
}

/// A trigger for [`FaultyFs::arm_cut`]: right after the first write for
/// which `pred(file, offset, data)` holds, or (`then_flush`) right after
/// the next flush of that file.
fn after_write(
    pred: impl Fn(&str, u64, &[u8]) -> bool + Send + 'static,
    then_flush: bool,
) -> impl FnMut(&Event) -> bool + Send + 'static {
    let mut matched: Option<String> = None;
    move |e| match e {
        Event::Write {
            file, offset, data, ..
        } if matched.is_none() && pred(file, *offset, data) => {
            if then_flush {
                matched = Some(file.to_string());
                false
            } else {
                true
            }
        }
        Event::Flush { file } => matched.as_deref() == Some(*file),
        _ => false,
    }
}

/// [`after_write`] for superblock writes to the legs.
fn after_sb(
    pred: impl Fn(&str, &SbWrite) -> bool + Send + 'static,
    then_flush: bool,
) -> impl FnMut(&Event) -> bool + Send + 'static {
    after_write(
        move |file, offset, data| {
            LEG_NAMES.contains(&file) && sb_write(offset, data).is_some_and(|sb| pred(file, &sb))
        },
        then_flush,
    )
}

// ---------------------------------------------------------------- the rig

/// Two legs and the bitmap's filesystem image on one volatile FaultyFs,
/// the bitmap's ext4 on a loop device over that image. Fields drop in
/// declaration order: the array, the ext4, the loop, the FaultyFs.
struct Rig {
    array: Option<MountedArray>,
    bitmap_fs: Option<MountedFs>,
    bitmap_loop: Option<LoopDevice>,
    /// The bitmap's filesystem image, open through a detached mount.
    bitmap_image: Option<std::fs::File>,
    fs: FaultyFs,
    legs: Legs,
    bitmap: Option<PathBuf>,
    mnt: PathBuf,
    bitmap_mnt: PathBuf,
    array_bytes: u64,
    data_offset: u64,
    _dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        // A daemon killed at a cut leaves its event log in /run/mdfuse:
        // once the array is stopped, nothing of the test's stays there.
        drop(self.array.take());
        common::mdfuse::forget_run_files_under(self._dir.path());
    }
}

impl Rig {
    /// Creates the array (with a bitmap file of `bitmap_chunk` chunks, or
    /// none) and puts everything on stable storage.
    fn new(bitmap_chunk: Option<&str>) -> Rig {
        let dir = tempdir("mdfuse-powercut");
        let fs = FaultyFs::volatile(&[
            (LEG_NAMES[0], LEG_SIZE),
            (LEG_NAMES[1], LEG_SIZE),
            (BITMAP_FS, BITMAP_FS_SIZE),
        ]);
        let legs = Legs::from_paths(LEG_NAMES.iter().map(|n| fs.path(n)).collect());
        let bitmap_mnt = dir.path().join("bitmapfs");
        let mut rig = Rig {
            array: None,
            bitmap_fs: None,
            bitmap_loop: None,
            bitmap_image: None,
            legs,
            bitmap: None,
            mnt: dir.path().join("mnt"),
            bitmap_mnt,
            array_bytes: 0,
            data_offset: 0,
            fs,
            _dir: dir,
        };
        let mut args = vec!["--force".to_string()];
        if let Some(chunk) = bitmap_chunk {
            rig.bitmap_image = Some(rig.fs.open_detached(BITMAP_FS));
            let lo = rig.attach_bitmap_loop();
            Mkfs::ext4_eager(lo.path()).expect("mkfs.ext4");
            rig.bitmap_loop = Some(lo);
            rig.mount_bitmap_fs();
            let bitmap = rig.bitmap_mnt.join("md.bitmap");
            args.extend(["--bitmap".into(), path_str(&bitmap).into()]);
            args.extend(["--bitmap-chunk".into(), chunk.into()]);
            rig.bitmap = Some(bitmap);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let created = h::create(&rig.legs, &refs);
        rig.array_bytes = created.array_bytes;
        rig.data_offset = created.data_offset_sectors * 512;
        if rig.bitmap_fs.is_some() {
            run("sync", &["-f", path_str(&rig.bitmap_mnt)]).expect("sync");
        }
        rig.fs.persist_all();
        rig
    }

    /// A loop device over the bitmap's filesystem image (through the
    /// detached mount's open file: mdfuse refuses a bitmap whose loop
    /// device's backing file is on FUSE, as an mdfuse image would be).
    fn attach_bitmap_loop(&self) -> LoopDevice {
        use std::os::fd::AsRawFd;
        let f = self.bitmap_image.as_ref().expect("the bitmap's image");
        let path = format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd());
        LoopDevice::attach(Path::new(&path)).expect("losetup over the bitmap's image")
    }

    fn mount_bitmap_fs(&mut self) {
        let lo = self.bitmap_loop.as_ref().expect("the bitmap's loop device");
        self.bitmap_fs = Some(MountedFs::mount(lo.path(), &self.bitmap_mnt).expect("mount ext4"));
    }

    fn mount_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["--threads".into(), "8".into()];
        if let Some(b) = &self.bitmap {
            a.extend(["--bitmap".into(), path_str(b).into()]);
            a.extend(["--delay".into(), "0.3".into()]);
            // The bitmap's loop device is backed by a detached FUSE file,
            // a stack mdfuse cannot follow: the test knows it is not the
            // array.
            a.push("--bitmap-trust-device".into());
        }
        a
    }

    /// Mounts the array (`--run`: a cut may leave a leg stale) and lets its
    /// syncs run at full speed under the workload.
    fn mount(&mut self) -> &MountedArray {
        assert!(self.array.is_none());
        let mut args = self.mount_args();
        args.push("--run".into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let m = MountedArray::mount(&self.legs, &self.mnt, &refs);
        m.set_md("sync_speed_min", "500000");
        self.array = Some(m);
        self.array()
    }

    fn array(&self) -> &MountedArray {
        self.array.as_ref().expect("the array is mounted")
    }

    /// The power cut (if no trigger made it yet), and the reboot: the daemon
    /// killed, the bitmap's filesystem and loop device gone while nothing
    /// is served, then `survival` decides what the unflushed writes left,
    /// and the loop device and filesystem come back (journal replayed).
    fn power_cut(&mut self, survival: Survival) -> CutOutcome {
        self.fs.cut();
        if let Some(m) = self.array.take() {
            m.kill9();
        }
        // Unmounting the ext4 and detaching the loop device fail their
        // writes (the power is off); nothing of theirs may land later.
        if let Some(b) = self.bitmap_fs.take() {
            drop(b);
            assert!(
                !h::is_mounted(&self.bitmap_mnt),
                "the bitmap's ext4 is still mounted"
            );
        }
        if let Some(lo) = self.bitmap_loop.take() {
            let name = lo.path().file_name().expect("loop name").to_owned();
            drop(lo);
            let backing = Path::new("/sys/block")
                .join(&name)
                .join("loop/backing_file");
            wait_for("the loop device to detach", Duration::from_secs(10), || {
                !backing.exists()
            });
        }
        std::thread::sleep(Duration::from_millis(20));
        let out = self.fs.restore_power(survival);
        if self.bitmap.is_some() {
            self.bitmap_loop = Some(self.attach_bitmap_loop());
            self.mount_bitmap_fs();
        }
        out
    }

    /// The bitmap's dirty chunks on stable storage, and the bytes they cover.
    fn dirty(&self) -> (Vec<u64>, u64) {
        let Some(b) = &self.bitmap else {
            return (Vec::new(), 0);
        };
        let dirty = dirty_on_disk(b);
        let bytes = chunk_bytes(&dirty, bitmap_chunk(b), self.array_bytes);
        (dirty, bytes)
    }

    /// Legs not in the running array (faulty or missing) are re-added.
    fn re_add_missing(&self) -> usize {
        let m = self.array();
        let mut n = 0;
        for (i, name) in LEG_NAMES.iter().enumerate() {
            let dev = self.mnt.join("md").join(format!("dev-{name}"));
            let state = if dev.exists() {
                m.md(&format!("dev-{name}/state"))
            } else {
                String::new()
            };
            if state == "in_sync" || state == "spare" {
                continue;
            }
            let o = h::mdfuse(&[
                "manage",
                path_str(&self.mnt),
                "--re-add",
                path_str(self.legs.path(i)),
            ]);
            h::assert_ok(&format!("re-add {name} (log:\n{})", m.log()), &o);
            n += 1;
        }
        n
    }

    /// `check`, then mismatch_cnt.
    fn check(&self) -> u64 {
        let m = self.array();
        m.set_md("sync_action", "check");
        m.wait_sync_idle(Duration::from_secs(120));
        m.md("mismatch_cnt").parse().expect("mismatch_cnt")
    }

    fn wait_clean(&self) -> bool {
        h::poll(Duration::from_secs(5), || {
            self.array().md("array_state") == "clean"
        })
    }
}

// ---------------------------------------------------------------- what must read back

/// The source of each 512-byte sector of a block: the generation written
/// there (None: zeros, never written).
type Sectors = [Option<u64>; 8];

fn sector_of(off: u64, src: Option<u64>, s: usize) -> Vec<u8> {
    match src {
        None => vec![0; SECTOR],
        Some(g) => workload::block(off, g)[s * SECTOR..(s + 1) * SECTOR].to_vec(),
    }
}

/// What a check after a cut found.
#[derive(Debug, Default)]
struct Verdict {
    lost: Vec<String>,
    durable: u64,
    torn: u64,
    newer: u64,
}

/// Reads `region` of `image` and checks every block against what may be
/// there: a block written durably holds that write or a later one written
/// since; any other block what it held before (`known`) or a write since;
/// a cut may tear any of these at 512 bytes. `known` becomes what was found.
fn verify_after_cut(
    image: &Path,
    region: std::ops::Range<u64>,
    report: &workload::Report,
    known: &mut HashMap<u64, Sectors>,
) -> Verdict {
    let mut v = Verdict::default();
    let step = MIB;
    let mut pos = region.start;
    while pos < region.end {
        let n = (region.end - pos).min(step) as usize;
        let data = match read_direct(image, pos, n) {
            Ok(d) if d.len() == n => d,
            other => {
                v.lost
                    .push(format!("reading {n} bytes at {pos}: {other:?}"));
                return v;
            }
        };
        for (i, got) in data.chunks(BLOCK as usize).enumerate() {
            let off = pos + i as u64 * BLOCK;
            let durable = report.acked.get(&off).copied();
            let mut versions: Vec<Sectors> = vec![match durable {
                Some(g) => [Some(g); 8],
                None => known.get(&off).copied().unwrap_or([None; 8]),
            }];
            if let Some(p) = report.pending.get(&off) {
                versions.extend(p.iter().map(|&g| [Some(g); 8]));
            }
            v.durable += durable.is_some() as u64;
            let mut found: Sectors = [None; 8];
            let mut ok = true;
            for (s, bytes) in got.chunks(SECTOR).enumerate() {
                match versions
                    .iter()
                    .find(|ver| sector_of(off, ver[s], s) == bytes)
                {
                    Some(ver) => found[s] = ver[s],
                    None => ok = false,
                }
            }
            if !ok {
                v.lost.push(format!(
                    "block {off}: may hold {versions:?} (durable {durable:?}), holds {:?}",
                    workload::decode(got)
                ));
                continue;
            }
            if found.iter().any(|&f| f != found[0]) {
                v.torn += 1;
            } else if found != versions[0] {
                v.newer += 1;
            }
            if found == [None; 8] {
                known.remove(&off);
            } else {
                known.insert(off, found);
            }
        }
        pos += n as u64;
    }
    v
}

/// The blocks of `known` that hold one whole generation (what a workload
/// may read back).
fn whole_blocks(known: &HashMap<u64, Sectors>) -> HashMap<u64, u64> {
    known
        .iter()
        .filter_map(|(&o, s)| match s[0] {
            Some(g) if s.iter().all(|&x| x == Some(g)) => Some((o, g)),
            _ => None,
        })
        .collect()
}

fn open_with(path: &Path, flags: i32) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// pwritev2 with `flags` (RWF_*).
fn pwritev2(f: &std::fs::File, buf: &[u8], offset: u64, flags: i32) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: one iovec over a live buffer.
    let n = unsafe { libc::pwritev2(f.as_raw_fd(), &iov, 1, offset as i64, flags) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// How writes that must be durable reach a FUSE server, and what a loop
/// device makes of flushes, as the volatile mode models them: an O_DSYNC
/// open, `pwritev2(RWF_DSYNC)` and a buffered O_DSYNC write on a
/// `FOPEN_DIRECT_IO` file arrive as WRITEs with O_DSYNC in
/// `fuse_write_in.flags` and no FSYNC after them (so the server must make
/// each durable itself: FUA), while a loop device over such a file sends
/// FSYNCs for its flushes and for an O_DSYNC write to it (loop has no FUA;
/// the block layer emulates it with a flush). A cut then drops what was not
/// flushed and keeps what was.
#[test]
fn dsync_writes_reach_the_fuse_server_as_fua() {
    if !needs_root("dsync_writes_reach_the_fuse_server_as_fua") {
        return;
    }
    let fs = FaultyFs::volatile(&[("f", MIB), ("disk", 16 * MIB)]);
    let mut buf = AlignedVec::zeroed(4096);
    buf.as_mut_slice().fill(7);
    let plain = open_with(&fs.path("f"), libc::O_DIRECT);
    plain.write_all_at(buf.as_slice(), 0).expect("write");
    assert_eq!(fs.unflushed_writes("f"), 1);
    let dsync = open_with(&fs.path("f"), libc::O_DIRECT | libc::O_DSYNC);
    dsync
        .write_all_at(buf.as_slice(), 4096)
        .expect("O_DSYNC write");
    pwritev2(&plain, buf.as_slice(), 8192, libc::RWF_DSYNC).expect("RWF_DSYNC write");
    let buffered = open_with(&fs.path("f"), libc::O_DSYNC);
    buffered
        .write_all_at(&[1u8; 100], 100)
        .expect("buffered O_DSYNC write");
    let c = fs.counters("f");
    assert_eq!((c.writes, c.dsync_writes, c.fsyncs), (4, 3, 0), "{c:?}");
    // The FUA writes are stable; the first write (less the 100 bytes the
    // last one superseded) is still only in the cache.
    assert_eq!(fs.unflushed_writes("f"), 2);
    let backing = std::fs::read(fs.backing("f")).expect("backing");
    assert!(
        backing[..4096].iter().all(|&b| b != 7) && backing[4096..12288].iter().all(|&b| b == 7)
    );
    // What is cached reads back.
    let mut back = AlignedVec::zeroed(4096);
    plain.read_exact_at(back.as_mut_slice(), 0).expect("read");
    assert!(back.as_slice()[..100].iter().all(|&b| b == 7));
    assert!(back.as_slice()[100..200].iter().all(|&b| b == 1));

    let lo = LoopDevice::attach(&fs.path("disk")).expect("losetup");
    let dev = open_with(lo.path(), libc::O_DIRECT);
    let dev_dsync = open_with(lo.path(), libc::O_DIRECT | libc::O_DSYNC);
    let before = fs.counters("disk");
    dev.write_all_at(buf.as_slice(), 0).expect("device write");
    assert_eq!(fs.unflushed_writes("disk"), 1);
    dev_dsync
        .write_all_at(buf.as_slice(), 4096)
        .expect("device O_DSYNC write");
    assert_eq!(
        fs.unflushed_writes("disk"),
        0,
        "an O_DSYNC device write flushed"
    );
    let mid = fs.counters("disk");
    assert!(mid.fsyncs > before.fsyncs, "{before:?} {mid:?}");
    dev.write_all_at(buf.as_slice(), 8192)
        .expect("device write");
    dev.sync_data().expect("device fdatasync");
    assert_eq!(
        fs.unflushed_writes("disk"),
        0,
        "fdatasync of the device flushed"
    );
    assert!(fs.counters("disk").fsyncs > mid.fsyncs);
    drop((dev, dev_dsync, lo));

    // A cut: the unflushed write is gone, requests fail until the power is back.
    plain.write_all_at(buf.as_slice(), 12288).expect("write");
    fs.cut();
    assert!(plain.read_exact_at(back.as_mut_slice(), 0).is_err());
    assert!(plain.write_all_at(buf.as_slice(), 0).is_err());
    let out = fs.restore_power(Survival::DropAll);
    assert_eq!((out.unflushed, out.dropped), (3, 3), "{out:?}");
    plain.read_exact_at(back.as_mut_slice(), 0).expect("read");
    assert!(back.as_slice()[..100].iter().all(|&b| b == 0));
    assert!(back.as_slice()[100..200].iter().all(|&b| b == 1));
    assert!(back.as_slice()[200..].iter().all(|&b| b == 0));
    plain
        .read_exact_at(back.as_mut_slice(), 12288)
        .expect("read");
    assert!(back.as_slice().iter().all(|&b| b == 0));
}

// ---------------------------------------------------------------- random rounds

/// Where a round cuts the power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Moment {
    /// At a random moment of the workload.
    Random,
    /// Right after a superblock write recording the array active.
    MarkActive,
    /// Right after safe mode's superblock write recording it clean.
    SafeMode,
    /// Right after the superblock write recording a leg's failure.
    LegFailure,
    /// Right after a recovering leg's recovery_offset is written.
    RecoveryCheckpoint,
    /// Right after a recovered leg's superblock records it joined.
    RecoveryJoin,
    /// Right after the superblocks record a resync's end (clean).
    ResyncEnd,
    /// Right after the bitmap daemon writes a page with bits cleared.
    BitmapClear,
}

const MOMENTS: [Moment; 8] = [
    Moment::Random,
    Moment::MarkActive,
    Moment::SafeMode,
    Moment::LegFailure,
    Moment::RecoveryCheckpoint,
    Moment::RecoveryJoin,
    Moment::ResyncEnd,
    Moment::BitmapClear,
];

fn popcount(b: &[u8]) -> u32 {
    b.iter().map(|x| x.count_ones()).sum()
}

/// A trigger for the bitmap daemon's pass: a write to the bitmap file's
/// blocks (on the loop device's image) with fewer bits set than the last
/// write of that block.
fn after_bitmap_clear(
    bitmap_extents: Vec<(u64, u64, u64)>,
    then_flush: bool,
) -> impl FnMut(&Event) -> bool + Send + 'static {
    let last: Mutex<HashMap<u64, u32>> = Mutex::new(HashMap::new());
    after_write(
        move |file, offset, data| {
            if file != BITMAP_FS {
                return false;
            }
            let mut fired = false;
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            for (page, chunk) in data.chunks(4096).enumerate() {
                let at = offset + page as u64 * 4096;
                let Some(&(logical, physical, _)) = bitmap_extents
                    .iter()
                    .find(|&&(_, p, len)| p <= at && at < p + len)
                else {
                    continue;
                };
                // The header is not bits.
                let skip = if logical + (at - physical) == 0 {
                    256
                } else {
                    0
                };
                let bits = popcount(&chunk[skip.min(chunk.len())..]);
                if last.insert(at, bits).is_some_and(|b| bits < b) {
                    fired = true;
                }
            }
            fired
        },
        then_flush,
    )
}

/// Rounds of: a verified workload (fsync and O_DSYNC writes from three
/// threads) on the array, a power cut at a random moment or right after a
/// superblock or bitmap write of interest, the reboot (assembly, resync, a
/// re-add of a leg left out); then every durable write reads back, `check`
/// finds no mismatch, and the resync copied no more than the chunks whose
/// bits were on disk.
#[test]
fn power_cuts_lose_no_durable_write() {
    let Some(_serial) = serial("power_cuts_lose_no_durable_write") else {
        return;
    };
    let rounds = env_u64("MDFUSE_POWERCUT_ROUNDS").unwrap_or(20);
    let seed = env_u64("MDFUSE_POWERCUT_SEED").unwrap_or_else(Rng::clock_seed);
    eprintln!("power cut rounds: {rounds}, seed {seed} (MDFUSE_POWERCUT_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let mut rig = Rig::new(Some("64K"));
    let region =
        0..rig.array_bytes / (workload::STRIPE_BLOCKS * BLOCK) * (workload::STRIPE_BLOCKS * BLOCK);
    let bitmap = rig.bitmap.clone().expect("a bitmap");
    let bitmap_extents: Vec<(u64, u64, u64)> = extents(&bitmap)
        .iter()
        .map(|e| (e.logical, e.physical, e.len))
        .collect();
    let mut known: HashMap<u64, Sectors> = HashMap::new();
    let mut fired: HashMap<Moment, (u64, u64)> = HashMap::new();
    let mut totals = (0u64, 0u64, 0u64, 0u64, 0u64); // durable, torn, newer, unflushed, dropped
    let mut re_adds = 0;
    rig.mount();
    for round in 0..rounds {
        let moment = MOMENTS[rng.below(MOMENTS.len() as u64) as usize];
        let then_flush = rng.below(2) == 0;
        let victim = rng.below(2) as usize;
        let mnt_name = LEG_NAMES[victim];
        eprintln!(
            "round {round}: {moment:?}{}",
            if then_flush {
                " (at the flush after)"
            } else {
                ""
            }
        );
        if moment == Moment::MarkActive {
            assert!(
                rig.wait_clean(),
                "round {round}: the array was not recorded clean"
            );
        }
        if matches!(moment, Moment::RecoveryCheckpoint | Moment::RecoveryJoin) {
            rig.array().fail_and_remove(mnt_name);
        }
        match moment {
            Moment::MarkActive => rig
                .fs
                .arm_cut(after_sb(|_, sb| sb.resync_offset == 0, then_flush)),
            Moment::SafeMode => rig
                .fs
                .arm_cut(after_sb(|_, sb| sb.resync_offset == MAX_SECTOR, then_flush)),
            Moment::LegFailure => rig.fs.arm_cut(after_sb(
                |_, sb| sb.roles.contains(&ROLE_FAULTY),
                then_flush,
            )),
            Moment::BitmapClear => rig
                .fs
                .arm_cut(after_bitmap_clear(bitmap_extents.clone(), then_flush)),
            _ => {}
        }
        let spec = Spec {
            threads: 3,
            fsync_every: 1 + rng.below(6),
            ack_after_fsync: true,
            dsync_percent: rng.below(50),
            generation_base: (round + 1) << 32,
            seed: rng.next(),
            known: Arc::new(whole_blocks(&known)),
            ..Spec::new(&rig.array().image(), region.clone())
        };
        let wl = Workload::start(&spec);
        let run_for = Duration::from_millis(200 + rng.below(600));
        std::thread::sleep(run_for);
        match moment {
            Moment::LegFailure => rig.fs.fail_all(mnt_name),
            Moment::RecoveryCheckpoint | Moment::RecoveryJoin => {
                let name = mnt_name.to_string();
                rig.fs.arm_cut(after_sb(
                    move |file, sb| {
                        file == name
                            && if moment == Moment::RecoveryJoin {
                                sb.feature_map & FEATURE_RECOVERY_OFFSET == 0
                            } else {
                                sb.feature_map & FEATURE_RECOVERY_OFFSET != 0
                                    && sb.recovery_offset > 0
                            }
                    },
                    then_flush,
                ));
                rig.re_add_missing();
            }
            _ => {}
        }
        // Safe mode and the bitmap daemon act once writes stop.
        let mut wl = Some(wl);
        let mut report = None;
        if matches!(moment, Moment::SafeMode | Moment::BitmapClear) {
            report = wl.take().map(Workload::stop);
        }
        let wait = if matches!(moment, Moment::Random | Moment::ResyncEnd) {
            0
        } else {
            10
        };
        let hit = rig.fs.wait_cut(Duration::from_secs(wait));
        let entry = fired.entry(moment).or_default();
        entry.0 += 1;
        entry.1 += hit as u64;
        if !hit && wait > 0 {
            eprintln!("round {round}: {moment:?} did not come in {wait} s; cutting now");
        }
        let mut out = rig.power_cut(Survival::Random(&mut rng));
        let report = match (report, wl) {
            (Some(r), _) => r,
            (None, Some(w)) => w.stop(),
            (None, None) => unreachable!("the workload's report"),
        };
        assert!(
            report.mismatches.is_empty(),
            "round {round}: wrong data read back before the cut:\n{}",
            report.mismatches.join("\n")
        );

        // Back up: assembly, resync (maybe cut right at its end), re-add.
        let (mut dirty, mut dirty_bytes) = rig.dirty();
        if moment == Moment::ResyncEnd && !dirty.is_empty() {
            rig.fs
                .arm_cut(after_sb(|_, sb| sb.resync_offset == MAX_SECTOR, then_flush));
            rig.mount();
            let hit = rig.fs.wait_cut(Duration::from_secs(10));
            fired.entry(moment).or_default().1 += hit as u64;
            let again = rig.power_cut(Survival::Random(&mut rng));
            out.unflushed += again.unflushed;
            out.dropped += again.dropped;
            (dirty, dirty_bytes) = rig.dirty();
        }
        rig.fs.disarm_cut();
        rig.mount();
        rig.array().wait_sync_idle(Duration::from_secs(120));
        let copied: u64 = rig
            .array()
            .md("sync_copied")
            .split_whitespace()
            .next()
            .and_then(|t| t.parse().ok())
            .expect("md/sync_copied");
        assert!(
            copied <= dirty_bytes,
            "round {round}: the resync copied {copied} bytes, more than the {} chunks \
             dirty on disk ({dirty_bytes} bytes)",
            dirty.len()
        );
        if rig.array().md("degraded") != "0" {
            re_adds += rig.re_add_missing();
            rig.array().wait_sync_idle(Duration::from_secs(120));
        }
        let v = verify_after_cut(&rig.array().image(), region.clone(), &report, &mut known);
        assert!(
            v.lost.is_empty(),
            "round {round} ({moment:?}, seed {seed}): {} block(s) lost or wrong after the cut \
             ({out:?}):\n{}",
            v.lost.len(),
            v.lost[..v.lost.len().min(10)].join("\n")
        );
        let mismatches = rig.check();
        assert_eq!(
            mismatches, 0,
            "round {round} ({moment:?}, seed {seed}): check found mismatches after the cut"
        );
        totals.0 += v.durable;
        totals.1 += v.torn;
        totals.2 += v.newer;
        totals.3 += out.unflushed;
        totals.4 += out.dropped;
        eprintln!(
            "round {round}: {} durable blocks read back, {} torn and {} newer found, {} of {} \
             unflushed writes dropped",
            v.durable, v.torn, v.newer, out.dropped, out.unflushed
        );
    }
    if let Some(m) = rig.array.take() {
        m.stop();
    }
    let mut fired: Vec<_> = fired.into_iter().collect();
    fired.sort();
    eprintln!(
        "{rounds} power cuts in {:.1} s (seed {seed}): {} durable blocks checked, 0 lost, 0 \
         mismatches; {} torn and {} newer blocks found; {} of {} unflushed writes dropped; {re_adds} \
         re-adds; moments (rounds, hit): {fired:?}",
        t0.elapsed().as_secs_f64(),
        totals.0,
        totals.1,
        totals.2,
        totals.4,
        totals.3
    );
}

// ---------------------------------------------------------------- holes 1, 4, 5

/// `len` bytes of leg `name`'s stable storage at array offset `offset`.
fn on_stable_leg(rig: &Rig, name: &str, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(rig.fs.backing(name)).expect("backing leg");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, rig.data_offset + offset)
        .expect("read the backing leg");
    buf
}

/// Writes `data` at `offset` of array.img (O_DIRECT, `flags` more on the
/// open, `rwf` for pwritev2); returns the descriptor, to be kept open until
/// after a cut (its close would flush the legs, as fsync does).
#[must_use]
fn write_image(m: &MountedArray, offset: u64, data: &[u8], flags: i32, rwf: i32) -> std::fs::File {
    let f = open_with(&m.image(), libc::O_DIRECT | flags);
    let mut buf = AlignedVec::zeroed(data.len());
    buf.as_mut_slice().copy_from_slice(data);
    let n = pwritev2(&f, buf.as_slice(), offset, rwf)
        .unwrap_or_else(|e| panic!("write {} bytes at {offset}: {e}", data.len()));
    assert_eq!(n, data.len());
    f
}

/// `blocks` workload blocks of generation `g` from `offset`.
fn blocks(offset: u64, n: u64, g: u64) -> Vec<u8> {
    (0..n)
        .flat_map(|b| workload::block(offset + b * BLOCK, g))
        .collect()
}

/// Hole 1: a write through an O_DSYNC descriptor, or with RWF_DSYNC, is on
/// every leg's stable storage when it returns: cut right after it, with
/// every write the legs had not flushed dropped, and it is there.
#[test]
fn an_o_dsync_write_is_on_every_leg_when_it_returns() {
    let Some(_serial) = serial("an_o_dsync_write_is_on_every_leg_when_it_returns") else {
        return;
    };
    let mut rig = Rig::new(None);
    let m = rig.mount();
    // Marked active and flushed first, so nothing else flushes the legs.
    m.fill_random(8 * MIB, 4096, 1);
    let (a, b) = (blocks(MIB, 4, 7), blocks(2 * MIB, 2, 8));
    let _fa = write_image(m, MIB, &a, libc::O_DSYNC, 0);
    let _fb = write_image(m, 2 * MIB, &b, 0, libc::RWF_DSYNC);
    let out = rig.power_cut(Survival::DropAll);
    eprintln!("cut: {out:?}");
    for name in LEG_NAMES {
        assert!(
            on_stable_leg(&rig, name, MIB, a.len()) == a,
            "the O_DSYNC write is not on {name}'s stable storage after the cut ({out:?})"
        );
        assert!(
            on_stable_leg(&rig, name, 2 * MIB, b.len()) == b,
            "the RWF_DSYNC write is not on {name}'s stable storage after the cut ({out:?})"
        );
    }
}

/// Hole 5: a background flush (safe mode's) that fails on the last in-sync
/// leg loses what that leg's cache held; the user's next fsync must then
/// not return 0 with the write not on that leg's stable storage.
#[test]
fn a_failed_background_flush_is_not_hidden_from_the_next_fsync() {
    let Some(_serial) = serial("a_failed_background_flush_is_not_hidden_from_the_next_fsync")
    else {
        return;
    };
    let mut rig = Rig::new(None);
    let m = rig.mount();
    m.fail_and_remove(LEG_NAMES[1]);
    m.fill_random(8 * MIB, 4096, 1);
    assert!(rig.wait_clean(), "safe mode did not record the array clean");
    let m = rig.array();
    let data = blocks(MIB, 4, 9);
    let f = write_image(m, MIB, &data, 0, 0);
    // The write marked the array active (its flushes are done); the next
    // flush of leg0, the last in sync, fails, as safe mode's will once
    // writes stop.
    let leg = LEG_NAMES[0];
    rig.fs.fail_next_fsyncs(leg, 1);
    wait_for("safe mode's flush", Duration::from_secs(10), || {
        rig.fs.counters(leg).failed_fsyncs == 1
    });
    std::thread::sleep(Duration::from_millis(100));
    let synced = f.sync_all();
    eprintln!("fsync after the failed background flush: {synced:?}");
    if synced.is_ok() {
        assert!(
            on_stable_leg(&rig, leg, MIB, data.len()) == data,
            "fsync returned 0, but the write is not on the last in-sync leg's stable storage \
             (its flush failed in the background)"
        );
    }
}

/// Hole 4's harness: legs that differ in `region` (leg1 lacks leg0's
/// write there, as a cut can leave them) and the array recorded active,
/// then mounted without a bitmap: the resync copies the region to leg1. A
/// cut right after the superblock write to leg1 that `vouch` names, with
/// only superblock writes landing, must leave no superblock that vouches
/// for a copy leg1 does not have: the next assembly's syncs and `check`
/// find the legs equal.
fn vouching_superblock_after_resync(region: std::ops::Range<u64>, vouch: fn(&SbWrite) -> bool) {
    let mut rig = Rig::new(None);
    let m = rig.mount();
    m.fill_random(0, 4096, 1);
    let len = (region.end - region.start) as usize;
    let data = blocks(region.start, len as u64 / BLOCK, 11);
    let f = write_image(m, region.start, &data, 0, 0);
    // leg0 keeps the write, leg1 loses it; the superblocks say active.
    let leg0 = LEG_NAMES[0];
    rig.power_cut(Survival::Keep(&|file, off, _| file == leg0 || off == SB_AT));
    drop(f);
    assert!(on_stable_leg(&rig, LEG_NAMES[1], region.start, len) != data);
    rig.fs.arm_cut(after_sb(
        move |file, sb| file == LEG_NAMES[1] && vouch(sb),
        false,
    ));
    rig.mount();
    assert!(
        rig.fs.wait_cut(Duration::from_secs(30)),
        "no such superblock write came"
    );
    let out = rig.power_cut(Survival::Keep(&|_, off, _| off == SB_AT));
    eprintln!("cut: {out:?}");
    rig.mount();
    rig.array().wait_sync_idle(Duration::from_secs(60));
    let mismatches = rig.check();
    assert_eq!(
        mismatches, 0,
        "a superblock vouched for a resync's copy that was not on leg1's stable storage"
    );
}

/// Hole 4: a resync checkpoint (resync_offset past copied data) is not
/// written before the copy is durable on the target leg.
#[test]
fn a_resync_checkpoint_is_not_durable_before_the_data_it_vouches_for() {
    let Some(_serial) = serial("a_resync_checkpoint_is_not_durable_before_the_data_it_vouches_for")
    else {
        return;
    };
    vouching_superblock_after_resync(MIB..2 * MIB, |sb| {
        sb.resync_offset != 0 && sb.resync_offset != MAX_SECTOR
    });
}

/// Hole 4: the superblocks recording a resync's end (clean) are not
/// written before the last copies are durable on the target leg.
#[test]
fn a_clean_mark_after_a_resync_is_not_durable_before_its_copies() {
    let Some(_serial) = serial("a_clean_mark_after_a_resync_is_not_durable_before_its_copies")
    else {
        return;
    };
    let end = LEG_SIZE - 4 * MIB;
    vouching_superblock_after_resync(end - MIB..end, |sb| sb.resync_offset == MAX_SECTOR);
}

/// Hole 4: a recovered leg's join (its superblock without the recovery
/// bits) is not durable before the recovery's last copies are.
#[test]
fn a_recovery_join_is_not_durable_before_the_recovered_data() {
    let Some(_serial) = serial("a_recovery_join_is_not_durable_before_the_recovered_data") else {
        return;
    };
    // With a bitmap: the recovery copies the one chunk written while leg1
    // was out, less than the 1/16 of the array after which it would record
    // (and flush) a recovery checkpoint.
    let mut rig = Rig::new(Some("64K"));
    let m = rig.mount();
    m.fill_random(0, 4096, 2);
    m.fail_and_remove(LEG_NAMES[1]);
    let at = 5 * MIB;
    let data = blocks(at, 8, 12);
    drop(write_image(m, at, &data, libc::O_DSYNC, 0));
    assert!(rig.wait_clean(), "safe mode did not record the array clean");
    rig.fs.arm_cut(after_sb(
        |file, sb| file == LEG_NAMES[1] && sb.feature_map & FEATURE_RECOVERY_OFFSET == 0,
        false,
    ));
    rig.re_add_missing();
    assert!(
        rig.fs.wait_cut(Duration::from_secs(30)),
        "the join's superblock write did not come"
    );
    let out = rig.power_cut(Survival::Keep(&|file, off, _| {
        off == SB_AT || file == BITMAP_FS
    }));
    eprintln!("cut: {out:?}");
    rig.mount();
    rig.array().wait_sync_idle(Duration::from_secs(60));
    if rig.array().md("degraded") != "0" {
        rig.re_add_missing();
        rig.array().wait_sync_idle(Duration::from_secs(60));
    }
    eprintln!("{}", rig.array().log());
    let mismatches = rig.check();
    assert_eq!(
        mismatches, 0,
        "leg1 joined (on stable storage) without the data its recovery copied"
    );
}
