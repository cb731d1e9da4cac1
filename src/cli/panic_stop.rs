//! A panic in the serving daemon is a bug, and after one the daemon must not
//! go on: fuser would answer the request EIO and serve on with a thread
//! fewer, and a later clean stop would record the array clean although the
//! panic may have come between two legs' writes (they may differ). So a
//! panic stops the process at once: the hook logs it, detaches the mount
//! (so no dead mount is left behind) and exits without recording anything.
//! The superblocks still say active (every write marks the array active
//! before its first leg write), so the next mount resyncs, from the
//! write-intent bitmap where there is one.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

/// The exit status after a panic (EX_SOFTWARE).
pub const PANIC_EXIT: i32 = 70;

/// The live mount of this daemon, once it is live.
static MOUNTED: OnceLock<CString> = OnceLock::new();

/// Installs the hook; call before anything can panic in the daemon.
pub fn install() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        log::error!(
            "BUG: thread {} panicked: {info}; the daemon stops now and leaves the array \
             marked active, so the next mount resyncs it",
            thread.name().unwrap_or("(unnamed)")
        );
        // The message and a backtrace (RUST_BACKTRACE) on stderr, the log.
        default(info);
        if let Some(mountpoint) = MOUNTED.get() {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(mountpoint.as_ptr(), libc::MNT_DETACH) };
        }
        // SAFETY: ends the process without unwinding or running
        // destructors, which would stop the array cleanly.
        unsafe { libc::_exit(PANIC_EXIT) };
    }));
}

/// Tells the hook the mount at `mountpoint` is live (it is detached on a panic).
pub fn mounted(mountpoint: &Path) {
    // Absolute without a system call on the mount (it is not served yet).
    let abs = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_owned());
    if let Ok(c) = CString::new(abs.as_os_str().as_bytes()) {
        let _ = MOUNTED.set(c);
    }
}
