//! Root-only test harness: loop devices, filesystems and mounts as RAII
//! guards that clean up even when a test fails. Each test makes its own in
//! its own temporary directory, so tests may run in parallel.
//!
//! Drop order of [`ScratchFs`]: unmount, then detach the loop device, then
//! remove the directory with the image.

#![allow(dead_code)] // each test binary uses a different subset

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `test` (or a part of it) cannot run here, because `why`: it is skipped
/// with a line saying so, or, when `MDFUSE_REQUIRE_ALL=1` (the test script
/// sets it), fails, so that a run missing a tool, a fixture or root cannot
/// pass silently.
pub fn skipped(test: &str, why: &str) {
    if std::env::var("MDFUSE_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{test} cannot run: {why} (MDFUSE_REQUIRE_ALL=1 requires every test to run)");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// `test` needs what this kernel does not have (`what`): it is skipped with
/// a line saying so, even under `MDFUSE_REQUIRE_ALL=1`, since no setup of
/// the machine's userland can give it (docs: README, "Tests").
pub fn kernel_lacks(test: &str, what: &str) {
    eprintln!("SKIPPED {test}: this kernel has no {what}");
}

/// True when running as root; otherwise says why `test` is skipped (see
/// [`skipped`]). Use as `if !needs_root("name") { return; }`.
pub fn needs_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skipped(
        test,
        "needs root (loop devices, mkfs, mount); run the tests as root",
    );
    false
}

