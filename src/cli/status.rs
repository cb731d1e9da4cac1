//! A running array's state read once from its mount's `md/` files (and the
//! daemon's pid file), for `mdfuse detail` (text and `--json`), `mdfuse
//! metrics` and `mdfuse monitor`; the state as data and its renderings are
//! in `mdfuse::report::detail`.

use super::{control_read, daemon_pid, mdfuse_mount_source};
pub use mdfuse::report::detail::{from_controls, ArrayStatus, DeviceStatus};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The state of the array mounted at `mnt`.
pub fn read(mnt: &Path) -> Result<ArrayStatus, String> {
    if mdfuse_mount_source(mnt).is_none() {
        return Err(format!(
            "{}: no mdfuse array is mounted there",
            mnt.display()
        ));
    }
    let md_dir = mnt.join("md");
    let mut dev_dirs = Vec::new();
    let entries = std::fs::read_dir(&md_dir).map_err(|e| format!("{}: {e}", md_dir.display()))?;
    for entry in entries {
        let name = entry
            .map_err(|e| format!("{}: {e}", md_dir.display()))?
            .file_name();
        let name = name.to_string_lossy();
        if name.starts_with("dev-") {
            dev_dirs.push(name.into_owned());
        }
    }
    let mut status = from_controls(&dev_dirs, |rel| control_read(mnt, &format!("md/{rel}")))?;
    status.mountpoint = super::absolute(mnt);
    status.daemon_pid = daemon_pid(mnt);
    status.bitmap_file = status.daemon_pid.and_then(daemon_bitmap);
    Ok(status)
}

/// The bitmap file on a daemon's command line (`--bitmap=PATH`, as a
/// detached mount starts it, or `--bitmap PATH`).
fn daemon_bitmap(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let opts = &args[..end];
    opts.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix("--bitmap=") {
            Some(v.to_string())
        } else if a == "--bitmap" {
            opts.get(i + 1).cloned()
        } else {
            None
        }
    })
}

/// `mdfuse detail --json MOUNTPOINT`.
pub fn cmd_detail_json(mnt: &Path) -> Result<(), String> {
    let status = read(mnt)?;
    print_json(&status)
}

pub fn print_json<T: Serialize>(value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| format!("JSON: {e}"))?;
    println!("{text}");
    Ok(())
}

#[derive(Serialize)]
struct ExamineOut {
    format_version: u32,
    devices: Vec<mdfuse::report::json::ExamineJson>,
    errors: Vec<DeviceError>,
}

#[derive(Serialize)]
struct DeviceError {
    device: String,
    error: String,
}

/// `mdfuse examine --json LEG...`: the legs that could be read, and why the
/// others could not (then the exit status is 1, as without --json).
pub fn cmd_examine_json(legs: &[PathBuf]) -> Result<(), String> {
    let mut out = ExamineOut {
        format_version: mdfuse::report::json::JSON_FORMAT_VERSION,
        devices: Vec::new(),
        errors: Vec::new(),
    };
    for p in legs {
        let device = p.display().to_string();
        let examined = super::examine_leg(p)
            .map(|(parsed, sectors)| mdfuse::report::json::examine_json(&device, &parsed, sectors));
        match examined {
            Ok(j) => out.devices.push(j),
            Err(error) => out.errors.push(DeviceError { device, error }),
        }
    }
    print_json(&out)?;
    if out.errors.is_empty() {
        Ok(())
    } else {
        Err(out
            .errors
            .iter()
            .map(|e| e.error.clone())
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

/// `mdfuse examine-bitmap --json [--chunks] FILE`.
pub fn cmd_examine_bitmap_json(file: &Path, list_chunks: bool) -> Result<(), String> {
    let (sb, bits) = match mdfuse::array::internal_bitmap::examine_leg(file) {
        Some(r) => r.map_err(|e| e.to_string())?,
        None => mdfuse::bitmap::read_bitmap_for_examine(file).map_err(|e| e.to_string())?,
    };
    let j = mdfuse::report::json::examine_bitmap_json(
        &file.display().to_string(),
        &sb,
        &bits,
        list_chunks,
    );
    #[derive(Serialize)]
    struct Out {
        format_version: u32,
        #[serde(flatten)]
        bitmap: mdfuse::report::json::ExamineBitmapJson,
    }
    print_json(&Out {
        format_version: mdfuse::report::json::JSON_FORMAT_VERSION,
        bitmap: j,
    })
}
