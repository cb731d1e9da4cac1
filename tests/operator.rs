//! mdfuse as an administrator meets it (issue 17): the README's install lines run word for
//! word into the real /usr/local/sbin and /sbin, then `mount -t mdfuse`, an fstab line with
//! `mount MOUNTPOINT`, and `umount`; `mdfuse` run through a hard link named `mount.mdfuse`.
//!
//! Needs root. What a test installs is removed by a guard (anything that was there before is
//! put back), also when it fails; mounts are unmounted and their daemons waited for. Tests
//! that install /sbin/mount.mdfuse hold the lock tests/mount_helper.rs holds for it.

mod common;

use common::loopdev::needs_root;
use common::mdfuse::{
    assert_stopped_clean, create, is_mounted, pid_alive, text, wait_pid_gone, FstabLine, Legs,
};
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const LEG_BYTES: u64 = 32 << 20;
/// The PATH of a boot or of a minimal root shell: no /usr/local/sbin.
const MINIMAL_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

// ---------------------------------------------------------------- guards

/// The lock tests/mount_helper.rs holds while /sbin/mount.mdfuse is theirs.
fn helper_lock() -> File {
    let lock = File::create("/run/lock/mdfuse-mount-helper-tests.lock")
        .or_else(|_| File::create(std::env::temp_dir().join("mdfuse-mount-helper-tests.lock")))
        .expect("lock file");
    // SAFETY: flock on a descriptor we own; blocks until the other holder is done.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    lock
}

/// Paths a test installs into: whatever is there is moved aside first and put back on drop,
/// after what the test installed is removed. A copy moved aside by a killed run is put back
/// before anything else.
struct Installed {
    paths: Vec<PathBuf>,
    _lock: File,
}

fn saved(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".mdfuse-test-saved");
    PathBuf::from(s)
}

impl Installed {
    fn guard(paths: &[&str]) -> Installed {
        let lock = helper_lock();
        let paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
        for p in &paths {
            let s = saved(p);
            if std::fs::symlink_metadata(&s).is_ok() {
                std::fs::rename(&s, p).expect("put back what a killed run moved aside");
            }
            if std::fs::symlink_metadata(p).is_ok() {
                std::fs::rename(p, &s).expect("move the installed file aside");
            }
        }
        Installed { paths, _lock: lock }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
            let s = saved(p);
            if std::fs::symlink_metadata(&s).is_ok() {
                if let Err(e) = std::fs::rename(&s, p) {
                    eprintln!("warning: cannot put back {}: {e}", p.display());
                }
            }
        }
    }
}

/// The daemons a test started: on drop, the mountpoint is unmounted (lazily if need be) and
/// every daemon waited for, killed at last.
struct Mounts {
    mnt: PathBuf,
    pids: Vec<i32>,
}

impl Drop for Mounts {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
            }
        }
        for &pid in &self.pids {
            if !wait_pid_gone(pid, Duration::from_secs(20)) {
                // SAFETY: kill has no memory preconditions; the pid is this test's daemon.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                wait_pid_gone(pid, Duration::from_secs(5));
            }
        }
        // The daemons' logs (mount(8) and fstab mounts log to /run/mdfuse).
        if let Some(dir) = self.mnt.parent() {
            common::mdfuse::forget_run_files_under(dir);
        }
    }
}

fn daemon_pid(mnt: &Path) -> i32 {
    std::fs::read_to_string(mdfuse::transport::serve::run_file(mnt, "pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A shell line as an administrator runs it: `sh -c LINE` in `cwd`, with nothing of the
/// test's environment but a minimal PATH.
fn sh(line: &str, cwd: &Path) -> Output {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(line)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", MINIMAL_PATH)
        .output()
        .expect("run /bin/sh")
}

/// After a mount: live at once (mdstat readable, both legs in), its daemon recorded.
fn assert_live(mnt: &Path, mounts: &mut Mounts, what: &str) {
    let pid = daemon_pid(mnt);
    if pid > 0 {
        mounts.pids.push(pid);
    }
    assert!(is_mounted(mnt), "{what}: {} is not a mount", mnt.display());
    assert!(pid > 0 && pid_alive(pid), "{what}: no live daemon");
    let mdstat = std::fs::read_to_string(mnt.join("mdstat")).unwrap_or_default();
    assert!(mdstat.contains("[2/2] [UU]"), "{what}: mdstat:\n{mdstat}");
}

/// After an umount: the daemon is gone, the legs say clean (by mdadm).
fn assert_stopped(mnt: &Path, mounts: &Mounts, legs: &Legs, what: &str) {
    assert!(!is_mounted(mnt), "{what}: still mounted");
    if let Some(&pid) = mounts.pids.last() {
        assert!(
            wait_pid_gone(pid, Duration::from_secs(30)),
            "{what}: daemon {pid} still running 30 s after umount"
        );
    }
    assert_stopped_clean(&legs.paths, None);
}

// ---------------------------------------------------------------- the README, run

/// The shell block of the README's "mount(8) and fstab" section.
fn readme_install_block() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let section = readme
        .split_once("### mount(8) and fstab")
        .expect("the README has a \"mount(8) and fstab\" section")
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, b)| b.split_once("```"))
        .expect("a ```sh block in that section")
        .0;
    block.lines().map(String::from).collect()
}

/// The README's install lines, word for word (only the legs and the mountpoint are the
/// test's), with the PATH of a boot: `install` and `ln` into the real /usr/local/sbin and
/// /sbin, `mount -t mdfuse`, `umount`, the fstab line and `mount MOUNTPOINT`, `umount`. Each
/// mount is live on return and each umount stops the array clean.
#[test]
fn the_readme_install_lines_give_a_working_mount_fstab_line_and_umount() {
    if !needs_root("the_readme_install_lines") {
        return;
    }
    let block = readme_install_block();
    let installs_into: Vec<&str> = block
        .iter()
        .filter(|l| l.starts_with("install ") || l.starts_with("ln "))
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert!(
        installs_into.contains(&"/sbin/mount.mdfuse"),
        "the README installs no /sbin/mount.mdfuse: {block:#?}"
    );
    let _installed = Installed::guard(&installs_into);

    let dir = common::mdfuse::tempdir("mdfuse-operator-install");
    let legs = Legs::new(dir.path(), 2, LEG_BYTES);
    create(&legs, &["--name", "readme"]);
    let mnt = dir.path().join("data");
    // `target/release/mdfuse` as the README's cwd (the clone) has it: the binary under test.
    let clone = dir.path().join("clone");
    std::fs::create_dir_all(clone.join("target/release")).expect("scratch clone");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_mdfuse"),
        clone.join("target/release/mdfuse"),
    )
    .expect("link the binary under test");
    // The separate helper too, when the workspace was built (a README may install it).
    let helper = Path::new(env!("CARGO_BIN_EXE_mdfuse")).with_file_name("mount-mdfuse");
    if helper.is_file() {
        std::os::unix::fs::symlink(&helper, clone.join("target/release/mount-mdfuse"))
            .expect("link the built helper");
    }
    let ours = |line: &str| {
        line.replace("/srv/leg0.img", &legs.paths[0].display().to_string())
            .replace("/srv/leg1.img", &legs.paths[1].display().to_string())
            .replace("/mnt/data", &mnt.display().to_string())
    };

    let mut mounts = Mounts {
        mnt: mnt.clone(),
        pids: Vec::new(),
    };
    let mut fstab = None;
    let (mut mounted, mut unmounted) = (0, 0);
    for line in &block {
        let line = line.trim();
        if line.is_empty() || line == "# /etc/fstab:" {
            continue;
        }
        if let Some(entry) = line.strip_prefix("# ") {
            assert!(
                entry.contains(" mdfuse "),
                "a comment that is no fstab line: {line}"
            );
            fstab = Some(FstabLine::add(&ours(entry)));
            continue;
        }
        if line.starts_with("cargo build") {
            continue; // the binary under test is built
        }
        let run = ours(line);
        let out = sh(&run, &clone);
        eprintln!("$ {run}\n{}", text(&out));
        assert!(out.status.success(), "`{line}` failed: {}", text(&out));
        if line.starts_with("mount ") {
            assert_live(&mnt, &mut mounts, line);
            mounted += 1;
        } else if line.starts_with("umount ") {
            assert_stopped(&mnt, &mounts, &legs, line);
            unmounted += 1;
        }
    }
    assert!(fstab.is_some(), "the README shows no fstab line");
    assert_eq!((mounted, unmounted), (2, 2), "two mounts and two umounts");
    let mdfuse_installed = Path::new("/usr/local/sbin/mdfuse");
    assert!(
        !installs_into.contains(&"/usr/local/sbin/mdfuse") || mdfuse_installed.is_file(),
        "no /usr/local/sbin/mdfuse after the install lines"
    );
}

