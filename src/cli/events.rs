//! The daemon's event log, `/run/mdfuse/<mountpoint>.events`: md's events
//! for this array (the words of `mdfuse monitor`), written by the daemon
//! itself, so a monitor looking seldom misses none and reports each once (it
//! remembers how many lines it has read).
//!
//! The array tells its events as they happen ([`MdEvent`]: a leg's failure,
//! a sync's start and end, a recovered leg's join), over a channel to the
//! log's thread, so events closer together than any look are all written,
//! in order. The thread also looks at the running sync every [`LOOK`] for
//! its progress (`RebuildNN`, every [`INCREMENT`] percent). The file starts
//! with a header naming the daemon; then one line per event: `SEQ
//! EPOCH_SECONDS EVENT [LEG]` (LEG is the rest of the line, as `md/dev-LEG`
//! spells it). It is made anew at each start and removed at a clean stop.
//! What holds at the start (a degraded array) is not an event here: a
//! monitor reports it when it first sees the array.

use crossbeam_channel::RecvTimeoutError;
use mdfuse::array::{MdEvent, RunningArray};
use mdfuse::report::mdstat::escape_name;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the daemon looks at its running sync's progress.
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
        let (tx, rx) = crossbeam_channel::unbounded::<MdEvent>();
        array.set_listener(Some(Arc::new(move |e: &MdEvent| {
            let _ = tx.send(e.clone());
        })));
        let listened = array.clone();
        let thread = std::thread::Builder::new()
            .name("mdfuse-events".into())
            .spawn(move || {
                let mut seq: u64 = 0;
                let mut write = |name: &str, leg: Option<&str>| {
                    seq += 1;
                    let epoch = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let line = match leg {
                        Some(leg) => format!("{seq} {epoch} {name} {}\n", escape_name(leg)),
                        None => format!("{seq} {epoch} {name}\n"),
                    };
                    log::info!("event: {}", line.trim_end());
                    // One write per line, appended: a reader sees whole
                    // lines (it counts only those ending in \n).
                    if let Err(err) = file.write_all(line.as_bytes()) {
                        log::warn!("event log: {err}");
                    }
                };
                // The running sync's last RebuildNN (None: no sync started
                // since the log began).
                let mut step: Option<u64> = None;
                while !stop_seen.load(Ordering::Relaxed) {
                    match rx.recv_timeout(LOOK) {
                        Ok(e) => {
                            match e {
                                MdEvent::RebuildStarted => step = Some(0),
                                MdEvent::RebuildFinished => step = None,
                                _ => {}
                            }
                            write(e.name(), e.leg());
                            // Every event told so far first, then progress.
                            if !rx.is_empty() {
                                continue;
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if let (Some(done), Some(p)) = (step, array.sync_progress()) {
                        let percent = p.percent().clamp(0.0, 100.0) as u64;
                        // The highest multiple passed (below 100), once each.
                        let next = percent / INCREMENT * INCREMENT;
                        if next > done && next < 100 {
                            write(&format!("Rebuild{next:02}"), None);
                            step = Some(next);
                        }
                    }
                }
            });
        if thread.is_err() {
            listened.set_listener(None);
        }
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
