//! The `md/` control files of a running array: md's sysfs attributes
//! (`/sys/block/mdX/md/*`) in names, values, modes and write semantics, so
//! md habits carry over: `echo check > md/sync_action`, `cat md/mismatch_cnt`,
//! `echo faulty > md/dev-leg1.img/state`. Values follow the kernel's md.c and
//! md-bitmap.c `*_show` functions; docs/design.md lists where mdfuse differs.

use super::error::ArrayError;
use super::running::RunningArray;
use super::served::ControlAccess::{self, Read, ReadWrite, Write};
use crate::raid1::{LegState, SyncAction};
use crate::report::mdstat::escape_name;
use std::sync::atomic::Ordering;

/// How an attribute is shown: its value, without the newline (None: there
/// is none to show now, and a read fails with ENOENT).
type Show = fn(&RunningArray) -> Option<String>;
/// How a write to an attribute is taken: `path` and `value` (one trailing
/// newline off) for the refusal's log line; Err is the writer's errno.
type Store = fn(&RunningArray, &str, &str) -> Result<(), i32>;

/// One md attribute under `md/`, as md's `md_sysfs_entry` is: its name, and
/// how it is shown and stored (a file without `show` cannot be read, one
/// without `store` cannot be written; its mode follows).
struct Attr {
    name: &'static str,
    show: Option<Show>,
    store: Option<Store>,
}

impl Attr {
    fn access(&self) -> ControlAccess {
        match (self.show.is_some(), self.store.is_some()) {
            (true, true) => ReadWrite,
            (false, true) => Write,
            _ => Read,
        }
    }
}

const fn ro(name: &'static str, show: Show) -> Attr {
    Attr {
        name,
        show: Some(show),
        store: None,
    }
}

const fn rw(name: &'static str, show: Show, store: Store) -> Attr {
    Attr {
        name,
        show: Some(show),
        store: Some(store),
    }
}

/// The attributes of the array, under `md/`, in md's words and values.
const ARRAY_ATTRS: &[Attr] = &[
    ro("array_state", |a| {
        Some(
            if a.read_only {
                "readonly"
            } else if a.engine.is_active() {
                "active"
            } else {
                "clean"
            }
            .into(),
        )
    }),
    ro("level", |_| Some("raid1".into())),
    ro("raid_disks", |a| Some(a.raid_disks.to_string())),
    ro("degraded", |a| {
        Some((a.raid_disks - a.engine.in_sync_count()).to_string())
    }),
    // md: "1.0", "1.1" or "1.2", by the superblocks' place.
    ro("metadata_version", |a| {
        let sb = a.keeper.current()?;
        Some(
            crate::format::superblock::MetadataVersion::of_super_offset(sb.super_offset)
                .name()
                .into(),
        )
    }),
    ro("uuid", |a| Some(uuid_pu(&a.keeper.current()?.set_uuid))),
    ro("component_size", |a| {
        Some((a.engine.size() / 1024).to_string())
    }),
    // md prints a size only when one was set through this file.
    ro("array_size", |_| Some("default".into())),
    ro("consistency_policy", |a| {
        Some(
            if a.bitmap().is_some() {
                "bitmap"
            } else {
                "resync"
            }
            .into(),
        )
    }),
    ro("resync_start", |a| Some(a.resync_start())),
    rw(
        "sync_action",
        |a| {
            Some(
                match a.sync_progress() {
                    Some(p) => p.action.md_word(),
                    None if a.is_frozen() => "frozen",
                    None => "idle",
                }
                .into(),
            )
        },
        RunningArray::store_sync_action,
    ),
    ro("sync_completed", |a| {
        Some(match a.sync_progress() {
            Some(p) => format!(
                "{} / {}",
                p.done_bytes.load(Ordering::Relaxed) / 512,
                p.total_bytes / 512
            ),
            None => "none".into(),
        })
    }),
    ro("sync_speed", |a| {
        Some(
            a.sync_progress()
                .map(|p| p.speed_kib().to_string())
                .unwrap_or_else(|| "none".into()),
        )
    }),
    rw(
        "sync_speed_min",
        |a| Some(a.show_speed_limit(false)),
        |a, path, value| a.set_speed_limit(path, false, value),
    ),
    rw(
        "sync_speed_max",
        |a| Some(a.show_speed_limit(true)),
        |a, path, value| a.set_speed_limit(path, true, value),
    ),
    ro("mismatch_cnt", |a| Some(a.mismatch_cnt().to_string())),
    ro("last_sync_action", |a| {
        Some(
            a.last_sync_progress()
                .map(|p| p.action.md_word())
                .unwrap_or("none")
                .into(),
        )
    }),
    // mdfuse's own: bytes the current (or last) sync read and wrote or
    // compared; clean chunks skipped by the bitmap do not count.
    ro("sync_copied", |a| {
        Some(
            a.last_sync_progress()
                .map(|p| p.worked_bytes.load(Ordering::Relaxed))
                .unwrap_or(0)
                .to_string(),
        )
    }),
    rw(
        "max_read_errors",
        |a| Some(a.engine.max_read_errors().to_string()),
        RunningArray::store_max_read_errors,
    ),
    rw(
        "safe_mode_delay",
        |a| {
            Some(super::sync_control::format_delay(
                a.sync.safe_mode_delay_ms(),
            ))
        },
        RunningArray::store_safe_mode_delay,
    ),
    Attr {
        name: "new_dev",
        show: None,
        store: Some(RunningArray::store_new_dev),
    },
];

