//! A verified block workload on an array image: threads write 4 KiB blocks
//! that carry their own address, a generation and a CRC32C, read them back,
//! and report every I/O error and every block that did not hold what was
//! last written to it.
//!
//! Each thread owns the 64 KiB stripes `s` with `s % threads == thread`, so
//! the newest generation of every block is well defined. A write is
//! *acknowledged* when its `pwrite` returned, or (with
//! [`Spec::ack_after_fsync`]) only once an `fsync` after it returned or when
//! it was an O_DSYNC write ([`Spec::dsync_percent`]); writes not yet
//! acknowledged when a thread stops are reported as pending.

#![allow(dead_code)] // each test binary uses a different subset

use super::io::AlignedVec;
use super::rng::Rng;
use std::collections::HashMap;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

pub const BLOCK: u64 = 4096;
/// Blocks per stripe (the unit of ownership).
pub const STRIPE_BLOCKS: u64 = 16;
const MAGIC: &[u8; 8] = b"MDFTBLK1";
const CRC_AT: usize = BLOCK as usize - 4;

/// CRC32C (Castagnoli), bytewise with a table.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Fills `buf` (one block) with the block written at array `offset` in
/// `generation`: header, pseudo-random payload, CRC32C of the rest at the end.
pub fn fill_block(buf: &mut [u8], offset: u64, generation: u64) {
    let buf = &mut buf[..BLOCK as usize];
    buf[..8].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(&offset.to_le_bytes());
    buf[16..24].copy_from_slice(&generation.to_le_bytes());
    let mut rng = Rng((offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ generation) | 1);
    rng.fill(&mut buf[24..CRC_AT]);
    let crc = crc32c(&buf[..CRC_AT]);
    buf[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
}

pub fn block(offset: u64, generation: u64) -> Vec<u8> {
    let mut v = vec![0u8; BLOCK as usize];
    fill_block(&mut v, offset, generation);
    v
}

/// What a block read back holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Never written (all zeros).
    Zero,
    /// A whole, self-consistent block.
    Block { offset: u64, generation: u64 },
    /// Anything else: a torn, foreign or corrupt block.
    Garbage(String),
}

pub fn decode(buf: &[u8]) -> Found {
    let buf = &buf[..BLOCK as usize];
    if buf.iter().all(|&b| b == 0) {
        return Found::Zero;
    }
    if &buf[..8] != MAGIC {
        return Found::Garbage(format!("no magic (starts {:02x?})", &buf[..8]));
    }
    let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().expect("8 bytes"));
    let stored = u32::from_le_bytes(buf[CRC_AT..].try_into().expect("4 bytes"));
    let computed = crc32c(&buf[..CRC_AT]);
    let (offset, generation) = (u64_at(8), u64_at(16));
    if stored != computed {
        return Found::Garbage(format!(
            "checksum {stored:08x}, computed {computed:08x} (block says offset {offset}, \
             generation {generation})"
        ));
    }
    Found::Block { offset, generation }
}

/// What a workload does.
#[derive(Debug, Clone)]
pub struct Spec {
    pub image: PathBuf,
    /// Array bytes the workload uses (64 KiB aligned).
    pub region: Range<u64>,
    pub threads: u64,
    /// Blocks per write: 1 up to this (within one stripe).
    pub max_run: u64,
    /// Writes between fsyncs.
    pub fsync_every: u64,
    /// Acknowledge a write only once an fsync after it returned (or at
    /// once if it was an O_DSYNC write).
    pub ack_after_fsync: bool,
    /// Percent of the writes made through an O_DIRECT|O_DSYNC descriptor.
    pub dsync_percent: u64,
    /// Read every write back, and now and then an older block.
    pub verify_reads: bool,
    /// Generations start above this (give each run a larger base).
    pub generation_base: u64,
    pub seed: u64,
    /// Blocks already written (offset → generation), for read checks.
    pub known: Arc<HashMap<u64, u64>>,
    /// Sleep between operations (lighter load); zero for none.
    pub pause: Duration,
}

impl Spec {
    pub fn new(image: &Path, region: Range<u64>) -> Spec {
        Spec {
            image: image.to_owned(),
            region,
            threads: 4,
            max_run: 8,
            fsync_every: 8,
            ack_after_fsync: false,
            dsync_percent: 0,
            verify_reads: true,
            generation_base: 0,
            seed: 0x5eed,
            known: Arc::default(),
            pause: Duration::ZERO,
        }
    }
}

/// What a workload did and saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Acknowledged writes: block offset → newest acknowledged generation.
    pub acked: HashMap<u64, u64>,
    /// Writes issued but not acknowledged when the threads stopped, newer
    /// than the block's acknowledged one: block offset → their generations.
    pub pending: HashMap<u64, Vec<u64>>,
    pub errors: Vec<String>,
    pub mismatches: Vec<String>,
    pub writes: u64,
    pub reads: u64,
    pub fsyncs: u64,
    /// Writes made with O_DSYNC.
    pub dsync_writes: u64,
}

