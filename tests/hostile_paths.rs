//! Hostile bitmap paths (issue 13): what is given as `--bitmap`, or to
//! `examine-bitmap`, is refused at once when it is not a bitmap file mdfuse
//! can use safely, and a read-only array writes nothing to its bitmap, nor
//! to the device under it. Real mounts, real loop devices and filesystems.

mod common;

use common::bitmap::*;
use common::io::read_direct;
use common::loopdev::{needs_root, run, sparse_file, LoopDevice, MountedFs, ScratchFs};
use common::mdfuse::{
    bin, create, daemons_for, is_mounted, path_str, poll, sha256_bytes, signal, tempdir, text,
    Legs, MountedArray,
};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Runs `mdfuse ARGS`, killing it after `limit` (a hang is then reported as
/// such, not waited out). Returns the output, or None when it hung.
fn mdfuse_within(args: &[&str], limit: Duration) -> Option<Output> {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mdfuse");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return Some(child.wait_with_output().expect("output"));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `mdfuse mount --bitmap BITMAP EXTRA LEGS MNT` must fail within 10 s,
/// naming the file and saying each of `needles`; nothing stays mounted or
/// running (a daemon left behind is killed, and counts as a failure).
fn mount_refused_at_once(legs: &Legs, bitmap: &Path, extra: &[&str], needles: &[&str]) -> String {
    let mnt = legs.mountpoint("mnt");
    let log = legs.dir().join("mnt.log");
    let mut args = vec![
        "mount",
        "--log",
        path_str(&log),
        "--bitmap",
        path_str(bitmap),
    ];
    args.extend_from_slice(extra);
    let leg_strs = legs.strs();
    args.extend(leg_strs.iter().map(String::as_str));
    args.push(path_str(&mnt));
    let out = mdfuse_within(&args, Duration::from_secs(10));
    let left = daemons_for(&mnt);
    for pid in &left {
        signal(*pid, libc::SIGKILL);
    }
    if is_mounted(&mnt) {
        let _ = run("umount", &["-l", path_str(&mnt)]);
    }
    let Some(out) = out else {
        panic!(
            "mount with bitmap {} hung (daemons left: {left:?}); log:\n{}",
            bitmap.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    assert!(left.is_empty(), "a daemon was left running: {left:?}");
    let t = text(&out);
    assert!(
        !out.status.success(),
        "mount with {} succeeded",
        bitmap.display()
    );
    assert!(
        t.contains(path_str(bitmap)),
        "message does not name the file: {t}"
    );
    for n in needles {
        assert!(t.contains(n), "message lacks {n:?}: {t}");
    }
    t
}

/// A FIFO, a socket, a character device and a block device given as the
/// bitmap file are refused at once, by `mount` and by `examine-bitmap`,
/// naming what they are; the legs are unchanged and stay free (no detached
/// child keeps them locked).
#[test]
fn fifo_socket_or_device_as_bitmap_is_refused_at_once() {
    if !needs_root("fifo_socket_or_device_as_bitmap_is_refused_at_once") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    create(&legs, &[]);
    let hashes = legs.sha256s();
    let dir = tempdir("mdfuse-hostile");
    let fifo = dir.path().join("bitmap.fifo");
    run("mkfifo", &[path_str(&fifo)]).unwrap();
    let socket = dir.path().join("bitmap.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let chardev = dir.path().join("bitmap.chr");
    run("mknod", &[path_str(&chardev), "c", "1", "3"]).unwrap(); // /dev/null's numbers
    let backing = dir.path().join("blk.img");
    sparse_file(&backing, 8 * MIB).unwrap();
    let lo = LoopDevice::attach(&backing).unwrap();
    let cases: [(&Path, &str); 4] = [
        (&fifo, "FIFO"),
        (&socket, "socket"),
        (&chardev, "character device"),
        (lo.path(), "block device"),
    ];
    for (path, kind) in cases {
        for extra in [&[][..], &["--bitmap-file-io"][..]] {
            let t = mount_refused_at_once(&legs, path, extra, &[kind, "not a regular file"]);
            eprintln!("{kind} {extra:?}: {t}");
        }
        let out = mdfuse_within(&["examine-bitmap", path_str(path)], Duration::from_secs(10))
            .unwrap_or_else(|| panic!("examine-bitmap of a {kind} hung"));
        let t = text(&out);
        assert!(!out.status.success(), "examine-bitmap of a {kind}: {t}");
        assert!(t.contains(kind) && t.contains(path_str(path)), "{t}");
    }
    assert_eq!(hashes, legs.sha256s(), "a leg was written");
    // Nothing holds the legs: they mount at once.
    let array = MountedArray::mount(&legs, &legs.mountpoint("mnt"), &[]);
    array.stop();
}

/// A bitmap file far longer than the array's size and the header's chunk
/// can need is refused before it is read (today it was read whole: a
/// 1 GiB file took 25 s), naming the file and the size it should have.
#[test]
fn a_huge_bitmap_file_is_refused_up_front() {
    if !needs_root("a_huge_bitmap_file_is_refused_up_front") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    let bitmap = legs.dir().join("md.bitmap");
    create_with_bitmap(&legs, &bitmap, &[]);
    let need = std::fs::metadata(&bitmap).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&bitmap)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let hashes = legs.sha256s();
    for extra in [&[][..], &["--bitmap-file-io"][..]] {
        let start = Instant::now();
        let t = mount_refused_at_once(
            &legs,
            &bitmap,
            extra,
            &["1073741824 bytes", &format!("needs {need} bytes")],
        );
        eprintln!("{extra:?} ({:?}): {t}", start.elapsed());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
    }
    assert_eq!(hashes, legs.sha256s(), "a leg was written");
    // examine-bitmap reads what the header covers, not the whole file.
    let start = Instant::now();
    let (x, dirty) = examine_bitmap(&bitmap);
    assert!(dirty.is_empty(), "{x}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

/// With `--bitmap-file-io` the path is opened once without following a
/// symbolic link: a symlink given as the bitmap file is refused.
#[test]
fn a_symlink_as_bitmap_is_refused_with_file_io_too() {
    if !needs_root("a_symlink_as_bitmap_is_refused_with_file_io_too") {
        return;
    }
    let legs = Legs::temp(32 * MIB);
    let bitmap = legs.dir().join("md.bitmap");
    create_with_bitmap(&legs, &bitmap, &[]);
    let link = legs.dir().join("link.bitmap");
    std::os::unix::fs::symlink(&bitmap, &link).unwrap();
    let before = std::fs::read(&bitmap).unwrap();
    let t = mount_refused_at_once(&legs, &link, &["--bitmap-file-io"], &["symbolic link"]);
    eprintln!("{t}");
    assert_eq!(before, std::fs::read(&bitmap).unwrap());
}

/// Everything a read-only mount could change: the file's bytes (O_DIRECT),
/// attributes, ctime and mtime, and every byte of the block device under
/// its filesystem.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    file: String,
    attrs: String,
    ctime: (i64, i64),
    mtime: (i64, i64),
    device: String,
}

fn fingerprint(bitmap: &Path, device: &Path) -> Fingerprint {
    run("sync", &[]).unwrap();
    let len = std::fs::metadata(bitmap).unwrap().len() as usize;
    let m = std::fs::metadata(bitmap).unwrap();
    let dev_len = std::fs::File::open(device)
        .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
        .unwrap() as usize;
    Fingerprint {
        file: sha256_bytes(&read_direct(bitmap, 0, len).unwrap()),
        attrs: run("lsattr", &[path_str(bitmap)]).unwrap(),
        ctime: (m.ctime(), m.ctime_nsec()),
        mtime: (m.mtime(), m.mtime_nsec()),
        device: sha256_bytes(&read_direct(device, 0, dev_len).unwrap()),
    }
}

/// `--ro --bitmap` writes nothing: no immutable flag, no markers, no pages,
/// raw or with file I/O; the file and its filesystem's block device are
/// byte for byte as they were, and the bitmap is still shown.
#[test]
fn a_read_only_mount_writes_nothing_to_its_bitmap() {
    if !needs_root("a_read_only_mount_writes_nothing_to_its_bitmap") {
        return;
    }
    let dir = tempdir("mdfuse-ro-bitmap");
    let image = dir.path().join("fs.img");
    sparse_file(&image, 64 * MIB).unwrap();
    let lo = LoopDevice::attach(&image).unwrap();
    run(
        "mkfs.ext4",
        &[
            "-F",
            "-q",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            path_str(lo.path()),
        ],
    )
    .unwrap();
    // noatime: reading the file must not be a write of its inode.
    let fs = MountedFs::mount_with(
        path_str(lo.path()),
        &dir.path().join("mnt"),
        None,
        Some("noatime"),
    )
    .unwrap();
    let bitmap: PathBuf = fs.dir().join("md.bitmap");
    let legs = Legs::temp(32 * MIB);
    create_with_bitmap(&legs, &bitmap, &[]);
    // Give it some history: a written and cleanly stopped array.
    let mnt = legs.mountpoint("mnt");
    let array = MountedArray::mount(&legs, &mnt, &["--bitmap", path_str(&bitmap)]);
    array.fill_random(0, 1 << 20, 7);
    array.stop();
    for extra in [&[][..], &["--bitmap-file-io"][..]] {
        let before = fingerprint(&bitmap, lo.path());
        let hashes = legs.sha256s();
        let mut args = vec!["--ro", "--bitmap", path_str(&bitmap)];
        args.extend_from_slice(extra);
        let array = MountedArray::mount(&legs, &mnt, &args);
        assert!(!is_immutable(&bitmap), "--ro made the bitmap immutable");
        let mdstat = array.mdstat();
        assert!(mdstat.contains("bitmap:"), "{mdstat}");
        let _ = read_direct(&array.image(), 0, 1 << 20).unwrap();
        array.stop();
        assert_eq!(
            before,
            fingerprint(&bitmap, lo.path()),
            "--ro {extra:?} changed the bitmap file or its device"
        );
        assert_eq!(hashes, legs.sha256s(), "--ro {extra:?} wrote a leg");
    }
    drop(fs);
}

/// An ext4 made on `dev` (no lazy initialisation) and mounted noatime at
/// `dir`, so that, idle, it writes nothing.
fn quiet_ext4(dev: &Path, dir: &Path) -> MountedFs {
    run(
        "mkfs.ext4",
        &[
            "-F",
            "-q",
            "-b",
            "4096",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            path_str(dev),
        ],
    )
    .unwrap();
    MountedFs::mount_with(path_str(dev), dir, None, Some("noatime")).unwrap()
}

/// A bitmap file on a filesystem on a loop device over a loop device over
/// a leg's data region is inside the array: refused, raw or with file I/O
/// (the check used to follow one loop device only).
#[test]
fn a_bitmap_under_loops_over_a_leg_is_refused_however_deep() {
    if !needs_root("a_bitmap_under_loops_over_a_leg_is_refused_however_deep") {
        return;
    }
    let legs = Legs::temp(64 * MIB);
    let staged = legs.dir().join("staged.bitmap");
    let created = create_with_bitmap(&legs, &staged, &[]);
    let inner0 = LoopDevice::attach_at(&legs.paths[0], created.data_offset_sectors * 512).unwrap();
    let inner1 = LoopDevice::attach(inner0.path()).unwrap();
    let inner2 = LoopDevice::attach(inner1.path()).unwrap();
    let fs = quiet_ext4(inner2.path(), &legs.dir().join("inner"));
    let bitmap = fs.dir().join("md.bitmap");
    std::fs::copy(&staged, &bitmap).unwrap();
    // Each loop writes to the one under it through that one's page cache:
    // a sync settles one layer at a time.
    let settle = || {
        for _ in 0..4 {
            run("sync", &[]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    settle();
    let hashes = legs.sha256s();
    for extra in [&[][..], &["--bitmap-file-io"][..]] {
        let t = mount_refused_at_once(&legs, &bitmap, extra, &["inside the array", "leg0"]);
        eprintln!("{extra:?}: {t}");
    }
    settle();
    assert_eq!(hashes, legs.sha256s(), "a leg was written");
    drop(fs);
    drop(inner2);
    drop(inner1);
    drop(inner0);
}

/// A device-mapper device, removed on drop.
struct DmDevice {
    name: String,
}

impl DmDevice {
    fn linear(name: &str, over: &Path, sectors: u64) -> DmDevice {
        let table = format!("0 {sectors} linear {} 0", path_str(over));
        run("dmsetup", &["create", name, "--table", &table]).unwrap();
        run("udevadm", &["settle"]).ok();
        DmDevice {
            name: name.to_string(),
        }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/mapper/{}", self.name))
    }
}

impl Drop for DmDevice {
    fn drop(&mut self) {
        for _ in 0..20 {
            if run("dmsetup", &["remove", &self.name]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: cannot remove dm device {}", self.name);
    }
}

/// A bitmap file on a device-mapper device: mdfuse cannot follow its table
/// (it can point anywhere, and change), so it is refused, naming the
/// device and the flag that accepts it; with `--bitmap-trust-device` it
/// mounts (raw and with file I/O).
#[test]
fn a_bitmap_on_device_mapper_needs_the_trust_flag() {
    if !needs_root("a_bitmap_on_device_mapper_needs_the_trust_flag") {
        return;
    }
    let misc = std::fs::read_to_string("/proc/misc").unwrap_or_default();
    if !misc.lines().any(|l| l.ends_with(" device-mapper")) {
        common::loopdev::kernel_lacks(
            "a_bitmap_on_device_mapper_needs_the_trust_flag",
            "device-mapper (not in /proc/misc)",
        );
        return;
    }
    if let Err(e) = run("dmsetup", &["version"]) {
        common::loopdev::skipped(
            "a_bitmap_on_device_mapper_needs_the_trust_flag",
            &format!("dmsetup does not run ({e}); install the dmsetup package"),
        );
        return;
    }
    let dir = tempdir("mdfuse-dm");
    let image = dir.path().join("dm.img");
    sparse_file(&image, 64 * MIB).unwrap();
    let lo = LoopDevice::attach(&image).unwrap();
    let dm = DmDevice::linear(
        &format!("mdfuse-test-{}", std::process::id()),
        lo.path(),
        64 * MIB / 512,
    );
    let fs = quiet_ext4(&dm.path(), &dir.path().join("mnt"));
    let legs = Legs::temp(32 * MIB);
    let bitmap = fs.dir().join("md.bitmap");
    create_with_bitmap(&legs, &bitmap, &[]);
    for extra in [&[][..], &["--bitmap-file-io"][..]] {
        let t = mount_refused_at_once(
            &legs,
            &bitmap,
            extra,
            &["device-mapper", "--bitmap-trust-device"],
        );
        eprintln!("{extra:?}: {t}");
        let mut args = vec!["--bitmap", path_str(&bitmap), "--bitmap-trust-device"];
        args.extend_from_slice(extra);
        let array = MountedArray::mount(&legs, &legs.mountpoint("mnt"), &args);
        let mdstat = array.mdstat();
        assert!(mdstat.contains("bitmap:"), "{mdstat}");
        array.fill_random(0, 1 << 20, 3);
        array.stop();
    }
    drop(fs);
    drop(dm);
    drop(lo);
}

/// A loop device whose backing file was deleted cannot be followed by name
/// (nor can a device-mapper or md device, which this machine may lack): a
/// bitmap file on it is refused, naming the loop device and the flag that
/// accepts it; with `--bitmap-trust-device` it mounts.
#[test]
fn a_bitmap_on_an_unfollowable_stack_needs_the_trust_flag() {
    if !needs_root("a_bitmap_on_an_unfollowable_stack_needs_the_trust_flag") {
        return;
    }
    let dir = tempdir("mdfuse-unfollowable");
    let image = dir.path().join("fs.img");
    sparse_file(&image, 64 * MIB).unwrap();
    let lo = LoopDevice::attach(&image).unwrap();
    let fs = quiet_ext4(lo.path(), &dir.path().join("mnt"));
    std::fs::remove_file(&image).unwrap();
    let legs = Legs::temp(32 * MIB);
    let bitmap = fs.dir().join("md.bitmap");
    create_with_bitmap(&legs, &bitmap, &[]);
    for extra in [&[][..], &["--bitmap-file-io"][..]] {
        let t = mount_refused_at_once(
            &legs,
            &bitmap,
            extra,
            &[path_str(lo.path()), "deleted", "--bitmap-trust-device"],
        );
        eprintln!("{extra:?}: {t}");
        let mut args = vec!["--bitmap", path_str(&bitmap), "--bitmap-trust-device"];
        args.extend_from_slice(extra);
        let array = MountedArray::mount(&legs, &legs.mountpoint("mnt"), &args);
        assert!(
            array.log().contains("--bitmap-trust-device"),
            "{}",
            array.log()
        );
        array.fill_random(0, 1 << 20, 3);
        array.stop();
    }
    drop(fs);
    drop(lo);
}

/// What is done to the bitmap file under a running array.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    /// `chattr -i`: its blocks may move from now on.
    ClearImmutable,
    /// `chattr -i` and an online defrag (`e4defrag`), as an operator would.
    Defrag,
    /// `cp --reflink=always` from it (XFS): its blocks are shared with a
    /// copy, which raw writes would change too. The file stays immutable.
    ReflinkFrom,
}

/// Bytes of the device ranges the file mapped to when mounted.
fn device_ranges(device: &Path, exts: &[FileExtent]) -> Vec<Vec<u8>> {
    exts.iter()
        .map(|e| {
            let start = e.physical / 4096 * 4096;
            let end = (e.physical + e.len).div_ceil(4096) * 4096;
            read_direct(device, start, (end - start) as usize).expect("device read")
        })
        .collect()
}

/// While an array runs with a raw bitmap, `hostile` is done to its file:
/// within seconds the bitmap is kicked (the log says so, mdstat shows it),
/// no raw write reaches the device ranges it mapped to from then on (nor
/// a reflinked copy), the file is marked stale through its filesystem
/// (examine-bitmap: "Out of date", so the next assembly resyncs
/// everything), and the array goes on serving reads and writes.
fn a_changed_map_kicks_the_bitmap(fs: ScratchFs, hostile: Hostile) {
    let legs = Legs::temp(64 * MIB);
    let bitmap = fs.path("md.bitmap");
    create_with_bitmap(&legs, &bitmap, &["--bitmap-chunk", "64K"]);
    let mnt = legs.mountpoint("mnt");
    let array = MountedArray::mount(
        &legs,
        &mnt,
        &["--bitmap", path_str(&bitmap), "--delay", "0.5"],
    );
    array.fill_random(0, 256 << 10, 1);
    let exts = extents(&bitmap);
    let copy = fs.path("copy.bitmap");
    match hostile {
        Hostile::ClearImmutable => {
            run("chattr", &["-i", path_str(&bitmap)]).unwrap();
        }
        Hostile::Defrag => {
            run("chattr", &["-i", path_str(&bitmap)]).unwrap();
            // e4defrag may find nothing to improve; it runs all the same.
            let _ = run("e4defrag", &[path_str(&bitmap)]);
        }
        Hostile::ReflinkFrom => {
            run(
                "cp",
                &["--reflink=always", path_str(&bitmap), path_str(&copy)],
            )
            .unwrap();
            assert!(is_immutable(&bitmap));
        }
    }
    let kicked = poll(Duration::from_secs(10), || {
        array.log().contains("kicking failed bitmap file") && array.mdstat().contains("kicked")
    });
    assert!(
        kicked,
        "{hostile:?}: the bitmap was not kicked; mdstat:\n{}\nlog:\n{}",
        array.mdstat(),
        array.log()
    );
    let log = array.log();
    eprintln!(
        "{hostile:?}: {}",
        log.lines()
            .filter(|l| l.contains("bitmap"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // From now on nothing is written raw: the old ranges (and the copy) stay.
    let old = device_ranges(fs.device(), &exts);
    let copy_bytes = matches!(hostile, Hostile::ReflinkFrom).then(|| std::fs::read(&copy).unwrap());
    let mut written = Vec::new();
    for i in 0..16u64 {
        written.push((
            i * 3 * MIB,
            array.fill_random(i * 3 * MIB, 64 << 10, 100 + i),
        ));
    }
    std::thread::sleep(Duration::from_millis(1500)); // the clearing daemon's turn
    for (off, data) in &written {
        assert_eq!(
            &read_direct(&array.image(), *off, data.len()).unwrap(),
            data
        );
    }
    assert!(
        old == device_ranges(fs.device(), &exts),
        "{hostile:?}: a raw write reached the old map after the kick"
    );
    if let Some(bytes) = copy_bytes {
        assert_eq!(
            bytes,
            std::fs::read(&copy).unwrap(),
            "the reflinked copy changed"
        );
    }
    let (x, _) = examine_bitmap(&bitmap);
    assert!(
        x.contains("Out of date"),
        "{hostile:?}: not marked stale:\n{x}"
    );
    array.stop();
    let (x, _) = examine_bitmap(&bitmap);
    assert!(
        x.contains("Out of date"),
        "{hostile:?}: stale mark lost at the stop:\n{x}"
    );
    assert!(
        !is_immutable(&bitmap),
        "the immutable flag outlived the stop"
    );
}

#[test]
fn clearing_the_immutable_flag_kicks_the_bitmap() {
    if !needs_root("clearing_the_immutable_flag_kicks_the_bitmap") {
        return;
    }
    a_changed_map_kicks_the_bitmap(ScratchFs::ext4(4096).unwrap(), Hostile::ClearImmutable);
}

#[test]
fn a_defrag_kicks_the_bitmap() {
    if !needs_root("a_defrag_kicks_the_bitmap") {
        return;
    }
    a_changed_map_kicks_the_bitmap(ScratchFs::ext4(1024).unwrap(), Hostile::Defrag);
}

#[test]
fn a_reflink_from_the_bitmap_on_xfs_kicks_it() {
    if !needs_root("a_reflink_from_the_bitmap_on_xfs_kicks_it") {
        return;
    }
    a_changed_map_kicks_the_bitmap(
        ScratchFs::xfs(&["-m", "reflink=1"]).unwrap(),
        Hostile::ReflinkFrom,
    );
}

/// The recheck behind the kick, on a protected file whose blocks are made
/// to move while it is immutable again (as no filesystem does by itself):
/// it reports the cleared flag, then the move; unchanged, nothing.
#[test]
fn the_recheck_sees_a_cleared_flag_and_blocks_that_moved() {
    use mdfuse::blockmap::{protect, recheck, resolve};
    if !needs_root("the_recheck_sees_a_cleared_flag_and_blocks_that_moved") {
        return;
    }
    let fs = ScratchFs::ext4(4096).unwrap();
    let file = fs.path("f");
    std::fs::write(&file, vec![0x5a; 16384]).unwrap();
    run("sync", &[]).unwrap();
    let map = resolve(&file).unwrap();
    let guard = protect(&file).unwrap();
    assert_eq!(recheck(&map, guard.file()), Ok(()));
    run("chattr", &["-i", path_str(&file)]).unwrap();
    let err = recheck(&map, guard.file()).unwrap_err();
    assert!(err.contains("immutable flag was cleared"), "{err}");
    // Free its blocks, let another file take them, write it again elsewhere.
    run(
        "fallocate",
        &["-p", "-o", "0", "-l", "16384", path_str(&file)],
    )
    .unwrap();
    run("sync", &[]).unwrap();
    std::fs::write(fs.path("taker"), vec![0xa5; 65536]).unwrap();
    run("sync", &[]).unwrap();
    common::io::write_at(&file, 0, &[0x5a; 16384]);
    run("sync", &[]).unwrap();
    run("chattr", &["+i", path_str(&file)]).unwrap();
    let err = recheck(&map, guard.file()).unwrap_err();
    assert!(err.contains("blocks moved"), "{err}");
    run("chattr", &["-i", path_str(&file)]).unwrap();
    drop(guard);
}