/// md has `bitmap/` whether or not the array has a bitmap (`location` then
/// reads `none`). `location` changes the bitmap (md's location_store,
/// `grow.rs`); `chunksize` is the next bitmap's chunk while there is none.
const BITMAP_FILES: &[(&str, ControlAccess)] = &[
    ("location", ReadWrite),
    ("space", Read),
    ("time_base", Read),
    ("backlog", Read),
    ("chunksize", ReadWrite),
    ("metadata", Read),
    ("can_clear", Read),
    ("max_backlog_used", Read),
];

const DEV_FILES: &[(&str, ControlAccess)] = &[
    ("state", ReadWrite),
    ("errors", Read),
    ("slot", Read),
    ("offset", Read),
    ("size", Read),
    ("recovery_start", Read),
    // md's dev-*/block is the member's block device, whose stat counts its
    // I/O; here the leg's own counters, in that file's layout.
    ("block/stat", Read),
];

/// Why a control write was refused: logged with the reason, answered with
/// an errno (EINVAL for a bad value, as md's sysfs does).
fn refuse(path: &str, value: &str, why: impl std::fmt::Display, errno: i32) -> i32 {
    log::warn!("md control: refused {value:?} > {path}: {why}");
    errno
}

/// How md's sysfs attributes read what is written to them
/// (drivers/md/md.c). The FUSE layer has already taken off one trailing
/// newline (sysfs words "may, or may not, be \n terminated", md.c's
/// cmd_match), so each parser here sees the rest and must match it whole:
/// `frozen\n\n` reaches sync_action as `frozen\n` and is refused, as md
/// refuses it.
mod md_sysfs {
    /// kstrtouint(buf, 10): an optional `+`, then decimal digits, nothing
    /// else. Err is md's errno: EINVAL for no number, ERANGE past 2^32-1.
    pub fn kstrtouint(s: &str) -> Result<u32, i32> {
        let digits = s.strip_prefix('+').unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(libc::EINVAL);
        }
        let mut n: u32 = 0;
        for b in digits.bytes() {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u32::from(b - b'0')))
                .ok_or(libc::ERANGE)?;
        }
        Ok(n)
    }

    /// The kernel's HZ in Debian's kernels (md bounds safe_mode_delay by
    /// UINT_MAX / HZ milliseconds).
    const HZ: u64 = 250;

    /// safe_delay_store: md's strict_strtoul_scaled(buf, 3), digits with at
    /// most one `.` (digits past the third decimal are dropped; an empty
    /// value or a lone `.` is 0), in milliseconds, at most UINT_MAX / HZ.
    pub fn safe_delay_ms(s: &str) -> Option<u64> {
        let mut ms: u64 = 0;
        let mut decimals: Option<u32> = None;
        for b in s.bytes() {
            match (b, decimals) {
                (b'.', None) => decimals = Some(0),
                (b'0'..=b'9', Some(3)) => {}
                (b'0'..=b'9', d) => {
                    ms = ms.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
                    decimals = d.map(|d| d + 1);
                }
                _ => return None,
            }
        }
        let ms = ms.checked_mul(10u64.pow(3 - decimals.unwrap_or(0)))?;
        (ms <= u64::from(u32::MAX) / HZ).then_some(ms)
    }

    /// sync_min_store, sync_max_store: anything that begins with `system`
    /// (md compares 6 bytes), else a kstrtouint that is not 0.
    pub fn speed_limit(s: &str) -> Result<Option<u32>, i32> {
        if s.starts_with("system") {
            return Ok(None);
        }
        match kstrtouint(s)? {
            0 => Err(libc::EINVAL),
            n => Ok(Some(n)),
        }
    }

    /// max_corrected_read_errors_store: a kstrtouint up to INT_MAX.
    pub fn max_read_errors(s: &str) -> Result<u32, i32> {
        kstrtouint(s)?
            .try_into()
            .ok()
            .filter(|n: &i32| *n >= 0)
            .map(|n| n as u32)
            .ok_or(libc::EINVAL)
    }
}

