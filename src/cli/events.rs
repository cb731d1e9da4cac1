//! The daemon's event log, `/run/mdfuse/<mountpoint>.events`: md's events
//! for this array (the words of `mdfuse monitor`), written by the daemon
//! itself as it sees them, so a monitor looking seldom misses none and
//! reports each once (it remembers how many lines it has read).
//!
//! A thread of the daemon compares the array's state with the last one it
//! saw every [`LOOK`] (cli/monitor.rs's rules, on the values of the `md/`
//! files read in the process); its first look is the baseline, with no
//! event (a monitor reports a degraded start when it first sees the array). The file starts with a header naming the
//! daemon; then one line per event: `SEQ EPOCH_SECONDS EVENT [LEG]` (LEG is
//! the rest of the line, as `md/dev-LEG` spells it). It is made anew at each
//! start and removed at a clean stop.

use super::monitor::{diff, Seen};
use mdfuse::array::RunningArray;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the daemon looks at its array's state.
const LOOK: Duration = Duration::from_millis(100);

/// Rebuild progress events every this many percent (mdadm's default).
const INCREMENT: u64 = 20;

/// The header line of a daemon's event log.
pub fn header(pid: u32, uuid: &str) -> String {
    format!("# mdfuse events: daemon {pid}, array {uuid}")
}

/// The log's path for the array at `mountpoint`.
pub fn path(mountpoint: &Path) -> PathBuf {
    mdfuse::transport::serve::run_file(mountpoint, "events")
}

/// The logging thread; dropping it stops the thread and removes the file.
pub struct EventLog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl EventLog {
    /// Starts the log for `array` served at `mountpoint`; None (and a
    /// warning in the daemon's log) if the file cannot be made.
    pub fn start(array: Arc<RunningArray>, mountpoint: &Path) -> Option<EventLog> {
        let path = path(mountpoint);
        let made = path
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|()| std::fs::File::create(&path))
            .and_then(|mut f| {
                writeln!(f, "{}", header(std::process::id(), array.uuid()))?;
                Ok(f)
            });
        let mut file = match made {
            Ok(f) => f,
            Err(e) => {
                log::warn!(
                    "no event log {}: {e} (mdfuse monitor falls back to comparing states)",
                    path.display()
                );
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mdfuse-events".into())
            .spawn(move || {
                let mut seen: Option<Seen> = None;
                let mut seq: u64 = 0;
                while !stop_seen.load(Ordering::Relaxed) {
                    if let Some(now) = read_state(&array) {
                        let (events, next) = diff("", seen.as_ref(), &now, false, INCREMENT);
                        // The first look is the baseline: what holds at the
                        // start (a degraded array, a resync) a monitor
                        // reports when it first sees the array.
                        let events = if seen.is_some() { events } else { Vec::new() };
                        for e in events {
                            seq += 1;
                            let epoch = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs());
                            let line = match &e.leg {
                                Some(leg) => format!("{seq} {epoch} {} {leg}\n", e.name),
                                None => format!("{seq} {epoch} {}\n", e.name),
                            };
                            log::info!("event: {}", line.trim_end());
                            // One write per line, appended: a reader sees
                            // whole lines (it counts only those ending in \n).
                            if let Err(err) = file.write_all(line.as_bytes()) {
                                log::warn!("event log: {err}");
                            }
                        }
                        seen = Some(next);
                    }
                    std::thread::sleep(LOOK);
                }
            });
        match thread {
            Ok(t) => Some(EventLog {
                stop,
                thread: Some(t),
                path,
            }),
            Err(e) => {
                log::warn!("no event log thread: {e}");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }
}

/// The array's state from its control values, read in the process.
fn read_state(array: &RunningArray) -> Option<super::status::ArrayStatus> {
    let dev_dirs: Vec<String> = array
        .control_file_list()
        .into_iter()
        .filter_map(|(p, _)| {
            let dev = p.strip_prefix("md/")?.strip_suffix("/state")?;
            dev.starts_with("dev-").then(|| dev.to_string())
        })
        .collect();
    super::status::from_controls(&dev_dirs, |rel| {
        array
            .control_read_value(&format!("md/{rel}"))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| format!("md/{rel}: no value"))
    })
    .ok()
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An event line of the log: (EVENT, LEG).
pub type Logged = (String, Option<String>);

/// A daemon's event log as a monitor reads it: its header and its whole
/// event lines.
pub fn read_log(mountpoint: &Path) -> Option<(String, Vec<Logged>)> {
    let text = std::fs::read_to_string(path(mountpoint)).ok()?;
    let mut lines = text.split_inclusive('\n').filter(|l| l.ends_with('\n'));
    let header = lines.next()?.trim_end().to_string();
    let events = lines
        .filter_map(|l| {
            let mut f = l.trim_end_matches('\n').splitn(4, ' ');
            let (_seq, _epoch, name) = (f.next()?, f.next()?, f.next()?);
            Some((name.to_string(), f.next().map(String::from)))
        })
        .collect();
    Some((header, events))
}
