//! The block map on real filesystems on loop devices: resolve, verify, raw
//! page writes seen through the device and the filesystem, and refusals.

mod common;

use common::bitmap::{is_immutable, mtime};
use common::io::read_direct;
use common::loopdev::{needs_root, run, LoopDevice, MountedFs, ScratchFs};
use mdfuse::blockmap::{
    protect, read_file_direct, resolve, resolve_with_fibmap, verify, BlockMap, BlockMapError,
    Extent, RawWriter,
};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7) as u8 ^ seed)
        .collect()
}

fn write_synced(path: &Path, content: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(content).unwrap();
    f.sync_all().unwrap();
}

/// `md0.bitmap` on `fs`, holding `pattern(seed, len)` (synced); returns
/// its path and content.
fn synced_bitmap_file(fs: &ScratchFs, seed: u8, len: usize) -> (PathBuf, Vec<u8>) {
    let path = fs.path("md0.bitmap");
    let content = pattern(seed, len);
    write_synced(&path, &content);
    (path, content)
}

/// What the device holds for the whole file, assembled extent by extent,
/// the tail of the last block included.
fn file_through_device(map: &BlockMap) -> Vec<u8> {
    let mut out = Vec::new();
    for e in map.extents() {
        out.extend(read_direct(map.device(), e.device_offset, e.len as usize).unwrap());
    }
    out
}

/// Asserts the error's message has every one of `words` (the file, the
/// cause, the way out).
fn assert_says(err: &BlockMapError, words: &[&str]) {
    let msg = err.to_string();
    for w in words {
        assert!(msg.contains(w), "{w:?} not in: {msg}");
    }
}

