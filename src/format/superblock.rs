//! The md version-1 superblock (`struct mdp_superblock_1`, kernel
//! `include/uapi/linux/raid/md_p.h`), as Linux md and mdadm 4.2 read and write it.
//!
//! Metadata 1.2 puts it 4 KiB (8 sectors) from the start of each leg. All integers are
//! little-endian. Byte layout:
//!
//! | offset | size | field                | notes                                              |
//! |-------:|-----:|----------------------|----------------------------------------------------|
//! |      0 |    4 | magic                | 0xa92b4efc                                         |
//! |      4 |    4 | major_version        | 1                                                  |
//! |      8 |    4 | feature_map          | `FEATURE_*` bits                                   |
//! |     12 |    4 | pad0                 | must be 0 (the kernel refuses the leg otherwise)   |
//! |     16 |   16 | set_uuid             | array UUID                                         |
//! |     32 |   32 | set_name             | NUL-padded, mdadm stores "homehost:name"           |
//! |     64 |    8 | ctime                | low 40 bits seconds, high 24 bits microseconds     |
//! |     72 |    4 | level                | signed; 1 = raid1                                  |
//! |     76 |    4 | layout               |                                                    |
//! |     80 |    8 | size                 | sectors of each leg used by the array              |
//! |     88 |    4 | chunksize            | sectors                                            |
//! |     92 |    4 | raid_disks           |                                                    |
//! |     96 |    4 | bitmap_offset        | signed sectors from the superblock; or ppl offset(i16)+size(u16) |
//! |    100 |    4 | new_level            | reshape (feature bit 4) only                       |
//! |    104 |    8 | reshape_position     |                                                    |
//! |    112 |    4 | delta_disks          |                                                    |
//! |    116 |    4 | new_layout           |                                                    |
//! |    120 |    4 | new_chunk            |                                                    |
//! |    124 |    4 | new_offset           | signed                                             |
//! |    128 |    8 | data_offset          | sectors from device start                          |
//! |    136 |    8 | data_size            | sectors usable for data                            |
//! |    144 |    8 | super_offset         | sectors from device start (8 for 1.2)              |
//! |    152 |    8 | recovery_offset      | (journal_tail on a journal device)                 |
//! |    160 |    4 | dev_number           | index into dev_roles, not the role                 |
//! |    164 |    4 | cnt_corrected_read   |                                                    |
//! |    168 |   16 | device_uuid          |                                                    |
//! |    184 |    1 | devflags             | `DEVFLAG_*`                                        |
//! |    185 |    1 | bblog_shift          |                                                    |
//! |    186 |    2 | bblog_size           | sectors                                            |
//! |    188 |    4 | bblog_offset         | signed sectors from the superblock                 |
//! |    192 |    8 | utime                | as ctime                                           |
//! |    200 |    8 | events               |                                                    |
//! |    208 |    8 | resync_offset        | `MAX_SECTOR` = clean / in sync                     |
//! |    216 |    4 | sb_csum              | see [`checksum_of`]                                |
//! |    220 |    4 | max_dev              | entries of dev_roles, at most 1920                 |
//! |    224 |   32 | pad3                 | must be 0                                          |
//! |    256 | 2*max_dev | dev_roles        | u16 per dev_number: slot, or 0xffff/0xfffe/0xfffd  |
//!
//! The checksum covers bytes `0 .. 256 + 2*max_dev` (see [`checksum_of`]); the rest of the
//! 4 KiB block is not part of the superblock and is written as zeroes.
//!
//! How md keeps the state fields (kernel md.c, 6.1), which the array layer follows:
//! - `events` goes up by one on every superblock update (start, dirty<->clean, member
//!   failed/removed/added, stop); md may step back by one on a clean transition of a
//!   non-degraded array, an optimisation mdfuse need not copy. On assembly a member whose
//!   events is more than one behind the newest is stale.
//! - `resync_offset` is [`MAX_SECTOR`] while the array is in sync and idle ("clean"). Before
//!   the first write after clean md writes every superblock with `resync_offset = 0`
//!   ("active") and waits for it; after ~200 ms without writes (safe_mode_delay) and on a
//!   clean stop it writes `MAX_SECTOR` again. Any other value is a resync resume point.
//! - A failed member's superblock is no longer written: it keeps its old events and roles.
//!   The others record it as faulty (0xfffe) while it is still attached and as spare
//!   (0xffff, "empty") once removed.

use thiserror::Error;

/// `MD_SB_MAGIC`.
pub const MD_MAGIC: u32 = 0xa92b_4efc;
/// md's "no sector" / "everything" value (`MaxSector`): `resync_offset` holds it when the
/// array is clean.
pub const MAX_SECTOR: u64 = u64::MAX;
/// Size of the fixed part, before `dev_roles`.
pub const SB_FIXED_BYTES: usize = 256;
/// Size of the block read and written for the superblock (the kernel reads 4 KiB).
pub const SB_BLOCK_BYTES: usize = 4096;
/// Largest `max_dev` md accepts: the roles must fit in the 4 KiB block.
pub const MAX_DEV_LIMIT: u32 = ((SB_BLOCK_BYTES - SB_FIXED_BYTES) / 2) as u32;
/// Metadata 1.2: the superblock is 8 sectors (4 KiB) from the start of the device.
pub const SUPER_OFFSET_V1_2: u64 = 8;
/// Metadata 1.1: the superblock is at sector 0.
pub const SUPER_OFFSET_V1_1: u64 = 0;

/// Where a metadata 1.x superblock sits on its device (md's minor version).
/// md (kernel `super_1_load`) and mdadm (super1.c `load_super1`) compute the
/// place the same way: 1.0 at least 8 KiB and less than 12 KiB before the
/// device's end, on a 4 KiB boundary; 1.1 at sector 0; 1.2 at sector 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetadataVersion {
    V1_0,
    V1_1,
    V1_2,
}

impl MetadataVersion {
    /// In mdadm's probing order (minor 0, 1, 2).
    pub const ALL: [MetadataVersion; 3] = [
        MetadataVersion::V1_0,
        MetadataVersion::V1_1,
        MetadataVersion::V1_2,
    ];

    /// "1.0", "1.1" or "1.2", as mdadm names them.
    pub fn name(self) -> &'static str {
        match self {
            MetadataVersion::V1_0 => "1.0",
            MetadataVersion::V1_1 => "1.1",
            MetadataVersion::V1_2 => "1.2",
        }
    }

    /// The superblock's sector on a device of `device_sectors`:
    /// `(device_sectors - 8*2) & ~(4*2-1)` for 1.0, 0 for 1.1, 8 for 1.2.
    /// `None` for 1.0 on a device of fewer than 16 sectors (no place).
    pub fn super_offset(self, device_sectors: u64) -> Option<u64> {
        match self {
            MetadataVersion::V1_0 => device_sectors.checked_sub(8 * 2).map(|s| s & !(4 * 2 - 1)),
            MetadataVersion::V1_1 => Some(SUPER_OFFSET_V1_1),
            MetadataVersion::V1_2 => Some(SUPER_OFFSET_V1_2),
        }
    }

    /// The version whose place on a device of `device_sectors` is
    /// `super_offset`, if any.
    pub fn at(super_offset: u64, device_sectors: u64) -> Option<MetadataVersion> {
        Self::ALL
            .into_iter()
            .find(|v| v.super_offset(device_sectors) == Some(super_offset))
    }

    /// The version a superblock's own super_offset names, by mdadm's rule
    /// (`examine_super1`: up to 4 is 1.1, up to 8 is 1.2, beyond is 1.0).
    pub fn of_super_offset(super_offset: u64) -> MetadataVersion {
        match super_offset {
            0..=4 => MetadataVersion::V1_1,
            5..=8 => MetadataVersion::V1_2,
            _ => MetadataVersion::V1_0,
        }
    }

    /// The data lies after the superblock (1.1, 1.2), not before it (1.0).
    pub fn data_after_superblock(self) -> bool {
        self != MetadataVersion::V1_0
    }
}

impl std::fmt::Display for MetadataVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MetadataVersion {
    type Err = String;

    /// mdadm's spellings (`match_metadata_desc1`): 1.0/1.00, 1.1/1.01, 1.2/1.02.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim_start_matches('0') {
            "1.0" | "1.00" => Ok(MetadataVersion::V1_0),
            "1.1" | "1.01" => Ok(MetadataVersion::V1_1),
            "1.2" | "1.02" | "default" => Ok(MetadataVersion::V1_2),
            "0.90" | ".90" | ".9" => Err(format!(
                "{s}: metadata 0.90 is not written by mdfuse (md's old format, limited to 2 TiB \
                 legs); use 1.0 for a superblock at the end of the leg"
            )),
            _ => Err(format!("{s}: metadata 1.0, 1.1 or 1.2")),
        }
    }
}
/// `level` value for RAID1.
pub const LEVEL_RAID1: i32 = 1;

/// `feature_map` bits (kernel md_p.h).
pub const FEATURE_BITMAP_OFFSET: u32 = 1;
pub const FEATURE_RECOVERY_OFFSET: u32 = 2;
pub const FEATURE_RESHAPE_ACTIVE: u32 = 4;
pub const FEATURE_BAD_BLOCKS: u32 = 8;
pub const FEATURE_REPLACEMENT: u32 = 16;
pub const FEATURE_RESHAPE_BACKWARDS: u32 = 32;
pub const FEATURE_NEW_OFFSET: u32 = 64;
pub const FEATURE_RECOVERY_BITMAP: u32 = 128;
/// Kernel name; mdadm 4.2 calls this bit `MD_FEATURE_BITMAP_VERSIONED`.
pub const FEATURE_CLUSTERED: u32 = 256;
pub const FEATURE_JOURNAL: u32 = 512;
pub const FEATURE_PPL: u32 = 1024;
pub const FEATURE_MULTIPLE_PPLS: u32 = 2048;
pub const FEATURE_RAID0_LAYOUT: u32 = 4096;
/// Every bit the kernel knows; it refuses a superblock with any other bit set.
pub const FEATURE_ALL: u32 = 0x1fff;

/// `devflags` bits.
pub const DEVFLAG_WRITE_MOSTLY: u8 = 1;
pub const DEVFLAG_FAIL_FAST: u8 = 2;

/// `dev_roles` special values (`MD_DISK_ROLE_*`).
pub const ROLE_SPARE: u16 = 0xffff;
pub const ROLE_FAULTY: u16 = 0xfffe;
pub const ROLE_JOURNAL: u16 = 0xfffd;
/// Roles below this are slot numbers (`MD_DISK_ROLE_MAX`).
pub const ROLE_MAX: u16 = 0xff00;

// Field offsets inside the superblock.
const OFF_MAGIC: usize = 0;
const OFF_MAJOR: usize = 4;
const OFF_FEATURE_MAP: usize = 8;
const OFF_PAD0: usize = 12;
const OFF_SET_UUID: usize = 16;
const OFF_SET_NAME: usize = 32;
const OFF_CTIME: usize = 64;
const OFF_LEVEL: usize = 72;
const OFF_LAYOUT: usize = 76;
const OFF_SIZE: usize = 80;
const OFF_CHUNKSIZE: usize = 88;
const OFF_RAID_DISKS: usize = 92;
const OFF_BITMAP_OFFSET: usize = 96;
const OFF_NEW_LEVEL: usize = 100;
const OFF_RESHAPE_POSITION: usize = 104;
const OFF_DELTA_DISKS: usize = 112;
const OFF_NEW_LAYOUT: usize = 116;
const OFF_NEW_CHUNK: usize = 120;
const OFF_NEW_OFFSET: usize = 124;
const OFF_DATA_OFFSET: usize = 128;
const OFF_DATA_SIZE: usize = 136;
const OFF_SUPER_OFFSET: usize = 144;
const OFF_RECOVERY_OFFSET: usize = 152;
const OFF_DEV_NUMBER: usize = 160;
const OFF_CNT_CORRECTED_READ: usize = 164;
const OFF_DEVICE_UUID: usize = 168;
const OFF_DEVFLAGS: usize = 184;
const OFF_BBLOG_SHIFT: usize = 185;
const OFF_BBLOG_SIZE: usize = 186;
const OFF_BBLOG_OFFSET: usize = 188;
const OFF_UTIME: usize = 192;
const OFF_EVENTS: usize = 200;
const OFF_RESYNC_OFFSET: usize = 208;
const OFF_SB_CSUM: usize = 216;
const OFF_MAX_DEV: usize = 220;
const OFF_PAD3: usize = 224;
const PAD3_LEN: usize = 32;

/// A time as md stores it: low 40 bits seconds since the epoch, high 24 bits microseconds
/// (mdadm writes 0 microseconds; the kernel writes whole seconds too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MdTime(pub u64);

impl MdTime {
    const SECONDS_MASK: u64 = (1 << 40) - 1;

    /// Packs seconds (low 40 bits kept) and microseconds (low 24 bits kept).
    pub fn from_parts(seconds: u64, micros: u32) -> MdTime {
        MdTime((seconds & Self::SECONDS_MASK) | (u64::from(micros & 0xff_ffff) << 40))
    }
    pub fn seconds(self) -> u64 {
        self.0 & Self::SECONDS_MASK
    }
    pub fn micros(self) -> u32 {
        (self.0 >> 40) as u32
    }
}

/// What a `dev_roles` entry says about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevRole {
    /// In the array at this slot (a replacement, if the device's superblock has
    /// [`FEATURE_REPLACEMENT`], also shows its slot here).
    Active(u16),
    Spare,
    Faulty,
    Journal,
    /// A value between `ROLE_MAX` and the special values: md gives it no meaning.
    Reserved(u16),
}

impl DevRole {
    pub fn from_raw(raw: u16) -> DevRole {
        match raw {
            ROLE_SPARE => DevRole::Spare,
            ROLE_FAULTY => DevRole::Faulty,
            ROLE_JOURNAL => DevRole::Journal,
            r if r < ROLE_MAX => DevRole::Active(r),
            r => DevRole::Reserved(r),
        }
    }

