//! `mdadm --detail` for a running array: its state as data ([`ArrayStatus`],
//! built from md's control values by [`from_controls`]; the same fields are
//! `mdfuse detail --json`, docs/json.md) and mdadm's text ([`render`]).
//! Pure: values in, structs and strings out.

use serde::Serialize;

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
    /// md's WriteMostly: read only when no other in-sync leg remains.
    pub write_mostly: bool,
    /// Read errors corrected on this leg (md's dev-*/errors).
    pub errors: u64,
    /// Bytes read from and written to the leg since it joined this run of
    /// the array (md's dev-*/block/stat, sectors × 512): data, superblocks
    /// and syncs.
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// A leg on another machine: its link (null for a local leg).
    pub remote: Option<RemoteLink>,
}

/// A remote leg's link, from `md/dev-NAME/remote/`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RemoteLink {
    pub uri: String,
    /// connected, lost, reconnecting or refused.
    pub link: String,
    /// Why it is lost or refused (empty when connected).
    pub reason: String,
    /// Reconnect tries since the leg was lost.
    pub reconnect_attempts: u64,
    /// Until the next try; null when none is waiting.
    pub next_try_ms: Option<u64>,
    /// The smoothed round trip; null before one was measured.
    pub rtt_us: Option<u64>,
    /// Since the last successful flush on this connection; null if none.
    pub last_flush_ms: Option<u64>,
    pub in_flight: u64,
}

impl RemoteLink {
    /// From the files of `md/dev-NAME/remote/` (`get` takes their names);
    /// None when the leg has none (a local leg).
    fn from_controls(
        dir: &str,
        get: &impl Fn(&str) -> Result<String, String>,
    ) -> Result<Option<RemoteLink>, String> {
        let Ok(uri) = get(&format!("{dir}/remote/uri")) else {
            return Ok(None);
        };
        let f = |n: &str| get(&format!("{dir}/remote/{n}"));
        let opt = |n: &str| -> Result<Option<u64>, String> {
            match f(n)?.as_str() {
                "none" => Ok(None),
                v => num(&format!("{dir}/remote/{n}"), v).map(Some),
            }
        };
        Ok(Some(RemoteLink {
            uri,
            link: f("link")?,
            reason: f("reason")?,
            reconnect_attempts: num(
                &format!("{dir}/remote/reconnect_attempts"),
                &f("reconnect_attempts")?,
            )?,
            next_try_ms: opt("next_try_ms")?,
            rtt_us: opt("rtt_us")?,
            last_flush_ms: opt("last_flush_ms")?,
            in_flight: num(&format!("{dir}/remote/in_flight"), &f("in_flight")?)?,
        }))
    }

    /// One line: "connected, round trip 0.31 ms, last flush 1.2 s ago".
    pub fn summary(&self) -> String {
        let mut out = self.link.clone();
        if self.link != "connected" && self.reconnect_attempts > 0 {
            out.push_str(&format!(", {} tries", self.reconnect_attempts));
        }
        if let Some(n) = self.next_try_ms {
            out.push_str(&format!(", next in {:.1} s", n as f64 / 1000.0));
        }
        if let Some(r) = self.rtt_us {
            out.push_str(&format!(", round trip {:.2} ms", r as f64 / 1000.0));
        }
        match self.last_flush_ms {
            Some(f) => out.push_str(&format!(", last flush {:.1} s ago", f as f64 / 1000.0)),
            None => out.push_str(", no flush yet"),
        }
        if self.in_flight > 0 {
            out.push_str(&format!(", {} in flight", self.in_flight));
        }
        if !self.reason.is_empty() {
            out.push_str(&format!(": {}", self.reason));
        }
        out
    }
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

/// A leg's `dev-*/state` read apart: md's state word and its flags.
struct StateWords {
    /// in_sync, faulty or spare (the first word when none of them is there).
    state: String,
    write_mostly: bool,
    /// Other flags, in their order (mdfuse's `volatile`).
    others: Vec<String>,
}

impl StateWords {
    fn parse(full: &str) -> StateWords {
        let words: Vec<&str> = full.split(',').filter(|w| !w.is_empty()).collect();
        let state = words
            .iter()
            .find(|w| matches!(**w, "in_sync" | "faulty" | "spare"))
            .or(words.first())
            .map(|w| w.to_string())
            .unwrap_or_default();
        StateWords {
            write_mostly: words.contains(&"write_mostly"),
            others: words
                .iter()
                .filter(|w| **w != state && **w != "write_mostly")
                .map(|w| w.to_string())
                .collect(),
            state,
        }
    }

