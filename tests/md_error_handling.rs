//! Failures and syncs as Linux md handles them, end to end on real mounts:
//! read errors corrected from the other leg (md's fix_read_error), legs
//! failed only when a rewrite fails or errors pile up, re-adds that copy
//! what the bitmap says and no more, interrupted recoveries and diverged
//! histories. Read errors are real EIOs from a leg served by a FUSE
//! filesystem of the test (`common::faultyfs`).

mod common;

use common::faultyfs::{FaultyArray, FaultyFs, BAD_LEG};
use common::io::{open_direct, read_direct, AlignedVec};
use common::loopdev::needs_root;
use common::mdfuse::{self as h, tempdir, wait_for, Legs, MountedArray};
use common::rng::Rng;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn open_image(m: &MountedArray) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.image())
        .expect("open array.img")
}

/// Reads the 4 KiB blocks of `[offset, offset+len)` one by one, last first,
/// twice: no read continues the previous one, so reads alternate between
/// the in-sync legs and every block is read from each leg.
fn read_each_block_from_each_leg(m: &MountedArray, offset: u64, len: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for pass in 0..2 {
        if pass == 1 {
            // One read more shifts which leg each block goes to.
            read_direct(&m.image(), offset + len, 4096).expect("read past the range");
        }
        let mut blocks = Vec::new();
        for b in (0..len / 4096).rev() {
            let r = read_direct(&m.image(), offset + b * 4096, 4096)
                .unwrap_or_else(|e| panic!("read of block {b} failed: {e}\n{}", m.log()));
            blocks.push(r);
        }
        blocks.reverse();
        out.push(blocks.concat());
    }
    out
}

#[test]
fn a_read_error_is_corrected_from_the_other_leg_and_the_leg_stays_in_sync() {
    if !needs_root("a_read_error_is_corrected_from_the_other_leg_and_the_leg_stays_in_sync") {
        return;
    }
    let a = FaultyArray::new(32 * MIB, &[]);
    let m = a.mount(&[]);
    let data = m.fill_random(0, 4 * MIB as usize, 1);
    // 8 KiB unreadable on leg1, in the middle of the data.
    let bad_at = a.leg_offset(MIB + 4096);
    a.bad_range(bad_at, 8192);
    for copy in read_each_block_from_each_leg(&m, MIB - 16384, 64 * 1024) {
        assert!(
            copy == data[(MIB - 16384) as usize..(MIB - 16384 + 65536) as usize],
            "a read returned wrong data"
        );
    }
    a.assert_corrected(
        &m,
        "no read reached the bad range on leg1: the test proves nothing",
    );
    let errors: u64 = m.md("dev-leg1.img/errors").parse().expect("errors");
    assert!(errors >= 8, "errors counts the corrected sectors: {errors}");
    assert_eq!(m.md("degraded"), "0");
    assert!(m.log().contains("read error corrected"), "{}", m.log());
    // The rewritten range holds the data, on the leg itself.
    let on_leg = h::data_region(&a.faulty.backing(BAD_LEG), bad_at, 8192);
    assert!(on_leg == data[(MIB + 4096) as usize..(MIB + 4096 + 8192) as usize]);
    m.stop();
    // Nothing else differs between the legs either.
    h::assert_legs_identical(
        a.legs.path(0),
        &a.faulty.backing(BAD_LEG),
        h::data_offset(a.legs.path(0)),
        4 * MIB,
    );
}

/// A large O_DIRECT read is split over the legs (each reads a piece); a
/// bad range in leg1's piece is corrected the same way.
#[test]
fn a_read_error_in_a_split_read_is_corrected_too() {
    if !needs_root("a_read_error_in_a_split_read_is_corrected_too") {
        return;
    }
    let a = FaultyArray::new(32 * MIB, &[]);
    let m = a.mount(&[]);
    let data = m.fill_random(0, 4 * MIB as usize, 3);
    // leg1 reads the second half of a 1 MiB read at 2 MiB.
    let bad_at = a.leg_offset(2 * MIB + 768 * 1024);
    a.bad_range(bad_at, 4096);
    let got = read_direct(&m.image(), 2 * MIB, MIB as usize).expect("the split read");
    assert!(
        got == data[(2 * MIB) as usize..(3 * MIB) as usize],
        "a split read returned wrong data"
    );
    a.assert_corrected(
        &m,
        "leg1 was not asked for its piece: the read was not split",
    );
    m.stop();
}