/// `mdfuse` hard-linked as `mount.mdfuse` (how mount.fuse3 and friends are installed) is the
/// helper: run by that name with mount(8)'s arguments it mounts, and its daemon (started
/// through the same link) is mdfuse, not a second helper.
#[test]
fn mdfuse_hard_linked_as_mount_mdfuse_is_the_mount_helper() {
    if !needs_root("mdfuse_hard_linked_as_mount_mdfuse") {
        return;
    }
    let dir = common::mdfuse::tempdir("mdfuse-operator-hardlink");
    let legs = Legs::new(dir.path(), 2, LEG_BYTES);
    create(&legs, &["--name", "hardlink"]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    std::fs::copy(env!("CARGO_BIN_EXE_mdfuse"), bin.join("mdfuse")).expect("copy mdfuse");
    std::fs::hard_link(bin.join("mdfuse"), bin.join("mount.mdfuse")).expect("hard link");
    let helper = bin.join("mount.mdfuse");
    let legs_opt = format!(
        "legs={}:{}",
        legs.paths[0].display(),
        legs.paths[1].display()
    );
    let mut mounts = Mounts {
        mnt: mnt.clone(),
        pids: Vec::new(),
    };
    // -f (fake): says what it would run, runs nothing.
    let out = sh(
        &format!(
            "{} mirror {} -f -o {legs_opt}",
            helper.display(),
            mnt.display()
        ),
        dir.path(),
    );
    assert!(out.status.success(), "mount.mdfuse -f: {}", text(&out));
    assert!(
        text(&out).contains("mdfuse mount -- "),
        "mount.mdfuse -f: {}",
        text(&out)
    );
    assert!(!is_mounted(&mnt), "-f mounted");
    let out = sh(
        &format!(
            "{} mirror {} -o {legs_opt}",
            helper.display(),
            mnt.display()
        ),
        dir.path(),
    );
    assert!(out.status.success(), "mount.mdfuse: {}", text(&out));
    assert_live(&mnt, &mut mounts, "mount.mdfuse");
    let out = sh(&format!("umount {}", mnt.display()), dir.path());
    assert!(out.status.success(), "umount: {}", text(&out));
    assert_stopped(&mnt, &mounts, &legs, "umount");
}

// ---------------------------------------------------------------- JSON status

/// `Key : value` lines of an mdadm-style text, in order (the first occurrence of each key).
fn text_fields(text: &str) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(" : ")?;
            let k = k.trim().to_string();
            seen.insert(k.clone()).then(|| (k, v.trim().to_string()))
        })
        .collect()
}

fn json_of(args: &[&str]) -> serde_json::Value {
    let out = common::mdfuse::mdfuse(args);
    common::mdfuse::assert_ok(&format!("mdfuse {}", args.join(" ")), &out);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("mdfuse {}: not JSON ({e}):\n{}", args.join(" "), text(&out)))
}