    /// The on-disk value. `Active(n)` with `n >= ROLE_MAX` cannot be stored; it maps to
    /// spare rather than to a special value ([`Superblock::set_role`] refuses it first).
    pub fn to_raw(self) -> u16 {
        match self {
            DevRole::Active(slot) if slot < ROLE_MAX => slot,
            DevRole::Active(_) | DevRole::Spare => ROLE_SPARE,
            DevRole::Faulty => ROLE_FAULTY,
            DevRole::Journal => ROLE_JOURNAL,
            DevRole::Reserved(raw) => raw,
        }
    }
}

/// Why bytes are not an md v1 superblock we accept. The caller adds which leg it read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SuperblockError {
    #[error("superblock buffer holds {got} bytes but {needed} are needed")]
    Truncated { needed: usize, got: usize },
    #[error("no md superblock: magic is {found:#010x}, md v1 uses 0xa92b4efc")]
    BadMagic { found: u32 },
    #[error(
        "md superblock major version {found} is not supported (mdfuse reads metadata 1.x; \
         major version 0 is metadata 0.90)"
    )]
    BadVersion { found: u32 },
    #[error("superblock max_dev {max_dev} exceeds md's limit of {MAX_DEV_LIMIT} roles")]
    TooManyRoles { max_dev: u32 },
    #[error(
        "superblock checksum is wrong: stored {stored:#010x}, computed {computed:#010x} \
         (corrupt or partially written; `mdadm --examine` shows the same)"
    )]
    BadChecksum { stored: u32, computed: u32 },
    #[error(
        "superblock uses feature bits {bits:#x} that md does not know; \
         Linux md would refuse this device"
    )]
    UnknownFeatures { bits: u32 },
    #[error("superblock reserved bytes at offset {offset} are not zero; Linux md would refuse it")]
    NonZeroPadding { offset: usize },
    #[error(
        "the md superblock read at sector {read_at} says super_offset {super_offset}: a \
         superblock must name the sector it sits at (md and mdadm refuse one that names \
         another place, and its updates would be written there)"
    )]
    Misplaced { read_at: u64, super_offset: u64 },
    #[error(
        "it holds a metadata 0.90 superblock (magic a92b4efc, major version 0) at sector \
         {at}; mdfuse serves metadata 1.0, 1.1 and 1.2 only. What to do: convert the array \
         to metadata 1.0 with Linux md (`mdadm --assemble /dev/mdX --update=metadata LEG...`, \
         then stop it), or assemble it with Linux md"
    )]
    Version0_90 { at: u64 },
}

/// Why a superblock cannot be built or does not fit the device.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GeometryError {
    #[error("array name {name:?} is {len} bytes; md stores at most 31 (plus a NUL)")]
    NameTooLong { name: String, len: usize },
    #[error("array name {name:?} contains a NUL byte")]
    NameHasNul { name: String },
    #[error("raid_disks {raid_disks} must be between 1 and {MAX_DEV_LIMIT}")]
    BadRaidDisks { raid_disks: u32 },
    #[error("dev_number {dev_number} is outside 0..{limit}")]
    BadDevNumber { dev_number: u32, limit: u32 },
    #[error("active slot {slot} is not below md's role limit {ROLE_MAX:#x}")]
    BadSlot { slot: u16 },
    #[error(
        "device of {device_sectors} sectors is too small: needs data_offset {data_offset} \
         + {needed_data} data sectors; use a leg of at least {min} sectors"
    )]
    DeviceTooSmall {
        device_sectors: u64,
        data_offset: u64,
        needed_data: u64,
        min: u64,
    },
    #[error("data_offset {data_offset} overlaps the superblock (must be at least {min})")]
    DataOffsetTooSmall { data_offset: u64, min: u64 },
    #[error(
        "super_offset is {found} sectors, where no metadata 1.x keeps a superblock on a \
         device of {device_sectors} sectors"
    )]
    BadSuperOffset { found: u64, device_sectors: u64 },
    #[error("array size {size} sectors exceeds the leg's data_size {data_size}")]
    SizeExceedsData { size: u64, data_size: u64 },
    #[error("data_size {data_size} sectors is below md's minimum of 10")]
    DataTooSmall { data_size: u64 },
    #[error(
        "no room for an internal bitmap: it needs {needed} sectors beside the superblock \
         and only {room} are free"
    )]
    NoBitmapRoom { needed: u64, room: u64 },
    #[error(
        "bitmap chunk {chunk} bytes is too small for an internal bitmap of this array: \
         at least {min} (mdadm's limit for the space it keeps)"
    )]
    BitmapChunkTooSmall { chunk: u64, min: u64 },
}

/// `struct mdp_superblock_1`. Two fields are derived rather than stored: `max_dev` is
/// `dev_roles().len()` and `sb_csum` is computed by [`Superblock::to_bytes`] (the stored
/// value of a parsed block is checked by [`Superblock::parse`] or reported by
/// [`Superblock::parse_unverified`]). The padding fields are always zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub feature_map: u32,
    pub set_uuid: [u8; 16],
    /// NUL-padded; mdadm stores "homehost:name".
    pub set_name: [u8; 32],
    pub ctime: MdTime,
    pub level: i32,
    pub layout: u32,
    /// Sectors of each leg used by the array (for RAID1: the array size).
    pub size: u64,
    pub chunksize: u32,
    pub raid_disks: u32,
    /// Signed sectors from the superblock to an internal bitmap (feature bit 1); shares its
    /// bytes with the PPL offset/size.
    pub bitmap_offset: i32,
    pub new_level: i32,
    pub reshape_position: u64,
    pub delta_disks: i32,
    pub new_layout: u32,
    pub new_chunk: u32,
    pub new_offset: i32,
    pub data_offset: u64,
    pub data_size: u64,
    pub super_offset: u64,
    /// `journal_tail` on a journal device.
    pub recovery_offset: u64,
    pub dev_number: u32,
    pub cnt_corrected_read: u32,
    pub device_uuid: [u8; 16],
    pub devflags: u8,
    pub bblog_shift: u8,
    pub bblog_size: u16,
    /// Signed sectors from the superblock to the bad-block log.
    pub bblog_offset: i32,
    pub utime: MdTime,
    pub events: u64,
    /// Sectors from data_offset known in sync; [`MAX_SECTOR`] when clean.
    pub resync_offset: u64,
    dev_roles: Vec<u16>,
}

/// A superblock read without insisting on its checksum, for `examine`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub superblock: Superblock,
    pub stored_checksum: u32,
    pub computed_checksum: u32,
}

impl Unverified {
    /// A superblock already verified (or built by us): its checksum is by construction
    /// the one `to_bytes` stores.
    pub fn from_verified(superblock: Superblock) -> Unverified {
        let checksum = superblock.checksum();
        Unverified {
            superblock,
            stored_checksum: checksum,
            computed_checksum: checksum,
        }
    }

