//! Serving a mount: the FUSE session with one fd per thread, signals that
//! stop it cleanly, and the moment the mount is live (so a caller that
//! detached can return).

use super::core::{ImageAccess, MountCore};
use super::fuse::{ArrayFs, InitSeen};
use super::ring::{self, RingConfig};
use super::Transport;
use crate::array::ServedArray;
use fuser::{Config, MountOption, SessionACL};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub mountpoint: PathBuf,
    pub read_only: bool,
    /// Let users other than the mounting one reach the mount.
    pub allow_other: bool,
    /// `array.img`'s mode at mount (it then follows chmod): 0o600 keeps
    /// the image the mounting user's even with `allow_other`.
    pub image_mode: u16,
    /// FUSE threads, each with its own /dev/fuse fd.
    pub threads: usize,
    /// The source shown in /proc/mounts (e.g. the first leg).
    pub fsname: String,
    /// The kernel's FUSE writeback cache for buffered writes (faster; but a
    /// buffered write past the image's end then fails only at writeback).
    pub writeback_cache: bool,
    /// How requests come: /dev/fuse, io_uring, or io_uring when it can.
    pub transport: Transport,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("mountpoint {0}: does not exist or is not a directory (create it with mkdir)")]
    BadMountpoint(PathBuf),
    #[error("cannot mount at {path}: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the FUSE session at {path} ended with an error: {source}")]
    Session {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("stopped by signal {0} before the mount was live")]
    Interrupted(i32),
    #[error(
        "--transport uring: FUSE over io_uring is not available: {0} (--transport auto or \
         dev-fuse serve through /dev/fuse)"
    )]
    UringUnavailable(String),
    #[error("cannot serve through FUSE over io_uring: {0}")]
    Rings(String),
}

/// SIGTERM, SIGINT and SIGHUP, caught from before the array is assembled:
/// one arriving before the mount is live stops the start cleanly (the
/// mount is refused, or undone at once), one arriving later unmounts, and
/// the serving loop ends; never the default action, which would leave a
/// dead mount behind.
pub struct StopSignals {
    received: Arc<AtomicI32>,
    target: Arc<Mutex<Option<PathBuf>>>,
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StopSignals {
    pub fn install() -> Result<StopSignals, ServeError> {
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(ServeError::Signals)?;
        // A detached daemon starts with them blocked (cli/detach.rs): one
        // that came meanwhile is delivered now, to the handler.
        // SAFETY: plain sigset calls on a set we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [SIGTERM, SIGINT, SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
        let handle = signals.handle();
        let received = Arc::new(AtomicI32::new(0));
        let target: Arc<Mutex<Option<PathBuf>>> = Arc::new(Mutex::new(None));
        let (r, t) = (received.clone(), target.clone());
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    // Recorded before the target is looked at: see `mounted`.
                    r.store(sig, Ordering::SeqCst);
                    let mounted = t.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    match mounted {
                        Some(target) => {
                            log::info!("signal {sig}: unmounting {}", target.display());
                            unmount(&target);
                        }
                        None => log::info!("signal {sig}: stopping before the mount is live"),
                    }
                }
            })
            .map_err(ServeError::Signals)?;
        Ok(StopSignals {
            received,
            target,
            handle,
            thread: Some(thread),
        })
    }

    /// The stop signal received so far, if any.
    pub fn received(&self) -> Option<i32> {
        Some(self.received.load(Ordering::SeqCst)).filter(|&s| s != 0)
    }

    /// From now on a signal unmounts `mountpoint`; true if one came
    /// before (the caller unmounts). Between them the signal thread and
    /// this leave no gap: it records a signal before it reads the target,
    /// this sets the target before it reads the record.
    fn mounted(&self, mountpoint: &Path) -> bool {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(mountpoint.to_owned());
        self.received().is_some()
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The name of a mountpoint's files in /run/mdfuse (its daemon's pid file
/// and default log): the absolute path escaped as `systemd-escape --path`
/// does it, so distinct mountpoints get distinct names and the path can be
/// read back (`systemd-escape --unescape --path`): `/` between components
/// becomes `-`, every byte other than a letter, a digit, `:`, `_` or `.`
/// (and a leading `.`) becomes `\xNN`; `/` itself is `-`. `/mnt/a_b` is
/// `mnt-a_b`, `/mnt/a/b` is `mnt-a-b`, `/mnt/a-b` is `mnt-a\x2db`.
pub fn escaped_mountpoint(path: &Path) -> String {
    let trimmed = path
        .as_os_str()
        .as_bytes()
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect::<Vec<_>>();
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, comp) in trimmed.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, &b) in comp.iter().enumerate() {
            let keep = b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.';
            if keep && !(i == 0 && j == 0 && b == b'.') {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

/// Where the daemon of `mountpoint` keeps its `ext` file (pid, log):
/// /run/mdfuse/[`escaped_mountpoint`] of the absolute path (symlinks
/// resolved where it exists).
pub fn run_file(mountpoint: &Path, ext: &str) -> PathBuf {
    let abs = mountpoint
        .canonicalize()
        .or_else(|_| std::path::absolute(mountpoint))
        .unwrap_or_else(|_| mountpoint.to_owned());
    PathBuf::from("/run/mdfuse").join(format!("{}.{ext}", escaped_mountpoint(&abs)))
}

/// Checks the mountpoint before anything else is touched.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, ServeError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => path
            .canonicalize()
            .map_err(|_| ServeError::BadMountpoint(path.to_owned())),
        _ => Err(ServeError::BadMountpoint(path.to_owned())),
    }
}

