//! Machine-readable renderings of `examine` and `examine-bitmap`: the same
//! facts as the text (same computations), as JSON objects with stable field
//! names (docs/json.md). Pure: structs in, values out.
//!
//! Sizes carry their unit in the name (`_sectors`, `_kib`, `_bytes`); times
//! are seconds since the epoch (UTC) with the text's rendering beside them;
//! a line the text leaves out is `null` here (or absent from a list).

use super::examine::{
    array_bytes, array_state, ctime_utc, device_role, format_uuid, level_name, unused_space,
};
use crate::format::bitmap::{count_dirty, dirty_chunks, BitmapSuper};
use crate::format::superblock::{
    Unverified, FEATURE_BAD_BLOCKS, FEATURE_BITMAP_OFFSET, FEATURE_NEW_OFFSET,
    FEATURE_RECOVERY_OFFSET, MAX_SECTOR,
};
use serde::Serialize;

/// The version of the JSON layouts; bumped only when a field changes
/// meaning or goes away (new fields may appear without a bump).
pub const JSON_FORMAT_VERSION: u32 = 1;

/// One leg's superblock, as `mdfuse examine --json` prints it.
#[derive(Debug, Serialize)]
pub struct ExamineJson {
    pub device: String,
    pub magic: String,
    pub version: String,
    pub feature_map: u32,
    pub array_uuid: String,
    pub name: String,
    pub creation_time: u64,
    pub creation_time_text: String,
    pub raid_level: String,
    pub raid_devices: u32,
    pub avail_dev_size_sectors: u64,
    pub array_size_kib: Option<u64>,
    pub used_dev_size_sectors: u64,
    pub data_offset_sectors: u64,
    pub super_offset_sectors: u64,
    pub recovery_offset_sectors: Option<u64>,
    pub new_offset_sectors: Option<u64>,
    pub unused_space_before_sectors: Option<u64>,
    pub unused_space_after_sectors: Option<u64>,
    /// "clean" or "active", as the text's State.
    pub state: String,
    /// Sectors from the data offset known in sync; null when clean.
    pub resync_offset_sectors: Option<u64>,
    pub device_uuid: String,
    pub internal_bitmap_sectors: Option<i32>,
    /// "write-mostly", "failfast".
    pub flags: Vec<String>,
    pub update_time: u64,
    pub update_time_text: String,
    /// The text's Bad Block Log line: entries available and their offset
    /// from the superblock; null when there is no log.
    pub bad_block_log_entries: Option<u32>,
    pub bad_block_log_offset_sectors: Option<i32>,
    pub bad_blocks_present: bool,
    pub checksum: String,
    pub checksum_expected: String,
    pub checksum_correct: bool,
    pub events: u64,
    pub dev_number: u32,
    /// The text's Device Role: "Active device N", "spare", ...
    pub device_role: String,
    /// The text's Array State: one character per slot.
    pub array_state: String,
    pub array_state_consistent: bool,
}

/// Builds the JSON of `mdadm --examine` for a superblock read from a device
/// of `device_sectors` sectors.
pub fn examine_json(device: &str, parsed: &Unverified, device_sectors: u64) -> ExamineJson {
    let sb = &parsed.superblock;
    let minor = match sb.super_offset {
        0..=4 => "1",
        5..=8 => "2",
        _ => "0",
    };
    let (before, after) = unused_space(sb, device_sectors);
    let unused = after != 1 && !sb.has_feature(FEATURE_NEW_OFFSET);
    let mut flags = Vec::new();
    if sb.is_write_mostly() {
        flags.push("write-mostly".to_string());
    }
    if sb.is_fail_fast() {
        flags.push("failfast".to_string());
    }
    let (state, inconsistent) = array_state(sb, 0);
    let bblog = sb.bblog_size != 0 && sb.bblog_offset != 0;
    ExamineJson {
        device: device.to_string(),
        magic: "a92b4efc".into(),
        version: format!("1.{minor}"),
        feature_map: sb.feature_map,
        array_uuid: format_uuid(&sb.set_uuid),
        name: sb.name(),
        creation_time: sb.ctime.seconds(),
        creation_time_text: ctime_utc(sb.ctime.seconds()),
        raid_level: level_name(sb.level).to_string(),
        raid_devices: sb.raid_disks,
        avail_dev_size_sectors: sb.data_size,
        array_size_kib: (sb.level > 0)
            .then(|| array_bytes(sb))
            .flatten()
            .map(|b| u64::try_from(b >> 10).unwrap_or(u64::MAX)),
        used_dev_size_sectors: sb.size,
        data_offset_sectors: sb.data_offset,
        super_offset_sectors: sb.super_offset,
        recovery_offset_sectors: sb
            .has_feature(FEATURE_RECOVERY_OFFSET)
            .then_some(sb.recovery_offset),
        new_offset_sectors: (sb.new_offset != 0 && sb.has_feature(FEATURE_NEW_OFFSET))
            .then(|| sb.data_offset.wrapping_add(i64::from(sb.new_offset) as u64)),
        unused_space_before_sectors: unused.then_some(before),
        unused_space_after_sectors: unused.then_some(after),
        state: if sb.resync_offset == MAX_SECTOR {
            "clean"
        } else {
            "active"
        }
        .into(),
        resync_offset_sectors: (sb.resync_offset != MAX_SECTOR).then_some(sb.resync_offset),
        device_uuid: format_uuid(&sb.device_uuid),
        internal_bitmap_sectors: sb
            .has_feature(FEATURE_BITMAP_OFFSET)
            .then_some(sb.bitmap_offset),
        flags,
        update_time: sb.utime.seconds(),
        update_time_text: ctime_utc(sb.utime.seconds()),
        bad_block_log_entries: bblog.then(|| u32::from(sb.bblog_size) * 512 / 8),
        bad_block_log_offset_sectors: bblog.then_some(sb.bblog_offset),
        bad_blocks_present: bblog && sb.has_feature(FEATURE_BAD_BLOCKS),
        checksum: format!("{:x}", parsed.stored_checksum),
        checksum_expected: format!("{:x}", parsed.computed_checksum),
        checksum_correct: parsed.checksum_ok(),
        events: sb.events,
        dev_number: sb.dev_number,
        device_role: device_role(sb),
        array_state: state,
        array_state_consistent: !inconsistent,
    }
}