    pub fn checksum_ok(&self) -> bool {
        self.stored_checksum == self.computed_checksum
    }
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
fn arr16(b: &[u8], off: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    a
}

/// md's checksum (kernel `calc_sb_1_csum`) over a raw superblock: the little-endian u32
/// words of bytes `0 .. 256 + 2*max_dev` with `sb_csum` counted as 0, a trailing u16 if
/// `max_dev` is odd, summed in 64 bits and folded once: `(sum & 0xffffffff) + (sum >> 32)`.
/// `None` if the buffer is shorter than that or `max_dev` exceeds md's limit.
pub fn checksum_of(bytes: &[u8]) -> Option<u32> {
    if bytes.len() < SB_FIXED_BYTES {
        return None;
    }
    let max_dev = le32(bytes, OFF_MAX_DEV);
    if max_dev > MAX_DEV_LIMIT {
        return None;
    }
    let len = SB_FIXED_BYTES + 2 * max_dev as usize;
    if bytes.len() < len {
        return None;
    }
    let covered = &bytes[..len];
    let mut sum: u64 = 0;
    let mut words = covered.chunks_exact(4);
    for (i, word) in words.by_ref().enumerate() {
        if i * 4 != OFF_SB_CSUM {
            sum += u64::from(u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
        }
    }
    let rest = words.remainder();
    if rest.len() == 2 {
        sum += u64::from(u16::from_le_bytes([rest[0], rest[1]]));
    }
    // The fold is done once, as md does; the result is truncated to 32 bits.
    Some(((sum & 0xffff_ffff) + (sum >> 32)) as u32)
}

impl Superblock {
    /// Reads a superblock as Linux md accepts it: magic, version 1, `max_dev` within the
    /// buffer and md's limit, checksum, known feature bits, zero padding.
    pub fn parse(bytes: &[u8]) -> Result<Superblock, SuperblockError> {
        let unverified = Self::parse_unverified(bytes)?;
        if !unverified.checksum_ok() {
            return Err(SuperblockError::BadChecksum {
                stored: unverified.stored_checksum,
                computed: unverified.computed_checksum,
            });
        }
        let unknown = unverified.superblock.feature_map & !FEATURE_ALL;
        if unknown != 0 {
            return Err(SuperblockError::UnknownFeatures { bits: unknown });
        }
        if le32(bytes, OFF_PAD0) != 0 {
            return Err(SuperblockError::NonZeroPadding { offset: OFF_PAD0 });
        }
        if let Some(i) = bytes[OFF_PAD3..OFF_PAD3 + PAD3_LEN]
            .iter()
            .position(|&b| b != 0)
        {
            return Err(SuperblockError::NonZeroPadding {
                offset: OFF_PAD3 + i,
            });
        }
        Ok(unverified.superblock)
    }

    /// Reads a superblock the way `mdadm --examine` does: magic, version and size are
    /// checked, the checksum is reported rather than enforced, padding and unknown
    /// feature bits are ignored.
    pub fn parse_unverified(bytes: &[u8]) -> Result<Unverified, SuperblockError> {
        if bytes.len() < SB_FIXED_BYTES {
            return Err(SuperblockError::Truncated {
                needed: SB_FIXED_BYTES,
                got: bytes.len(),
            });
        }
        let magic = le32(bytes, OFF_MAGIC);
        if magic != MD_MAGIC {
            return Err(SuperblockError::BadMagic { found: magic });
        }
        let major = le32(bytes, OFF_MAJOR);
        if major != 1 {
            return Err(SuperblockError::BadVersion { found: major });
        }
        let max_dev = le32(bytes, OFF_MAX_DEV);
        if max_dev > MAX_DEV_LIMIT {
            return Err(SuperblockError::TooManyRoles { max_dev });
        }
        let needed = SB_FIXED_BYTES + 2 * max_dev as usize;
        if bytes.len() < needed {
            return Err(SuperblockError::Truncated {
                needed,
                got: bytes.len(),
            });
        }
        let computed_checksum = checksum_of(bytes).ok_or(SuperblockError::Truncated {
            needed,
            got: bytes.len(),
        })?;
        let mut set_name = [0u8; 32];
        set_name.copy_from_slice(&bytes[OFF_SET_NAME..OFF_SET_NAME + 32]);
        let dev_roles = (0..max_dev as usize)
            .map(|i| le16(bytes, SB_FIXED_BYTES + 2 * i))
            .collect();
        let superblock = Superblock {
            feature_map: le32(bytes, OFF_FEATURE_MAP),
            set_uuid: arr16(bytes, OFF_SET_UUID),
            set_name,
            ctime: MdTime(le64(bytes, OFF_CTIME)),
            level: le32(bytes, OFF_LEVEL) as i32,
            layout: le32(bytes, OFF_LAYOUT),
            size: le64(bytes, OFF_SIZE),
            chunksize: le32(bytes, OFF_CHUNKSIZE),
            raid_disks: le32(bytes, OFF_RAID_DISKS),
            bitmap_offset: le32(bytes, OFF_BITMAP_OFFSET) as i32,
            new_level: le32(bytes, OFF_NEW_LEVEL) as i32,
            reshape_position: le64(bytes, OFF_RESHAPE_POSITION),
            delta_disks: le32(bytes, OFF_DELTA_DISKS) as i32,
            new_layout: le32(bytes, OFF_NEW_LAYOUT),
            new_chunk: le32(bytes, OFF_NEW_CHUNK),
            new_offset: le32(bytes, OFF_NEW_OFFSET) as i32,
            data_offset: le64(bytes, OFF_DATA_OFFSET),
            data_size: le64(bytes, OFF_DATA_SIZE),
            super_offset: le64(bytes, OFF_SUPER_OFFSET),
            recovery_offset: le64(bytes, OFF_RECOVERY_OFFSET),
            dev_number: le32(bytes, OFF_DEV_NUMBER),
            cnt_corrected_read: le32(bytes, OFF_CNT_CORRECTED_READ),
            device_uuid: arr16(bytes, OFF_DEVICE_UUID),
            devflags: bytes[OFF_DEVFLAGS],
            bblog_shift: bytes[OFF_BBLOG_SHIFT],
            bblog_size: le16(bytes, OFF_BBLOG_SIZE),
            bblog_offset: le32(bytes, OFF_BBLOG_OFFSET) as i32,
            utime: MdTime(le64(bytes, OFF_UTIME)),
            events: le64(bytes, OFF_EVENTS),
            resync_offset: le64(bytes, OFF_RESYNC_OFFSET),
            dev_roles,
        };
        Ok(Unverified {
            superblock,
            stored_checksum: le32(bytes, OFF_SB_CSUM),
            computed_checksum,
        })
    }

    /// The whole 4 KiB superblock block: fields, roles, checksum, zeroes after the roles.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; SB_BLOCK_BYTES];
        let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
        put(OFF_MAGIC, &MD_MAGIC.to_le_bytes());
        put(OFF_MAJOR, &1u32.to_le_bytes());
        put(OFF_FEATURE_MAP, &self.feature_map.to_le_bytes());
        put(OFF_SET_UUID, &self.set_uuid);
        put(OFF_SET_NAME, &self.set_name);
        put(OFF_CTIME, &self.ctime.0.to_le_bytes());
        put(OFF_LEVEL, &self.level.to_le_bytes());
        put(OFF_LAYOUT, &self.layout.to_le_bytes());
        put(OFF_SIZE, &self.size.to_le_bytes());
        put(OFF_CHUNKSIZE, &self.chunksize.to_le_bytes());
        put(OFF_RAID_DISKS, &self.raid_disks.to_le_bytes());
        put(OFF_BITMAP_OFFSET, &self.bitmap_offset.to_le_bytes());
        put(OFF_NEW_LEVEL, &self.new_level.to_le_bytes());
        put(OFF_RESHAPE_POSITION, &self.reshape_position.to_le_bytes());
        put(OFF_DELTA_DISKS, &self.delta_disks.to_le_bytes());
        put(OFF_NEW_LAYOUT, &self.new_layout.to_le_bytes());
        put(OFF_NEW_CHUNK, &self.new_chunk.to_le_bytes());
        put(OFF_NEW_OFFSET, &self.new_offset.to_le_bytes());
        put(OFF_DATA_OFFSET, &self.data_offset.to_le_bytes());
        put(OFF_DATA_SIZE, &self.data_size.to_le_bytes());
        put(OFF_SUPER_OFFSET, &self.super_offset.to_le_bytes());
        put(OFF_RECOVERY_OFFSET, &self.recovery_offset.to_le_bytes());
        put(OFF_DEV_NUMBER, &self.dev_number.to_le_bytes());
        put(
            OFF_CNT_CORRECTED_READ,
            &self.cnt_corrected_read.to_le_bytes(),
        );
        put(OFF_DEVICE_UUID, &self.device_uuid);
        put(OFF_DEVFLAGS, &[self.devflags, self.bblog_shift]);
        put(OFF_BBLOG_SIZE, &self.bblog_size.to_le_bytes());
        put(OFF_BBLOG_OFFSET, &self.bblog_offset.to_le_bytes());
        put(OFF_UTIME, &self.utime.0.to_le_bytes());
        put(OFF_EVENTS, &self.events.to_le_bytes());
        put(OFF_RESYNC_OFFSET, &self.resync_offset.to_le_bytes());
        put(OFF_MAX_DEV, &self.max_dev().to_le_bytes());
        for (i, role) in self.dev_roles.iter().enumerate() {
            put(SB_FIXED_BYTES + 2 * i, &role.to_le_bytes());
        }
        // Invariant: dev_roles.len() <= MAX_DEV_LIMIT (enforced by every way to set it),
        // so the roles fit in the block and checksum_of always answers.
        let csum = checksum_of(&b).unwrap_or(0);
        b[OFF_SB_CSUM..OFF_SB_CSUM + 4].copy_from_slice(&csum.to_le_bytes());
        b
    }

    /// The checksum [`Superblock::to_bytes`] stores.
    pub fn checksum(&self) -> u32 {
        let bytes = self.to_bytes();
        le32(&bytes, OFF_SB_CSUM)
    }

    /// `max_dev`: number of `dev_roles` entries.
    pub fn max_dev(&self) -> u32 {
        self.dev_roles.len() as u32
    }

    pub fn dev_roles(&self) -> &[u16] {
        &self.dev_roles
    }

    /// Role of a dev_number; beyond `max_dev` it is spare, as md and mdadm read it.
    pub fn role_of(&self, dev_number: u32) -> DevRole {
        self.dev_roles
            .get(dev_number as usize)
            .map_or(DevRole::Spare, |&raw| DevRole::from_raw(raw))
    }

    /// Role of the device this superblock sits on.
    pub fn own_role(&self) -> DevRole {
        self.role_of(self.dev_number)
    }

    /// Sets a member's role, growing `max_dev` (filling with spare) if needed, as mdadm's
    /// add_to_super1 and md's super_1_sync do.
    pub fn set_role(&mut self, dev_number: u32, role: DevRole) -> Result<(), GeometryError> {
        if dev_number >= MAX_DEV_LIMIT {
            return Err(GeometryError::BadDevNumber {
                dev_number,
                limit: MAX_DEV_LIMIT,
            });
        }
        if let DevRole::Active(slot) = role {
            if slot >= ROLE_MAX {
                return Err(GeometryError::BadSlot { slot });
            }
        }
        let index = dev_number as usize;
        if index >= self.dev_roles.len() {
            self.dev_roles.resize(index + 1, ROLE_SPARE);
        }
        self.dev_roles[index] = role.to_raw();
        Ok(())
    }

    /// Resizes the role table to `max_dev` entries (new ones spare).
    /// Takes `other`'s role table (a joining member adopts the array's view).
    pub fn dev_roles_from(&mut self, other: &Superblock) {
        self.dev_roles = other.dev_roles.clone();
    }

    pub fn set_max_dev(&mut self, max_dev: u32) -> Result<(), GeometryError> {
        if max_dev > MAX_DEV_LIMIT {
            return Err(GeometryError::BadDevNumber {
                dev_number: max_dev,
                limit: MAX_DEV_LIMIT,
            });
        }
        self.dev_roles.resize(max_dev as usize, ROLE_SPARE);
        Ok(())
    }

    /// Clean as md and mdadm mean it: `resync_offset == MaxSector`. md writes that when the
    /// array is in sync and idle (and on a clean stop); while writes may be in flight it
    /// writes 0, and a partial resync leaves the resume point.
    pub fn is_clean(&self) -> bool {
        self.resync_offset == MAX_SECTOR
    }

    pub fn has_feature(&self, bit: u32) -> bool {
        self.feature_map & bit != 0
    }

    pub fn is_write_mostly(&self) -> bool {
        self.devflags & DEVFLAG_WRITE_MOSTLY != 0
    }

    /// Sets or clears md's WriteMostly1 in this device's devflags (mdadm's
    /// `--write-mostly` / `--readwrite`, md's super_1_sync from the rdev).
    pub fn set_write_mostly(&mut self, on: bool) {
        if on {
            self.devflags |= DEVFLAG_WRITE_MOSTLY;
        } else {
            self.devflags &= !DEVFLAG_WRITE_MOSTLY;
        }
    }

    pub fn is_fail_fast(&self) -> bool {
        self.devflags & DEVFLAG_FAIL_FAST != 0
    }

    /// The name bytes up to the first NUL (lossy UTF-8; md does not care about encoding).
    pub fn name(&self) -> String {
        let end = self.set_name.iter().position(|&b| b == 0).unwrap_or(32);
        String::from_utf8_lossy(&self.set_name[..end]).into_owned()
    }

    /// PPL location (shares bytes with `bitmap_offset`): (signed offset, size) in sectors.
    pub fn ppl(&self) -> (i16, u16) {
        let raw = self.bitmap_offset as u32;
        (raw as u16 as i16, (raw >> 16) as u16)
    }

    /// Checks what the kernel checks of a 1.x superblock against its device
    /// (super_1_load): the superblock at its version's place, 1.1/1.2 data after the
    /// superblock's sectors, 1.0 data below the superblock, data inside the device, at
    /// least 10 data sectors, and `size` within `data_size`.
    pub fn check_fits(&self, device_sectors: u64) -> Result<(), GeometryError> {
        let Some(version) = MetadataVersion::at(self.super_offset, device_sectors) else {
            return Err(GeometryError::BadSuperOffset {
                found: self.super_offset,
                device_sectors,
            });
        };
        let min_offset = self.super_offset + self.superblock_sectors();
        if version.data_after_superblock() && self.data_offset < min_offset {
            return Err(GeometryError::DataOffsetTooSmall {
                data_offset: self.data_offset,
                min: min_offset,
            });
        }
        if self.data_size < 10 {
            return Err(GeometryError::DataTooSmall {
                data_size: self.data_size,
            });
        }
        let limit = match version.data_after_superblock() {
            true => device_sectors,
            false => self.super_offset,
        };
        let fits = self
            .data_offset
            .checked_add(self.data_size)
            .is_some_and(|end| end <= limit);
        if !fits {
            return Err(GeometryError::DeviceTooSmall {
                device_sectors,
                data_offset: self.data_offset,
                needed_data: self.data_size,
                min: self.data_offset.saturating_add(self.data_size),
            });
        }
        if self.size > self.data_size {
            return Err(GeometryError::SizeExceedsData {
                size: self.size,
                data_size: self.data_size,
            });
        }
        Ok(())
    }

    /// The data area (`data_offset .. data_offset + data_size`) and the superblock's
    /// sectors (`super_offset ..` [`superblock_sectors`](Self::superblock_sectors)) do
    /// not overlap: user writes never reach the superblock. False when a sum wraps.
    pub fn data_clear_of_superblock(&self) -> bool {
        let (Some(data_end), Some(sb_end)) = (
            self.data_offset.checked_add(self.data_size),
            self.super_offset.checked_add(self.superblock_sectors()),
        ) else {
            return false;
        };
        data_end <= self.super_offset || sb_end <= self.data_offset
    }

    /// The metadata version this superblock's super_offset names on a device of
    /// `device_sectors`, if any.
    pub fn version_on(&self, device_sectors: u64) -> Option<MetadataVersion> {
        MetadataVersion::at(self.super_offset, device_sectors)
    }
}

/// Sector of a metadata 0.90 superblock on a device of `device_sectors` (md's
/// `MD_NEW_SIZE_SECTORS`: the last whole 64 KiB before the device's end rounded down to
/// 64 KiB), if the device has one.
pub fn v0_90_super_sector(device_sectors: u64) -> Option<u64> {
    (device_sectors & !127).checked_sub(128)
}

/// A metadata 0.90 superblock: md's magic and major version 0 (`mdp_super_t`).
pub fn is_v0_90_superblock(block: &[u8]) -> bool {
    block.len() >= 8 && le32(block, OFF_MAGIC) == MD_MAGIC && le32(block, OFF_MAJOR) == 0
}

/// Which block read from a leg is its superblock: `reads` holds the 4 KiB read at each
/// metadata 1.x place (version, sector, bytes; mdadm's order 1.0, 1.1, 1.2, a place the
/// leg is too short for left out) and `v0_90` the block at metadata 0.90's place.
///
/// As mdadm's `load_super1` guesses the version: a block counts when it has md's magic,
/// major version 1 and a super_offset naming the sector it was read at (the checksum is
/// checked later, so a damaged superblock is still found, and reported, where it is).
/// Of several, one whose sector lies inside another's data area is that one's data (an
/// array stacked on a 1.0 array shows its own superblock at sector 0 or 8 of the legs)
/// and is passed over; then the latest ctime wins, the first in mdadm's order on a tie.
///
/// Returns the index of the block that answers for the leg (`None`: nothing there) and
/// its version, or why the leg holds no usable one: a block naming another place
/// ([`SuperblockError::Misplaced`]), one that is not version 1 or does not parse, a
/// metadata 0.90 superblock, or no magic at the 1.2 place.
pub fn choose_superblock(
    reads: &[(MetadataVersion, u64, &[u8])],
    v0_90: Option<(u64, &[u8])>,
) -> (Option<usize>, Result<MetadataVersion, SuperblockError>) {
    let placed: Vec<(usize, Superblock)> = reads
        .iter()
        .enumerate()
        .filter_map(|(i, &(_, at, block))| {
            let sb = Superblock::parse_unverified(block).ok()?.superblock;
            (sb.super_offset == at).then_some((i, sb))
        })
        .collect();
    let inside_data_of = |at: u64, other: &Superblock| {
        at >= other.data_offset && at - other.data_offset < other.data_size
    };
    let outer: Vec<&(usize, Superblock)> = placed
        .iter()
        .filter(|(i, _)| {
            !placed
                .iter()
                .any(|(j, other)| j != i && inside_data_of(reads[*i].1, other))
        })
        .collect();
    let pool: Vec<&(usize, Superblock)> = match outer.is_empty() {
        true => placed.iter().collect(),
        false => outer,
    };
    let mut best: Option<&(usize, Superblock)> = None;
    for c in pool {
        if best.is_none_or(|b| c.1.ctime.seconds() > b.1.ctime.seconds()) {
            best = Some(c);
        }
    }
    if let Some((i, _)) = best {
        return (Some(*i), Ok(reads[*i].0));
    }
    // Nothing placed right: report what there is, the 1.2 place first.
    let has_magic = |b: &[u8]| b.len() >= 4 && le32(b, OFF_MAGIC) == MD_MAGIC;
    for (i, &(_, at, block)) in reads.iter().enumerate().rev() {
        if !has_magic(block) {
            continue;
        }
        let err = match Superblock::parse_unverified(block) {
            Ok(u) => SuperblockError::Misplaced {
                read_at: at,
                super_offset: u.superblock.super_offset,
            },
            Err(e) => e,
        };
        return (Some(i), Err(err));
    }
    if let Some((at, block)) = v0_90 {
        if is_v0_90_superblock(block) {
            return (None, Err(SuperblockError::Version0_90 { at }));
        }
    }
    let v1_2 = reads.iter().position(|r| r.0 == MetadataVersion::V1_2);
    let err = match v1_2 {
        Some(i) => match Superblock::parse_unverified(reads[i].2) {
            Err(e) => e,
            Ok(_) => SuperblockError::BadMagic { found: 0 },
        },
        None => SuperblockError::Truncated {
            needed: SB_BLOCK_BYTES,
            got: 0,
        },
    };
    (v1_2, Err(err))
}

/// Highest `events` a leg may carry. md adds one per superblock update, so a real count
/// never comes near 2^63 (a million updates a second for 290,000 years); a count above it
/// is forged or corrupt, and one at `u64::MAX` would wrap to 0 at the next update and
/// make this leg look older than every other one.
pub const EVENTS_LIMIT: u64 = 1 << 63;

/// Feature bits md acts on that mdfuse does not implement, with md's name for each, what
/// md would do with the leg, and what the operator can do. Assembly refuses a superblock
/// carrying any of them.
pub const UNSUPPORTED_FEATURES: [(u32, &str, &str, &str); 9] = [
    (
        FEATURE_BAD_BLOCKS,
        "MD_FEATURE_BAD_BLOCKS",
        "a bad-block log with recorded bad sectors, which md reads around and mdfuse \
         would serve as data",
        "assemble it with Linux md (mdadm --assemble), or copy the data off this leg and \
         replace it",
    ),
    (
        FEATURE_RESHAPE_ACTIVE,
        "MD_FEATURE_RESHAPE_ACTIVE",
        "a reshape in progress (reshape_position, new_level, delta_disks)",
        "let Linux md finish the reshape (mdadm --assemble, then wait), then stop it",
    ),
    (
        FEATURE_REPLACEMENT,
        "MD_FEATURE_REPLACEMENT",
        "a replacement device being built for another member",
        "let Linux md finish the replacement (mdadm --assemble), or leave this leg out",
    ),
    (
        FEATURE_RESHAPE_BACKWARDS,
        "MD_FEATURE_RESHAPE_BACKWARDS",
        "a reshape that moves data backwards",
        "let Linux md finish the reshape (mdadm --assemble, then wait), then stop it",
    ),
    (
        FEATURE_NEW_OFFSET,
        "MD_FEATURE_NEW_OFFSET",
        "a reshape moving the data to new_offset",
        "let Linux md finish the reshape (mdadm --assemble, then wait), then stop it",
    ),
    (
        FEATURE_CLUSTERED,
        "MD_FEATURE_CLUSTERED",
        "a clustered array shared between nodes (md-cluster, its bitmap per node)",
        "assemble it with Linux md on a node of its cluster (mdadm --assemble with the \
         cluster running); mdfuse serves arrays of one host only",
    ),
    (
        FEATURE_JOURNAL,
        "MD_FEATURE_JOURNAL",
        "a write journal device (raid4/5/6's write-hole log)",
        "assemble it with Linux md (mdadm --assemble); mdfuse serves RAID1 without a journal",
    ),
    (
        FEATURE_PPL | FEATURE_MULTIPLE_PPLS,
        "MD_FEATURE_PPL",
        "a partial parity log (raid5's write-hole log)",
        "assemble it with Linux md (mdadm --assemble); mdfuse serves RAID1 without a PPL",
    ),
    (
        FEATURE_RAID0_LAYOUT,
        "MD_FEATURE_RAID0_LAYOUT",
        "a RAID0 layout, which md refuses on any level but 0",
        "assemble it with Linux md (mdadm --assemble), which refuses it too on RAID1: the \
         superblock is damaged or forged",
    ),
];

/// Why a superblock whose checksum is right still cannot be used on the leg it was read
/// from: its fields contradict each other, the leg, md's rules or mdfuse's limits. Each
/// variant names the field ([`InvalidSuperblock::field`]); the caller adds the leg.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidSuperblock {
    #[error("feature_map has {name} ({bit:#x}): {what}; mdfuse does not support it")]
    UnsupportedFeature {
        bit: u32,
        name: &'static str,
        what: &'static str,
        advice: &'static str,
    },
    #[error(
        "super_offset is {found}, which is none of the places metadata 1.x keeps a \
         superblock on this leg of {leg_sectors} sectors (1.1: 0, 1.2: {SUPER_OFFSET_V1_2}, \
         1.0: {v1_0}); md refuses one that names another place than it was read at (its \
         updates would be written there)",
        v1_0 = MetadataVersion::V1_0.super_offset(*leg_sectors).map_or("none".to_string(), |s| s.to_string())
    )]
    SuperOffset { found: u64, leg_sectors: u64 },
    #[error("raid_disks is 0: the array has no slot at all")]
    NoRaidDisks,
    #[error("raid_disks is {raid_disks}; mdfuse runs at most {max} legs")]
    TooManyRaidDisks { raid_disks: u32, max: u32 },
    #[error(
        "events is {events}, above {EVENTS_LIMIT} (2^63): no array counts that far, the \
         count is forged or corrupt, and it would wrap at the next update"
    )]
    EventsTooHigh { events: u64 },
    #[error(
        "data_offset {data_offset} lies inside the superblock, which takes sectors \
         {super_offset}..{sb_end} ({max_dev} roles in max_dev): user writes would \
         overwrite it (md refuses it)"
    )]
    DataOffsetInSuperblock {
        data_offset: u64,
        super_offset: u64,
        max_dev: u32,
        sb_end: u64,
    },
    #[error(
        "data_size {data_size} sectors from data_offset {data_offset} runs into the metadata \
         1.0 superblock at sector {super_offset}: user writes would overwrite it (the data \
         of a 1.0 leg lies below its superblock)"
    )]
    DataIntoSuperblock {
        data_offset: u64,
        data_size: u64,
        super_offset: u64,
    },
    #[error("data_offset {data_offset} is past the leg's end ({leg_sectors} sectors)")]
    DataOffsetBeyondLeg { data_offset: u64, leg_sectors: u64 },
    #[error("data_size {data_size} is below md's minimum of 10 sectors")]
    DataSizeTooSmall { data_size: u64 },
    #[error(
        "data_size {data_size} sectors from data_offset {data_offset} runs past the leg's \
         end ({leg_sectors} sectors; md refuses it)"
    )]
    DataSizeBeyondLeg {
        data_offset: u64,
        data_size: u64,
        leg_sectors: u64,
    },
    #[error("size is 0: the array holds no data")]
    SizeZero,
    #[error(
        "size {size} sectors (the array) is more than data_size {data_size} (this leg's data area)"
    )]
    SizeBeyondData { size: u64, data_size: u64 },
    #[error(
        "its own role (dev_roles[{dev_number}]) is slot {slot}, but raid_disks is \
         {raid_disks}: there is no such slot"
    )]
    SlotBeyondRaidDisks {
        dev_number: u32,
        slot: u16,
        raid_disks: u32,
    },
    #[error(
        "recovery_offset {recovery_offset} (MD_FEATURE_RECOVERY_OFFSET) is past the \
         array's end (size {size})"
    )]
    RecoveryOffsetBeyondSize { recovery_offset: u64, size: u64 },
}

