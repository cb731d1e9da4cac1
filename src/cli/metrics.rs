//! `mdfuse metrics [MOUNTPOINT...]`: the running arrays' state in the
//! Prometheus text exposition format (version 0.0.4), for node_exporter's
//! textfile collector (`--output FILE` writes it atomically) or any scraper.
//! Every array mounted (or the ones named) is read from its `md/` files
//! (cli/status.rs), its bitmap file (O_DIRECT, as examine-bitmap reads it)
//! and its daemon's /proc/PID/io. The metrics are listed in docs/json.md.

use super::status::{self, ArrayStatus};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One metric family: its samples from every array, printed together (the
/// format wants a family's samples in one group after its HELP and TYPE).
struct Family {
    help: &'static str,
    kind: &'static str,
    samples: Vec<String>,
}

/// The families in the order they are printed, filled array by array.
#[derive(Default)]
struct Families {
    order: Vec<&'static str>,
    by_name: BTreeMap<&'static str, Family>,
}

impl Families {
    fn add(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let fam = self.by_name.entry(name).or_insert_with(|| Family {
            help,
            kind,
            samples: Vec::new(),
        });
        if fam.samples.is_empty() && !self.order.contains(&name) {
            self.order.push(name);
        }
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect();
        fam.samples.push(format!(
            "{name}{{{}}} {}",
            labels.join(","),
            format_value(value)
        ));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for name in &self.order {
            let Some(f) = self.by_name.get(name) else {
                continue;
            };
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for s in &f.samples {
                let _ = writeln!(out, "{s}");
            }
        }
        out
    }
}

/// A label value as the format escapes it: backslash, double quote, newline.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// md's array_state words an mdfuse array takes, each a series (0 or 1).
const ARRAY_STATES: [&str; 3] = ["clean", "active", "readonly"];
/// The leg states of `mdfuse_leg_state`.
const LEG_STATES: [&str; 4] = ["in_sync", "recovering", "spare", "faulty"];
/// md's sync_action words, each a series (0 or 1).
const SYNC_ACTIONS: [&str; 6] = ["idle", "resync", "recover", "check", "repair", "frozen"];

/// A leg's state in the metrics' words: md says `spare` for a leg being
/// recovered into its slot; here that is `recovering`, and `spare` is a leg
/// without a slot waiting for one.
fn leg_state(d: &status::DeviceStatus, action: &str) -> &'static str {
    match d.state.as_str() {
        "in_sync" => "in_sync",
        "faulty" => "faulty",
        "spare" if d.raid_device.is_some() && action == "recover" => "recovering",
        "spare" => "spare",
        _ => "spare",
    }
}

/// The daemon's bytes read from and written to storage (/proc/PID/io:
/// read_bytes, write_bytes): its legs, bitmap and superblocks together.
fn daemon_io(pid: u32) -> Option<(u64, u64)> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |k: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
    };
    Some((field("read_bytes:")?, field("write_bytes:")?))
}

