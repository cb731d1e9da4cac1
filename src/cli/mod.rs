//! Command-line parsing and the commands themselves. Each command is a thin
//! shell over the library: parse, call, report.

mod alert;
mod assets;
mod detach;
mod events;
pub mod helper;
mod metrics;
mod monitor;
mod panic_stop;
mod preflight;
mod sandbox;
mod size;
mod status;

use clap::{Args, Parser, Subcommand};
use mdfuse::array::{
    self, AssembleOptions, BitmapAttachOptions, BitmapIo, CreateOptions, RunOptions, RunningArray,
};
use mdfuse::format::superblock::{Superblock, Unverified};
use mdfuse::io::leg::{IoMode, Leg};
use mdfuse::io::mounts::mounts;
use mdfuse::raid1::EngineOptions;
use mdfuse::report::examine::render_examine;
use mdfuse::report::mdstat::escape_name;
use mdfuse::transport::serve::{self, run_file, ServeOptions};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "mdfuse",
    version,
    about = "A userspace RAID1 served through FUSE, with md-compatible legs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a RAID1 array: write md v1.x superblocks (1.2 by default) to every leg.
    #[command(
        after_help = "Examples:\n  mdfuse create --name data /srv/leg0.img /srv/leg1.img\n  mdfuse create --name data --bitmap /var/lib/mdfuse/data.bitmap /dev/sdb /dev/sdc"
    )]
    Create(CreateArgs),
    /// Print the md superblock of each leg, like `mdadm --examine`.
    #[command(
        after_help = "Examples:\n  mdfuse examine /srv/leg0.img /srv/leg1.img\n  mdfuse examine --json /srv/leg0.img"
    )]
    Examine {
        #[arg(required = true)]
        legs: Vec<PathBuf>,
        /// Print JSON (fields in docs/json.md) instead of mdadm's text.
        #[arg(long)]
        json: bool,
    },
    /// Print a bitmap file's header and dirty chunks, like `mdadm --examine-bitmap`.
    #[command(
        after_help = "Examples:\n  mdfuse examine-bitmap --chunks /var/lib/mdfuse/data.bitmap\n  mdfuse examine-bitmap --json /var/lib/mdfuse/data.bitmap"
    )]
    ExamineBitmap {
        file: PathBuf,
        /// Also list the dirty chunks.
        #[arg(long)]
        chunks: bool,
        /// Print JSON (fields in docs/json.md) instead of mdadm's text.
        #[arg(long)]
        json: bool,
    },
    /// Assemble an array from its legs and serve it at MOUNTPOINT as array.img.
    #[command(
        after_help = "Examples:\n  mdfuse mount /srv/leg0.img /srv/leg1.img /mnt/data\n  mdfuse mount --bitmap /var/lib/mdfuse/data.bitmap --run /srv/leg0.img /mnt/data   (degraded)\n  mount -t mdfuse -o legs=/srv/leg0.img:/srv/leg1.img mirror /mnt/data   (through mount.mdfuse)"
    )]
    Mount(MountArgs),
    /// Unmount an array and wait until it has stopped cleanly.
    #[command(after_help = "Example:\n  mdfuse stop /mnt/data")]
    Stop {
        mountpoint: PathBuf,
        /// Seconds to wait for the array to stop.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Fail, remove, re-add or add a leg of a running array (md's words),
    /// through its md/ control files.
    #[command(
        after_help = "Examples:\n  mdfuse manage /mnt/data --fail /srv/leg1.img\n  mdfuse manage /mnt/data --remove /srv/leg1.img\n  mdfuse manage /mnt/data --re-add /srv/leg1.img"
    )]
    Manage(ManageArgs),
    /// Print a running array's state, like `mdadm --detail`.
    #[command(
        after_help = "Examples:\n  mdfuse detail /mnt/data\n  mdfuse detail --json /mnt/data"
    )]
    Detail {
        mountpoint: PathBuf,
        /// Print JSON (fields in docs/json.md) instead of mdadm's text.
        #[arg(long)]
        json: bool,
    },
    /// Wait until a resync, recovery, check or repair has ended.
    #[command(
        after_help = "Example:\n  mdfuse manage /mnt/data --re-add /srv/leg1.img && mdfuse wait /mnt/data"
    )]
    Wait { mountpoint: PathBuf },
    /// Make a sandbox array in DIR (two leg files) and mount it at DIR/mnt.
    #[command(
        after_help = "Examples:\n  mdfuse sandbox /tmp/mdfuse-sandbox\n  mdfuse sandbox --remove /tmp/mdfuse-sandbox"
    )]
    Sandbox(sandbox::SandboxArgs),
    /// Report md's events for running arrays, in mdadm --monitor's words
    /// (Fail, DegradedArray, RebuildStarted, Rebuild20..80, RebuildFinished,
    /// SpareActive, NewArray, DeviceDisappeared, TestMessage), on standard
    /// output and to --program.
    #[command(
        after_help = "Examples:\n  mdfuse monitor --oneshot                       (cron: exit 1 when an array is degraded)\n  mdfuse monitor --daemonise --program /usr/local/sbin/page-me --pid-file /run/mdfuse-monitor.pid"
    )]
    Monitor(monitor::MonitorArgs),
    /// Print the running arrays' state as Prometheus metrics (text format,
    /// for node_exporter's textfile collector); every mdfuse mount when none
    /// is named.
    #[command(
        after_help = "Examples:\n  mdfuse metrics\n  mdfuse metrics --output /var/lib/prometheus/node-exporter/mdfuse.prom /mnt/data"
    )]
    Metrics {
        /// Write the metrics to FILE (atomically: a new file renamed over
        /// it) instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        mountpoints: Vec<PathBuf>,
    },
    /// Write the man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenAssets { dir: PathBuf },
}

