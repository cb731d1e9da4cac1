//! Raw, synchronous writes of bitmap pages to the device sectors that hold
//! the bitmap file (md's write_file_page), never through the filesystem, and
//! confined to the verified block map.

use super::error::BlockMapError;
use super::open::read_file_direct;
use super::resolve::BlockMap;
use super::sys;
use super::verify::{check_same_device, read_mapped, verify};
use crate::io::aligned::{round_up, AlignedBuf};
use crate::io::completion::{Completion, OpFailure};
use crossbeam_channel::{Receiver, Sender};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

/// A bitmap page: the unit of [`RawWriter::submit`].
pub const PAGE_SIZE: u64 = 4096;
/// I/O threads of a [`RawWriter`] unless told otherwise.
pub const DEFAULT_IO_THREADS: usize = 2;
const SECTOR: u64 = 512;

mod confined {
    //! The only holder of the writable device fd. Nothing outside this
    //! module can reach the fd, and its one write path checks the target.
    use super::BlockMap;
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    pub(super) struct ConfinedDevice {
        fd: File,
        map: BlockMap,
        /// Set once the map is no longer trusted: no write starts after it.
        halted: std::sync::OnceLock<std::sync::Arc<super::HaltGate>>,
    }

    impl ConfinedDevice {
        pub(super) fn new(fd: File, map: BlockMap) -> Self {
            ConfinedDevice {
                fd,
                map,
                halted: std::sync::OnceLock::new(),
            }
        }

        /// Stops every later write (see [`super::RawWriter::halt`]).
        pub(super) fn halt(&self, gate: std::sync::Arc<super::HaltGate>) -> bool {
            self.halted.set(gate).is_ok()
        }

        pub(super) fn halted(&self) -> Option<&std::sync::Arc<super::HaltGate>> {
            self.halted.get()
        }

        pub(super) fn map(&self) -> &BlockMap {
            &self.map
        }

        pub(super) fn into_parts(self) -> (File, BlockMap) {
            (self.fd, self.map)
        }

        /// Reads the block-aligned file range from the mapped sectors.
        pub(super) fn read_blocks(
            &self,
            file_offset: u64,
            len: u64,
        ) -> Result<Vec<u8>, super::BlockMapError> {
            super::read_mapped(&self.fd, &self.map, file_offset, len)
        }

        /// Writes `data` at device byte `dev_off`; errno on failure
        /// (ESHUTDOWN, nothing written, once halted).
        pub(super) fn write_at(&self, dev_off: u64, data: &[u8]) -> Result<(), i32> {
            if self.halted.get().is_some() {
                return Err(libc::ESHUTDOWN);
            }
            // Every caller derives addresses from the map; anything else is a
            // bug that must not reach the disk.
            assert!(
                self.map.contains_device_range(dev_off, data.len() as u64),
                "raw write of {} bytes at {} byte {dev_off} is outside the verified map of {}",
                data.len(),
                self.map.device().display(),
                self.map.file().display()
            );
            let mut done = 0usize;
            while done < data.len() {
                match self.fd.write_at(&data[done..], dev_off + done as u64) {
                    Ok(0) => return Err(libc::EIO),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
                }
            }
            Ok(())
        }
    }
}

use confined::ConfinedDevice;

/// What becomes of the page writes asked of a [`RawWriter`] after
/// [`RawWriter::halt`]: none of them is written; each waits until the
/// halter decides, then completes with that outcome (`Ok`: the pages are
/// dropped, the halter has made the on-disk bitmap stale; `Err`: they fail).
#[derive(Default)]
pub struct HaltGate {
    outcome: parking_lot::Mutex<Option<Result<(), String>>>,
    decided: parking_lot::Condvar,
}

impl HaltGate {
    pub fn new() -> Arc<HaltGate> {
        Arc::new(HaltGate::default())
    }

    /// Sets the outcome (the first one holds) and releases the waiters.
    pub fn decide(&self, outcome: Result<(), String>) {
        let mut o = self.outcome.lock();
        if o.is_none() {
            *o = Some(outcome);
        }
        self.decided.notify_all();
    }