#[test]
fn a_leg_whose_rewrite_fails_is_failed_and_the_read_still_succeeds() {
    if !needs_root("a_leg_whose_rewrite_fails_is_failed_and_the_read_still_succeeds") {
        return;
    }
    let a = FaultyArray::new(32 * MIB, &[]);
    let m = a.mount(&[]);
    let data = m.fill_random(0, 2 * MIB as usize, 2);
    let bad_at = a.leg_offset(MIB);
    // Dead sectors: reads and their rewrite fail.
    a.faulty.fail_reads(BAD_LEG, bad_at..bad_at + 4096);
    a.faulty.fail_writes(BAD_LEG, bad_at..bad_at + 4096);
    for copy in read_each_block_from_each_leg(&m, MIB - 8192, 16384) {
        assert!(copy == data[(MIB - 8192) as usize..(MIB + 8192) as usize]);
    }
    assert!(a.faulty.counters(BAD_LEG).failed_writes >= 1);
    assert_eq!(m.md("dev-leg1.img/state"), "faulty", "{}", m.log());
    assert_eq!(m.md("degraded"), "1");
    assert_eq!(m.md("dev-leg0.img/state"), "in_sync");
    m.stop();
}

/// A large O_DIRECT write goes to the legs in pieces (engine's
/// WRITE_PIECE, 128 KiB): when one piece fails on one leg only, that leg is
/// failed out and the write still succeeds, whole, on the other.
#[test]
fn a_large_write_failing_in_one_piece_on_one_leg_fails_that_leg_and_lands_whole() {
    if !needs_root("a_large_write_failing_in_one_piece_on_one_leg_fails_that_leg_and_lands_whole") {
        return;
    }
    let a = FaultyArray::new(32 * MIB, &[]);
    let m = a.mount(&[]);
    let at = 4 * MIB;
    // Inside a middle piece of the 1 MiB write.
    let bad_at = a.leg_offset(at + 600 * 1024);
    a.faulty.fail_writes(BAD_LEG, bad_at..bad_at + 4096);
    let mut rng = Rng(0x5eed_0f1a_46e0);
    let mut data = AlignedVec::zeroed(MIB as usize);
    data.as_mut_slice()
        .iter_mut()
        .for_each(|b| *b = rng.next() as u8);
    let f = open_direct(&m.image(), true);
    f.write_all_at(data.as_slice(), at)
        .unwrap_or_else(|e| panic!("the write must succeed on leg0: {e}\n{}", m.log()));
    assert!(
        a.faulty.counters(BAD_LEG).failed_writes >= 1,
        "the bad piece was written"
    );
    assert_eq!(m.md("dev-leg1.img/state"), "faulty", "{}", m.log());
    assert_eq!(m.md("dev-leg0.img/state"), "in_sync");
    assert_eq!(m.md("degraded"), "1");
    let back = read_direct(&m.image(), at, MIB as usize).expect("read back");
    assert!(back == data.as_slice(), "the image has the whole write");
    let mut on_leg0 = vec![0u8; MIB as usize];
    std::fs::File::open(a.legs.path(0))
        .and_then(|l| l.read_exact_at(&mut on_leg0, a.leg_offset(at)))
        .expect("read leg0");
    assert!(on_leg0 == data.as_slice(), "leg0 has the whole write");
    drop(f);
    m.stop();
}

#[test]
fn too_many_read_errors_fail_the_leg() {
    if !needs_root("too_many_read_errors_fail_the_leg") {
        return;
    }
    let a = FaultyArray::new(32 * MIB, &[]);
    let m = a.mount(&[]);
    assert_eq!(m.md("max_read_errors"), "20", "md's default");
    m.write_md("max_read_errors", "2")
        .expect("set max_read_errors");
    assert_eq!(m.md("max_read_errors"), "2");
    let data = m.fill_random(0, 2 * MIB as usize, 3);
    // Three separate bad blocks: three corrections; the third exceeds 2.
    for i in 0..3u64 {
        let at = a.leg_offset(i * 256 * 1024);
        a.bad_range(at, 4096);
    }
    for i in 0..3u64 {
        for copy in read_each_block_from_each_leg(&m, i * 256 * 1024, 4096) {
            assert!(copy == data[(i * 256 * 1024) as usize..(i * 256 * 1024 + 4096) as usize]);
        }
    }
    assert_eq!(m.md("dev-leg1.img/state"), "faulty", "{}", m.log());
    assert!(m.log().contains("max_read_errors"), "{}", m.log());
    m.stop();
}