/// A JSON value as the text prints it (strings bare, numbers as written).
fn bare(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every field `mdfuse detail` prints has its value in `detail --json`; a field the text
/// gains without a JSON counterpart fails here. Also the device table, row by row.
fn assert_detail_json_matches_text(mnt: &Path) {
    let mnt_s = mnt.to_str().expect("UTF-8");
    let text_out = common::mdfuse::mdfuse_stdout(&["detail", mnt_s]);
    let j = json_of(&["detail", "--json", mnt_s]);
    for (key, value) in text_fields(&text_out) {
        let first = value.split(' ').next().unwrap_or_default().to_string();
        let (json, want) = match key.as_str() {
            "Version" => (bare(&j["version"]), value),
            "Raid Level" => (bare(&j["raid_level"]), value),
            "Array Size" => (bare(&j["array_size_kib"]), first),
            "Raid Devices" => (bare(&j["raid_devices"]), value),
            "Total Devices" => (bare(&j["total_devices"]), value),
            "Intent Bitmap" => (
                format!("file, {} byte chunks", j["intent_bitmap"]["chunk_bytes"]),
                value,
            ),
            "State" => (bare(&j["state"]), value),
            "Active Devices" => (bare(&j["active_devices"]), value),
            "Working Devices" => (bare(&j["working_devices"]), value),
            "Failed Devices" => (bare(&j["failed_devices"]), value),
            "Spare Devices" => (bare(&j["spare_devices"]), value),
            "Rebuild Status" | "Check Status" | "Resync Status" => {
                assert_eq!(bare(&j["sync_progress"]["label"]), key);
                // Read apart: the sync moves between the two reads.
                let pct = j["sync_progress"]["percent"].as_f64().expect("percent");
                assert!((0.0..=100.0).contains(&pct), "percent {pct}");
                continue;
            }
            "Consistency Policy" => (bare(&j["consistency_policy"]), value),
            "UUID" => (bare(&j["uuid"]), value),
            "Mismatch Count" => (bare(&j["mismatch_count"]), value),
            "Sync Copied" => (
                format!(
                    "{} bytes ({})",
                    j["sync_copied_bytes"],
                    bare(&j["last_sync_action"])
                ),
                value,
            ),
            other => panic!("detail prints {other:?} and this test has no JSON field for it"),
        };
        assert_eq!(
            json, want,
            "{key}: JSON {json:?}, text {want:?}\n{text_out}\n{j:#}"
        );
    }
    let rows: Vec<Vec<&str>> = text_out
        .lines()
        .skip_while(|l| !l.contains("Number   RaidDevice State"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let devices = j["devices"].as_array().expect("devices");
    assert_eq!(rows.len(), devices.len(), "{text_out}\n{j:#}");
    for (row, d) in rows.iter().zip(devices) {
        let slot = d["raid_device"]
            .as_u64()
            .map_or("none".to_string(), |s| s.to_string());
        let state_text = bare(&d["state_text"]);
        let mut want = vec![d["number"].to_string(), slot];
        want.extend(state_text.split(' ').map(String::from));
        want.push(bare(&d["name"]));
        assert_eq!(row.join(" "), want.join(" "), "{text_out}\n{j:#}");
    }
}

/// `detail --json` parses and carries what `detail` shows: healthy with a bitmap, then
/// degraded with a failed leg, then with the leg removed.
#[test]
fn detail_json_carries_everything_the_text_shows() {
    if !needs_root("detail_json") {
        return;
    }
    let legs = Legs::temp(LEG_BYTES);
    let bitmap = legs.dir().join("md.bitmap");
    create(
        &legs,
        &[
            "--name",
            "json",
            "--bitmap",
            bitmap.to_str().expect("UTF-8"),
        ],
    );
    let mnt = legs.mountpoint("mnt");
    let m = common::mdfuse::MountedArray::mount(
        &legs,
        &mnt,
        &[
            "--bitmap",
            bitmap.to_str().expect("UTF-8"),
            "--bitmap-file-io",
        ],
    );
    assert_detail_json_matches_text(&mnt);
    let j = json_of(&["detail", "--json", mnt.to_str().expect("UTF-8")]);
    assert_eq!(j["degraded"], false);
    assert_eq!(j["format_version"], 1);
    assert_eq!(j["daemon_pid"], m.pid());
    assert_eq!(bare(&j["bitmap_file"]), bitmap.display().to_string());
    m.set_md("dev-leg1.img/state", "faulty");
    assert_detail_json_matches_text(&mnt);
    let j = json_of(&["detail", "--json", mnt.to_str().expect("UTF-8")]);
    assert_eq!(j["degraded"], true);
    assert_eq!(j["degraded_devices"], 1);
    assert_eq!(j["devices"][1]["state"], "faulty");
    m.set_md("dev-leg1.img/state", "remove");
    assert_detail_json_matches_text(&mnt);
    m.stop();
}

/// `examine --json` and `examine-bitmap --json` against their text, field by field: each
/// leg of a stopped array, and a bitmap left dirty by a killed daemon.
#[test]
fn examine_and_examine_bitmap_json_match_their_text() {
    if !needs_root("examine_json") {
        return;
    }
    let legs = Legs::temp(LEG_BYTES);
    let bitmap = legs.dir().join("md.bitmap");
    let bitmap_s = bitmap.to_str().expect("UTF-8").to_string();
    create(
        &legs,
        &[
            "--name",
            "exj",
            "--bitmap",
            &bitmap_s,
            "--bitmap-chunk",
            "64K",
        ],
    );
    let mnt = legs.mountpoint("mnt");
    let m = common::mdfuse::MountedArray::mount(
        &legs,
        &mnt,
        &["--bitmap", &bitmap_s, "--bitmap-file-io", "--delay", "600"],
    );
    m.fill_random(3 << 20, 256 << 10, 7);
    m.kill9();

    let leg_strs = legs.strs();
    let mut args = vec!["examine", "--json"];
    args.extend(leg_strs.iter().map(String::as_str));
    let j = json_of(&args);
    for (i, leg) in leg_strs.iter().enumerate() {
        let t = common::mdfuse::mdfuse_stdout(&["examine", leg]);
        let d = &j["devices"][i];
        assert_eq!(bare(&d["device"]), *leg);
        for (key, value) in text_fields(&t) {
            let first = value.split(' ').next().unwrap_or_default().to_string();
            let (json, want) = match key.as_str() {
                "Magic" => (bare(&d["magic"]), value),
                "Version" => (bare(&d["version"]), value),
                "Feature Map" => (format!("{:#x}", d["feature_map"].as_u64().unwrap()), value),
                "Array UUID" => (bare(&d["array_uuid"]), value),
                "Name" => (bare(&d["name"]), value),
                "Creation Time" => (bare(&d["creation_time_text"]), value),
                "Raid Level" => (bare(&d["raid_level"]), value),
                "Raid Devices" => (bare(&d["raid_devices"]), value),
                "Avail Dev Size" => (bare(&d["avail_dev_size_sectors"]), first),
                "Array Size" => (bare(&d["array_size_kib"]), first),
                "Used Dev Size" => (bare(&d["used_dev_size_sectors"]), first),
                "Data Offset" => (bare(&d["data_offset_sectors"]), first),
                "Super Offset" => (bare(&d["super_offset_sectors"]), first),
                "Unused Space" => (
                    format!(
                        "before={} sectors, after={} sectors",
                        d["unused_space_before_sectors"], d["unused_space_after_sectors"]
                    ),
                    value,
                ),
                "State" => (bare(&d["state"]), value),
                "Device UUID" => (bare(&d["device_uuid"]), value),
                "Update Time" => (bare(&d["update_time_text"]), value),
                "Bad Block Log" => (
                    format!(
                        "{} entries available at offset {} sectors",
                        d["bad_block_log_entries"], d["bad_block_log_offset_sectors"]
                    ),
                    value,
                ),
                "Checksum" => (format!("{} - correct", bare(&d["checksum"])), value),
                "Events" => (bare(&d["events"]), value),
                "Device Role" => (bare(&d["device_role"]), value),
                "Array State" => (bare(&d["array_state"]), first),
                other => panic!("examine prints {other:?} and this test has no JSON field"),
            };
            assert_eq!(json, want, "{leg} {key}\n{t}\n{d:#}");
        }
        // Killed: the superblocks say active (resync owed), and the JSON says from where.
        assert_eq!(d["state"], "active");
        assert!(d["resync_offset_sectors"].is_u64(), "{d:#}");
    }

    let t = common::mdfuse::mdfuse_stdout(&["examine-bitmap", "--chunks", &bitmap_s]);
    let b = json_of(&["examine-bitmap", "--json", "--chunks", &bitmap_s]);
    for (key, value) in text_fields(&t) {
        let (json, want) = match key.as_str() {
            "Filename" => (bare(&b["filename"]), value),
            "Magic" => (bare(&b["magic"]), value),
            "Version" => (bare(&b["version"]), value),
            "UUID" => (bare(&b["uuid"]), value),
            "Events" => (bare(&b["events"]), value),
            "Events Cleared" => (bare(&b["events_cleared"]), value),
            "State" => (bare(&b["state"]), value),
            "Chunksize" => (
                (b["chunksize_bytes"].as_u64().unwrap() >> 10).to_string() + " KB",
                value,
            ),
            "Daemon" => (
                format!("{}s flush period", b["daemon_sleep_seconds"]),
                value,
            ),
            "Write Mode" => (
                if b["write_behind"] == 0 {
                    "Normal".to_string()
                } else {
                    format!("Allow write behind, max {}", b["write_behind"])
                },
                value,
            ),
            "Sync Size" => (
                bare(&b["sync_size_kib"]),
                value.split(' ').next().unwrap_or_default().to_string(),
            ),
            "Bitmap" => (
                format!(
                    "{} bits (chunks), {} dirty ({:2.1}%)",
                    b["chunks"],
                    b["dirty_chunks"],
                    b["dirty_percent"].as_f64().unwrap()
                ),
                value,
            ),
            "Dirty Chunks" => (
                b["dirty_chunk_list"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                value,
            ),
            other => panic!("examine-bitmap prints {other:?} and this test has no JSON field"),
        };
        assert_eq!(json, want, "{key}\n{t}\n{b:#}");
    }
    assert!(b["dirty_chunks"].as_u64().unwrap() >= 4, "{b:#}");
}

// ---------------------------------------------------------------- metrics

/// The parser of Prometheus' own Python client: Debian's python3 with
/// python3-prometheus-client (scripts/test.sh installs it).
const PROM_PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// One parsed sample.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
}

/// `mdfuse metrics ARGS`, parsed by prometheus_client (a parse error fails the test).
fn metrics(args: &[&str]) -> Vec<Sample> {
    let mut all = vec!["metrics"];
    all.extend_from_slice(args);
    let out = common::mdfuse::mdfuse(&all);
    common::mdfuse::assert_ok("mdfuse metrics", &out);
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut child = Command::new(python)
        .args(["-c", PROM_PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&out.stdout).expect("feed the parser");
    }
    let parsed = child.wait_with_output().expect("python3");
    assert!(
        parsed.status.success(),
        "prometheus_client does not parse `mdfuse metrics` (install python3-prometheus-client):\n{}\n{}",
        text(&parsed),
        common::mdfuse::stdout(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&parsed.stdout).expect("parser's JSON");
    v.as_array()
        .expect("samples")
        .iter()
        .map(|s| Sample {
            name: bare(&s["name"]),
            labels: s["labels"]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), bare(v)))
                .collect(),
            value: s["value"].as_f64().expect("value"),
        })
        .collect()
}

/// The value of the one sample `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(hits.len(), 1, "{name} {labels:?}: {hits:?}");
    hits[0].value
}

