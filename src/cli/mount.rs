//! The mount side: `mdfuse mount`'s arguments (whose flags are the mount
//! helper's options, `mount_mdfuse::MOUNT_OPTIONS`), the detached start,
//! and the daemon in the foreground: assemble, attach the bitmap, serve
//! until unmounted or signalled, stop clean.

use super::*;

#[derive(Args, Clone, Debug)]
pub struct MountArgs {
    /// Stay in the foreground (log to stderr) instead of detaching.
    #[arg(short = 'f', long)]
    pub(super) foreground: bool,
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
    /// Make LEG write-mostly (md's WriteMostly, recorded in its
    /// superblock): written as any leg, read only when no other in-sync leg
    /// remains. May be given more than once. Without it a leg keeps what
    /// its superblock says.
    #[arg(long, value_name = "LEG")]
    write_mostly: Vec<PathBuf>,
    /// Read LEG as any leg again (its write-mostly flag cleared and
    /// recorded). May be given more than once.
    #[arg(long, value_name = "LEG")]
    readwrite: Vec<PathBuf>,
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
    /// writes (for containers without access to the block device); also
    /// for a bitmap file added later (`mdfuse grow`).
    #[arg(long)]
    bitmap_file_io: bool,
    /// Accept a bitmap file on a device stack mdfuse cannot follow to check
    /// that it is not inside the array (device-mapper, md, nbd, ...); also
    /// for a bitmap file added later (`mdfuse grow`).
    #[arg(long)]
    bitmap_trust_device: bool,
    /// Seconds a chunk stays idle before its bit is cleared (default: the
    /// bitmap's daemon_sleep; a bitmap added later, by `mdfuse grow`, gets
    /// it as its daemon_sleep, rounded up); more than 0, at most 2^32-1.
    #[arg(long, value_parser = parse_delay)]
    delay: Option<f64>,
    /// The legs, then the mountpoint.
    #[arg(required = true, num_args = 2..)]
    paths: Vec<PathBuf>,
}

/// `--delay SECS` of a mount: a finite number of seconds, more than 0 and
/// at most what a bitmap file's daemon_sleep holds (2^32-1), so it always
/// makes a Duration (-1, NaN and inf do not).
pub(super) fn parse_delay(s: &str) -> Result<f64, String> {
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
pub(super) const MAX_THREADS: usize = 256;

pub(super) fn parse_threads(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_THREADS).contains(n))
        .ok_or_else(|| format!("{s:?}: a number of threads from 1 to {MAX_THREADS}"))
}

/// Descriptors a mount needs besides its threads' (legs, bitmap, log,
/// signal pipe, sync threads' rings), with room to spare.
pub(super) const FD_BASE: u64 = 32;

/// Makes sure the daemon can open what `threads` FUSE threads need (a
/// /dev/fuse clone each, made only once the mount is live, and an io_uring
/// ring each): the soft descriptor limit is raised toward the hard one if
/// it is short, and a limit too low for it is refused before anything is
/// mounted, rather than the daemon dying of EMFILE after the mount is live.
pub(super) fn ensure_fd_room(threads: usize) -> Result<(), String> {
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
pub(super) fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?}: not an octal mode from 0000 to 0777 (e.g. 0660)"))
}

pub(super) fn split_mount_paths(m: &MountArgs) -> Result<(Vec<PathBuf>, PathBuf), String> {
    let (mountpoint, legs) = m
        .paths
        .split_last()
        .ok_or("give the legs and then the mountpoint")?;
    Ok((legs.to_vec(), mountpoint.clone()))
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
        for leg in &self.write_mostly {
            a.push(format!("--write-mostly={}", absolute(leg)));
        }
        for leg in &self.readwrite {
            a.push(format!("--readwrite={}", absolute(leg)));
        }
        a.push("--".into());
        a.extend(self.paths.iter().map(|p| absolute(p)));
        a
    }
}

/// The daemon's pid file: written once the mount is live, removed at exit,
/// so `mdfuse stop` can wait for the daemon itself.
pub(super) struct PidFile(Option<PathBuf>);

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

pub(super) fn mount_detached(m: &MountArgs) -> i32 {
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
    let write_mostly = array::WriteMostlyChoice {
        write_mostly: m.write_mostly.clone(),
        readwrite: m.readwrite.clone(),
    };
    write_mostly.check(&legs).map_err(|e| e.to_string())?;
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
    let internal = array::has_internal_bitmap(&asm).map_err(|e| e.to_string())?;
    let bitmap = match &m.bitmap {
        Some(path) if internal => {
            return Err(format!(
                "the legs carry an internal write-intent bitmap (mdadm --examine shows \
                 \"Internal Bitmap\"); mount them without --bitmap {}: mdfuse keeps the \
                 internal one",
                path.display()
            ))
        }
        None if internal => Some(
            array::attach_internal(
                &asm,
                &array::InternalBitmapOptions {
                    clear_delay,
                    read_only: m.ro,
                },
            )
            .map_err(|e| e.to_string())?,
        ),
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
            grow: array::GrowOptions {
                clear_delay,
                file_io: m.bitmap_file_io,
                trust_device: m.bitmap_trust_device,
            },
            write_mostly,
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
            "write_mostly" => "/l/b",
            "readwrite" => "/l/a",
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
            .map(|o| (o.flag.to_string(), o.takes != Takes::Nothing))
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
                Takes::Value | Takes::Legs => format!("--{}={}", o.flag, sample(o.name)),
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
                Takes::Value | Takes::Legs => format!("{}={}", o.name, sample(o.name)),
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
                Takes::Value | Takes::Legs => assert!(
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
        assert_eq!(m.write_mostly, [PathBuf::from("/l/b")]);
        assert_eq!(m.readwrite, [PathBuf::from("/l/a")]);
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
                Takes::Value | Takes::Legs => format!("`{}=", o.name),
            };
            assert!(
                readme.contains(&named),
                "{named} missing from the README's mount options"
            );
        }
    }
}
