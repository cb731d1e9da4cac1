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
/// A small ext4 image (on a loop device) holding the bitmap file, so the raw
/// bitmap path is what a newcomer sees.
const BITMAP_FS_IMAGE: &str = "bitmap-fs.img";
const BITMAP_FS_DIR: &str = "bitmap-fs";
const BITMAP_FILE: &str = "array.bitmap";
const BITMAP_FS_BYTES: u64 = 32 << 20;

fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Makes the bitmap's filesystem: an ext4 image on a loop device, mounted in
/// DIR. Returns the bitmap file's path.
fn make_bitmap_fs(dir: &Path) -> Result<PathBuf, String> {
    let image = dir.join(BITMAP_FS_IMAGE);
    let mnt = dir.join(BITMAP_FS_DIR);
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(BITMAP_FS_BYTES))
        .map_err(|e| format!("cannot create {}: {e}", image.display()))?;
    std::fs::create_dir_all(&mnt).map_err(|e| format!("cannot create {}: {e}", mnt.display()))?;
    let image_s = image.display().to_string();
    let dev = sh("losetup", &["-f", "--show", &image_s])?;
    let made = sh("mkfs.ext4", &["-q", "-F", &dev])
        .and_then(|_| sh("mount", &[&dev, &mnt.display().to_string()]));
    if let Err(e) = made {
        let _ = sh("losetup", &["-d", &dev]);
        return Err(e);
    }
    Ok(mnt.join(BITMAP_FILE))
}

/// A word for a shell line: as is when it holds only characters no shell
/// reads specially, else in single quotes.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,=@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// How to call this program in a printed command: `mdfuse` when PATH finds
/// this very binary under that name, else its full path (a newcomer's
/// `cargo run` or `target/release/mdfuse` is not on PATH).
fn invocation(exe: &Path) -> String {
    let me = exe.canonicalize().unwrap_or_else(|_| exe.to_path_buf());
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("mdfuse"))
            .find(|p| p.is_file())
            .and_then(|p| p.canonicalize().ok())
            .is_some_and(|p| p == me)
    });
    if on_path {
        "mdfuse".into()
    } else {
        shell_word(&me.display().to_string())
    }
}

fn remove_bitmap_fs(dir: &Path) {
    let mnt = dir.join(BITMAP_FS_DIR);
    let _ = sh("umount", &[&mnt.display().to_string()]);
    let image = dir.join(BITMAP_FS_IMAGE).display().to_string();
    if let Ok(list) = sh("losetup", &["-j", &image]) {
        for dev in list.lines().filter_map(|l| l.split(':').next()) {
            let _ = sh("losetup", &["-d", dev]);
        }
    }
    let _ = std::fs::remove_dir(&mnt);
}

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
    let (bitmap, file_io) = match make_bitmap_fs(&dir) {
        Ok(b) => (b, false),
        Err(e) => {
            println!(
                "mdfuse: no loop device or ext4 for the bitmap here ({e});\n\
                 mdfuse: the sandbox's bitmap uses ordinary file I/O instead of raw device writes"
            );
            (dir.join(BITMAP_FILE), true)
        }
    };
    let bitmap_s = bitmap.display().to_string();
    let mut create = vec!["create", "--name", "sandbox", "--bitmap", bitmap_s.as_str()];
    create.extend(leg_args.iter().map(String::as_str));
    if let Err(e) = run(&create) {
        remove_bitmap_fs(&dir);
        return Err(e);
    }
    let mnt = dir.join("mnt").display().to_string();
    let log = dir.join("mdfuse.log").display().to_string();
    let mut mount = vec![
        "mount",
        "--log",
        log.as_str(),
        "--bitmap",
        bitmap_s.as_str(),
    ];
    if file_io {
        mount.push("--bitmap-file-io");
    }
    mount.extend(leg_args.iter().map(String::as_str));
    mount.push(&mnt);
    if let Err(e) = run(&mount) {
        remove_bitmap_fs(&dir);
        return Err(e);
    }
    // Every command below runs as printed (paths quoted for the shell).
    let q = |s: &str| shell_word(s);
    println!(
        "\nA sandbox RAID1 is running in {d}:
  legs:       {l0} and {l1} ({sz} bytes{hsz} each)
  bitmap:     {bm}   ({md} examine-bitmap {bm})
  the array:  {img}   (a disk image: losetup it, mkfs it, or read/write it directly)
  status:     cat {mdstat}
  superblock: {md} examine {l0}
  log:        {log}
  stop:       {md} stop {mnt}
  again:      {md} mount --bitmap {bm}{fio} {l0} {l1} {mnt}
  remove:     {md} sandbox --remove {d}",
        md = invocation(&exe),
        d = q(&dir.display().to_string()),
        l0 = q(&leg_args[0]),
        l1 = q(&leg_args[1]),
        sz = a.size,
        bm = q(&bitmap_s),
        img = q(&format!("{mnt}/array.img")),
        mdstat = q(&format!("{mnt}/mdstat")),
        mnt = q(&mnt),
        log = q(&log),
        fio = if file_io { " --bitmap-file-io" } else { "" },
        hsz = mdfuse::report::human_size(a.size as u128),
    );
    Ok(())
}

fn remove(dir: &Path) -> Result<(), String> {
    let mnt = dir.join("mnt");
    if super::mdfuse_mount_source(&mnt).is_some() {
        super::cmd_stop(&mnt, 60)?;
    }
    remove_bitmap_fs(dir);
    for f in LEGS
        .iter()
        .chain(["mdfuse.log", BITMAP_FS_IMAGE, BITMAP_FILE].iter())
    {
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