    /// mdadm --detail's State column: `active sync writemostly`,
    /// `faulty writemostly`, `writemostly spare rebuilding` (mdadm prints
    /// writemostly after faulty, active and sync, before spare); mdfuse's
    /// own flags last.
    fn text(&self) -> String {
        let mut out: Vec<&str> = Vec::new();
        let spare = self.state == "spare";
        if !spare {
            out.push(state_text(&self.state));
        }
        if self.write_mostly {
            out.push("writemostly");
        }
        if spare {
            out.push(state_text(&self.state));
        }
        out.extend(self.others.iter().map(String::as_str));
        out.join(" ")
    }
}

fn num<T: std::str::FromStr>(rel: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("md/{rel}: {v:?} is not a number"))
}

/// md's sysfs UUID (8-4-4-4-12) in mdadm's words (four colon-separated
/// groups of 8 hex digits).
pub fn mdadm_uuid(sysfs: &str) -> String {
    let hex: String = sysfs.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return sysfs.to_string();
    }
    [&hex[..8], &hex[8..16], &hex[16..24], &hex[24..]].join(":")
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
        // md's words (`in_sync,write_mostly`, `write_mostly,spare`,
        // mdfuse's `volatile`): one is the state, the others flags.
        let full = get(&format!("{name}/state"))?;
        let words = StateWords::parse(&full);
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
            state_text: words.text(),
            write_mostly: words.write_mostly,
            state: words.state,
            name: leg.to_string(),
            errors: num(&format!("{name}/errors"), &errors)?,
            read_bytes: sectors(2).saturating_mul(512),
            written_bytes: sectors(6).saturating_mul(512),
            remote: RemoteLink::from_controls(name, &get)?,
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
        format_version: super::json::JSON_FORMAT_VERSION,
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

