//! `mount.mdfuse`: the helper mount(8) runs for `mount -t mdfuse` and fstab
//! lines of type mdfuse. It translates mount's arguments into
//! `mdfuse mount ... LEG... MOUNTPOINT` and runs it; `mdfuse mount` returns
//! once the array is live.
//!
//! Usage (from mount(8)): mount.mdfuse SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]
//! Options: legs=LEG:LEG[:LEG...] (or give them as SOURCE), bitmap=FILE,
//! bitmap_file_io, bitmap_trust_device, delay=SECS, ro/rw, allow_other, image_mode=MODE, run,
//! force_from=LEG, buffered, write_through, threads=N, transport=auto|uring|dev-fuse, log=FILE; mount's generic ones
//! (defaults, auto, noauto, nofail, _netdev, user, nouser, x-*, comment=) are
//! accepted and ignored. The legs and the mountpoint are passed after `--`;
//! a `legs=` list that cannot be split one way only is refused.
//!
//! `mdfuse` itself is this helper when run as `mount.mdfuse` (the README's
//! install links it so); this separate binary finds `mdfuse` beside itself,
//! on PATH or in the standard sbin and bin directories.

use mount_mdfuse as options;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

fn mdfuse_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MDFUSE") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().ok();
    let own_dir = me.as_deref().and_then(|m| m.parent());
    options::find_mdfuse(own_dir, std::env::var_os("PATH").as_deref()).ok_or_else(|| {
        format!(
            "cannot find mdfuse beside {}, on PATH or in {} (install it in one of them, \
             or link /sbin/mount.mdfuse to mdfuse itself)",
            own_dir.map_or("this helper".into(), |d| d.display().to_string()),
            options::STANDARD_DIRS.join(", ")
        )
    })
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
    let bin = match mdfuse_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("mount.mdfuse: {e}");
            std::process::exit(1);
        }
    };
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
