//! Helpers for end-to-end tests of the write-intent bitmap through the real
//! `mdfuse` binary: leg files, `mdfuse create`/`mount`/`stop` wrappers, a
//! mounted-array RAII guard, O_DIRECT reads, FIEMAP (via `filefrag -v`) and
//! parsers for `mdfuse examine-bitmap` / `mdadm -X` / `mdadm -E` output.

#![allow(dead_code)] // each test binary uses a different subset

use super::loopdev::run;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const MDFUSE: &str = env!("CARGO_BIN_EXE_mdfuse");

/// What a command printed and whether it succeeded.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

pub fn mdfuse(args: &[&str]) -> Outcome {
    mdfuse_env(args, &[])
}

/// [`mdfuse`] with extra environment variables (a daemon it starts
/// inherits them).
pub fn mdfuse_env(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let out = Command::new(MDFUSE)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("cannot run the mdfuse binary");
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Two sparse leg files in a fresh temporary directory (outside any test fs).
pub struct Legs {
    pub dir: tempfile::TempDir,
    pub paths: Vec<PathBuf>,
}

impl Legs {
    pub fn new(size: u64) -> Legs {
        let dir = tempfile::Builder::new()
            .prefix("mdfuse-bme2e-legs")
            .tempdir()
            .expect("tempdir");
        let paths: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("leg{i}"))).collect();
        for p in &paths {
            super::loopdev::sparse_file(p, size).expect("leg file");
        }
        Legs { dir, paths }
    }

    pub fn strs(&self) -> Vec<&str> {
        self.paths.iter().map(|p| s(p)).collect()
    }

    /// A directory for a mountpoint (created) inside the legs' tempdir.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let m = self.dir.path().join(name);
        std::fs::create_dir_all(&m).expect("mountpoint");
        m
    }

    /// The first `len` bytes of each leg (superblock area).
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
}

/// What `mdfuse create` printed.
#[derive(Debug, Clone)]
pub struct Created {
    pub uuid: String,
    pub data_offset_sectors: u64,
    pub array_bytes: u64,
}