impl InvalidSuperblock {
    /// The superblock field at fault (md's name).
    pub fn field(&self) -> &'static str {
        match self {
            InvalidSuperblock::UnsupportedFeature { .. } => "feature_map",
            InvalidSuperblock::SuperOffset { .. } => "super_offset",
            InvalidSuperblock::NoRaidDisks | InvalidSuperblock::TooManyRaidDisks { .. } => {
                "raid_disks"
            }
            InvalidSuperblock::EventsTooHigh { .. } => "events",
            InvalidSuperblock::DataOffsetInSuperblock { .. }
            | InvalidSuperblock::DataOffsetBeyondLeg { .. } => "data_offset",
            InvalidSuperblock::DataSizeTooSmall { .. }
            | InvalidSuperblock::DataSizeBeyondLeg { .. }
            | InvalidSuperblock::DataIntoSuperblock { .. } => "data_size",
            InvalidSuperblock::SizeZero | InvalidSuperblock::SizeBeyondData { .. } => "size",
            InvalidSuperblock::SlotBeyondRaidDisks { .. } => "dev_roles",
            InvalidSuperblock::RecoveryOffsetBeyondSize { .. } => "recovery_offset",
        }
    }

    /// What the operator can do about it.
    pub fn advice(&self) -> &'static str {
        match self {
            InvalidSuperblock::UnsupportedFeature { advice, .. } => advice,
            InvalidSuperblock::TooManyRaidDisks { .. } => {
                "assemble this array with Linux md (mdadm --assemble) instead"
            }
            _ => {
                "this is not a superblock md or mdfuse writes: check that the right file was \
                 given (`mdfuse examine LEG` shows it); to start without a damaged leg, leave \
                 it out and add --run, then give it back with `mdfuse manage --add`"
            }
        }
    }
}

impl Superblock {
    /// Sectors the superblock takes from `super_offset`: 256 bytes plus two per role,
    /// rounded up to whole sectors, as md's super_1_load computes `sb_size` (md rounds to
    /// the device's logical block size; 512 is the smallest).
    pub fn superblock_sectors(&self) -> u64 {
        (SB_FIXED_BYTES as u64 + 2 * u64::from(self.max_dev())).div_ceil(512)
    }

    /// Checks a superblock whose checksum was right against the leg it was read from
    /// (`leg_bytes` long) before anything trusts it: what md's super_1_load and
    /// super_1_validate refuse, plus mdfuse's own limits (feature bits it does not
    /// implement, at most `max_raid_disks` slots, events below [`EVENTS_LIMIT`], a
    /// non-empty array, a recovery offset inside it). Once this passes, every sector
    /// count here times 512 fits a u64: `data_offset + data_size` is within the leg.
    /// The checks between legs (same array, the freshest superblock's view) are the
    /// array layer's.
    pub fn validate_on_leg(
        &self,
        leg_bytes: u64,
        max_raid_disks: u32,
    ) -> Result<(), InvalidSuperblock> {
        for (bits, name, what, advice) in UNSUPPORTED_FEATURES {
            if self.feature_map & bits != 0 {
                return Err(InvalidSuperblock::UnsupportedFeature {
                    bit: self.feature_map & bits,
                    name,
                    what,
                    advice,
                });
            }
        }
        let leg_sectors = leg_bytes / 512;
        let Some(version) = MetadataVersion::at(self.super_offset, leg_sectors) else {
            return Err(InvalidSuperblock::SuperOffset {
                found: self.super_offset,
                leg_sectors,
            });
        };
        if self.raid_disks == 0 {
            return Err(InvalidSuperblock::NoRaidDisks);
        }
        if self.raid_disks > max_raid_disks {
            return Err(InvalidSuperblock::TooManyRaidDisks {
                raid_disks: self.raid_disks,
                max: max_raid_disks,
            });
        }
        if self.events > EVENTS_LIMIT {
            return Err(InvalidSuperblock::EventsTooHigh {
                events: self.events,
            });
        }
        // 1.1 and 1.2: the data after the superblock (md: data_offset at
        // least sb_start + sb_size). 1.0: below it, checked with data_size.
        let sb_end = self.super_offset + self.superblock_sectors();
        if version.data_after_superblock() && self.data_offset < sb_end {
            return Err(InvalidSuperblock::DataOffsetInSuperblock {
                data_offset: self.data_offset,
                super_offset: self.super_offset,
                max_dev: self.max_dev(),
                sb_end,
            });
        }
        if self.data_offset > leg_sectors {
            return Err(InvalidSuperblock::DataOffsetBeyondLeg {
                data_offset: self.data_offset,
                leg_sectors,
            });
        }
        if self.data_size < 10 {
            return Err(InvalidSuperblock::DataSizeTooSmall {
                data_size: self.data_size,
            });
        }
        // md: the sectors after data_offset must hold data_size.
        if self.data_size > leg_sectors - self.data_offset {
            return Err(InvalidSuperblock::DataSizeBeyondLeg {
                data_offset: self.data_offset,
                data_size: self.data_size,
                leg_sectors,
            });
        }
        // 1.0: the data ends at or below the superblock. (md checks only
        // data_size <= sb_start, which equals this for mdadm's data_offset
        // 0; mdfuse keeps user writes off the superblock whatever the
        // data_offset.) The sum cannot wrap: both are within the leg.
        if !version.data_after_superblock() && self.data_offset + self.data_size > self.super_offset
        {
            return Err(InvalidSuperblock::DataIntoSuperblock {
                data_offset: self.data_offset,
                data_size: self.data_size,
                super_offset: self.super_offset,
            });
        }
        if self.size == 0 {
            return Err(InvalidSuperblock::SizeZero);
        }
        if self.size > self.data_size {
            return Err(InvalidSuperblock::SizeBeyondData {
                size: self.size,
                data_size: self.data_size,
            });
        }
        if let DevRole::Active(slot) = self.own_role() {
            if u32::from(slot) >= self.raid_disks {
                return Err(InvalidSuperblock::SlotBeyondRaidDisks {
                    dev_number: self.dev_number,
                    slot,
                    raid_disks: self.raid_disks,
                });
            }
        }
        if self.has_feature(FEATURE_RECOVERY_OFFSET) && self.recovery_offset > self.size {
            return Err(InvalidSuperblock::RecoveryOffsetBeyondSize {
                recovery_offset: self.recovery_offset,
                size: self.size,
            });
        }
        Ok(())
    }
}

/// mdadm's `choose_bm_space` (super1.c): sectors reserved for an internal bitmap, by size.
pub fn mdadm_bitmap_space(sectors: u64) -> u64 {
    if sectors < 64 * 2 {
        0
    } else if sectors - 64 * 2 >= 200 * 1024 * 1024 * 2 {
        128 * 2
    } else if sectors - 4 * 2 > 8 * 1024 * 1024 * 2 {
        64 * 2
    } else {
        4 * 2
    }
}

const ONE_MIB_SECTORS: u64 = 2048;