/// mdadm --detail's text for the array `title` names (its mountpoint as
/// the user gave it).
pub fn render(title: &str, s: &ArrayStatus) -> String {
    use std::fmt::Write;
    let mut out = format!("{title}:\n");
    let line = |out: &mut String, k: &str, v: &str| {
        let _ = writeln!(out, "{k:>18} : {v}");
    };
    line(&mut out, "Version", &s.version);
    line(&mut out, "Raid Level", &s.raid_level);
    line(
        &mut out,
        "Array Size",
        &format!(
            "{}{}",
            s.array_size_kib,
            super::human_size(s.array_size_kib as u128 * 1024)
        ),
    );
    line(&mut out, "Raid Devices", &s.raid_devices.to_string());
    line(&mut out, "Total Devices", &s.total_devices.to_string());
    if let Some(b) = &s.intent_bitmap {
        line(
            &mut out,
            "Intent Bitmap",
            &format!("{}, {} byte chunks", b.location, b.chunk_bytes),
        );
    }
    out.push('\n');
    line(&mut out, "State", &s.state);
    line(&mut out, "Active Devices", &s.active_devices.to_string());
    line(&mut out, "Working Devices", &s.working_devices.to_string());
    line(&mut out, "Failed Devices", &s.failed_devices.to_string());
    line(&mut out, "Spare Devices", &s.spare_devices.to_string());
    if s.sync_action != "idle" {
        // mdadm's words: Rebuild for a recovery, Check for a check.
        let label = match s.sync_action.as_str() {
            "recover" => "Rebuild Status",
            "check" => "Check Status",
            _ => "Resync Status",
        };
        let pct = s.sync_progress.as_ref().map_or(0.0, |p| p.percent);
        line(&mut out, label, &format!("{pct:.0}% complete"));
    }
    out.push('\n');
    line(&mut out, "Consistency Policy", &s.consistency_policy);
    out.push('\n');
    line(&mut out, "UUID", &s.uuid);
    line(&mut out, "Mismatch Count", &s.mismatch_count.to_string());
    if let (Some(last), Some(copied)) = (&s.last_sync_action, s.sync_copied_bytes) {
        // mdfuse's own: what the current (or last) sync actually copied.
        line(&mut out, "Sync Copied", &format!("{copied} bytes ({last})"));
    }
    out.push('\n');
    out.push_str("    Number   RaidDevice State\n");
    for d in &s.devices {
        let slot = d
            .raid_device
            .map_or_else(|| "none".to_string(), |r| r.to_string());
        let _ = writeln!(
            out,
            "    {:>6}   {slot:>10} {:<17} {}",
            d.number, d.state_text, d.name
        );
    }
    let remote: Vec<_> = s
        .devices
        .iter()
        .filter_map(|d| Some((d, d.remote.as_ref()?)))
        .collect();
    if !remote.is_empty() {
        // mdfuse's own: the links of the legs on other machines.
        out.push_str(
            "
    Remote Legs
",
        );
        for (d, r) in remote {
            let _ = writeln!(
                out,
                "    {} : {}
    {:w$}   {}",
                d.name,
                r.uri,
                "",
                r.summary(),
                w = d.name.len()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// md's files of a 2-leg array recovering its second leg.
    fn md_file(rel: &str) -> Result<String, String> {
        Ok(match rel {
            "raid_disks" => "2",
            "component_size" => "102400",
            "dev-b.img/state" => "spare",
            "dev-b.img/slot" => "1",
            "dev-a.img/state" => "in_sync",
            "dev-a.img/slot" => "0",
            "dev-a.img/errors" | "dev-b.img/errors" => "0",
            "sync_action" => "recover",
            "array_state" => "clean",
            "sync_completed" => "51200 / 204800",
            "sync_speed" => "1000",
            "bitmap/location" => "file",
            "bitmap/chunksize" => "65536",
            "last_sync_action" => "recover",
            "sync_copied" => "26214400",
            "metadata_version" => "1.2",
            "level" => "raid1",
            "consistency_policy" => "bitmap",
            "uuid" => "01234567-89ab-cdef-0123-456789abcdef",
            "mismatch_cnt" => "0",
            _ => return Err(format!("no md/{rel}")),
        }
        .to_string())
    }

    #[test]
    fn detail_reads_as_mdadm_prints_it() {
        let dirs = ["dev-b.img".to_string(), "dev-a.img".to_string()];
        let s = from_controls(&dirs, md_file).expect("status");
        let text = render("/mnt/m", &s);
        let expected = "\
/mnt/m:
           Version : 1.2
        Raid Level : raid1
        Array Size : 102400 (100.00 MiB 104.86 MB)
      Raid Devices : 2
     Total Devices : 2
     Intent Bitmap : file, 65536 byte chunks

             State : clean, degraded, recovering
    Active Devices : 1
   Working Devices : 2
    Failed Devices : 0
     Spare Devices : 1
    Rebuild Status : 25% complete

Consistency Policy : bitmap

              UUID : 01234567:89abcdef:01234567:89abcdef
    Mismatch Count : 0
       Sync Copied : 26214400 bytes (recover)

    Number   RaidDevice State
         0            0 active sync       a.img
         1            1 spare rebuilding  b.img
";
        assert_eq!(text, expected);
        assert_eq!(s.degraded_devices, 1);
        assert_eq!(
            s.sync_progress.as_ref().and_then(|p| p.speed_kib),
            Some(1000)
        );
    }

    #[test]
    fn a_flag_after_the_state_word_is_said_and_the_leg_still_counts() {
        let dirs = ["dev-b.img".to_string(), "dev-a.img".to_string()];
        let s = from_controls(&dirs, |rel| match rel {
            "dev-a.img/state" => Ok("in_sync,volatile".into()),
            "dev-b.img/state" => Ok("in_sync".into()),
            "sync_action" => Ok("idle".into()),
            other => md_file(other),
        })
        .expect("status");
        let a = &s.devices[0];
        assert_eq!(
            (a.state.as_str(), a.state_text.as_str()),
            ("in_sync", "active sync volatile")
        );
        assert_eq!(s.active_devices, 2);
        assert!(render("/mnt/m", &s).contains("active sync volatile a.img"));
    }

    #[test]
    fn a_remote_legs_link_is_shown_under_the_devices() {
        let dirs = ["dev-b.img".to_string(), "dev-a.img".to_string()];
        let s = from_controls(&dirs, |rel| match rel {
            "dev-b.img/state" => Ok("faulty".into()),
            "dev-b.img/slot" => Ok("none".into()),
            "sync_action" => Ok("idle".into()),
            "dev-b.img/remote/uri" => Ok("nbd://10.9.0.2:10809/b".into()),
            "dev-b.img/remote/link" => Ok("reconnecting".into()),
            "dev-b.img/remote/reason" => Ok("cannot connect: Connection refused".into()),
            "dev-b.img/remote/reconnect_attempts" => Ok("3".into()),
            "dev-b.img/remote/next_try_ms" => Ok("4000".into()),
            "dev-b.img/remote/rtt_us" => Ok("310".into()),
            "dev-b.img/remote/last_flush_ms" => Ok("none".into()),
            "dev-b.img/remote/in_flight" => Ok("0".into()),
            other => md_file(other),
        })
        .expect("status");
        assert_eq!(s.devices[0].remote, None, "a.img is local");
        let b = s.devices[1].remote.as_ref().expect("b.img is remote");
        assert_eq!(
            (b.reconnect_attempts, b.rtt_us, b.last_flush_ms),
            (3, Some(310), None)
        );
        let text = render("/mnt/m", &s);
        assert!(
            text.ends_with(
                "\n    Remote Legs\n    b.img : nbd://10.9.0.2:10809/b\n            \
                 reconnecting, 3 tries, next in 4.0 s, round trip 0.31 ms, no flush yet: \
                 cannot connect: Connection refused\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_write_mostly_leg_reads_as_mdadm_prints_it() {
        let dirs = ["dev-b.img".to_string(), "dev-a.img".to_string()];
        let s = from_controls(&dirs, |rel| match rel {
            "dev-a.img/state" => Ok("in_sync".into()),
            "dev-b.img/state" => Ok("write_mostly,spare".into()),
            other => md_file(other),
        })
        .expect("status");
        let b = &s.devices[1];
        assert_eq!(b.state, "spare");
        assert!(b.write_mostly && !s.devices[0].write_mostly);
        assert_eq!(b.state_text, "writemostly spare rebuilding");
        assert_eq!(s.spare_devices, 1);
        let s = from_controls(&dirs, |rel| match rel {
            "dev-b.img/state" => Ok("in_sync,write_mostly,volatile".into()),
            "dev-a.img/state" => Ok("faulty,write_mostly".into()),
            "sync_action" => Ok("idle".into()),
            other => md_file(other),
        })
        .expect("status");
        let text = render("/mnt/m", &s);
        assert!(
            text.contains("active sync writemostly volatile b.img"),
            "{text}"
        );
        assert!(text.contains("faulty writemostly"), "{text}");
        assert_eq!((s.active_devices, s.failed_devices), (1, 1));
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_guess() {
        let e = from_controls(&[], |rel| {
            if rel == "mismatch_cnt" {
                Err("gone".into())
            } else {
                md_file(rel)
            }
        });
        assert!(e.is_err());
    }
}
