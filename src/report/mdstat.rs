//! `/proc/mdstat` for one array, in md's own layout, so eyes and scripts used
//! to md read it unchanged.

use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdstatLeg {
    /// Short name, as md prints a device's kernel name (here: the leg's file name).
    pub name: String,
    /// The leg's role (slot) in the array.
    pub slot: usize,
    pub faulty: bool,
    pub in_sync: bool,
    /// Its writes are never known durable (an NBD server without flush):
    /// `(V)` after its name.
    pub volatile: bool,
    /// md's WriteMostly: `(W)` right after its role, as md prints it.
    pub write_mostly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdstatBitmap {
    pub pages_used: u64,
    pub pages_total: u64,
    pub chunk_bytes: u64,
    /// The bitmap file's path.
    pub file: String,
    /// Said when the bitmap is not written raw (e.g. "ordinary file I/O").
    pub note: Option<String>,
}

/// A resync, recovery, check or repair under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdstatSync {
    /// md's word: resync, recovery, check, repair.
    pub action: String,
    pub done_kib: u64,
    pub total_kib: u64,
    pub speed_kib_per_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdstatView {
    pub name: String,
    pub read_only: bool,
    pub size_kib: u64,
    pub raid_disks: usize,
    pub legs: Vec<MdstatLeg>,
    pub bitmap: Option<MdstatBitmap>,
    pub sync: Option<MdstatSync>,
}

/// A name (an array's, a leg's file name, a path) as mdfuse prints it in
/// mdstat, `md/` and its messages: a control character (a newline, a tab,
/// an escape) or a backslash becomes `\xNN`, as systemd-escape and udev
/// write them, so a name cannot forge a line or a terminal sequence, and
/// the name can be read back. Everything else is kept.
pub fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() || c == '\\' {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn render_mdstat(v: &MdstatView) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Personalities : [raid1] ");
    let state = if v.read_only {
        "active (read-only)"
    } else {
        "active"
    };
    let _ = write!(s, "{} : {} raid1", escape_name(&v.name), state);
    // md lists members newest first; show the highest slot first likewise.
    let mut legs = v.legs.clone();
    legs.sort_by_key(|l| std::cmp::Reverse(l.slot));
    for leg in &legs {
        let _ = write!(s, " {}[{}]", escape_name(&leg.name), leg.slot);
        // md_seq_show: (W), then (J), then (F) or (S).
        if leg.write_mostly {
            s.push_str("(W)");
        }
        if leg.volatile {
            s.push_str("(V)");
        }
        if leg.faulty {
            s.push_str("(F)");
        }
    }
    s.push('\n');
    let working = v.legs.iter().filter(|l| l.in_sync && !l.faulty).count();
    let mut flags = String::new();
    for slot in 0..v.raid_disks {
        let up = v
            .legs
            .iter()
            .any(|l| l.slot == slot && l.in_sync && !l.faulty);
        flags.push(if up { 'U' } else { '_' });
    }
    let _ = writeln!(
        s,
        "      {} blocks super 1.2 [{}/{}] [{}]",
        v.size_kib, v.raid_disks, working, flags
    );
    if let Some(sync) = &v.sync {
        let _ = writeln!(s, "      {}", progress_line(sync));
    }
    if let Some(b) = &v.bitmap {
        let kb = b.pages_used * 4;
        let (chunk, unit) = if b.chunk_bytes >= 1024 {
            (b.chunk_bytes >> 10, "KB")
        } else {
            (b.chunk_bytes, "B")
        };
        let _ = write!(
            s,
            "      bitmap: {}/{} pages [{}KB], {}{} chunk",
            b.pages_used, b.pages_total, kb, chunk, unit,
        );
        // An internal bitmap has no file (md prints none).
        if !b.file.is_empty() {
            let _ = write!(s, ", file: {}", escape_name(&b.file));
        }
        if let Some(note) = &b.note {
            let _ = write!(s, " ({})", escape_name(note));
        }
        s.push('\n');
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "unused devices: <none>");
    s
}

/// md's progress line: a 20-step bar, per-mille done, finish estimate, speed.
fn progress_line(p: &MdstatSync) -> String {
    let per_milli = (p.done_kib.min(p.total_kib) * 1000)
        .checked_div(p.total_kib)
        .unwrap_or(0) as usize;
    let filled = per_milli / 50;
    let bar: String = std::iter::repeat_n('=', filled)
        .chain(std::iter::once('>'))
        .chain(std::iter::repeat_n('.', 20 - filled))
        .collect();
    let remaining_s = (p.total_kib - p.done_kib.min(p.total_kib))
        .checked_div(p.speed_kib_per_s)
        .unwrap_or(0);
    format!(
        "[{bar}]  {} ={:>3}.{}% ({}/{}) finish={}.{}min speed={}K/sec",
        p.action,
        per_milli / 10,
        per_milli % 10,
        p.done_kib,
        p.total_kib,
        remaining_s / 60,
        (remaining_s % 60) / 6,
        p.speed_kib_per_s
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> MdstatView {
        MdstatView {
            name: "md0".into(),
            read_only: false,
            size_kib: 31744,
            raid_disks: 2,
            legs: vec![
                MdstatLeg {
                    name: "vda".into(),
                    slot: 0,
                    faulty: false,
                    in_sync: true,
                    volatile: false,
                    write_mostly: false,
                },
                MdstatLeg {
                    name: "vdb".into(),
                    slot: 1,
                    faulty: false,
                    in_sync: true,
                    volatile: false,
                    write_mostly: false,
                },
            ],
            bitmap: Some(MdstatBitmap {
                pages_used: 0,
                pages_total: 1,
                chunk_bytes: 65536,
                file: "/mnt/bm/md0.bitmap".into(),
                note: None,
            }),
            sync: None,
        }
    }

    #[test]
    fn matches_linux_md_for_a_clean_array() {
        // From the kernel-md fixture a-clean (guest's /proc/mdstat).
        let expected = "Personalities : [raid1] \n\
md0 : active raid1 vdb[1] vda[0]\n      31744 blocks super 1.2 [2/2] [UU]\n      \
bitmap: 0/1 pages [0KB], 64KB chunk, file: /mnt/bm/md0.bitmap\n\nunused devices: <none>\n";
        assert_eq!(render_mdstat(&view()), expected);
    }

    #[test]
    fn a_write_mostly_leg_is_marked_as_md_marks_it() {
        // md_seq_show prints (W) right after a write-mostly member's [N].
        let mut v = view();
        v.legs[1].write_mostly = true;
        let text = render_mdstat(&v);
        assert!(
            text.contains("md0 : active raid1 vdb[1](W) vda[0]\n"),
            "{text}"
        );
        assert!(text.contains("[2/2] [UU]"), "{text}");
    }

    #[test]
    fn names_cannot_forge_lines() {
        let mut v = view();
        v.name = "md0\nmd9 : active raid1 x[0]".into();
        v.legs[0].name = "a\tb\\c\u{1b}[2J\u{85}".into();
        v.bitmap.as_mut().unwrap().file = "/bm/x\ny".into();
        let text = render_mdstat(&v);
        assert_eq!(text.lines().count(), render_mdstat(&view()).lines().count());
        assert!(
            text.contains("md0\\x0amd9 : active raid1 x[0] : active raid1 vdb[1] a\\x09b\\x5cc\\x1b[2J\\xc2\\x85[0]"),
            "{text}"
        );
        assert!(text.contains("file: /bm/x\\x0ay"), "{text}");
        assert_eq!(escape_name("leg0.img"), "leg0.img");
        assert_eq!(escape_name("é ü"), "é ü");
    }

    #[test]
    fn degraded_and_recovering() {
        let mut v = view();
        v.legs[1].faulty = true;
        v.legs[1].in_sync = false;
        let text = render_mdstat(&v);
        assert!(text.contains("vdb[1](F) vda[0]"), "{text}");
        v.legs[1].volatile = true;
        let text = render_mdstat(&v);
        assert!(text.contains("vdb[1](V)(F) vda[0]"), "{text}");
        v.legs[1].write_mostly = true;
        let text = render_mdstat(&v);
        assert!(text.contains("vdb[1](W)(V)(F) vda[0]"), "{text}");
        v.legs[1].volatile = false;
        v.legs[1].write_mostly = false;
        assert!(text.contains("[2/1] [U_]"), "{text}");
        v.legs[1].faulty = false;
        v.sync = Some(MdstatSync {
            action: "recovery".into(),
            done_kib: 2688,
            total_kib: 31744,
            speed_kib_per_s: 2688,
        });
        let text = render_mdstat(&v);
        assert!(
            text.contains(
                "[=>...................]  recovery =  8.4% (2688/31744) finish=0.1min speed=2688K/sec"
            ),
            "{text}"
        );
    }
}
