//! The stack of block devices under a filesystem, followed down to what
//! holds the bytes: partitions to their disk, loop devices to their backing
//! files, and a backing file to the device of the filesystem it is on (or,
//! for a loop over a block device node, to that device), however deep.
//! What cannot be followed (device-mapper, md, other virtual block devices,
//! a loop whose backing file is no longer found under its name) is named,
//! so the caller can refuse it.

use super::resolve::{loop_backing, BackingFile};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A block device met on the way down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackDevice {
    /// Its device number (a partition's, then its disk's, both are listed).
    pub rdev: u64,
    /// `/dev/NAME`.
    pub node: PathBuf,
}

/// What [`device_stack`] found under a device number.
#[derive(Debug, Clone, Default)]
pub struct DeviceStack {
    /// Every block device met, outermost first.
    pub devices: Vec<StackDevice>,
    /// Every loop device's backing file, outermost first.
    pub files: Vec<BackingFile>,
    /// The first layer that could not be followed, in words, if any.
    pub unfollowable: Option<String>,
}

/// How many layers are followed before the stack is called unfollowable
/// (a cycle, or a stack no one builds on purpose).
const MAX_LAYERS: usize = 32;

fn sysfs_of(dev: u64) -> PathBuf {
    PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ))
}

fn dev_of(sysfs_dir: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(sysfs_dir.join("dev")).ok()?;
    let (ma, mi) = s.trim().split_once(':')?;
    Some(libc::makedev(ma.parse().ok()?, mi.parse().ok()?))
}

/// Follows the block devices under device number `dev` (a file's
/// `st_dev`). A device number that is no block device (tmpfs, proc, an
/// anonymous device) ends the walk: there is nothing under it to follow.
pub fn device_stack(dev: u64) -> DeviceStack {
    let mut stack = DeviceStack::default();
    let mut dev = dev;
    for _ in 0..MAX_LAYERS {
        if libc::major(dev) == 0 {
            return stack;
        }
        let sysfs = sysfs_of(dev);
        let Ok(real) = std::fs::canonicalize(&sysfs) else {
            stack.unfollowable = Some(format!(
                "device {}:{} is not a block device the kernel lists in /sys/dev/block",
                libc::major(dev),
                libc::minor(dev)
            ));
            return stack;
        };
        let name_of = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        stack.devices.push(StackDevice {
            rdev: dev,
            node: Path::new("/dev").join(name_of(&real)),
        });
        let disk = if real.join("partition").exists() {
            match real.parent() {
                Some(d) => {
                    if let Some(d_dev) = dev_of(d) {
                        stack.devices.push(StackDevice {
                            rdev: d_dev,
                            node: Path::new("/dev").join(name_of(d)),
                        });
                    }
                    d.to_path_buf()
                }
                None => real.clone(),
            }
        } else {
            real.clone()
        };
        let name = name_of(&disk);
        if disk.join("loop").is_dir() {
            let Some(backing) = loop_backing(dev) else {
                stack.unfollowable = Some(format!(
                    "loop device /dev/{name} does not say what backs it"
                ));
                return stack;
            };
            // Its backing file as named now: the same inode as the loop's,
            // else it was renamed or deleted and the name says nothing.
            let found = std::fs::metadata(&backing.path)
                .ok()
                .filter(|m| (m.dev(), m.ino()) == (backing.st_dev, backing.st_ino));
            let next = match &found {
                Some(m) if m.file_type().is_block_device() => m.rdev(),
                Some(_) => backing.st_dev,
                None => {
                    stack.unfollowable = Some(format!(
                        "loop device /dev/{name}'s backing file {} is no longer found under \
                         that name (deleted or renamed), so what holds it is unknown",
                        backing.path.display()
                    ));
                    stack.files.push(backing);
                    return stack;
                }
            };
            stack.files.push(backing);
            dev = next;
            continue;
        }
        if disk.join("dm").is_dir() {
            let dm_name = std::fs::read_to_string(disk.join("dm/name")).unwrap_or_default();
            stack.unfollowable = Some(format!(
                "/dev/{name} is a device-mapper device ({}), whose table can point anywhere \
                 and change while the array runs",
                dm_name.trim()
            ));
            return stack;
        }
        if disk.join("md").is_dir() {
            stack.unfollowable = Some(format!(
                "/dev/{name} is an md array, whose members can change while the array runs"
            ));
            return stack;
        }
        let is_virtual = disk.components().any(|c| c.as_os_str() == "virtual");
        if is_virtual && !(name.starts_with("ram") || name.starts_with("zram")) {
            stack.unfollowable = Some(format!(
                "/dev/{name} is a virtual block device that is not a loop device \
                 (nbd, ublk, ...), served by something mdfuse cannot follow"
            ));
            return stack;
        }
        // A disk of the machine, or a RAM disk: nothing under it.
        return stack;
    }
    stack.unfollowable = Some(format!("more than {MAX_LAYERS} layers of devices"));
    stack
}

/// The filesystem type mounted from device number `dev` (`fuse`,
/// `fuse.sshfs`, `tmpfs`, ...), from /proc/self/mountinfo.
pub fn fs_type_of_dev(dev: u64) -> Option<String> {
    let wanted = format!("{}:{}", libc::major(dev), libc::minor(dev));
    crate::io::mounts::mountinfo()
        .into_iter()
        .find(|m| m.dev == wanted)
        .map(|m| m.fstype)
}