/// md's `dev-*/state` (state_show): its words comma-separated in md's
/// order, `faulty`, `in_sync`, `write_mostly`, `spare`; then mdfuse's own
/// `volatile` for a leg whose writes are never known durable (an NBD
/// server without flush).
fn dev_state(state: LegState, write_mostly: bool, volatile: bool) -> String {
    let mut words: Vec<&str> = Vec::with_capacity(3);
    if matches!(state, LegState::Faulty | LegState::InSync) {
        words.push(state.md_word());
    }
    if write_mostly {
        words.push("write_mostly");
    }
    if !matches!(state, LegState::Faulty | LegState::InSync) {
        words.push(state.md_word());
    }
    if volatile {
        words.push("volatile");
    }
    words.join(",")
}

/// md's `%pU`: the 16 UUID bytes as 8-4-4-4-12 lowercase hex.
fn uuid_pu(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

impl RunningArray {
    pub fn control_file_list(&self) -> Vec<(String, ControlAccess)> {
        // A read-only array takes no control writes.
        let access = |a: ControlAccess| if self.read_only { Read } else { a };
        let mut out: Vec<(String, ControlAccess)> = ARRAY_ATTRS
            .iter()
            .filter(|a| !(self.read_only && a.access() == Write))
            .map(|a| (format!("md/{}", a.name), access(a.access())))
            .collect();
        out.extend(
            BITMAP_FILES
                .iter()
                .map(|(n, a)| (format!("md/bitmap/{n}"), access(*a))),
        );
        for (slot, name) in self.leg_names().into_iter().enumerate() {
            let Some(name) = name else { continue };
            let name = escape_name(&name);
            out.extend(
                DEV_FILES
                    .iter()
                    .map(|(n, a)| (format!("md/dev-{name}/{n}"), access(*a))),
            );
            if self.remote_value(slot, "uri").is_some() {
                out.extend(
                    super::reconnect::REMOTE_FILES
                        .iter()
                        .map(|n| (format!("md/dev-{name}/remote/{n}"), Read)),
                );
            }
        }
        out
    }

    /// The slot whose leg is named `dev-NAME` in `md/` (NAME is the leg's
    /// file name, escaped as [`escape_name`] does: a newline in it cannot
    /// make a line of `ls md/`).
    fn slot_of_dev(&self, dev: &str) -> Option<usize> {
        let name = dev.strip_prefix("dev-")?;
        self.leg_names()
            .iter()
            .position(|n| n.as_deref().map(escape_name).as_deref() == Some(name))
    }

    /// md's `resync_start` (`recovery_cp`): `none` once the legs are known in
    /// sync, else the sector a resync has reached or resumes from.
    fn resync_start(&self) -> String {
        if !self.needs_resync() {
            return "none".into();
        }
        let reached = self
            .last_sync_progress()
            .filter(|p| p.action == SyncAction::Resync)
            .map(|p| p.done_bytes.load(Ordering::Relaxed));
        (reached.unwrap_or(self.sync.resync_cp()) / 512).to_string()
    }

    /// md's `dev-*/recovery_start`: `none` for an in-sync leg, the sector its
    /// recovery has reached for a recovering one (md's `recovery_offset`,
    /// which is 0 for a leg failed out of sync).
    fn recovery_start(&self, slot: usize, state: LegState) -> String {
        if state == LegState::InSync {
            return "none".into();
        }
        let reached = self
            .last_sync_progress()
            .filter(|p| p.action == (SyncAction::Recover { target: slot }))
            .filter(|_| state == LegState::Recovering)
            .map(|p| p.done_bytes.load(Ordering::Relaxed) / 512);
        reached.unwrap_or(0).to_string()
    }

    fn bitmap_value(&self, attr: &str) -> Option<String> {
        let bitmap = self.bitmap();
        let service = bitmap.as_ref().map(|b| b.service());
        let internal_at = match (&bitmap, self.keeper.current()) {
            (Some(b), Some(sb)) if b.is_internal() => Some(sb.bitmap_offset),
            _ => None,
        };
        Some(match attr {
            // md: "+N" (signed sectors from the superblock) for an internal one.
            "location" => match (&bitmap, internal_at) {
                (Some(_), Some(at)) => format!("{at:+}"),
                (Some(_), None) => "file".into(),
                (None, _) => "none".into(),
            },
            // md's bitmap_info.space (super_1_validate): the sectors an
            // internal bitmap below a 1.0 superblock may use, up to it;
            // 0 on 1.1 and 1.2 ("no change is possible"), with a file or
            // without a bitmap.
            "space" => match (internal_at, self.keeper.current()) {
                (Some(at), Some(sb))
                    if crate::format::superblock::MetadataVersion::of_super_offset(
                        sb.super_offset,
                    ) == crate::format::superblock::MetadataVersion::V1_0 =>
                {
                    if at > 0 {
                        (8 - i64::from(at)).to_string()
                    } else {
                        (-i64::from(at)).to_string()
                    }
                }
                _ => "0".into(),
            },
            "time_base" => service
                .map(|s| s.header().daemon_sleep)
                .unwrap_or(0)
                .to_string(),
            // Write-behind is not supported: no backlog, ever.
            "backlog" | "max_backlog_used" => "0".into(),
            // Without a bitmap, the next one's (md shows bitmap_info.chunksize).
            "chunksize" => service
                .map(|s| u64::from(s.chunk_size()))
                .unwrap_or_else(|| self.next_chunk().unwrap_or(0))
                .to_string(),
            "metadata" => "internal".into(),
            "can_clear" => match service {
                Some(s) if s.header_write_due() => "false".into(),
                Some(_) => "true".into(),
                None => String::new(),
            },
            _ => return None,
        })
    }

    fn dev_value(&self, slot: usize, attr: &str) -> Option<String> {
        let s = &self.engine.slots()[slot];
        let io = s.io()?;
        let state = s.state();
        Some(match attr {
            "state" => dev_state(state, s.is_write_mostly(), io.leg().is_volatile()),
            "errors" => s.errors().to_string(),
            // md keeps a recovering spare in its slot; a faulty leg leaves it.
            "slot" => match state {
                LegState::InSync | LegState::Recovering => slot.to_string(),
                _ => "none".into(),
            },
            "offset" => (io.data_offset() / 512).to_string(),
            // The leg's data size in KiB (its superblock's data_size), not
            // the array's.
            "size" => {
                let sectors = self
                    .keeper
                    .data_sectors(slot)
                    .unwrap_or_else(|| io.leg().size().saturating_sub(io.data_offset()) / 512);
                (sectors / 2).to_string()
            }
            "recovery_start" => self.recovery_start(slot, state),
            "block/stat" => io.leg().io_stats().block_stat_line(),
            remote if remote.starts_with("remote/") => {
                return self.remote_value(slot, &remote["remote/".len()..])
            }
            _ => return None,
        })
    }

    /// A control file's content; None for a path that is not one (or, like
    /// `new_dev`, cannot be read).
    pub fn control_read_value(&self, path: &str) -> Option<String> {
        let rel = path.strip_prefix("md/")?;
        let v = match ARRAY_ATTRS.iter().find(|a| a.name == rel) {
            Some(attr) => (attr.show?)(self)?,
            None => {
                let (dir, attr) = rel.split_once('/')?;
                if dir == "bitmap" {
                    self.bitmap_value(attr)?
                } else {
                    self.dev_value(self.slot_of_dev(dir)?, attr)?
                }
            }
        };
        Some(format!("{v}\n"))
    }

    /// A write to a control file; Err is the errno for the writer.
    /// `value` is what was written, one trailing newline taken off; every
    /// file takes exactly what md's does (see [`md_sysfs`]): no blanks
    /// around a word, no second newline.
    pub fn control_write_value(&self, path: &str, value: &str) -> Result<(), i32> {
        if self.read_only {
            return Err(refuse(path, value, "the array is read-only", libc::EROFS));
        }
        if value.contains('\0') {
            // md would read up to the NUL; a NUL in a value is refused here.
            return Err(refuse(path, value, "a NUL byte in the value", libc::EINVAL));
        }
        let rel = path.strip_prefix("md/").unwrap_or(path);
        match ARRAY_ATTRS.iter().find(|a| a.name == rel) {
            Some(attr) => match attr.store {
                Some(store) => store(self, path, value),
                None => Err(refuse(path, value, "not writable", libc::EACCES)),
            },
            None if rel == "bitmap/location" => self.store_bitmap_location(path, value),
            None if rel == "bitmap/chunksize" => self.store_bitmap_chunksize(path, value),
            None => {
                let Some((dev, "state")) = rel.split_once('/') else {
                    return Err(refuse(path, value, "not writable", libc::EACCES));
                };
                let slot = self
                    .slot_of_dev(dev)
                    .ok_or_else(|| refuse(path, value, "no such leg", libc::ENOENT))?;
                self.write_dev_state(path, slot, value)
            }
        }
    }

    /// md's action_store: idle/frozen stop the running sync (idle lets an
    /// owed one restart); the others are refused (EBUSY) while a sync runs.
    fn store_sync_action(&self, path: &str, value: &str) -> Result<(), i32> {
        let failed = |e: ArrayError| refuse(path, value, &e, e.errno());
        match value {
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
        }
    }

    fn store_safe_mode_delay(&self, path: &str, value: &str) -> Result<(), i32> {
        let ms = md_sysfs::safe_delay_ms(value).ok_or_else(|| {
            refuse(
                path,
                value,
                "a delay in seconds (e.g. 0.2), at most 17179.869",
                libc::EINVAL,
            )
        })?;
        self.sync.set_safe_mode_delay_ms(ms);
        Ok(())
    }

    fn store_max_read_errors(&self, path: &str, value: &str) -> Result<(), i32> {
        let n = md_sysfs::max_read_errors(value).map_err(|errno| {
            refuse(
                path,
                value,
                "a count of read errors (0 to 2147483647)",
                errno,
            )
        })?;
        self.engine.set_max_read_errors(n);
        Ok(())
    }

    /// md's new_dev: a leg's absolute path or NBD URI (added, as a new leg
    /// or a former member), or `re-add LEG` (only a former member).
    fn store_new_dev(&self, path: &str, value: &str) -> Result<(), i32> {
        let (re_add_only, leg) = match value.strip_prefix("re-add ") {
            Some(p) => (true, p),
            None => (false, value),
        };
        if !leg.starts_with('/') && !crate::io::leg::is_remote_name(std::path::Path::new(leg)) {
            return Err(refuse(
                path,
                value,
                "new_dev takes a leg's absolute path or an NBD URI",
                libc::EINVAL,
            ));
        }
        self.add_leg(std::path::Path::new(leg), re_add_only)
            .map(|_| ())
            .map_err(|e| refuse(path, value, &e, e.errno()))
    }

    /// `sync_speed_min`/`max` as md shows them: KiB/s, and whether it was
    /// set for this array ("local") or is the default ("system").
    fn show_speed_limit(&self, is_max: bool) -> String {
        let (v, local) = self.sync.limit(is_max);
        format!("{v} ({})", if local { "local" } else { "system" })
    }

    /// `sync_speed_min`/`max`: KiB/s (a positive 32-bit number, "local"), or
    /// `system` for md's default.
    fn set_speed_limit(&self, path: &str, is_max: bool, value: &str) -> Result<(), i32> {
        let local = md_sysfs::speed_limit(value)
            .map_err(|errno| {
                refuse(
                    path,
                    value,
                    "a speed in KiB/s (1 to 4294967295), or system",
                    errno,
                )
            })?
            .map(u64::from);
        self.sync.set_limit(is_max, local);
        Ok(())
    }

    /// md's `bitmap/location` store: `none` removes the bitmap, `+N` (or
    /// mdfuse's `internal`) adds an internal one, mdfuse's `file:PATH` a
    /// new bitmap file (see `grow.rs`).
    fn store_bitmap_location(&self, path: &str, value: &str) -> Result<(), i32> {
        // md: with a bitmap in place, anything but none is EBUSY, unread.
        if self.bitmap().is_some() && !value.starts_with("none") {
            return Err(refuse(
                path,
                value,
                "the array has a bitmap; write none to remove it first, as md requires",
                libc::EBUSY,
            ));
        }
        let change = super::grow::BitmapChange::parse(value)
            .map_err(|why| refuse(path, value, why, libc::EINVAL))?;
        self.change_bitmap(change)
            .map(|_| ())
            .map_err(|e| refuse(path, value, &e, e.errno()))
    }

    /// md's chunksize_store: only without a bitmap (EBUSY), a power of two
    /// of at least 512 bytes (EINVAL), below 2^32 (EOVERFLOW): the chunk of
    /// the next bitmap added.
    fn store_bitmap_chunksize(&self, path: &str, value: &str) -> Result<(), i32> {
        if self.bitmap().is_some() {
            return Err(refuse(
                path,
                value,
                "the array has a bitmap; its chunk changes only with a new bitmap",
                libc::EBUSY,
            ));
        }
        let digits = value.strip_prefix('+').unwrap_or(value);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse(path, value, "a chunk size in bytes", libc::EINVAL));
        }
        let c: u64 = digits
            .parse()
            .map_err(|_| refuse(path, value, "out of range", libc::ERANGE))?;
        if c < 512 || !c.is_power_of_two() {
            return Err(refuse(
                path,
                value,
                "a power of two of at least 512 bytes",
                libc::EINVAL,
            ));
        }
        if c >= 1 << 32 {
            return Err(refuse(path, value, "below 4 GiB", libc::EOVERFLOW));
        }
        self.next_chunk.store(c, Ordering::Release);
        Ok(())
    }

    /// `dev-*/state`: md's `faulty`, `remove`, `re-add`, `writemostly`
    /// and `-writemostly`.
    fn write_dev_state(&self, path: &str, slot: usize, value: &str) -> Result<(), i32> {
        let failed = |e: ArrayError| refuse(path, value, &e, e.errno());
        let state = self.engine.slots()[slot].state();
        match value {
            "writemostly" => self.set_write_mostly(slot, true).map_err(failed),
            "-writemostly" => self.set_write_mostly(slot, false).map_err(failed),
            "faulty" => self.fail(slot).map_err(failed),
            "remove" => {
                // md: no device leaves while a sync runs over it; a
                // recovering leg is failed first (which ends its recovery).
                let recovering = self
                    .sync_progress()
                    .is_some_and(|p| p.action == (SyncAction::Recover { target: slot }));
                if state == LegState::Recovering && recovering {
                    return Err(refuse(
                        path,
                        value,
                        "the leg is being recovered; write faulty first, then remove",
                        libc::EBUSY,
                    ));
                }
                self.remove(slot).map_err(failed)
            }
            "re-add" => {
                // A faulty leg goes out and comes back, recovered from the
                // bitmap where md's rule allows.
                // Checked first, so a refusal leaves the leg where it was.
                let leg = self.check_re_add(slot).map_err(failed)?;
                self.remove(slot).map_err(failed)?;
                self.add_leg(&leg, true).map(|_| ()).map_err(failed)
            }
            _ => Err(refuse(
                path,
                value,
                "dev-*/state takes faulty, remove, re-add, writemostly or -writemostly",
                libc::EINVAL,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::md_sysfs::*;
    use super::{dev_state, uuid_pu};
    use crate::raid1::LegState;

    #[test]
    fn dev_state_words_come_in_mds_order() {
        // md's state_show: faulty, in_sync, write_mostly, ..., spare.
        assert_eq!(dev_state(LegState::InSync, false, false), "in_sync");
        assert_eq!(
            dev_state(LegState::InSync, true, false),
            "in_sync,write_mostly"
        );
        assert_eq!(
            dev_state(LegState::Faulty, true, false),
            "faulty,write_mostly"
        );
        assert_eq!(
            dev_state(LegState::Recovering, true, false),
            "write_mostly,spare"
        );
        assert_eq!(
            dev_state(LegState::InSync, true, true),
            "in_sync,write_mostly,volatile"
        );
        assert_eq!(
            dev_state(LegState::Recovering, false, true),
            "spare,volatile"
        );
    }

    #[test]
    fn numbers_read_as_md_reads_them() {
        assert_eq!(kstrtouint("5"), Ok(5));
        assert_eq!(kstrtouint("+5"), Ok(5));
        assert_eq!(kstrtouint("007"), Ok(7));
        assert_eq!(kstrtouint("4294967295"), Ok(u32::MAX));
        assert_eq!(kstrtouint("4294967296"), Err(libc::ERANGE));
        for bad in ["", "+", "-1", " 5", "5 ", "5\n", "0x10", "5k"] {
            assert_eq!(kstrtouint(bad), Err(libc::EINVAL), "{bad:?}");
        }
        assert_eq!(speed_limit("system"), Ok(None));
        assert_eq!(speed_limit("systemwide\n"), Ok(None));
        assert_eq!(speed_limit("0"), Err(libc::EINVAL));
        assert_eq!(speed_limit("+1000"), Ok(Some(1000)));
        assert_eq!(max_read_errors("2147483647"), Ok(i32::MAX as u32));
        assert_eq!(max_read_errors("2147483648"), Err(libc::EINVAL));
        assert_eq!(max_read_errors("4294967296"), Err(libc::ERANGE));
    }

    #[test]
    fn safe_mode_delay_reads_as_md_reads_it() {
        assert_eq!(safe_delay_ms("0.2"), Some(200));
        assert_eq!(safe_delay_ms("1"), Some(1000));
        assert_eq!(safe_delay_ms("0.1255"), Some(125));
        assert_eq!(safe_delay_ms(".5"), Some(500));
        assert_eq!(safe_delay_ms("5."), Some(5000));
        assert_eq!(safe_delay_ms(""), Some(0));
        assert_eq!(safe_delay_ms("."), Some(0));
        assert_eq!(safe_delay_ms("17179.869"), Some(17_179_869));
        assert_eq!(safe_delay_ms("17179.870"), None);
        assert_eq!(safe_delay_ms("99999999999999999999999"), None);
        for bad in ["x", "1.-2", "+1", "-1", "1.2.3", " 1", "1 ", "0.2\n", "1e3"] {
            assert_eq!(safe_delay_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn uuid_as_md_prints_it() {
        // From Linux md: uuid=b0e9c641-f061-3a9e-780b-dc019e4a5a83 for the
        // array mdadm shows as b0e9c641:f0613a9e:780bdc01:9e4a5a83.
        let bytes = [
            0xb0, 0xe9, 0xc6, 0x41, 0xf0, 0x61, 0x3a, 0x9e, 0x78, 0x0b, 0xdc, 0x01, 0x9e, 0x4a,
            0x5a, 0x83,
        ];
        assert_eq!(uuid_pu(&bytes), "b0e9c641-f061-3a9e-780b-dc019e4a5a83");
    }
}
