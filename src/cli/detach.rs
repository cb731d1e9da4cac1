//! Running the mount in the background: the command re-executes itself in
//! the foreground mode as a new session, with its output going to a log
//! file, and waits on a pipe until the child says the mount is live (or why
//! it failed). Re-executing avoids fork() in a process that has threads.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The environment variable naming the child's end of the readiness pipe.
pub const READY_FD_VAR: &str = "MDFUSE_READY_FD";

/// The child's side: tells the waiting parent the outcome, once.
pub struct Ready(Option<std::fs::File>);

impl Ready {
    /// Takes the pipe named in the environment, if this process was started detached.
    pub fn from_env() -> Ready {
        let fd = std::env::var(READY_FD_VAR)
            .ok()
            .and_then(|v| v.parse::<i32>().ok());
        std::env::remove_var(READY_FD_VAR);
        // SAFETY: the parent passed this fd for us alone; we take ownership once.
        Ready(fd.map(|fd| unsafe { std::fs::File::from_raw_fd(fd) }))
    }

    /// The parent reads one line: a message is sent escaped (a path with a
    /// newline in it would cut it short).
    pub fn live(&mut self, message: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = writeln!(f, "ok {}", super::escape_log(message));
        }
    }

    pub fn failed(&mut self, message: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = writeln!(f, "error {}", super::escape_log(message));
        }
    }
}

/// The daemon's umask: the files it makes (its pid file) are 0644.
const DAEMON_UMASK: libc::mode_t = 0o022;

/// close_range(2)'s flag: mark the range close-on-exec instead of closing.
const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

/// Marks every descriptor from 3 on close-on-exec, between fork and exec,
/// so the new program inherits none of its caller's (std's own pipe for an
/// exec error keeps working until the exec): close_range(2), or one
/// fcntl(2) per descriptor where the kernel lacks it. Only async-signal-safe
/// calls.
fn cloexec_inherited() {
    // SAFETY: close_range takes no pointers.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20) as i32
    } else {
        1024
    };
    for fd in 3..max {
        // SAFETY: fcntl on a descriptor number; EBADF for a closed one is harmless.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// The parent's side: starts `args` (this program, foreground mode) detached
/// with its output in `log`, waits for its word, returns the exit code.
pub fn spawn_and_wait(args: &[String], log: &Path) -> i32 {
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let log_file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "mdfuse: cannot open log file {}: {e} (choose another with --log)",
                log.display()
            );
            return 1;
        }
    };
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("mdfuse: pipe: {}", std::io::Error::last_os_error());
        return 1;
    }
    // SAFETY: both fds are fresh and owned here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let child_fd = write_end.as_raw_fd();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("mdfuse: cannot find its own executable: {e}");
            return 1;
        }
    };
    let stderr = match log_file.try_clone() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mdfuse: {e}");
            return 1;
        }
    };
    let mut cmd = Command::new(&exe);
    // Run through a hard link named mount.mdfuse, the executable is that
    // link: the child is told by argv[0] that it is mdfuse, not the helper.
    if mount_mdfuse::invoked_as_helper(Some(exe.as_os_str())) {
        cmd.arg0("mdfuse");
    }
    // A daemon's start: its own session, `/` as its directory (it holds no
    // directory of its caller busy; every path it is given is absolute),
    // umask 022, and none of the caller's descriptors but the pipe (a
    // caller's `flock 9` would otherwise be held for the array's life).
    cmd.args(args)
        .env(READY_FD_VAR, child_fd.to_string())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(stderr));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::umask(DAEMON_UMASK);
            // Stop signals wait (pending) until the daemon has its handlers
            // (serve::StopSignals::install unblocks them): a SIGTERM right
            // after the start stops it cleanly instead of killing it.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            cloexec_inherited();
            // Keep the pipe's write end across exec (only it).
            let flags = libc::fcntl(child_fd, libc::F_GETFD);
            libc::fcntl(child_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mdfuse: cannot start the background process: {e}");
            return 1;
        }
    };
    drop(write_end);
    let mut line = String::new();
    let _ = BufReader::new(std::fs::File::from(read_end)).read_line(&mut line);
    if let Some(msg) = line.strip_prefix("ok ") {
        println!("{}\nmdfuse: log: {}", msg.trim_end(), log.display());
        return 0;
    }
    if let Some(msg) = line.strip_prefix("error ") {
        eprintln!("mdfuse: {}", msg.trim_end());
    } else {
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        eprintln!(
            "mdfuse: the background process ended before the mount was live ({status}); see {}",
            log.display()
        );
    }
    let _ = child.wait();
    1
}