/// mdadm 4.2's default data offset for metadata 1.2 on a RAID1 leg of `device_sectors`
/// (super1.c `validate_geometry1`): headroom for reshape starts at 128 MiB and is halved
/// while `headroom * 1024 > device_sectors` (aiming at ~0.1% of the device; RAID1 has no
/// chunk so nothing else stops the halving); then
/// `data_offset = round_up(24 + choose_bm_space(device_sectors) + headroom, 1 MiB)`.
///
/// mdadm computes it on the first device given to `--create` and uses it for all legs.
/// Results (sectors): 32 MiB and 64 MiB -> 2048 (1 MiB), 1 GiB -> 4096 (2 MiB),
/// 10 GiB -> 18432 (9 MiB), 100 GiB -> 133120 (65 MiB), 1 TiB -> 264192 (129 MiB);
/// from 128 GiB up always 264192 (the 128 MiB cap plus bitmap space, rounded up).
pub fn mdadm_default_data_offset(device_sectors: u64) -> u64 {
    let mut headroom: u64 = 128 * 1024 * 2;
    while (headroom << 10) > device_sectors {
        headroom >>= 1;
        if headroom == 0 {
            break;
        }
    }
    let raw = 12 * 2 + mdadm_bitmap_space(device_sectors) + headroom;
    raw.div_ceil(ONE_MIB_SECTORS) * ONE_MIB_SECTORS
}

/// The array size mdadm 4.2 gives a RAID1 whose smallest leg is `min_device_sectors`:
/// the smallest leg's space after `data_offset`, in KiB, rounded down to 64 KiB (Create.c,
/// "in case this is ever reshaped to RAID5"), in sectors.
pub fn mdadm_raid1_array_sectors(min_device_sectors: u64, data_offset: u64) -> u64 {
    let free_kib = min_device_sectors.saturating_sub(data_offset) / 2;
    (free_kib & !63) * 2
}

/// Smallest leg mdadm 4.2 accepts for a 1.2 RAID1 with the default data offset: 1 MiB of
/// metadata/headroom plus one 64 KiB unit of data (2176 sectors, 1088 KiB).
pub fn min_leg_sectors() -> u64 {
    // The default offset is 2048 for every device below 128 MiB, so the smallest leg is
    // 2048 + 128; check the rule agrees rather than assume it.
    let candidate = ONE_MIB_SECTORS + 128;
    debug_assert_eq!(mdadm_default_data_offset(candidate), ONE_MIB_SECTORS);
    candidate
}

/// mdadm 4.2's bad-block-log placement for a new 1.2 member without an internal bitmap
/// (super1.c `write_init_super1`): (bblog_size, bblog_offset), or (0, 0) if no room.
pub fn mdadm_bblog_placement(data_offset: u64, array_sectors: u64) -> (u16, i32) {
    bblog_after_superblock(SUPER_OFFSET_V1_2, data_offset, array_sectors)
}

/// 1.1 and 1.2 (`write_init_super1`, case 1/2): the log after the bitmap space that
/// follows the superblock, else just below the data, else none.
fn bblog_after_superblock(sb_offset: u64, data_offset: u64, array_sectors: u64) -> (u16, i32) {
    let bm_offset = 8u64;
    let bm_space = mdadm_bitmap_space(array_sectors);
    if data_offset >= sb_offset + bm_offset + bm_space + 8 {
        (8, (bm_offset + bm_space) as i32)
    } else if data_offset >= sb_offset + 16 {
        (8, (data_offset - 8 - sb_offset) as i32)
    } else {
        (0, 0)
    }
}

/// mdadm 4.2's default data offset for `version` on a leg of `device_sectors`
/// (`validate_geometry1`): 0 for 1.0 (the data from the device's start), else
/// [`mdadm_default_data_offset`].
pub fn mdadm_default_data_offset_for(version: MetadataVersion, device_sectors: u64) -> u64 {
    match version {
        MetadataVersion::V1_0 => 0,
        MetadataVersion::V1_1 | MetadataVersion::V1_2 => mdadm_default_data_offset(device_sectors),
    }
}

/// The array size mdadm 4.2 gives a RAID1 of `version` whose smallest leg is
/// `min_device_sectors` (`validate_geometry1`'s free size, then Create.c's rounding down
/// to 64 KiB). 1.0: the device rounded down to 4 KiB, less 8 KiB for the superblock's
/// place, 8 sectors of bad-block log and `choose_bm_space(device)`; 1.1 and 1.2: the
/// space after `data_offset` ([`mdadm_raid1_array_sectors`]).
pub fn mdadm_raid1_array_sectors_for(
    version: MetadataVersion,
    min_device_sectors: u64,
    data_offset: u64,
) -> u64 {
    match version {
        MetadataVersion::V1_0 => {
            let overhead = 8 * 2 + 8 + mdadm_bitmap_space(min_device_sectors);
            let free = (min_device_sectors & !(4 * 2 - 1)).saturating_sub(overhead);
            ((free / 2) & !63) * 2
        }
        MetadataVersion::V1_1 | MetadataVersion::V1_2 => {
            mdadm_raid1_array_sectors(min_device_sectors, data_offset)
        }
    }
}

/// Where mdadm 4.2 puts a new member's metadata and data (`write_init_super1`, without
/// an internal bitmap): the superblock's sector, the data size and the bad-block log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MdadmLayout {
    pub super_offset: u64,
    pub data_size: u64,
    pub bblog_size: u16,
    pub bblog_offset: i32,
}

/// mdadm 4.2's layout of a member of `version` on a device of `device_sectors` for an
/// array of `array_sectors` with data at `data_offset`. 1.0: superblock at
/// `(device - 16) & ~7`; below it `choose_bm_space(array) + 8` sectors are kept for a
/// bitmap and the bad-block log (less if the array leaves less), the log 8 sectors just
/// below the superblock (offset -8), the data size all below that. 1.1 and 1.2: the
/// superblock at 0 or 8, the data size all after `data_offset`.
/// `None` when the device has no room for the superblock or the data offset.
pub fn mdadm_layout(
    version: MetadataVersion,
    device_sectors: u64,
    array_sectors: u64,
    data_offset: u64,
) -> Option<MdadmLayout> {
    let super_offset = version.super_offset(device_sectors)?;
    match version {
        MetadataVersion::V1_0 => {
            let mut bm_space = mdadm_bitmap_space(array_sectors) + 8;
            if super_offset < array_sectors.saturating_add(bm_space) {
                bm_space = super_offset.saturating_sub(array_sectors);
            }
            let (bblog_size, bblog_offset) = if bm_space >= 8 { (8, -8) } else { (0, 0) };
            Some(MdadmLayout {
                super_offset,
                data_size: super_offset - bm_space,
                bblog_size,
                bblog_offset,
            })
        }
        MetadataVersion::V1_1 | MetadataVersion::V1_2 => {
            let (bblog_size, bblog_offset) =
                bblog_after_superblock(super_offset, data_offset, array_sectors);
            Some(MdadmLayout {
                super_offset,
                data_size: device_sectors.checked_sub(data_offset)?,
                bblog_size,
                bblog_offset,
            })
        }
    }
}

/// mdadm 4.2's bitmap chunk for an internal bitmap of an array of `array_sectors`
/// (super1.c `add_internal_bitmap1` when creating): the room is
/// `choose_bm_space(size)` sectors (at most 128 KiB when no chunk is asked for); the
/// smallest chunk is 4 KiB, doubled until the bits fit the room less the 256-byte header;
/// without a `requested` chunk it is at least 64 MiB. A requested chunk below the
/// smallest is refused.
pub fn mdadm_internal_bitmap_chunk(
    array_sectors: u64,
    requested: Option<u64>,
) -> Result<u32, GeometryError> {
    let mut room = mdadm_bitmap_space(array_sectors);
    if requested.is_none() {
        room = room.min(128 * 2);
    }
    if room <= 1 {
        return Err(GeometryError::NoBitmapRoom { needed: 8, room: 0 });
    }
    let max_bits = (room * 512 - 256) * 8;
    bitmap_chunk_for(array_sectors, max_bits, requested)
}

/// mdadm's chunk for `array_sectors` of array in `max_bits` bits: the
/// smallest is 4 KiB, doubled until the bits fit; without a `requested`
/// chunk at least 64 MiB; a requested one below the smallest is refused.
fn bitmap_chunk_for(
    array_sectors: u64,
    max_bits: u64,
    requested: Option<u64>,
) -> Result<u32, GeometryError> {
    let mut min_chunk: u64 = 4096;
    let mut bits = array_sectors.saturating_mul(512) / min_chunk + 1;
    while bits > max_bits {
        min_chunk *= 2;
        bits = bits.div_ceil(2);
    }
    let chunk = match requested {
        None => min_chunk.max(64 * 1024 * 1024),
        Some(c) if c < min_chunk => {
            return Err(GeometryError::BitmapChunkTooSmall {
                chunk: c,
                min: min_chunk,
            })
        }
        Some(c) => c,
    };
    u32::try_from(chunk).map_err(|_| GeometryError::BitmapChunkTooSmall {
        chunk,
        min: min_chunk,
    })
}

/// Sectors an internal bitmap of `array_sectors` at `chunk` bytes a bit takes on disk:
/// its header and bits rounded up to 4 KiB (mdadm's `calc_bitmap_size(bms, 4096)`).
pub fn internal_bitmap_sectors(array_sectors: u64, chunk: u32) -> u64 {
    let bits = crate::format::bitmap::chunk_count(array_sectors, chunk);
    let bytes = (bits.div_ceil(8) + 256).div_ceil(4096) * 4096;
    bytes / 512
}

/// What `mdfuse create` knows about one new RAID1 member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMember<'a> {
    pub set_uuid: [u8; 16],
    /// Stored verbatim (mdadm stores "homehost:name" when given both; pass that string).
    pub name: &'a str,
    pub raid_disks: u32,
    /// This member's dev_number; it is also its slot.
    pub dev_number: u32,
    pub device_uuid: [u8; 16],
    pub device_sectors: u64,
    /// The array size (`size` field), see [`mdadm_raid1_array_sectors`].
    pub array_sectors: u64,
    /// `None`: mdadm's default for this device. When creating several legs, pass the value
    /// computed for the first leg to all of them, as mdadm does.
    pub data_offset: Option<u64>,
    pub ctime: MdTime,
}

impl Superblock {
    /// The superblock mdadm 4.2 `--create --metadata=1.2 --level=1 --assume-clean` (with
    /// an external or no bitmap) writes on a member: feature_map 0, all `raid_disks`
    /// members active in slot = dev_number, max_dev 128 (mdadm rounds the role table up to
    /// fill a 512-byte superblock), events 0 (md bumps it when it first starts the array),
    /// resync_offset MaxSector (clean), utime = ctime, bad-block log as mdadm places it.
    pub fn new_raid1_member(m: &NewMember<'_>) -> Result<Superblock, GeometryError> {
        Self::new_raid1_member_of(m, MetadataVersion::V1_2)
    }

    /// The superblock mdadm 4.2 `--create --metadata=VERSION --level=1 --assume-clean`
    /// writes on a member (as [`Superblock::new_raid1_member`] for 1.2), its places as
    /// [`mdadm_layout`] gives them; `data_offset: None` is mdadm's default for the version
    /// ([`mdadm_default_data_offset_for`]).
    pub fn new_raid1_member_of(
        m: &NewMember<'_>,
        version: MetadataVersion,
    ) -> Result<Superblock, GeometryError> {
        let name_bytes = m.name.as_bytes();
        if name_bytes.len() > 31 {
            return Err(GeometryError::NameTooLong {
                name: m.name.to_string(),
                len: name_bytes.len(),
            });
        }
        if name_bytes.contains(&0) {
            return Err(GeometryError::NameHasNul {
                name: m.name.to_string(),
            });
        }
        if m.raid_disks == 0 || m.raid_disks > MAX_DEV_LIMIT {
            return Err(GeometryError::BadRaidDisks {
                raid_disks: m.raid_disks,
            });
        }
        if m.dev_number >= m.raid_disks {
            return Err(GeometryError::BadDevNumber {
                dev_number: m.dev_number,
                limit: m.raid_disks,
            });
        }
        let data_offset = m
            .data_offset
            .unwrap_or_else(|| mdadm_default_data_offset_for(version, m.device_sectors));
        let too_small = || GeometryError::DeviceTooSmall {
            device_sectors: m.device_sectors,
            data_offset,
            needed_data: m.array_sectors.max(10),
            min: data_offset.saturating_add(m.array_sectors.max(10)),
        };
        let layout = mdadm_layout(version, m.device_sectors, m.array_sectors, data_offset)
            .ok_or_else(too_small)?;
        let data_size = layout.data_size;
        if data_size < m.array_sectors.max(10) {
            return Err(too_small());
        }
        // init_super1: 256 bytes + 2 per device, rounded up to 512.
        let sb_bytes = (SB_FIXED_BYTES as u32 + 2 * m.raid_disks).div_ceil(512) * 512;
        let max_dev = (sb_bytes - SB_FIXED_BYTES as u32) / 2;
        let mut dev_roles = vec![ROLE_SPARE; max_dev.min(MAX_DEV_LIMIT) as usize];
        for (slot, role) in dev_roles.iter_mut().take(m.raid_disks as usize).enumerate() {
            *role = slot as u16;
        }
        let mut set_name = [0u8; 32];
        set_name[..name_bytes.len()].copy_from_slice(name_bytes);
        let MdadmLayout {
            super_offset,
            bblog_size,
            bblog_offset,
            ..
        } = layout;
        let sb = Superblock {
            feature_map: 0,
            set_uuid: m.set_uuid,
            set_name,
            ctime: m.ctime,
            level: LEVEL_RAID1,
            layout: 0,
            size: m.array_sectors,
            chunksize: 0,
            raid_disks: m.raid_disks,
            bitmap_offset: 0,
            new_level: 0,
            reshape_position: 0,
            delta_disks: 0,
            new_layout: 0,
            new_chunk: 0,
            new_offset: 0,
            data_offset,
            data_size,
            super_offset,
            recovery_offset: 0,
            dev_number: m.dev_number,
            cnt_corrected_read: 0,
            device_uuid: m.device_uuid,
            devflags: 0,
            bblog_shift: 0,
            bblog_size,
            bblog_offset,
            utime: m.ctime,
            events: 0,
            resync_offset: MAX_SECTOR,
            dev_roles,
        };
        sb.check_fits(m.device_sectors)?;
        Ok(sb)
    }
}

