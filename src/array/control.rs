//! The `md/` control files of a running array: md's sysfs attributes
//! (`/sys/block/mdX/md/*`) in names, values and write semantics, so md habits
//! carry over: `echo check > md/sync_action`, `cat md/mismatch_cnt`,
//! `echo faulty > md/dev-leg1.img/state`.

use super::error::ArrayError;
use super::running::RunningArray;
use crate::raid1::{LegState, SpeedLimits, SyncAction};
use std::sync::atomic::Ordering;

/// Attributes of the array (path under `md/`, writable).
const ARRAY_FILES: &[(&str, bool)] = &[
    ("array_state", false),
    ("level", false),
    ("raid_disks", false),
    ("degraded", false),
    ("metadata_version", false),
    ("uuid", false),
    ("component_size", false),
    ("sync_action", true),
    ("sync_completed", false),
    ("sync_speed", false),
    ("sync_speed_min", true),
    ("sync_speed_max", true),
    ("mismatch_cnt", false),
    ("last_sync_action", false),
    ("sync_copied", false),
    ("max_read_errors", true),
    ("safe_mode_delay", true),
    ("new_dev", true),
];

const BITMAP_FILES: &[&str] = &["location", "chunksize", "time_base", "metadata"];

const DEV_FILES: &[(&str, bool)] = &[
    ("state", true),
    ("errors", false),
    ("slot", false),
    ("offset", false),
    ("size", false),
];

/// Why a control write was refused: logged with the reason, answered with
/// an errno (EINVAL for a bad value, as md's sysfs does).
fn refuse(path: &str, value: &str, why: impl std::fmt::Display, errno: i32) -> i32 {
    log::warn!("md control: refused {value:?} > {path}: {why}");
    errno
}

