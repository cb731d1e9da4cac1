//! Command-line parsing and the commands themselves. Each command is a thin
//! shell over the library: parse, call, report.

mod detach;
mod sandbox;
mod size;

use clap::{Args, Parser, Subcommand};
use mdfuse::array::{
    self, AssembleOptions, BitmapAttachOptions, BitmapIo, CreateOptions, RunOptions, RunningArray,
};
use mdfuse::format::superblock::Superblock;
use mdfuse::io::leg::{IoMode, Leg};
use mdfuse::raid1::EngineOptions;
use mdfuse::report::examine::render_examine;
use mdfuse::serve::{self, ServeOptions};
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
    /// Create a RAID1 array: write md v1.2 superblocks to every leg.
    Create(CreateArgs),
    /// Print the md superblock of each leg, like `mdadm --examine`.
    Examine {
        #[arg(required = true)]
        legs: Vec<PathBuf>,
    },
    /// Print a bitmap file's header and dirty chunks, like `mdadm --examine-bitmap`.
    ExamineBitmap {
        file: PathBuf,
        /// Also list the dirty chunks.
        #[arg(long)]
        chunks: bool,
    },
    /// Assemble an array from its legs and serve it at MOUNTPOINT as array.img.
    Mount(MountArgs),
    /// Unmount an array and wait until it has stopped cleanly.
    Stop {
        mountpoint: PathBuf,
        /// Seconds to wait for the array to stop.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Make a sandbox array in DIR (two leg files) and mount it at DIR/mnt.
    Sandbox(sandbox::SandboxArgs),
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
    /// Bytes of array per bitmap bit (default: 64K, doubled until the
    /// bitmap has at most 2^20 chunks).
    #[arg(long, value_parser = size::parse_size, requires = "bitmap")]
    bitmap_chunk: Option<u64>,
    /// Seconds a chunk stays idle before its bit is cleared (md's daemon_sleep).
    #[arg(long, default_value_t = 5)]
    delay: u32,
    /// The legs: regular files or block devices (two or more).
    #[arg(required = true)]
    legs: Vec<PathBuf>,
}

#[derive(Args, Clone)]
pub struct MountArgs {
    /// Stay in the foreground (log to stderr) instead of detaching.
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Serve read-only.
    #[arg(long)]
    ro: bool,
    /// Let other users reach the mount (subject to array.img's mode).
    #[arg(long)]
    allow_other: bool,
    /// Use the host's page cache for the legs instead of O_DIRECT.
    #[arg(long)]
    buffered: bool,
    /// Start even with legs missing or stale (degraded), like mdadm --run.
    #[arg(long)]
    run: bool,
    /// FUSE threads (each with its own /dev/fuse fd); also I/O threads per leg.
    #[arg(long, default_value_t = 16)]
    threads: usize,
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
    /// Seconds a chunk stays idle before its bit is cleared (default: the
    /// bitmap file's daemon_sleep).
    #[arg(long, requires = "bitmap")]
    delay: Option<f64>,
    /// The legs, then the mountpoint.
    #[arg(required = true, num_args = 2..)]
    paths: Vec<PathBuf>,
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let foreground_mount = matches!(&cli.command, Command::Mount(m) if m.foreground);
    let mut ready = detach::Ready::from_env();
    init_logging(foreground_mount);
    let result = match cli.command {
        Command::Create(a) => cmd_create(a),
        Command::Examine { legs } => cmd_examine(&legs),
        Command::ExamineBitmap { file, chunks } => cmd_examine_bitmap(&file, chunks),
        Command::Mount(m) if m.foreground => mount_foreground(&m, &mut ready),
        Command::Mount(m) => return mount_detached(&m),
        Command::Stop {
            mountpoint,
            timeout,
        } => cmd_stop(&mountpoint, timeout),
        Command::Sandbox(a) => sandbox::run(&a),
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
    let _ = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .try_init();
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
        },
    )
    .map_err(|e| e.to_string())?;
    println!(
        "mdfuse: array {} created: raid1, {} legs, {} bytes{}, data offset {} sectors, UUID {}",
        created.name,
        created.legs.len(),
        created.array_sectors * 512,
        mdfuse::report::human_size(created.array_sectors as u128 * 512),
        created.data_offset_sectors,
        mdfuse::report::uuid_string(&created.uuid)
    );
    if let Some(path) = &a.bitmap {
        let chunk = a.bitmap_chunk.map(|c| c as u32).unwrap_or_else(|| {
            mdfuse::format::bitmap::default_chunk_size(created.array_sectors * 512)
        });
        let sb = mdfuse::format::bitmap::BitmapSuper::new_for_array(
            created.uuid,
            created.array_sectors,
            chunk,
            a.delay,
            0,
        );
        mdfuse::bitmap::create_bitmap_file(path, &sb, a.force).map_err(|e| e.to_string())?;
        println!(
            "mdfuse: bitmap {} created: {} chunks of {}",
            path.display(),
            sb.chunks(),
            mdfuse::report::examine_bitmap::human_chunksize(chunk)
        );
    }
    Ok(())
}