#[test]
fn the_last_leg_is_never_failed_by_a_read_error() {
    if !needs_root("the_last_leg_is_never_failed_by_a_read_error") {
        return;
    }
    let a = FaultyArray::new(32 * MIB, &[]);
    let m = a.mount(&[]);
    m.fill_random(0, MIB as usize, 4);
    m.write_md("dev-leg0.img/state", "faulty")
        .expect("fail leg0");
    let at = a.leg_offset(64 * 1024);
    a.bad_range(at, 4096);
    let err = read_direct(&m.image(), 64 * 1024, 4096).expect_err("the only copy is unreadable");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(m.md("dev-leg1.img/state"), "in_sync", "{}", m.log());
    a.faulty.heal(BAD_LEG);
    m.stop();
}

#[test]
fn partial_block_writes_and_a_check_correct_read_errors_too() {
    if !needs_root("partial_block_writes_and_a_check_correct_read_errors_too") {
        return;
    }
    let a = FaultyArray::new(32 * MIB, &[]);
    let m = a.mount(&[]);
    let mut data = m.fill_random(0, 2 * MIB as usize, 5);
    // Bad blocks, each given a partial write (O_DIRECT: no page cache
    // read first): the read-modify-writes alternate between the legs, so
    // some read leg1's bad block.
    let blocks = [10u64, 20, 30];
    for b in blocks {
        let at = a.leg_offset(b * 4096);
        a.bad_range(at, 4096);
    }
    let f = open_direct(&m.image(), true);
    let mut patch = AlignedVec::zeroed(4096);
    patch.as_mut_slice()[..7].copy_from_slice(b"partial");
    for b in blocks {
        let off = b * 4096 + 100;
        f.write_all_at(&patch.as_slice()[..7], off)
            .expect("partial write");
        data[off as usize..off as usize + 7].copy_from_slice(b"partial");
    }
    f.sync_all().expect("fsync");
    assert!(a.failed_reads() >= 1);
    assert_eq!(m.md("dev-leg1.img/state"), "in_sync", "{}", m.log());
    // A check reads every leg: a bad range on leg1 is corrected, no mismatch.
    let at = a.leg_offset(MIB + 8192);
    a.bad_range(at, 4096);
    m.write_md("sync_action", "check").expect("check");
    m.wait_sync_idle(Duration::from_secs(120));
    assert_eq!(m.md("mismatch_cnt"), "0");
    assert_eq!(a.bad_bytes_left(), 0, "the check rewrote the bad range");
    assert_eq!(m.md("dev-leg1.img/state"), "in_sync", "{}", m.log());
    let all = read_direct(&m.image(), 0, 2 * MIB as usize).expect("read back");
    assert!(all == data, "the array holds every write");
    drop(f);
    m.stop();
}

/// Two plain leg files and a bitmap file on a loop-backed ext4 (the bitmap
/// is written raw to the block device under it: a loop device of the
/// test's, never the host's disk).
struct BitmapArray {
    dir: tempfile::TempDir,
    legs: Legs,
    bitmap: PathBuf,
    _bitmap_fs: common::loopdev::ScratchFs,
}

impl BitmapArray {
    fn new(leg_size: u64) -> BitmapArray {
        let dir = tempdir("mdfuse-md-errors-");
        let fs = common::loopdev::ScratchFs::ext4(4096).expect("ext4 for the bitmap");
        let legs = Legs::new(dir.path(), 2, leg_size);
        let bitmap = fs.path("md.bitmap");
        let bm = bitmap.display().to_string();
        h::create(&legs, &["--bitmap", &bm, "--bitmap-chunk", "64K"]);
        BitmapArray {
            dir,
            legs,
            bitmap,
            _bitmap_fs: fs,
        }
    }

    fn mount(&self, extra: &[&str]) -> MountedArray {
        let bm = self.bitmap.display().to_string();
        let mut args = vec!["--bitmap", bm.as_str(), "--delay", "0.5"];
        args.extend_from_slice(extra);
        MountedArray::mount(&self.legs, &self.dir.path().join("mnt"), &args)
    }

    /// Waits until the bitmap file on disk has no dirty chunk.
    fn wait_bitmap_clean(&self) {
        wait_for("the bitmap to be clean", Duration::from_secs(20), || {
            let o = h::mdfuse_with(&["examine-bitmap"], &[&self.bitmap]);
            h::stdout(&o).contains(", 0 dirty")
        });
    }

    fn leg(&self, i: usize) -> String {
        self.legs.path(i).display().to_string()
    }
}

