//! The exclusive lock that keeps a second mdfuse off a leg or a bitmap file
//! (`flock`, so it goes with the process however it ends).
//!
//! A lock can outlive the close of its file briefly: the file stays open
//! until the kernel has let go of every io_uring request that used it, and
//! that release can come after the close (or, for a killed mdfuse, after the
//! process is gone). So when the lock is taken, the holder is looked up in
//! /proc/locks: a holder that has exited, or this very process when no
//! descriptor of its own still has the file open (a leg removed a moment
//! ago), is waited for (a few seconds at most); a live holder is named in
//! the refusal.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

/// How long a lock of an exited process may take to go away.
const DEAD_HOLDER_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock (its pid when /proc/locks tells).
    #[error("held by {}", holder_text(*.holder))]
    Held { holder: Option<u32> },
    /// This process holds it through another descriptor it has open: the
    /// same file was asked for twice (under two names, say).
    #[error("already open and locked in this process")]
    HeldHere,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn holder_text(holder: Option<u32>) -> String {
    match holder {
        Some(pid) => format!("process {pid}"),
        None => "another process".to_string(),
    }
}

/// Takes an exclusive flock on `file` without blocking on a live holder; a
/// lock on its way out (see the module's text) is waited for up to
/// [`DEAD_HOLDER_WAIT`].
pub fn lock_exclusive(file: &File) -> Result<(), LockError> {
    let started = Instant::now();
    let mut logged = false;
    loop {
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {}
            _ => return Err(err.into()),
        }
        let holder = flock_holder(file);
        let leaving = match holder {
            // Not listed: released just now, or its file is being closed.
            None => true,
            Some(pid) if pid == std::process::id() => {
                if open_elsewhere_here(file) {
                    return Err(LockError::HeldHere);
                }
                true
            }
            Some(pid) => !process_alive(pid),
        };
        if !leaving || started.elapsed() > DEAD_HOLDER_WAIT {
            return Err(LockError::Held { holder });
        }
        if !logged {
            log::info!(
                "the lock is held by {} and on its way out (its file is being closed); \
                 waiting for the kernel to release it",
                holder_text(holder)
            );
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid that holds a flock on `file`'s inode, from /proc/locks.
fn flock_holder(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    parse_flock_holder(&locks, major, minor, meta.ino())
}

/// Finds the holder of a FLOCK on device `major:minor`, inode `ino` in the
/// text of /proc/locks ("1: FLOCK  ADVISORY  WRITE 4242 fe:00:5398535 0 EOF";
/// the device numbers in hex). Lines of waiters ("1: -> FLOCK ...") are
/// skipped.
fn parse_flock_holder(locks: &str, major: u32, minor: u32, ino: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let mut f = line.split_whitespace().skip(1);
        if f.next()? != "FLOCK" {
            return None;
        }
        let pid: u32 = f.nth(2)?.parse().ok()?;
        let mut id = f.next()?.split(':');
        let (maj, min, i) = (id.next()?, id.next()?, id.next()?);
        let matches = u32::from_str_radix(maj, 16).ok()? == major
            && u32::from_str_radix(min, 16).ok()? == minor
            && i.parse::<u64>().ok()? == ino;
        matches.then_some(pid)
    })
}

/// Whether a descriptor of this process other than `file` has `file`'s
/// inode open (flock conflicts are per open file, so that one holds the lock).
fn open_elsewhere_here(file: &File) -> bool {
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let own = file.as_raw_fd().to_string();
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    fds.flatten().any(|fd| {
        fd.file_name() != own.as_str()
            && std::fs::metadata(fd.path())
                .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
    })
}

/// A process that exists and has not exited (a zombie has).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_holder_of_an_inode() {
        let locks = "1: POSIX  ADVISORY  WRITE 11 fe:00:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 fe:00:5398535 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 99 fe:00:5398535 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 17 07:1a:12 0 EOF\n";
        assert_eq!(parse_flock_holder(locks, 0xfe, 0, 5398535), Some(4242));
        assert_eq!(parse_flock_holder(locks, 7, 26, 12), Some(17));
        assert_eq!(parse_flock_holder(locks, 0xfe, 0, 77), None, "POSIX lock");
        assert_eq!(parse_flock_holder(locks, 0xfe, 1, 5398535), None);
    }

    /// A file in a new directory, opened and locked.
    fn locked_file() -> (tempfile::TempDir, std::path::PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let file = File::open(&p).unwrap();
        lock_exclusive(&file).unwrap();
        (dir, p, file)
    }

    #[test]
    fn a_second_lock_here_is_refused_at_once() {
        let (_dir, p, first) = locked_file();
        let second = File::open(&p).unwrap();
        match lock_exclusive(&second) {
            Err(LockError::HeldHere) => {}
            other => panic!("expected HeldHere, got {other:?}"),
        }
        drop(first);
        lock_exclusive(&second).unwrap();
    }

    #[test]
    fn a_lock_whose_file_is_closing_is_waited_for() {
        use std::os::unix::process::CommandExt;
        // A child that inherited the locked file keeps it open after this
        // process has closed its descriptor, as an io_uring request keeps a
        // removed leg open: /proc/locks still names this process, no
        // descriptor here has the file, and the lock goes when the child exits.
        let (_dir, p, first) = locked_file();
        let fd = first.as_raw_fd();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("0.5");
        // SAFETY: dup2 is async-signal-safe; fd 9 in the child only.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 9) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        drop(first);
        let second = File::open(&p).unwrap();
        let started = Instant::now();
        let taken = lock_exclusive(&second);
        let waited = started.elapsed();
        child.wait().unwrap();
        taken.unwrap();
        assert!(
            waited >= Duration::from_millis(200),
            "the lock was taken after {waited:?}, while the child still had the file"
        );
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not_a_process() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }
}
