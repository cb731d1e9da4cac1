//! Command-line parsing and the commands themselves. Each command is a thin
//! shell over the library: parse, call, report.

mod alert;
mod assets;
mod client;
mod detach;
mod events;
pub mod helper;
mod metrics;
mod monitor;
mod mount;
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

use client::{
    cmd_detail, cmd_manage, cmd_stop, cmd_wait, control_read, daemon_pid, mdfuse_mount_source,
};
pub use mount::mount_foreground;
use mount::{mount_detached, MountArgs};

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
    /// through its md/ control files; --write-mostly or --readwrite with
    /// --add or --re-add set the leg's write-mostly flag.
    #[command(
        after_help = "Examples:\n  mdfuse manage /mnt/data --fail /srv/leg1.img\n  mdfuse manage /mnt/data --remove /srv/leg1.img\n  mdfuse manage /mnt/data --re-add /srv/leg1.img\n  mdfuse manage /mnt/data --add --write-mostly nbd://10.0.0.2/leg2"
    )]
    Manage(ManageArgs),
    /// Change a running array's write-intent bitmap, as `mdadm --grow
    /// --bitmap=none|internal|FILE`, through md/bitmap/location.
    #[command(
        after_help = "Examples:\n  mdfuse grow /mnt/data --bitmap internal\n  mdfuse grow /mnt/data --bitmap none\n  mdfuse grow /mnt/data --bitmap /var/lib/mdfuse/data.bitmap   (a new file; give it to the next mount with --bitmap)"
    )]
    Grow(GrowArgs),
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
    /// Create a write-intent bitmap in this host file (md's bitmap-file
    /// format), or `internal`: on every leg, beside its superblock, as
    /// `mdadm --bitmap=internal` (a file named internal: ./internal).
    #[arg(long)]
    bitmap: Option<PathBuf>,
    /// Bytes of array per bitmap bit (default for a file: 1M, doubled until
    /// the bitmap has at most 2^20 chunks; internal: mdadm's, at least 64M).
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
    /// Make LEG write-mostly (md's WriteMostly, as mdadm --write-mostly):
    /// it is written as any leg but read only when no other in-sync leg
    /// remains. May be given more than once. An NBD leg is write-mostly
    /// by default when a local leg is given too.
    #[arg(long, short = 'W', value_name = "LEG")]
    write_mostly: Vec<PathBuf>,
    /// Read LEG as any leg: an NBD leg is then not write-mostly. May be
    /// given more than once.
    #[arg(long, value_name = "LEG")]
    readwrite: Vec<PathBuf>,
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
    /// With --add or --re-add: the leg is write-mostly (read only when no
    /// other in-sync leg remains), as mdadm --add --write-mostly.
    #[arg(long, short = 'W', conflicts_with = "readwrite")]
    write_mostly: bool,
    /// With --add or --re-add: the leg is read as any leg (mdadm's
    /// --readwrite; a new NBD leg is otherwise write-mostly).
    #[arg(long, short = 'w')]
    readwrite: bool,
}

#[derive(Args)]
struct GrowArgs {
    mountpoint: PathBuf,
    /// The bitmap the array is to have: `none` (remove it), `internal` (on
    /// every leg, beside its superblock, placed as mdadm places it), or a
    /// new bitmap FILE to create outside the array (./internal or ./none
    /// for a file of that name). A bitmap in place must be removed first.
    #[arg(long, value_name = "none|internal|FILE")]
    bitmap: PathBuf,
    /// Bytes of array per bit of the new bitmap (a power of two; default
    /// for a file: 1M, doubled until at most 2^20 chunks; internal:
    /// mdadm's, at least 64M).
    #[arg(long, value_parser = size::parse_size)]
    bitmap_chunk: Option<u64>,
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
        Command::Grow(a) => client::cmd_grow(&a),
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
    let internal = a.bitmap.as_deref() == Some(Path::new("internal"));
    if let Some(b) = &a.bitmap {
        // Refuse before any leg is written.
        if !internal && b.exists() && !a.force {
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
                internal,
            }),
            metadata: a.metadata,
            write_mostly: array::WriteMostlyChoice {
                write_mostly: a.write_mostly.clone(),
                readwrite: a.readwrite.clone(),
            },
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
    for leg in &created.write_mostly {
        println!(
            "mdfuse: {} is write-mostly (read only when no other in-sync leg remains)",
            leg.display()
        );
    }
    if let (Some(path), Some(sb)) = (&a.bitmap, &created.bitmap) {
        println!(
            "mdfuse: bitmap {} created: {} chunks of {}",
            if internal {
                "internal".to_string()
            } else {
                path.display().to_string()
            },
            sb.chunks(),
            mdfuse::report::examine_bitmap::human_chunksize(sb.chunksize)
        );
    }
    Ok(())
}

fn cmd_examine_bitmap(file: &Path, list_chunks: bool) -> Result<(), String> {
    // O_DIRECT: while an array runs, its raw writes bypass the page cache.
    // A leg carrying an internal bitmap (as `mdadm -X LEG`), else a file.
    let (sb, bits) = match mdfuse::array::internal_bitmap::examine_leg(file) {
        Some(r) => r.map_err(|e| e.to_string())?,
        None => mdfuse::bitmap::read_bitmap_for_examine(file).map_err(|e| e.to_string())?,
    };
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

/// Mount sources of mdfuse mounts start with this, then the first leg's path
/// (the kernel records every FUSE mount as type "fuse").
const MOUNT_SOURCE_PREFIX: &str = "mdfuse:";
