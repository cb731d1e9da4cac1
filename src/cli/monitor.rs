//! `mdfuse monitor`: md's events for running mdfuse arrays, in mdadm
//! --monitor's words (Fail, FailSpare, SpareActive, DegradedArray,
//! RebuildStarted, RebuildNN, RebuildFinished, NewArray, DeviceDisappeared,
//! TestMessage), found by comparing each array's state (cli/status.rs) with
//! the last one seen, every `--delay` seconds; `--oneshot` looks once (for
//! cron) and exits 1 when an array is degraded or its daemon has gone.
//!
//! The events come from each daemon's event log (cli/events.rs) when it has
//! one: none is missed between two looks and none is reported twice. Without
//! a log (a daemon that cannot write /run/mdfuse) the monitor compares the
//! states it sees, as mdadm's monitor does: a change undone between two
//! looks is then not seen. First-sight events (NewArray, DegradedArray) and
//! DeviceDisappeared are always the monitor's own.

use super::alert::{self, Event};
use super::events;
use super::status::{self, ArrayStatus};
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
pub struct MonitorArgs {
    /// Check once and exit: 1 when an array is degraded or its daemon has
    /// gone, else 0 (for cron).
    #[arg(short = '1', long)]
    oneshot: bool,
    /// Also report a TestMessage for each array at the start.
    #[arg(short = 't', long)]
    test: bool,
    /// Run PROG EVENT MOUNTPOINT [LEG] for each event (as mdadm's --program).
    #[arg(short = 'p', long, value_name = "PROG")]
    program: Option<PathBuf>,
    /// Also send each event to syslog (daemon facility; failures critical).
    #[arg(short = 'y', long)]
    syslog: bool,
    /// Also mail failures (Fail, FailSpare, DegradedArray,
    /// DeviceDisappeared) and TestMessage to ADDR through sendmail, which
    /// must be installed.
    #[arg(short = 'm', long, value_name = "ADDR")]
    mail: Option<String>,
    /// Go on in the background (standard output to /dev/null: use
    /// --program, --syslog or --mail); prints the monitor's pid.
    #[arg(short = 'f', long, alias = "daemonize", conflicts_with = "oneshot")]
    daemonise: bool,
    /// With --daemonise, write the monitor's pid to FILE.
    #[arg(short = 'i', long, value_name = "FILE", requires = "daemonise")]
    pid_file: Option<PathBuf>,
    /// Seconds between looks (mdadm's --delay).
    #[arg(short = 'd', long, default_value_t = 60.0, value_parser = parse_delay)]
    delay: f64,
    /// Rebuild progress events every N percent (mdadm's --increment).
    #[arg(short = 'r', long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(1..=99))]
    increment: u8,
    /// The arrays to watch (mountpoints); every mdfuse mount when none is
    /// named, arrays mounted later included.
    mountpoints: Vec<PathBuf>,
}

fn parse_delay(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|d| d.is_finite() && *d >= 0.05 && *d <= 86_400.0)
        .ok_or_else(|| format!("{s:?}: seconds from 0.05 to 86400"))
}

/// What the monitor remembers of an array between two looks.
#[derive(Debug, Clone, Default)]
pub(super) struct Seen {
    /// Leg name -> its md state word.
    legs: BTreeMap<String, String>,
    sync_action: String,
    /// The last RebuildNN reported for the running sync (0: none yet).
    rebuild_step: u64,
    /// The daemon has gone and DeviceDisappeared was reported.
    gone: bool,
    /// The daemon seen (its pid): another one is a new start of the array.
    instance: Option<u32>,
    /// Its event log's header and the events read from it so far.
    log: Option<(String, usize)>,
}

fn event(name: &str, mnt: &str, leg: Option<&str>) -> Event {
    Event {
        name: name.into(),
        mountpoint: mnt.into(),
        leg: leg.map(String::from),
    }
}