    fn wait(&self) -> Result<(), String> {
        let mut o = self.outcome.lock();
        loop {
            if let Some(r) = o.as_ref() {
                return r.clone();
            }
            self.decided.wait(&mut o);
        }
    }
}

struct Job {
    run_index: usize,
    file_offset: u64,
    device_offset: u64,
    len: usize,
    buf: AlignedBuf,
    completion: Arc<Completion>,
}

/// Writes bitmap pages to the device under the file, O_DIRECT | O_DSYNC, on
/// a small pool of I/O threads; each page's runs finish one [`Completion`].
pub struct RawWriter {
    device: Arc<ConfinedDevice>,
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl RawWriter {
    /// Opens the map's device for raw writes with [`DEFAULT_IO_THREADS`]
    /// threads. Verifies and proves the map first (see
    /// [`RawWriter::open_keeping`]): no unverified map is ever used.
    pub fn open(map: BlockMap) -> Result<RawWriter, BlockMapError> {
        RawWriter::open_keeping(map, 0, DEFAULT_IO_THREADS)
    }

    /// Opens the map's device for raw writes with `threads` I/O threads,
    /// after two checks: [`verify`] (the file's bytes and the mapped sectors
    /// are equal) and a proof by markers, which also holds where both are
    /// zeros: every mapped block gets a marker written raw, the file read
    /// back through its filesystem (O_DIRECT) must show each marker in its
    /// place, then the original bytes are written back and verified again.
    ///
    /// The marker only sets bits (original OR pseudo-random bytes) and leaves
    /// the first `keep_prefix` bytes as they are, so a crash in the middle
    /// leaves a file whose content only has more bits set (for a bitmap file
    /// with its header kept: more dirty chunks, which is safe).
    pub fn open_keeping(
        map: BlockMap,
        keep_prefix: u64,
        threads: usize,
    ) -> Result<RawWriter, BlockMapError> {
        let fd = open_device_for_writing(&map)?;
        verify(&map)?;
        let device = ConfinedDevice::new(fd, map);
        prove_with_markers(&device, keep_prefix)?;
        let (fd, map) = device.into_parts();
        // Raw writes bypass the file's page cache: each written range is
        // dropped from it, so buffered readers (mdadm -X) see the disk.
        let cache = File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(map.file())
            .map_err(|e| BlockMapError::io(map.file(), "cannot open", e))?;
        RawWriter::start(fd, map, threads, Some(cache))
    }

    fn start(
        fd: File,
        map: BlockMap,
        threads: usize,
        cache: Option<File>,
    ) -> Result<RawWriter, BlockMapError> {
        let device = Arc::new(ConfinedDevice::new(fd, map));
        let cache = Arc::new(cache);
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        // Built first so a failed spawn still stops and joins the others.
        let mut writer = RawWriter {
            device: device.clone(),
            jobs: Some(tx),
            workers: Vec::new(),
        };
        for i in 0..threads.max(1) {
            let device = device.clone();
            let cache = cache.clone();
            let rx: Receiver<Job> = rx.clone();
            let worker = std::thread::Builder::new()
                .name(format!("bitmap-io-{i}"))
                .spawn(move || {
                    for job in rx {
                        run_job(&device, cache.as_ref().as_ref(), job);
                    }
                })
                .map_err(|e| {
                    BlockMapError::io(device_path(&writer), "cannot start I/O threads for", e)
                })?;
            writer.workers.push(worker);
        }
        Ok(writer)
    }

    pub fn map(&self) -> &BlockMap {
        self.device.map()
    }

    /// Stops raw writes at once: no write starts after this (one already
    /// in the kernel finishes), and every page write, queued or later, waits
    /// for `gate`'s outcome instead. For a map that is no longer trusted.
    /// False when already halted.
    pub fn halt(&self, gate: Arc<HaltGate>) -> bool {
        self.device.halt(gate)
    }

    /// Writes one bitmap page: `bytes` is the file's content from
    /// `file_offset` (a multiple of 4096), at most 4096 bytes. The blocks it
    /// touches are written whole: block bytes not covered by `bytes`, and
    /// bytes at or beyond the end of the file, are written as zeros; nothing
    /// past the file's last block is written. Bad arguments complete the
    /// returned completion with an EINVAL failure.
    pub fn submit(&self, file_offset: u64, bytes: &[u8]) -> Arc<Completion> {
        let map = self.device.map();
        let invalid = |what: String| {
            let c = Completion::new(1);
            c.finish(Err(OpFailure {
                target: 0,
                what,
                errno: libc::EINVAL,
            }));
            c
        };
        if !file_offset.is_multiple_of(PAGE_SIZE)
            || bytes.is_empty()
            || bytes.len() as u64 > PAGE_SIZE
            || file_offset >= map.file_len()
        {
            return invalid(format!(
                "bitmap page write of {} bytes at offset {file_offset} of {} (length {}): \
                 needs a 4096-aligned offset inside the file and 1..=4096 bytes",
                bytes.len(),
                map.file().display(),
                map.file_len()
            ));
        }
        let bs = map.fs_block_size() as u64;
        let data_end = (file_offset + bytes.len() as u64).min(map.file_len());
        let write_end = round_up(data_end as usize, bs as usize) as u64;
        let runs = match map.device_runs(file_offset, write_end - file_offset) {
            Ok(r) => r,
            Err(e) => return invalid(e.to_string()),
        };
        let useful = (data_end - file_offset) as usize;
        let completion = Completion::new(runs.len());
        let Some(jobs) = &self.jobs else {
            // Only possible during drop; fail the page rather than hang.
            for (i, _) in runs.iter().enumerate() {
                completion.finish(Err(OpFailure {
                    target: i,
                    what: format!("{}: raw writer stopped", map.file().display()),
                    errno: libc::ESHUTDOWN,
                }));
            }
            return completion;
        };
        for (run_index, run) in runs.iter().enumerate() {
            let len = run.len as usize;
            let mut buf = AlignedBuf::new(len);
            let start = (run.file_offset - file_offset) as usize;
            let end = (start + len).min(useful);
            if start < end {
                buf.as_mut_slice()[..end - start].copy_from_slice(&bytes[start..end]);
            }
            let job = Job {
                run_index,
                file_offset: run.file_offset,
                device_offset: run.device_offset,
                len,
                buf,
                completion: completion.clone(),
            };
            if let Err(e) = jobs.send(job) {
                let job = e.into_inner();
                job.completion.finish(Err(OpFailure {
                    target: run_index,
                    what: format!("{}: raw writer stopped", map.file().display()),
                    errno: libc::ESHUTDOWN,
                }));
            }
        }
        completion
    }

    /// [`RawWriter::submit`] and wait; errors name the device and sectors.
    pub fn submit_and_wait(&self, file_offset: u64, bytes: &[u8]) -> Result<(), BlockMapError> {
        let failures = self.submit(file_offset, bytes).wait();
        if failures.is_empty() {
            return Ok(());
        }
        Err(BlockMapError::WriteFailed {
            file: self.map().file().to_path_buf(),
            device: self.map().device().to_path_buf(),
            failures: failures
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// The file's bytes `[file_offset, file_offset+len)` as the device holds
    /// them at the mapped sectors.
    pub fn read_direct(&self, file_offset: u64, len: u64) -> Result<Vec<u8>, BlockMapError> {
        let map = self.map();
        let end = file_offset
            .checked_add(len)
            .filter(|&e| e <= map.file_len());
        let Some(end) = end else {
            return Err(BlockMapError::BadRange {
                file: map.file().to_path_buf(),
                offset: file_offset,
                end: file_offset.saturating_add(len),
                file_len: map.file_len(),
                block_size: map.fs_block_size(),
                problem: "beyond the end of the file",
            });
        };
        if len == 0 {
            return Ok(Vec::new());
        }
        let bs = map.fs_block_size() as u64;
        let first = file_offset / bs * bs;
        let last = end.div_ceil(bs) * bs;
        let bytes = self.device.read_blocks(first, last - first)?;
        let skip = (file_offset - first) as usize;
        Ok(bytes[skip..skip + len as usize].to_vec())
    }
}

/// Writes `content` (the whole mapped range, `mapped_len` bytes) to the
/// mapped sectors, run by run, through the confined device.
fn write_mapped(device: &ConfinedDevice, content: &[u8]) -> Result<(), BlockMapError> {
    let map = device.map();
    for run in map.device_runs(0, map.mapped_len())? {
        let len = run.len as usize;
        let mut buf = AlignedBuf::new(len);
        let start = run.file_offset as usize;
        buf.as_mut_slice()[..len].copy_from_slice(&content[start..start + len]);
        device
            .write_at(run.device_offset, &buf.as_slice()[..len])
            .map_err(|errno| BlockMapError::WriteFailed {
                file: map.file().to_path_buf(),
                device: map.device().to_path_buf(),
                failures: format!(
                    "{} bytes at sector {}: {}",
                    len,
                    run.device_offset / SECTOR,
                    std::io::Error::from_raw_os_error(errno)
                ),
            })?;
    }
    Ok(())
}

/// Pseudo-random bytes, different at each mount (a wrong map cannot match
/// them by chance, nor by an earlier run's leftovers).
fn marker_bytes(len: usize) -> Vec<u8> {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into seed.
    let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    let mut x = if got == 8 {
        u64::from_le_bytes(seed)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
    } | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// See [`RawWriter::open_keeping`]. Costs two raw writes and three reads of
/// the file (an md bitmap of 2^20 chunks is 128 KiB and a header).
fn prove_with_markers(device: &ConfinedDevice, keep_prefix: u64) -> Result<(), BlockMapError> {
    let map = device.map();
    let path = map.file();
    let file_len = map.file_len() as usize;
    let original = device.read_blocks(0, map.mapped_len())?;
    let mut marked = original.clone();
    let first = (keep_prefix as usize).min(file_len);
    for (byte, noise) in marked[first..file_len]
        .iter_mut()
        .zip(marker_bytes(file_len - first))
    {
        *byte |= noise;
    }
    let bs = map.fs_block_size() as usize;
    // A block whose visible bytes already have every bit set cannot carry a
    // marker; verify() has compared its bytes, which is all we can do.
    let unmarkable = (0..file_len.div_ceil(bs))
        .filter(|b| {
            let r = b * bs..((b + 1) * bs).min(file_len);
            marked[r.clone()] == original[r]
        })
        .count();
    if unmarkable > 0 {
        log::warn!(
            "{}: {unmarkable} block(s) hold only set bits (or the kept head) and cannot carry a \
             marker; they were checked by content only",
            path.display()
        );
    }
    write_mapped(device, &marked)?;
    let seen = read_file_direct(path);
    // Whatever was seen, the original bytes go back first.
    let restored = write_mapped(device, &original);
    let seen = seen?;
    restored?;
    if seen.len() != file_len {
        return Err(BlockMapError::FileChanged {
            file: path.to_path_buf(),
            detail: format!("length {file_len} when mapped, {} now", seen.len()),
        });
    }
    if let Some(offset) = seen.iter().zip(&marked).position(|(a, b)| a != b) {
        let offset = offset as u64;
        let block = offset / bs as u64 * bs as u64;
        let sector = map
            .device_runs(block, bs as u64)
            .ok()
            .and_then(|r| {
                r.first()
                    .map(|r| (r.device_offset + offset - block) / SECTOR)
            })
            .unwrap_or(0);
        return Err(BlockMapError::MarkerMissing {
            file: path.to_path_buf(),
            device: map.device().to_path_buf(),
            sector,
            offset,
        });
    }
    verify(map)
}

/// Opens the map's device as the raw writer does (read-write, O_DIRECT,
/// O_DSYNC), refusing a read-only device or one that is no longer the
/// file's. Writes nothing.
fn open_device_for_writing(map: &BlockMap) -> Result<File, BlockMapError> {
    let not_writable = |source| BlockMapError::DeviceNotWritable {
        file: map.file().to_path_buf(),
        device: map.device().to_path_buf(),
        source,
    };
    // O_DSYNC: a write returns once it is on stable media (FUA or flush),
    // which is when the bitmap bit may be relied upon.
    let fd = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC | libc::O_CLOEXEC)
        .open(map.device())
        .map_err(not_writable)?;
    match sys::is_read_only(&fd) {
        Ok(true) => return Err(not_writable(std::io::Error::from_raw_os_error(libc::EROFS))),
        Ok(false) => {}
        Err(e) => return Err(BlockMapError::io(map.device(), "cannot query", e)),
    }
    check_same_device(map, &fd)?;
    Ok(fd)
}

/// A read-only check, for before the file is protected: raw writes to the
/// map's device would be possible. Writes nothing.
pub fn check_device_writable(map: &BlockMap) -> Result<(), BlockMapError> {
    open_device_for_writing(map).map(drop)
}

fn device_path(writer: &RawWriter) -> &Path {
    writer.device.map().device()
}

fn run_job(device: &ConfinedDevice, cache: Option<&File>, job: Job) {
    let what = || {
        format!(
            "raw write of {} bytes {}..{} to {} sector {}",
            device.map().file().display(),
            job.file_offset,
            job.file_offset + job.len as u64,
            device.map().device().display(),
            job.device_offset / SECTOR
        )
    };
    if let Some(gate) = device.halted() {
        let result = gate.wait().map_err(|why| OpFailure {
            target: job.run_index,
            what: format!("{} not done: {why}", what()),
            errno: libc::ESHUTDOWN,
        });
        job.completion.finish(result);
        return;
    }
    // A confinement panic is a bug, and it fires before anything is written;
    // the waiter must still hear of it rather than wait forever.
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        device.write_at(job.device_offset, &job.buf.as_slice()[..job.len])
    }));
    let result = match attempt {
        Ok(Ok(())) => Ok(()),
        Ok(Err(errno)) => Err(OpFailure {
            target: job.run_index,
            what: what(),
            errno,
        }),
        Err(_) => Err(OpFailure {
            target: job.run_index,
            what: format!("{} refused: outside the verified block map (bug)", what()),
            errno: libc::EFAULT,
        }),
    };
    // Before the page's completion fires: once its waiter returns, a
    // buffered read of the range reads what is on disk.
    if let (Some(file), Ok(())) = (cache, &result) {
        if let Err(e) = sys::drop_page_cache_range(file, job.file_offset, job.len as u64) {
            log::warn!(
                "{}: cannot drop bytes {}..{} from its page cache: {e}",
                device.map().file().display(),
                job.file_offset,
                job.file_offset + job.len as u64
            );
        }
    }
    job.completion.finish(result);
}

impl Drop for RawWriter {
    fn drop(&mut self) {
        // Closing the channel ends the workers once queued jobs are done.
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::resolve::{test_map, Extent};
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// A writer over a plain file standing in for the device: extents at
    /// device bytes 8192..12288 and 20480..21504.
    fn writer_over_plain_file(dir: &Path) -> (RawWriter, std::path::PathBuf) {
        let dev = dir.join("fake-device");
        std::fs::write(&dev, vec![0xEEu8; 32768]).unwrap();
        let map = test_map(
            &dir.join("bitmap"),
            &dev,
            1024,
            5000,
            vec![
                Extent {
                    file_offset: 0,
                    device_offset: 8192,
                    len: 4096,
                },
                Extent {
                    file_offset: 4096,
                    device_offset: 20480,
                    len: 1024,
                },
            ],
        );
        let fd = File::options().read(true).write(true).open(&dev).unwrap();
        (RawWriter::start(fd, map, 2, None).unwrap(), dev)
    }

    #[test]
    fn writes_land_at_mapped_sectors_and_tail_is_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let (w, dev) = writer_over_plain_file(dir.path());
        w.submit_and_wait(0, &[0xA1; 4096]).unwrap();
        w.submit_and_wait(4096, &[0xB2; 4096]).unwrap();
        let d = std::fs::read(&dev).unwrap();
        assert!(d[8192..12288].iter().all(|&b| b == 0xA1));
        assert!(d[20480..20480 + 904].iter().all(|&b| b == 0xB2));
        assert!(d[20480 + 904..21504].iter().all(|&b| b == 0));
        assert!(d[..8192].iter().all(|&b| b == 0xEE));
        assert!(d[12288..20480].iter().all(|&b| b == 0xEE));
        assert!(d[21504..].iter().all(|&b| b == 0xEE));
        assert_eq!(
            w.read_direct(4090, 10).unwrap(),
            [0xA1, 0xA1, 0xA1, 0xA1, 0xA1, 0xA1, 0xB2, 0xB2, 0xB2, 0xB2]
        );
    }