/// `mdfuse metrics` parses with Prometheus' parser and follows the array: healthy, a leg
/// failed (degraded, the leg faulty, the bitmap keeping the chunks written meanwhile dirty),
/// removed, and re-added (recovered back in sync); the daemon's byte counters grow with
/// writes. Every mdfuse mount is listed when none is named.
#[test]
fn metrics_parse_and_change_when_a_leg_fails() {
    if !needs_root("metrics") {
        return;
    }
    let legs = Legs::temp(LEG_BYTES);
    let bitmap = legs.dir().join("md.bitmap");
    let bitmap_s = bitmap.to_str().expect("UTF-8").to_string();
    create(
        &legs,
        &[
            "--name",
            "prom",
            "--bitmap",
            &bitmap_s,
            "--bitmap-chunk",
            "64K",
        ],
    );
    let mnt = legs.mountpoint("mnt");
    let mnt_s = mnt.to_str().expect("UTF-8").to_string();
    let m = common::mdfuse::MountedArray::mount(
        &legs,
        &mnt,
        &["--bitmap", &bitmap_s, "--bitmap-file-io", "--delay", "1"],
    );
    let at = [("mountpoint", mnt_s.as_str())];
    let leg = |name: &'static str, state: &'static str| {
        [
            ("mountpoint", mnt_s.as_str()),
            ("leg", name),
            ("state", state),
        ]
    };
    let count = |state: &'static str| [("mountpoint", mnt_s.as_str()), ("state", state)];

    let s = metrics(&[&mnt_s]);
    assert_eq!(value(&s, "mdfuse_up", &at), 1.0);
    assert_eq!(value(&s, "mdfuse_array_degraded", &at), 0.0);
    assert_eq!(value(&s, "mdfuse_legs", &count("in_sync")), 2.0);
    assert_eq!(
        value(&s, "mdfuse_leg_state", &leg("leg1.img", "in_sync")),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "mdfuse_sync_action",
            &[("mountpoint", &mnt_s), ("action", "idle")]
        ),
        1.0
    );
    assert_eq!(
        value(&s, "mdfuse_array_size_bytes", &at),
        (LEG_BYTES - (1 << 20)) as f64
    );
    assert_eq!(value(&s, "mdfuse_mismatch_sectors", &at), 0.0);
    let written0 = value(&s, "mdfuse_daemon_written_bytes_total", &at);
    let leg_io = |s: &[Sample], what: &str, name: &'static str| {
        value(
            s,
            &format!("mdfuse_leg_{what}_bytes_total"),
            &[("mountpoint", mnt_s.as_str()), ("leg", name)],
        )
    };
    let leg0_written = leg_io(&s, "written", "leg0.img");
    let leg1_written = leg_io(&s, "written", "leg1.img");
    // Every mdfuse mount when none is named: this one among them.
    let all = metrics(&[]);
    assert_eq!(value(&all, "mdfuse_up", &at), 1.0);

    m.set_md("dev-leg1.img/state", "faulty");
    m.fill_random(1 << 20, 512 << 10, 3);
    let s = metrics(&[&mnt_s]);
    assert_eq!(value(&s, "mdfuse_array_degraded", &at), 1.0);
    assert_eq!(value(&s, "mdfuse_array_degraded_legs", &at), 1.0);
    assert_eq!(value(&s, "mdfuse_legs", &count("faulty")), 1.0);
    assert_eq!(
        value(&s, "mdfuse_leg_state", &leg("leg1.img", "faulty")),
        1.0
    );
    assert_eq!(
        value(&s, "mdfuse_leg_state", &leg("leg1.img", "in_sync")),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "mdfuse_leg_slot",
            &[("mountpoint", &mnt_s), ("leg", "leg1.img")]
        ),
        -1.0
    );
    // Degraded: the written chunks stay dirty (8 of 64 KiB), whatever the delay.
    std::thread::sleep(Duration::from_secs(3));
    let s = metrics(&[&mnt_s]);
    assert!(value(&s, "mdfuse_bitmap_dirty_chunks", &at) >= 8.0);
    assert!(
        value(&s, "mdfuse_daemon_written_bytes_total", &at) >= written0 + (512 << 10) as f64,
        "the written bytes did not grow"
    );
    // Per leg: the in-sync leg took the write, the faulty one nothing.
    assert!(
        leg_io(&s, "written", "leg0.img") >= leg0_written + (512 << 10) as f64,
        "leg0's written bytes did not grow"
    );
    assert_eq!(leg_io(&s, "written", "leg1.img"), leg1_written);

    m.set_md("dev-leg1.img/state", "remove");
    let s = metrics(&[&mnt_s]);
    assert_eq!(value(&s, "mdfuse_legs", &count("removed")), 1.0);
    assert_eq!(value(&s, "mdfuse_legs", &count("faulty")), 0.0);
    assert!(s
        .iter()
        .all(|x| x.labels.get("leg").map(String::as_str) != Some("leg1.img")));

    m.set_md("new_dev", &format!("re-add {}", legs.paths[1].display()));
    m.wait_sync_idle(Duration::from_secs(60));
    let s = metrics(&[&mnt_s]);
    // The recovery wrote the chunks the bitmap kept to leg1, read from leg0.
    assert!(leg_io(&s, "written", "leg1.img") >= (512 << 10) as f64);
    assert!(leg_io(&s, "read", "leg0.img") > 0.0);
    assert_eq!(value(&s, "mdfuse_array_degraded", &at), 0.0);
    assert_eq!(value(&s, "mdfuse_legs", &count("in_sync")), 2.0);
    assert_eq!(value(&s, "mdfuse_legs", &count("removed")), 0.0);
    assert_eq!(
        value(&s, "mdfuse_leg_state", &leg("leg1.img", "in_sync")),
        1.0
    );
    m.stop();

    // Gone: named, it is reported down (the text stays valid).
    let s = metrics(&[&mnt_s]);
    assert_eq!(value(&s, "mdfuse_up", &at), 0.0);
}

