//! `mdadm --examine-bitmap` (mdadm -X) for a bitmap FILE, in mdadm's words.

use super::human_size;
use crate::format::bitmap::{count_dirty, BitmapSuper};

/// mdadm's human_chunksize(): shift by 1024 while possible, "64 KB", "4 MB".
pub fn human_chunksize(bytes: u32) -> String {
    const SUFFIXES: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes;
    let mut i = 0;
    while v >> 10 != 0 && i + 1 < SUFFIXES.len() {
        v >>= 10;
        i += 1;
    }
    format!("{} {}", v, SUFFIXES[i])
}

/// mdadm's state names: only 0 and BITMAP_STALE have one.
pub(crate) fn state_name(state: u32) -> &'static str {
    match state {
        0 => "OK",
        2 => "Out of date",
        _ => "Unknown",
    }
}

/// Renders what `mdadm -X FILE` prints to stdout for a non-clustered bitmap
/// file. `bits` are the file's bytes after the 256-byte header; when the file
/// is shorter than the array needs, mdadm counts only the bits present.
pub fn render_examine_bitmap(filename: &str, sb: &BitmapSuper, bits: &[u8]) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("{label:>16} : {value}\n"));
    };
    line("Filename", filename.to_string());
    line("Magic", format!("{:08x}", sb.magic));
    line("Version", sb.version.to_string());
    line("UUID", super::uuid_string(&sb.uuid));
    if sb.nodes == 0 {
        line("Events", sb.events.to_string());
        line("Events Cleared", sb.events_cleared.to_string());
        line("State", state_name(sb.state).to_string());
    }
    line("Chunksize", human_chunksize(sb.chunksize));
    line("Daemon", format!("{}s flush period", sb.daemon_sleep));
    line(
        "Write Mode",
        if sb.write_behind != 0 {
            format!("Allow write behind, max {}", sb.write_behind)
        } else {
            "Normal".to_string()
        },
    );
    line(
        "Sync Size",
        format!(
            "{}{}",
            sb.sync_size / 2,
            human_size(u128::from(sb.sync_size) << 9)
        ),
    );
    if sb.nodes == 0 {
        let total = sb.chunks().min(bits.len() as u64 * 8);
        let dirty = count_dirty(bits, total);
        let pct = 100.0 * dirty as f64 / total.max(1) as f64;
        line(
            "Bitmap",
            format!("{total} bits (chunks), {dirty} dirty ({pct:2.1}%)"),
        );
    } else {
        line("Cluster nodes", sb.nodes.to_string());
        let name_end = sb.cluster_name.iter().position(|&c| c == 0).unwrap_or(64);
        line(
            "Cluster name",
            format!(
                "{:<64}",
                String::from_utf8_lossy(&sb.cluster_name[..name_end])
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::bitmap::{dirty_chunks, BITMAP_SUPER_SIZE};
    use std::path::PathBuf;

    fn fixture_dir() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/kernel-md"
        ))
    }

    /// The fixture's bitmap bytes, or None (test skipped) when fixtures are absent.
    fn fixture_bitmap(set: &str) -> Option<Vec<u8>> {
        let path = fixture_dir().join(set).join("md0.bitmap.zst");
        if !path.exists() {
            eprintln!("fixture {} missing: skipped", path.display());
            return None;
        }
        let out = std::process::Command::new("zstd")
            .args(["-d", "-c"])
            .arg(&path)
            .output()
            .expect("run zstd");
        assert!(out.status.success(), "zstd -d failed on {}", path.display());
        Some(out.stdout)
    }

    /// The "mdadm -X" block of the final on-disk state in a MANIFEST, de-indented.
    fn manifest_examine(set: &str) -> String {
        let text = std::fs::read_to_string(fixture_dir().join(set).join("MANIFEST")).unwrap();
        let start = text
            .find("== final on-disk state: mdadm -X")
            .expect("mdadm -X section");
        text[start..]
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("=="))
            .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
            .collect()
    }

    fn manifest_dirty(set: &str) -> String {
        let text = std::fs::read_to_string(fixture_dir().join(set).join("MANIFEST")).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("set in md0.bitmap"))
            .expect("dirty line");
        line.rsplit(':').next().unwrap().trim().to_string()
    }

    fn ranges(chunks: &[u64]) -> String {
        if chunks.is_empty() {
            return "-".into();
        }
        let mut parts = Vec::new();
        let mut i = 0;
        while i < chunks.len() {
            let mut j = i;
            while j + 1 < chunks.len() && chunks[j + 1] == chunks[j] + 1 {
                j += 1;
            }
            parts.push(if i == j {
                chunks[i].to_string()
            } else {
                format!("{}-{}", chunks[i], chunks[j])
            });
            i = j + 1;
        }
        parts.join(",")
    }

    fn check_fixture(set: &str) {
        let Some(file) = fixture_bitmap(set) else {
            return;
        };
        assert_eq!(file.len(), 318);
        let sb = BitmapSuper::parse(&file).unwrap();
        assert_eq!(sb.file_len(), file.len() as u64);
        let bits = &file[BITMAP_SUPER_SIZE..];
        let got = render_examine_bitmap("/mnt/bm/md0.bitmap", &sb, bits);
        assert_eq!(got, manifest_examine(set), "{set}");
        assert_eq!(
            ranges(&dirty_chunks(bits, sb.chunks())),
            manifest_dirty(set)
        );
    }

    #[test]
    fn matches_fixture_a_clean() {
        check_fixture("a-clean");
    }

    #[test]
    fn matches_fixture_b_degraded_dirty() {
        check_fixture("b-degraded-dirty");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_chunksize(65536), "64 KB");
        assert_eq!(human_chunksize(4 << 20), "4 MB");
        assert_eq!(human_chunksize(512), "512 B");
        assert_eq!(human_size(32505856), " (31.00 MiB 32.51 MB)");
        assert_eq!(human_size(4096), "");
        assert_eq!(human_size(10 << 30), " (10.00 GiB 10.74 GB)");
    }
}