fn add_array(f: &mut Families, mnt: &str, s: &ArrayStatus) {
    let m = [("mountpoint", mnt)];
    f.add(
        "mdfuse_up",
        "gauge",
        "1 when the array's state could be read, else 0.",
        &m,
        1.0,
    );
    f.add(
        "mdfuse_array_info",
        "gauge",
        "The array's identity, always 1.",
        &[
            ("mountpoint", mnt),
            ("uuid", &s.uuid),
            ("level", &s.raid_level),
            ("metadata_version", &s.version),
        ],
        1.0,
    );
    let mut states: Vec<&str> = ARRAY_STATES.to_vec();
    if !states.contains(&s.array_state.as_str()) {
        states.push(&s.array_state);
    }
    for st in states {
        f.add(
            "mdfuse_array_state",
            "gauge",
            "md's array_state: 1 for the current word.",
            &[("mountpoint", mnt), ("state", st)],
            flag(s.array_state == st),
        );
    }
    f.add(
        "mdfuse_array_degraded",
        "gauge",
        "1 when fewer legs are in sync than the array has slots.",
        &m,
        flag(s.degraded),
    );
    f.add(
        "mdfuse_array_degraded_legs",
        "gauge",
        "Slots without an in-sync leg (md's degraded).",
        &m,
        s.degraded_devices as f64,
    );
    f.add(
        "mdfuse_array_raid_disks",
        "gauge",
        "Slots of the array (md's raid_disks).",
        &m,
        s.raid_devices as f64,
    );
    f.add(
        "mdfuse_array_size_bytes",
        "gauge",
        "Size of the array's image.",
        &m,
        s.array_size_kib as f64 * 1024.0,
    );
    // Legs by state, including slots whose leg is gone altogether (removed).
    let mut counts: BTreeMap<&str, usize> = LEG_STATES.iter().map(|s| (*s, 0)).collect();
    for d in &s.devices {
        *counts.entry(leg_state(d, &s.sync_action)).or_default() += 1;
    }
    let in_slots = s.devices.iter().filter(|d| d.raid_device.is_some()).count();
    let faulty = counts.get("faulty").copied().unwrap_or(0);
    let removed = s.raid_devices.saturating_sub(in_slots + faulty);
    for st in LEG_STATES {
        f.add(
            "mdfuse_legs",
            "gauge",
            "Legs by state; removed: slots whose leg has left the array.",
            &[("mountpoint", mnt), ("state", st)],
            counts.get(st).copied().unwrap_or(0) as f64,
        );
    }
    f.add(
        "mdfuse_legs",
        "gauge",
        "Legs by state; removed: slots whose leg has left the array.",
        &[("mountpoint", mnt), ("state", "removed")],
        removed as f64,
    );
    for d in &s.devices {
        let mine = leg_state(d, &s.sync_action);
        for st in LEG_STATES {
            f.add(
                "mdfuse_leg_state",
                "gauge",
                "A leg's state: 1 for the current one.",
                &[("mountpoint", mnt), ("leg", &d.name), ("state", st)],
                flag(mine == st),
            );
        }
        f.add(
            "mdfuse_leg_slot",
            "gauge",
            "The slot a leg holds (md's dev-*/slot), -1 for none.",
            &[("mountpoint", mnt), ("leg", &d.name)],
            d.raid_device.map_or(-1.0, |n| n as f64),
        );
        f.add(
            "mdfuse_leg_corrected_read_errors",
            "gauge",
            "Read errors corrected on a leg (md's dev-*/errors).",
            &[("mountpoint", mnt), ("leg", &d.name)],
            d.errors as f64,
        );
        f.add(
            "mdfuse_leg_read_bytes_total",
            "counter",
            "Bytes read from a leg since it joined this run of the array (md's dev-*/block/stat).",
            &[("mountpoint", mnt), ("leg", &d.name)],
            d.read_bytes as f64,
        );
        f.add(
            "mdfuse_leg_written_bytes_total",
            "counter",
            "Bytes written to a leg since it joined this run of the array (md's dev-*/block/stat).",
            &[("mountpoint", mnt), ("leg", &d.name)],
            d.written_bytes as f64,
        );
    }
    for a in SYNC_ACTIONS {
        f.add(
            "mdfuse_sync_action",
            "gauge",
            "md's sync_action: 1 for the current one.",
            &[("mountpoint", mnt), ("action", a)],
            flag(s.sync_action == a),
        );
    }
    let (ratio, speed) = match &s.sync_progress {
        Some(p) => (p.percent / 100.0, p.speed_kib.unwrap_or(0) as f64 * 1024.0),
        None => (1.0, 0.0),
    };
    f.add(
        "mdfuse_sync_completed_ratio",
        "gauge",
        "Share of the running sync done (1 when none runs).",
        &m,
        ratio,
    );
    f.add(
        "mdfuse_sync_speed_bytes_per_second",
        "gauge",
        "The running sync's speed (0 when none runs).",
        &m,
        speed,
    );
    f.add(
        "mdfuse_mismatch_sectors",
        "gauge",
        "md's mismatch_cnt: sectors found to differ by the last check or repair.",
        &m,
        s.mismatch_count as f64,
    );
    if let Some(b) = &s.intent_bitmap {
        f.add(
            "mdfuse_bitmap_chunk_bytes",
            "gauge",
            "Bytes of array per bitmap bit.",
            &m,
            b.chunk_bytes as f64,
        );
        let on_disk = s
            .bitmap_file
            .as_ref()
            .and_then(|p| mdfuse::bitmap::read_bitmap_for_examine(Path::new(p)).ok());
        if let Some((sb, bits)) = on_disk {
            let chunks = sb.chunks().min(bits.len() as u64 * 8);
            f.add(
                "mdfuse_bitmap_chunks",
                "gauge",
                "Chunks (bits) of the bitmap file.",
                &m,
                chunks as f64,
            );
            f.add(
                "mdfuse_bitmap_dirty_chunks",
                "gauge",
                "Dirty bits of the bitmap file as on disk (as examine-bitmap counts them).",
                &m,
                mdfuse::format::bitmap::count_dirty(&bits, chunks) as f64,
            );
        }
    }
    if let Some((read, written)) = s.daemon_pid.and_then(daemon_io) {
        f.add(
            "mdfuse_daemon_read_bytes_total",
            "counter",
            "Bytes the array's daemon read from storage (legs, bitmap, superblocks).",
            &m,
            read as f64,
        );
        f.add(
            "mdfuse_daemon_written_bytes_total",
            "counter",
            "Bytes the array's daemon wrote to storage (legs, bitmap, superblocks).",
            &m,
            written as f64,
        );
    }
}

