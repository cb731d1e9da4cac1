//! `mdadm --examine` of an md v1.x superblock, in mdadm 4.2's layout and words
//! (super1.c `examine_super1`, preceded by the "DEVICE:" line Examine.c prints).
//!
//! Times are printed in UTC in C `ctime()` form ("Wed Nov 25 04:09:31 2026"); mdadm uses
//! the local time zone, so the two agree when `TZ=UTC`.
//!
//! Not rendered (mdfuse never writes them; mdadm needs data we do not have): the internal
//! bitmap's size in "Unused Space" (it needs the bitmap superblock that follows the md
//! superblock), cluster names, and the "New Layout"/"Layout" lines of RAID4/5/6/10.

use super::human_size;
use crate::format::superblock::{
    DevRole, Superblock, Unverified, FEATURE_BAD_BLOCKS, FEATURE_BITMAP_OFFSET,
    FEATURE_MULTIPLE_PPLS, FEATURE_NEW_OFFSET, FEATURE_PPL, FEATURE_RECOVERY_OFFSET,
    FEATURE_REPLACEMENT, FEATURE_RESHAPE_ACTIVE, MAX_SECTOR, ROLE_FAULTY, ROLE_JOURNAL, ROLE_MAX,
    ROLE_SPARE,
};
use std::fmt::Write;

/// Array State positions printed at most (roles are u16 and slots are below 0xff00; a
/// corrupt raid_disks must not make us print billions of characters).
const MAX_STATE_POSITIONS: u64 = ROLE_MAX as u64;