#[test]
fn a_re_add_copies_what_was_written_while_degraded_and_no_more() {
    if !needs_root("a_re_add_copies_what_was_written_while_degraded_and_no_more") {
        return;
    }
    let a = BitmapArray::new(64 * MIB);
    let m = a.mount(&[]);
    m.fill_random(0, 8 * MIB as usize, 10);
    a.wait_bitmap_clean();
    m.fail_and_remove("leg1.img");
    // 3 MiB written while degraded, 64 KiB-chunk aligned.
    m.fill_random(16 * MIB, 3 * MIB as usize, 11);
    m.write_md("new_dev", &format!("re-add {}", a.leg(1)))
        .expect("re-add");
    m.wait_sync_idle(Duration::from_secs(120));
    assert_eq!(m.md("dev-leg1.img/state"), "in_sync", "{}", m.log());
    assert_eq!(m.md("last_sync_action"), "recover");
    let copied: u64 = m.md("sync_copied").parse().expect("sync_copied");
    assert_eq!(
        copied,
        3 * MIB,
        "a bitmap-guided recovery copies the dirty chunks"
    );
    assert!(m.log().contains("sync_copied"), "{}", m.log());
    let detail = h::mdfuse_with(&["detail"], &[m.mountpoint()]);
    h::assert_ok("mdfuse detail", &detail);
    assert!(
        h::stdout(&detail).contains(&format!("Sync Copied : {} bytes (recover)", 3 * MIB)),
        "{}",
        h::stdout(&detail)
    );
    m.stop();
    a.legs.assert_identical(32 * MIB);
}

#[test]
fn writes_racing_a_re_add_all_reach_the_returning_leg() {
    if !needs_root("writes_racing_a_re_add_all_reach_the_returning_leg") {
        return;
    }
    let a = BitmapArray::new(64 * MIB);
    let m = a.mount(&[]);
    m.fill_random(0, MIB as usize, 20);
    m.fail_and_remove("leg1.img");
    // Writers go on, all over the array, while the leg comes back.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let img = m.image();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let f = open_direct(&img, true);
                let mut rng = Rng(100 + t);
                let mut buf = AlignedVec::zeroed(65536);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    rng.fill(buf.as_mut_slice());
                    let off = (rng.next() % (32 * MIB / 65536)) * 65536;
                    f.write_all_at(buf.as_slice(), off).expect("write");
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    m.write_md("new_dev", &format!("re-add {}", a.leg(1)))
        .expect("re-add");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let writes: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    assert!(writes > 10, "the writers ran ({writes} writes)");
    m.wait_sync_idle(Duration::from_secs(120));
    assert_eq!(m.md("dev-leg1.img/state"), "in_sync", "{}", m.log());
    m.stop();
    a.legs.assert_identical(32 * MIB);
}

#[test]
fn a_refused_re_add_through_dev_state_leaves_the_leg_where_it_was() {
    if !needs_root("a_refused_re_add_through_dev_state_leaves_the_leg_where_it_was") {
        return;
    }
    let dir = tempdir("mdfuse-md-errors-");
    let legs = Legs::new(dir.path(), 3, 64 * MIB);
    h::create(&legs, &[]);
    let m = MountedArray::mount(&legs, &dir.path().join("mnt"), &[]);
    m.fill_random(0, MIB as usize, 30);
    m.write_md("dev-leg2.img/state", "faulty")
        .expect("fail leg2");
    // A slow check keeps a sync running.
    m.write_md("sync_speed_max", "1000").expect("slow");
    m.write_md("sync_action", "check").expect("check");
    assert_eq!(m.md("sync_action"), "check");
    let err = m
        .write_md("dev-leg2.img/state", "re-add")
        .expect_err("refused while a sync runs");
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
    assert_eq!(
        m.md("dev-leg2.img/state"),
        "faulty",
        "the refused re-add removed nothing"
    );
    m.write_md("sync_action", "idle").expect("idle");
    m.write_md("sync_speed_max", "system").expect("fast");
    m.write_md("dev-leg2.img/state", "re-add")
        .expect("re-add once idle");
    m.wait_sync_idle(Duration::from_secs(120));
    assert_eq!(m.md("dev-leg2.img/state"), "in_sync", "{}", m.log());
    m.stop();
}

