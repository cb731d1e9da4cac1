//! `mdfuse` run as `mount.mdfuse` (a symlink or a hard link, as
//! mount.fuse3 is installed): mount(8)'s helper arguments, parsed by the
//! `mount-mdfuse` library, become `mdfuse mount ...`, run by re-executing
//! this same program, so the helper can never miss its daemon.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The program itself, whatever name or link it was run by.
const SELF_EXE: &str = "/proc/self/exe";

/// Runs the helper; returns only on an error (its exit code).
pub fn main(args: Vec<OsString>) -> i32 {
    let args: Result<Vec<String>, _> = args.into_iter().map(OsString::into_string).collect();
    let Ok(args) = args else {
        eprintln!(
            "{}: an argument is not valid UTF-8",
            mount_mdfuse::HELPER_NAME
        );
        return 1;
    };
    let request = match mount_mdfuse::parse_mount_args(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", mount_mdfuse::HELPER_NAME);
            return 1;
        }
    };
    let argv = request.mdfuse_args();
    if request.verbose || request.fake {
        eprintln!("{}: mdfuse {}", mount_mdfuse::HELPER_NAME, argv.join(" "));
    }
    if request.fake {
        return 0;
    }
    // argv[0] "mdfuse": the new image is the ordinary command, not the helper.
    let err = Command::new(SELF_EXE).arg0("mdfuse").args(&argv).exec();
    eprintln!(
        "{}: cannot run {SELF_EXE}: {err}",
        mount_mdfuse::HELPER_NAME
    );
    1
}
