//! The kernel's switch for FUSE over io_uring
//! (/sys/module/fuse/parameters/enable_uring), set for a test and put back
//! as it was when the guard goes, also when the test fails. It is global:
//! the tests that set it take [`UringSwitch::set`]'s lock, one at a time.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

pub struct UringSwitch {
    old: String,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl UringSwitch {
    /// Sets the switch to `on` (root only). None, saying why the test is
    /// skipped, when this kernel has no FUSE over io_uring or the caller is
    /// not root.
    pub fn set(test: &str, on: bool) -> Option<UringSwitch> {
        if !super::loopdev::needs_root(test) {
            return None;
        }
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(old) = std::fs::read_to_string(PARAM) else {
            super::loopdev::kernel_lacks(test, "FUSE over io_uring (CONFIG_FUSE_IO_URING)");
            return None;
        };
        let guard = UringSwitch {
            old: old.trim().to_string(),
            _lock: lock,
        };
        write(if on { "Y" } else { "N" });
        Some(guard)
    }
}

fn write(v: &str) {
    std::fs::write(Path::new(PARAM), v).unwrap_or_else(|e| panic!("{PARAM} = {v}: {e}"));
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(PARAM, &self.old) {
            eprintln!("cannot restore {PARAM} to {}: {e}", self.old);
        }
    }
}