// ---------------------------------------------------------------- monitor

/// A `--program` for the monitor: appends its arguments, one line per event, to a file.
fn event_program(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join("events.log");
    let prog = dir.join("on-event.sh");
    std::fs::write(
        &prog,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", log.display()),
    )
    .expect("write the program");
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (prog, log)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// `monitor --oneshot` (for cron): 0 and silent on a healthy array, a TestMessage with
/// --test (to the program too), and 1 with DegradedArray once a leg has failed.
#[test]
fn monitor_oneshot_exits_non_zero_when_an_array_is_degraded() {
    if !needs_root("monitor_oneshot") {
        return;
    }
    let legs = Legs::temp(LEG_BYTES);
    create(&legs, &["--name", "mon1"]);
    let mnt = legs.mountpoint("mnt");
    let mnt_s = mnt.to_str().expect("UTF-8").to_string();
    let (prog, log) = event_program(legs.dir());
    let prog_s = prog.to_str().expect("UTF-8");
    let m = common::mdfuse::MountedArray::mount(&legs, &mnt, &[]);

    let out = common::mdfuse::mdfuse(&["monitor", "--oneshot", &mnt_s]);
    assert!(out.status.success(), "healthy: {}", text(&out));
    assert_eq!(common::mdfuse::stdout(&out), "", "healthy: no event");
    let out = common::mdfuse::mdfuse(&["monitor", "-1", "--test", "--program", prog_s, &mnt_s]);
    assert!(out.status.success(), "--test: {}", text(&out));
    assert_eq!(
        common::mdfuse::stdout(&out),
        format!("TestMessage event detected on mdfuse array {mnt_s}\n")
    );
    assert_eq!(lines(&log), [format!("TestMessage {mnt_s}")]);

    m.set_md("dev-leg1.img/state", "faulty");
    let out = common::mdfuse::mdfuse(&["monitor", "--oneshot", "--program", prog_s, &mnt_s]);
    assert_eq!(out.status.code(), Some(1), "degraded: {}", text(&out));
    assert_eq!(
        common::mdfuse::stdout(&out),
        format!("DegradedArray event detected on mdfuse array {mnt_s}\n")
    );
    assert_eq!(lines(&log).last(), Some(&format!("DegradedArray {mnt_s}")));
    // Every mdfuse mount when none is named: this one among them.
    let out = common::mdfuse::mdfuse(&["monitor", "--oneshot"]);
    assert_eq!(out.status.code(), Some(1), "all arrays: {}", text(&out));
    assert!(common::mdfuse::stdout(&out).contains(&format!(
        "DegradedArray event detected on mdfuse array {mnt_s}\n"
    )));
    m.stop();
}

/// The events with a RebuildFinished seen right before the new leg's SpareActive put
/// after it: the leg turns in_sync and the sync ends at once, and a look may fall between
/// the two; every other event keeps its order.
fn spare_active_first(mut got: Vec<String>) -> Vec<String> {
    let i = got.iter().position(|l| l.starts_with("SpareActive"));
    let j = got.iter().position(|l| l.starts_with("RebuildFinished"));
    if let (Some(i), Some(j)) = (i, j) {
        if j + 1 == i {
            got.swap(i, j);
        }
    }
    got
}

/// The monitor kills its child on drop.
struct Monitor(std::process::Child);

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The watching monitor reports a leg failure, a rebuild with its progress and its end, the
/// new leg becoming active and a killed daemon, each exactly once, to --program and to
/// standard output (the same events in the same order).
#[test]
fn monitor_reports_fail_rebuild_progress_and_a_killed_daemon_each_once() {
    if !needs_root("monitor_watch") {
        return;
    }
    let legs = Legs::temp(LEG_BYTES);
    create(&legs, &["--name", "mon2"]);
    let mnt = legs.mountpoint("mnt");
    let mnt_s = mnt.to_str().expect("UTF-8").to_string();
    // The monitor watches every mdfuse mount (named, a mountpoint would be on its command
    // line, where the harness looks for a daemon to kill): this array's events only.
    let ours = |got: Vec<String>| -> Vec<String> {
        got.into_iter()
            .filter(|l| {
                l.contains(&format!("{mnt_s} "))
                    || l.ends_with(&mnt_s)
                    || l.contains(&format!("{mnt_s},"))
            })
            .collect()
    };
    let (prog, log) = event_program(legs.dir());
    let spare = legs.dir().join("leg2.img");
    common::loopdev::sparse_file(&spare, LEG_BYTES).expect("the new leg");
    let m = common::mdfuse::MountedArray::mount(&legs, &mnt, &[]);
    let out_path = legs.dir().join("monitor.out");
    let monitor = Monitor(
        Command::new(common::mdfuse::bin())
            .args(["monitor", "--delay", "0.1", "--program"])
            .arg(&prog)
            .stdout(File::create(&out_path).expect("monitor's stdout"))
            .spawn()
            .expect("start mdfuse monitor"),
    );
    let wait_for_event = |what: &str| {
        let want = what.to_string();
        common::mdfuse::wait_for(what, Duration::from_secs(60), || {
            lines(&log).contains(&want)
        });
    };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        ours(lines(&log)),
        Vec::<String>::new(),
        "events on a healthy array"
    );

    m.set_md("dev-leg1.img/state", "faulty");
    wait_for_event(&format!("Fail {mnt_s} leg1.img"));
    m.set_md("dev-leg1.img/state", "remove");
    // A new leg, recovered in full at 8 MB/s: about 4 s, every 20% seen.
    m.set_md("sync_speed_max", "8000");
    m.set_md("new_dev", spare.to_str().expect("UTF-8"));
    wait_for_event(&format!("RebuildFinished {mnt_s}"));
    wait_for_event(&format!("SpareActive {mnt_s} leg2.img"));
    m.kill9_then(|| {
        std::thread::sleep(Duration::from_millis(500));
    });
    wait_for_event(&format!("DeviceDisappeared {mnt_s}"));
    std::thread::sleep(Duration::from_millis(500));
    drop(monitor);

    let want: Vec<String> = [
        "Fail {m} leg1.img",
        "RebuildStarted {m}",
        "Rebuild20 {m}",
        "Rebuild40 {m}",
        "Rebuild60 {m}",
        "Rebuild80 {m}",
        "SpareActive {m} leg2.img",
        "RebuildFinished {m}",
        "DeviceDisappeared {m}",
    ]
    .iter()
    .map(|l| l.replace("{m}", &mnt_s))
    .collect();
    // The new leg's SpareActive and the RebuildFinished may be seen in either order (one
    // look or two); everything else in order, and each exactly once.
    assert_eq!(
        spare_active_first(ours(lines(&log))),
        want,
        "the program's events"
    );
    let printed: Vec<String> = want
        .iter()
        .map(|l| {
            let mut w = l.split(' ');
            let (name, m, leg) = (w.next().unwrap(), w.next().unwrap(), w.next());
            match leg {
                Some(leg) => {
                    format!("{name} event detected on mdfuse array {m}, component device {leg}")
                }
                None => format!("{name} event detected on mdfuse array {m}"),
            }
        })
        .collect();
    assert_eq!(
        spare_active_first(ours(lines(&out_path))),
        printed,
        "the monitor's standard output"
    );
}