/// Records generation `g` of block `o` as acknowledged (the newest wins:
/// a thread's generations only grow).
fn ack(acked: &mut HashMap<u64, u64>, o: u64, g: u64) {
    let e = acked.entry(o).or_insert(g);
    *e = (*e).max(g);
}

impl Report {
    /// Panics unless there was no I/O error and no wrong data, and some writes.
    pub fn assert_clean(&self, what: &str) {
        assert!(
            self.errors.is_empty() && self.mismatches.is_empty(),
            "{what}: the workload saw {} I/O error(s) and {} wrong block(s):\n{}\n{}",
            self.errors.len(),
            self.mismatches.len(),
            self.errors
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            self.mismatches
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
        );
        assert!(self.writes > 0, "{what}: the workload wrote nothing");
    }
}

/// A running workload; [`Workload::stop`] ends it and returns the report.
pub struct Workload {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Report>>,
}

impl Workload {
    pub fn start(spec: &Spec) -> Workload {
        assert!(spec.region.start.is_multiple_of(STRIPE_BLOCKS * BLOCK));
        assert!(spec.max_run >= 1 && spec.max_run <= STRIPE_BLOCKS);
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let mut seeds = Rng(spec.seed | 1);
        let threads = (0..spec.threads)
            .map(|t| {
                let spec = spec.clone();
                let (stop, writes) = (stop.clone(), writes.clone());
                let seed = seeds.next();
                std::thread::Builder::new()
                    .name(format!("workload-{t}"))
                    .spawn(move || run_thread(&spec, t, seed, &stop, &writes))
                    .expect("workload thread")
            })
            .collect();
        Workload {
            stop,
            writes,
            threads,
        }
    }