/// Mounts `array` and serves it until the mount goes away (`umount`, or
/// SIGTERM/SIGINT/SIGHUP caught by `signals`, which unmount it). `on_live`
/// runs once the kernel has the mount. Returns when every FUSE thread has
/// stopped; the caller then stops the array cleanly. A signal that came
/// before the mount: Err(Interrupted), nothing mounted.
pub fn serve<A: ServedArray>(
    array: Arc<A>,
    opts: &ServeOptions,
    signals: &StopSignals,
    on_live: impl FnOnce(),
) -> Result<(), ServeError> {
    if let Some(sig) = signals.received() {
        return Err(ServeError::Interrupted(sig));
    }
    let mountpoint = check_mountpoint(&opts.mountpoint)?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let image = ImageAccess {
        mode: opts.image_mode,
        uid,
        gid,
    };
    let want_uring = match opts.transport {
        Transport::DevFuse => false,
        Transport::Uring => {
            ring::support().map_err(ServeError::UringUnavailable)?;
            true
        }
        Transport::Auto => match ring::support() {
            Ok(()) => true,
            Err(why) => {
                log::info!("transport: /dev/fuse (FUSE over io_uring is not used: {why})");
                false
            }
        },
    };
    let core = Arc::new(MountCore::new(array, uid, gid, image, opts.writeback_cache));
    let init = Arc::new(parking_lot::Mutex::new(InitSeen::default()));
    let fs = ArrayFs::new(core.clone(), want_uring, init.clone());
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("mdfuse".into()),
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
        if opts.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    // With the rings, /dev/fuse carries only what comes before they are
    // registered, and FORGET and INTERRUPT: two threads are enough.
    config.n_threads = Some(if want_uring {
        opts.threads.clamp(1, 2)
    } else {
        opts.threads.max(1)
    });
    config.clone_fd = true;
    let session =
        fuser::Session::new(fs, &mountpoint, &config).map_err(|source| ServeError::Mount {
            path: mountpoint.clone(),
            source,
        })?;
    if signals.mounted(&mountpoint) {
        // A stop signal came while the kernel made the mount: the mount is
        // undone before it is reported live, and the caller stops the array
        // clean.
        log::info!(
            "a stop signal came during the mount: unmounting {}",
            mountpoint.display()
        );
        unmount(&mountpoint);
        drop(session);
        return Err(ServeError::Interrupted(signals.received().unwrap_or(0)));
    }
    tune_bdi(&mountpoint);
    let rings = if want_uring {
        match start_rings(core, &session, &init.lock().clone(), opts) {
            Ok(r) => r,
            Err((why, fatal, rings)) => {
                if opts.transport == Transport::Uring || fatal {
                    log::error!("FUSE over io_uring: {why}; unmounting");
                    unmount(&mountpoint);
                    drop(session);
                    if let Some(r) = rings {
                        let _ = r.join(Duration::from_secs(5), || abort_connection(&mountpoint));
                    }
                    return Err(if fatal {
                        ServeError::Rings(why)
                    } else {
                        ServeError::UringUnavailable(why)
                    });
                }
                log::warn!(
                    "transport: /dev/fuse with {} threads (FUSE over io_uring failed: {why})",
                    opts.threads.clamp(1, 2)
                );
                rings
            }
        }
    } else {
        if opts.transport == Transport::DevFuse {
            log::info!("transport: /dev/fuse (--transport dev-fuse)");
        }
        None
    };
    log::info!("serving at {}", mountpoint.display());
    on_live();
    let result = match session.run() {
        // The kernel ends a detached (lazily unmounted) connection this way.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::ENODEV)) => {
            log::info!(
                "the FUSE connection at {} ended ({e})",
                mountpoint.display()
            );
            Ok(())
        }
        other => other.map_err(|source| ServeError::Session {
            path: mountpoint.clone(),
            source,
        }),
    };
    if let Some(rings) = rings {
        // Every ring thread finishes its request before it sees the end of
        // the connection: the array stops after them.
        let t = rings.join(Duration::from_secs(5), || abort_connection(&mountpoint));
        log::info!(
            "FUSE over io_uring served {} requests ({} reads and {} writes with their legs' I/O \
             in the ring)",
            t.served,
            t.reads_in_ring,
            t.writes_in_ring
        );
    }
    result
}