/// A little-endian u64 of a leg's v1.2 superblock (4 KiB into the leg).
fn sb_u64(leg: &std::path::Path, field_offset: u64) -> u64 {
    let b = h::data_region(leg, 4096 + field_offset, 8);
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

/// The superblock's resync_offset (sectors; u64::MAX when clean).
fn resync_offset(leg: &std::path::Path) -> u64 {
    sb_u64(leg, 208)
}

fn examine(leg: &std::path::Path, key: &str) -> Option<String> {
    h::examine_field(&h::mdadm_examine(leg), key)
}

/// Sectors done of the running sync, from md/sync_completed ("none" = 0).
fn sync_done(m: &MountedArray) -> u64 {
    m.sync_completed().map_or(0, |(done, _)| done)
}

/// A no-bitmap array of `leg_size` legs, written to and then killed: the
/// next mount owes a whole-array resync.
fn unclean_array(dir: &std::path::Path, leg_size: u64) -> Legs {
    let legs = Legs::new(dir, 2, leg_size);
    h::create(&legs, &[]);
    let m = MountedArray::mount(&legs, &dir.join("mnt"), &[]);
    m.write_md("safe_mode_delay", "60").expect("no safe mode");
    m.fill_random(0, MIB as usize, 40);
    m.kill9();
    assert_eq!(examine(legs.path(0), "State").as_deref(), Some("active"));
    legs
}

#[test]
fn sync_action_idle_restarts_an_owed_resync_and_frozen_holds_it() {
    if !needs_root("sync_action_idle_restarts_an_owed_resync_and_frozen_holds_it") {
        return;
    }
    let dir = tempdir("mdfuse-md-errors-");
    let legs = unclean_array(dir.path(), 512 * MIB);
    let m = MountedArray::mount(&legs, &dir.path().join("mnt"), &[]);
    m.write_md("sync_speed_max", "5000")
        .expect("slow the resync");
    assert_eq!(m.md("sync_action"), "resync", "{}", m.log());
    // Refused while it runs, as md's action_store.
    let busy = m
        .write_md("sync_action", "check")
        .expect_err("check while resyncing");
    assert_eq!(busy.raw_os_error(), Some(libc::EBUSY));
    // frozen: stopped and held.
    m.write_md("sync_action", "frozen").expect("frozen");
    assert_eq!(m.md("sync_action"), "frozen");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        m.md("sync_action"),
        "frozen",
        "frozen holds the owed resync"
    );
    assert_eq!(m.md("sync_completed"), "none");
    // idle: the owed resync starts again (md_check_recovery).
    m.write_md("sync_action", "idle").expect("idle");
    wait_for("the resync to restart", Duration::from_secs(5), || {
        m.md("sync_action") == "resync"
    });
    // idle while it runs stops it; it is owed, so it comes back.
    wait_for("the resync to go on", Duration::from_secs(5), || {
        sync_done(&m) > 0
    });
    let before = sync_done(&m);
    m.write_md("sync_action", "idle").expect("idle");
    wait_for("the resync to restart", Duration::from_secs(5), || {
        m.md("sync_action") == "resync"
    });
    assert!(
        sync_done(&m) >= before,
        "it resumed where it was, not from the start"
    );
    // resync/recover writes are accepted (md's words); nothing else runs.
    m.write_md("sync_action", "frozen").expect("frozen");
    m.write_md("sync_action", "resync")
        .expect("resync unfreezes");
    wait_for("the resync to restart", Duration::from_secs(5), || {
        m.md("sync_action") == "resync"
    });
    let bad = m
        .write_md("sync_action", "scrub")
        .expect_err("not md's word");
    assert_eq!(bad.raw_os_error(), Some(libc::EINVAL));
    m.stop();
    let offset = resync_offset(legs.path(0));
    assert!(
        offset > 0 && offset < u64::MAX,
        "a stop during a resync records where it resumes: {offset}"
    );
}

#[test]
fn a_resync_interrupted_by_a_crash_resumes_near_its_checkpoint() {
    if !needs_root("a_resync_interrupted_by_a_crash_resumes_near_its_checkpoint") {
        return;
    }
    let dir = tempdir("mdfuse-md-errors-");
    let legs = unclean_array(dir.path(), 256 * MIB);
    let m = MountedArray::mount(&legs, &dir.path().join("mnt"), &[]);
    m.write_md("sync_speed_max", "40000")
        .expect("slow the resync");
    let (_, total) = m.sync_completed().expect("a resync runs");
    // Past three of md's 1/16 checkpoints, then a crash.
    wait_for("the resync to pass 3/16", Duration::from_secs(60), || {
        sync_done(&m) > total * 3 / 16
    });
    m.kill9();
    let offset = resync_offset(legs.path(0));
    assert!(
        offset >= total * 2 / 16,
        "checkpoint {offset} of {total} sectors"
    );
    let m = MountedArray::mount(&legs, &dir.path().join("mnt"), &[]);
    let resumed = m.log();
    let want = format!("resyncing {} bytes", (total - offset) * 512);
    assert!(resumed.contains(&want), "want {want:?} in:\n{resumed}");
    m.write_md("sync_speed_max", "system").expect("fast");
    m.wait_sync_idle(Duration::from_secs(120));
    m.stop();
    assert_eq!(examine(legs.path(0), "State").as_deref(), Some("clean"));
    legs.assert_identical(8 * MIB);
}

