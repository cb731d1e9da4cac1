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

/// What a mount option carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// A switch: `ro`, `run`.
    Nothing,
    /// A value: `threads=N`.
    Value,
    /// Legs, `:`-separated as in `legs=` (`write_mostly=LEG:LEG`): each
    /// becomes one `--flag=LEG`.
    Legs,
}

/// One `-o` option of `mount.mdfuse` and the `mdfuse mount` flag it
/// becomes. [`MOUNT_OPTIONS`] is the one list of them: the helper parses by
/// it, the man page lists it, and the CLI's tests check that `mdfuse mount`
/// takes exactly these flags (and the daemon's own arguments carry each).
#[derive(Debug)]
pub struct MountOption {
    /// The name in `-o` and fstab: `image_mode`.
    pub name: &'static str,
    /// The `mdfuse mount` long flag, without its dashes: `image-mode`.
    pub flag: &'static str,
    pub takes: Takes,
    /// The value's placeholder in help texts (`MODE`), "" for a switch.
    pub value: &'static str,
    /// Checks a value before the daemon is started (the daemon checks it
    /// again); an error says what was expected.
    pub check: fn(&str) -> Result<(), String>,
}

fn any_value(_: &str) -> Result<(), String> {
    Ok(())
}

fn octal_mode(mode: &str) -> Result<(), String> {
    match u16::from_str_radix(mode, 8) {
        Ok(m) if m <= 0o777 => Ok(()),
        _ => Err(format!(
            "image_mode={mode}: not an octal mode from 0000 to 0777 (e.g. 0660)"
        )),
    }
}

fn number(v: &str) -> Result<(), String> {
    v.parse::<u32>()
        .map(|_| ())
        .map_err(|_| format!("threads={v}: not a number"))
}

fn transport_name(v: &str) -> Result<(), String> {
    match v {
        "auto" | "uring" | "dev-fuse" => Ok(()),
        _ => Err(format!(
            "transport={v}: not a transport (auto, uring or dev-fuse)"
        )),
    }
}

fn seconds(v: &str) -> Result<(), String> {
    v.parse::<u32>()
        .map(|_| ())
        .map_err(|_| format!("delay={v}: not a number of seconds"))
}

const fn switch(name: &'static str, flag: &'static str) -> MountOption {
    MountOption {
        name,
        flag,
        takes: Takes::Nothing,
        value: "",
        check: any_value,
    }
}

const fn leg_list(name: &'static str, flag: &'static str) -> MountOption {
    MountOption {
        name,
        flag,
        takes: Takes::Legs,
        value: "LEG:LEG...",
        check: any_value,
    }
}

const fn valued(
    name: &'static str,
    flag: &'static str,
    value: &'static str,
    check: fn(&str) -> Result<(), String>,
) -> MountOption {
    MountOption {
        name,
        flag,
        takes: Takes::Value,
        value,
        check,
    }
}

/// Every mount option but `legs=` (the legs are positional to `mdfuse
/// mount`) and `rw` (which only undoes `ro`), in the order their flags are
/// given to `mdfuse mount`.
pub const MOUNT_OPTIONS: &[MountOption] = &[
    switch("ro", "ro"),
    switch("allow_other", "allow-other"),
    valued("image_mode", "image-mode", "MODE", octal_mode),
    switch("run", "run"),
    valued("force_from", "force-from", "LEG", any_value),
    leg_list("write_mostly", "write-mostly"),
    leg_list("readwrite", "readwrite"),
    switch("buffered", "buffered"),
    switch("write_through", "write-through"),
    valued("threads", "threads", "N", number),
    valued(
        "transport",
        "transport",
        "auto|uring|dev-fuse",
        transport_name,
    ),
    valued("log", "log", "FILE", any_value),
    valued("bitmap", "bitmap", "FILE", any_value),
    switch("bitmap_file_io", "bitmap-file-io"),
    switch("bitmap_trust_device", "bitmap-trust-device"),
    valued("delay", "delay", "SECS", seconds),
];

