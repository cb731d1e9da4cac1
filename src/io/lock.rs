//! The exclusive lock that keeps a second mdfuse off a leg or a bitmap file
//! (`flock`, so it goes with the process however it ends).
//!
//! A killed mdfuse's locks outlive it briefly: its files stay open until the
//! kernel has torn down its io_uring (requests in flight hold them), which
//! happens after the process is gone. So when the lock is taken, the holder
//! is looked up in /proc/locks: a holder that has exited is waited for (a
//! few seconds at most), a live one is named in the refusal.

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
/// holder that has exited (or is not listed) is waited for up to
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
        // No holder listed: the lock is on its way out (its process gone,
        // its files not yet closed), or was released just now.
        let holder = flock_holder(file);
        let live_holder = holder.is_some_and(process_alive);
        if live_holder || started.elapsed() > DEAD_HOLDER_WAIT {
            return Err(LockError::Held { holder });
        }
        if !logged {
            log::info!(
                "the lock is held by {} that has exited; waiting for the kernel to release it",
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

    #[test]
    fn a_second_lock_names_the_live_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let first = File::open(&p).unwrap();
        lock_exclusive(&first).unwrap();
        let second = File::open(&p).unwrap();
        match lock_exclusive(&second) {
            Err(LockError::Held { holder }) => {
                assert_eq!(holder, Some(std::process::id()))
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        lock_exclusive(&second).unwrap();
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not_a_process() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }
}