#[test]
fn safe_mode_records_an_idle_array_clean_so_a_crash_needs_no_resync() {
    if !needs_root("safe_mode_records_an_idle_array_clean_so_a_crash_needs_no_resync") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    h::create(&legs, &[]);
    let mnt = legs.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    assert_eq!(m.md("safe_mode_delay"), "0.200", "md's default");
    m.write_md("safe_mode_delay", "3")
        .expect("set safe_mode_delay");
    assert_eq!(m.md("safe_mode_delay"), "3.000");
    let data = m.fill_random(0, MIB as usize, 50);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(m.md("array_state"), "active", "3 s have not passed");
    assert_eq!(examine(legs.path(0), "State").as_deref(), Some("active"));
    m.write_md("safe_mode_delay", "0.2")
        .expect("md's default again");
    wait_for("safe mode", Duration::from_secs(10), || {
        m.md("array_state") == "clean"
    });
    let events: u64 = examine(legs.path(0), "Events")
        .and_then(|e| e.parse().ok())
        .expect("events");
    for leg in &legs.paths {
        assert_eq!(
            examine(leg, "State").as_deref(),
            Some("clean"),
            "{}",
            leg.display()
        );
    }
    // The next write marks it active again (one superblock update).
    let f = open_image(&m);
    f.write_all_at(b"again", 3 * MIB).expect("write");
    assert_eq!(examine(legs.path(0), "State").as_deref(), Some("active"));
    assert_eq!(
        examine(legs.path(0), "Events").and_then(|e| e.parse::<u64>().ok()),
        Some(events + 1)
    );
    drop(f);
    wait_for("safe mode again", Duration::from_secs(10), || {
        m.md("array_state") == "clean"
    });
    m.kill9();
    assert_eq!(examine(legs.path(0), "State").as_deref(), Some("clean"));
    let m = MountedArray::mount(&legs, &mnt, &[]);
    assert!(!m.log().contains("not stopped cleanly"), "{}", m.log());
    assert_eq!(m.md("sync_action"), "idle");
    assert!(read_direct(&m.image(), 0, MIB as usize).expect("read") == data);
    m.stop();
}

#[test]
fn legs_with_the_same_file_name_are_refused_and_a_tiny_leg_is_too_small() {
    if !needs_root("legs_with_the_same_file_name_are_refused_and_a_tiny_leg_is_too_small") {
        return;
    }
    let dir = tempdir("mdfuse-md-errors-");
    for sub in ["a", "b"] {
        std::fs::create_dir(dir.path().join(sub)).expect("dir");
    }
    let same = Legs::from_paths(vec![
        dir.path().join("a/leg.img"),
        dir.path().join("b/leg.img"),
    ]);
    for p in &same.paths {
        common::loopdev::sparse_file(p, 32 * MIB).expect("leg");
    }
    let err = h::assert_fails("create with two leg.img", &h::try_create(&same, &[]));
    assert!(err.contains("same file name"), "{err}");
    // A leg named apart (a symlink will do) is fine.
    std::os::unix::fs::symlink(dir.path().join("b/leg.img"), dir.path().join("b/other.img"))
        .expect("symlink");
    let legs = Legs::from_paths(vec![
        dir.path().join("a/leg.img"),
        dir.path().join("b/other.img"),
    ]);
    h::create(&legs, &[]);
    let m = MountedArray::mount(&legs, &dir.path().join("mnt"), &[]);
    m.fail_and_remove("other.img");
    // A new leg named like the remaining one is refused.
    std::fs::create_dir(dir.path().join("c")).expect("dir");
    let clash = dir.path().join("c/leg.img");
    common::loopdev::sparse_file(&clash, 32 * MIB).expect("leg");
    let e = m
        .write_md("new_dev", &clash.display().to_string())
        .expect_err("name clash");
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
    // A leg too small to hold the superblock's data offset: a clear error,
    // nothing written to it.
    let tiny = dir.path().join("tiny.img");
    common::loopdev::sparse_file(&tiny, 512 * 1024).expect("tiny");
    let e = m
        .write_md("new_dev", &tiny.display().to_string())
        .expect_err("too small");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert_eq!(std::fs::metadata(&tiny).expect("tiny").len(), 512 * 1024);
    assert!(m.log().contains("smaller"), "{}", m.log());
    m.stop();
}