/// `mdfuse create --force [--bitmap FILE] [extra..] LEGS`.
pub fn create_array(legs: &Legs, bitmap: Option<&Path>, extra: &[&str]) -> Created {
    let mut args = vec!["create", "--force"];
    if let Some(b) = bitmap {
        args.extend(["--bitmap", s(b)]);
    }
    args.extend_from_slice(extra);
    args.extend(legs.strs());
    let out = mdfuse(&args);
    assert!(out.ok, "mdfuse create failed: {}", out.text());
    let uuid = out
        .stdout
        .split("UUID ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .expect("UUID in create output")
        .to_string();
    let data_offset_sectors = out
        .stdout
        .split("data offset ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .expect("data offset in create output");
    let array_bytes = out
        .stdout
        .split("legs, ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .expect("size in create output");
    Created {
        uuid,
        data_offset_sectors,
        array_bytes,
    }
}

/// A mounted mdfuse array. On drop: if still mounted, `mdfuse stop`; if that
/// fails, `umount -l` and SIGKILL the daemon. Prints the daemon's log when
/// the test is panicking.
pub struct MountedArray {
    pub mountpoint: PathBuf,
    pub log: PathBuf,
    pub pid: i32,
    /// Set once the array was stopped or killed on purpose.
    finished: bool,
}

/// `mdfuse mount [extra..] LEGS MNT` with the log in `log_dir`.
pub fn mount_array(
    legs: &[&str],
    mountpoint: &Path,
    extra: &[&str],
) -> Result<MountedArray, Outcome> {
    mount_array_env(legs, mountpoint, extra, &[])
}

/// [`mount_array`] with extra environment variables for the daemon.
pub fn mount_array_env(
    legs: &[&str],
    mountpoint: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<MountedArray, Outcome> {
    let log = mountpoint.with_extension("log");
    let mut args = vec!["mount", "--log", s(&log)];
    args.extend_from_slice(extra);
    args.extend_from_slice(legs);
    args.push(s(mountpoint));
    let out = mdfuse_env(&args, env);
    if !out.ok {
        return Err(out);
    }
    let pid = out
        .stdout
        .rsplit("pid ")
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no pid in mount output: {}", out.text()));
    Ok(MountedArray {
        mountpoint: mountpoint.to_path_buf(),
        log,
        pid,
        finished: false,
    })
}

pub fn is_mounted(dir: &Path) -> bool {
    let abs = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(s(&abs)))
}

pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(st) => !st
            .rsplit(')')
            .next()
            .map(|t| t.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

impl MountedArray {
    pub fn image(&self) -> PathBuf {
        self.mountpoint.join("array.img")
    }

    pub fn mdstat(&self) -> String {
        std::fs::read_to_string(self.mountpoint.join("mdstat")).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `mdfuse stop MNT`; asserts it succeeded and the daemon is gone.
    pub fn stop(mut self) {
        self.finished = true;
        let out = mdfuse(&["stop", "--timeout", "30", s(&self.mountpoint)]);
        assert!(
            out.ok,
            "mdfuse stop failed: {}\nlog:\n{}",
            out.text(),
            self.log_text()
        );
        self.wait_gone(Duration::from_secs(10));
        assert!(
            !process_alive(self.pid),
            "daemon {} still alive after stop",
            self.pid
        );
    }

    /// SIGKILLs the daemon, then detaches its dead mount (`umount -l`).
    pub fn kill(mut self) {
        self.finished = true;
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        self.wait_gone(Duration::from_secs(10));
        let _ = run("umount", &["-l", s(&self.mountpoint)]);
    }

    fn wait_gone(&self, limit: Duration) {
        let end = Instant::now() + limit;
        while process_alive(self.pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MountedArray {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- mdfuse log {} ----\n{}\n---- end of log ----",
                self.log.display(),
                self.log_text()
            );
        }
        if self.finished && !is_mounted(&self.mountpoint) && !process_alive(self.pid) {
            return;
        }
        if is_mounted(&self.mountpoint) {
            let out = mdfuse(&["stop", "--timeout", "20", s(&self.mountpoint)]);
            if !out.ok {
                eprintln!("warning: mdfuse stop: {}", out.text());
                let _ = run("umount", &["-l", s(&self.mountpoint)]);
            }
        }
        self.wait_gone(Duration::from_secs(5));
        if process_alive(self.pid) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            self.wait_gone(Duration::from_secs(5));
        }
    }
}

/// A 4096-aligned buffer for O_DIRECT.
pub struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    pub fn new(len: usize) -> Aligned {
        let len = len.div_ceil(4096).max(1) * 4096;
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, len }
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    pub fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).expect("layout");
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

// SAFETY: plain heap memory.
unsafe impl Send for Aligned {}

/// Reads `len` bytes at `offset` with O_DIRECT (offset 4 KiB aligned);
/// returns what was read (short at end of file).
pub fn read_direct(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut buf = Aligned::new(len);
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf.as_mut()[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(buf.as_slice()[..done.min(len)].to_vec())
}

/// Writes `data` (4 KiB multiple) at `offset` with O_DIRECT.
pub fn write_direct(path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
    let f = std::fs::File::options()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut buf = Aligned::new(data.len());
    buf.as_mut()[..data.len()].copy_from_slice(data);
    f.write_all_at(&buf.as_slice()[..data.len()], offset)
}

/// Writes `data` at `offset` through the page cache, then fsync.
pub fn write_buffered_fsync(path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
    let f = std::fs::File::options().write(true).open(path)?;
    f.write_all_at(data, offset)?;
    f.sync_all()
}

/// Chunks whose bit is set in `bits` (the bytes after the 256-byte header).
pub fn set_bits(bits: &[u8], nchunks: u64) -> Vec<u64> {
    (0..nchunks)
        .filter(|&c| {
            bits.get((c / 8) as usize)
                .is_some_and(|b| b & (1 << (c % 8)) != 0)
        })
        .collect()
}

/// The number of chunks in a bitmap file image (header fields).
pub fn header_chunks(file: &[u8]) -> u64 {
    let u32_at = |o: usize| u32::from_le_bytes(file[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(file[o..o + 8].try_into().unwrap());
    let sync_size = u64_at(40);
    let chunk_sectors = u32_at(52) as u64 / 512;
    sync_size.div_ceil(chunk_sectors)
}

/// Dirty chunks of a bitmap file image.
pub fn dirty_in_image(file: &[u8]) -> Vec<u64> {
    set_bits(&file[256..], header_chunks(file))
}

/// The value of `Key : value` in mdadm-style text.
pub fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(" : ")?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// `N dirty` from a `Bitmap : X bits (chunks), N dirty (..)` line.
pub fn dirty_count(text: &str) -> u64 {
    let b = field(text, "Bitmap").unwrap_or_else(|| panic!("no Bitmap line in {text}"));
    b.split(", ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {b:?}"))
}

/// `mdfuse examine-bitmap --chunks FILE`: (text, dirty chunks).
pub fn examine_bitmap(file: &Path) -> (String, Vec<u64>) {
    let out = mdfuse(&["examine-bitmap", "--chunks", s(file)]);
    assert!(out.ok, "examine-bitmap failed: {}", out.text());
    let list = field(&out.stdout, "Dirty Chunks").expect("Dirty Chunks line");
    let chunks = if list == "-" {
        Vec::new()
    } else {
        list.split(',')
            .map(|c| c.parse().expect("chunk number"))
            .collect()
    };
    (out.stdout, chunks)
}

/// Expands "0,80-81,319-320,480" (or "-") to chunk numbers.
pub fn parse_ranges(list: &str) -> Vec<u64> {
    let list = list.trim();
    if list == "-" || list.is_empty() {
        return Vec::new();
    }
    let mut v = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => v.extend(a.trim().parse::<u64>().unwrap()..=b.trim().parse().unwrap()),
            None => v.push(part.trim().parse().unwrap()),
        }
    }
    v
}

/// Drops the page cache of one file (so buffered readers such as mdadm see
/// what raw writes put on disk).
pub fn drop_file_cache(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        // SAFETY: valid fd.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
    }
}

pub fn is_immutable(path: &Path) -> bool {
    let out = run("lsattr", &[s(path)]).expect("lsattr");
    out.split_whitespace()
        .next()
        .is_some_and(|flags| flags.contains('i'))
}

pub fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("mtime")
}

/// One extent from `filefrag -v`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileExtent {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
}