fn describe(map: &BlockMap) -> String {
    let bs = map.fs_block_size() as u64;
    map.extents()
        .iter()
        .map(|e| {
            format!(
                "file blocks {}..{} -> device block {}",
                e.file_offset / bs,
                (e.file_offset + e.len) / bs,
                e.device_offset / bs
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// protect → resolve → verify → raw page writes → checks through the device
/// and the filesystem → release. `path` must hold `old` already, synced.
fn raw_write_roundtrip(path: &Path, old: &[u8]) -> BlockMap {
    let len = old.len();
    let before = mtime(path);
    let guard = protect(path).unwrap();
    assert!(guard.set_immutable() && is_immutable(path));
    // Immutable: the filesystem refuses writers now.
    let err = File::options().write(true).open(path).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));

    let map = resolve(path).unwrap();
    verify(&map).unwrap();
    assert_eq!(map.file_len(), len as u64);
    assert_eq!(map.device_rdev(), std::fs::metadata(path).unwrap().dev());
    let writer = RawWriter::open(map.clone()).unwrap();

    // Populate the page cache with the old content: release must drop it.
    assert_eq!(std::fs::read(path).unwrap(), old);

    let new = pattern(0x5A, len);
    let completions: Vec<_> = (0..len)
        .step_by(4096)
        .map(|off| writer.submit(off as u64, &new[off..(off + 4096).min(len)]))
        .collect();
    for c in completions {
        let failures = c.wait();
        assert!(failures.is_empty(), "{failures:?}");
    }
    // A full 4 KiB page past EOF bytes: only the file's blocks are written, tail zeroed.
    let last_page = (len - 1) / 4096 * 4096;
    let mut padded = new[last_page..].to_vec();
    padded.resize(4096, 0xFF);
    writer.submit_and_wait(last_page as u64, &padded).unwrap();

    let on_device = file_through_device(&map);
    assert_eq!(on_device.len() as u64, map.mapped_len());
    assert_eq!(
        &on_device[..len],
        &new[..],
        "device does not show the pattern"
    );
    assert!(
        on_device[len..].iter().all(|&b| b == 0),
        "bytes past EOF not zero"
    );
    assert_eq!(writer.read_direct(0, len as u64).unwrap(), new);
    assert_eq!(
        writer
            .read_direct(1000, 5000.min(len as u64 - 1000))
            .unwrap(),
        new[1000..(6000).min(len)]
    );
    assert_eq!(read_file_direct(path).unwrap(), new, "O_DIRECT file read");

    drop(writer);
    guard.release().unwrap();
    assert!(!is_immutable(path), "immutable flag left set");
    assert_eq!(std::fs::read(path).unwrap(), new, "page cache not dropped");
    assert_eq!(mtime(path), before, "mtime changed");
    // The map still holds and verifies against the new content.
    verify(&resolve(path).unwrap()).unwrap();
    map
}

#[test]
fn ext4_4k_blocks_roundtrip() {
    if !needs_root("ext4_4k_blocks_roundtrip") {
        return;
    }
    let fs = ScratchFs::ext4(4096).unwrap();
    let (path, old) = synced_bitmap_file(&fs, 1, 3 * 4096 + 1000);
    let map = raw_write_roundtrip(&path, &old);
    eprintln!("ext4 4k: {}", describe(&map));
    assert_eq!(map.fs_block_size(), 4096);
    assert_eq!(map.device(), fs.device());

    // FIBMAP agrees with FIEMAP.
    assert_eq!(resolve_with_fibmap(&path).unwrap(), map);

    // The chain under the file: our loop device, backed by our image.
    let chain = map.backing_chain();
    assert_eq!(chain.len(), 1, "{chain:?}");
    let image = std::fs::metadata(fs.image()).unwrap();
    assert_eq!(chain[0].loop_device, fs.device());
    assert_eq!(chain[0].path, fs.image());
    assert_eq!(
        (chain[0].st_dev, chain[0].st_ino),
        (image.dev(), image.ino())
    );
    assert_eq!(chain[0].offset, 0);
}

#[test]
fn ext4_1k_blocks_fragmented_roundtrip() {
    if !needs_root("ext4_1k_blocks_fragmented_roundtrip") {
        return;
    }
    let fs = ScratchFs::ext4(1024).unwrap();
    let path = fs.path("md0.bitmap");
    let old = pattern(2, 5 * 4096 + 300);
    // Grow the bitmap in pieces of 1, 2, 3 KiB interleaved with another
    // file's 1 KiB pieces, syncing each, so their blocks alternate.
    let open_sync = |p: &Path| {
        File::options()
            .create(true)
            .append(true)
            .custom_flags(libc::O_SYNC)
            .open(p)
            .unwrap()
    };
    let mut bitmap = open_sync(&path);
    let mut other = open_sync(&fs.path("other"));
    let mut at = 0usize;
    for piece in [1024usize, 2048, 3072].iter().cycle() {
        if at >= old.len() {
            break;
        }
        let end = (at + piece).min(old.len());
        bitmap.write_all(&old[at..end]).unwrap();
        bitmap.sync_all().unwrap();
        other.write_all(&[0xCC; 1024]).unwrap();
        other.sync_all().unwrap();
        at = end;
    }
    drop((bitmap, other));

    let map = resolve(&path).unwrap();
    eprintln!("ext4 1k layout: {}", describe(&map));
    assert_eq!(map.fs_block_size(), 1024);
    assert!(
        map.extents().len() >= 3,
        "not fragmented: {}",
        describe(&map)
    );
    let pages_runs: Vec<usize> = (0..map.mapped_len())
        .step_by(4096)
        .map(|off| {
            let len = 4096.min(map.mapped_len() - off);
            map.device_runs(off, len).unwrap().len()
        })
        .collect();
    eprintln!("ext4 1k device runs per page: {pages_runs:?}");
    assert!(
        pages_runs.iter().any(|&n| n > 1),
        "no page split: {pages_runs:?}"
    );
    // filefrag (FIEMAP via e2fsprogs) sees the same number of extents.
    let frag = run("filefrag", &[path.to_str().unwrap()]).unwrap();
    assert!(
        frag.contains(&format!(": {} extents found", map.extents().len())),
        "filefrag says {frag:?}, we have {}",
        describe(&map)
    );
    assert_eq!(resolve_with_fibmap(&path).unwrap(), map);
    raw_write_roundtrip(&path, &old);
    // The other file was not touched.
    assert!(std::fs::read(fs.path("other"))
        .unwrap()
        .iter()
        .all(|&b| b == 0xCC));
}

#[test]
fn xfs_roundtrip() {
    if !needs_root("xfs_roundtrip") {
        return;
    }
    let fs = ScratchFs::xfs(&[]).unwrap();
    let path = fs.path("md0.bitmap");
    let old = pattern(3, 2 * 4096 + 17);
    write_synced(&path, &old);
    let map = raw_write_roundtrip(&path, &old);
    eprintln!("xfs: {}", describe(&map));
}

#[test]
fn refuses_a_file_with_a_hole() {
    if !needs_root("refuses_a_file_with_a_hole") {
        return;
    }
    let fs = ScratchFs::ext4(4096).unwrap();
    let path = fs.path("sparse");
    let f = File::create(&path).unwrap();
    f.write_all_at(&[1; 4096], 0).unwrap();
    f.write_all_at(&[2; 4096], 3 * 4096).unwrap();
    f.sync_all().unwrap();
    let err = resolve(&path).unwrap_err();
    assert!(
        matches!(
            err,
            BlockMapError::Hole {
                offset: 4096,
                end: 12288,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("sparse") && msg.contains("--sparse=never"),
        "{msg}"
    );
    // FIBMAP sees the hole too.
    assert!(matches!(
        resolve_with_fibmap(&path).unwrap_err(),
        BlockMapError::Hole { offset: 4096, .. }
    ));
    // A file that is all hole.
    let empty_blocks = fs.path("allhole");
    File::create(&empty_blocks).unwrap().set_len(8192).unwrap();
    assert!(matches!(
        resolve(&empty_blocks).unwrap_err(),
        BlockMapError::Hole { offset: 0, .. }
    ));
}

#[test]
fn refuses_unwritten_extents() {
    if !needs_root("refuses_unwritten_extents") {
        return;
    }
    let fs = ScratchFs::ext4(4096).unwrap();
    let path = fs.path("prealloc");
    let f = File::create(&path).unwrap();
    // SAFETY: plain syscall on an owned fd.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 16384) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    f.sync_all().unwrap();
    let err = resolve(&path).unwrap_err();
    assert!(matches!(err, BlockMapError::UnusableExtent { .. }), "{err}");
    assert!(err.to_string().contains("unwritten"), "{err}");
}

#[test]
fn refuses_a_file_on_tmpfs() {
    if !needs_root("refuses_a_file_on_tmpfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = MountedFs::tmpfs(&dir.path().join("tmpfs"), 4).unwrap();
    let path = mnt.dir().join("md0.bitmap");
    write_synced(&path, &[7; 4096]);
    let err = resolve(&path).unwrap_err();
    assert!(
        matches!(&err, BlockMapError::NotOnBlockDevice { fs_type, .. } if fs_type == "tmpfs"),
        "{err}"
    );
    assert_says(&err, &["md0.bitmap", "tmpfs", "--bitmap-file-io"]);
    drop(mnt);
}

/// A block filesystem outside the allowlist (ext2/3/4, xfs) is refused by
/// name, pointing to --bitmap-file-io. erofs stands in for f2fs, nilfs2 and
/// vfat, which this kernel lacks: all map files to device blocks, none is
/// known to keep them in place.
#[test]
fn refuses_a_filesystem_outside_the_allowlist() {
    if !needs_root("refuses_a_filesystem_outside_the_allowlist") {
        return;
    }
    if run("which", &["mkfs.erofs"]).is_err() {
        common::loopdev::skipped(
            "refuses_a_filesystem_outside_the_allowlist",
            "no mkfs.erofs (install erofs-utils)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write_synced(&src.join("md0.bitmap"), &pattern(13, 3 * 4096));
    let image = dir.path().join("erofs.img");
    run(
        "mkfs.erofs",
        &[image.to_str().unwrap(), src.to_str().unwrap()],
    )
    .unwrap();
    let lo = LoopDevice::attach_read_only(&image).unwrap();
    let mnt = match MountedFs::mount_with(
        lo.path().to_str().unwrap(),
        &dir.path().join("mnt"),
        Some("erofs"),
        Some("ro"),
    ) {
        Ok(m) => m,
        Err(e) => {
            common::loopdev::skipped(
                "refuses_a_filesystem_outside_the_allowlist",
                &format!("cannot mount erofs: {e}"),
            );
            return;
        }
    };
    let path = mnt.dir().join("md0.bitmap");
    let err = resolve(&path).unwrap_err();
    assert!(
        matches!(&err, BlockMapError::BlocksMayMove { fs_type, .. } if fs_type == "erofs"),
        "{err}"
    );
    assert_says(&err, &["md0.bitmap", "erofs", "--bitmap-file-io"]);
    drop(mnt);
    drop(lo);
}

#[test]
fn refuses_reflinked_file_on_xfs() {
    if !needs_root("refuses_reflinked_file_on_xfs") {
        return;
    }
    let fs = match ScratchFs::xfs(&["-m", "reflink=1"]) {
        Ok(fs) => fs,
        Err(e) => {
            common::loopdev::skipped(
                "refuses_reflinked_file_on_xfs",
                &format!("mkfs.xfs -m reflink=1 failed: {e}"),
            );
            return;
        }
    };
    let original = fs.path("original");
    write_synced(&original, &pattern(4, 8192));
    assert!(resolve(&original).is_ok());
    let copy = fs.path("copy");
    run(
        "cp",
        &[
            "--reflink=always",
            original.to_str().unwrap(),
            copy.to_str().unwrap(),
        ],
    )
    .unwrap();
    File::open(&copy).unwrap().sync_all().unwrap();
    for p in [&original, &copy] {
        let err = resolve(p).unwrap_err();
        assert!(matches!(err, BlockMapError::UnusableExtent { .. }), "{err}");
        assert!(err.to_string().contains("shared"), "{err}");
    }
}

#[test]
fn a_stale_map_fails_verification() {
    if !needs_root("a_stale_map_fails_verification") {
        return;
    }
    let fs = ScratchFs::ext4(4096).unwrap();
    let (path, _) = synced_bitmap_file(&fs, 5, 8192);
    let map = resolve(&path).unwrap();
    verify(&map).unwrap();
    // Replace the file: its blocks move, the old map points at freed blocks.
    let keep = fs.path("keep-old-blocks-busy");
    write_synced(&keep, &pattern(6, 65536));
    std::fs::remove_file(&path).unwrap();
    write_synced(&path, &pattern(7, 8192));
    let fresh = resolve(&path).unwrap();
    assert_ne!(fresh.extents(), map.extents(), "file did not move");
    let err = verify(&map).unwrap_err();
    assert!(matches!(err, BlockMapError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("refusing raw writes"), "{err}");
    assert!(RawWriter::open(map).is_err());
    verify(&fresh).unwrap();
}

/// Most of a fresh bitmap is zeros, so comparing the file with its mapped
/// sectors proves nothing for zero blocks: a map that sends them into
/// another file's zeroed blocks passes verify(). The markers catch it, and
/// both files are left as they were.
#[test]
fn a_wrong_map_of_zero_blocks_is_caught_by_markers() {
    if !needs_root("a_wrong_map_of_zero_blocks_is_caught_by_markers") {
        return;
    }
    let fs = ScratchFs::ext4(4096).unwrap();
    let path = fs.path("md0.bitmap");
    let mut content = vec![0u8; 4 * 4096 - 100];
    content[..256].copy_from_slice(&pattern(14, 256));
    write_synced(&path, &content);
    let other = fs.path("zeros");
    let zeros = vec![0u8; 8 * 4096];
    write_synced(&other, &zeros);
    let map = resolve(&path).unwrap();
    let theirs = resolve(&other)
        .unwrap()
        .device_runs(4096, 3 * 4096)
        .unwrap();
    assert_eq!(theirs.len(), 1, "the other file is fragmented: {theirs:?}");
    // Block 0 (the header) where it is; blocks 1..3 in the other file.
    let wrong = map.with_extents_unchecked(vec![
        Extent {
            file_offset: 0,
            device_offset: map.device_runs(0, 4096).unwrap()[0].device_offset,
            len: 4096,
        },
        Extent {
            file_offset: 4096,
            device_offset: theirs[0].device_offset,
            len: 3 * 4096,
        },
    ]);
    verify(&wrong).expect("zeros compare equal: content alone cannot tell");
    let err = RawWriter::open(wrong)
        .err()
        .expect("a wrong map was accepted");
    assert!(
        matches!(err, BlockMapError::MarkerMissing { offset, .. } if offset >= 4096),
        "{err}"
    );
    assert!(err.to_string().contains("md0.bitmap"), "{err}");
    assert_eq!(
        read_file_direct(&other).unwrap(),
        zeros,
        "the other file kept a marker"
    );
    assert_eq!(read_file_direct(&path).unwrap(), content);
    // The right map is proved and used.
    let writer = RawWriter::open(map).unwrap();
    writer.submit_and_wait(4096, &[0xAB; 4096]).unwrap();
    assert_eq!(read_file_direct(&path).unwrap()[4096..8192], [0xAB; 4096]);
    assert_eq!(read_file_direct(&other).unwrap(), zeros);
}

#[test]
fn refuses_a_read_only_device() {
    if !needs_root("refuses_a_read_only_device") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.img");
    common::loopdev::sparse_file(&image, 64 << 20).unwrap();
    {
        let lo = LoopDevice::attach(&image).unwrap();
        common::loopdev::Mkfs::ext4(lo.path(), 4096).unwrap();
        let mnt = MountedFs::mount(lo.path(), &dir.path().join("rw")).unwrap();
        write_synced(&mnt.dir().join("md0.bitmap"), &pattern(8, 4096));
    }
    let lo = LoopDevice::attach_read_only(&image).unwrap();
    let mnt = MountedFs::mount_read_only(lo.path(), &dir.path().join("ro")).unwrap();
    let map = resolve(&mnt.dir().join("md0.bitmap")).unwrap();
    let err = RawWriter::open(map)
        .err()
        .expect("opened a read-only device");
    assert!(
        matches!(err, BlockMapError::DeviceNotWritable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("read-only"), "{err}");
}

#[test]
fn second_protect_is_refused_and_release_clears_immutable() {
    if !needs_root("second_protect_is_refused_and_release_clears_immutable") {
        return;
    }
    let fs = ScratchFs::ext4(4096).unwrap();
    let (path, _) = synced_bitmap_file(&fs, 9, 4096);
    let guard = protect(&path).unwrap();
    assert!(is_immutable(&path));
    let err = protect(&path).unwrap_err();
    assert!(matches!(err, BlockMapError::Locked { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("in use by another mdfuse (locked)"),
        "{err}"
    );
    // The failed attempt did not disturb the holder.
    assert!(is_immutable(&path));
    // FIEMAP and reads work on the immutable file.
    verify(&resolve(&path).unwrap()).unwrap();
    drop(guard);
    assert!(!is_immutable(&path));
    let again = protect(&path).unwrap();
    again.release().unwrap();
    assert!(!is_immutable(&path));
    std::fs::write(&path, b"writable again").unwrap();
}

/// An MBR with one Linux partition from sector `start` for `sectors`.
fn write_mbr(image: &Path, start: u32, sectors: u32) {
    let mut mbr = [0u8; 512];
    let entry = &mut mbr[446..462];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&start.to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    File::options()
        .write(true)
        .open(image)
        .unwrap()
        .write_all_at(&mbr, 0)
        .unwrap();
}

#[test]
fn ext4_on_a_partition_roundtrip() {
    if !needs_root("ext4_on_a_partition_roundtrip") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    common::loopdev::sparse_file(&image, 64 << 20).unwrap();
    write_mbr(&image, 2048, (64 << 20) / 512 - 2048);
    let lo = LoopDevice::attach_partitioned(&image).unwrap();
    let part = match lo.partition(1) {
        Ok(p) => p,
        Err(e) => {
            // This machine's kernel scans no MBR on a loop device (no
            // CONFIG_MSDOS_PARTITION): nothing the setup can change.
            common::loopdev::kernel_lacks(
                "ext4_on_a_partition_roundtrip",
                &format!("MBR partitions on loop devices ({e})"),
            );
            return;
        }
    };
    common::loopdev::Mkfs::ext4(&part, 4096).unwrap();
    let mnt = MountedFs::mount(&part, &dir.path().join("mnt")).unwrap();
    let path = mnt.dir().join("md0.bitmap");
    let old = pattern(10, 4096 + 512);
    write_synced(&path, &old);
    let map = raw_write_roundtrip(&path, &old);
    assert_eq!(map.device(), part, "the partition, not the whole disk");
    // Offsets are partition-relative: the whole disk shows the bytes 1 MiB further on.
    let e = map.extents()[0];
    assert_eq!(
        read_direct(lo.path(), (2048 * 512) + e.device_offset, 4096).unwrap(),
        read_direct(&part, e.device_offset, 4096).unwrap()
    );
    let chain = map.backing_chain();
    assert_eq!(chain.len(), 1, "{chain:?}");
    assert_eq!(chain[0].loop_device, lo.path());
    assert_eq!(chain[0].st_ino, std::fs::metadata(&image).unwrap().ino());
    drop(mnt);
    drop(lo);
}

#[test]
fn refuses_journaled_data() {
    if !needs_root("refuses_journaled_data") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.img");
    common::loopdev::sparse_file(&image, 64 << 20).unwrap();
    let lo = LoopDevice::attach(&image).unwrap();
    common::loopdev::Mkfs::ext4(lo.path(), 4096).unwrap();
    {
        let mnt = MountedFs::mount_with(
            lo.path().to_str().unwrap(),
            &dir.path().join("journal"),
            None,
            Some("data=journal"),
        )
        .unwrap();
        let path = mnt.dir().join("md0.bitmap");
        write_synced(&path, &pattern(11, 4096));
        let err = resolve(&path).unwrap_err();
        assert!(matches!(err, BlockMapError::DataJournaled { .. }), "{err}");
        assert!(err.to_string().contains("data=journal"), "{err}");
    }
    let mnt = MountedFs::mount(lo.path(), &dir.path().join("ordered")).unwrap();
    let path = mnt.dir().join("md0.bitmap");
    resolve(&path).unwrap();
    // Some kernels refuse the per-file journal flag even to root.
    match run("chattr", &["+j", path.to_str().unwrap()]) {
        Ok(_) => {
            let err = resolve(&path).unwrap_err();
            assert!(matches!(err, BlockMapError::DataJournaled { .. }), "{err}");
            run("chattr", &["-j", path.to_str().unwrap()]).unwrap();
        }
        // Some kernels refuse it to root: what the kernel allows, not setup.
        Err(e) => eprintln!("SKIPPED the chattr +j part of refuses_journaled_data: {e}"),
    }
    drop(mnt);
    drop(lo);
}

#[test]
fn an_already_immutable_file_is_left_as_found_unless_adopted() {
    if !needs_root("an_already_immutable_file_is_left_as_found_unless_adopted") {
        return;
    }
    let fs = ScratchFs::ext4(4096).unwrap();
    let (path, _) = synced_bitmap_file(&fs, 12, 4096);
    run("chattr", &["+i", path.to_str().unwrap()]).unwrap();
    let guard = protect(&path).unwrap();
    assert!(guard.was_already_immutable() && !guard.set_immutable());
    guard.release().unwrap();
    assert!(is_immutable(&path), "cleared a flag it did not set");
    let mut guard = protect(&path).unwrap();
    guard.adopt_immutable();
    drop(guard);
    assert!(!is_immutable(&path), "adopted flag not cleared");
}