#[derive(Args)]
struct CreateArgs {
    /// The array's name (stored in the superblocks).
    #[arg(long, default_value = "mdfuse")]
    name: String,
    /// Array size (bytes, or with K/M/G/T); default: all the smallest leg offers.
    #[arg(long, value_parser = size::parse_size)]
    size: Option<u64>,
    /// Overwrite legs that carry an md superblock or a filesystem (and an
    /// existing bitmap file).
    #[arg(long)]
    force: bool,
    /// Create a write-intent bitmap in this host file (md's bitmap-file format).
    #[arg(long)]
    bitmap: Option<PathBuf>,
    /// Bytes of array per bitmap bit (default: 1M, doubled until the
    /// bitmap has at most 2^20 chunks).
    #[arg(long, value_parser = size::parse_size, requires = "bitmap")]
    bitmap_chunk: Option<u64>,
    /// Seconds a chunk stays idle before its bit is cleared (md's
    /// daemon_sleep: 1 or more, as md reads it).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    delay: u32,
    /// Metadata version, as mdadm's --metadata: 1.2 (the superblock 4 KiB
    /// from the start), 1.1 (at the start) or 1.0 (at the end, the data
    /// from sector 0, so one leg reads as a plain filesystem).
    #[arg(long, short = 'e', default_value = "1.2")]
    metadata: mdfuse::format::superblock::MetadataVersion,
    /// The legs: regular files, block devices or NBD URIs (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH); two or more.
    #[arg(required = true)]
    legs: Vec<PathBuf>,
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("op").required(true).multiple(false))]
struct ManageArgs {
    mountpoint: PathBuf,
    /// Mark a leg faulty: the array goes on degraded without it.
    #[arg(long, value_name = "LEG", group = "op")]
    fail: Option<PathBuf>,
    /// Take a faulty leg out of the array (its file is released).
    #[arg(long, value_name = "LEG", group = "op")]
    remove: Option<PathBuf>,
    /// Put a former member back; only the bitmap's dirty chunks are copied
    /// when md's rule allows, else everything.
    #[arg(long = "re-add", value_name = "LEG", group = "op")]
    re_add: Option<PathBuf>,
    /// Add a leg (a former member is re-added; a new one fully recovered).
    #[arg(long, value_name = "LEG", group = "op")]
    add: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct MountArgs {
    /// Stay in the foreground (log to stderr) instead of detaching.
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Serve read-only.
    #[arg(long)]
    ro: bool,
    /// Let other users reach the mount: they read mdstat and md/; array.img
    /// is theirs only as its mode says (--image-mode, or chmod/chown).
    #[arg(long)]
    allow_other: bool,
    /// array.img's mode (octal) at mount; chmod and chown then change it
    /// until the array stops. Other users need --allow-other as well.
    #[arg(long, value_parser = parse_mode, default_value = "0600")]
    image_mode: u16,
    /// Use the host's page cache for the legs instead of O_DIRECT.
    #[arg(long)]
    buffered: bool,
    /// Start even with legs missing or stale (degraded), like mdadm --run.
    #[arg(long)]
    run: bool,
    /// When the legs' histories diverged (each was written while the other
    /// was away), keep this leg's; the others are left out and need a full
    /// recovery.
    #[arg(long, value_name = "LEG")]
    force_from: Option<PathBuf>,
    /// Send every buffered write to the legs at once, one request each,
    /// instead of letting them gather in the kernel's page cache (the FUSE
    /// writeback cache, the default: fsync and close still reach every
    /// leg's stable storage). Much slower for small buffered writes; its
    /// gain: a buffered write past the image's end fails at once (ENOSPC)
    /// rather than at the next fsync or close.
    #[arg(long)]
    write_through: bool,
    /// FUSE threads (each with its own /dev/fuse fd); also I/O threads per
    /// leg. From 1 to 256.
    #[arg(long, default_value_t = 16, value_parser = parse_threads)]
    threads: usize,
    /// How FUSE requests reach mdfuse: auto (io_uring when the kernel
    /// offers it, else /dev/fuse; the log says which and why), uring
    /// (refuse to start without it), dev-fuse.
    #[arg(long, default_value = "auto", value_name = "auto|uring|dev-fuse")]
    transport: mdfuse::transport::Transport,
    /// Log file when detached (default: /run/mdfuse/<mountpoint>.log).
    #[arg(long)]
    log: Option<PathBuf>,
    /// The array's write-intent bitmap file.
    #[arg(long)]
    bitmap: Option<PathBuf>,
    /// Write the bitmap through ordinary file I/O instead of raw device
    /// writes (for containers without access to the block device).
    #[arg(long, requires = "bitmap")]
    bitmap_file_io: bool,
    /// Accept a bitmap file on a device stack mdfuse cannot follow to check
    /// that it is not inside the array (device-mapper, md, nbd, ...).
    #[arg(long, requires = "bitmap")]
    bitmap_trust_device: bool,
    /// Seconds a chunk stays idle before its bit is cleared (default: the
    /// bitmap file's daemon_sleep); more than 0, at most 2^32-1.
    #[arg(long, requires = "bitmap", value_parser = parse_delay)]
    delay: Option<f64>,
    /// The legs, then the mountpoint.
    #[arg(required = true, num_args = 2..)]
    paths: Vec<PathBuf>,
}

pub fn main() -> i32 {
    // Fault points named in the environment (FAILPOINTS), for the tests.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let foreground_mount = matches!(&cli.command, Command::Mount(m) if m.foreground);
    let mut ready = detach::Ready::from_env();
    init_logging(foreground_mount);
    let result = match cli.command {
        Command::Create(a) => cmd_create(a),
        Command::Examine { legs, json: false } => cmd_examine(&legs),
        Command::Examine { legs, json: true } => status::cmd_examine_json(&legs),
        Command::ExamineBitmap {
            file,
            chunks,
            json: false,
        } => cmd_examine_bitmap(&file, chunks),
        Command::ExamineBitmap {
            file,
            chunks,
            json: true,
        } => status::cmd_examine_bitmap_json(&file, chunks),
        Command::Mount(m) if m.foreground => mount_foreground(&m, &mut ready),
        Command::Mount(m) => return mount_detached(&m),
        Command::Stop {
            mountpoint,
            timeout,
        } => cmd_stop(&mountpoint, timeout),
        Command::Manage(a) => cmd_manage(&a),
        Command::Wait { mountpoint } => cmd_wait(&mountpoint),
        Command::Detail {
            mountpoint,
            json: false,
        } => cmd_detail(&mountpoint),
        Command::Detail {
            mountpoint,
            json: true,
        } => status::cmd_detail_json(&mountpoint),
        Command::Sandbox(a) => sandbox::run(&a),
        Command::Monitor(a) => match monitor::cmd_monitor(&a) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Metrics {
            output,
            mountpoints,
        } => metrics::cmd_metrics(&mountpoints, output.as_deref()),
        Command::GenAssets { dir } => assets::cmd_gen_assets(&dir),
    };
    match result {
        Ok(()) => 0,
        Err(msg) => {
            ready.failed(&msg);
            eprintln!("mdfuse: {msg}");
            1
        }
    }
}

fn init_logging(daemon: bool) {
    // fuser's own warnings (unimplemented calls, its umount after ours) are noise here.
    let env = env_logger::Env::default().default_filter_or(if daemon {
        "info,fuser=error"
    } else {
        "warn,fuser=error"
    });
    // env_logger's own layout, with the message escaped: a name or path
    // holding a newline or a control character makes no line of its own.
    let _ = env_logger::Builder::from_env(env)
        .format(|buf, record| {
            use std::io::Write;
            writeln!(
                buf,
                "[{} {:<5} {}] {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                escape_log(&record.args().to_string())
            )
        })
        .try_init();
}

/// A log message on one line: control characters as `\xNN` (backslashes
/// are kept: the log is read, not parsed back).
fn escape_log(msg: &str) -> String {
    if !msg.chars().any(char::is_control) {
        return msg.to_string();
    }
    msg.chars()
        .map(|c| {
            if c.is_control() {
                escape_name(&c.to_string())
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn cmd_create(a: CreateArgs) -> Result<(), String> {
    if let Some(b) = &a.bitmap {
        // Refuse before any leg is written.
        if b.exists() && !a.force {
            return Err(format!(
                "bitmap file {} exists; use --force to overwrite it",
                b.display()
            ));
        }
        if let Some(c) = a.bitmap_chunk {
            if !c.is_power_of_two() || !(512..=1 << 30).contains(&c) {
                return Err(format!(
                    "--bitmap-chunk {c}: must be a power of two from 512 bytes to 1G"
                ));
            }
        }
    }
    let created = array::create(
        &a.legs,
        &CreateOptions {
            name: a.name,
            size: a.size,
            force: a.force,
            bitmap: a.bitmap.as_ref().map(|path| array::NewBitmap {
                path: path.clone(),
                chunk: a.bitmap_chunk.map(|c| c as u32),
                daemon_sleep: a.delay,
            }),
            metadata: a.metadata,
        },
    )
    .map_err(|e| e.to_string())?;
    println!(
        "mdfuse: array {} created: raid1, {} legs, {} bytes{}, metadata {}, data offset {} sectors, UUID {}",
        escape_name(&created.name),
        created.legs.len(),
        created.array_sectors * 512,
        mdfuse::report::human_size(created.array_sectors as u128 * 512),
        created.metadata,
        created.data_offset_sectors,
        mdfuse::report::uuid_string(&created.uuid)
    );
    if let (Some(path), Some(sb)) = (&a.bitmap, &created.bitmap) {
        println!(
            "mdfuse: bitmap {} created: {} chunks of {}",
            path.display(),
            sb.chunks(),
            mdfuse::report::examine_bitmap::human_chunksize(sb.chunksize)
        );
    }
    Ok(())
}

fn cmd_examine_bitmap(file: &Path, list_chunks: bool) -> Result<(), String> {
    // O_DIRECT: while an array runs, its raw writes bypass the page cache.
    let (sb, bits) = mdfuse::bitmap::read_bitmap_for_examine(file).map_err(|e| e.to_string())?;
    let bits = &bits[..];
    print!(
        "{}",
        mdfuse::report::examine_bitmap::render_examine_bitmap(
            &file.display().to_string(),
            &sb,
            bits
        )
    );
    if list_chunks {
        let dirty = mdfuse::format::bitmap::dirty_chunks(bits, sb.chunks());
        println!(
            "    Dirty Chunks : {}",
            if dirty.is_empty() {
                "-".to_string()
            } else {
                dirty
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        );
    }
    Ok(())
}

/// A leg's superblock as `examine` shows it (its checksum not required to
/// match: examine says when it does not) and the leg's size in sectors.
fn examine_leg(p: &Path) -> Result<(Unverified, u64), String> {
    // Direct reads: the page cache may be stale while the array runs.
    let leg = Leg::open(p, IoMode::Direct, false, false).map_err(|e| e.to_string())?;
    let block = array::superblocks::read_superblock_block(&leg).map_err(|e| e.to_string())?;
    let parsed =
        Superblock::parse_unverified(&block).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok((parsed, leg.size() / 512))
}

fn cmd_examine(legs: &[PathBuf]) -> Result<(), String> {
    let mut failed = Vec::new();
    for p in legs {
        let examined = examine_leg(p).map(|(parsed, sectors)| {
            render_examine(&p.display().to_string(), &parsed, sectors, None)
        });
        match examined {
            Ok(text) => println!("{text}"),
            Err(e) => failed.push(e),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}

/// `--delay SECS` of a mount: a finite number of seconds, more than 0 and
/// at most what a bitmap file's daemon_sleep holds (2^32-1), so it always
/// makes a Duration (-1, NaN and inf do not).
fn parse_delay(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: not a number of seconds (e.g. 5 or 0.5)"))?;
    if secs.is_finite() && secs > 0.0 && secs <= f64::from(u32::MAX) {
        Ok(secs)
    } else {
        Err(format!(
            "{s:?}: the delay must be more than 0 and at most {} seconds",
            u32::MAX
        ))
    }
}

/// The most `--threads` a mount takes: more FUSE threads than this only
/// wait on the same queue (bench/METHOD.md: 4 to 32 make no difference),
/// and each costs two descriptors and a stack.
const MAX_THREADS: usize = 256;

fn parse_threads(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_THREADS).contains(n))
        .ok_or_else(|| format!("{s:?}: a number of threads from 1 to {MAX_THREADS}"))
}

/// Descriptors a mount needs besides its threads' (legs, bitmap, log,
/// signal pipe, sync threads' rings), with room to spare.
const FD_BASE: u64 = 32;

/// Makes sure the daemon can open what `threads` FUSE threads need (a
/// /dev/fuse clone each, made only once the mount is live, and an io_uring
/// ring each): the soft descriptor limit is raised toward the hard one if
/// it is short, and a limit too low for it is refused before anything is
/// mounted, rather than the daemon dying of EMFILE after the mount is live.
fn ensure_fd_room(threads: usize) -> Result<(), String> {
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let need = open + FD_BASE + 2 * threads as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(());
    }
    if lim.rlim_cur >= need {
        return Ok(());
    }
    if lim.rlim_max >= need {
        let raised = libc::rlimit {
            rlim_cur: need,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above; lowering nothing.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            log::info!(
                "raised the descriptor limit from {} to {need} for {threads} threads",
                lim.rlim_cur
            );
            return Ok(());
        }
    }
    Err(format!(
        "--threads {threads} needs about {need} file descriptors (a /dev/fuse clone and an \
         io_uring ring per thread), but this process may open only {} (ulimit -n, hard limit {}): \
         give fewer threads or raise the limit",
        lim.rlim_cur, lim.rlim_max
    ))
}

/// An octal file mode (0600, 660): permission bits only.
fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?}: not an octal mode from 0000 to 0777 (e.g. 0660)"))
}

fn split_mount_paths(m: &MountArgs) -> Result<(Vec<PathBuf>, PathBuf), String> {
    let (mountpoint, legs) = m
        .paths
        .split_last()
        .ok_or("give the legs and then the mountpoint")?;
    Ok((legs.to_vec(), mountpoint.clone()))
}

/// `p` made absolute; an NBD URI as it is (it is no path).
fn absolute(p: &Path) -> String {
    if mdfuse::io::leg::is_remote_name(p) {
        return p.display().to_string();
    }
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_owned())
        .display()
        .to_string()
}

impl MountArgs {
    /// The arguments of the same mount in the foreground, paths absolute.
    fn foreground_args(&self, log: &Path) -> Vec<String> {
        let mut a: Vec<String> = vec!["mount".into(), "--foreground".into()];
        let flags = [
            (self.ro, "--ro"),
            (self.allow_other, "--allow-other"),
            (self.buffered, "--buffered"),
            (self.run, "--run"),
            (self.write_through, "--write-through"),
            (self.bitmap_file_io, "--bitmap-file-io"),
            (self.bitmap_trust_device, "--bitmap-trust-device"),
        ];
        a.extend(flags.iter().filter(|f| f.0).map(|f| f.1.to_string()));
        a.push(format!("--threads={}", self.threads));
        a.push(format!("--transport={}", self.transport));
        a.push(format!("--image-mode={:04o}", self.image_mode));
        a.push(format!("--log={}", log.display()));
        if let Some(b) = &self.bitmap {
            a.push(format!("--bitmap={}", absolute(b)));
        }
        if let Some(d) = self.delay {
            a.push(format!("--delay={d}"));
        }
        if let Some(leg) = &self.force_from {
            a.push(format!("--force-from={}", absolute(leg)));
        }
        a.push("--".into());
        a.extend(self.paths.iter().map(|p| absolute(p)));
        a
    }
}

/// The daemon's pid file: written once the mount is live, removed at exit,
/// so `mdfuse stop` can wait for the daemon itself.
struct PidFile(Option<PathBuf>);

impl PidFile {
    fn create(mountpoint: &Path) -> PidFile {
        let path = run_file(mountpoint, "pid");
        let written = path
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|()| std::fs::write(&path, format!("{}\n", std::process::id())));
        match written {
            Ok(()) => PidFile(Some(path)),
            Err(e) => {
                log::debug!("no pid file {}: {e}", path.display());
                PidFile(None)
            }
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The live daemon serving `mountpoint`, from its pid file (checked against
/// the process's command line, so a reused pid is not taken for it).
fn daemon_pid(mountpoint: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(run_file(mountpoint, "pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mnt = absolute(mountpoint);
    let ours = cmdline.split(|&b| b == 0).any(|arg| arg == mnt.as_bytes());
    ours.then_some(pid)
}

/// A live process whose command line holds `mountpoint` (absolute) and
/// `mount`: a daemon serving it, found without its pid file.
fn daemon_by_cmdline(mountpoint: &Path) -> bool {
    let mnt = absolute(mountpoint);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id() && !process_gone(pid))
        .any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                args.contains(&b"mount".as_slice()) && args.contains(&mnt.as_bytes())
            })
        })
}

/// A process that has exited (gone, or a zombie not yet reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn mount_detached(m: &MountArgs) -> i32 {
    let (_, mountpoint) = match split_mount_paths(m) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("mdfuse: {e}");
            return 1;
        }
    };
    let log = m
        .log
        .clone()
        .unwrap_or_else(|| run_file(&mountpoint, "log"));
    let log = std::path::absolute(&log).unwrap_or(log);
    // The child runs the same mount in the foreground, from the parsed
    // options (paths made absolute: the child may run elsewhere).
    let cwd_args = m.foreground_args(&log);
    detach::spawn_and_wait(&cwd_args, &log)
}