/// A bitmap file, as `mdfuse examine-bitmap --json` prints it.
#[derive(Debug, Serialize)]
pub struct ExamineBitmapJson {
    pub filename: String,
    pub magic: String,
    pub version: u32,
    pub uuid: String,
    pub events: u64,
    pub events_cleared: u64,
    /// The text's State: "OK", "Out of date", "Unknown"; `state_bits` the raw field.
    pub state: String,
    pub state_bits: u32,
    pub chunksize_bytes: u32,
    pub daemon_sleep_seconds: u32,
    pub write_behind: u32,
    pub sync_size_kib: u64,
    /// Chunks the file holds bits for (the text's "N bits (chunks)").
    pub chunks: u64,
    pub dirty_chunks: u64,
    pub dirty_percent: f64,
    /// The dirty chunks' numbers, only when asked for (`--chunks`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty_chunk_list: Option<Vec<u64>>,
}

/// Builds the JSON of `mdadm --examine-bitmap FILE`; `bits` are the file's
/// bytes after its header (as `render_examine_bitmap` takes them).
pub fn examine_bitmap_json(
    filename: &str,
    sb: &BitmapSuper,
    bits: &[u8],
    list_chunks: bool,
) -> ExamineBitmapJson {
    let total = sb.chunks().min(bits.len() as u64 * 8);
    let dirty = count_dirty(bits, total);
    ExamineBitmapJson {
        filename: filename.to_string(),
        magic: format!("{:08x}", sb.magic),
        version: sb.version,
        uuid: format_uuid(&sb.uuid),
        events: sb.events,
        events_cleared: sb.events_cleared,
        state: super::examine_bitmap::state_name(sb.state).to_string(),
        state_bits: sb.state,
        chunksize_bytes: sb.chunksize,
        daemon_sleep_seconds: sb.daemon_sleep,
        write_behind: sb.write_behind,
        sync_size_kib: sb.sync_size / 2,
        chunks: total,
        dirty_chunks: dirty,
        dirty_percent: 100.0 * dirty as f64 / total.max(1) as f64,
        dirty_chunk_list: list_chunks.then(|| dirty_chunks(bits, total)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::superblock::{NewMember, Superblock};

    #[test]
    fn bitmap_fields_follow_the_header_and_bits() {
        let sb = BitmapSuper::new_for_array([7; 16], 2048 * 64, 64 << 10, 5, 10);
        // 128 chunks; chunks 0, 9 and 127 dirty.
        let mut bits = vec![0u8; 16];
        bits[0] = 1;
        bits[1] = 2;
        bits[15] = 0x80;
        let j = examine_bitmap_json("/x.bitmap", &sb, &bits, true);
        assert_eq!(j.chunks, 128);
        assert_eq!(j.dirty_chunks, 3);
        assert_eq!(j.dirty_chunk_list.as_deref(), Some(&[0, 9, 127][..]));
        assert_eq!(j.chunksize_bytes, 64 << 10);
        assert_eq!(j.sync_size_kib, 64 << 10);
        let v = serde_json::to_value(&j).unwrap();
        assert_eq!(v["uuid"], "07070707:07070707:07070707:07070707");
        let j = examine_bitmap_json("/x.bitmap", &sb, &bits, false);
        assert!(serde_json::to_value(&j)
            .unwrap()
            .get("dirty_chunk_list")
            .is_none());
    }

    #[test]
    fn a_clean_superblock_has_no_resync_offset() {
        let mut sb = Superblock::new_raid1_member(&NewMember {
            set_uuid: [1; 16],
            name: "x",
            raid_disks: 2,
            dev_number: 0,
            device_uuid: [2; 16],
            device_sectors: 1 << 16,
            array_sectors: 1 << 15,
            data_offset: None,
            ctime: Default::default(),
        })
        .expect("superblock");
        sb.resync_offset = MAX_SECTOR;
        let j = examine_json("/leg", &Unverified::from_verified(sb.clone()), 1 << 16);
        assert_eq!(j.state, "clean");
        assert_eq!(j.resync_offset_sectors, None);
        assert!(j.checksum_correct);
        sb.resync_offset = 0;
        let j = examine_json("/leg", &Unverified::from_verified(sb), 1 << 16);
        assert_eq!(
            (j.state.as_str(), j.resync_offset_sectors),
            ("active", Some(0))
        );
    }
}