#[test]
fn a_spare_is_left_out_of_assembly_and_a_recovering_leg_shows_its_slot() {
    if !needs_root("a_spare_is_left_out_of_assembly_and_a_recovering_leg_shows_its_slot") {
        return;
    }
    let dir = tempdir("mdfuse-md-errors-");
    let all = Legs::new(dir.path(), 3, 128 * MIB);
    let pair = Legs::from_paths(all.paths[..2].to_vec());
    h::create(&pair, &[]);
    let mnt = dir.path().join("mnt");
    let m = MountedArray::mount(&pair, &mnt, &[]);
    m.fail_and_remove("leg1.img");
    m.write_md("sync_speed_max", "2000").expect("slow");
    m.write_md("new_dev", &all.path(2).display().to_string())
        .expect("add leg2");
    assert_eq!(m.md("dev-leg2.img/state"), "spare");
    assert_eq!(
        m.md("dev-leg2.img/slot"),
        "1",
        "md shows a recovering leg's slot"
    );
    // A crash mid-recovery: leg2's own superblock says spare.
    m.kill9();
    let m = MountedArray::mount(
        &Legs::from_paths(vec![all.paths[0].clone(), all.paths[2].clone()]),
        &mnt,
        &[],
    );
    assert!(
        m.log().contains("leg2.img left out: a spare"),
        "{}",
        m.log()
    );
    assert_eq!(m.md("degraded"), "1");
    m.stop();
}