/// The file's extents (FIEMAP through `filefrag -v`), in bytes.
pub fn extents(path: &Path) -> Vec<FileExtent> {
    let out = run("filefrag", &["-v", s(path)]).expect("filefrag");
    // "File size of F is N (K block(s) of BS bytes)"
    let bs: u64 = out
        .split(" bytes)")
        .next()
        .and_then(|t| t.rsplit(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no block size in {out}"));
    let mut v = Vec::new();
    for l in out.lines() {
        let cols: Vec<&str> = l.split(':').map(str::trim).collect();
        if cols.len() < 4 || cols[0].parse::<u64>().is_err() {
            continue;
        }
        let range = |c: &str| -> u64 {
            c.split("..")
                .next()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or_else(|| panic!("bad filefrag column {c:?} in {l:?}"))
        };
        v.push(FileExtent {
            logical: range(cols[1]) * bs,
            physical: range(cols[2]) * bs,
            len: cols[3].parse::<u64>().expect("length") * bs,
        });
    }
    v
}

/// Reads the file's bytes [0, len) straight from the block device at the
/// FIEMAP-mapped addresses (O_DIRECT, whole 4 KiB device pages).
pub fn read_via_device(file: &Path, device: &Path, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    for e in extents(file) {
        if e.logical >= len {
            continue;
        }
        let take = e.len.min(len - e.logical);
        let start = e.physical / 4096 * 4096;
        let skip = e.physical - start;
        let bytes = read_direct(device, start, (skip + take) as usize).expect("device read");
        out[e.logical as usize..(e.logical + take) as usize]
            .copy_from_slice(&bytes[skip as usize..(skip + take) as usize]);
    }
    out
}

/// A pattern of 4 KiB identifying (offset, tag).
pub fn pattern(offset: u64, tag: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(4096);
    for i in 0..512u64 {
        v.extend_from_slice(&(offset ^ (tag << 40) ^ i.wrapping_mul(0x9E37_79B9)).to_le_bytes());
    }
    v
}

/// A tiny xorshift generator (the tests need no crate for randomness).
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(t | 1)
    }
    pub fn from_seed(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Polls `f` until it is true or `limit` passes; returns its last value.
pub fn poll(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Decompresses a `.zst` fixture into `dest`.
pub fn unzstd(src: &Path, dest: &Path) {
    let out = Command::new("zstd")
        .args(["-d", "-q", "-f", "-o", s(dest), s(src)])
        .output()
        .expect("zstd");
    assert!(
        out.status.success(),
        "zstd -d {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loop device over part of a file (`losetup -o OFFSET`), detached on drop.
pub struct OffsetLoop {
    pub path: PathBuf,
}

impl OffsetLoop {
    pub fn attach(file: &Path, offset: u64) -> OffsetLoop {
        let out = run(
            "losetup",
            &["-f", "--show", "-o", &offset.to_string(), s(file)],
        )
        .expect("losetup -o");
        let name = out.trim();
        assert!(name.starts_with("/dev/loop"), "losetup printed {out:?}");
        OffsetLoop {
            path: PathBuf::from(name),
        }
    }
}

impl Drop for OffsetLoop {
    fn drop(&mut self) {
        for attempt in 0..10 {
            match run("losetup", &["-d", s(&self.path)]) {
                Ok(_) => return,
                Err(e) if attempt == 9 => eprintln!("warning: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}