/// The options as help texts list them: `legs=LEG:LEG...`, then each of
/// [`MOUNT_OPTIONS`] (`image_mode=MODE`), with `rw` after `ro`.
pub fn options_synopsis() -> Vec<String> {
    let mut out = vec!["legs=LEG:LEG...".to_string()];
    for o in MOUNT_OPTIONS {
        match o.takes {
            Takes::Nothing => out.push(o.name.to_string()),
            Takes::Value | Takes::Legs => out.push(format!("{}={}", o.name, o.value)),
        }
        if o.name == "ro" {
            out.push("rw".into());
        }
    }
    out
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountRequest {
    pub legs: Vec<String>,
    pub mountpoint: String,
    /// What was given of each of [`MOUNT_OPTIONS`], by its index: None when
    /// not given, an empty string for a switch.
    options: Vec<Option<String>>,
    /// The legs of each [`Takes::Legs`] option given, split, by its index.
    leg_lists: Vec<Vec<String>>,
    pub verbose: bool,
    pub fake: bool,
}

impl MountRequest {
    fn index(name: &str) -> Option<usize> {
        MOUNT_OPTIONS.iter().position(|o| o.name == name)
    }

    /// The value given for option `name` ("" for a switch), if it was given.
    pub fn option(&self, name: &str) -> Option<&str> {
        let i = Self::index(name)?;
        self.options.get(i)?.as_deref()
    }

    /// Whether option `name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.option(name).is_some()
    }
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

/// True when `s` starts with an NBD URI's scheme (`nbd://`, `nbd+unix://`,
/// and the TLS ones, which mdfuse refuses with its reason).
fn starts_with_nbd_uri(s: &str) -> bool {
    ["nbd://", "nbd+unix://", "nbds://", "nbds+unix://"]
        .iter()
        .any(|p| s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p))
}