impl RunningArray {
    pub fn control_file_list(&self) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = ARRAY_FILES
            .iter()
            .map(|(n, w)| (format!("md/{n}"), *w && !self.read_only))
            .collect();
        if self.bitmap.is_some() {
            out.extend(
                BITMAP_FILES
                    .iter()
                    .map(|n| (format!("md/bitmap/{n}"), false)),
            );
        }
        for name in self.leg_names().into_iter().flatten() {
            out.extend(
                DEV_FILES
                    .iter()
                    .map(|(n, w)| (format!("md/dev-{name}/{n}"), *w && !self.read_only)),
            );
        }
        out
    }

    /// The slot whose leg is named `dev-NAME` in `md/`.
    fn slot_of_dev(&self, dev: &str) -> Option<usize> {
        let name = dev.strip_prefix("dev-")?;
        self.leg_names()
            .iter()
            .position(|n| n.as_deref() == Some(name))
    }

    pub fn control_read_value(&self, path: &str) -> Option<String> {
        let rel = path.strip_prefix("md/")?;
        let engine = &self.engine;
        let v = match rel {
            "array_state" => if self.read_only {
                "readonly"
            } else if engine.is_active() {
                "active"
            } else {
                "clean"
            }
            .to_string(),
            "level" => "raid1".into(),
            "raid_disks" => self.raid_disks.to_string(),
            "degraded" => (self.raid_disks - engine.in_sync_count()).to_string(),
            "metadata_version" => "1.2".into(),
            "uuid" => self.uuid.clone(),
            "component_size" => (engine.size() / 1024).to_string(),
            "sync_action" => match self.sync_progress() {
                Some(p) => p.action.md_word(),
                None if self.is_frozen() => "frozen",
                None => "idle",
            }
            .to_string(),
            "sync_completed" => match self.sync_progress() {
                Some(p) => format!(
                    "{} / {}",
                    p.done_bytes.load(Ordering::Relaxed) / 512,
                    p.total_bytes / 512
                ),
                None => "none".into(),
            },
            "sync_speed" => self
                .sync_progress()
                .map(|p| p.speed_kib().to_string())
                .unwrap_or_else(|| "none".into()),
            "sync_speed_min" | "sync_speed_max" => {
                let l = *self.sync_limits().lock();
                let d = SpeedLimits::default();
                let (v, default) = if rel == "sync_speed_min" {
                    (l.min_kib, d.min_kib)
                } else {
                    (l.max_kib, d.max_kib)
                };
                format!("{v} ({})", if v == default { "system" } else { "local" })
            }
            "mismatch_cnt" => self.mismatch_cnt().to_string(),
            "last_sync_action" => self
                .last_sync_progress()
                .map(|p| p.action.md_word())
                .unwrap_or("none")
                .to_string(),
            // mdfuse's own: bytes the current (or last) sync read and wrote
            // or compared; clean chunks skipped by the bitmap do not count.
            "sync_copied" => self
                .last_sync_progress()
                .map(|p| p.worked_bytes.load(Ordering::Relaxed))
                .unwrap_or(0)
                .to_string(),
            "max_read_errors" => engine.max_read_errors().to_string(),
            "safe_mode_delay" => super::md_thread::format_delay(
                self.control.safe_mode_delay_ms.load(Ordering::Relaxed),
            ),
            "new_dev" => String::new(),
            "bitmap/location" => "file".into(),
            "bitmap/chunksize" => self.bitmap.as_ref()?.service().chunk_size().to_string(),
            "bitmap/time_base" => self
                .bitmap
                .as_ref()?
                .service()
                .header()
                .daemon_sleep
                .to_string(),
            "bitmap/metadata" => "internal".into(),
            _ => {
                let (dev, attr) = rel.split_once('/')?;
                let slot = self.slot_of_dev(dev)?;
                let s = &engine.slots()[slot];
                let io = s.io()?;
                match attr {
                    "state" => s.state().md_word().to_string(),
                    "errors" => s.errors().to_string(),
                    // md shows the slot of a leg being recovered too.
                    "slot" => match s.state() {
                        LegState::InSync | LegState::Recovering => slot.to_string(),
                        _ => "none".into(),
                    },
                    "offset" => (io.data_offset() / 512).to_string(),
                    "size" => (engine.size() / 1024).to_string(),
                    _ => return None,
                }
            }
        };
        Some(format!("{v}\n"))
    }

    /// A write to a control file; Err is the errno for the writer.
    pub fn control_write_value(&self, path: &str, value: &str) -> Result<(), i32> {
        let value = value.trim();
        if self.read_only {
            return Err(refuse(path, value, "the array is read-only", libc::EROFS));
        }
        let failed = |e: ArrayError| refuse(path, value, &e, e.errno());
        let rel = path.strip_prefix("md/").unwrap_or(path);
        match rel {
            // md's action_store: idle/frozen stop the running sync (idle
            // lets an owed one restart); the others are refused (EBUSY)
            // while a sync runs.
            "sync_action" => match value {
                "idle" => {
                    self.set_sync_idle(false);
                    Ok(())
                }
                "frozen" => {
                    self.set_sync_idle(true);
                    Ok(())
                }
                "check" | "repair" if self.sync_progress().is_some() => Err(refuse(
                    path,
                    value,
                    "a sync is already running",
                    libc::EBUSY,
                )),
                "check" => self.start_scrub(SyncAction::Check).map_err(failed),
                "repair" => self.start_scrub(SyncAction::Repair).map_err(failed),
                "resync" | "recover" => self.request_owed_sync().map_err(failed),
                _ => Err(refuse(
                    path,
                    value,
                    "sync_action takes idle, frozen, resync, recover, check or repair",
                    libc::EINVAL,
                )),
            },
            "safe_mode_delay" => {
                let ms = super::md_thread::parse_delay(value).ok_or_else(|| {
                    refuse(path, value, "a delay in seconds (e.g. 0.2)", libc::EINVAL)
                })?;
                self.control.safe_mode_delay_ms.store(ms, Ordering::Relaxed);
                Ok(())
            }
            "sync_speed_min" | "sync_speed_max" => {
                let d = SpeedLimits::default();
                let v = if value == "system" {
                    if rel == "sync_speed_min" {
                        d.min_kib
                    } else {
                        d.max_kib
                    }
                } else {
                    value
                        .parse::<u64>()
                        .ok()
                        .filter(|&v| v > 0)
                        .ok_or_else(|| {
                            refuse(path, value, "a speed in KiB/s, or system", libc::EINVAL)
                        })?
                };
                let mut l = self.sync_limits().lock();
                if rel == "sync_speed_min" {
                    l.min_kib = v;
                } else {
                    l.max_kib = v;
                }
                Ok(())
            }
            "max_read_errors" => {
                let n = value
                    .parse::<u32>()
                    .ok()
                    .ok_or_else(|| refuse(path, value, "a count of read errors", libc::EINVAL))?;
                self.engine.set_max_read_errors(n);
                Ok(())
            }
            "new_dev" => {
                let (re_add_only, leg) = match value.strip_prefix("re-add ") {
                    Some(p) => (true, p.trim()),
                    None => (false, value),
                };
                if !leg.starts_with('/') {
                    return Err(refuse(
                        path,
                        value,
                        "new_dev takes a leg's absolute path",
                        libc::EINVAL,
                    ));
                }
                self.add_leg(std::path::Path::new(leg), re_add_only)
                    .map(|_| ())
                    .map_err(failed)
            }
            _ => {
                let Some((dev, "state")) = rel.split_once('/') else {
                    return Err(refuse(path, value, "not writable", libc::EACCES));
                };
                let slot = self
                    .slot_of_dev(dev)
                    .ok_or_else(|| refuse(path, value, "no such leg", libc::ENOENT))?;
                match value {
                    "faulty" => self.fail(slot).map_err(failed),
                    "remove" => self.remove(slot).map_err(failed),
                    "re-add" => {
                        // A faulty leg goes out and comes back, recovered from
                        // the bitmap where md's rule allows; checked first so
                        // a refusal leaves it where it was.
                        let leg = self.check_re_add(slot).map_err(failed)?;
                        self.remove(slot).map_err(failed)?;
                        self.add_leg(&leg, true).map(|_| ()).map_err(failed)
                    }
                    _ => Err(refuse(
                        path,
                        value,
                        "dev-*/state takes faulty, remove or re-add",
                        libc::EINVAL,
                    )),
                }
            }
        }
    }
}