pub fn mount_foreground(m: &MountArgs, ready: &mut detach::Ready) -> Result<(), String> {
    let (legs, mountpoint) = split_mount_paths(m)?;
    panic_stop::install();
    // Refuse a bad mountpoint before any leg is touched.
    serve::check_mountpoint(&mountpoint).map_err(|e| e.to_string())?;
    // The commonest mistakes, each refused with what to do next.
    preflight::check(&legs, &mountpoint)?;
    ensure_fd_room(m.threads)?;
    // Caught from here on: a stop signal during the start ends it cleanly.
    let signals = serve::StopSignals::install().map_err(|e| e.to_string())?;
    let asm = array::assemble(
        &legs,
        &AssembleOptions {
            io_mode: if m.buffered {
                IoMode::Buffered
            } else {
                IoMode::Direct
            },
            read_only: m.ro,
            run_degraded: m.run,
            force_from: m.force_from.clone(),
        },
    )
    .map_err(|e| e.to_string())?;
    let name = escape_name(&asm.name);
    let uuid = asm.uuid();
    let members = asm.members.len();
    let raid_disks = asm.raid_disks;
    // Checked by the parser already; not a panic if it ever gets past it.
    let clear_delay = m
        .delay
        .map(std::time::Duration::try_from_secs_f64)
        .transpose()
        .map_err(|e| format!("--delay: {e}"))?;
    let bitmap = match &m.bitmap {
        None => None,
        Some(path) => Some(
            array::attach_bitmap(
                &BitmapAttachOptions {
                    path: path.clone(),
                    io: if m.bitmap_file_io {
                        BitmapIo::FileIo
                    } else {
                        BitmapIo::Raw
                    },
                    clear_delay,
                    read_only: m.ro,
                    trust_device: m.bitmap_trust_device,
                },
                &asm,
            )
            .map_err(|e| e.to_string())?,
        ),
    };
    let array = RunningArray::start(
        asm,
        bitmap,
        &RunOptions {
            read_only: m.ro,
            engine: EngineOptions {
                workers_per_leg: m.threads,
            },
        },
    )
    .map_err(|e| e.to_string())?;
    let opts = ServeOptions {
        mountpoint: mountpoint.clone(),
        read_only: m.ro,
        allow_other: m.allow_other,
        image_mode: m.image_mode,
        threads: m.threads,
        writeback_cache: !m.write_through,
        fsname: format!("{MOUNT_SOURCE_PREFIX}{}", absolute(&legs[0])),
        transport: m.transport,
    };
    let mut pid_file = None;
    let mut event_log = None;
    let served = serve::serve(array.clone(), &opts, &signals, || {
        let msg = format!(
            "mdfuse: array {name} ({uuid}) is live at {}: raid1 [{raid_disks}/{members}], image {}, pid {}",
            mountpoint.display(),
            mountpoint.join(mdfuse::transport::fuse::IMAGE_NAME).display(),
            std::process::id()
        );
        log::info!("{msg}");
        panic_stop::mounted(&mountpoint);
        pid_file = Some(PidFile::create(&mountpoint));
        event_log = events::EventLog::start(array.clone(), &mountpoint);
        ready.live(&msg);
    });
    // Its thread holds the array: stopped before the array is.
    drop(event_log);
    let stopped = array.stop();
    // Close the legs before the pid file goes: `stop` waits for that.
    drop(array);
    drop(pid_file);
    served.map_err(|e| e.to_string())?;
    stopped.map_err(|e| e.to_string())
}

