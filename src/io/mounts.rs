//! The kernel's mount tables (/proc/self/mounts and mountinfo), parsed in
//! one place: fields are separated by spaces and the kernel escapes a
//! space, tab, newline or backslash inside one as `\` and three octal
//! digits (`\040`, `\011`, `\012`, `\134`), which util-linux undoes.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of /proc/self/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub source: OsString,
    pub point: PathBuf,
    pub fstype: String,
}

/// A field of the mount tables, unescaped: `\NNN` (three octal digits) is
/// the byte NNN; any other backslash stays as it is.
pub fn unescape(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |k: usize| b.get(i + k).filter(|c| (b'0'..=b'7').contains(c));
        if b[i] == b'\\' {
            if let (Some(&h), Some(&m), Some(&l)) = (octal(1), octal(2), octal(3)) {
                let v = (h - b'0') as u32 * 64 + (m - b'0') as u32 * 8 + (l - b'0') as u32;
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

/// Parses the text of /proc/self/mounts.
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (source, point, fstype) = (f.next()?, f.next()?, f.next()?);
            Some(MountEntry {
                source: unescape(source),
                point: PathBuf::from(unescape(point)),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// The mounts of this process's namespace (empty if /proc is unreadable).
pub fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|t| parse_mounts(&t))
        .unwrap_or_default()
}

/// One line of /proc/self/mountinfo (the fields mdfuse uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// "MAJOR:MINOR" of the mounted device.
    pub dev: String,
    pub point: PathBuf,
    pub fstype: String,
    /// The filesystem's own options (after the " - " separator).
    pub super_options: String,
}

/// Parses the text of /proc/self/mountinfo.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (_, tail) = l.split_once(" - ")?;
            let mut t = tail.split(' ');
            let fstype = t.next()?.to_string();
            let _source = t.next()?;
            Some(MountInfo {
                dev: f.get(2)?.to_string(),
                point: PathBuf::from(unescape(f.get(4)?)),
                fstype,
                super_options: unescape(t.next().unwrap_or(""))
                    .to_string_lossy()
                    .into_owned(),
            })
        })
        .collect()
}

/// This process's mountinfo (empty if /proc is unreadable).
pub fn mountinfo() -> Vec<MountInfo> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// "MAJOR:MINOR" of the mount at `mountpoint` (the last mount there wins,
/// as in path lookup).
pub fn device_of_mount(infos: &[MountInfo], mountpoint: &Path) -> Option<String> {
    infos
        .iter()
        .rev()
        .find(|m| m.point == mountpoint)
        .map(|m| m.dev.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_escape_is_undone_and_nothing_else() {
        assert_eq!(unescape(r"/mnt/a\040b\011c\012d\134e"), "/mnt/a b\tc\nd\\e");
        assert_eq!(unescape(r"/mnt/\x\09\1"), r"/mnt/\x\09\1");
        assert_eq!(unescape(r"\777"), r"\777", "not a byte: left as it is");
    }

    #[test]
    fn a_mountpoint_with_a_tab_or_backslash_is_found() {
        let text = "mdfuse:/srv/leg\\0400.img /mnt/a\\011b\\134c fuse rw 0 0\n\
                    /dev/vda1 / ext4 rw 0 0\n";
        let m = parse_mounts(text);
        assert_eq!(m[0].source, "mdfuse:/srv/leg 0.img");
        assert_eq!(m[0].point, Path::new("/mnt/a\tb\\c"));
        assert_eq!(m[0].fstype, "fuse");
        let info = "36 25 0:45 / /mnt/a\\011b\\134c rw - fuse mdfuse:x rw\n\
                    37 25 0:46 / /mnt/a\\011b\\134c rw shared:1 - ext4 /dev/loop0 rw,data=journal\n";
        let infos = parse_mountinfo(info);
        assert_eq!(
            device_of_mount(&infos, Path::new("/mnt/a\tb\\c")).as_deref(),
            Some("0:46")
        );
        assert_eq!(infos[1].fstype, "ext4");
        assert_eq!(infos[1].super_options, "rw,data=journal");
    }
}
