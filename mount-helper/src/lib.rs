//! mount(8)'s helper arguments and `-o` options, translated to `mdfuse mount`,
//! and where the helper finds `mdfuse`. Shared by the `mdfuse` binary (which
//! is the helper itself when run as `mount.mdfuse`, through a symlink or a
//! hard link) and the separate `mount-mdfuse` binary.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The name mount(8) runs the helper by: `/sbin/mount.mdfuse`.
pub const HELPER_NAME: &str = "mount.mdfuse";

/// Whether a program started with this `argv[0]` is the mount helper (its
/// file name is `mount.mdfuse`, whatever directory it was run from).
pub fn invoked_as_helper(argv0: Option<&OsStr>) -> bool {
    argv0
        .map(Path::new)
        .and_then(Path::file_name)
        .is_some_and(|n| n == HELPER_NAME)
}

/// The standard directories searched for `mdfuse` after the helper's own
/// directory and PATH: mount(8) and systemd run helpers with a PATH that
/// may lack some of them (no /usr/local/sbin at boot on many systems).
pub const STANDARD_DIRS: &[&str] = &[
    "/usr/sbin",
    "/sbin",
    "/usr/local/sbin",
    "/usr/bin",
    "/bin",
    "/usr/local/bin",
];

/// Where the `mount-mdfuse` binary finds `mdfuse`: beside itself first (an
/// install puts both in one place), then each directory of `path_env`,
/// then [`STANDARD_DIRS`]. The first executable regular file named `mdfuse`
/// wins; None when there is none anywhere.
pub fn find_mdfuse(own_dir: Option<&Path>, path_env: Option<&OsStr>) -> Option<PathBuf> {
    let from_path: Vec<PathBuf> = path_env
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    own_dir
        .map(Path::to_path_buf)
        .into_iter()
        .chain(from_path.into_iter().filter(|d| d.is_absolute()))
        .chain(STANDARD_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join("mdfuse"))
        .find(|p| is_executable_file(p))
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountRequest {
    pub legs: Vec<String>,
    pub mountpoint: String,
    pub read_only: bool,
    pub allow_other: bool,
    /// array.img's mode, octal as given (e.g. "0660").
    pub image_mode: Option<String>,
    pub run_degraded: bool,
    pub force_from: Option<String>,
    pub buffered: bool,
    pub write_through: bool,
    pub threads: Option<u32>,
    /// auto, uring or dev-fuse.
    pub transport: Option<String>,
    pub log: Option<String>,
    pub bitmap: Option<String>,
    pub bitmap_file_io: bool,
    pub bitmap_trust_device: bool,
    pub delay: Option<u32>,
    pub verbose: bool,
    pub fake: bool,
}

/// Options mount(8) or fstab may pass that concern mount(8) itself, not us.
fn is_generic(opt: &str) -> bool {
    matches!(
        opt,
        "defaults"
            | "auto"
            | "noauto"
            | "nofail"
            | "_netdev"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "group"
            | "nosuid"
            | "nodev"
            | "noexec"
            | "suid"
            | "dev"
            | "exec"
            | "relatime"
            | "noatime"
            | "atime"
    ) || opt.starts_with("x-")
        || opt.starts_with("comment=")
}

/// `-o`'s list split at its commas. A double quote is refused: libmount
/// lets a quoted value hold a comma, and a value split at it would be
/// read as something else.
fn split_options(list: &str) -> Result<Vec<String>, String> {
    if list.contains('"') {
        return Err(format!(
            "-o {list}: a quoted option value is not supported (a path holding ',' or ':' \
             cannot be given to mount.mdfuse: use a symlink without them)"
        ));
    }
    Ok(list
        .split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect())
}

/// The legs of `legs=` or of SOURCE, split at `:`. The split is refused
/// when it is not the only reading: an empty piece, or pieces that, joined
/// again with their `:`, name a file that exists (a leg path holding a
/// `:`); such a leg is given through a symlink without one.
fn split_legs(what: &str, list: &str) -> Result<Vec<String>, String> {
    let legs: Vec<String> = list.split(':').map(String::from).collect();
    if legs.iter().any(|l| l.is_empty()) {
        return Err(format!("{what}{list}: an empty leg path"));
    }
    for first in 0..legs.len() {
        for last in first + 1..legs.len() {
            let joined = legs[first..=last].join(":");
            if std::path::Path::new(&joined).exists() {
                return Err(format!(
                    "{what}{list}: cannot be split into legs unambiguously: {joined:?} exists; \
                     legs are separated by ':', so a leg path holding ':' (or ',') cannot be \
                     given (use a symlink without them)"
                ));
            }
        }
    }
    Ok(legs)
}

pub fn parse_mount_args(args: &[String]) -> Result<MountRequest, String> {
    let mut req = MountRequest::default();
    // mount(8) runs helpers as `mount.TYPE SOURCE MOUNTPOINT [options]`:
    // the first two are those two whatever they look like (a leg or a
    // mountpoint may begin with '-').
    let (positional, rest) = if args.len() >= 2 {
        (args[..2].to_vec(), &args[2..])
    } else {
        (Vec::new(), args)
    };
    let mut positional = positional;
    let mut opts: Vec<String> = Vec::new();
    let args = rest;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        match a.as_str() {
            "-o" => {
                i += 1;
                let o = args.get(i).ok_or("-o needs a value")?;
                opts.extend(split_options(o)?);
            }
            "-t" => {
                i += 1;
            }
            s if s.starts_with("-o") => opts.extend(split_options(&s[2..])?),
            s if s.starts_with('-') && s.len() > 1 => {
                for flag in s[1..].chars() {
                    match flag {
                        'v' => req.verbose = true,
                        'f' => req.fake = true,
                        // sloppy, no-mtab: nothing to do for a FUSE mount.
                        's' | 'n' => {}
                        other => return Err(format!("unknown flag -{other}")),
                    }
                }
            }
            _ => positional.push(a.clone()),
        }
        i += 1;
    }
    let [source, mountpoint] = positional.as_slice() else {
        return Err(format!(
            "usage: mount.mdfuse SOURCE MOUNTPOINT [-o OPTIONS] (got {} positional arguments)",
            positional.len()
        ));
    };
    req.mountpoint = mountpoint.clone();
    for opt in &opts {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        let need = |v: Option<&str>| {
            v.filter(|v| !v.is_empty())
                .map(String::from)
                .ok_or(format!("option {key} needs a value ({key}=...)"))
        };
        // A value given twice, differently: which one was meant?
        let once = |old: Option<&String>, new: &str| match old {
            Some(o) if o != new => Err(format!(
                "option {key} given twice ({key}={o} and {key}={new})"
            )),
            _ => Ok(()),
        };
        match key {
            "legs" => {
                let legs = split_legs("legs=", &need(value)?)?;
                if !req.legs.is_empty() && req.legs != legs {
                    return Err(format!(
                        "option legs given twice (legs={} and legs={})",
                        req.legs.join(":"),
                        legs.join(":")
                    ));
                }
                req.legs = legs;
            }
            "ro" => req.read_only = true,
            "rw" => req.read_only = false,
            "allow_other" => req.allow_other = true,
            "image_mode" => {
                let mode = need(value)?;
                let octal = u16::from_str_radix(&mode, 8).ok().filter(|m| *m <= 0o777);
                if octal.is_none() {
                    return Err(format!(
                        "image_mode={mode}: not an octal mode from 0000 to 0777 (e.g. 0660)"
                    ));
                }
                req.image_mode = Some(mode);
            }
            "run" => req.run_degraded = true,
            "force_from" => {
                let v = need(value)?;
                once(req.force_from.as_ref(), &v)?;
                req.force_from = Some(v);
            }
            "buffered" => req.buffered = true,
            "write_through" => req.write_through = true,
            "bitmap" => {
                let v = need(value)?;
                once(req.bitmap.as_ref(), &v)?;
                req.bitmap = Some(v);
            }
            "bitmap_file_io" => req.bitmap_file_io = true,
            "bitmap_trust_device" => req.bitmap_trust_device = true,
            "threads" => {
                req.threads = Some(
                    need(value)?
                        .parse()
                        .map_err(|_| format!("threads={}: not a number", value.unwrap_or("")))?,
                )
            }
            "transport" => {
                let v = need(value)?;
                if !matches!(v.as_str(), "auto" | "uring" | "dev-fuse") {
                    return Err(format!(
                        "transport={v}: not a transport (auto, uring or dev-fuse)"
                    ));
                }
                once(req.transport.as_ref(), &v)?;
                req.transport = Some(v);
            }
            "delay" => {
                req.delay = Some(need(value)?.parse().map_err(|_| {
                    format!("delay={}: not a number of seconds", value.unwrap_or(""))
                })?)
            }
            "log" => {
                let v = need(value)?;
                once(req.log.as_ref(), &v)?;
                req.log = Some(v);
            }
            _ if is_generic(opt) => {}
            _ => {
                // What is left of a path cut at a comma looks like this.
                let cut = if opt.contains('/') || opt.contains('.') {
                    " (a path holding ',' cannot be given in -o: mount(8) splits options at \
                     commas; use a symlink without one)"
                } else {
                    ""
                };
                return Err(format!(
                    "unknown option {opt:?} (known: legs=, bitmap=, bitmap_file_io, bitmap_trust_device, ro, rw, allow_other, \
                     image_mode=, run, force_from=, buffered, write_through, threads=, transport=, delay=, log=){cut}"
                ));
            }
        }
    }
    if req.legs.is_empty() {
        // SOURCE may name the legs itself: LEG:LEG.
        if source.contains(':') {
            req.legs = split_legs("SOURCE ", source)?;
        } else {
            return Err(format!(
                "no legs: give -o legs=LEG:LEG or SOURCE as LEG:LEG (SOURCE was {source:?})"
            ));
        }
    }
    if mountpoint.is_empty() {
        return Err("an empty MOUNTPOINT".into());
    }
    Ok(req)
}

