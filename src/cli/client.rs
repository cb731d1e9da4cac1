//! The client commands, which talk to a running array through its mount's
//! control files (`md/`, as md's sysfs): `manage`, `detail`, `wait`,
//! `stop`; and finding a mount's daemon.

use super::*;

/// The live daemon serving `mountpoint`, from its pid file (checked against
/// the process's command line, so a reused pid is not taken for it).
pub(super) fn daemon_pid(mountpoint: &Path) -> Option<u32> {
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
pub(super) fn daemon_by_cmdline(mountpoint: &Path) -> bool {
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
pub(super) fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// The first leg of the mdfuse mount at `mountpoint`, from /proc/mounts.
pub(super) fn mdfuse_mount_source(mountpoint: &Path) -> Option<String> {
    let abs = mountpoint.canonicalize().ok()?;
    mounts().into_iter().find_map(|m| {
        let source = m.source.to_string_lossy().into_owned();
        let leg = source.strip_prefix(MOUNT_SOURCE_PREFIX)?;
        (m.point == abs && m.fstype.starts_with("fuse")).then(|| leg.to_string())
    })
}

/// Writes `value` to the control file `rel` of the array at `mountpoint`.
pub(super) fn control_write(mountpoint: &Path, rel: &str, value: &str) -> Result<(), String> {
    let path = mountpoint.join(rel);
    std::fs::write(&path, format!("{value}\n")).map_err(|e| {
        format!(
            "{value:?} > {}: {e} (the array's log says why)",
            path.display()
        )
    })
}

pub(super) fn control_read(mountpoint: &Path, rel: &str) -> Result<String, String> {
    let path = mountpoint.join(rel);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{}: {e}", path.display()))
}

pub(super) fn cmd_manage(a: &ManageArgs) -> Result<(), String> {
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
    let adding = a.add.as_ref().or(a.re_add.as_ref());
    if (a.write_mostly || a.readwrite) && adding.is_none() {
        return Err(
            "--write-mostly and --readwrite go with --add or --re-add (for a leg in the array: \
             echo writemostly > MOUNTPOINT/md/dev-LEG/state, or -writemostly)"
                .into(),
        );
    }
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
        // md's way, as mdadm does it for a running member: the flag through
        // dev-*/state (recorded in every superblock).
        if a.write_mostly || a.readwrite {
            let value = if a.write_mostly {
                "writemostly"
            } else {
                "-writemostly"
            };
            control_write(mnt, &dev(leg)?, value)?;
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

/// Why the daemon of `mountpoint` refused `value` > `rel`: the reason its
/// log gave (every refused control write is logged with it), if the log
/// can be found (the daemon's `--log`, else the default place).
fn refusal_reason(mountpoint: &Path, rel: &str, value: &str) -> Option<String> {
    let log = daemon_pid(mountpoint)
        .and_then(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .and_then(|c| {
            c.split(|&b| b == 0)
                .filter_map(|a| a.strip_prefix(b"--log="))
                .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
                .next_back()
        })
        .unwrap_or_else(|| run_file(mountpoint, "log"));
    let text = std::fs::read_to_string(log).ok()?;
    let needle = format!("refused {value:?} > {rel}: ");
    let line = text.lines().rev().find(|l| l.contains(&needle))?;
    let (_, why) = line.split_once(&needle)?;
    Some(why.to_string())
}

/// [`control_write`], and on a refusal the daemon's reason.
fn control_write_explained(mountpoint: &Path, rel: &str, value: &str) -> Result<(), String> {
    control_write(mountpoint, rel, value).map_err(|e| {
        match refusal_reason(mountpoint, rel, value) {
            Some(why) => format!("{}: refused: {why}", mountpoint.display()),
            None => e,
        }
    })
}

/// `mdfuse grow MOUNTPOINT --bitmap none|internal|FILE`: mdadm's
/// `--grow --bitmap`, through md/bitmap/location (and md/bitmap/chunksize
/// for --bitmap-chunk).
pub(super) fn cmd_grow(a: &GrowArgs) -> Result<(), String> {
    let mnt = &a.mountpoint;
    if mdfuse_mount_source(mnt).is_none() {
        return Err(format!(
            "{}: no mdfuse array is mounted there",
            mnt.display()
        ));
    }
    let current = control_read(mnt, "md/bitmap/location")?;
    let now = match current.as_str() {
        "none" => "no bitmap".to_string(),
        "file" => "a bitmap file".to_string(),
        at => format!("an internal bitmap ({at} sectors from the superblock)"),
    };
    let value = match a.bitmap.to_str() {
        Some("none") => {
            if current == "none" {
                return Err(format!(
                    "{}: the array has no bitmap (md/bitmap/location reads none): nothing to remove",
                    mnt.display()
                ));
            }
            if a.bitmap_chunk.is_some() {
                return Err("--bitmap-chunk goes with a new bitmap, not with none".into());
            }
            "none".to_string()
        }
        Some("internal") if current != "none" && current != "file" => {
            return Err(format!("{}: the array already has {now}", mnt.display()));
        }
        _ if current != "none" => {
            return Err(format!(
                "{}: the array already has {now}; remove it first (mdfuse grow {} --bitmap none), as mdadm requires",
                mnt.display(),
                mnt.display()
            ));
        }
        Some("internal") => "internal".to_string(),
        _ => {
            let path = absolute(&a.bitmap);
            if std::fs::symlink_metadata(&a.bitmap).is_ok() {
                return Err(format!(
                    "bitmap file {path} already exists; give the name of a new file: grow creates it for this array"
                ));
            }
            format!("file:{path}")
        }
    };
    if let Some(c) = a.bitmap_chunk {
        control_write_explained(mnt, "md/bitmap/chunksize", &c.to_string())?;
    }
    control_write_explained(mnt, "md/bitmap/location", &value)?;
    let location = control_read(mnt, "md/bitmap/location")?;
    match location.as_str() {
        "none" => println!("mdfuse: {}: bitmap removed", mnt.display()),
        "file" => println!(
            "mdfuse: {}: bitmap file {} added ({} bytes a chunk); give it to the next mount with --bitmap {}",
            mnt.display(),
            &value["file:".len()..],
            control_read(mnt, "md/bitmap/chunksize")?,
            &value["file:".len()..],
        ),
        at => println!(
            "mdfuse: {}: internal bitmap added at {at} sectors from the superblock ({} bytes a chunk)",
            mnt.display(),
            control_read(mnt, "md/bitmap/chunksize")?
        ),
    }
    Ok(())
}

/// `mdfuse detail MOUNTPOINT`: mdadm --detail's text.
pub(super) fn cmd_detail(mnt: &Path) -> Result<(), String> {
    let status = status::read(mnt)?;
    print!(
        "{}",
        mdfuse::report::detail::render(&mnt.display().to_string(), &status)
    );
    Ok(())
}

pub(super) fn cmd_wait(mnt: &Path) -> Result<(), String> {
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
pub(super) const STOP_BUSY_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) fn cmd_stop(mountpoint: &Path, timeout_s: u64) -> Result<(), String> {
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