    #[test]
    fn a_halted_writer_writes_nothing_and_pages_wait_for_the_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let (w, dev) = writer_over_plain_file(dir.path());
        let gate = HaltGate::new();
        assert!(w.halt(gate.clone()));
        assert!(!w.halt(HaltGate::new()), "halted twice");
        let done = w.submit(0, &[0xA1; 4096]);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!done.is_done(), "completed before the outcome was decided");
        gate.decide(Ok(()));
        assert!(done.wait().is_empty());
        let failed = {
            let gate = HaltGate::new();
            let dir2 = tempfile::tempdir().unwrap();
            let (w2, _) = writer_over_plain_file(dir2.path());
            w2.halt(gate.clone());
            gate.decide(Err("not recorded".into()));
            w2.submit(0, &[0xB2; 4096]).wait()
        };
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].errno, libc::ESHUTDOWN);
        assert!(std::fs::read(&dev).unwrap().iter().all(|&b| b == 0xEE));
        assert!(w.device.write_at(8192, &[0u8; 512]).is_err());
    }

    #[test]
    fn writer_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RawWriter>();
    }

    #[test]
    fn bad_submissions_fail_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let (w, dev) = writer_over_plain_file(dir.path());
        for (off, len) in [(100u64, 10usize), (8192, 10), (0, 0), (0, 4097)] {
            let failures = w.submit(off, &vec![1u8; len]).wait();
            assert_eq!(failures.len(), 1, "offset {off} len {len}");
            assert_eq!(failures[0].errno, libc::EINVAL);
        }
        assert!(w.read_direct(4990, 20).is_err());
        assert!(std::fs::read(&dev).unwrap().iter().all(|&b| b == 0xEE));
    }

    #[test]
    #[should_panic(expected = "outside the verified map")]
    fn confined_write_panics_outside_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _dev) = writer_over_plain_file(dir.path());
        let _ = w.device.write_at(0, &[0u8; 512]);
    }

    #[test]
    fn an_out_of_map_job_fails_its_completion_and_the_thread_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let (w, dev) = writer_over_plain_file(dir.path());
        let completion = Completion::new(1);
        let job = Job {
            run_index: 0,
            file_offset: 0,
            device_offset: 0,
            len: 1024,
            buf: AlignedBuf::new(1024),
            completion: completion.clone(),
        };
        w.jobs.as_ref().unwrap().send(job).unwrap();
        let failures = completion.wait();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].errno, libc::EFAULT);
        assert!(std::fs::read(&dev).unwrap().iter().all(|&b| b == 0xEE));
        // Both threads still serve.
        for _ in 0..4 {
            w.submit_and_wait(0, &[0x11; 4096]).unwrap();
        }
    }

    #[test]
    fn confined_write_refuses_straddling_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (w, dev) = writer_over_plain_file(dir.path());
        for (off, len) in [
            (0u64, 512usize),
            (12288 - 512, 1024),
            (21504, 512),
            (8192 + 3584, 1024),
        ] {
            let r = catch_unwind(AssertUnwindSafe(|| {
                w.device.write_at(off, &vec![0x55; len])
            }));
            assert!(r.is_err(), "write at {off} len {len} was not stopped");
        }
        assert!(std::fs::read(&dev).unwrap().iter().all(|&b| b == 0xEE));
    }
}