fn cmd_examine_bitmap(file: &Path, list_chunks: bool) -> Result<(), String> {
    // O_DIRECT: while an array runs, its raw writes bypass the page cache.
    let bytes = mdfuse::blockmap::read_file_direct(file).map_err(|e| e.to_string())?;
    let sb = mdfuse::format::bitmap::BitmapSuper::parse(&bytes)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let bits = &bytes[bytes.len().min(256)..];
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

fn cmd_examine(legs: &[PathBuf]) -> Result<(), String> {
    let mut failed = Vec::new();
    for p in legs {
        // Direct reads: the page cache may be stale while the array runs.
        let examined = Leg::open(p, IoMode::Direct, false, false)
            .map_err(|e| e.to_string())
            .and_then(|leg| {
                let block =
                    array::superblocks::read_superblock_block(&leg).map_err(|e| e.to_string())?;
                let parsed = Superblock::parse_unverified(&block)
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                Ok(render_examine(
                    &p.display().to_string(),
                    &parsed,
                    leg.size() / 512,
                    None,
                ))
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

fn split_mount_paths(m: &MountArgs) -> Result<(Vec<PathBuf>, PathBuf), String> {
    let (mountpoint, legs) = m
        .paths
        .split_last()
        .ok_or("give the legs and then the mountpoint")?;
    Ok((legs.to_vec(), mountpoint.clone()))
}

fn default_log_path(mountpoint: &Path) -> PathBuf {
    let abs = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_owned());
    let name: String = abs
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    PathBuf::from("/run/mdfuse").join(format!("{name}.log"))
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
        .unwrap_or_else(|| default_log_path(&mountpoint));
    let log = std::path::absolute(&log).unwrap_or(log);
    // The child runs the same command in the foreground.
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let pos = args.iter().position(|a| a == "mount").unwrap_or(0);
    args.insert(pos + 1, "--foreground".into());
    let cwd_args: Vec<String> = args
        .into_iter()
        .map(|a| {
            let p = Path::new(&a);
            if !a.starts_with('-') && p.exists() {
                std::path::absolute(p)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or(a)
            } else {
                a
            }
        })
        .collect();
    println!("mdfuse: log: {}", log.display());
    detach::spawn_and_wait(&cwd_args, &log)
}

pub fn mount_foreground(m: &MountArgs, ready: &mut detach::Ready) -> Result<(), String> {
    let (legs, mountpoint) = split_mount_paths(m)?;
    // Refuse a bad mountpoint before any leg is touched.
    serve::check_mountpoint(&mountpoint).map_err(|e| e.to_string())?;
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
        },
    )
    .map_err(|e| e.to_string())?;
    let name = asm.name.clone();
    let uuid = asm.uuid();
    let members = asm.members.len();
    let raid_disks = asm.raid_disks;
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
                    clear_delay: m.delay.map(std::time::Duration::from_secs_f64),
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
        threads: m.threads,
        fsname: format!(
            "{MOUNT_SOURCE_PREFIX}{}",
            std::path::absolute(&legs[0])
                .unwrap_or(legs[0].clone())
                .display()
        ),
    };
    let served = serve::serve(array.clone(), &opts, || {
        let msg = format!(
            "mdfuse: array {name} ({uuid}) is live at {}: raid1 [{raid_disks}/{members}], image {}, pid {}",
            mountpoint.display(),
            mountpoint.join(mdfuse::fuse_fs::IMAGE_NAME).display(),
            std::process::id()
        );
        log::info!("{msg}");
        ready.live(&msg);
    });
    let stopped = array.stop();
    served.map_err(|e| e.to_string())?;
    stopped.map_err(|e| e.to_string())
}

/// Mount sources of mdfuse mounts start with this, then the first leg's path
/// (the kernel records every FUSE mount as type "fuse").
const MOUNT_SOURCE_PREFIX: &str = "mdfuse:";

/// The first leg of the mdfuse mount at `mountpoint`, from /proc/mounts.
fn mdfuse_mount_source(mountpoint: &Path) -> Option<String> {
    let abs = mountpoint.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let source = unescape_mount_field(f.first()?);
        let leg = source.strip_prefix(MOUNT_SOURCE_PREFIX)?;
        (f.len() > 2 && Path::new(&unescape_mount_field(f[1])) == abs && f[2].starts_with("fuse"))
            .then(|| leg.to_string())
    })
}

fn unescape_mount_field(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn cmd_stop(mountpoint: &Path, timeout_s: u64) -> Result<(), String> {
    let source = mdfuse_mount_source(mountpoint)
        .ok_or_else(|| format!("{}: no mdfuse array is mounted there", mountpoint.display()))?;
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|e| e.to_string())?;
    // SAFETY: c is a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EBUSY) {
            format!(
                "{}: busy: array.img is open (a loop device or a program); close it first",
                mountpoint.display()
            )
        } else {
            format!("cannot unmount {}: {err}", mountpoint.display())
        });
    }
    // The daemon holds its legs locked until its clean stop is written.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
    loop {
        match Leg::open(Path::new(&source), IoMode::Buffered, false, true) {
            Ok(_) => return Ok(()),
            Err(mdfuse::io::leg::LegError::InUse { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(mdfuse::io::leg::LegError::InUse { .. }) => {
                return Err(format!(
                    "unmounted {}, but the array has not stopped within {timeout_s} s",
                    mountpoint.display()
                ))
            }
            Err(_) => return Ok(()),
        }
    }
}