/// Renders `mdadm --examine DEVICE` for a superblock read from a device of
/// `device_sectors` sectors. `homehost` adds mdadm's "(local to host H)" when the name
/// starts with "H:" (mdadm passes its configured or system host name).
pub fn render_examine(
    device_label: &str,
    parsed: &Unverified,
    device_sectors: u64,
    homehost: Option<&str>,
) -> String {
    let sb = &parsed.superblock;
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let o = &mut out;
    let _ = writeln!(o, "{device_label}:");
    let _ = writeln!(o, "          Magic : a92b4efc");
    let minor = match sb.super_offset {
        0..=4 => "1",
        5..=8 => "2",
        _ => "0",
    };
    let _ = writeln!(o, "        Version : 1.{minor}");
    let _ = writeln!(o, "    Feature Map : {:#x}", sb.feature_map);
    let _ = writeln!(o, "     Array UUID : {}", format_uuid(&sb.set_uuid));
    let name = sb.name();
    let _ = write!(o, "           Name : {name}");
    if let Some(host) = homehost {
        let local = !host.is_empty()
            && host.len() < 32
            && sb.set_name.get(host.len()) == Some(&b':')
            && sb.set_name.starts_with(host.as_bytes());
        if local {
            let _ = write!(o, "  (local to host {host})");
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "  Creation Time : {}", ctime_utc(sb.ctime.seconds()));
    let _ = writeln!(o, "     Raid Level : {}", level_name(sb.level));
    let _ = writeln!(o, "   Raid Devices : {}", sb.raid_disks as i32);
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        " Avail Dev Size : {} sectors{}",
        sb.data_size,
        human_size(u128::from(sb.data_size) << 9)
    );
    if sb.level > 0 {
        if let Some(bytes) = array_bytes(sb) {
            let _ = writeln!(
                o,
                "     Array Size : {} KiB{}",
                bytes >> 10,
                human_size(bytes)
            );
        }
        if sb.size != sb.data_size {
            let _ = writeln!(
                o,
                "  Used Dev Size : {} sectors{}",
                sb.size,
                human_size(u128::from(sb.size) << 9)
            );
        }
    }
    if sb.data_offset != 0 {
        let _ = writeln!(o, "    Data Offset : {} sectors", sb.data_offset);
    }
    if sb.new_offset != 0 && sb.has_feature(FEATURE_NEW_OFFSET) {
        let new = sb.data_offset.wrapping_add(i64::from(sb.new_offset) as u64);
        let _ = writeln!(o, "     New Offset : {new} sectors");
    }
    let _ = writeln!(o, "   Super Offset : {} sectors", sb.super_offset);
    if sb.has_feature(FEATURE_RECOVERY_OFFSET) {
        let _ = writeln!(o, "Recovery Offset : {} sectors", sb.recovery_offset);
    }
    let (before, after) = unused_space(sb, device_sectors);
    if after != 1 && !sb.has_feature(FEATURE_NEW_OFFSET) {
        let _ = writeln!(
            o,
            "   Unused Space : before={before} sectors, after={after} sectors"
        );
    }
    let state = if sb.resync_offset == MAX_SECTOR {
        "clean"
    } else {
        "active"
    };
    let _ = writeln!(o, "          State : {state}");
    let _ = writeln!(o, "    Device UUID : {}", format_uuid(&sb.device_uuid));
    let _ = writeln!(o);
    if sb.has_feature(FEATURE_BITMAP_OFFSET) {
        let _ = writeln!(
            o,
            "Internal Bitmap : {} sectors from superblock",
            sb.bitmap_offset
        );
    } else if sb.has_feature(FEATURE_PPL | FEATURE_MULTIPLE_PPLS) {
        let (offset, size) = sb.ppl();
        let _ = writeln!(
            o,
            "            PPL : {size} sectors at offset {} sectors from superblock",
            offset as u16
        );
    }
    let mut delta_extra: u64 = 0;
    if sb.has_feature(FEATURE_RESHAPE_ACTIVE) {
        let _ = writeln!(
            o,
            "  Reshape pos'n : {}{}",
            sb.reshape_position / 2,
            human_size(u128::from(sb.reshape_position) << 9)
        );
        if sb.delta_disks != 0 {
            let _ = writeln!(
                o,
                "  Delta Devices : {} ({}->{})",
                sb.delta_disks,
                (sb.raid_disks as i32).wrapping_sub(sb.delta_disks),
                sb.raid_disks as i32
            );
            if sb.delta_disks < 0 {
                delta_extra = u64::from(sb.delta_disks.unsigned_abs());
            }
        }
        if sb.new_level != sb.level {
            let _ = writeln!(o, "      New Level : {}", level_name(sb.new_level));
        }
        if sb.new_chunk != sb.chunksize {
            let _ = writeln!(o, "  New Chunksize : {}K", (sb.new_chunk as i32) / 2);
        }
        let _ = writeln!(o);
    }
    if sb.devflags != 0 {
        let _ = write!(o, "          Flags :");
        if sb.is_write_mostly() {
            let _ = write!(o, " write-mostly");
        }
        if sb.is_fail_fast() {
            let _ = write!(o, " failfast");
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "    Update Time : {}", ctime_utc(sb.utime.seconds()));
    if sb.bblog_size != 0 && sb.bblog_offset != 0 {
        let _ = write!(
            o,
            "  Bad Block Log : {} entries available at offset {} sectors",
            u32::from(sb.bblog_size) * 512 / 8,
            sb.bblog_offset
        );
        if sb.has_feature(FEATURE_BAD_BLOCKS) {
            let _ = write!(o, " - bad blocks present.");
        }
        let _ = writeln!(o);
    }
    if parsed.checksum_ok() {
        let _ = writeln!(
            o,
            "       Checksum : {:x} - correct",
            parsed.stored_checksum
        );
    } else {
        let _ = writeln!(
            o,
            "       Checksum : {:x} - expected {:x}",
            parsed.stored_checksum, parsed.computed_checksum
        );
    }
    let _ = writeln!(o, "         Events : {}", sb.events);
    let _ = writeln!(o);
    match sb.level {
        0 | 4 | 5 | 6 | 10 => {
            let _ = writeln!(o, "     Chunk Size : {}K", (sb.chunksize as i32) / 2);
        }
        -1 => {
            let _ = writeln!(o, "       Rounding : {}K", (sb.chunksize as i32) / 2);
        }
        _ => {}
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "   Device Role : {}", device_role(sb));
    let (state, inconsistent) = array_state(sb, delta_extra);
    let _ = writeln!(
        o,
        "   Array State : {state} ('A' == active, '.' == missing, 'R' == replacing)"
    );
    if inconsistent {
        let _ = writeln!(
            o,
            "WARNING Array state is inconsistent - each number should appear only once"
        );
        for (d, &role) in sb.dev_roles().iter().enumerate() {
            if role >= ROLE_FAULTY {
                let _ = write!(o, " {d}:-");
            } else {
                let _ = write!(o, " {d}:{role}");
            }
        }
        let _ = writeln!(o);
    }
    out
}

/// 16 bytes as mdadm prints UUIDs: four groups of 8 hex digits joined by ':'.
pub fn format_uuid(uuid: &[u8; 16]) -> String {
    let mut s = String::with_capacity(35);
    for (i, b) in uuid.iter().enumerate() {
        if i != 0 && i % 4 == 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// mdadm's personality names (`pers[]` in maps.c).
pub fn level_name(level: i32) -> &'static str {
    match level {
        -1 => "linear",
        0 => "raid0",
        1 => "raid1",
        4 => "raid4",
        5 => "raid5",
        6 => "raid6",
        10 => "raid10",
        -4 => "multipath",
        -5 => "faulty",
        -100 => "container",
        _ => "-unknown-",
    }
}

/// Bytes of array data, as mdadm computes "Array Size" (None if mdadm prints no line).
pub(crate) fn array_bytes(sb: &Superblock) -> Option<u128> {
    let raid_disks = i128::from(sb.raid_disks);
    let (data_disks, denominator): (i128, i128) = match sb.level {
        1 => (1, 1),
        4 | 5 => (raid_disks - 1, 1),
        6 => (raid_disks - 2, 1),
        10 => {
            let near = i128::from(sb.layout & 255);
            let far = i128::from((sb.layout >> 8) & 255);
            (raid_disks, near * far)
        }
        _ => (0, 1),
    };
    if data_disks <= 0 || denominator == 0 {
        return None;
    }
    let bytes = (i128::from(sb.size) << 9) * data_disks / denominator;
    u128::try_from(bytes).ok()
}

/// mdadm's "Unused Space" (super1.c getinfo_super1): sectors free before the data (after
/// the superblock, bad-block log and bitmap/PPL) and after the used part of the data.
/// Returns after = 1 when both are 0: mdadm's marker, and it then prints no line.
pub(crate) fn unused_space(sb: &Superblock, device_sectors: u64) -> (u64, u64) {
    let bitmap_offset = if sb.has_feature(FEATURE_BITMAP_OFFSET) {
        i64::from(sb.bitmap_offset)
    } else {
        0
    };
    let (ppl_offset, ppl_size) = if sb.has_feature(FEATURE_PPL | FEATURE_MULTIPLE_PPLS) {
        let (offset, size) = sb.ppl();
        (i64::from(offset), u64::from(size))
    } else {
        (0, 0)
    };
    let data_size = if sb.level <= 0 { sb.data_size } else { sb.size };
    let has_bblog = sb.bblog_offset != 0 && sb.bblog_size != 0;
    let before;
    let mut after;
    if sb.data_offset < sb.super_offset {
        // Metadata 1.0: superblock after the data.
        before = sb.data_offset;
        let mut end = sb.super_offset;
        if has_bblog {
            let bb = sb
                .super_offset
                .wrapping_add(i64::from(sb.bblog_offset) as u64);
            end = end.min(bb);
        }
        let meta = sb
            .super_offset
            .wrapping_add((bitmap_offset + ppl_offset) as u64);
        end = end.min(meta);
        after = if sb.data_offset.wrapping_add(data_size) < end {
            end.wrapping_sub(data_size).wrapping_sub(sb.data_offset)
        } else {
            0
        };
    } else {
        // Metadata 1.1/1.2: md keeps 36 KiB after the superblock start.
        let mut earliest = sb.super_offset.wrapping_add((32 + 4) * 2);
        if bitmap_offset > 0 {
            // mdadm adds the internal bitmap's size here; we do not have it (see top).
            earliest = earliest.max(bitmap_offset as u64);
        } else if ppl_offset > 0 {
            earliest = earliest.max(ppl_offset as u64 + ppl_size);
        }
        if has_bblog {
            let bb_end = sb
                .super_offset
                .wrapping_add(i64::from(sb.bblog_offset) as u64)
                .wrapping_add(u64::from(sb.bblog_size));
            earliest = earliest.max(bb_end);
        }
        before = sb.data_offset.saturating_sub(earliest);
        after = device_sectors
            .wrapping_sub(data_size)
            .wrapping_sub(sb.data_offset);
    }
    if DevRole::from_raw(own_raw_role(sb)) == DevRole::Journal {
        after = device_sectors.wrapping_sub(sb.data_offset) % 8;
    }
    if before == 0 && after == 0 {
        after = 1;
    }
    (before, after)
}

/// The raw role mdadm reads for this device (faulty when dev_number is out of range, as
/// getinfo_super1 does; examine's own role line uses spare instead, see `device_role`).
fn own_raw_role(sb: &Superblock) -> u16 {
    sb.dev_roles()
        .get(sb.dev_number as usize)
        .copied()
        .unwrap_or(ROLE_FAULTY)
}

pub(crate) fn device_role(sb: &Superblock) -> String {
    let role = sb
        .dev_roles()
        .get(sb.dev_number as usize)
        .copied()
        .unwrap_or(ROLE_SPARE);
    if role >= ROLE_FAULTY {
        "spare".to_string()
    } else if role == ROLE_JOURNAL {
        "Journal".to_string()
    } else if sb.has_feature(FEATURE_REPLACEMENT) {
        format!("Replacement device {role}")
    } else {
        format!("Active device {role}")
    }
}

/// mdadm's Array State string: per slot, 'A' one device, 'R' two (replacing), '.' none,
/// '?' more; and whether the role table is inconsistent.
pub(crate) fn array_state(sb: &Superblock, delta_extra: u64) -> (String, bool) {
    let mut count = vec![0u32; 1 << 16];
    for &role in sb.dev_roles() {
        count[usize::from(role)] += 1;
    }
    let positions = u64::from(sb.raid_disks) + delta_extra;
    let mut state = String::new();
    let mut inconsistent = false;
    for slot in 0..positions.min(MAX_STATE_POSITIONS) {
        match count[slot as usize] {
            2 if sb.level > 0 => state.push('R'),
            1 => state.push('A'),
            0 => state.push('.'),
            _ => {
                state.push('?');
                inconsistent = true;
            }
        }
    }
    if positions > MAX_STATE_POSITIONS {
        state.push_str("...");
    }
    // mdadm's check compares with '>' (a role equal to raid_disks passes): kept as is.
    if sb
        .dev_roles()
        .iter()
        .any(|&r| r <= ROLE_MAX && u64::from(r) > positions)
    {
        inconsistent = true;
    }
    (state, inconsistent)
}

/// C `ctime()` without the newline, in UTC: "Wed Nov 25 04:09:31 2026".
pub fn ctime_utc(seconds: u64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = seconds / 86_400;
    let rem = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        year
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic Gregorian
/// (the era arithmetic of H. Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::superblock::fixtures::fixture_leg_superblock;
    use crate::format::superblock::{MdTime, NewMember, MD_MAGIC};
    use proptest::prelude::*;

    /// The `mdadm -E /dev/vdX` text of a fixture's MANIFEST "final on-disk state" section,
    /// without the two-space indent.
    fn manifest_examine(set: &str, device: &str) -> String {
        let path = format!(
            "{}/../shared/fixtures/kernel-md/{set}/MANIFEST",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("read MANIFEST");
        let header = format!("== final on-disk state: mdadm -E {device} ");
        let start = text.find(&header).expect("examine section");
        let body = &text[start..];
        let body = &body[body.find('\n').expect("header line") + 1..];
        let end = body.find("\n==").unwrap_or(body.len());
        body[..end]
            .lines()
            .map(|l| l.strip_prefix("  ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }

    #[test]
    fn fixtures_render_exactly_as_mdadm_printed() {
        // The guest ran in UTC, so even the time lines match.
        for set in ["a-clean", "b-degraded-dirty"] {
            for (leg, device) in [("leg0", "/dev/vda"), ("leg1", "/dev/vdb")] {
                let raw = fixture_leg_superblock(set, leg);
                let parsed = Superblock::parse_unverified(&raw).unwrap();
                assert!(parsed.checksum_ok());
                let ours = render_examine(device, &parsed, 65536, Some("kmdrig"));
                assert_eq!(ours, manifest_examine(set, device), "{set} {leg}");
            }
        }
    }

    #[test]
    fn bad_checksum_says_expected() {
        let raw = fixture_leg_superblock("a-clean", "leg0");
        let mut bytes = raw.clone();
        bytes[200] ^= 1; // events
        let parsed = Superblock::parse_unverified(&bytes).unwrap();
        let text = render_examine("leg", &parsed, 65536, None);
        assert!(text.contains("       Checksum : 7491d75b - expected 7491d75c\n"));
        assert!(text.contains("           Name : kmdrig:fixture\n"));
        assert!(text.contains("         Events : 3\n"));
    }

    #[test]
    fn helpers_match_c() {
        assert_eq!(ctime_utc(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(ctime_utc(0x6b06_5f7b), "Wed Nov 25 04:09:31 2026");
        assert_eq!(ctime_utc(951_782_400), "Tue Feb 29 00:00:00 2000");
        assert_eq!(human_size(4096), "");
        assert_eq!(human_size(63488 << 9), " (31.00 MiB 32.51 MB)");
        assert_eq!(human_size(1 << 40), " (1024.00 GiB 1099.51 GB)");
        assert_eq!(human_size(4 << 40), " (4.00 TiB 4.40 TB)");
        assert_eq!(
            format_uuid(&[
                0xf7, 0x74, 0xb9, 0xb4, 0x92, 0x94, 0x33, 0x91, 0x34, 0x99, 0x95, 0x82, 0x0b, 0x47,
                0xed, 0xc5
            ]),
            "f774b9b4:92943391:34999582:0b47edc5"
        );
    }

    #[test]
    fn roles_and_state_lines() {
        let mut sb = Superblock::new_raid1_member(&NewMember {
            set_uuid: [1; 16],
            name: "h:n",
            raid_disks: 3,
            dev_number: 2,
            device_uuid: [2; 16],
            device_sectors: 131072,
            array_sectors: 129024,
            data_offset: None,
            ctime: MdTime::from_parts(0, 0),
        })
        .unwrap();
        sb.set_role(1, DevRole::Faulty).unwrap();
        sb.resync_offset = 0;
        let text = render_examine("x", &Unverified::from_verified(sb.clone()), 131072, None);
        assert!(
            text.contains("   Device Role : Active device 2\n"),
            "{text}"
        );
        assert!(text.contains("   Array State : A.A ("), "{text}");
        assert!(text.contains("          State : active\n"));
        assert!(text.contains("           Name : h:n\n"));
        sb.set_role(2, DevRole::Spare).unwrap();
        sb.set_role(5, DevRole::Active(0)).unwrap();
        let text = render_examine("x", &Unverified::from_verified(sb), 131072, Some("h"));
        assert!(text.contains("   Device Role : spare\n"), "{text}");
        assert!(text.contains("   Array State : R.. ("), "{text}");
        assert!(text.contains("           Name : h:n  (local to host h)\n"));
    }

    #[test]
    fn garbage_superblocks_render_without_panicking() {
        let mut sb = Superblock::new_raid1_member(&NewMember {
            set_uuid: [1; 16],
            name: "n",
            raid_disks: 2,
            dev_number: 0,
            device_uuid: [2; 16],
            device_sectors: 65536,
            array_sectors: 63488,
            data_offset: None,
            ctime: MdTime(u64::MAX),
        })
        .unwrap();
        sb.raid_disks = u32::MAX;
        sb.level = 10;
        sb.layout = 0;
        sb.size = u64::MAX;
        sb.data_offset = u64::MAX;
        sb.feature_map = u32::MAX;
        sb.delta_disks = i32::MIN;
        sb.utime = MdTime(u64::MAX);
        let text = render_examine("x", &Unverified::from_verified(sb), 0, Some(""));
        assert!(text.contains("Array State"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any block that passes the examine-level checks renders without panicking.
        #[test]
        fn any_readable_block_renders(
            mut bytes in proptest::collection::vec(any::<u8>(), 4096),
            max_dev in 0u32..=1920,
            device_sectors in any::<u64>(),
        ) {
            bytes[0..4].copy_from_slice(&MD_MAGIC.to_le_bytes());
            bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
            bytes[220..224].copy_from_slice(&max_dev.to_le_bytes());
            let parsed = Superblock::parse_unverified(&bytes).unwrap();
            let text = render_examine("dev", &parsed, device_sectors, Some("h"));
            prop_assert!(text.starts_with("dev:\n"));
            prop_assert!(text.contains("   Array State : "));
        }
    }
}