impl Superblock {
    /// Gives this new member an internal bitmap of `chunk` bytes a bit where mdadm 4.2
    /// puts it (`add_internal_bitmap1` and `write_init_super1` when creating): 1.1 and
    /// 1.2 at 8 sectors after the superblock, the bad-block log right after it when the
    /// data leaves room (else just below the data, if clear of the bitmap); 1.0 below the
    /// superblock, below the 8-sector bad-block log, its whole 4 KiB blocks, the data
    /// size everything below. Refused when the bitmap would reach the data.
    pub fn add_internal_bitmap(&mut self, chunk: u32) -> Result<(), GeometryError> {
        let bm_space = internal_bitmap_sectors(self.size, chunk);
        let so = self.super_offset;
        match MetadataVersion::of_super_offset(so) {
            MetadataVersion::V1_1 | MetadataVersion::V1_2 => {
                let bm_end = so + 8 + bm_space;
                if self.data_offset < bm_end {
                    return Err(GeometryError::NoBitmapRoom {
                        needed: 8 + bm_space,
                        room: self.data_offset.saturating_sub(so),
                    });
                }
                self.bitmap_offset = 8;
                (self.bblog_size, self.bblog_offset) = if self.data_offset >= bm_end + 8 {
                    (8, (8 + bm_space) as i32)
                } else {
                    (0, 0)
                };
            }
            MetadataVersion::V1_0 => {
                let total = bm_space + 8;
                if so < self.size.saturating_add(total) {
                    return Err(GeometryError::NoBitmapRoom {
                        needed: total,
                        room: so.saturating_sub(self.size),
                    });
                }
                self.bitmap_offset = -((bm_space + 8) as i32);
                self.data_size = so - total;
                self.bblog_size = 8;
                self.bblog_offset = -8;
            }
        }
        self.feature_map |= FEATURE_BITMAP_OFFSET;
        Ok(())
    }

    /// Where an internal bitmap added to the running array this superblock
    /// belongs to goes, and its chunk, as mdadm 4.2's `add_internal_bitmap1`
    /// computes them for `--grow --bitmap=internal` (not creating, the
    /// offset settable through sysfs): (bitmap_offset, chunk in bytes).
    ///
    /// 1.1 and 1.2: at +8, the room up to the bad-block log (or, without
    /// one, to the data less 8 sectors kept for a log). 1.0: the room between
    /// the data's end and the superblock, less the bad-block log (at least 8
    /// sectors), the bitmap right below the log. The room is at most 128 KiB
    /// without a `requested` chunk; the smallest chunk is 4 KiB, doubled until
    /// the bits fit; without a request at least 64 MiB. mdadm's fallback for
    /// 1.0 legs with less than 3 KiB of room (a bitmap 1 KiB after the
    /// superblock, not 4 KiB aligned) is refused: mdfuse writes whole 4 KiB
    /// pages.
    pub fn grow_internal_bitmap(
        &self,
        requested: Option<u64>,
    ) -> Result<(i32, u32), GeometryError> {
        let so = i128::from(self.super_offset);
        let (room, offset, bbl_size): (i128, Option<i128>, i128) =
            match MetadataVersion::of_super_offset(self.super_offset) {
                MetadataVersion::V1_1 | MetadataVersion::V1_2 => {
                    let mut room = i128::from(self.data_offset) - so;
                    let mut bbl = i128::from(self.bblog_size);
                    if bbl != 0 {
                        room = i128::from(self.bblog_offset) + bbl;
                    } else {
                        bbl = 8;
                    }
                    (room - 8, Some(8), bbl)
                }
                MetadataVersion::V1_0 => {
                    let room = so - i128::from(self.data_offset) - i128::from(self.data_size);
                    let bbl = i128::from(self.bblog_size)
                        .max(8)
                        .max(-i128::from(self.bblog_offset));
                    (room, None, bbl)
                }
            };
        // The sectors the bitmap may take, and mdadm's cap on them when no
        // chunk is asked for (the chunk is chosen by the capped room).
        let avail = room - bbl_size;
        let capped = if requested.is_none() {
            avail.min(128 * 2)
        } else {
            avail
        };
        let no_room = |needed: u64| GeometryError::NoBitmapRoom {
            needed,
            room: u64::try_from(avail.max(0)).unwrap_or(0),
        };
        if capped < 8 {
            return Err(no_room(8));
        }
        let capped = u64::try_from(capped).map_err(|_| no_room(8))?;
        let max_bits = capped
            .saturating_mul(512)
            .saturating_sub(256)
            .saturating_mul(8);
        let size = self.size;
        let chunk32 = bitmap_chunk_for(size, max_bits, requested)?;
        let chunk = u64::from(chunk32);
        // mdadm's count (one bit more than needed at a chunk boundary) and
        // ours: the bitmap's 4 KiB blocks hold both.
        let mdadm_bits = size.saturating_mul(512) / chunk + 1;
        let blocks = (mdadm_bits.div_ceil(8) + 256).div_ceil(4096) * 8;
        let span = blocks.max(internal_bitmap_sectors(size, chunk32));
        if i128::from(span) > avail {
            return Err(no_room(span));
        }
        let offset = match offset {
            Some(o) => o,
            // Below the bad-block log (mdadm's "movable offset").
            None => -i128::from(span) - bbl_size,
        };
        let offset = i32::try_from(offset).map_err(|_| no_room(span))?;
        Ok((offset, chunk32))
    }

    /// The sectors an internal bitmap of `bitmap_sectors` would occupy on this leg, and
    /// what it must stay clear of, checked: `Ok(start sector)` when it lies inside the
    /// leg of `leg_sectors`, clear of the superblock, the data area and the bad-block
    /// log; else the first thing it runs into.
    pub fn internal_bitmap_start(
        &self,
        bitmap_sectors: u64,
        leg_sectors: u64,
    ) -> Result<u64, String> {
        let start = i128::from(self.super_offset) + i128::from(self.bitmap_offset);
        let end = start + i128::from(bitmap_sectors);
        if start < 0 || end > i128::from(leg_sectors) {
            return Err(format!(
                "it would lie at sectors {start}..{end}, outside the leg's {leg_sectors} sectors"
            ));
        }
        let overlaps = |a: i128, len: i128| len > 0 && start < a + len && a < end;
        if overlaps(
            i128::from(self.super_offset),
            i128::from(self.superblock_sectors()),
        ) {
            return Err(format!(
                "its sectors {start}..{end} overlap the superblock at sector {}",
                self.super_offset
            ));
        }
        if overlaps(i128::from(self.data_offset), i128::from(self.data_size)) {
            return Err(format!(
                "its sectors {start}..{end} overlap the data area (sectors {}..{})",
                self.data_offset,
                i128::from(self.data_offset) + i128::from(self.data_size)
            ));
        }
        let bbl = i128::from(self.super_offset) + i128::from(self.bblog_offset);
        if self.bblog_offset != 0 && overlaps(bbl, i128::from(self.bblog_size)) {
            return Err(format!(
                "its sectors {start}..{end} overlap the bad-block log (sectors {bbl}..{})",
                bbl + i128::from(self.bblog_size)
            ));
        }
        // Inside 0..leg_sectors (a u64), checked above.
        Ok(start as u64)
    }
}

