//! `mdfuse sandbox DIR`: a newcomer's first array, made of two leg files in
//! DIR and mounted at DIR/mnt, with what to do next printed.

use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct SandboxArgs {
    /// Where to put the legs and the mountpoint (created if missing).
    dir: PathBuf,
    /// Size of each leg file.
    #[arg(long, default_value = "256M", value_parser = super::size::parse_size)]
    size: u64,
    /// Stop the sandbox array and delete what `sandbox` made in DIR.
    #[arg(long)]
    remove: bool,
}

const LEGS: [&str; 2] = ["leg0.img", "leg1.img"];

pub fn run(a: &SandboxArgs) -> Result<(), String> {
    if a.remove {
        return remove(&a.dir);
    }
    let dir = &a.dir;
    std::fs::create_dir_all(dir.join("mnt"))
        .map_err(|e| format!("cannot create {}: {e}", dir.join("mnt").display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let legs: Vec<PathBuf> = LEGS.iter().map(|l| dir.join(l)).collect();
    for leg in &legs {
        if leg.exists() {
            return Err(format!(
                "{} exists: a sandbox is already in {} (remove it with `mdfuse sandbox --remove {}`)",
                leg.display(),
                dir.display(),
                dir.display()
            ));
        }
        let f = std::fs::File::create(leg)
            .map_err(|e| format!("cannot create {}: {e}", leg.display()))?;
        f.set_len(a.size)
            .map_err(|e| format!("cannot size {}: {e}", leg.display()))?;
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let run = |args: &[&str]| -> Result<(), String> {
        let status = std::process::Command::new(&exe)
            .args(args)
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`mdfuse {}` failed", args.join(" ")))
        }
    };
    let leg_args: Vec<String> = legs.iter().map(|l| l.display().to_string()).collect();
    let mut create = vec!["create", "--name", "sandbox"];
    create.extend(leg_args.iter().map(String::as_str));
    run(&create)?;
    let mnt = dir.join("mnt").display().to_string();
    let log = dir.join("mdfuse.log").display().to_string();
    let mut mount = vec!["mount", "--log", log.as_str()];
    mount.extend(leg_args.iter().map(String::as_str));
    mount.push(&mnt);
    run(&mount)?;
    println!(
        "\nA sandbox RAID1 is running in {d}:
  legs:       {l0} and {l1} ({sz} bytes{hsz} each)
  the array:  {mnt}/array.img   (a disk image: losetup it, mkfs it, or read/write it directly)
  status:     cat {mnt}/mdstat
  superblock: mdfuse examine {l0}
  log:        {log}
  stop:       mdfuse stop {mnt}   (mount again with: mdfuse mount {l0} {l1} {mnt})
  remove:     mdfuse sandbox --remove {d}",
        d = dir.display(),
        l0 = leg_args[0],
        l1 = leg_args[1],
        sz = a.size,
        hsz = mdfuse::report::human_size(a.size as u128),
    );
    Ok(())
}

fn remove(dir: &Path) -> Result<(), String> {
    let mnt = dir.join("mnt");
    if super::mdfuse_mount_source(&mnt).is_some() {
        super::cmd_stop(&mnt, 60)?;
    }
    for f in LEGS.iter().chain(["mdfuse.log"].iter()) {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
        }
    }
    let _ = std::fs::remove_dir(&mnt);
    let _ = std::fs::remove_dir(dir);
    println!("mdfuse: sandbox in {} removed", dir.display());
    Ok(())
}