/// Between two looks of a monitor (3 s apart) a leg fails, is removed, re-added and
/// recovered: the state at the second look is the state at the first, yet each event is
/// reported once, from the daemon's event log. A second array started degraded (`--run`
/// with one leg) while the monitor watches is reported as NewArray and DegradedArray.
#[test]
fn monitor_misses_nothing_between_two_looks_and_reports_a_degraded_start() {
    if !needs_root("monitor_between_looks") {
        return;
    }
    let legs = Legs::temp(LEG_BYTES);
    create(&legs, &["--name", "mon3"]);
    let mnt = legs.mountpoint("mnt");
    let mnt_s = mnt.to_str().expect("UTF-8").to_string();
    let mnt2 = legs.mountpoint("mnt2");
    let mnt2_s = mnt2.to_str().expect("UTF-8").to_string();
    std::fs::create_dir_all(&mnt2).expect("second mountpoint");
    let dir2 = legs.dir().join("second");
    std::fs::create_dir(&dir2).expect("second array's dir");
    let legs2 = Legs::new(&dir2, 2, LEG_BYTES);
    create(&legs2, &["--name", "mon3b"]);
    let (prog, log) = event_program(legs.dir());
    let m = common::mdfuse::MountedArray::mount(&legs, &mnt, &[]);
    let _monitor = Monitor(
        Command::new(common::mdfuse::bin())
            .args(["monitor", "--delay", "3", "--test", "--program"])
            .arg(&prog)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start mdfuse monitor"),
    );
    let wait_for_event = |what: String, timeout: u64| {
        common::mdfuse::wait_for(&what, Duration::from_secs(timeout), || {
            lines(&log).contains(&what)
        });
    };
    wait_for_event(format!("TestMessage {mnt_s}"), 30);

    // All within one delay: the daemon's log has it all before the monitor looks again.
    let daemon_log = mdfuse::transport::serve::run_file(&mnt, "events");
    m.set_md("dev-leg1.img/state", "faulty");
    m.set_md("dev-leg1.img/state", "remove");
    m.set_md("new_dev", &format!("re-add {}", legs.paths[1].display()));
    m.wait_sync_idle(Duration::from_secs(30));
    common::mdfuse::wait_for("the daemon's SpareActive", Duration::from_secs(5), || {
        std::fs::read_to_string(&daemon_log)
            .unwrap_or_default()
            .contains("SpareActive leg1.img")
    });
    let quick = lines(&log);
    wait_for_event(format!("SpareActive {mnt_s} leg1.img"), 30);
    assert!(
        !quick.iter().any(|l| l.starts_with("Fail")),
        "the monitor looked in between (the test wants one delay): {quick:?}"
    );

    // A degraded start, seen by the running monitor.
    let one = Legs::from_paths(vec![legs2.paths[0].clone()]);
    let m2 = common::mdfuse::MountedArray::mount(&one, &mnt2, &["--run"]);
    wait_for_event(format!("DegradedArray {mnt2_s}"), 30);
    std::thread::sleep(Duration::from_secs(4));
    let got = lines(&log);
    let of = |m: &str| -> Vec<String> {
        got.iter()
            .filter(|l| l.split(' ').nth(1) == Some(m))
            .map(|l| {
                l.split(' ')
                    .filter(|w| *w != m)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|l| {
                !l.starts_with("Rebuild") || l == "RebuildStarted" || l == "RebuildFinished"
            })
            .collect()
    };
    assert_eq!(
        spare_active_first(of(&mnt_s)),
        [
            "TestMessage",
            "Fail leg1.img",
            "RebuildStarted",
            "SpareActive leg1.img",
            "RebuildFinished"
        ],
        "{got:#?}"
    );
    assert_eq!(of(&mnt2_s), ["NewArray", "DegradedArray"], "{got:#?}");
    m2.stop();
    m.stop();
}

/// Kills a daemonised monitor (by the pid it printed) on drop.
struct Detached(i32);

impl Drop for Detached {
    fn drop(&mut self) {
        if self.0 > 0 {
            common::mdfuse::signal(self.0, libc::SIGTERM);
            wait_pid_gone(self.0, Duration::from_secs(5));
        }
    }
}

/// `--mail` without a sendmail says what to install; `--daemonise --pid-file` goes on in
/// the background (its pid printed and in the file) and reports to its program; `--syslog`
/// is accepted with or without a syslog daemon.
#[test]
fn monitor_mail_needs_sendmail_and_daemonise_runs_in_the_background() {
    if !needs_root("monitor_outputs") {
        return;
    }
    let legs = Legs::temp(LEG_BYTES);
    create(&legs, &["--name", "mon4"]);
    let mnt = legs.mountpoint("mnt");
    let mnt_s = mnt.to_str().expect("UTF-8").to_string();
    let (prog, log) = event_program(legs.dir());
    let m = common::mdfuse::MountedArray::mount(&legs, &mnt, &[]);

    let has_sendmail = ["/usr/sbin/sendmail", "/usr/lib/sendmail"]
        .iter()
        .any(|p| Path::new(p).is_file());
    if !has_sendmail {
        let out = common::mdfuse::mdfuse(&["monitor", "--oneshot", "--mail", "root"]);
        assert!(
            !out.status.success(),
            "--mail without sendmail: {}",
            text(&out)
        );
        let t = text(&out);
        assert!(
            t.contains("no sendmail is installed") && t.contains("--program"),
            "--mail without sendmail does not say what to do: {t}"
        );
    }
    let out = common::mdfuse::mdfuse(&["monitor", "--oneshot", "--syslog", "--test"]);
    assert!(
        common::mdfuse::stdout(&out).contains(&format!(
            "TestMessage event detected on mdfuse array {mnt_s}\n"
        )),
        "--syslog: {}",
        text(&out)
    );

    let pid_file = legs.dir().join("monitor.pid");
    let out = Command::new(common::mdfuse::bin())
        .args([
            "monitor",
            "--daemonise",
            "--test",
            "--delay",
            "0.2",
            "--pid-file",
        ])
        .arg(&pid_file)
        .arg("--program")
        .arg(&prog)
        // The detached monitor keeps standard error: not a pipe this test would wait on.
        .stderr(File::create(legs.dir().join("monitor.err")).expect("stderr file"))
        .output()
        .expect("mdfuse monitor --daemonise");
    assert!(out.status.success(), "--daemonise: {}", text(&out));
    let pid: i32 = common::mdfuse::stdout(&out)
        .trim()
        .parse()
        .expect("the monitor's pid");
    let _detached = Detached(pid);
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("pid file").trim(),
        pid.to_string()
    );
    common::mdfuse::wait_for(
        "the detached monitor's TestMessage",
        Duration::from_secs(10),
        || lines(&log).contains(&format!("TestMessage {mnt_s}")),
    );
    assert!(pid_alive(pid), "the detached monitor has gone");
    m.set_md("dev-leg1.img/state", "faulty");
    common::mdfuse::wait_for(
        "the detached monitor's Fail",
        Duration::from_secs(10),
        || lines(&log).contains(&format!("Fail {mnt_s} leg1.img")),
    );
    m.stop();
}