/// Test access to the kernel-made fixtures (decompressed with the `zstd` command).
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::PathBuf;
    use std::process::Command;

    /// The 4 KiB superblock block (offset 4096) of a fixture leg.
    pub(crate) fn fixture_leg_superblock(set: &str, leg: &str) -> Vec<u8> {
        let path: PathBuf = [
            env!("CARGO_MANIFEST_DIR"),
            "..",
            "shared",
            "fixtures",
            "kernel-md",
            set,
            &format!("{leg}.img.zst"),
        ]
        .iter()
        .collect();
        let out = Command::new("zstd")
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("run zstd");
        assert!(out.status.success(), "zstd -d {}", path.display());
        assert_eq!(out.stdout.len(), 33_554_432);
        out.stdout[4096..8192].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::superblock::fixtures::fixture_leg_superblock;
    use proptest::prelude::*;

    fn sample() -> Superblock {
        Superblock::new_raid1_member(&NewMember {
            set_uuid: [7; 16],
            name: "host:sample",
            raid_disks: 2,
            dev_number: 1,
            device_uuid: [9; 16],
            device_sectors: 65536,
            array_sectors: 63488,
            data_offset: None,
            ctime: MdTime::from_parts(1_700_000_000, 0),
        })
        .expect("valid member")
    }

    #[test]
    fn data_offset_rule_matches_mdadm() {
        const MIB: u64 = 2048;
        assert_eq!(mdadm_default_data_offset(32 * MIB), 2048);
        assert_eq!(mdadm_default_data_offset(64 * MIB), 2048);
        assert_eq!(mdadm_default_data_offset(1024 * MIB), 2 * MIB);
        assert_eq!(mdadm_default_data_offset(10 * 1024 * MIB), 9 * MIB);
        assert_eq!(mdadm_default_data_offset(100 * 1024 * MIB), 65 * MIB);
        // The 128 MiB cap is reached at 128 GiB.
        assert_eq!(mdadm_default_data_offset(128 * 1024 * MIB - 1), 65 * MIB);
        assert_eq!(mdadm_default_data_offset(128 * 1024 * MIB), 129 * MIB);
        assert_eq!(mdadm_default_data_offset(1024 * 1024 * MIB), 129 * MIB);
        assert_eq!(mdadm_default_data_offset(16 * 1024 * 1024 * MIB), 129 * MIB);
        assert_eq!(mdadm_default_data_offset(0), 2048);
        assert_eq!(mdadm_default_data_offset(u64::MAX), 129 * MIB);
        assert_eq!(min_leg_sectors(), 2176);
        assert_eq!(mdadm_raid1_array_sectors(65536, 2048), 63488);
        assert_eq!(mdadm_raid1_array_sectors(min_leg_sectors(), 2048), 128);
        assert_eq!(mdadm_raid1_array_sectors(min_leg_sectors() - 1, 2048), 0);
    }

    #[test]
    fn time_packing() {
        let t = MdTime::from_parts(0x12_3456_789a, 999_999);
        assert_eq!(t.seconds(), 0x12_3456_789a);
        assert_eq!(t.micros(), 999_999);
        assert_eq!(MdTime(0x6b06_5f7b).seconds(), 0x6b06_5f7b);
        assert_eq!(MdTime(0x6b06_5f7b).micros(), 0);
    }

    #[test]
    fn roles_roundtrip_raw() {
        for raw in [0u16, 1, 0xfeff, 0xff00, 0xfffc, 0xfffd, 0xfffe, 0xffff] {
            assert_eq!(DevRole::from_raw(raw).to_raw(), raw);
        }
        assert_eq!(DevRole::from_raw(0xffff), DevRole::Spare);
        assert_eq!(DevRole::from_raw(0xfffe), DevRole::Faulty);
        assert_eq!(DevRole::from_raw(0xfffd), DevRole::Journal);
        assert_eq!(DevRole::from_raw(3), DevRole::Active(3));
    }

    #[test]
    fn set_role_grows_and_refuses_bad_values() {
        let mut sb = sample();
        assert_eq!(sb.max_dev(), 128);
        sb.set_role(200, DevRole::Active(2)).unwrap();
        assert_eq!(sb.max_dev(), 201);
        assert_eq!(sb.role_of(150), DevRole::Spare);
        assert_eq!(sb.role_of(5000), DevRole::Spare);
        assert!(sb.set_role(MAX_DEV_LIMIT, DevRole::Spare).is_err());
        assert!(sb.set_role(3, DevRole::Active(ROLE_MAX)).is_err());
        sb.set_role(0, DevRole::Faulty).unwrap();
        let again = Superblock::parse(&sb.to_bytes()).unwrap();
        assert_eq!(again.role_of(0), DevRole::Faulty);
        assert_eq!(again.role_of(200), DevRole::Active(2));
    }

    #[test]
    fn fixture_a_clean_leg0_fields() {
        let raw = fixture_leg_superblock("a-clean", "leg0");
        let sb = Superblock::parse(&raw).expect("kernel-written superblock parses");
        assert_eq!(
            sb.set_uuid,
            [
                0xf7, 0x74, 0xb9, 0xb4, 0x92, 0x94, 0x33, 0x91, 0x34, 0x99, 0x95, 0x82, 0x0b, 0x47,
                0xed, 0xc5
            ]
        );
        assert_eq!(sb.name(), "kmdrig:fixture");
        assert_eq!(sb.level, 1);
        assert_eq!(sb.raid_disks, 2);
        assert_eq!(sb.size, 63488);
        assert_eq!(sb.data_offset, 2048);
        assert_eq!(sb.data_size, 63488);
        assert_eq!(sb.super_offset, 8);
        assert_eq!(sb.events, 2);
        assert!(sb.is_clean());
        assert_eq!(sb.max_dev(), 128);
        assert_eq!(sb.bblog_size, 8);
        assert_eq!(sb.bblog_offset, 16);
        assert_eq!(sb.own_role(), DevRole::Active(0));
        assert_eq!(sb.role_of(1), DevRole::Active(1));
        assert_eq!(sb.checksum(), 0x7491_d75b);
        // Re-serializing reproduces the block the kernel wrote, byte for byte.
        assert_eq!(sb.to_bytes(), raw);
    }

    #[test]
    fn constructor_matches_what_mdadm_and_md_wrote() {
        // The fixture legs were made by mdadm 4.2 --create --assume-clean and then run by
        // md; apart from events/utime (md's updates) our constructor gives the same block.
        let raw = fixture_leg_superblock("a-clean", "leg1");
        let kernel = Superblock::parse(&raw).unwrap();
        let ours = Superblock::new_raid1_member(&NewMember {
            set_uuid: kernel.set_uuid,
            name: "kmdrig:fixture",
            raid_disks: 2,
            dev_number: 1,
            device_uuid: kernel.device_uuid,
            device_sectors: 65536,
            array_sectors: mdadm_raid1_array_sectors(65536, mdadm_default_data_offset(65536)),
            data_offset: None,
            ctime: kernel.ctime,
        })
        .unwrap();
        let mut expected = kernel.clone();
        expected.events = 0;
        expected.utime = kernel.ctime;
        assert_eq!(ours, expected);
    }

    #[test]
    fn constructor_refuses_bad_input() {
        let base = NewMember {
            set_uuid: [1; 16],
            name: "x",
            raid_disks: 2,
            dev_number: 0,
            device_uuid: [2; 16],
            device_sectors: 65536,
            array_sectors: 63488,
            data_offset: None,
            ctime: MdTime(0),
        };
        let long = "a".repeat(32);
        let cases = [
            NewMember {
                name: &long,
                ..base.clone()
            },
            NewMember {
                name: "a\0b",
                ..base.clone()
            },
            NewMember {
                raid_disks: 0,
                ..base.clone()
            },
            NewMember {
                dev_number: 2,
                ..base.clone()
            },
            NewMember {
                array_sectors: 63489,
                ..base.clone()
            },
            NewMember {
                device_sectors: 100,
                array_sectors: 64,
                ..base.clone()
            },
            NewMember {
                data_offset: Some(8),
                ..base.clone()
            },
        ];
        for case in cases {
            assert!(
                Superblock::new_raid1_member(&case).is_err(),
                "accepted {case:?}"
            );
        }
        assert!(Superblock::new_raid1_member(&base).is_ok());
    }

    #[test]
    fn parse_errors_are_typed() {
        let good = sample().to_bytes();
        assert!(matches!(
            Superblock::parse(&good[..100]),
            Err(SuperblockError::Truncated { needed: 256, .. })
        ));
        assert!(matches!(
            Superblock::parse(&good[..400]),
            Err(SuperblockError::Truncated { needed: 512, .. })
        ));
        let mut b = good.clone();
        b[0] ^= 1;
        assert!(matches!(
            Superblock::parse(&b),
            Err(SuperblockError::BadMagic { .. })
        ));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(
            Superblock::parse(&b),
            Err(SuperblockError::BadVersion { found: 2 })
        );
        let mut b = good.clone();
        b[OFF_MAX_DEV..OFF_MAX_DEV + 4].copy_from_slice(&1921u32.to_le_bytes());
        assert_eq!(
            Superblock::parse(&b),
            Err(SuperblockError::TooManyRoles { max_dev: 1921 })
        );
        let mut b = good.clone();
        b[OFF_EVENTS] ^= 1;
        let err = Superblock::parse(&b).unwrap_err();
        assert!(matches!(err, SuperblockError::BadChecksum { .. }));
        let unverified = Superblock::parse_unverified(&b).unwrap();
        assert!(!unverified.checksum_ok());
        assert_eq!(unverified.superblock.events, 1);
    }

    #[test]
    fn padding_and_unknown_features_rejected_after_valid_checksum() {
        let good = sample().to_bytes();
        let refresh = |mut b: Vec<u8>| {
            let c = checksum_of(&b).unwrap();
            b[OFF_SB_CSUM..OFF_SB_CSUM + 4].copy_from_slice(&c.to_le_bytes());
            b
        };
        let mut b = good.clone();
        b[OFF_PAD0] = 1;
        assert_eq!(
            Superblock::parse(&refresh(b)),
            Err(SuperblockError::NonZeroPadding { offset: OFF_PAD0 })
        );
        let mut b = good.clone();
        b[OFF_PAD3 + 5] = 1;
        assert_eq!(
            Superblock::parse(&refresh(b)),
            Err(SuperblockError::NonZeroPadding {
                offset: OFF_PAD3 + 5
            })
        );
        let mut b = good;
        b[OFF_FEATURE_MAP + 1] = 0x20;
        assert_eq!(
            Superblock::parse(&refresh(b)),
            Err(SuperblockError::UnknownFeatures { bits: 0x2000 })
        );
    }

    #[test]
    fn odd_max_dev_checksums_trailing_half_word() {
        let mut sb = sample();
        sb.set_max_dev(3).unwrap();
        sb.set_role(2, DevRole::Faulty).unwrap();
        let bytes = sb.to_bytes();
        assert_eq!(Superblock::parse(&bytes).unwrap(), sb);
        // The third role is the trailing u16: changing it must change the checksum.
        let mut b = bytes.clone();
        b[SB_FIXED_BYTES + 4] ^= 0x10;
        assert!(matches!(
            Superblock::parse(&b),
            Err(SuperblockError::BadChecksum { .. })
        ));
        // Bytes after the roles are outside the checksum.
        let mut b = bytes;
        b[SB_FIXED_BYTES + 6] = 0x55;
        assert!(Superblock::parse(&b).is_ok());
    }

    /// Each impossible field, with a valid checksum, is refused by name.
    #[test]
    fn validate_on_leg_refuses_each_impossible_field() {
        let leg = 65536 * 512;
        assert_eq!(sample().validate_on_leg(leg, 64), Ok(()));
        // raid_disks 1 is a RAID1 md runs (mdadm --create -n1 --force).
        let mut one = sample();
        one.raid_disks = 1;
        one.set_role(1, DevRole::Active(0)).unwrap();
        assert_eq!(one.validate_on_leg(leg, 64), Ok(()));
        type Edit = fn(&mut Superblock);
        let cases: Vec<(&str, Edit)> = vec![
            ("feature_map", |s| s.feature_map |= FEATURE_RESHAPE_ACTIVE),
            ("feature_map", |s| s.feature_map |= FEATURE_JOURNAL),
            ("feature_map", |s| s.feature_map |= FEATURE_PPL),
            ("feature_map", |s| s.feature_map |= FEATURE_MULTIPLE_PPLS),
            ("feature_map", |s| s.feature_map |= FEATURE_CLUSTERED),
            ("feature_map", |s| s.feature_map |= FEATURE_REPLACEMENT),
            ("feature_map", |s| s.feature_map |= FEATURE_BAD_BLOCKS),
            ("feature_map", |s| s.feature_map |= FEATURE_NEW_OFFSET),
            ("feature_map", |s| s.feature_map |= FEATURE_RAID0_LAYOUT),
            ("super_offset", |s| s.super_offset = 3072),
            ("super_offset", |s| s.super_offset = 1 << 30),
            // The 1.0 place on this leg, but the data runs into it.
            ("data_size", |s| s.super_offset = 65520),
            ("raid_disks", |s| s.raid_disks = 0),
            ("raid_disks", |s| s.raid_disks = 65),
            ("raid_disks", |s| s.raid_disks = 1 << 31),
            ("events", |s| s.events = u64::MAX),
            ("events", |s| s.events = EVENTS_LIMIT + 1),
            ("data_offset", |s| s.data_offset = 0),
            ("data_offset", |s| s.data_offset = 8),
            // 129 roles take a second sector: sector 9 is theirs.
            ("data_offset", |s| {
                s.set_max_dev(129).unwrap();
                s.data_offset = 9;
            }),
            ("data_offset", |s| {
                s.set_max_dev(MAX_DEV_LIMIT).unwrap();
                s.data_offset = 15;
            }),
            ("data_offset", |s| s.data_offset = 65537),
            ("data_offset", |s| s.data_offset = u64::MAX),
            ("data_size", |s| s.data_size = 9),
            ("data_size", |s| s.data_size += 1),
            // data_offset + data_size wraps around u64.
            ("data_size", |s| s.data_size = u64::MAX - 100),
            ("size", |s| s.size = 0),
            ("size", |s| s.size = s.data_size + 1),
            ("size", |s| s.size = u64::MAX),
            ("dev_roles", |s| s.set_role(1, DevRole::Active(2)).unwrap()),
            ("dev_roles", |s| s.set_role(1, DevRole::Active(5)).unwrap()),
            ("dev_roles", |s| s.raid_disks = 1),
            ("recovery_offset", |s| {
                s.feature_map |= FEATURE_RECOVERY_OFFSET;
                s.recovery_offset = s.size + 1;
            }),
        ];
        for (field, edit) in cases {
            let mut sb = sample();
            edit(&mut sb);
            // Through the bytes: a valid checksum, as an attacker would write it.
            let sb = Superblock::parse(&sb.to_bytes()).expect("checksum is valid");
            let err = sb.validate_on_leg(leg, 64).expect_err(field);
            assert_eq!(err.field(), field, "{err}");
            assert!(
                err.to_string().contains(field),
                "{err} does not name {field}"
            );
        }
        // A leg shorter than data_offset + data_size.
        let err = sample().validate_on_leg(leg - 512, 64).unwrap_err();
        assert_eq!(err.field(), "data_size", "{err}");
        // A recovery_offset up to the array's end is one md writes.
        let mut sb = sample();
        sb.feature_map |= FEATURE_RECOVERY_OFFSET | FEATURE_RECOVERY_BITMAP;
        sb.recovery_offset = sb.size;
        assert_eq!(sb.validate_on_leg(leg, 64), Ok(()));
        // A spare's role is not checked against raid_disks.
        let mut sb = sample();
        sb.set_role(1, DevRole::Spare).unwrap();
        sb.raid_disks = 1;
        assert_eq!(sb.validate_on_leg(leg, 64), Ok(()));
    }

    #[test]
    fn metadata_versions_sit_where_md_puts_them() {
        use MetadataVersion::*;
        // md: (sectors - 16) & ~7; 1.1 at 0; 1.2 at 8.
        assert_eq!(V1_0.super_offset(65536), Some(65520));
        assert_eq!(V1_0.super_offset(65536 + 5), Some(65520));
        assert_eq!(V1_0.super_offset(65536 + 8), Some(65528));
        assert_eq!(V1_0.super_offset(15), None);
        assert_eq!(V1_1.super_offset(65536), Some(0));
        assert_eq!(V1_2.super_offset(65536), Some(8));
        assert_eq!(MetadataVersion::at(65520, 65536), Some(V1_0));
        assert_eq!(MetadataVersion::at(0, 65536), Some(V1_1));
        assert_eq!(MetadataVersion::at(8, 65536), Some(V1_2));
        assert_eq!(MetadataVersion::at(65512, 65536), None);
        assert_eq!(MetadataVersion::of_super_offset(65520), V1_0);
        for (s, v) in [
            ("1.0", V1_0),
            ("1.01", V1_1),
            ("01.2", V1_2),
            ("default", V1_2),
        ] {
            assert_eq!(s.parse::<MetadataVersion>(), Ok(v), "{s}");
        }
        assert!("0.90"
            .parse::<MetadataVersion>()
            .unwrap_err()
            .contains("0.90"));
        assert!("1.3".parse::<MetadataVersion>().is_err());
        // 0.90: the last whole 64 KiB before the end rounded down to 64 KiB.
        assert_eq!(v0_90_super_sector(65536), Some(65408));
        assert_eq!(v0_90_super_sector(65536 + 127), Some(65408));
        assert_eq!(v0_90_super_sector(127), None);
    }

    /// mdadm 4.2's add_internal_bitmap1 (creating), worked by hand: a 95 MiB
    /// array gets 64 MiB chunks by default; a 1 TiB one has 128 KiB of room,
    /// so its smallest chunk is 2 MiB and 1 MiB is refused.
    #[test]
    fn internal_bitmap_chunk_as_mdadm_picks_it() {
        assert_eq!(mdadm_internal_bitmap_chunk(194560, None), Ok(64 << 20));
        assert_eq!(
            mdadm_internal_bitmap_chunk(194560, Some(1 << 20)),
            Ok(1 << 20)
        );
        let tib = 1u64 << 31;
        assert_eq!(mdadm_internal_bitmap_chunk(tib, Some(2 << 20)), Ok(2 << 20));
        assert_eq!(
            mdadm_internal_bitmap_chunk(tib, Some(1 << 20)),
            Err(GeometryError::BitmapChunkTooSmall {
                chunk: 1 << 20,
                min: 2 << 20
            })
        );
        assert!(matches!(
            mdadm_internal_bitmap_chunk(100, None),
            Err(GeometryError::NoBitmapRoom { .. })
        ));
    }

    /// Where create puts an internal bitmap (mdadm's write_init_super1): 1.2
    /// at +8 with the bad-block log after its 4 KiB; 1.0 at -(4 KiB + 8) with
    /// the log at -8 and the data below both; and the placement checks.
    #[test]
    fn internal_bitmap_layouts_and_their_checks() {
        let mut sb = sample();
        sb.add_internal_bitmap(1 << 20).unwrap();
        assert!(sb.has_feature(FEATURE_BITMAP_OFFSET));
        assert_eq!(
            (sb.bitmap_offset, sb.bblog_size, sb.bblog_offset),
            (8, 8, 16)
        );
        assert_eq!(sb.internal_bitmap_start(8, 65536), Ok(16));
        assert!(sb
            .internal_bitmap_start(9, 65536)
            .unwrap_err()
            .contains("bad-block log"));
        let m = NewMember {
            set_uuid: [7; 16],
            name: "x",
            raid_disks: 2,
            dev_number: 0,
            device_uuid: [1; 16],
            device_sectors: 65536,
            array_sectors: 63488,
            data_offset: None,
            ctime: MdTime::from_parts(1_700_000_000, 0),
        };
        let mut one = Superblock::new_raid1_member_of(&m, MetadataVersion::V1_0).unwrap();
        one.add_internal_bitmap(1 << 20).unwrap();
        assert_eq!((one.bitmap_offset, one.bblog_offset), (-16, -8));
        assert_eq!(one.data_size, one.super_offset - 16);
        assert_eq!(
            one.internal_bitmap_start(8, 65536),
            Ok(one.super_offset - 16)
        );
        one.check_fits(65536).unwrap();
        for (offset, words) in [
            (0, "superblock"),
            (-100_000, "outside the leg"),
            (-24, "data area"),
        ] {
            one.bitmap_offset = offset;
            let e = one.internal_bitmap_start(8, 65536).unwrap_err();
            assert!(e.contains(words), "{offset}: {e}");
        }
    }

    /// Where `--grow --bitmap=internal` puts a bitmap on legs made without
    /// one (mdadm's add_internal_bitmap1, not creating): 1.2 at +8 in the
    /// space kept before the bad-block log; 1.0 below the log, where create
    /// would have put it; the chunk by mdadm's rule.
    #[test]
    fn grow_internal_bitmap_as_mdadm_places_it() {
        let m = NewMember {
            set_uuid: [7; 16],
            name: "x",
            raid_disks: 2,
            dev_number: 0,
            device_uuid: [1; 16],
            device_sectors: 65536,
            array_sectors: 63488,
            data_offset: None,
            ctime: MdTime::from_parts(1_700_000_000, 0),
        };
        let two = Superblock::new_raid1_member_of(&m, MetadataVersion::V1_2).unwrap();
        assert_eq!((two.bblog_offset, two.bblog_size), (16, 8));
        assert_eq!(two.grow_internal_bitmap(None), Ok((8, 64 << 20)));
        assert_eq!(two.grow_internal_bitmap(Some(1 << 20)), Ok((8, 1 << 20)));
        assert_eq!(
            two.grow_internal_bitmap(Some(2048)),
            Err(GeometryError::BitmapChunkTooSmall {
                chunk: 2048,
                min: 4096
            })
        );
        let mut placed = two.clone();
        placed.feature_map |= FEATURE_BITMAP_OFFSET;
        placed.bitmap_offset = 8;
        assert_eq!(placed.internal_bitmap_start(8, 65536), Ok(16));
        // No room left before the log: refused, never over it.
        let mut tight = two.clone();
        tight.bblog_offset = 8;
        assert!(matches!(
            tight.grow_internal_bitmap(None),
            Err(GeometryError::NoBitmapRoom { .. })
        ));
        let one = Superblock::new_raid1_member_of(&m, MetadataVersion::V1_0).unwrap();
        let (offset, chunk) = one.grow_internal_bitmap(None).unwrap();
        assert_eq!((offset, chunk), (-16, 64 << 20));
        let mut created = one.clone();
        created.add_internal_bitmap(chunk).unwrap();
        assert_eq!(created.bitmap_offset, offset, "where create puts it");
        let mut placed = one.clone();
        placed.feature_map |= FEATURE_BITMAP_OFFSET;
        placed.bitmap_offset = offset;
        assert_eq!(
            placed.internal_bitmap_start(8, 65536),
            Ok(one.super_offset - 16)
        );
    }

    /// What mdadm 4.2's super1.c computes for each version (validate_geometry1,
    /// write_init_super1), worked by hand for a 32 MiB and a 10 GiB leg.
    #[test]
    fn mdadm_layouts_of_each_version() {
        use MetadataVersion::*;
        // 32 MiB, 1.0: free (65536 & ~7) - (16 + 8 + bm_space 8) = 65504 sectors,
        // 32752 KiB rounded to 64 KiB: 32704 KiB. The superblock at 65520; below it
        // bm_space(array) + 8 = 16 sectors; the log at -8.
        assert_eq!(mdadm_raid1_array_sectors_for(V1_0, 65536, 0), 65408);
        assert_eq!(
            mdadm_layout(V1_0, 65536, 65408, 0),
            Some(MdadmLayout {
                super_offset: 65520,
                data_size: 65504,
                bblog_size: 8,
                bblog_offset: -8
            })
        );
        // An array that leaves less than bm_space + 8 below the superblock.
        let tight = mdadm_layout(V1_0, 65536, 65516, 0).unwrap();
        assert_eq!((tight.data_size, tight.bblog_size), (65516, 0));
        // 1.1: data offset as 1.2's; the log after the bitmap space.
        assert_eq!(mdadm_default_data_offset_for(V1_1, 65536), 2048);
        assert_eq!(mdadm_default_data_offset_for(V1_0, 65536), 0);
        assert_eq!(
            mdadm_layout(V1_1, 65536, 63488, 2048),
            Some(MdadmLayout {
                super_offset: 0,
                data_size: 63488,
                bblog_size: 8,
                bblog_offset: 16
            })
        );
        // 1.2 as before.
        let l = mdadm_layout(V1_2, 65536, 63488, 2048).unwrap();
        assert_eq!((l.super_offset, l.bblog_offset), (8, 16));
        // 10 GiB, 1.0: bm_space(device) 128 (over 8 GiB): free 20971520 - 152.
        let dev = 10 * 1024 * 1024 * 2;
        let array = mdadm_raid1_array_sectors_for(V1_0, dev, 0);
        assert_eq!(array, (((dev - 152) / 2) & !63) * 2);
        let l = mdadm_layout(V1_0, dev, array, 0).unwrap();
        assert_eq!(l.super_offset, dev - 16);
        assert_eq!(l.data_size, dev - 16 - (128 + 8));
    }

    #[test]
    fn members_of_each_version_fit_their_leg() {
        for version in MetadataVersion::ALL {
            let dev = 65536;
            let data_offset = mdadm_default_data_offset_for(version, dev);
            let sb = Superblock::new_raid1_member_of(
                &NewMember {
                    set_uuid: [7; 16],
                    name: "v",
                    raid_disks: 2,
                    dev_number: 0,
                    device_uuid: [9; 16],
                    device_sectors: dev,
                    array_sectors: mdadm_raid1_array_sectors_for(version, dev, data_offset),
                    data_offset: None,
                    ctime: MdTime(0),
                },
                version,
            )
            .unwrap();
            assert_eq!(sb.version_on(dev), Some(version));
            assert_eq!(sb.validate_on_leg(dev * 512, 64), Ok(()), "{version}");
            assert!(sb.data_clear_of_superblock());
            // The same superblock on a leg one 4 KiB block longer: a 1.0
            // superblock is then not at its place.
            let longer = sb.validate_on_leg((dev + 8) * 512, 64);
            match version {
                MetadataVersion::V1_0 => assert_eq!(longer.unwrap_err().field(), "super_offset"),
                _ => assert_eq!(longer, Ok(())),
            }
        }
        // 1.1: data_offset inside the superblock at 0.
        let mut sb = sample();
        sb.super_offset = 0;
        sb.data_offset = 0;
        let err = sb.validate_on_leg(65536 * 512, 64).unwrap_err();
        assert_eq!(err.field(), "data_offset", "{err}");
        assert!(err.to_string().contains("sectors 0..1"), "{err}");
    }

    fn at(sb: &Superblock, sector: u64) -> (u64, Vec<u8>) {
        let mut sb = sb.clone();
        sb.super_offset = sector;
        (sector, sb.to_bytes())
    }

    #[test]
    fn the_probe_finds_each_version_and_refuses_what_md_refuses() {
        use MetadataVersion::*;
        let blank = vec![0u8; SB_BLOCK_BYTES];
        let dev: u64 = 65536;
        let places = |blocks: [&[u8]; 3]| -> Vec<(MetadataVersion, u64, Vec<u8>)> {
            MetadataVersion::ALL
                .into_iter()
                .zip(blocks)
                .map(|(v, b)| (v, v.super_offset(dev).unwrap(), b.to_vec()))
                .collect()
        };
        let choose = |reads: &[(MetadataVersion, u64, Vec<u8>)], v090: Option<&[u8]>| {
            let views: Vec<(MetadataVersion, u64, &[u8])> =
                reads.iter().map(|(v, a, b)| (*v, *a, &b[..])).collect();
            choose_superblock(&views, v090.map(|b| (65408, b)))
        };
        let sb = sample();
        // Each version at its own place.
        for (i, version) in MetadataVersion::ALL.into_iter().enumerate() {
            let (_, block) = at(&sb, version.super_offset(dev).unwrap());
            let mut blocks: [&[u8]; 3] = [&blank, &blank, &blank];
            blocks[i] = &block;
            assert_eq!(choose(&places(blocks), None), (Some(i), Ok(version)));
        }
        // Nothing: no magic at 1.2's place.
        assert_eq!(
            choose(&places([&blank, &blank, &blank]), None),
            (Some(2), Err(SuperblockError::BadMagic { found: 0 }))
        );
        // A block at sector 8 naming sector 0 (or the 1.0 place) is misplaced.
        for named in [0, 65520, 3072] {
            let (_, block) = at(&sb, named);
            assert_eq!(
                choose(&places([&blank, &blank, &block]), None).1,
                Err(SuperblockError::Misplaced {
                    read_at: 8,
                    super_offset: named
                })
            );
        }
        // A bad checksum is still found where it is (and refused by parse later).
        let (_, mut bad) = at(&sb, 65520);
        bad[OFF_EVENTS] ^= 1;
        assert_eq!(choose(&places([&bad, &blank, &blank]), None).1, Ok(V1_0));
        // Metadata 0.90 at its place.
        let mut v090 = vec![0u8; SB_BLOCK_BYTES];
        v090[..4].copy_from_slice(&MD_MAGIC.to_le_bytes());
        assert_eq!(
            choose(&places([&blank, &blank, &blank]), Some(&v090)).1,
            Err(SuperblockError::Version0_90 { at: 65408 })
        );
        // An array stacked on a 1.0 array: its 1.2 superblock at sector 8
        // lies in the 1.0 member's data, and is newer; the 1.0 one is the leg's.
        let mut outer = sample();
        outer.super_offset = 65520;
        outer.data_offset = 0;
        outer.data_size = 65504;
        outer.ctime = MdTime(100);
        let mut inner = sample();
        inner.ctime = MdTime(200);
        // Its device is the outer array (65408 sectors).
        inner.data_size = 65408 - 2048;
        inner.size = inner.data_size;
        let reads = places([&outer.to_bytes(), &blank, &inner.to_bytes()]);
        assert_eq!(choose(&reads, None), (Some(0), Ok(V1_0)));
        // Two superblocks neither inside the other's data: the latest ctime.
        let mut old_1_1 = sample();
        old_1_1.super_offset = 0;
        old_1_1.ctime = MdTime(50);
        let reads = places([&blank, &old_1_1.to_bytes(), &inner.to_bytes()]);
        assert_eq!(choose(&reads, None), (Some(2), Ok(V1_2)));
    }

    /// Whatever a checksummed superblock holds, either it is refused or every
    /// product assembly makes of it fits a u64 and lies inside the leg.
    #[test]
    fn validated_geometry_fits_the_leg_for_any_fields() {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(2000));
        let leg = (0u64..1 << 50, any::<bool>()).prop_map(|(n, sectors)| match sectors {
            true => n * 512,
            false => n,
        });
        runner
            .run(&(arb_superblock(), leg), |(sb, leg_bytes)| {
                if sb.validate_on_leg(leg_bytes, 64).is_ok() {
                    let end = sb.data_offset.checked_add(sb.data_size).unwrap();
                    prop_assert!(end.checked_mul(512).unwrap() <= leg_bytes);
                    prop_assert!(sb.size >= 1 && sb.size <= sb.data_size);
                    prop_assert!(sb.data_clear_of_superblock());
                    prop_assert!(sb.version_on(leg_bytes / 512).is_some());
                    prop_assert!(sb.raid_disks >= 1 && sb.raid_disks <= 64);
                    prop_assert!(sb.events <= EVENTS_LIMIT);
                    if let DevRole::Active(slot) = sb.own_role() {
                        prop_assert!(u32::from(slot) < sb.raid_disks);
                    }
                }
                Ok(())
            })
            .unwrap();
    }

    fn arb_superblock() -> impl Strategy<Value = Superblock> {
        let ids = (
            any::<u32>(),
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<i32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<i32>(),
        );
        let reshape = (
            any::<i32>(),
            any::<u64>(),
            any::<i32>(),
            any::<u32>(),
            any::<u32>(),
            any::<i32>(),
        );
        let device = (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<[u8; 16]>(),
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            any::<i32>(),
        );
        let state = (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u16>(), 0..=MAX_DEV_LIMIT as usize),
        );
        (ids, reshape, device, state).prop_map(|(i, r, d, s)| Superblock {
            feature_map: i.0 & FEATURE_ALL,
            set_uuid: i.1,
            set_name: i.2,
            ctime: MdTime(i.3),
            level: i.4,
            layout: i.5,
            size: i.6,
            chunksize: i.7,
            raid_disks: i.8,
            bitmap_offset: i.9,
            new_level: r.0,
            reshape_position: r.1,
            delta_disks: r.2,
            new_layout: r.3,
            new_chunk: r.4,
            new_offset: r.5,
            data_offset: d.0,
            data_size: d.1,
            super_offset: d.2,
            recovery_offset: d.3,
            dev_number: d.4,
            cnt_corrected_read: d.5,
            device_uuid: d.6,
            devflags: d.7,
            bblog_shift: d.8,
            bblog_size: d.9,
            bblog_offset: d.10,
            utime: MdTime(s.0),
            events: s.1,
            resync_offset: s.2,
            dev_roles: s.3,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn roundtrip(sb in arb_superblock()) {
            let bytes = sb.to_bytes();
            prop_assert_eq!(bytes.len(), SB_BLOCK_BYTES);
            prop_assert_eq!(Superblock::parse(&bytes), Ok(sb));
        }

        #[test]
        fn any_flip_in_checksummed_area_is_caught(
            sb in arb_superblock(),
            pos in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let mut bytes = sb.to_bytes();
            let covered = SB_FIXED_BYTES + 2 * sb.max_dev() as usize;
            let at = pos.index(covered);
            bytes[at] ^= mask;
            prop_assert!(Superblock::parse(&bytes).is_err(), "flip at {} accepted", at);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4200)) {
            let _ = Superblock::parse(&bytes);
            let _ = Superblock::parse_unverified(&bytes);
        }
    }
}