/// Mount sources of mdfuse mounts start with this, then the first leg's path
/// (the kernel records every FUSE mount as type "fuse").
const MOUNT_SOURCE_PREFIX: &str = "mdfuse:";

/// The first leg of the mdfuse mount at `mountpoint`, from /proc/mounts.
fn mdfuse_mount_source(mountpoint: &Path) -> Option<String> {
    let abs = mountpoint.canonicalize().ok()?;
    mounts().into_iter().find_map(|m| {
        let source = m.source.to_string_lossy().into_owned();
        let leg = source.strip_prefix(MOUNT_SOURCE_PREFIX)?;
        (m.point == abs && m.fstype.starts_with("fuse")).then(|| leg.to_string())
    })
}

/// Writes `value` to the control file `rel` of the array at `mountpoint`.
fn control_write(mountpoint: &Path, rel: &str, value: &str) -> Result<(), String> {
    let path = mountpoint.join(rel);
    std::fs::write(&path, format!("{value}\n")).map_err(|e| {
        format!(
            "{value:?} > {}: {e} (the array's log says why)",
            path.display()
        )
    })
}

fn control_read(mountpoint: &Path, rel: &str) -> Result<String, String> {
    let path = mountpoint.join(rel);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn cmd_manage(a: &ManageArgs) -> Result<(), String> {
    let mnt = &a.mountpoint;
    if mdfuse_mount_source(mnt).is_none() {
        return Err(format!(
            "{}: no mdfuse array is mounted there",
            mnt.display()
        ));
    }
    let dev = |leg: &Path| {
        let name = escape_name(&mdfuse::io::leg::short_name(leg));
        let rel = format!("md/dev-{name}/state");
        if mnt.join(&rel).exists() {
            Ok(rel)
        } else {
            Err(format!(
                "{}: not a leg of the array at {}",
                leg.display(),
                mnt.display()
            ))
        }
    };
    if let Some(leg) = &a.fail {
        control_write(mnt, &dev(leg)?, "faulty")?;
        println!("mdfuse: set {} faulty in {}", leg.display(), mnt.display());
    } else if let Some(leg) = &a.remove {
        control_write(mnt, &dev(leg)?, "remove")?;
        println!(
            "mdfuse: hot removed {} from {}",
            leg.display(),
            mnt.display()
        );
    } else if let Some(leg) = a.re_add.as_ref().or(a.add.as_ref()) {
        let re_add = a.re_add.is_some();
        match dev(leg) {
            // Still listed (faulty): md's dev-*/state re-add.
            Ok(rel) if re_add => control_write(mnt, &rel, "re-add")?,
            _ => {
                let path = absolute(leg);
                let value = if re_add {
                    format!("re-add {path}")
                } else {
                    path
                };
                control_write(mnt, "md/new_dev", &value)?;
            }
        }
        let state = control_read(mnt, &dev(leg)?)?;
        println!(
            "mdfuse: {} {} ({state}); follow it in {}/mdstat or with `mdfuse wait {}`",
            if re_add { "re-added" } else { "added" },
            leg.display(),
            mnt.display(),
            mnt.display()
        );
    }
    Ok(())
}

/// `mdfuse detail MOUNTPOINT`: mdadm --detail's text.
fn cmd_detail(mnt: &Path) -> Result<(), String> {
    let status = status::read(mnt)?;
    print!(
        "{}",
        mdfuse::report::detail::render(&mnt.display().to_string(), &status)
    );
    Ok(())
}

fn cmd_wait(mnt: &Path) -> Result<(), String> {
    use std::time::{Duration, Instant};
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // On a terminal a bar (redrawn in place); otherwise a plain line when
    // the progress changed, at most once a second.
    let bar = tty.then(|| {
        let bar = indicatif::ProgressBar::new(1);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {percent:>3}% {pos}/{len} sectors {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let mut last_line = String::new();
    let mut last_print = Instant::now() - Duration::from_secs(60);
    loop {
        let action = control_read(mnt, "md/sync_action")?;
        if action == "idle" {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            println!(
                "mdfuse: {}: no sync running (mismatch_cnt {})",
                mnt.display(),
                control_read(mnt, "md/mismatch_cnt")?
            );
            return Ok(());
        }
        let completed = control_read(mnt, "md/sync_completed")?;
        let speed = control_read(mnt, "md/sync_speed")?;
        let (done, total) = completed
            .split_once(" / ")
            .and_then(|(d, t)| Some((d.parse::<u64>().ok()?, t.parse::<u64>().ok()?)))
            .unwrap_or((0, 1));
        match &bar {
            Some(bar) => {
                bar.set_prefix(action.clone());
                bar.set_length(total.max(1));
                bar.set_position(done);
                bar.set_message(format!("{speed} KiB/s"));
            }
            None => {
                let pct = done as f64 * 100.0 / total.max(1) as f64;
                let line = format!("{action}: {pct:5.1}% ({done}/{total} sectors) {speed} KiB/s");
                if line != last_line && last_print.elapsed() >= Duration::from_secs(1) {
                    println!("{line}");
                    last_line = line;
                    last_print = Instant::now();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long `mdfuse stop` retries a busy mount before saying it is busy.
const STOP_BUSY_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

fn cmd_stop(mountpoint: &Path, timeout_s: u64) -> Result<(), String> {
    let source = mdfuse_mount_source(mountpoint)
        .ok_or_else(|| format!("{}: no mdfuse array is mounted there", mountpoint.display()))?;
    let pid = daemon_pid(mountpoint);
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|e| e.to_string())?;
    // A mount can be busy for a moment only (a forked child between fork and
    // exec has every descriptor of its parent, udev probes): retried
    // briefly, as mdadm --stop retries a busy array.
    let busy_until = std::time::Instant::now() + STOP_BUSY_GRACE;
    // SAFETY: c is a valid C string.
    while unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        let err = std::io::Error::last_os_error();
        let busy = err.raw_os_error() == Some(libc::EBUSY);
        if busy && std::time::Instant::now() < busy_until {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        return Err(if busy {
            format!(
                "{}: busy: array.img is open (a loop device or a program); close it first",
                mountpoint.display()
            )
        } else {
            format!("cannot unmount {}: {err}", mountpoint.display())
        });
    }
    // Wait for the daemon itself (its clean stop is written before it
    // exits); without a pid file, for the lock on its first leg.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
    let stopped = || match pid {
        Some(pid) => process_gone(pid),
        // A network leg has no lock to probe (and a probe would connect
        // to its server): the daemon is found by its command line.
        None if mdfuse::io::leg::is_remote_name(Path::new(&source)) => {
            !daemon_by_cmdline(mountpoint)
        }
        None => !matches!(
            Leg::open(Path::new(&source), IoMode::Buffered, false, true),
            Err(mdfuse::io::leg::LegError::InUse { .. })
        ),
    };
    while !stopped() {
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "unmounted {}, but the array has not stopped within {timeout_s} s",
                mountpoint.display()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use mount_mdfuse::{Takes, MOUNT_OPTIONS};

    /// A value for each valued option that is not its default.
    fn sample(name: &str) -> &'static str {
        match name {
            "image_mode" => "0640",
            "force_from" => "/l/a",
            "threads" => "3",
            "log" => "/run/x.log",
            "bitmap" => "/b/bm",
            "delay" => "7",
            "transport" => "uring",
            other => panic!("no sample value for option {other}: add one"),
        }
    }

    fn parse_mount(argv: impl IntoIterator<Item = String>) -> MountArgs {
        let argv = std::iter::once("mdfuse".to_string()).chain(argv);
        match Cli::try_parse_from(argv)
            .expect("mdfuse mount parses")
            .command
        {
            Command::Mount(m) => m,
            _ => panic!("not a mount"),
        }
    }

    #[test]
    fn mount_flags_are_the_mount_helpers_options() {
        let cmd = Cli::command();
        let mount = cmd.find_subcommand("mount").expect("mount subcommand");
        let mut flags: Vec<(String, bool)> = mount
            .get_arguments()
            .filter_map(|a| Some((a.get_long()?.to_string(), a.get_action().takes_values())))
            .filter(|(l, _)| l != "foreground" && l != "help")
            .collect();
        flags.sort();
        let mut table: Vec<(String, bool)> = MOUNT_OPTIONS
            .iter()
            .map(|o| (o.flag.to_string(), o.takes == Takes::Value))
            .collect();
        table.sort();
        assert_eq!(
            flags, table,
            "mdfuse mount's flags and mount.mdfuse's options differ"
        );
    }

    #[test]
    fn the_daemons_arguments_carry_every_mount_option() {
        let mut argv = vec!["mount".to_string()];
        for o in MOUNT_OPTIONS {
            argv.push(match o.takes {
                Takes::Nothing => format!("--{}", o.flag),
                Takes::Value => format!("--{}={}", o.flag, sample(o.name)),
            });
        }
        argv.extend(["/l/a", "/l/b", "/m"].map(String::from));
        let given = parse_mount(argv);
        let child = parse_mount(given.foreground_args(Path::new("/run/child.log")));
        let expected = MountArgs {
            foreground: true,
            log: Some(PathBuf::from("/run/child.log")),
            ..given
        };
        assert_eq!(format!("{expected:?}"), format!("{child:?}"));
    }

    #[test]
    fn every_helper_option_becomes_its_mdfuse_mount_flag() {
        let opts: Vec<String> = MOUNT_OPTIONS
            .iter()
            .map(|o| match o.takes {
                Takes::Nothing => o.name.to_string(),
                Takes::Value => format!("{}={}", o.name, sample(o.name)),
            })
            .collect();
        let args: Vec<String> = [
            "src",
            "/m",
            "-o",
            &format!("legs=/l/a:/l/b,{}", opts.join(",")),
        ]
        .map(String::from)
        .to_vec();
        let req = mount_mdfuse::parse_mount_args(&args).expect("helper parses");
        let m = parse_mount(req.mdfuse_args());
        let shown = format!("{m:?}");
        for o in MOUNT_OPTIONS {
            match o.takes {
                Takes::Nothing => assert!(
                    shown.contains(&format!("{}: true", o.name)),
                    "{}: not set in {shown}",
                    o.name
                ),
                Takes::Value => assert!(
                    req.option(o.name) == Some(sample(o.name)),
                    "{}: not passed",
                    o.name
                ),
            }
        }
        assert_eq!(m.image_mode, 0o640);
        assert_eq!(m.threads, 3);
        assert_eq!(m.delay, Some(7.0));
        assert_eq!(m.bitmap, Some(PathBuf::from("/b/bm")));
        assert_eq!(m.force_from, Some(PathBuf::from("/l/a")));
        assert_eq!(m.log, Some(PathBuf::from("/run/x.log")));
        assert_eq!(m.paths, ["/l/a", "/l/b", "/m"].map(PathBuf::from));
    }

    #[test]
    fn the_helpers_man_page_and_the_readme_list_every_option() {
        let dir = std::env::temp_dir().join(format!("mdfuse-assets-{}", std::process::id()));
        assets::cmd_gen_assets(&dir).expect("assets");
        let man = std::fs::read_to_string(dir.join("man/mount.mdfuse.8")).expect("page");
        let _ = std::fs::remove_dir_all(&dir);
        for o in mount_mdfuse::options_synopsis() {
            assert!(
                man.contains(&o.replace('-', "\\-")),
                "{o} missing from the man page"
            );
        }
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        for o in MOUNT_OPTIONS {
            let named = match o.takes {
                Takes::Nothing => format!("`{}`", o.name),
                Takes::Value => format!("`{}=", o.name),
            };
            assert!(
                readme.contains(&named),
                "{named} missing from the README's mount options"
            );
        }
    }
}