impl MountRequest {
    /// The `mdfuse` arguments that do this mount.
    pub fn mdfuse_args(&self) -> Vec<String> {
        let mut a = vec!["mount".to_string()];
        if self.read_only {
            a.push("--ro".into());
        }
        if self.allow_other {
            a.push("--allow-other".into());
        }
        if let Some(m) = &self.image_mode {
            a.push(format!("--image-mode={m}"));
        }
        if self.run_degraded {
            a.push("--run".into());
        }
        if let Some(leg) = &self.force_from {
            a.push(format!("--force-from={leg}"));
        }
        if self.buffered {
            a.push("--buffered".into());
        }
        if self.write_through {
            a.push("--write-through".into());
        }
        if let Some(t) = self.threads {
            a.push(format!("--threads={t}"));
        }
        if let Some(t) = &self.transport {
            a.push(format!("--transport={t}"));
        }
        if let Some(l) = &self.log {
            a.push(format!("--log={l}"));
        }
        if let Some(b) = &self.bitmap {
            a.push(format!("--bitmap={b}"));
        }
        if self.bitmap_file_io {
            a.push("--bitmap-file-io".into());
        }
        if self.bitmap_trust_device {
            a.push("--bitmap-trust-device".into());
        }
        if let Some(d) = self.delay {
            a.push(format!("--delay={d}"));
        }
        // After `--`: a leg or a mountpoint named like an option stays a path.
        a.push("--".into());
        a.extend(self.legs.iter().cloned());
        a.push(self.mountpoint.clone());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_by_its_name_only() {
        for (argv0, yes) in [
            ("/sbin/mount.mdfuse", true),
            ("mount.mdfuse", true),
            ("/usr/local/sbin/mdfuse", false),
            ("/sbin/mount.mdfuse.old", false),
            ("mount-mdfuse", false),
        ] {
            assert_eq!(invoked_as_helper(Some(OsStr::new(argv0))), yes, "{argv0}");
        }
        assert!(!invoked_as_helper(None));
    }

    #[test]
    fn mdfuse_is_found_beside_then_on_path_then_in_standard_dirs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mount-mdfuse-find-{}", std::process::id()));
        let (own, on_path, not_exec) = (dir.join("own"), dir.join("path"), dir.join("noexec"));
        for d in [&own, &on_path, &not_exec] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("mdfuse"), b"#!/bin/sh\n").unwrap();
            let mode = if d == &not_exec { 0o644 } else { 0o755 };
            std::fs::set_permissions(d.join("mdfuse"), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        let path = std::env::join_paths([&not_exec, &on_path]).unwrap();
        let beside = find_mdfuse(Some(&own), Some(&path));
        let on_path_found = find_mdfuse(Some(&dir), Some(&path));
        let relative = find_mdfuse(None, Some(OsStr::new("path")));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(beside, Some(own.join("mdfuse")));
        assert_eq!(on_path_found, Some(on_path.join("mdfuse")));
        // A relative PATH entry is skipped; the standard directories come last.
        assert!(relative.is_none_or(|p| STANDARD_DIRS.iter().any(|d| p.starts_with(d))));
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn fstab_style_line() {
        let r = parse_mount_args(&args(
            "mirror /mnt/m -o rw,legs=/d/a.img:/d/b.img,allow_other,noauto,x-systemd.automount",
        ))
        .unwrap();
        assert_eq!(r.legs, vec!["/d/a.img", "/d/b.img"]);
        assert!(r.allow_other && !r.read_only);
        assert_eq!(
            r.mdfuse_args(),
            args("mount --allow-other -- /d/a.img /d/b.img /mnt/m")
        );
    }

    #[test]
    fn bitmap_options_are_passed_on() {
        let r = parse_mount_args(&args(
            "/d/a:/d/b /m -o bitmap=/b/md.bitmap,bitmap_file_io,bitmap_trust_device",
        ))
        .unwrap();
        assert_eq!(
            r.mdfuse_args(),
            args(
                "mount --bitmap=/b/md.bitmap --bitmap-file-io --bitmap-trust-device -- /d/a /d/b /m"
            )
        );
    }

    #[test]
    fn image_mode_is_passed_on_and_checked() {
        let r = parse_mount_args(&args("/d/a:/d/b /m -o allow_other,image_mode=0660")).unwrap();
        assert_eq!(
            r.mdfuse_args(),
            args("mount --allow-other --image-mode=0660 -- /d/a /d/b /m")
        );
        for bad in [
            "image_mode=0999",
            "image_mode=rw",
            "image_mode=01777",
            "image_mode",
        ] {
            let opts = format!("/d/a:/d/b /m -o {bad}");
            assert!(parse_mount_args(&args(&opts)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn force_from_names_the_leg_to_keep() {
        let r = parse_mount_args(&args("/d/a:/d/b /m -o force_from=/d/b")).unwrap();
        assert_eq!(
            r.mdfuse_args(),
            args("mount --force-from=/d/b -- /d/a /d/b /m")
        );
        assert!(parse_mount_args(&args("/d/a:/d/b /m -o force_from"))
            .unwrap_err()
            .contains("needs a value"));
    }

    #[test]
    fn source_names_legs() {
        let r = parse_mount_args(&args("/d/a:/d/b /m -s -o ro,threads=4")).unwrap();
        assert_eq!(r.legs, vec!["/d/a", "/d/b"]);
        assert_eq!(
            r.mdfuse_args(),
            args("mount --ro --threads=4 -- /d/a /d/b /m")
        );
    }

    #[test]
    fn transport_goes_through() {
        let r = parse_mount_args(&args("/d/a:/d/b /m -o transport=uring,threads=4")).unwrap();
        assert_eq!(
            r.mdfuse_args(),
            args("mount --threads=4 --transport=uring -- /d/a /d/b /m")
        );
        for bad in [
            "transport",
            "transport=io_uring",
            "transport=uring,transport=auto",
        ] {
            assert!(
                parse_mount_args(&args(&format!("/d/a:/d/b /m -o {bad}"))).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn paths_named_like_options_stay_paths() {
        let r = parse_mount_args(&args("-x:/d/b -m -o ro")).unwrap();
        assert_eq!(r.legs, ["-x", "/d/b"]);
        assert_eq!(r.mountpoint, "-m");
        assert_eq!(r.mdfuse_args(), args("mount --ro -- -x /d/b -m"));
        let r = parse_mount_args(&args("mirror /m -o legs=--help:-f")).unwrap();
        assert_eq!(r.mdfuse_args(), args("mount -- --help -f /m"));
    }

    #[test]
    fn values_that_cannot_be_split_are_refused() {
        // A leg whose path holds a ':'.
        let dir = std::env::temp_dir().join(format!("mount-mdfuse-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let colon = dir.join("a:b.img");
        std::fs::write(&colon, b"").unwrap();
        let list = format!("{}:/d/c", colon.display());
        let err = parse_mount_args(&args(&format!("mirror /m -o legs={list}"))).unwrap_err();
        let err2 = parse_mount_args(&args(&format!("{list} /m"))).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.contains("unambiguously") && err.contains("a:b.img"),
            "{err}"
        );
        assert!(
            err2.contains("SOURCE") && err2.contains("unambiguously"),
            "{err2}"
        );
        for (opts, needle) in [
            // A leg /d/a,b.img: the comma cuts the option.
            ("-o legs=/d/a,b.img:/d/c", "a path holding ','"),
            ("-o bitmap=/d/x,y.bitmap,legs=/a:/b", "a path holding ','"),
            ("-o legs=\"/d/a,b\":/d/c", "quoted"),
            ("-o legs=/a::/b", "an empty leg path"),
            ("-o legs=/a:/b,legs=/a:/c", "given twice"),
            ("-o legs=/a:/b,bitmap=/x,bitmap=/y", "given twice"),
            ("-o legs=/a:/b,bitmap=", "needs a value"),
        ] {
            let err = parse_mount_args(&args(&format!("mirror /m {opts}"))).expect_err(opts);
            assert!(err.contains(needle), "{opts}: {err}");
        }
        // The same value twice is no ambiguity (fstab and command line).
        let r = parse_mount_args(&args("m /m -o legs=/a:/b,legs=/a:/b,ro,rw")).unwrap();
        assert_eq!(r.legs, ["/a", "/b"]);
    }

    #[test]
    fn refusals() {
        assert!(parse_mount_args(&args("src /m -o legs=/a:/b,bogus"))
            .unwrap_err()
            .contains("unknown option \"bogus\""));
        assert!(parse_mount_args(&args("src /m"))
            .unwrap_err()
            .contains("no legs"));
        assert!(parse_mount_args(&args("/a:/b")).is_err());
        assert!(parse_mount_args(&args("/a:/b /m -o threads=x")).is_err());
    }
}