// ---------------------------------------------------------------- the Debian package

/// Removes the package on drop if it is (still) installed.
struct DebInstalled;

fn deb_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "mdfuse"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

impl Drop for DebInstalled {
    fn drop(&mut self) {
        if deb_installed() {
            let _ = Command::new("dpkg").args(["--purge", "mdfuse"]).output();
        }
    }
}

/// The package `scripts/deb.sh` makes (`cargo deb --no-build` on the binary under test,
/// with the man pages and completions `mdfuse gen-assets` writes) installs with `dpkg -i`
/// (mdfuse in /usr/sbin, /sbin/mount.mdfuse a link to it, man pages, completions), mounts an
/// fstab line with `mount MOUNTPOINT` under a boot's PATH, umount stops it clean, and
/// `dpkg -r` leaves none of its files.
#[test]
fn the_debian_package_installs_mounts_through_fstab_and_removes_cleanly() {
    if !needs_root("the_debian_package") {
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_mdfuse"));
    let profile_dir = bin.parent().expect("the binary's directory");
    if profile_dir.file_name().is_none_or(|n| n != "release") {
        eprintln!(
            "SKIPPED the_debian_package: cargo deb packages the release build (run with --release)"
        );
        return;
    }
    assert!(
        Command::new("cargo")
            .args(["deb", "--version"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "cargo-deb is missing: `cargo install cargo-deb` (scripts/test.sh does)"
    );
    assert!(
        !deb_installed(),
        "a package mdfuse is installed: this test will not touch it"
    );
    // The paths the package owns, moved aside if something is there (and put back).
    let _installed = Installed::guard(&["/usr/sbin/mdfuse", "/usr/sbin/mount.mdfuse"]);
    let dir = common::mdfuse::tempdir("mdfuse-operator-deb");
    let deb = dir.path().join("mdfuse.deb");

    let out = common::mdfuse::mdfuse(&[
        "gen-assets",
        &profile_dir.join("assets").display().to_string(),
    ]);
    common::mdfuse::assert_ok("mdfuse gen-assets", &out);
    let out = Command::new("cargo")
        .args(["deb", "-p", "mdfuse", "--no-build", "--strip", "--output"])
        .arg(&deb)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(
            "CARGO_TARGET_DIR",
            profile_dir.parent().expect("target dir"),
        )
        .output()
        .expect("run cargo deb");
    assert!(out.status.success(), "cargo deb: {}", text(&out));

    let _remove = DebInstalled;
    let out = Command::new("dpkg")
        .arg("-i")
        .arg(&deb)
        .output()
        .expect("dpkg -i");
    assert!(out.status.success(), "dpkg -i: {}", text(&out));
    assert!(
        Path::new("/usr/sbin/mdfuse").is_file(),
        "no /usr/sbin/mdfuse"
    );
    assert_eq!(
        std::fs::read_link("/sbin/mount.mdfuse").expect("/sbin/mount.mdfuse is a link"),
        Path::new("mdfuse")
    );
    let listed = Command::new("dpkg")
        .args(["-L", "mdfuse"])
        .output()
        .expect("dpkg -L");
    let listed = common::mdfuse::stdout(&listed);
    for want in [
        "/usr/share/man/man8/mdfuse.8",
        "/usr/share/man/man8/mdfuse-monitor.8",
        "/usr/share/man/man8/mount.mdfuse.8",
        "/usr/share/bash-completion/completions/mdfuse",
        "/usr/share/doc/mdfuse/docs/json.md",
    ] {
        assert!(
            listed.lines().any(|l| l.starts_with(want)),
            "the package has no {want}:\n{listed}"
        );
    }

    let legs = Legs::new(dir.path(), 2, LEG_BYTES);
    create(&legs, &["--name", "deb"]);
    let mnt = dir.path().join("data");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let mut mounts = Mounts {
        mnt: mnt.clone(),
        pids: Vec::new(),
    };
    {
        let _fstab = FstabLine::add(&format!(
            "mirror {} mdfuse legs={}:{},nofail 0 0",
            mnt.display(),
            legs.paths[0].display(),
            legs.paths[1].display()
        ));
        let out = sh(&format!("mount {}", mnt.display()), dir.path());
        assert!(out.status.success(), "mount MNT: {}", text(&out));
        assert_live(&mnt, &mut mounts, "mount by the fstab line");
        let daemon = std::fs::read_link(format!("/proc/{}/exe", mounts.pids[0]))
            .expect("the daemon's executable");
        assert_eq!(
            daemon,
            Path::new("/usr/sbin/mdfuse"),
            "the daemon is the package's"
        );
        let out = sh(&format!("umount {}", mnt.display()), dir.path());
        assert!(out.status.success(), "umount: {}", text(&out));
        assert_stopped(&mnt, &mounts, &legs, "umount");
    }

    let out = Command::new("dpkg")
        .args(["-r", "mdfuse"])
        .output()
        .expect("dpkg -r");
    assert!(out.status.success(), "dpkg -r: {}", text(&out));
    for gone in [
        "/usr/sbin/mdfuse",
        "/usr/sbin/mount.mdfuse",
        "/usr/share/man/man8/mdfuse.8",
        "/usr/share/man/man8/mdfuse.8.gz",
        "/usr/share/bash-completion/completions/mdfuse",
        "/usr/share/doc/mdfuse/README.md",
    ] {
        assert!(
            std::fs::symlink_metadata(gone).is_err(),
            "{gone} left after dpkg -r"
        );
    }
}

// ---------------------------------------------------------------- the sandbox

/// Removes a sandbox (its array, bitmap filesystem, loop device) on drop.
struct Sandbox(PathBuf);

impl Drop for Sandbox {
    fn drop(&mut self) {
        let mnt = self.0.join("mnt");
        let pid = daemon_pid(&mnt);
        let _ = common::mdfuse::mdfuse(&["sandbox", "--remove", self.0.to_str().unwrap_or("")]);
        let _ = Mounts {
            mnt,
            pids: vec![pid].into_iter().filter(|p| *p > 0).collect(),
        };
    }
}

/// `mdfuse sandbox` run from a binary that is not on PATH, in a directory whose name holds
/// a blank: every command it prints (status, examine, stop, mount again, remove) runs as
/// printed in a shell with a boot's PATH.
#[test]
fn the_sandbox_prints_commands_that_run_as_printed() {
    if !needs_root("the_sandbox_prints_commands") {
        return;
    }
    let top = common::mdfuse::tempdir("mdfuse-operator-sandbox");
    let dir = top.path().join("my sandbox");
    let _sandbox = Sandbox(dir.clone());
    let out = Command::new(common::mdfuse::bin())
        .args(["sandbox", "--size", "32M"])
        .arg(&dir)
        .env("PATH", MINIMAL_PATH)
        .output()
        .expect("mdfuse sandbox");
    assert!(out.status.success(), "mdfuse sandbox: {}", text(&out));
    let printed = common::mdfuse::stdout(&out);
    let command = |what: &str| -> String {
        printed
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{what}:")))
            .unwrap_or_else(|| panic!("no {what}: line in\n{printed}"))
            .trim()
            .to_string()
    };
    let bin = Path::new(env!("CARGO_BIN_EXE_mdfuse"))
        .canonicalize()
        .expect("the binary's path");
    assert!(
        command("stop").starts_with(&bin.display().to_string()),
        "the printed commands do not name the binary by its path:\n{printed}"
    );
    for what in ["status", "superblock", "stop", "again", "stop", "remove"] {
        let line = command(what);
        let out = sh(&line, top.path());
        assert!(out.status.success(), "{what}: `{line}`: {}", text(&out));
    }
    assert!(
        !dir.exists(),
        "the sandbox's directory is left after remove"
    );
}

// ---------------------------------------------------------------- help

/// Every subcommand `mdfuse --help` lists shows an example in its own `--help` and `-h`.
#[test]
fn every_subcommand_help_has_an_example() {
    let top = common::mdfuse::mdfuse_stdout(&["--help"]);
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 10, "commands: {commands:?}\n{top}");
    for c in &commands {
        for flag in ["--help", "-h"] {
            let help = common::mdfuse::mdfuse_stdout(&[c, flag]);
            assert!(
                help.contains("Example") && help.contains(&format!("mdfuse {c}")),
                "`mdfuse {c} {flag}` has no example:\n{help}"
            );
        }
    }
}

// ---------------------------------------------------------------- common mistakes

/// The commonest mistakes are refused, each with what to do next, and change nothing: a
/// second array mounted over a mountpoint already serving one (before: mounted on top of
/// it), a leg of an array running elsewhere, legs of two different arrays.
#[test]
fn common_mistakes_are_refused_with_what_to_do_next() {
    if !needs_root("common_mistakes") {
        return;
    }
    let one = Legs::temp(LEG_BYTES);
    create(&one, &["--name", "one"]);
    let dir2 = one.dir().join("two");
    std::fs::create_dir(&dir2).expect("dir");
    let two = Legs::new(&dir2, 2, LEG_BYTES);
    create(&two, &["--name", "two"]);
    let mnt = one.mountpoint("mnt");
    let mnt_s = mnt.to_str().expect("UTF-8").to_string();
    let m = common::mdfuse::MountedArray::mount(&one, &mnt, &[]);
    let refused = |what: &str, args: Vec<String>, needles: &[&str]| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = common::mdfuse::mdfuse(&refs);
        let t = text(&out);
        if out.status.success() {
            // Mounted after all: take it down before failing.
            let _ = common::mdfuse::mdfuse(&["stop", refs[refs.len() - 1]]);
            panic!("{what} was not refused: {t}");
        }
        for n in needles {
            assert!(t.contains(n), "{what}: no {n:?} in {t}");
        }
    };
    let strs = |legs: &[&Path], mnt: &Path| -> Vec<String> {
        let mut a = vec!["mount".to_string()];
        a.extend(legs.iter().map(|l| l.display().to_string()));
        a.push(mnt.display().to_string());
        a
    };
    refused(
        "a second array over a mountpoint in use",
        strs(&[two.path(0), two.path(1)], &mnt),
        &["already mounted there", &format!("mdfuse stop {mnt_s}")],
    );
    let mnt2 = one.mountpoint("mnt2");
    std::fs::create_dir_all(&mnt2).expect("mnt2");
    refused(
        "a leg of a running array",
        strs(&[one.path(0), one.path(1)], &mnt2),
        &[&mnt_s, &format!("mdfuse stop {mnt_s}")],
    );
    assert!(
        m.mdstat().contains("[UU]"),
        "the first array: {}",
        m.mdstat()
    );
    m.stop();
    refused(
        "legs of two arrays",
        strs(&[two.path(0), one.path(1)], &mnt2),
        &["two different arrays", "mdfuse examine"],
    );
    assert!(
        !is_mounted(&mnt2),
        "something was mounted at {}",
        mnt2.display()
    );
}

/// A leg failed, removed and re-added by the bitmap (nothing was written meanwhile, so the
/// recovery copies nothing and ends at once), all quicker than any look at the array's
/// state: the daemon's event log still has every event, once each and in order, because
/// the array tells them as they happen.
#[test]
fn the_event_log_has_events_closer_together_than_any_look() {
    if !needs_root("events_at_the_source") {
        return;
    }
    let legs = Legs::temp(LEG_BYTES);
    let bitmap = legs.dir().join("md.bitmap");
    let bitmap_s = bitmap.to_str().expect("UTF-8");
    create(&legs, &["--name", "quick", "--bitmap", bitmap_s]);
    let mnt = legs.mountpoint("mnt");
    let m = common::mdfuse::MountedArray::mount(
        &legs,
        &mnt,
        &["--bitmap", bitmap_s, "--bitmap-file-io"],
    );
    let daemon_log = mdfuse::transport::serve::run_file(&mnt, "events");
    let events = || -> Vec<String> {
        lines(&daemon_log)
            .iter()
            .skip(1)
            .map(|l| l.splitn(3, ' ').nth(2).unwrap_or_default().to_string())
            .collect()
    };
    common::mdfuse::wait_for("the event log", Duration::from_secs(10), || {
        daemon_log.exists()
    });
    let leg1 = legs.paths[1].to_str().expect("UTF-8").to_string();
    for round in 0..3 {
        m.set_md("dev-leg1.img/state", "faulty");
        m.set_md("dev-leg1.img/state", "remove");
        m.set_md("new_dev", &format!("re-add {leg1}"));
        m.wait_sync_idle(Duration::from_secs(30));
        let want: Vec<String> = (0..=round)
            .flat_map(|_| {
                [
                    "Fail leg1.img",
                    "RebuildStarted",
                    "SpareActive leg1.img",
                    "RebuildFinished",
                ]
            })
            .map(String::from)
            .collect();
        common::mdfuse::wait_for("the re-add's events", Duration::from_secs(5), || {
            events().len() >= want.len()
        });
        assert_eq!(events(), want, "round {round}\n{}", m.log());
        assert_eq!(m.md("dev-leg1.img/state"), "in_sync");
    }
    m.stop();
}