/// Why the rings are not used, whether the mount cannot be served at all
/// then (some queue may lack an entry), and the threads started, if any,
/// which end with the connection.
type RingsRefused = (String, bool, Option<ring::RingTransport>);

/// Registers the rings after INIT.
fn start_rings<A: ServedArray>(
    core: Arc<MountCore<A>>,
    session: &fuser::Session<ArrayFs<A>>,
    init: &InitSeen,
    opts: &ServeOptions,
) -> Result<Option<ring::RingTransport>, RingsRefused> {
    if !init.uring_offered {
        return Err((
            "the kernel did not offer FUSE_OVER_IO_URING at INIT (is \
             /sys/module/fuse/parameters/enable_uring Y?)"
                .into(),
            false,
            None,
        ));
    }
    let cfg = RingConfig::new(
        opts.threads,
        init.max_write,
        init.max_readahead,
        opts.allow_other,
    );
    use std::os::fd::AsFd;
    let (rings, registered) = ring::start(core, session.as_fd(), cfg);
    match registered {
        Ok(()) => {
            log::info!(
                "transport: FUSE over io_uring ({} queues, {} threads each with {} entries, {} KiB \
                 payload per entry)",
                cfg.queues,
                cfg.threads_per_queue,
                cfg.entries_per_thread,
                cfg.payload / 1024
            );
            Ok(Some(rings))
        }
        Err(e) => Err((e.to_string(), !e.kernel_falls_back(), Some(rings))),
    }
}

