//! The kernel-md rig (`../shared/kernel-md-rig`) from the test suite: Linux md and the real
//! mdadm booted under qemu, so what mdfuse writes is judged by md itself.
//!
//! - [`ensure_rig`] prepares the rig once per test binary (`scripts/kmd-rig-setup.sh`, which
//!   installs from Debian's packages on a fresh machine and is a no-op when the cache is ready).
//! - [`serial`] serialises the tests that use it: each boot takes one of the machine's cores
//!   for ~10 s under TCG, and the loop devices and mounts of the tests add up.
//! - [`verify_foreign`] runs `verify-foreign.sh` and parses what md said ([`VerifyRun`]).
//! - The data pattern of the rig's `lib/pattern.py` ([`pattern`]), so a test needs no Python
//!   of its own.
//! - The fixture sets Linux md made (`../shared/fixtures/kernel-md`): their [`Manifest`] and
//!   their legs ([`fixture_legs`]).

#![allow(dead_code)] // each test binary uses a different subset

use super::bitmap::parse_ranges;
use super::mdfuse::Legs;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub const SECTOR: u64 = 512;

/// `../shared/kernel-md-rig` beside the project (CI clones it there).
pub fn rig_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/kernel-md-rig"
    ))
}

/// `../shared/fixtures/kernel-md`: one directory per fixture set, made by Linux md.
/// `KMD_FIXTURES_DIR` points elsewhere (e.g. sets made with the rig's `make-fixtures.sh`).
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KMD_FIXTURES_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/kernel-md"
    ))
}

/// The fixture set `name` (a directory of [`fixtures_dir`]).
pub fn fixture_set(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// Decompresses a fixture set's legs (`leg0.img.zst`, ...) into `dir` (writable copies).
pub fn fixture_legs(set: &Path, dir: &Path) -> Legs {
    let paths = (0..)
        .map(|i| {
            (
                set.join(format!("leg{i}.img.zst")),
                dir.join(format!("leg{i}.img")),
            )
        })
        .take_while(|(zst, _)| zst.exists())
        .map(|(zst, leg)| {
            unzstd(&zst, &leg);
            leg
        })
        .collect();
    Legs::from_paths(paths)
}

/// Makes the rig ready, once per test binary; panics (failing the test) with the setup's
/// output when it cannot be made ready: these tests are meant to run in CI, not to skip.
pub fn ensure_rig() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let script = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/kmd-rig-setup.sh"
        ));
        let t0 = Instant::now();
        let out = Command::new(&script)
            .env("KMD_RIG", rig_dir())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "kmd rig setup ({:.1} s):\n{}",
            t0.elapsed().as_secs_f64(),
            text.trim_end()
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}):\n{text}",
                script.display(),
                out.status
            ))
        }
    });
    if let Err(e) = ready {
        panic!("the kernel-md rig is not ready: {e}");
    }
}

/// One test at a time through the rig (and its loop devices and mounts). Poison-tolerant:
/// a failed test must not fail the ones after it.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one `verify-foreign.sh` run reported.
#[derive(Debug)]
pub struct VerifyRun {
    /// verify-foreign's exit status: 0 assembled (and sha matched with `-x`), 1 not, 2+ rig.
    pub rc: i32,
    /// console.log, summary.txt, md0.bitmap.after, leg*.img.after (with `keep_legs`).
    pub dir: PathBuf,
    /// Removes `dir` on drop (None once kept).
    guard: Option<tempfile::TempDir>,
    pub console: String,
    pub summary: String,
    pub wall: Duration,
}

impl VerifyRun {
    /// The run whose output is in `out` (removed on drop, or kept with
    /// KMD_KEEP_RUNS=1 as evidence: console logs), described on stderr.
    fn finish(
        what: &str,
        out: tempfile::TempDir,
        output: &std::process::Output,
        console: String,
        summary: String,
        wall: Duration,
    ) -> VerifyRun {
        let dir = out.path().to_path_buf();
        let guard = if std::env::var_os("KMD_KEEP_RUNS").is_some() {
            eprintln!("{what} output kept in {}", out.keep().display());
            None
        } else {
            Some(out)
        };
        let run = VerifyRun {
            rc: output.status.code().unwrap_or(-1),
            dir,
            guard,
            console,
            summary,
            wall,
        };
        eprintln!("{}", run.describe());
        run
    }

    /// The last `KMD-VAL key=...` the guest printed.
    pub fn val(&self, key: &str) -> Option<String> {
        let prefix = format!("KMD-VAL {key}=");
        self.console
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
    }

    /// The output of a guest section (`KMD-SECTION name` .. `KMD-ENDSECTION name rc=N`),
    /// without the command line.
    pub fn section(&self, name: &str) -> Option<String> {
        let begin = format!("KMD-SECTION {name}");
        let end = format!("KMD-ENDSECTION {name} ");
        let mut inside = false;
        let mut found = false;
        let mut text = String::new();
        for line in self.console.lines() {
            if line == begin {
                inside = true;
                found = true;
                text.clear();
            } else if inside && line.starts_with(&end) {
                inside = false;
            } else if inside && !line.starts_with("KMD-CMD ") {
                text.push_str(line);
                text.push('\n');
            }
        }
        found.then_some(text)
    }