/// One test of the binary at a time (root only; else None, saying why the
/// test is skipped): for heavy, timing-sensitive tests.
pub fn serial(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    if !needs_root(test) {
        return None;
    }
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    Some(LOCK.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Runs a command; its stderr becomes the error.
pub fn run(program: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(p: &Path) -> io::Result<&str> {
    p.to_str()
        .ok_or_else(|| io::Error::other(format!("non-UTF-8 path {}", p.display())))
}

/// A sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) -> io::Result<()> {
    let f = std::fs::File::create(path)?;
    f.set_len(size)
}

/// A loop device attached to a file; detached on drop.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    pub fn attach(file: &Path) -> io::Result<LoopDevice> {
        Self::attach_with(file, &[])
    }

    /// Attached with partition scanning (`losetup -P`): partitions appear as
    /// /dev/loopNpM.
    pub fn attach_partitioned(file: &Path) -> io::Result<LoopDevice> {
        Self::attach_with(file, &["--partscan"])
    }

    /// The node of partition `n`, waiting briefly for it to appear.
    pub fn partition(&self, n: u32) -> io::Result<PathBuf> {
        let node = PathBuf::from(format!("{}p{n}", self.path.display()));
        for _ in 0..50 {
            if node.exists() {
                return Ok(node);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(io::Error::other(format!(
            "{} did not appear",
            node.display()
        )))
    }

    pub fn attach_read_only(file: &Path) -> io::Result<LoopDevice> {
        Self::attach_with(file, &["--read-only"])
    }

    /// Over the part of `file` from `offset` on (`losetup -o`).
    pub fn attach_at(file: &Path, offset: u64) -> io::Result<LoopDevice> {
        Self::attach_with(file, &["-o", &offset.to_string()])
    }

    fn attach_with(file: &Path, extra: &[&str]) -> io::Result<LoopDevice> {
        let mut args = vec!["-f", "--show"];
        args.extend_from_slice(extra);
        args.push(path_str(file)?);
        let out = run("losetup", &args)?;
        let name = out.trim();
        if !name.starts_with("/dev/loop") {
            // Nothing we can name was attached; nothing to detach.
            return Err(io::Error::other(format!("losetup printed {out:?}")));
        }
        Ok(LoopDevice {
            path: PathBuf::from(name),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let dev = self.path.to_string_lossy().into_owned();
        // The kernel may still hold it briefly after an unmount; retry.
        for attempt in 0..10 {
            match run("losetup", &["-d", &dev]) {
                Ok(_) => return,
                Err(e) if attempt == 9 => eprintln!("warning: cannot detach {dev}: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }
}

/// mkfs wrappers (quiet, forced: the devices are the test's own loops).
pub struct Mkfs;

impl Mkfs {
    pub fn ext4(dev: &Path, block_size: u32) -> io::Result<()> {
        run(
            "mkfs.ext4",
            &["-F", "-q", "-b", &block_size.to_string(), path_str(dev)?],
        )
        .map(drop)
    }

    /// ext4 with 4 KiB blocks and no lazy initialisation: an idle
    /// filesystem writes nothing to its device.
    pub fn ext4_eager(dev: &Path) -> io::Result<()> {
        run(
            "mkfs.ext4",
            &[
                "-F",
                "-q",
                "-b",
                "4096",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                path_str(dev)?,
            ],
        )
        .map(drop)
    }

    pub fn xfs(dev: &Path, extra: &[&str]) -> io::Result<()> {
        let mut args = vec!["-f", "-q"];
        args.extend_from_slice(extra);
        args.push(path_str(dev)?);
        run("mkfs.xfs", &args).map(drop)
    }
}

/// A mounted filesystem; unmounted on drop (lazily if busy).
#[derive(Debug)]
pub struct MountedFs {
    dir: PathBuf,
}

impl MountedFs {
    pub fn mount(dev: &Path, dir: &Path) -> io::Result<MountedFs> {
        Self::mount_with(path_str(dev)?, dir, None, None)
    }

    pub fn mount_read_only(dev: &Path, dir: &Path) -> io::Result<MountedFs> {
        Self::mount_with(path_str(dev)?, dir, None, Some("ro"))
    }

    pub fn tmpfs(dir: &Path, size_mib: u32) -> io::Result<MountedFs> {
        Self::mount_with(
            "tmpfs",
            dir,
            Some("tmpfs"),
            Some(&format!("size={size_mib}m")),
        )
    }

    pub fn mount_with(
        source: &str,
        dir: &Path,
        fstype: Option<&str>,
        options: Option<&str>,
    ) -> io::Result<MountedFs> {
        std::fs::create_dir_all(dir)?;
        let mut args = Vec::new();
        if let Some(t) = fstype {
            args.extend(["-t", t]);
        }
        if let Some(o) = options {
            args.extend(["-o", o]);
        }
        args.push(source);
        args.push(path_str(dir)?);
        run("mount", &args)?;
        Ok(MountedFs {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy().into_owned();
        if run("umount", &[&dir]).is_err() {
            if let Err(e) = run("umount", &["-l", &dir]) {
                eprintln!("warning: cannot unmount {dir}: {e}");
            }
        }
    }
}

/// A filesystem on a loop device on a sparse image in a fresh temporary
/// directory. Fields drop in declaration order: mount, loop, directory.
#[derive(Debug)]
pub struct ScratchFs {
    mount: MountedFs,
    loop_dev: LoopDevice,
    image: PathBuf,
    dir: tempfile::TempDir,
}

impl ScratchFs {
    /// ext4 with `block_size`-byte blocks on a 64 MiB image.
    pub fn ext4(block_size: u32) -> io::Result<ScratchFs> {
        Self::make(64 << 20, |dev| Mkfs::ext4(dev, block_size))
    }

    /// xfs (300 MiB, its minimum; sparse) with extra mkfs options.
    pub fn xfs(extra: &[&str]) -> io::Result<ScratchFs> {
        Self::make(320 << 20, |dev| Mkfs::xfs(dev, extra))
    }

    pub fn make(size: u64, mkfs: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<ScratchFs> {
        let dir = tempfile::Builder::new()
            .prefix("mdfuse-scratch")
            .tempdir()?;
        let image = dir.path().join("fs.img");
        sparse_file(&image, size)?;
        let loop_dev = LoopDevice::attach(&image)?;
        mkfs(loop_dev.path())?;
        let mount = MountedFs::mount(loop_dev.path(), &dir.path().join("mnt"))?;
        Ok(ScratchFs {
            mount,
            loop_dev,
            image,
            dir,
        })
    }

    /// A path inside the mounted filesystem.
    pub fn path(&self, name: &str) -> PathBuf {
        self.mount.dir().join(name)
    }

    pub fn mount_dir(&self) -> &Path {
        self.mount.dir()
    }

    pub fn device(&self) -> &Path {
        self.loop_dev.path()
    }

    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The temporary directory holding the image (outside the filesystem).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }
}