/// The legs of `legs=` or of SOURCE, split at `:`. A leg that is an NBD
/// URI (`nbd://HOST:PORT/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`) holds
/// `:`s of its own: it runs up to the first `:` after its `scheme://` that
/// is followed by `/` or by another NBD URI (the start of the next leg,
/// which after a URI must be an absolute path or a URI); a `:` followed by
/// `/` inside a URI is written `%3A`. The split is refused when it is not
/// the only reading: an empty piece, or path pieces that, joined again
/// with their `:`, name a file that exists (a leg path holding a `:`);
/// such a leg is given through a symlink without one.
fn split_legs(what: &str, list: &str) -> Result<Vec<String>, String> {
    // (leg, is a URI)
    let mut legs: Vec<(String, bool)> = Vec::new();
    let mut rest = list;
    loop {
        let (leg, next) = if starts_with_nbd_uri(rest) {
            let body = rest.find("://").map_or(0, |i| i + 3);
            let end = rest[body..]
                .match_indices(':')
                .map(|(i, _)| body + i)
                .find(|&at| {
                    let after = &rest[at + 1..];
                    after.starts_with('/') || starts_with_nbd_uri(after)
                });
            match end {
                Some(at) => (&rest[..at], Some(&rest[at + 1..])),
                None => (rest, None),
            }
        } else {
            match rest.split_once(':') {
                Some((leg, after)) => (leg, Some(after)),
                None => (rest, None),
            }
        };
        legs.push((leg.to_string(), starts_with_nbd_uri(leg)));
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    if legs.iter().any(|(l, _)| l.is_empty()) {
        return Err(format!("{what}{list}: an empty leg path"));
    }
    for first in 0..legs.len() {
        for last in first + 1..legs.len() {
            if legs[first..=last].iter().any(|(_, uri)| *uri) {
                break;
            }
            let joined: Vec<&str> = legs[first..=last].iter().map(|(l, _)| l.as_str()).collect();
            let joined = joined.join(":");
            if std::path::Path::new(&joined).exists() {
                return Err(format!(
                    "{what}{list}: cannot be split into legs unambiguously: {joined:?} exists; \
                     legs are separated by ':', so a leg path holding ':' (or ',') cannot be \
                     given (use a symlink without them)"
                ));
            }
        }
    }
    Ok(legs.into_iter().map(|(l, _)| l).collect())
}

pub fn parse_mount_args(args: &[String]) -> Result<MountRequest, String> {
    let mut req = MountRequest {
        options: vec![None; MOUNT_OPTIONS.len()],
        leg_lists: vec![Vec::new(); MOUNT_OPTIONS.len()],
        ..MountRequest::default()
    };
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
        if key == "legs" {
            let legs = split_legs("legs=", &need(value)?)?;
            if !req.legs.is_empty() && req.legs != legs {
                return Err(format!(
                    "option legs given twice (legs={} and legs={})",
                    req.legs.join(":"),
                    legs.join(":")
                ));
            }
            req.legs = legs;
            continue;
        }
        if key == "rw" {
            if let Some(i) = MountRequest::index("ro") {
                req.options[i] = None;
            }
            continue;
        }
        if let Some(i) = MountRequest::index(key) {
            let o = &MOUNT_OPTIONS[i];
            let given = match o.takes {
                Takes::Nothing => String::new(),
                Takes::Value => {
                    let v = need(value)?;
                    (o.check)(&v)?;
                    once(req.options[i].as_ref(), &v)?;
                    v
                }
                Takes::Legs => {
                    let v = need(value)?;
                    once(req.options[i].as_ref(), &v)?;
                    req.leg_lists[i] = split_legs(&format!("{key}="), &v)?;
                    v
                }
            };
            req.options[i] = Some(given);
            continue;
        }
        match key {
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
                    "unknown option {opt:?} (known: {}){cut}",
                    options_synopsis().join(", ")
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
        for (i, (o, given)) in MOUNT_OPTIONS.iter().zip(&self.options).enumerate() {
            match (o.takes, given) {
                (_, None) => {}
                (Takes::Nothing, Some(_)) => a.push(format!("--{}", o.flag)),
                (Takes::Value, Some(v)) => a.push(format!("--{}={v}", o.flag)),
                (Takes::Legs, Some(_)) => {
                    let legs = self.leg_lists.get(i).map(Vec::as_slice).unwrap_or(&[]);
                    a.extend(legs.iter().map(|l| format!("--{}={l}", o.flag)));
                }
            }
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
        assert!(r.has("allow_other") && !r.has("ro"));
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
    fn nbd_uris_in_legs_keep_their_colons() {
        let r = parse_mount_args(&args(
            "mirror /m -o legs=/d/a.img:nbd://10.0.0.2:10809/leg1:nbd+unix:///e?socket=/run/s.sock",
        ))
        .unwrap();
        assert_eq!(
            r.legs,
            vec![
                "/d/a.img",
                "nbd://10.0.0.2:10809/leg1",
                "nbd+unix:///e?socket=/run/s.sock"
            ]
        );
        let r = parse_mount_args(&args("nbd://[fd00::2]/x:/d/b /m")).unwrap();
        assert_eq!(r.legs, vec!["nbd://[fd00::2]/x", "/d/b"]);
        // Two URIs in a row; an export holding ':' not followed by '/'.
        let r = parse_mount_args(&args("mirror /m -o legs=nbd://h/a:b:nbd://g:7/c%3A/d")).unwrap();
        assert_eq!(r.legs, vec!["nbd://h/a:b", "nbd://g:7/c%3A/d"]);
        assert!(parse_mount_args(&args("mirror /m -o legs=/d/a::nbd://h/x")).is_err());
    }

    #[test]
    fn write_mostly_and_readwrite_take_leg_lists() {
        let r = parse_mount_args(&args(
            "mirror /m -o legs=/d/a:nbd://h:7/b:/d/c,write_mostly=/d/c:nbd://h:7/b,readwrite=/d/a",
        ))
        .unwrap();
        assert_eq!(
            r.mdfuse_args(),
            args(
                "mount --write-mostly=/d/c --write-mostly=nbd://h:7/b --readwrite=/d/a \
                 -- /d/a nbd://h:7/b /d/c /m"
            )
        );
        assert_eq!(r.option("write_mostly"), Some("/d/c:nbd://h:7/b"));
        for bad in [
            "write_mostly",
            "write_mostly=/a::/b",
            "write_mostly=/a,write_mostly=/b",
        ] {
            assert!(
                parse_mount_args(&args(&format!("/d/a:/d/b /m -o {bad}"))).is_err(),
                "{bad}"
            );
        }
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