    /// `mdadm -E` / `-X` fields of a section (see [`mdadm_fields`]).
    pub fn section_fields(&self, name: &str) -> BTreeMap<String, String> {
        mdadm_fields(&self.section(name).unwrap_or_default())
    }

    /// The kernel's md lines (the `dmesg-md` section, printed after a successful run).
    pub fn dmesg_md(&self) -> String {
        self.section("dmesg-md").unwrap_or_default()
    }

    pub fn leg_after(&self, i: usize) -> PathBuf {
        self.dir.join(format!("leg{i}.img.after"))
    }

    pub fn bitmap_after(&self) -> PathBuf {
        self.dir.join("md0.bitmap.after")
    }

    /// The part of a boot about one array: the console lines after `KMD-PART name` up to the
    /// next `KMD-PART` (or the end), as if a run of its own; `dir` is where that array's
    /// `leg*.img.after` are. `rc` is the boot's.
    pub fn part(&self, name: &str, dir: &Path) -> VerifyRun {
        let begin = format!("KMD-PART {name}");
        let console: String = self
            .console
            .lines()
            .skip_while(|l| *l != begin)
            .skip(1)
            .take_while(|l| !l.starts_with("KMD-PART ") && !l.starts_with("KMD-END "))
            .map(|l| format!("{l}\n"))
            .collect();
        let vals: Vec<&str> = console
            .lines()
            .filter(|l| l.starts_with("KMD-VAL "))
            .collect();
        VerifyRun {
            rc: self.rc,
            dir: dir.to_path_buf(),
            guard: None,
            summary: format!("part {name} of {}\n{}", self.summary, vals.join("\n")),
            console,
            wall: self.wall,
        }
    }

    /// For failure messages: the summary and where the full console log was kept.
    pub fn describe(&self) -> String {
        format!(
            "verify-foreign rc={} wall={:.1}s\n{}",
            self.rc,
            self.wall.as_secs_f64(),
            self.summary
        )
    }

    /// Keeps the output directory (for a failed test's post-mortem); returns its path.
    pub fn keep(mut self) -> PathBuf {
        if let Some(g) = self.guard.take() {
            let _ = g.keep();
        }
        self.dir.clone()
    }
}

