//! `mount.mdfuse`: the helper mount(8) runs for `mount -t mdfuse` and fstab
//! lines of type mdfuse. It translates mount's arguments into
//! `mdfuse mount ... LEG... MOUNTPOINT` and runs it; `mdfuse mount` returns
//! once the array is live.
//!
//! Usage (from mount(8)): mount.mdfuse SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]
//! Options: legs=LEG:LEG[:LEG...] (or give them as SOURCE), bitmap=FILE,
//! bitmap_file_io, delay=SECS, ro/rw, allow_other, image_mode=MODE, run,
//! force_from=LEG, buffered, write_through, threads=N, log=FILE; mount's generic ones
//! (defaults, auto, noauto, nofail, _netdev, user, nouser, x-*, comment=) are
//! accepted and ignored. The legs and the mountpoint are passed after `--`;
//! a `legs=` list that cannot be split one way only is refused.

use mount_mdfuse as options;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

fn mdfuse_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MDFUSE") {
        return PathBuf::from(p);
    }
    // Beside this helper first (an install puts both in one place), else PATH.
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            let beside = dir.join("mdfuse");
            if beside.is_file() {
                return beside;
            }
        }
    }
    PathBuf::from("mdfuse")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let request = match options::parse_mount_args(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mount.mdfuse: {e}");
            std::process::exit(1);
        }
    };
    let bin = mdfuse_binary();
    let argv = request.mdfuse_args();
    if request.verbose || request.fake {
        eprintln!("mount.mdfuse: {} {}", bin.display(), argv.join(" "));
    }
    if request.fake {
        return;
    }
    let err = Command::new(&bin).args(&argv).exec();
    eprintln!("mount.mdfuse: cannot run {}: {err}", bin.display());
    std::process::exit(1);
}
