//! A running array's state as data: read once from its mount's `md/` files
//! (and the daemon's pid file), for `mdfuse detail --json` and `mdfuse
//! metrics`. The field names are stable (docs/json.md).

use super::{control_read, daemon_pid, mdadm_uuid, mdfuse_mount_source};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize)]
pub struct ArrayStatus {
    pub format_version: u32,
    pub mountpoint: String,
    /// md's metadata_version: "1.2".
    pub version: String,
    pub raid_level: String,
    pub array_size_kib: u64,
    pub raid_devices: usize,
    pub total_devices: usize,
    /// Null without a bitmap.
    pub intent_bitmap: Option<IntentBitmap>,
    /// md's array_state word: clean, active, readonly, ...
    pub array_state: String,
    /// The text's State line: array_state, then ", degraded" and the sync in
    /// mdadm's words ("clean, degraded, recovering").
    pub state: String,
    pub degraded: bool,
    /// Slots without an in-sync leg (md's `degraded`).
    pub degraded_devices: usize,
    pub active_devices: usize,
    pub working_devices: usize,
    pub failed_devices: usize,
    pub spare_devices: usize,
    /// md's sync_action: idle, resync, recover, check, repair, frozen.
    pub sync_action: String,
    /// Null when no sync runs.
    pub sync_progress: Option<SyncProgress>,
    pub consistency_policy: String,
    /// In mdadm's form (four groups of 8 hex digits).
    pub uuid: String,
    pub mismatch_count: u64,
    /// The current or last sync's action; null when none ran since the start.
    pub last_sync_action: Option<String>,
    /// Bytes the current or last sync copied or compared; null as above.
    pub sync_copied_bytes: Option<u64>,
    pub devices: Vec<DeviceStatus>,
    /// The daemon serving the array (from its pid file); null if unknown.
    pub daemon_pid: Option<u32>,
    /// The bitmap file the daemon was given; null without one (or unknown).
    pub bitmap_file: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct IntentBitmap {
    /// "file": mdfuse's bitmaps are files.
    pub location: String,
    pub chunk_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct SyncProgress {
    /// The text's label: "Rebuild Status", "Check Status", "Resync Status".
    pub label: String,
    pub completed_sectors: u64,
    pub total_sectors: u64,
    /// 0 to 100 (the text prints it rounded).
    pub percent: f64,
    pub speed_kib: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct DeviceStatus {
    /// The text's Number column.
    pub number: usize,
    /// The slot (the text's RaidDevice); null when the leg holds none.
    pub raid_device: Option<usize>,
    /// md's dev-*/state word: in_sync, spare, faulty, ...
    pub state: String,
    /// The text's State column: "active sync", "spare rebuilding", ...
    pub state_text: String,
    /// The leg's name as md/dev-NAME spells it (escaped).
    pub name: String,
    /// Read errors corrected on this leg (md's dev-*/errors).
    pub errors: u64,
    /// Bytes read from and written to the leg since it joined this run of
    /// the array (md's dev-*/block/stat, sectors × 512): data, superblocks
    /// and syncs.
    pub read_bytes: u64,
    pub written_bytes: u64,
}

/// mdadm --detail's words for a leg's md state.
pub fn state_text(md_state: &str) -> &str {
    match md_state {
        "in_sync" => "active sync",
        "spare" => "spare rebuilding",
        "faulty" => "faulty",
        other => other,
    }
}

fn num<T: std::str::FromStr>(rel: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("md/{rel}: {v:?} is not a number"))
}

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

/// The state from md's control values: `dev_dirs` are the `dev-NAME`
/// directories of `md/`, `get("raid_disks")` reads `md/raid_disks`. The
/// mountpoint, daemon pid and bitmap file are left for the caller.
pub fn from_controls(
    dev_dirs: &[String],
    get: impl Fn(&str) -> Result<String, String>,
) -> Result<ArrayStatus, String> {
    let raid_disks: usize = num("raid_disks", &get("raid_disks")?)?;
    let kib: u64 = num("component_size", &get("component_size")?)?;
    let mut devices = Vec::new();
    for name in dev_dirs {
        let Some(leg) = name.strip_prefix("dev-") else {
            continue;
        };
        // md's state word, then its flags (`in_sync,volatile`): the word
        // is the state; a flag is said after it in the text's column.
        let full = get(&format!("{name}/state"))?;
        let (state, flags) = match full.split_once(',') {
            Some((w, f)) => (w.to_string(), f.replace(',', " ")),
            None => (full, String::new()),
        };
        let slot = get(&format!("{name}/slot"))?;
        let errors = get(&format!("{name}/errors"))?;
        // Fields 3 and 7 of the block stat line: sectors read and written.
        let stat = get(&format!("{name}/block/stat")).unwrap_or_default();
        let sectors = |k: usize| {
            stat.split_whitespace()
                .nth(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        devices.push(DeviceStatus {
            number: 0,
            raid_device: slot.parse().ok(),
            state_text: if flags.is_empty() {
                state_text(&state).to_string()
            } else {
                format!("{} {flags}", state_text(&state))
            },
            state,
            name: leg.to_string(),
            errors: num(&format!("{name}/errors"), &errors)?,
            read_bytes: sectors(2).saturating_mul(512),
            written_bytes: sectors(6).saturating_mul(512),
        });
    }
    // As the text: by slot, legs without one last.
    devices.sort_by_key(|d| d.raid_device.unwrap_or(usize::MAX));
    for (i, d) in devices.iter_mut().enumerate() {
        d.number = i;
    }
    let count = |s: &str| devices.iter().filter(|d| d.state == s).count();
    let (active, failed, spare) = (count("in_sync"), count("faulty"), count("spare"));
    let action = get("sync_action")?;
    let array_state = get("array_state")?;
    let mut state = array_state.clone();
    if active < raid_disks {
        state.push_str(", degraded");
    }
    if action != "idle" {
        state.push_str(", ");
        state.push_str(if action == "recover" {
            "recovering"
        } else {
            &action
        });
    }
    let sync_progress = if action == "idle" {
        None
    } else {
        let completed = get("sync_completed")?;
        completed
            .split_once(" / ")
            .and_then(|(d, t)| Some((d.parse::<u64>().ok()?, t.parse::<u64>().ok()?)))
            .map(|(done, total)| SyncProgress {
                label: match action.as_str() {
                    "recover" => "Rebuild Status",
                    "check" => "Check Status",
                    _ => "Resync Status",
                }
                .into(),
                completed_sectors: done,
                total_sectors: total,
                percent: if total == 0 {
                    0.0
                } else {
                    done as f64 * 100.0 / total as f64
                },
                speed_kib: get("sync_speed").ok().and_then(|s| s.parse().ok()),
            })
    };
    let intent_bitmap = if get("bitmap/location")? != "none" {
        Some(IntentBitmap {
            location: "file".into(),
            chunk_bytes: num("bitmap/chunksize", &get("bitmap/chunksize")?)?,
        })
    } else {
        None
    };
    let last = get("last_sync_action")?;
    let ran = last != "none";
    Ok(ArrayStatus {
        format_version: mdfuse::report::json::JSON_FORMAT_VERSION,
        mountpoint: String::new(),
        version: get("metadata_version")?,
        raid_level: get("level")?,
        array_size_kib: kib,
        raid_devices: raid_disks,
        total_devices: devices.len(),
        intent_bitmap,
        array_state,
        state,
        degraded: active < raid_disks,
        degraded_devices: raid_disks.saturating_sub(active),
        active_devices: active,
        working_devices: devices.len() - failed,
        failed_devices: failed,
        spare_devices: spare,
        sync_action: action,
        sync_progress,
        consistency_policy: get("consistency_policy")?,
        uuid: mdadm_uuid(&get("uuid")?),
        mismatch_count: num("mismatch_cnt", &get("mismatch_cnt")?)?,
        last_sync_action: ran.then(|| last.clone()),
        sync_copied_bytes: if ran {
            Some(num("sync_copied", &get("sync_copied")?)?)
        } else {
            None
        },
        devices,
        daemon_pid: None,
        bitmap_file: None,
    })
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
    let (sb, bits) = mdfuse::bitmap::read_bitmap_for_examine(file).map_err(|e| e.to_string())?;
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