/// Ends the FUSE connection of the mount at `mountpoint` through
/// /sys/fs/fuse/connections/N/abort, for ring threads that outlive the
/// session (it ended without an unmount). Best effort: logged.
fn abort_connection(mountpoint: &Path) {
    let Some(dev) = mount_device(mountpoint) else {
        log::warn!(
            "cannot find the FUSE connection of {} to end its rings",
            mountpoint.display()
        );
        return;
    };
    let minor = dev.split_once(':').map_or(dev.as_str(), |(_, m)| m);
    log::warn!("ring threads still running after the session ended: aborting the connection");
    let abort = |dir: &Path| std::fs::write(dir.join(minor).join("abort"), "1");
    let host = Path::new("/sys/fs/fuse/connections");
    if host.join(minor).exists() {
        if let Err(e) = abort(host) {
            log::error!("{}/{minor}/abort: {e}", host.display());
        }
        return;
    }
    // fusectl is not mounted there: a private instance for this.
    let dir = std::env::temp_dir().join(format!("mdfuse-fusectl-{}", std::process::id()));
    let mounted = std::fs::create_dir_all(&dir).is_ok() && {
        let (Ok(src), Ok(target), Ok(kind)) = (
            CString::new("fusectl"),
            CString::new(dir.as_os_str().as_bytes()),
            CString::new("fusectl"),
        ) else {
            return;
        };
        // SAFETY: valid C strings; no data argument.
        unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                kind.as_ptr(),
                0,
                std::ptr::null(),
            ) == 0
        }
    };
    if !mounted {
        log::error!("cannot mount fusectl to abort the connection");
    } else {
        if let Err(e) = abort(&dir) {
            log::error!("fusectl {minor}/abort: {e}");
        }
        unmount(&dir);
    }
    let _ = std::fs::remove_dir(&dir);
}

/// The kernel gives a FUSE mount a 1% share of dirty memory with a strict
/// limit and 128 KiB readahead; lift them so buffered writes batch and
/// sequential reads use the 1 MiB requests negotiated. Best effort: logged.
fn tune_bdi(mountpoint: &Path) {
    // Not stat(2): the mount would have to answer it, and its session loop
    // has not started yet.
    let Some(dev) = mount_device(mountpoint) else {
        log::debug!("{}: not found in mountinfo", mountpoint.display());
        return;
    };
    let bdi = PathBuf::from(format!("/sys/class/bdi/{dev}"));
    for (file, value) in [
        ("max_ratio", "50"),
        ("strict_limit", "0"),
        ("read_ahead_kb", "1024"),
    ] {
        if let Err(e) = std::fs::write(bdi.join(file), value) {
            log::debug!("{}/{file} = {value}: {e}", bdi.display());
        }
    }
}

/// "MAJOR:MINOR" of the mount at `mountpoint`, from /proc/self/mountinfo
/// (the last mount there wins, as in path lookup).
fn mount_device(mountpoint: &Path) -> Option<String> {
    crate::io::mounts::device_of_mount(&crate::io::mounts::mountinfo(), mountpoint)
}

/// Unmounts; if the mount is busy (array.img held open, e.g. by a loop
/// device), detaches it so it ends when its last user lets go, and says so.
pub fn unmount(mountpoint: &Path) {
    let Ok(c) = CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: c is a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return;
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EBUSY) {
        log::warn!(
            "{} is busy (array.img is open); detaching: the array stops cleanly once its last user closes it",
            mountpoint.display()
        );
        // SAFETY: as above.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            log::error!(
                "cannot detach {}: {}",
                mountpoint.display(),
                std::io::Error::last_os_error()
            );
        }
    } else {
        log::error!("cannot unmount {}: {err}", mountpoint.display());
    }
}

#[cfg(test)]
mod tests {
    use super::escaped_mountpoint;
    use std::path::Path;

    #[test]
    fn mountpoints_escape_as_systemd_escape_path() {
        // From systemd-escape --path (systemd 252).
        for (path, name) in [
            ("/mnt/a_b", "mnt-a_b"),
            ("/mnt/a/b", "mnt-a-b"),
            ("/mnt/a-b", "mnt-a\\x2db"),
            ("/mnt/x y", "mnt-x\\x20y"),
            ("/.dot/é", "\\x2edot-\\xc3\\xa9"),
            ("/", "-"),
            ("//mnt//data/", "mnt-data"),
            ("/mnt/a\\b", "mnt-a\\x5cb"),
            ("/mnt/.x", "mnt-.x"),
        ] {
            assert_eq!(escaped_mountpoint(Path::new(path)), name, "{path}");
        }
    }
}