/// The events between `before` (None: first sight) and `now`; updates the
/// memory. `new_array`: a first sight after the monitor's first look.
pub(super) fn diff(
    mnt: &str,
    before: Option<&Seen>,
    now: &ArrayStatus,
    new_array: bool,
    increment: u64,
) -> (Vec<Event>, Seen) {
    let mut events = Vec::new();
    let legs: BTreeMap<String, String> = now
        .devices
        .iter()
        .map(|d| (d.name.clone(), d.state.clone()))
        .collect();
    let syncing = now.sync_action != "idle" && now.sync_action != "frozen";
    let mut seen = Seen {
        legs: legs.clone(),
        sync_action: now.sync_action.clone(),
        rebuild_step: 0,
        gone: false,
        instance: now.daemon_pid,
        log: None,
    };
    match before {
        None => {
            if new_array {
                events.push(event("NewArray", mnt, None));
            }
            if now.degraded {
                events.push(event("DegradedArray", mnt, None));
            }
            if syncing {
                events.push(event("RebuildStarted", mnt, None));
            }
        }
        Some(b) => {
            for (leg, state) in &legs {
                let was = b.legs.get(leg).map(String::as_str);
                // In sync, then a spare: md gets there only through a
                // failure, a removal and an add, between two looks.
                let failed_unseen = state == "spare" && was == Some("in_sync");
                if (state == "faulty" && was != Some("faulty")) || failed_unseen {
                    // A leg failing while being recovered is md's FailSpare.
                    let name = if was == Some("spare") {
                        "FailSpare"
                    } else {
                        "Fail"
                    };
                    events.push(event(name, mnt, Some(leg)));
                }
                if state == "in_sync" && was == Some("spare") {
                    events.push(event("SpareActive", mnt, Some(leg)));
                }
            }
            // Gone without being seen faulty: md removes only a failed leg
            // (or a spare), so it failed between two looks.
            for (leg, was) in &b.legs {
                if !legs.contains_key(leg) && was != "faulty" {
                    let name = if was == "spare" { "FailSpare" } else { "Fail" };
                    events.push(event(name, mnt, Some(leg)));
                }
            }
            let was_syncing = b.sync_action != "idle" && b.sync_action != "frozen";
            if syncing && (!was_syncing || b.sync_action != now.sync_action) {
                events.push(event("RebuildStarted", mnt, None));
            } else if syncing {
                seen.rebuild_step = b.rebuild_step;
            }
            if was_syncing && !syncing {
                events.push(event("RebuildFinished", mnt, None));
            }
        }
    }
    if let Some(p) = now.sync_progress.as_ref().filter(|_| syncing) {
        // The highest multiple of the increment passed (below 100), once each.
        let step = (p.percent.clamp(0.0, 100.0) as u64 / increment) * increment;
        if step > seen.rebuild_step && step < 100 {
            events.push(event(&format!("Rebuild{step:02}"), mnt, None));
            seen.rebuild_step = step;
        }
    }
    (events, seen)
}

/// The events of a daemon's log after the first `read`.
fn logged_events(mnt: &str, logged: &[events::Logged], read: usize) -> Vec<Event> {
    logged
        .iter()
        .skip(read)
        .map(|(name, leg)| event(name, mnt, leg.as_deref()))
        .collect()
}

/// Whether `mnt` is still listed as an mdfuse mount (its daemon may be
/// gone: then the mount stays until unmounted, and reads fail).
fn still_mounted(mnt: &Path) -> bool {
    let abs = super::absolute(mnt);
    super::metrics::mdfuse_mounts()
        .iter()
        .any(|m| m.as_os_str() == abs.as_str())
}

