//! Power cuts (issue 12): legs, and the block device under the bitmap's
//! filesystem, on disks with volatile write caches (`common::faultyfs` in
//! volatile mode).

mod common;

use common::faultyfs::{FaultyFs, Survival};
use common::io::AlignedVec;
use common::loopdev::{needs_root, LoopDevice};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

const MIB: u64 = 1 << 20;

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