#[test]
fn a_resync_goes_on_past_a_leg_that_fails_under_it() {
    if !needs_root("a_resync_goes_on_past_a_leg_that_fails_under_it") {
        return;
    }
    let tmp = tempdir("mdfuse-md-errors-");
    let dir = tmp.path();
    let size = 32 * MIB;
    for name in ["leg0.img", "leg2.img"] {
        common::loopdev::sparse_file(&dir.join(name), size).expect("leg");
    }
    let faulty = FaultyFs::new(&[("leg1.img", size)]);
    let legs = Legs::from_paths(vec![
        dir.join("leg0.img"),
        faulty.path("leg1.img"),
        dir.join("leg2.img"),
    ]);
    h::create(&legs, &[]);
    let mnt = dir.join("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    m.write_md("safe_mode_delay", "60").expect("no safe mode");
    let data = m.fill_random(0, 4 * MIB as usize, 60);
    m.kill9();
    // The resync after the crash writes leg1, which now fails writes.
    let off = h::data_offset(legs.path(0));
    let dead = off + 8 * MIB..off + 8 * MIB + 4096;
    faulty.fail_reads("leg1.img", dead.clone());
    faulty.fail_writes("leg1.img", dead);
    let m = MountedArray::mount(&legs, &mnt, &[]);
    m.wait_sync_idle(Duration::from_secs(120));
    assert_eq!(m.md("dev-leg1.img/state"), "faulty", "{}", m.log());
    assert_eq!(m.md("last_sync_action"), "resync");
    assert_eq!(
        m.md("sync_copied").parse::<u64>().ok(),
        Some(size - off),
        "the resync went to the end: {}",
        m.log()
    );
    assert!(m.log().contains("resync: done"), "{}", m.log());
    assert!(read_direct(&m.image(), 0, 4 * MIB as usize).expect("read") == data);
    m.stop();
    assert_eq!(examine(legs.path(0), "State").as_deref(), Some("clean"));
    drop(faulty);
}

fn sb_u32(leg: &std::path::Path, field_offset: u64) -> u32 {
    let b = h::data_region(leg, 4096 + field_offset, 4);
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

/// md's MD_FEATURE_RECOVERY_OFFSET in the leg's own superblock.
fn marked_recovering(leg: &std::path::Path) -> bool {
    sb_u32(leg, 8) & 2 != 0
}

#[test]
fn a_re_added_leg_is_marked_recovering_on_its_disk_and_an_interrupted_recovery_resumes() {
    if !needs_root(
        "a_re_added_leg_is_marked_recovering_on_its_disk_and_an_interrupted_recovery_resumes",
    ) {
        return;
    }
    let legs = Legs::temp(128 * MIB);
    h::create(&legs, &[]);
    let mnt = legs.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    m.fill_random(0, 2 * MIB as usize, 70);
    m.fail_and_remove("leg1.img");
    m.fill_random(4 * MIB, MIB as usize, 71);
    wait_for("safe mode", Duration::from_secs(10), || {
        m.md("array_state") == "clean"
    });
    assert!(!marked_recovering(legs.path(1)));
    m.write_md("sync_speed_max", "20000").expect("slow");
    m.write_md("new_dev", &format!("re-add {}", a_path(&legs, 1)))
        .expect("re-add");
    assert!(
        marked_recovering(legs.path(1)),
        "recovering on its own disk before the copy"
    );
    let (_, total) = m.sync_completed().expect("a recovery runs");
    wait_for("the recovery to pass 3/16", Duration::from_secs(60), || {
        sync_done(&m) > total * 3 / 16
    });
    m.kill9();
    let offset = sb_u64(legs.path(1), 152);
    assert!(
        marked_recovering(legs.path(1)) && offset >= total * 2 / 16 && offset < total,
        "recovery_offset {offset} of {total}"
    );
    // Alone, the half-copied leg is never taken for a copy of the array.
    let alone = Legs::from_paths(vec![legs.paths[1].clone()]);
    let o = MountedArray::try_mount(&alone, &mnt, &["--run"]).expect_err("refused");
    assert!(
        h::stderr(&o).contains("half-recovered"),
        "{}",
        h::stderr(&o)
    );
    // With the in-sync leg, it joins as recovering and resumes.
    let m = MountedArray::mount(&legs, &mnt, &[]);
    wait_for("the recovery to resume", Duration::from_secs(10), || {
        m.log().contains("resumes")
    });
    assert_eq!(m.md("degraded"), "1");
    m.wait_sync_idle(Duration::from_secs(120));
    assert_eq!(m.md("dev-leg1.img/state"), "in_sync", "{}", m.log());
    let copied: u64 = m.md("sync_copied").parse().expect("sync_copied");
    assert_eq!(
        copied,
        (total - offset) * 512,
        "resumed at its recovery_offset"
    );
    m.stop();
    assert!(
        !marked_recovering(legs.path(1)),
        "in sync: the mark is gone"
    );
    legs.assert_identical(8 * MIB);
}

fn a_path(legs: &Legs, i: usize) -> String {
    legs.path(i).display().to_string()
}

#[test]
fn diverged_histories_are_refused_unless_one_is_chosen_and_the_other_is_fully_recovered() {
    if !needs_root(
        "diverged_histories_are_refused_unless_one_is_chosen_and_the_other_is_fully_recovered",
    ) {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    h::create(&legs, &[]);
    let mnt = legs.mountpoint("mnt");
    let m = MountedArray::mount(&legs, &mnt, &[]);
    m.fill_random(0, MIB as usize, 80);
    m.stop();
    // Each leg runs alone and is written: two histories.
    let only = |i: usize| Legs::from_paths(vec![legs.paths[i].clone()]);
    let m = MountedArray::mount(&only(0), &mnt, &["--run"]);
    m.fill_random(0, MIB as usize, 81);
    m.stop();
    let m = MountedArray::mount(&only(1), &mnt, &["--run"]);
    let b_data = m.fill_random(0, MIB as usize, 82);
    m.stop();
    // Together: refused, each leg's history named.
    let o = MountedArray::try_mount(&legs, &mnt, &[]).expect_err("diverged");
    let err = h::stderr(&o);
    for leg in &legs.paths {
        assert!(err.contains(&leg.display().to_string()), "{err}");
    }
    assert!(
        err.contains("diverged") && err.contains("events") && err.contains("last updated"),
        "{err}"
    );
    assert!(err.contains("--force-from"), "{err}");
    // --run does not override it.
    MountedArray::try_mount(&legs, &mnt, &["--run"]).expect_err("still diverged");
    // Keep leg1's history: leg0 is left out.
    let keep = a_path(&legs, 1);
    let m = MountedArray::mount(&legs, &mnt, &["--force-from", &keep]);
    assert!(m.log().contains("diverged"), "{}", m.log());
    assert_eq!(m.md("degraded"), "1");
    assert!(read_direct(&m.image(), 0, MIB as usize).expect("read") == b_data);
    // Its re-add is a full recovery, never a bitmap-guided one.
    m.write_md("new_dev", &format!("re-add {}", a_path(&legs, 0)))
        .expect("re-add");
    m.wait_sync_idle(Duration::from_secs(120));
    assert!(
        m.log().contains("full recovery (its history diverged"),
        "{}",
        m.log()
    );
    assert_eq!(m.md("dev-leg0.img/state"), "in_sync", "{}", m.log());
    m.stop();
    legs.assert_identical(2 * MIB);
    assert!(h::data_region(legs.path(0), h::data_offset(legs.path(0)), MIB) == b_data);
}