pub fn cmd_monitor(a: &MonitorArgs) -> Result<i32, String> {
    let outputs = alert::Outputs::new(a.program.clone(), a.syslog, a.mail.clone())?;
    if a.daemonise {
        if let Some(code) = alert::daemonise(a.pid_file.as_deref())? {
            return Ok(code);
        }
    }
    let increment = u64::from(a.increment);
    let mut memory: BTreeMap<String, Seen> = BTreeMap::new();
    let mut first = true;
    loop {
        let arrays: Vec<PathBuf> = if a.mountpoints.is_empty() {
            let mut listed = super::metrics::mdfuse_mounts();
            // Arrays seen before and no longer listed were stopped (cleanly:
            // their mount went away): forgotten.
            let listed_s: Vec<String> = listed.iter().map(|m| super::absolute(m)).collect();
            memory.retain(|k, _| listed_s.contains(k));
            listed.sort();
            listed
        } else {
            a.mountpoints.clone()
        };
        let mut problem = false;
        for mnt in &arrays {
            let label = super::absolute(mnt);
            let mut events = Vec::new();
            // The log before the state: an event logged in between is in
            // the next look's log, never lost between the two reads.
            let log = events::read_log(mnt);
            match status::read(mnt) {
                Ok(s) => {
                    // mdadm's --test: one for each array found at the start.
                    if first && a.test {
                        events.push(event("TestMessage", &label, None));
                    }
                    let before = memory
                        .get(&label)
                        .filter(|b| !b.gone && b.instance == s.daemon_pid);
                    let (mut ev, mut seen) = diff(&label, before, &s, !first, increment);
                    // The daemon's own log, when it keeps one: its events
                    // since the last look replace the compared ones (first
                    // sight keeps the monitor's: the log's past is not news).
                    let log = log.filter(|(h, _)| {
                        s.daemon_pid
                            .is_some_and(|pid| h.starts_with(&events::header(pid, "")))
                    });
                    if let Some((header, logged)) = log {
                        let read = before
                            .and_then(|b| b.log.as_ref())
                            .filter(|(h, _)| *h == header)
                            .map(|(_, n)| *n);
                        if let Some(read) = read {
                            ev = logged_events(&label, &logged, read);
                        }
                        seen.log = Some((header, logged.len()));
                    }
                    events.append(&mut ev);
                    problem |= s.degraded;
                    memory.insert(label.clone(), seen);
                }
                Err(e) => {
                    // Listed but unreadable: the daemon went away uncleanly
                    // (a clean stop unmounts). Reported once, after what it
                    // logged since the last look.
                    if still_mounted(mnt) || memory.contains_key(&label) {
                        problem = true;
                        let entry = memory.entry(label.clone()).or_default();
                        if !entry.gone {
                            entry.gone = true;
                            if let (Some((header, read)), Some((h, logged))) =
                                (&entry.log, events::read_log(mnt))
                            {
                                if *header == h {
                                    events.extend(logged_events(&label, &logged, *read));
                                }
                            }
                            events.push(event("DeviceDisappeared", &label, None));
                        }
                    } else if !a.mountpoints.is_empty() && first {
                        eprintln!("mdfuse: monitor: {e}");
                        problem = true;
                    }
                }
            }
            outputs.report(&events);
        }
        if a.oneshot {
            return Ok(if problem { 1 } else { 0 });
        }
        first = false;
        std::thread::sleep(Duration::from_secs_f64(a.delay));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdfuse::report::detail::{DeviceStatus, SyncProgress};

    fn array(legs: &[(&str, &str)], action: &str, percent: f64) -> ArrayStatus {
        let devices: Vec<DeviceStatus> = legs
            .iter()
            .enumerate()
            .map(|(i, (name, state))| DeviceStatus {
                number: i,
                raid_device: Some(i),
                state: state.to_string(),
                state_text: String::new(),
                name: name.to_string(),
                write_mostly: false,
                errors: 0,
                read_bytes: 0,
                written_bytes: 0,
                remote: None,
            })
            .collect();
        let in_sync = legs.iter().filter(|l| l.1 == "in_sync").count();
        ArrayStatus {
            format_version: 1,
            mountpoint: "/m".into(),
            version: "1.2".into(),
            raid_level: "raid1".into(),
            array_size_kib: 1,
            raid_devices: 2,
            total_devices: legs.len(),
            intent_bitmap: None,
            array_state: "clean".into(),
            state: String::new(),
            degraded: in_sync < 2,
            degraded_devices: 2 - in_sync.min(2),
            active_devices: in_sync,
            working_devices: 0,
            failed_devices: 0,
            spare_devices: 0,
            sync_action: action.into(),
            sync_progress: (action != "idle").then(|| SyncProgress {
                label: String::new(),
                completed_sectors: 0,
                total_sectors: 0,
                percent,
                speed_kib: None,
            }),
            consistency_policy: String::new(),
            uuid: String::new(),
            mismatch_count: 0,
            last_sync_action: None,
            sync_copied_bytes: None,
            devices,
            daemon_pid: None,
            bitmap_file: None,
        }
    }

    fn names(e: &[Event]) -> Vec<String> {
        e.iter()
            .map(|e| match &e.leg {
                Some(l) => format!("{} {l}", e.name),
                None => e.name.clone(),
            })
            .collect()
    }

    #[test]
    fn a_failure_a_rebuild_and_its_end_each_once() {
        let looks = [
            array(&[("a", "in_sync"), ("b", "in_sync")], "idle", 0.0),
            array(&[("a", "in_sync"), ("b", "faulty")], "idle", 0.0),
            array(&[("a", "in_sync"), ("b", "faulty")], "idle", 0.0),
            array(&[("a", "in_sync"), ("b", "spare")], "recover", 5.0),
            array(&[("a", "in_sync"), ("b", "spare")], "recover", 45.0),
            array(&[("a", "in_sync"), ("b", "spare")], "recover", 47.0),
            array(&[("a", "in_sync"), ("b", "spare")], "recover", 85.0),
            array(&[("a", "in_sync"), ("b", "in_sync")], "idle", 0.0),
            // b failed and removed between two looks.
            array(&[("a", "in_sync")], "idle", 0.0),
            array(&[("a", "in_sync"), ("b", "in_sync")], "idle", 0.0),
            // b failed, removed and re-added between two looks.
            array(&[("a", "in_sync"), ("b", "spare")], "recover", 1.0),
        ];
        let mut seen: Option<Seen> = None;
        let mut all = Vec::new();
        for a in &looks {
            let (ev, s) = diff("/m", seen.as_ref(), a, false, 20);
            all.extend(names(&ev));
            seen = Some(s);
        }
        assert_eq!(
            all,
            [
                "Fail b",
                "RebuildStarted",
                "Rebuild40",
                "Rebuild80",
                "SpareActive b",
                "RebuildFinished",
                "Fail b",
                "Fail b",
                "RebuildStarted"
            ]
        );
    }

    #[test]
    fn first_sight_of_a_degraded_array() {
        let a = array(&[("a", "in_sync")], "idle", 0.0);
        let (ev, _) = diff("/m", None, &a, false, 20);
        assert_eq!(names(&ev), ["DegradedArray"]);
        let (ev, _) = diff("/m", None, &a, true, 20);
        assert_eq!(names(&ev), ["NewArray", "DegradedArray"]);
        let (ev, _) = diff(
            "/m",
            None,
            &array(&[("a", "in_sync"), ("b", "spare")], "recover", 1.0),
            false,
            20,
        );
        assert_eq!(names(&ev), ["DegradedArray", "RebuildStarted"]);
    }
}