/// `verify-foreign.sh [-x SHA] [-k] [-e K=V]... LEGS... BITMAP`: inputs are copied, never
/// modified. `env` entries are `KEY=VAL` for the guest (e.g. `RE_ADD=1`).
pub fn verify_foreign(
    legs: &[&Path],
    bitmap: &Path,
    expected_sha: Option<&str>,
    keep_legs: bool,
    env: &[&str],
) -> VerifyRun {
    ensure_rig();
    let out = tempfile::Builder::new()
        .prefix("kmd-verify")
        .tempdir()
        .expect("tempdir for verify-foreign output");
    let mut cmd = Command::new(rig_dir().join("verify-foreign.sh"));
    cmd.arg("-o").arg(out.path());
    if let Some(sha) = expected_sha {
        cmd.arg("-x").arg(sha);
    }
    if keep_legs {
        cmd.arg("-k");
    }
    for kv in env {
        cmd.arg("-e").arg(kv);
    }
    cmd.args(legs).arg(bitmap);
    let t0 = Instant::now();
    let output = cmd.output().expect("run verify-foreign.sh");
    let wall = t0.elapsed();
    let console = std::fs::read_to_string(out.path().join("console.log"))
        .map(|s| s.replace('\r', ""))
        .unwrap_or_default();
    let summary = std::fs::read_to_string(out.path().join("summary.txt")).unwrap_or_else(|_| {
        format!(
            "(no summary) stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    VerifyRun::finish("verify-foreign", out, &output, console, summary, wall)
}

/// A guest scenario kept with the tests (`tests/kmd/NAME.sh`).
pub fn scenario(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kmd")).join(format!("{name}.sh"))
}

/// `run.sh -t TIMEOUT -l LOG [-e K=V]... SCRIPT NAME=IMAGE...`: one boot of the rig on the
/// test's own guest scenario. The images are changed in place (pass copies). The console is
/// parsed as [`verify_foreign`]'s is; [`VerifyRun::part`] splits a boot over several arrays.
pub fn run_scenario(
    script: &Path,
    disks: &[(&str, &Path)],
    env: &[&str],
    timeout: Duration,
) -> VerifyRun {
    ensure_rig();
    let out = tempfile::Builder::new()
        .prefix("kmd-run")
        .tempdir()
        .expect("tempdir for the run's console log");
    let log = out.path().join("console.log");
    let mut cmd = Command::new(rig_dir().join("run.sh"));
    cmd.arg("-t").arg(timeout.as_secs().to_string());
    cmd.arg("-l").arg(&log);
    for kv in env {
        cmd.arg("-e").arg(kv);
    }
    cmd.arg(script);
    for (name, image) in disks {
        let mut spec = std::ffi::OsString::from(format!("{name}="));
        spec.push(image.as_os_str());
        cmd.arg(spec);
    }
    let t0 = Instant::now();
    let output = cmd.output().expect("run run.sh");
    let wall = t0.elapsed();
    let console = std::fs::read_to_string(&log)
        .map(|s| s.replace('\r', ""))
        .unwrap_or_default();
    let summary = format!(
        "run.sh {} rc={:?} {}\nstderr: {}",
        script.display(),
        output.status.code(),
        console
            .lines()
            .filter(|l| l.starts_with("KMD-HOST") || l.starts_with("KMD-FAIL"))
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
    VerifyRun::finish("rig run", out, &output, console, summary, wall)
}

/// `key : value` lines of mdadm's `--examine` / `--examine-bitmap` / `--detail` layouts
/// (and mdfuse's renderings of them), keys trimmed, values trimmed at the end.
pub fn mdadm_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(" : ")?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The rig's data pattern (`lib/pattern.py`): array sector `s` written with tag `t` holds LE
/// u64 `(t << 48) | s` in bytes 0..8 and the byte `(s & 0xff) ^ (t & 0xff)` in 8..512.
pub fn pattern(tag: u16, first_sector: u64, sectors: u64) -> Vec<u8> {
    let mut out = vec![0u8; (sectors * SECTOR) as usize];
    for (i, sector) in out.chunks_exact_mut(SECTOR as usize).enumerate() {
        let s = first_sector + i as u64;
        sector[..8].copy_from_slice(&((u64::from(tag) << 48) | s).to_le_bytes());
        sector[8..].fill((s as u8) ^ (tag as u8));
    }
    out
}

/// The tag of a pattern sector at array sector `s`, if it is one.
pub fn pattern_tag(sector: &[u8], s: u64) -> Option<u16> {
    let word = u64::from_le_bytes(sector[..8].try_into().ok()?);
    let tag = (word >> 48) as u16;
    let ok =
        word & ((1 << 48) - 1) == s && sector[8..].iter().all(|&b| b == (s as u8) ^ (tag as u8));
    ok.then_some(tag)
}

/// A fixture set's MANIFEST, the parts the tests check against.
#[derive(Debug)]
pub struct Manifest {
    pub name: String,
    pub text: String,
    /// `md0 as read by the guest kernel (sha256sum /dev/md0, while running): SHA`
    pub md0_sha: String,
    /// `set in md0.bitmap (...): LIST`
    pub dirty: Vec<u64>,
    pub data_offset_sectors: u64,
    pub array_bytes: u64,
}

impl Manifest {
    pub fn load(set_dir: &Path) -> Manifest {
        let text = std::fs::read_to_string(set_dir.join("MANIFEST")).expect("read MANIFEST");
        let after = |prefix: &str| -> String {
            text.lines()
                .find_map(|l| l.trim_start().strip_prefix(prefix))
                .and_then(|rest| rest.rsplit_once(':').map(|(_, v)| v).or(Some(rest)))
                .unwrap_or_else(|| panic!("MANIFEST of {}: no `{prefix}` line", set_dir.display()))
                .trim()
                .to_string()
        };
        let md0_sha = after("md0 as read by the guest kernel");
        let dirty = parse_ranges(&after("set in md0.bitmap"));
        let first_number = |prefix: &str| -> u64 {
            text.lines()
                .find_map(|l| l.trim_start().strip_prefix(prefix))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("MANIFEST: no `{prefix}` number"))
        };
        Manifest {
            name: set_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            md0_sha,
            dirty,
            data_offset_sectors: first_number("data_offset"),
            array_bytes: first_number("array size"),
            text,
        }
    }

    /// The indented body of a `== title...` section whose title starts with `title`.
    pub fn section(&self, title: &str) -> Option<String> {
        let mut lines = self.text.lines();
        lines.find(|l| l.starts_with(&format!("== {title}")))?;
        Some(
            lines
                .take_while(|l| !l.starts_with("== "))
                .map(|l| l.strip_prefix("  ").unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    /// The value after `key ` on a line of the MANIFEST (`uuid`, `events`, `chunksize`..).
    pub fn value(&self, key: &str) -> String {
        self.text
            .lines()
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix(key)
                    .filter(|rest| rest.starts_with(' '))
                    .map(|rest| rest.trim().to_string())
            })
            .unwrap_or_else(|| panic!("MANIFEST of {}: no {key}", self.name))
    }

    /// True when the set left a leg failed/removed (md starts it degraded).
    pub fn is_degraded(&self) -> bool {
        self.text.contains("--fail ")
    }
}

/// Every fixture set directory (those with a MANIFEST), sorted.
pub fn fixture_sets() -> Vec<PathBuf> {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("read ../shared/fixtures/kernel-md")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("MANIFEST").is_file())
        .collect();
    sets.sort();
    sets
}

/// `zstd -d -c SRC > DST`.
pub fn unzstd(src: &Path, dst: &Path) {
    let out = Command::new("zstd")
        .args(["-q", "-d", "-f", "-o"])
        .arg(dst)
        .arg(src)
        .output()
        .expect("run zstd");
    assert!(
        out.status.success(),
        "zstd -d {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
