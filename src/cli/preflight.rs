//! Checks before a mount touches anything, for the commonest mistakes, each
//! saying what to do next: the mountpoint already serves an mdfuse array,
//! a leg already belongs to an array running at another mountpoint, the
//! legs belong to different arrays.

use mdfuse::array;
use mdfuse::format::superblock::Superblock;
use mdfuse::io::leg::{IoMode, Leg};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file's identity: its device and inode (a leg named by two paths, or
/// by a symlink, is one leg).
fn identity(p: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some(if m.file_type().is_file() {
        (m.dev(), m.ino())
    } else {
        // A block device: its device number.
        (u64::MAX, m.rdev())
    })
}

/// The legs a running daemon serves, from its command line (after `--`,
/// all but the last argument, the mountpoint).
fn daemon_legs(pid: u32) -> Vec<PathBuf> {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return Vec::new();
    };
    let args: Vec<PathBuf> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| PathBuf::from(std::ffi::OsStr::from_bytes(a)))
        .collect();
    match args.iter().position(|a| a.as_os_str() == "--") {
        Some(i) if args.len() > i + 2 => args[i + 1..args.len() - 1].to_vec(),
        _ => Vec::new(),
    }
}

/// The checks; Err is the message for the user.
pub fn check(legs: &[PathBuf], mountpoint: &Path) -> Result<(), String> {
    let mounts = super::metrics::mdfuse_mounts();
    let here = super::absolute(mountpoint);
    if mounts.iter().any(|m| m.as_os_str() == here.as_str()) {
        return Err(format!(
            "{here}: an mdfuse array is already mounted there (`mdfuse detail {here}` shows \
             it): stop it first with `mdfuse stop {here}`, or choose another mountpoint"
        ));
    }
    for m in &mounts {
        let Some(pid) = super::daemon_pid(m) else {
            continue;
        };
        let running: Vec<(u64, u64)> = daemon_legs(pid)
            .iter()
            .filter_map(|l| identity(l))
            .collect();
        for leg in legs {
            if identity(leg).is_some_and(|id| running.contains(&id)) {
                return Err(format!(
                    "{} is in use by another mdfuse: the array running at {} (daemon \
                     {pid}) holds it, and a leg serves one mount at a time: use that mount, \
                     or stop it first with `mdfuse stop {}`",
                    leg.display(),
                    m.display(),
                    m.display()
                ));
            }
        }
    }
    // The legs' arrays, where their superblocks can be read (the assembly
    // reports the other problems).
    let mut arrays: Vec<(String, String, Vec<String>)> = Vec::new();
    for leg in legs {
        let Ok(io) = Leg::open(leg, IoMode::Direct, false, false) else {
            continue;
        };
        let Ok(block) = array::superblocks::read_superblock_block(&io) else {
            continue;
        };
        let Ok(parsed) = Superblock::parse_unverified(&block) else {
            continue;
        };
        let sb = parsed.superblock;
        let uuid = mdfuse::report::uuid_string(&sb.set_uuid);
        match arrays.iter_mut().find(|a| a.0 == uuid) {
            Some(a) => a.2.push(leg.display().to_string()),
            None => arrays.push((
                uuid,
                mdfuse::report::mdstat::escape_name(&sb.name()),
                vec![leg.display().to_string()],
            )),
        }
    }
    if arrays.len() > 1 {
        let list: Vec<String> = arrays
            .iter()
            .map(|(uuid, name, legs)| format!("{} (array {name}, {uuid})", legs.join(", ")))
            .collect();
        let count = match arrays.len() {
            2 => "two".to_string(),
            n => n.to_string(),
        };
        return Err(format!(
            "the legs belong to {count} different arrays: {}; give the legs of one array \
             (`mdfuse examine LEG` shows a leg's Array UUID)",
            list.join("; ")
        ));
    }
    Ok(())
}