/// Every mdfuse mount of this mount namespace, from /proc/self/mounts.
pub(super) fn mdfuse_mounts() -> Vec<PathBuf> {
    mdfuse::io::mounts::mounts()
        .into_iter()
        .filter(|m| {
            m.source
                .to_string_lossy()
                .starts_with(super::MOUNT_SOURCE_PREFIX)
                && m.fstype.starts_with("fuse")
        })
        .map(|m| m.point)
        .collect()
}

/// The metrics of the arrays at `mountpoints` (every mdfuse mount when
/// empty). An array that cannot be read has `mdfuse_up 0` (and a warning on
/// stderr); the text is valid whatever happens.
pub fn render(mountpoints: &[PathBuf]) -> String {
    let mounts = if mountpoints.is_empty() {
        mdfuse_mounts()
    } else {
        mountpoints.to_vec()
    };
    let mut f = Families::default();
    for mnt in &mounts {
        let label = super::absolute(mnt);
        match status::read(mnt) {
            Ok(s) => add_array(&mut f, &label, &s),
            Err(e) => {
                eprintln!("mdfuse: metrics: {e}");
                f.add(
                    "mdfuse_up",
                    "gauge",
                    "1 when the array's state could be read, else 0.",
                    &[("mountpoint", &label)],
                    0.0,
                );
            }
        }
    }
    f.render()
}

/// `mdfuse metrics [--output FILE] [MOUNTPOINT...]`.
pub fn cmd_metrics(mountpoints: &[PathBuf], output: Option<&Path>) -> Result<(), String> {
    let text = render(mountpoints);
    match output {
        None => {
            print!("{text}");
            Ok(())
        }
        Some(path) => {
            // Atomically, as the textfile collector wants: a scrape never
            // sees half a file.
            let name = path
                .file_name()
                .ok_or_else(|| format!("--output {}: not a file name", path.display()))?;
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".{}.tmp", std::process::id()));
            let tmp = path.with_file_name(tmp_name);
            std::fs::write(&tmp, &text).map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, path).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("{}: {e}", path.display())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_families_grouped() {
        let mut f = Families::default();
        f.add("a", "gauge", "A.", &[("m", "x\"y\\z\nw")], 1.0);
        f.add("b", "counter", "B.", &[("m", "1")], 2.5);
        f.add("a", "gauge", "A.", &[("m", "2")], 0.0);
        assert_eq!(
            f.render(),
            "# HELP a A.\n# TYPE a gauge\na{m=\"x\\\"y\\\\z\\nw\"} 1\na{m=\"2\"} 0\n\
             # HELP b B.\n# TYPE b counter\nb{m=\"1\"} 2.5\n"
        );
    }
}