    /// Writes that have returned so far (all threads).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Waits until `n` more writes have returned (false on timeout, or if
    /// every thread ended).
    pub fn wait_writes(&self, n: u64, timeout: Duration) -> bool {
        let target = self.writes() + n;
        let deadline = std::time::Instant::now() + timeout;
        while self.writes() < target {
            if std::time::Instant::now() > deadline || self.threads.iter().all(|t| t.is_finished())
            {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Report::default();
        for t in self.threads {
            let r = t.join().expect("a workload thread panicked");
            all.acked.extend(r.acked);
            all.dsync_writes += r.dsync_writes;
            for (k, v) in r.pending {
                all.pending.entry(k).or_default().extend(v);
            }
            all.errors.extend(r.errors);
            all.mismatches.extend(r.mismatches);
            all.writes += r.writes;
            all.reads += r.reads;
            all.fsyncs += r.fsyncs;
        }
        all
    }
}

fn run_thread(spec: &Spec, t: u64, seed: u64, stop: &AtomicBool, writes: &AtomicU64) -> Report {
    let mut report = Report::default();
    let open = |flags: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(&spec.image)
    };
    let (f, f_dsync) =
        match open(libc::O_DIRECT).and_then(|f| Ok((f, open(libc::O_DIRECT | libc::O_DSYNC)?))) {
            Ok(f) => f,
            Err(e) => {
                report
                    .errors
                    .push(format!("thread {t}: open {}: {e}", spec.image.display()));
                return report;
            }
        };
    let stripe_bytes = STRIPE_BLOCKS * BLOCK;
    let first_stripe = spec.region.start / stripe_bytes;
    let stripes = (spec.region.end - spec.region.start) / stripe_bytes;
    // This thread's stripes: those ≡ t (mod threads), counted from the region's start.
    let own = (stripes + spec.threads - 1 - t) / spec.threads;
    assert!(own > 0, "region too small for {} threads", spec.threads);
    let mut rng = Rng(seed | 1);
    let mut buf = AlignedVec::zeroed((STRIPE_BLOCKS * BLOCK) as usize);
    let mut check = AlignedVec::zeroed((STRIPE_BLOCKS * BLOCK) as usize);
    // Newest generation written per block (acknowledged or not): what a read sees.
    let mut latest: HashMap<u64, u64> = HashMap::new();
    let mut unacked: Vec<(u64, u64)> = Vec::new();
    let mut generation = spec.generation_base;
    let mut since_sync = 0;
    let expected_of = |latest: &HashMap<u64, u64>, off: u64| -> Option<u64> {
        latest.get(&off).or_else(|| spec.known.get(&off)).copied()
    };
    while !stop.load(Ordering::Relaxed) {
        let stripe = first_stripe + (rng.next() % own) * spec.threads + t;
        let run = 1 + rng.next() % spec.max_run;
        let first = rng.next() % (STRIPE_BLOCKS - run + 1);
        let offset = stripe * stripe_bytes + first * BLOCK;
        let len = (run * BLOCK) as usize;
        let mut gens = Vec::with_capacity(run as usize);
        for b in 0..run {
            generation += 1;
            gens.push((offset + b * BLOCK, generation));
            let at = (b * BLOCK) as usize;
            fill_block(
                &mut buf.as_mut_slice()[at..at + BLOCK as usize],
                offset + b * BLOCK,
                generation,
            );
        }
        let dsync = spec.dsync_percent > 0 && rng.next() % 100 < spec.dsync_percent;
        let fd = if dsync { &f_dsync } else { &f };
        if let Err(e) = fd.write_all_at(&buf.as_slice()[..len], offset) {
            report.errors.push(format!(
                "thread {t}: {}write of {len} bytes at {offset}: {e} (errno {:?})",
                if dsync { "O_DSYNC " } else { "" },
                e.raw_os_error()
            ));
            unacked.extend(gens);
            break;
        }
        report.writes += 1;
        report.dsync_writes += dsync as u64;
        writes.fetch_add(1, Ordering::Relaxed);
        for &(o, g) in &gens {
            latest.insert(o, g);
        }
        if spec.ack_after_fsync && !dsync {
            unacked.extend(gens);
        } else {
            for (o, g) in gens {
                ack(&mut report.acked, o, g);
            }
        }
        since_sync += 1;
        if since_sync >= spec.fsync_every {
            since_sync = 0;
            if let Err(e) = f.sync_all() {
                report.errors.push(format!(
                    "thread {t}: fsync: {e} (errno {:?})",
                    e.raw_os_error()
                ));
                break;
            }
            report.fsyncs += 1;
            for (o, g) in unacked.drain(..) {
                ack(&mut report.acked, o, g);
            }
        }
        if spec.verify_reads {
            // The run just written, then an older block of this thread's.
            let mut targets = vec![(offset, run)];
            if let Some((&o, _)) = latest.iter().nth((rng.next() % 8) as usize) {
                targets.push((o, 1));
            }
            for (o, n) in targets {
                let l = (n * BLOCK) as usize;
                if let Err(e) = f.read_exact_at(&mut check.as_mut_slice()[..l], o) {
                    report.errors.push(format!(
                        "thread {t}: read of {l} bytes at {o}: {e} (errno {:?})",
                        e.raw_os_error()
                    ));
                    break;
                }
                report.reads += 1;
                for b in 0..n {
                    let bo = o + b * BLOCK;
                    let at = (b * BLOCK) as usize;
                    let got = &check.as_slice()[at..at + BLOCK as usize];
                    let want = expected_of(&latest, bo);
                    let ok = match want {
                        Some(g) => got == block(bo, g).as_slice(),
                        None => decode(got) == Found::Zero,
                    };
                    if !ok {
                        report.mismatches.push(format!(
                            "thread {t}: block at {bo} should hold generation {want:?}, holds {:?}",
                            decode(got)
                        ));
                    }
                }
            }
            if !report.errors.is_empty() {
                break;
            }
        }
        if !spec.pause.is_zero() {
            std::thread::sleep(spec.pause);
        }
    }
    for (o, g) in unacked {
        if report.acked.get(&o).is_none_or(|&a| a < g) {
            report.pending.entry(o).or_default().push(g);
        }
    }
    report
}

/// Reads `range` of `image` (O_DIRECT, 1 MiB at a time) and decodes every block.
pub fn read_blocks(image: &Path, range: Range<u64>) -> std::io::Result<Vec<(u64, Found)>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(image)?;
    let step = 1u64 << 20;
    let mut buf = AlignedVec::zeroed(step as usize);
    let mut out = Vec::with_capacity(((range.end - range.start) / BLOCK) as usize);
    let mut pos = range.start;
    while pos < range.end {
        let n = (range.end - pos).min(step) as usize;
        f.read_exact_at(&mut buf.as_mut_slice()[..n], pos)?;
        for b in (0..n).step_by(BLOCK as usize) {
            out.push((
                pos + b as u64,
                decode(&buf.as_slice()[b..b + BLOCK as usize]),
            ));
        }
        pos += n as u64;
    }
    Ok(out)
}

/// Checks that every block of `range` holds what `acked` says (or zeros
/// where nothing was written); returns the differences.
pub fn verify_acked(image: &Path, range: Range<u64>, acked: &HashMap<u64, u64>) -> Vec<String> {
    let blocks = match read_blocks(image, range) {
        Ok(b) => b,
        Err(e) => return vec![format!("reading {}: {e}", image.display())],
    };
    let mut bad = Vec::new();
    for (off, found) in blocks {
        let ok = match (acked.get(&off), &found) {
            (None, Found::Zero) => true,
            (Some(&g), Found::Block { offset, generation }) => *offset == off && *generation == g,
            _ => false,
        };
        if !ok {
            bad.push(format!(
                "block at {off}: expected {:?}, found {found:?}",
                acked.get(&off)
            ));
        }
    }
    bad
}
